//! Call-flow analysis (the paper's method): what each traced syscall calls,
//! to a depth, compared with a baseline of the clean guest; and any frame
//! outside the kernel image, like `0xffffffffc0b37000()` in the paper's
//! Fig. 4b.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::abi::{Kind, Record};

use super::{Finding, FindingKind};

/// Per traced root function, `caller>callee` edges with counts.
pub type Edges = BTreeMap<String, BTreeMap<String, u64>>;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    pub functions: Vec<String>,
    pub depth: u32,
    pub edges: Edges,
}

/// Functions through which interrupts, softirqs and exceptions enter a
/// traced call at arbitrary points: not part of its call flow.
///
/// The guest records only task context, but an interrupt's exit runs in
/// task context again once it has left hardirq context (`__irq_exit_rcu`
/// after `preempt_count_sub(HARDIRQ_OFFSET)`, `irqentry_exit`): what it
/// calls there appears as a direct callee of whatever the interrupted task
/// was in. Those are the functions of the second group.
const ASYNC: &[&str] = &[
    "irq_enter_rcu",
    "irq_exit_rcu",
    "irq_enter",
    "irq_exit",
    "handle_softirqs",
    "__do_softirq",
    "do_softirq",
    "__irq_exit_rcu",
    "exc_page_fault",
    "asm_exc_page_fault",
    // invoke_softirq(): ksoftirqd_running() asks about ksoftirqd.
    "__kthread_should_park",
    "wakeup_softirqd",
    // tick_irq_exit() on an idle or nohz_full CPU.
    "tick_nohz_irq_exit",
    // irqentry_exit() on a preemptible kernel.
    "irqentry_exit_cond_resched",
    "raw_irqentry_exit_cond_resched",
    "dynamic_irqentry_exit_cond_resched",
    "preempt_schedule_irq",
];

fn is_async(name: &str) -> bool {
    ASYNC.contains(&name) || name.starts_with("sysvec_") || name.starts_with("__sysvec_")
}

/// Follows each task's entries in time order with a call stack (a CPU's
/// records interleave tasks when one blocks inside a traced call). Memory:
/// one stack of at most FTRACE_RETFUNC_DEPTH frames per task.
///
/// Records lost on a CPU (its ring overran, or a record failed its check)
/// leave the stacks of the tasks that ran there unknown: those tasks are
/// followed again from their next call at depth 0, so that a lost entry
/// never makes a callee look like another function's. The same holds for
/// a task first seen, or seen again, deeper than its stack explains.
#[derive(Default)]
struct Walker {
    stacks: BTreeMap<u32, Vec<(u32, u64)>>,
    /// Tasks waiting for their next depth-0 call.
    lost: std::collections::BTreeSet<u32>,
    /// Per CPU: the last record's sequence number.
    seqs: BTreeMap<u32, u64>,
    /// Per task: the CPU of its last record.
    cpu_of: BTreeMap<u32, u32>,
    /// Per CPU: the tasks whose last record was there, and that a gap on
    /// it has not made lost since (each record adds at most one, each gap
    /// empties its CPU's: linear in records, however many tasks a forger
    /// invents).
    tasks_on: BTreeMap<u32, std::collections::BTreeSet<u32>>,
    /// Per task: the frame whose return is under way while an interrupt
    /// runs (see [`Walker::visit`]).
    returning: BTreeMap<u32, (u32, u64)>,
}

/// Where an entry sits in its task's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Under `root` (itself, at depth 0), called by `parent`.
    Known { root: u64, parent: Option<u64> },
    /// In a call whose start was lost.
    Unknown,
    /// In an interrupt that came while a function of `root`'s call was
    /// returning.
    Interrupt { root: u64 },
}

impl Walker {
    fn note_sequence(&mut self, r: &Record) {
        let gap = self
            .seqs
            .insert(r.cpu, r.seq)
            .is_some_and(|prev| r.seq != prev.saturating_add(1));
        if gap {
            for p in self.tasks_on.remove(&r.cpu).unwrap_or_default() {
                self.cpu_of.remove(&p);
                self.stacks.remove(&p);
                self.returning.remove(&p);
                self.lost.insert(p);
            }
            // The task of this very record may have run in the gap too.
            self.stacks.remove(&r.pid);
            self.returning.remove(&r.pid);
            self.lost.insert(r.pid);
        }
        if let Some(was) = self.cpu_of.insert(r.pid, r.cpu).filter(|&c| c != r.cpu) {
            if let Some(there) = self.tasks_on.get_mut(&was) {
                there.remove(&r.pid);
            }
        }
        self.tasks_on.entry(r.cpu).or_default().insert(r.pid);
    }

