//! Credential tampering: a rootkit gives a process root by writing the
//! IDs of its credential object in place, or by pointing it at another
//! task's object (`init_cred`, PID 1's). The kernel never does either:
//! `commit_creds` installs a fresh object from `prepare_creds` whose
//! `user` is the `user_struct` of its real UID, processes never share an
//! objective credential (`real_cred`; threads of one process do), only
//! the idle tasks run on `init_cred`, and every object comes from the
//! credential cache. What this cannot see: credentials made the kernel's
//! way (`commit_creds(prepare_kernel_cred(NULL))` called by a rootkit)
//! are as genuine as `su`'s; telling those apart takes the calls that led
//! there (the tracer's records), not the object.
//!
//! Tasks come from the cross-view census ([`crate::kernel::tasks`]); a
//! finding must hold at a second look a moment later (a task may be
//! between `prepare_creds` and `commit_creds`, or exiting).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet};

use super::{Check, Context, Report, SETTLE};
use crate::detect::{Finding, FindingKind};
use crate::kernel::creds::{self, Home};
use crate::kernel::tasks::{census, Task};

pub struct Credentials;

/// Credential objects judged per check at most (a clean guest has one or
/// two per process).
const MAX_CREDS: usize = 1 << 16;
/// Tasks a finding that names several lists at most.
const MAX_NAMED: usize = 8;

/// What one look finds: (task, what) keyed findings.
fn look(cx: &Context, out: &Report) -> BTreeMap<(u64, String), Finding> {
    let mut found = BTreeMap::new();
    let Some(c) = census(&cx.view) else {
        return found;
    };
    let init_cred = cx.sym("init_cred");
    let tasks: Vec<&Task> = c
        .tasks
        .values()
        .filter(|t| !t.idle && t.real_cred != 0)
        .collect();
    let mut add = |task: &Task, key: &str, detail: String, addrs: &[u64], evidence: String| {
        let f = out.finding(detail, addrs, evidence);
        found.insert((task.addr, key.to_string()), f);
    };
    // Only the idle tasks run on init_cred.
    for t in &tasks {
        for (what, p) in [("cred", t.cred), ("real_cred", t.real_cred)] {
            if Some(p) == init_cred {
                add(
                    t,
                    what,
                    format!(
                        "{} runs on init_cred, the idle task's credentials ({what} at {p:#x}): swapped in, never made so by the kernel",
                        t.describe()
                    ),
                    &[t.addr, p],
                    String::new(),
                );
            }
        }
    }
    // One objective credential object, one process.
    let mut holders: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        holders.entry(t.real_cred).or_default().push(t);
    }
    for (p, ts) in &holders {
        let groups: BTreeSet<u32> = ts.iter().map(|t| t.tgid).collect();
        if groups.len() < 2 || Some(*p) == init_cred {
            continue;
        }
        let names: Vec<String> = ts.iter().take(MAX_NAMED).map(|t| t.describe()).collect();
        for t in ts {
            add(
                t,
                "shared",
                format!(
                    "{} shares its credential object (real_cred at {p:#x}) with another process; it is held by {}",
                    t.describe(),
                    names.join(", ")
                ),
                &[t.addr, *p],
                format!("{} processes hold it", groups.len()),
            );
        }
    }
    // Each object: from the credential cache, its IDs those of its
    // user_struct, its capabilities within its bounding set.
    let mut judged = BTreeSet::new();
    for t in &tasks {
        for p in [t.real_cred, t.cred] {
            if p == 0 || Some(p) == init_cred || judged.len() >= MAX_CREDS || !judged.insert(p) {
                continue;
            }
            match creds::home(&cx.view, p) {
                Home::CredJar => {}
                Home::Unknown(why) => log::debug!("credentials: {p:#x}: {why}"),
                h => {
                    let where_ = match h {
                        Home::OtherCache(c) => format!("in a slab of another cache ({c:#x})"),
                        _ => "outside the direct map (no slab at all)".into(),
                    };
                    add(
                        t,
                        &format!("home {p:#x}"),
                        format!(
                            "{}: its credential object at {p:#x} is not from the credential cache: it is {where_}, made by hand",
                            t.describe()
                        ),
                        &[t.addr, p],
                        String::new(),
                    );
                }
            }
            let Some(c) = creds::read(&cx.view, p) else {
                add(
                    t,
                    &format!("read {p:#x}"),
                    format!(
                        "{}: its credential object at {p:#x} cannot be read",
                        t.describe()
                    ),
                    &[t.addr, p],
                    String::new(),
                );
                continue;
            };
            if let Some(u) = c.user_uid.filter(|&u| u != c.uid) {
                add(
                    t,
                    &format!("user {p:#x}"),
                    format!(
                        "{}: its credentials say uid {} (euid {}), but their user_struct is uid {u}'s: IDs written in place, not by commit_creds",
                        t.describe(),
                        c.uid,
                        c.euid
                    ),
                    &[t.addr, p],
                    format!("uid {} euid {} suid {} fsuid {} gid {} egid {}", c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid),
                );
            }
            let beyond = c.cap_effective & !c.cap_bset & !c.cap_inheritable;
            if beyond != 0 {
                add(
                    t,
                    &format!("caps {p:#x}"),
                    format!(
                        "{}: effective capabilities {beyond:#x} beyond its bounding set ({:#x}) and its inheritable set",
                        t.describe(),
                        c.cap_bset
                    ),
                    &[t.addr, p],
                    format!("effective {:#x}", c.cap_effective),
                );
            }
        }
    }
    found
}

