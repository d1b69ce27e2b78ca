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
];

fn is_async(name: &str) -> bool {
    ASYNC.contains(&name) || name.starts_with("sysvec_") || name.starts_with("__sysvec_")
}

/// Follows each task's entries in time order with a call stack (a CPU's
/// records interleave tasks when one blocks inside a traced call). Memory:
/// one stack of at most FTRACE_RETFUNC_DEPTH frames per task.
#[derive(Default)]
struct Walker {
    stacks: BTreeMap<u32, Vec<(u32, u64)>>,
}

impl Walker {
    /// For an entry record: (root function, parent function).
    fn visit(&mut self, r: &Record) -> Option<(u64, Option<u64>)> {
        if r.kind != Kind::Entry {
            return None;
        }
        let stack = self.stacks.entry(r.pid).or_default();
        while stack.last().is_some_and(|&(d, _)| d >= r.depth) {
            stack.pop();
        }
        let root = stack.first().map_or(r.func, |&(_, f)| f);
        let parent = stack.last().map(|&(_, f)| f);
        stack.push((r.depth, r.func));
        Some((root, parent))
    }
}

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
    let mut unknown: BTreeMap<(u64, u64), (Option<u64>, u32)> = BTreeMap::new();
    for r in records {
        let Some((root, parent)) = walker.visit(&r) else {
            continue;
        };
        if !in_image(r.func) && unknown.len() < 1024 {
            unknown.entry((root, r.func)).or_insert((parent, r.pid));
        }
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
        .map(|((root, func), (parent, pid))| {
            Finding::new(
                FindingKind::CallFlowUnknownCode,
                format!(
                    "{} runs code outside the kernel image at {func:#x}{}",
                    name(root),
                    parent.map_or(String::new(), |p| format!(", called from {}", name(p)))
                ),
                &[func],
                format!("pid {pid}"),
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

/// Edges to functions the baseline never saw in that syscall's flow. (A
/// known callee under an unfamiliar parent is not reported: a record lost to
/// a ring overrun, or a trace that starts mid-call, produces those.)
pub fn new_edges(baseline: &Baseline, now: &Edges) -> Vec<Finding> {
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
            let callee = edge.split_once('>').map_or(edge.as_str(), |(_, c)| c);
            if !callees.contains(callee) {
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
            _ => format!("{a:#x}"),
        }
    }

    fn clean() -> Vec<Record> {
        use Kind::*;
        vec![
            ev(Entry, 1, 0),
            ev(Entry, 2, 1),
            ev(Entry, 3, 2),
            ev(Return, 3, 2),
            ev(Return, 2, 1),
            ev(Return, 1, 0),
        ]
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
        assert_eq!(edges(&r, &name, 4), edges(&clean(), &name, 4));
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
        assert!(new_edges(&b, &edges(&clean(), &name, 4)).is_empty());
        // A hook inserted between iterate_dir and dcache_readdir.
        use Kind::*;
        let hooked = vec![
            ev(Entry, 1, 0),
            ev(Entry, 2, 1),
            ev(Entry, 0xffff_ffff_c0b3_7000, 2),
            ev(Entry, 3, 3),
            ev(Return, 3, 3),
            ev(Return, 0xffff_ffff_c0b3_7000, 2),
            ev(Return, 2, 1),
            ev(Return, 1, 0),
        ];
        let f = new_edges(&b, &edges(&hooked, &name, 4));
        // dcache_readdir under the hook is a known callee: only the hook is new.
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].detail.contains("0xffffffffc0b37000"));
        let u = unknown_code(&hooked, &|a| a < 0x100, &name);
        assert_eq!(u.len(), 1);
        assert!(u[0].detail.contains("__x64_sys_getdents64 runs code outside the kernel image at 0xffffffffc0b37000, called from iterate_dir"), "{}", u[0].detail);
    }
}