    /// For any record: keep the stacks; for an entry, where it sits.
    ///
    /// fgraph lowers a task's depth before the return hook records the
    /// return: an interrupt that comes in between records its calls at the
    /// depth of the returning function, as if they were its siblings. An
    /// entry at the depth of a frame that has not returned is such an
    /// interrupt, and so is all the task records until that return.
    fn visit(&mut self, r: &Record) -> Option<Place> {
        self.note_sequence(r);
        let stack = self.stacks.entry(r.pid).or_default();
        if r.kind != Kind::Entry {
            if let Some(&(d, f)) = self.returning.get(&r.pid) {
                if r.depth > d || (r.depth == d && r.func != f) {
                    return None; // the interrupt's own return
                }
                self.returning.remove(&r.pid);
            }
            // Frames deeper than the return lost theirs (dropped by the
            // guest); then the returning frame itself.
            while stack.last().is_some_and(|&(d, _)| d > r.depth) {
                stack.pop();
            }
            if stack.last() == Some(&(r.depth, r.func)) {
                stack.pop();
            }
            return None;
        }
        if let (Some(&(_, root)), Some(&top)) = (stack.first(), stack.last()) {
            if !self.lost.contains(&r.pid)
                && (self.returning.contains_key(&r.pid) || r.depth == top.0)
            {
                self.returning.entry(r.pid).or_insert(top);
                return Some(Place::Interrupt { root });
            }
        }
        // Shallower than the open frames: their returns were dropped.
        while stack.last().is_some_and(|&(d, _)| d >= r.depth) {
            stack.pop();
        }
        let expected = stack.last().map_or(0, |&(d, _)| d.saturating_add(1));
        if r.depth == 0 {
            self.lost.remove(&r.pid);
        } else if r.depth != expected {
            self.lost.insert(r.pid);
        }
        if self.lost.contains(&r.pid) {
            stack.clear();
            return Some(Place::Unknown);
        }
        let root = stack.first().map_or(r.func, |&(_, f)| f);
        let parent = stack.last().map(|&(_, f)| f);
        stack.push((r.depth, r.func));
        Some(Place::Known { root, parent })
    }
}

/// Where code outside the image was first seen: its caller, the task's
/// pid and name.
type FirstSeen = (Option<u64>, u32, [u8; 16]);

/// What one pass over a trace gives.
#[derive(Debug, Default)]
pub struct Flow {
    pub edges: Edges,
    pub unknown_code: Vec<Finding>,
}

/// One pass over records in time order (a [`crate::trace::spool::Merged`]
/// stream): edges up to `depth` levels below each root, leaving out
/// interrupts and exceptions that arrived during the call (and whatever
/// they called), and every frame whose code lies outside the kernel image.
pub fn analyze(
    records: impl IntoIterator<Item = Record>,
    name: &dyn Fn(u64) -> String,
    in_image: &dyn Fn(u64) -> bool,
    depth: u32,
) -> Flow {
    let mut e = Edges::new();
    let mut walker = Walker::default();
    // Per task: the depth of an asynchronous frame being skipped.
    let mut skipping: BTreeMap<u32, u32> = BTreeMap::new();
    let mut unknown: BTreeMap<(Option<u64>, u64), FirstSeen> = BTreeMap::new();
    for r in records {
        let Some(place) = walker.visit(&r) else {
            continue;
        };
        let (root, parent) = match place {
            Place::Known { root, parent } => (Some(root), parent),
            Place::Unknown => (None, None),
            Place::Interrupt { root } => {
                if !in_image(r.func) && unknown.len() < 1024 {
                    unknown
                        .entry((Some(root), r.func))
                        .or_insert((None, r.pid, r.comm));
                }
                continue;
            }
        };
        if !in_image(r.func) && unknown.len() < 1024 {
            unknown
                .entry((root, r.func))
                .or_insert((parent, r.pid, r.comm));
        }
        let Some(root) = root else {
            // Where records were lost, no edge is trusted.
            skipping.remove(&r.pid);
            continue;
        };
        if let Some(&d) = skipping.get(&r.pid) {
            if r.depth > d {
                continue;
            }
            skipping.remove(&r.pid);
        }
        let callee = name(r.func);
        if is_async(&callee) {
            skipping.insert(r.pid, r.depth);
            continue;
        }
        if let Some(p) = parent {
            if r.depth <= depth {
                let n = e
                    .entry(name(root))
                    .or_default()
                    .entry(format!("{}>{}", name(p), callee))
                    .or_default();
                *n = n.saturating_add(1);
            }
        }
    }
    let unknown_code = unknown
        .into_iter()
        .map(|((root, func), (parent, pid, comm))| {
            Finding::new(
                FindingKind::CallFlowUnknownCode,
                format!(
                    "{} runs code outside the kernel image at {func:#x}{}",
                    root.map_or("a traced call (whose start was lost)".into(), name),
                    parent.map_or(String::new(), |p| format!(", called from {}", name(p)))
                ),
                &[func],
                format!(
                    "pid {pid} ({})",
                    crate::base::escape::escape_bytes(
                        &comm[..comm.iter().position(|&b| b == 0).unwrap_or(16)]
                    )
                ),
            )
        })
        .collect();
    Flow {
        edges: e,
        unknown_code,
    }
}

