//! The tracer's records as a witness of which tasks run. Every record
//! carries the PID and command of the task that made the traced call,
//! written by the guest kernel before any hook in the call runs. A census
//! of the kernel's tasks ([`crate::kernel::tasks`]) taken halfway through
//! a call-flow window is bracketed by the rings' heads read just before
//! and just after it: a PID with records from before the census and from
//! after it was alive all through it (PIDs are not reused within
//! seconds), so a census that finds no task of that PID was hidden from.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet};

use crate::abi::Record;
use crate::kernel::tasks::Census;

use super::{Finding, FindingKind};

/// PIDs a witness follows at most (forged records can invent 4 M).
pub const MAX_PIDS: usize = 1 << 16;

/// What the rings held when a census began and ended: per ring (CPU),
/// its head (records ever written).
#[derive(Clone, Debug, Default)]
pub struct Bracket {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
}

/// One PID's records around the census.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its command (escaped), from its latest entry record.
    pub comm: String,
    pub before: u64,
    pub after: u64,
}

/// Each PID's records written before and after the census (PID 0, the
/// idle tasks and interrupts on them, left out). A ring with no head read
/// counts nothing on either side.
pub fn sides(records: impl Iterator<Item = Record>, b: &Bracket) -> (BTreeMap<u32, Seen>, bool) {
    let mut out: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut full = false;
    for r in records {
        if r.pid == 0 {
            continue;
        }
        let Ok(ring) = usize::try_from(r.cpu) else {
            continue;
        };
        let (Some(&start), Some(&end)) = (b.before.get(ring), b.after.get(ring)) else {
            continue;
        };
        let side = if r.seq < start {
            Some(true)
        } else if r.seq >= end {
            Some(false)
        } else {
            None
        };
        let Some(before) = side else { continue };
        if !out.contains_key(&r.pid) && out.len() >= MAX_PIDS {
            full = true;
            continue;
        }
        let s = out.entry(r.pid).or_default();
        if before {
            s.before = s.before.saturating_add(1);
        } else {
            s.after = s.after.saturating_add(1);
        }
        if !r.comm().is_empty() {
            s.comm = crate::base::escape::escape_bytes(r.comm());
        }
    }
    (out, full)
}

/// The PIDs that made traced calls before and after the censuses and that
/// no census found in every one of the task list, the process tree and
/// the PID allocator (a task found on a run queue only, or in some of
/// them, ran all through the censuses all the same). The host's walks are
/// not atomic: a census taken while the guest forks and reaps may miss a
/// task in a list being changed, so a PID counts only if every census
/// (two, a moment apart) misses it, and a census whose walks were cut
/// short witnesses nothing (the integrity check reports a cut that
/// stays).
pub fn hidden(seen: &BTreeMap<u32, Seen>, censuses: &[&Census]) -> Vec<Finding> {
    if censuses.is_empty() || censuses.iter().any(|c| !c.cut.is_empty()) {
        return Vec::new();
    }
    let by_pid: Vec<BTreeMap<u32, &crate::kernel::tasks::Task>> = censuses
        .iter()
        .map(|c| c.tasks.values().map(|t| (t.pid, t)).collect())
        .collect();
    let status = |by: &BTreeMap<u32, &crate::kernel::tasks::Task>, pid: &u32| {
        match by.get(pid) {
        Some(t) if t.missing().is_empty() || t.idle => None,
        Some(t) => {
            let v: Vec<&str> = t.views.iter().map(|v| v.describe()).collect();
            let m: Vec<&str> = t.missing().iter().map(|v| v.describe()).collect();
            Some(format!(
                "found it in {} but not in {}",
                v.join(" and "),
                m.join(" and ")
            ))
        }
        None => Some(
            "found it in none of the task list, the process tree, the PID allocator and the run queues"
                .to_string(),
        ),
    }
    };
    seen.iter()
        .filter(|(_, s)| s.before > 0 && s.after > 0)
        .filter_map(|(pid, s)| {
            let all: Option<Vec<String>> = by_pid.iter().map(|by| status(by, pid)).collect();
            let found = all?.pop()?;
            Some(Finding::new(
                FindingKind::HiddenTask,
                format!(
                    "task {pid} ({}) made traced calls before and after {} censuses of the kernel's tasks; the last {found}: hidden",
                    s.comm,
                    censuses.len()
                ),
                &[],
                format!("{} records before the censuses, {} after", s.before, s.after),
            ))
        })
        .collect()
}

