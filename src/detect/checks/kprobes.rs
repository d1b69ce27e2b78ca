//! The kprobe registry: every registered kprobe (and kretprobe) whose
//! handler lies outside the kernel image, with its owner. This sees the
//! kprobes the code comparison cannot: those on an ftrace call site
//! (`KPROBES_ON_FTRACE` arms them through ftrace with a kernel callback),
//! and optimized ones. Layouts come from the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;

pub struct Kprobes;

/// Kprobes followed in all, at most (a hostile guest may loop its lists).
const MAX_PROBES: usize = 4096;

/// Offsets in 6.1's `struct kprobe` and `struct kretprobe`.
struct Layout {
    addr: u64,
    /// The kprobes an aggregate kprobe stands for.
    list: u64,
    pre_handler: u64,
    post_handler: u64,
    /// `struct kretprobe`: `kp` first, then these.
    ret_handler: Option<u64>,
    ret_entry_handler: Option<u64>,
}

impl Layout {
    fn from(cx: &Context) -> Option<Layout> {
        let off = |s: &str, m: &str| cx.field(s, &[m]);
        Some(Layout {
            addr: off("kprobe", "addr")?,
            list: off("kprobe", "list")?,
            pre_handler: off("kprobe", "pre_handler")?,
            post_handler: off("kprobe", "post_handler")?,
            ret_handler: off("kretprobe", "handler"),
            ret_entry_handler: off("kretprobe", "entry_handler"),
        })
    }
}

impl Check for Kprobes {
    fn kind(&self) -> FindingKind {
        FindingKind::Kprobe
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let (Some(table), Some(len)) = (cx.sym("kprobe_table"), cx.map().extent("kprobe_table"))
        else {
            return; // a kernel without kprobes
        };
        let Some(l) = Layout::from(cx) else {
            out.add(
                "the build has no BTF for struct kprobe: registered kprobes not checked",
                &[table],
                "",
            );
            return;
        };
        let heads = usize::try_from(len / 8).unwrap_or(0).min(1024);
        let Some(first) = cx.read_words(table, heads) else {
            out.add("cannot read kprobe_table", &[table], "");
            return;
        };
        let mut budget = MAX_PROBES;
        for head in first {
            // hlist: `hlist` is struct kprobe's first member.
            for p in cx.chain(head, 0, 0, MAX_PROBES.saturating_add(1)) {
                if budget == 0 {
                    out.add(
                        format!("kprobe_table holds more than {MAX_PROBES} kprobes (a loop?)"),
                        &[table],
                        "",
                    );
                    return;
                }
                budget = budget.saturating_sub(1);
                if !probe(cx, &l, p, &mut budget, out) {
                    break;
                }
            }
        }
    }
}

/// Report the kprobe at `p` (and, for an aggregate, those on its list).
/// False if it cannot be read.
fn probe(cx: &Context, l: &Layout, p: u64, budget: &mut usize, out: &mut Report) -> bool {
    let word = |off: u64| cx.read_word(p.wrapping_add(off));
    let (Some(addr), Some(pre)) = (word(l.addr), word(l.pre_handler)) else {
        out.add(
            format!("kprobe_table leads to unreadable memory at {p:#x}"),
            &[p],
            "",
        );
        return false;
    };
    if cx.sym("aggr_pre_handler") == Some(pre) {
        // Several kprobes on one address: theirs are on `list`.
        let head = p.wrapping_add(l.list);
        for q in cx.list(head, *budget) {
            *budget = budget.saturating_sub(1);
            let kp = q.wrapping_sub(l.list);
            report(cx, l, kp, addr, out);
        }
        return true;
    }
    report(cx, l, p, addr, out);
    true
}

/// One kprobe at `kp` on `addr`: its handlers (a kretprobe's are in the
/// struct around it) outside the image are a finding.
fn report(cx: &Context, l: &Layout, kp: u64, addr: u64, out: &mut Report) {
    let word = |off: u64| cx.read_word(kp.wrapping_add(off)).unwrap_or(0);
    let pre = word(l.pre_handler);
    let mut handlers = vec![("pre-handler", pre), ("post-handler", word(l.post_handler))];
    let what = if cx.sym("pre_handler_kretprobe") == Some(pre) {
        handlers.clear();
        handlers.extend(l.ret_handler.map(|o| ("return handler", word(o))));
        handlers.extend(l.ret_entry_handler.map(|o| ("entry handler", word(o))));
        "kretprobe"
    } else {
        "kprobe"
    };
    for (role, h) in handlers {
        if h != 0 && !cx.in_image(h) {
            out.add(
                format!(
                    "a {what} on {} has its {role} at {}",
                    cx.name(addr),
                    cx.name(h)
                ),
                &[addr, h, kp],
                "registered in kprobe_table",
            );
        }
    }
}