/// Edges of a trace (see [`analyze`]).
pub fn edges(records: &[Record], name: &dyn Fn(u64) -> String, depth: u32) -> Edges {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.time);
    analyze(sorted, name, &|_| true, depth).edges
}

/// Frames whose code lies outside the kernel image (see [`analyze`]).
pub fn unknown_code(
    records: &[Record],
    in_image: &dyn Fn(u64) -> bool,
    name: &dyn Fn(u64) -> String,
) -> Vec<Finding> {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.time);
    analyze(sorted, name, in_image, 0).unknown_code
}

/// Edges to functions the baseline never saw in that syscall's flow, and
/// that the build's code does not allow (`allows(caller, callee)`, see
/// [`crate::kernel::callgraph`]): a rare but legitimate path (an error
/// branch, a file system read for the first time) is no finding. (A known
/// callee under an unfamiliar parent is not reported either.)
pub fn new_edges(
    baseline: &Baseline,
    now: &Edges,
    allows: &dyn Fn(&str, &str) -> bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (root, es) in now {
        let Some(known) = baseline.edges.get(root) else {
            continue;
        };
        let callees: std::collections::BTreeSet<&str> = known
            .keys()
            .filter_map(|e| e.split_once('>').map(|(_, c)| c))
            .collect();
        for (edge, count) in es {
            let (caller, callee) = edge.split_once('>').unwrap_or(("", edge.as_str()));
            if !callees.contains(callee) && !allows(caller, callee) {
                out.push(Finding::new(
                    FindingKind::CallFlowNewEdge,
                    format!(
                        "{root}: {} never seen in the baseline",
                        edge.replace('>', " -> ")
                    ),
                    &[],
                    format!("{count} times"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn ev(kind: Kind, func: u64, depth: u32) -> Record {
        Record {
            cpu: 0,
            seq: 0,
            epoch: 1,
            kind,
            func,
            time: 0,
            calltime: 0,
            depth,
            pid: 9,
            overrun: 0,
            comm: [0; 16],
        }
    }

    fn name(a: u64) -> String {
        match a {
            1 => "__x64_sys_getdents64".into(),
            2 => "iterate_dir".into(),
            3 => "dcache_readdir".into(),
            4 => "irq_enter_rcu".into(),
            5 => "handle_softirqs".into(),
            6 => "run_timer_softirq".into(),
            7 => "__kthread_should_park".into(),
            _ => format!("{a:#x}"),
        }
    }

    /// Records as one ring holds them: consecutive sequence numbers.
    fn ring(mut v: Vec<Record>) -> Vec<Record> {
        for (i, r) in v.iter_mut().enumerate() {
            r.seq = i as u64;
            r.time = i as u64;
        }
        v
    }

    fn clean() -> Vec<Record> {
        use Kind::*;
        ring(vec![
            ev(Entry, 1, 0),
            ev(Entry, 2, 1),
            ev(Entry, 3, 2),
            ev(Return, 3, 2),
            ev(Return, 2, 1),
            ev(Return, 1, 0),
        ])
    }

    #[test]
    fn interrupts_inside_a_call_are_not_call_flow() {
        use Kind::*;
        let mut r = clean();
        r.splice(
            2..2,
            [
                ev(Entry, 4, 2),
                ev(Return, 4, 2),
                ev(Entry, 5, 2),
                ev(Entry, 6, 3),
                ev(Return, 6, 3),
                ev(Return, 5, 2),
            ],
        );
        assert_eq!(edges(&ring(r), &name, 4), edges(&clean(), &name, 4));
    }

    /// An interrupt's exit runs in task context after leaving hardirq
    /// context: its calls look like the interrupted function's (a clean
    /// Debian guest showed `do_sys_openat2 -> __kthread_should_park`).
    #[test]
    fn an_interrupts_exit_is_not_call_flow() {
        use Kind::*;
        let mut r = clean();
        r.splice(2..2, [ev(Entry, 7, 2), ev(Return, 7, 2)]);
        assert_eq!(edges(&ring(r), &name, 4), edges(&clean(), &name, 4));
    }

    /// fgraph lowers the depth before a return is recorded: an interrupt
    /// in between looks like siblings of the returning function (seen on
    /// a busy guest: `irq_enter_rcu`, `handle_softirqs`, `idle_cpu` at
    /// depth 0 before `__x64_sys_read` returned).
    #[test]
    fn an_interrupt_while_a_function_returns_is_not_call_flow() {
        use Kind::*;
        let mut r = clean();
        // Before iterate_dir's return (index 4) and before the root's (5).
        r.splice(
            5..5,
            [
                ev(Entry, 4, 0),
                ev(Return, 4, 0),
                ev(Entry, 5, 0),
                ev(Entry, 6, 1),
                ev(Return, 6, 1),
                ev(Return, 5, 0),
            ],
        );
        r.splice(4..4, [ev(Entry, 3, 1), ev(Return, 3, 1)]);
        assert_eq!(edges(&ring(r.clone()), &name, 4), edges(&clean(), &name, 4));
        // Code outside the image there is still found.
        r.splice(
            5..5,
            [
                ev(Entry, 0xffff_ffff_c0b3_7000, 1),
                ev(Return, 0xffff_ffff_c0b3_7000, 1),
            ],
        );
        let u = unknown_code(&ring(r.clone()), &|a| a < 0x100, &name);
        assert_eq!(u.len(), 1, "{u:?}");
        assert!(
            u[0].detail
                .starts_with("__x64_sys_getdents64 runs code outside"),
            "{}",
            u[0].detail
        );
        // And the next call is followed as usual.
        let mut two = r.clone();
        two.extend(clean());
        let e = edges(&ring(two), &name, 4);
        assert_eq!(e["__x64_sys_getdents64"].len(), 2, "{e:?}");
        assert!(e["__x64_sys_getdents64"].values().all(|&n| n == 2), "{e:?}");
    }

    /// A forger that invents a task per record and a sequence gap at each
    /// one: the walk stays linear in records (it scanned every task ever
    /// seen at each gap: 80 000 records took 135 s). The bound only tells
    /// linear from quadratic; it is no speed target.
    #[test]
    fn a_gap_per_record_with_a_new_task_each_is_linear() {
        let n = 200_000u64;
        let forged = (0..n).map(|i| Record {
            seq: i * 2,
            time: i,
            pid: i as u32,
            ..ev(Kind::Entry, 1 + i % 3, 0)
        });
        let t = std::time::Instant::now();
        let flow = analyze(forged, &name, &|_| true, 4);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
        assert!(
            flow.edges.values().all(|m| m.is_empty()),
            "{:?}",
            flow.edges
        );
    }

    /// A gap on a CPU loses the stacks of the tasks that last ran there,
    /// not of those that moved on.
    #[test]
    fn a_gap_loses_only_the_tasks_last_seen_on_its_cpu() {
        use Kind::*;
        let mut r = vec![
            (0, 0, ev(Entry, 1, 0)),
            (0, 1, ev(Entry, 2, 1)),
            // The task moves to CPU 1 inside iterate_dir.
            (1, 0, ev(Entry, 10, 2)),
            // CPU 0 loses records (someone else's): the task is unaffected.
            (
                0,
                9,
                Record {
                    pid: 5,
                    ..ev(Entry, 12, 0)
                },
            ),
            (1, 1, ev(Return, 10, 2)),
            (1, 2, ev(Entry, 11, 2)),
            (1, 3, ev(Return, 11, 2)),
            // CPU 1 loses records: now the task's stack is unknown.
            (1, 9, ev(Entry, 13, 2)),
        ];
        let r: Vec<Record> = r
            .drain(..)
            .enumerate()
            .map(|(t, (cpu, seq, x))| Record {
                cpu,
                seq,
                time: t as u64,
                ..x
            })
            .collect();
        let e = edges(&r, &name, 4);
        let under = &e["__x64_sys_getdents64"];
        assert!(under.contains_key("iterate_dir>0xa"), "{e:?}");
        assert!(under.contains_key("iterate_dir>0xb"), "{e:?}");
        assert!(!under.keys().any(|k| k.ends_with("0xd")), "{e:?}");
    }

    #[test]
    fn lost_records_never_make_a_callee_look_like_anothers() {
        use Kind::*;
        // getdents64 -> iterate_dir, then the ring overran (the return of
        // both and a new call's first entries were lost), then a deeper
        // entry of that new call: no edge for it; the next call at depth 0
        // is followed again.
        let mut r = ring(vec![ev(Entry, 1, 0), ev(Entry, 2, 1)]);
        let mut after = ring(vec![
            ev(Entry, 6, 2),
            ev(Return, 6, 2),
            ev(Return, 5, 1),
            ev(Return, 4, 0),
        ]);
        for x in &mut after {
            x.seq += 100;
            x.time += 100;
        }
        r.extend(after);
        let mut next = clean();
        for x in &mut next {
            x.seq += 200;
            x.time += 200;
        }
        r.extend(next);
        let keys =
            |e: Edges| -> Vec<String> { e.values().flat_map(|m| m.keys().cloned()).collect() };
        let e = edges(&r, &name, 4);
        assert_eq!(keys(e.clone()), keys(edges(&clean(), &name, 4)), "{e:?}");
        // The same without a gap in the sequence, but a level missing.
        let jump = ring(vec![
            ev(Entry, 1, 0),
            ev(Entry, 2, 1),
            ev(Entry, 6, 3),
            ev(Return, 6, 3),
        ]);
        assert_eq!(edges(&jump, &name, 4)["__x64_sys_getdents64"].len(), 1);
        // Unknown code is still reported where the call's start was lost.
        let mut lost = ring(vec![ev(Entry, 1, 0)]);
        lost.push(Record {
            seq: 50,
            ..ev(Entry, 0xffff_ffff_c0b3_7000, 3)
        });
        let u = unknown_code(&lost, &|a| a < 0x100, &name);
        assert_eq!(u.len(), 1);
        assert!(
            u[0].detail.contains("whose start was lost"),
            "{}",
            u[0].detail
        );
    }

    #[test]
    fn baseline_edges_and_new_ones() {
        let b = Baseline {
            functions: vec!["__x64_sys_getdents64".into()],
            depth: 4,
            edges: edges(&clean(), &name, 4),
        };
        assert_eq!(
            b.edges["__x64_sys_getdents64"]["iterate_dir>dcache_readdir"],
            1
        );
        let none = |_: &str, _: &str| false;
        assert!(new_edges(&b, &edges(&clean(), &name, 4), &none).is_empty());
        // A hook inserted between iterate_dir and dcache_readdir.
        use Kind::*;
        let hooked = ring(vec![
            ev(Entry, 1, 0),
            ev(Entry, 2, 1),
            ev(Entry, 0xffff_ffff_c0b3_7000, 2),
            ev(Entry, 3, 3),
            ev(Return, 3, 3),
            ev(Return, 0xffff_ffff_c0b3_7000, 2),
            ev(Return, 2, 1),
            ev(Return, 1, 0),
        ]);
        let f = new_edges(&b, &edges(&hooked, &name, 4), &none);
        // dcache_readdir under the hook is a known callee: only the hook is new.
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].detail.contains("0xffffffffc0b37000"));
        // An edge the build's code allows is no finding, seen or not.
        let build = |_: &str, callee: &str| callee == "0xffffffffc0b37000";
        assert!(new_edges(&b, &edges(&hooked, &name, 4), &build).is_empty());
        let u = unknown_code(&hooked, &|a| a < 0x100, &name);
        assert_eq!(u.len(), 1);
        assert!(u[0].detail.contains("__x64_sys_getdents64 runs code outside the kernel image at 0xffffffffc0b37000, called from iterate_dir"), "{}", u[0].detail);
    }
}