/// Who a task acts as, at one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub tgid: u32,
    pub uid: u32,
    pub euid: u32,
    /// Its command (escaped).
    pub comm: String,
    /// How long it has run (`se.sum_exec_runtime`, ns), where readable.
    pub ran: Option<u64>,
}

/// The system calls by which a task legitimately becomes root: an
/// `execve` of a set-user-ID program, the `set*id` family, `capset`
/// (x86_64 and 32-bit compat entry points).
pub const CREDENTIAL_CALLS: &[&str] = &[
    "__x64_sys_execve",
    "__x64_sys_execveat",
    "__x64_sys_setuid",
    "__x64_sys_setreuid",
    "__x64_sys_setresuid",
    "__x64_sys_setfsuid",
    "__x64_sys_setgid",
    "__x64_sys_setregid",
    "__x64_sys_setresgid",
    "__x64_sys_setfsgid",
    "__x64_sys_setgroups",
    "__x64_sys_capset",
    "__ia32_compat_sys_execve",
    "__ia32_compat_sys_execveat",
    "__ia32_sys_setuid",
    "__ia32_sys_setreuid",
    "__ia32_sys_setresuid",
    "__ia32_sys_setuid16",
    "__ia32_sys_setreuid16",
    "__ia32_sys_setresuid16",
    "__ia32_sys_capset",
];

/// Whether any task was not root at the first look and is at the last
/// (what [`became_root`] then judges against the records).
pub fn any_became_root(before: &BTreeMap<u32, Ids>, after: &BTreeMap<u32, Ids>) -> bool {
    before
        .iter()
        .any(|(pid, b)| after.get(pid).is_some_and(|a| rooted_between(b, a)))
}

/// Not root at `b`, root at `a`, the same process.
fn rooted_between(b: &Ids, a: &Ids) -> bool {
    b.uid != 0 && b.euid != 0 && (a.uid == 0 || a.euid == 0) && a.tgid == b.tgid
}