impl Check for Credentials {
    fn kind(&self) -> FindingKind {
        FindingKind::Credentials
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let t = std::time::Instant::now();
        let first = look(cx, out);
        log::debug!("credentials: {} suspects in {:?}", first.len(), t.elapsed());
        if first.is_empty() {
            return;
        }
        crate::base::settle::settle(SETTLE);
        let second = look(cx, out);
        let held: Vec<Finding> = second
            .into_iter()
            .filter(|(k, f)| first.get(k).is_some_and(|g| g.detail == f.detail))
            .map(|(_, f)| f)
            .collect();
        out.capped(held, "credentials");
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::locate;
    use crate::kernel::tasks::tests::{cred, guest, layouts, map, rt, task, INIT};
    use crate::testkit::synthetic::{put_link, synthetic_guest, unit_build};

    /// Root written into a process's own credentials, another process's
    /// object swapped in, init_cred swapped in, and an object outside the
    /// credential cache: each named; a clean guest: nothing.
    #[test]
    fn tampered_credentials_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = map();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let layouts = layouts();
        let details = || {
            let mut view = KernelView::new(&ram, &map, &k);
            view.btf = Some(&layouts);
            let cx = Context::new(view, &vmlinux, &state);
            let mut all = Vec::new();
            Credentials.run(&cx, &mut Report::new(FindingKind::Credentials, &mut all));
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        let put = |l: u64, v: u64| put_link(&ram, l, v);
        guest(&ram, 3);
        assert_eq!(details(), Vec::<String>::new());
        // uid/euid 0 written into task 102's own object.
        put(cred(2), 0);
        put(cred(2) + 16, 0);
        let got = details();
        assert!(
            got.len() == 1
                && got[0].starts_with("task 102 (sleep): its credentials say uid 0 (euid 0), but their user_struct is uid 1002's"),
            "{got:#?}"
        );
        guest(&ram, 3);
        // Task 101's object swapped into task 103.
        put(task(3) + 176, rt(cred(1)));
        put(task(3) + 184, rt(cred(1)));
        let got = details();
        assert!(
            got.len() == 2
                && got
                    .iter()
                    .all(|d| d.contains("shares its credential object")
                        && d.contains("task 101 (sleep), task 103 (sleep)")),
            "{got:#?}"
        );
        guest(&ram, 3);
        // init_cred swapped into task 101.
        put(task(1) + 184, rt(0xffff_ffff_8213_0200));
        let got = details();
        assert!(
            got.len() == 1 && got[0].starts_with("task 101 (sleep) runs on init_cred"),
            "{got:#?}"
        );
        guest(&ram, 3);
        // A copy of task 102's object made outside any slab (in the image).
        let copy = INIT + 0x800;
        for o in (0..128).step_by(8) {
            let w = ram
                .read_u64(crate::guest::memory::GuestAddress(
                    cred(2) - 0xffff_ffff_8100_0000 + crate::testkit::synthetic::UNIT_TEXT_PA + o,
                ))
                .unwrap();
            put(copy + o, w);
        }
        put(task(2) + 176, rt(copy));
        put(task(2) + 184, rt(copy));
        let got = details();
        assert!(
            got.len() == 1
                && got[0]
                    .contains("is not from the credential cache: it is outside the direct map"),
            "{got:#?}"
        );
    }
}