/// Tasks that were not root at the first look (`before`, its censuses
/// begun when the rings' heads were `start`) and are root at the last
/// (`after`: real or effective UID 0, from the objective credentials,
/// which only `commit_creds` changes), although no thread of their
/// process made one of the [`CREDENTIAL_CALLS`] (`is_call` tells their
/// addresses) in the records from `start` on. The kernel gives root no
/// other way to a running task; a rootkit that writes a task's
/// credentials or swaps in another's does. Where the records between
/// the looks are not `whole` (a ring overwrote some before they were
/// read), only a task that did not run at all between the looks (its run
/// time unchanged: it made no call) is judged.
pub fn became_root(
    records: impl Iterator<Item = Record>,
    start: &[u64],
    is_call: &dyn Fn(u64) -> bool,
    whole: bool,
    before: &BTreeMap<u32, Ids>,
    after: &BTreeMap<u32, Ids>,
) -> Vec<Finding> {
    let rooted: Vec<(&u32, &Ids, &Ids)> = before
        .iter()
        .filter_map(|(pid, b)| {
            let a = after.get(pid)?;
            let still = b.ran.is_some() && b.ran == a.ran;
            (rooted_between(b, a) && (whole || still)).then_some((pid, b, a))
        })
        .collect();
    if rooted.is_empty() {
        return Vec::new();
    }
    // Their processes' threads (PIDs in records are threads').
    let tgids: BTreeSet<u32> = rooted.iter().map(|(_, b, _)| b.tgid).collect();
    let threads: BTreeMap<u32, u32> = before
        .iter()
        .chain(after)
        .filter(|(_, i)| tgids.contains(&i.tgid))
        .map(|(p, i)| (*p, i.tgid))
        .collect();
    let mut called: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        let Some(&tgid) = threads.get(&r.pid) else {
            continue;
        };
        let Some(&s) = usize::try_from(r.cpu).ok().and_then(|c| start.get(c)) else {
            continue;
        };
        if r.seq >= s && is_call(r.func) {
            let n = called.entry(tgid).or_insert(0);
            *n = n.saturating_add(1);
        }
    }
    rooted
        .into_iter()
        .filter(|(_, b, _)| !called.contains_key(&b.tgid))
        .map(|(pid, b, a)| {
            let how = if b.ran.is_some() && b.ran == a.ran {
                "it did not run at all meanwhile"
            } else {
                "its process made none"
            };
            Finding::new(
                FindingKind::Credentials,
                format!(
                    "task {pid} ({}) became root (uid {} euid {} -> uid {} euid {}) while the tracer recorded every execve, set*id and capset call, and {how}: its credentials were changed behind the kernel's back",
                    a.comm, b.uid, b.euid, a.uid, a.euid
                ),
                &[],
                format!(
                    "process {}: no traced credential call from the first look to the last (run time {} -> {} ns)",
                    b.tgid,
                    b.ran.map_or("?".into(), |r| r.to_string()),
                    a.ran.map_or("?".into(), |r| r.to_string())
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::record::Kind;
    use crate::kernel::tasks::{Task, View, ENUMERATIONS};

    fn rec(cpu: u32, seq: u64, pid: u32, comm: &[u8]) -> Record {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        Record {
            cpu,
            seq,
            epoch: 1,
            kind: Kind::Entry,
            func: 0,
            time: 0,
            calltime: 0,
            depth: 0,
            pid,
            overrun: 0,
            comm: c,
        }
    }

    /// A PID seen on both sides of the census and absent from it is
    /// named; one seen on one side only (it started or ended meanwhile),
    /// one the census found, and records written during the census are
    /// not.
    #[test]
    fn a_task_running_through_a_census_that_missed_it_is_named() {
        let b = Bracket {
            before: vec![10, 5],
            after: vec![12, 6],
        };
        let records = vec![
            rec(0, 3, 77, b"sh"),
            rec(1, 7, 77, b"sh"),
            rec(0, 4, 88, b"exiting"),
            rec(0, 12, 99, b"new"),
            rec(0, 5, 100, b"known"),
            rec(1, 9, 100, b"known"),
            rec(0, 10, 111, b"during"),
            rec(0, 11, 111, b"during"),
            rec(0, 1, 0, b"swapper/0"),
            rec(0, 20, 0, b"swapper/0"),
            rec(7, 1, 123, b"no ring"),
        ];
        let (seen, full) = sides(records.into_iter(), &b);
        assert!(!full);
        let mut census = Census::default();
        let task = |pid: u32, views: &[View]| Task {
            addr: u64::from(pid),
            pid,
            tgid: pid,
            comm: "x".into(),
            kthread: false,
            cred: 0,
            real_cred: 0,
            idle: false,
            views: views.iter().copied().collect(),
        };
        census.tasks.insert(100, task(100, &ENUMERATIONS));
        let f = hidden(&seen, &[&census, &census]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].detail.starts_with(
                "task 77 (sh) made traced calls before and after 2 censuses of the kernel's tasks; the last found it in none of"
            ),
            "{}",
            f[0].detail
        );
        assert_eq!(f[0].evidence, "1 records before the censuses, 1 after");
        // Found on a run queue only: hidden all the same.
        census.tasks.insert(77, task(77, &[View::RunQueue]));
        let f = hidden(&seen, &[&census]);
        assert!(
            f.len() == 1
                && f[0]
                    .detail
                    .contains("the last found it in a run queue but not in the task list and the process tree and the PID allocator"),
            "{f:#?}"
        );
        // Missed by one census only (a walk that met a list being changed
        // while the guest forked): not hidden.
        let mut whole = Census::default();
        whole.tasks.insert(77, task(77, &ENUMERATIONS));
        assert_eq!(hidden(&seen, &[&census, &whole]), vec![]);
        // A census whose walks were cut short witnesses nothing.
        let mut cut = census.clone();
        cut.cut
            .push("the task list: a link at 0x10 cannot be read".into());
        assert_eq!(hidden(&seen, &[&cut, &census]), vec![]);
    }

    #[test]
    fn invented_pids_are_bounded() {
        let b = Bracket {
            before: vec![u64::MAX],
            after: vec![u64::MAX],
        };
        let n = u32::try_from(MAX_PIDS).unwrap() + 10;
        let (seen, full) = sides((1..=n).map(|p| rec(0, 1, p, b"x")), &b);
        assert!(full);
        assert_eq!(seen.len(), MAX_PIDS);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod root_tests {
    use super::*;
    use crate::abi::record::Kind;

    fn ids(tgid: u32, uid: u32, comm: &str) -> Ids {
        Ids {
            tgid,
            uid,
            euid: uid,
            comm: comm.into(),
            ran: Some(u64::from(tgid) * 1000 + u64::from(uid)),
        }
    }

    fn rec(cpu: u32, seq: u64, pid: u32, func: u64) -> Record {
        Record {
            cpu,
            seq,
            epoch: 1,
            kind: Kind::Return,
            func,
            time: 0,
            calltime: 0,
            depth: 0,
            pid,
            overrun: 0,
            comm: [0; 16],
        }
    }

    /// Root by a traced setuid (of the process's other thread, returning
    /// after the first look) is the kernel's doing; root with no such
    /// call, or with one before the first look only, is not; a task root
    /// already, or new, is not judged.
    #[test]
    fn root_without_a_credential_call_is_named() {
        let setuid = 0xffff_ffff_8110_0000;
        let is_call = |f: u64| f == setuid;
        let before = BTreeMap::from([
            (10, ids(10, 1000, "su")),
            (11, ids(10, 1000, "su")),
            (20, ids(20, 1000, "sh")),
            (30, ids(30, 0, "sshd")),
            (40, ids(40, 1000, "cat")),
        ]);
        let mut after = before.clone();
        after.insert(10, ids(10, 0, "su"));
        after.insert(20, ids(20, 0, "sh"));
        after.insert(50, ids(50, 0, "new"));
        let records = [
            rec(0, 5, 20, setuid),
            rec(1, 7, 11, setuid),
            rec(1, 8, 40, setuid),
        ];
        assert!(any_became_root(&before, &after));
        assert!(!any_became_root(&before, &before));
        let f = became_root(
            records.iter().copied(),
            &[6, 6],
            &is_call,
            true,
            &before,
            &after,
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].detail
                .starts_with("task 20 (sh) became root (uid 1000 euid 1000 -> uid 0 euid 0)")
                && f[0].detail.contains("its process made none"),
            "{}",
            f[0].detail
        );
        assert_eq!(f[0].kind, FindingKind::Credentials);
        // Records lost between the looks: only a task that did not run
        // meanwhile is judged (20 ran: its run time changed).
        let lossy = |after: &BTreeMap<u32, Ids>| {
            became_root(
                records.iter().copied(),
                &[6, 6],
                &is_call,
                false,
                &before,
                after,
            )
        };
        assert_eq!(lossy(&after), vec![]);
        let mut still = after.clone();
        still.insert(
            20,
            Ids {
                ran: before[&20].ran,
                ..ids(20, 0, "sh")
            },
        );
        let f = lossy(&still);
        assert!(
            f.len() == 1 && f[0].detail.contains("it did not run at all meanwhile"),
            "{f:#?}"
        );
    }
}
