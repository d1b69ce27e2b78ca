//! ftrace's own hook list: callbacks outside the kernel image are how
//! ftrace-hooking rootkits show.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;

pub struct FtraceHooks;

impl Check for FtraceHooks {
    fn kind(&self) -> FindingKind {
        FindingKind::FtraceHook
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        ftrace_ops(cx, out)
    }
}

/// Walk `ftrace_ops_list`: `struct ftrace_ops { func; next; ... }`.
fn ftrace_ops(cx: &Context, out: &mut Report) {
    let (Some(head), Some(end)) = (cx.sym("ftrace_ops_list"), cx.sym("ftrace_list_end")) else {
        return;
    };
    let Some(mut ops) = cx.read_words(head, 1).map(|w| w[0]) else {
        out.add("cannot read ftrace_ops_list", &[head], "");
        return;
    };
    for _ in 0..256 {
        if ops == end || ops == 0 {
            return;
        }
        let Some(w) = cx.read_words(ops, 2) else {
            out.add(
                format!("ftrace_ops_list leads to unreadable memory at {ops:#x}"),
                &[ops],
                "",
            );
            return;
        };
        let (func, next) = (w[0], w[1]);
        if !cx.in_image(func) {
            out.add(
                format!(
                    "an ftrace hook at {ops:#x} runs {} on traced kernel functions",
                    cx.name(func)
                ),
                &[ops, func],
                if cx.in_image(ops) {
                    "ftrace_ops in the kernel image"
                } else {
                    "ftrace_ops outside the kernel image (module or heap)"
                },
            );
        }
        ops = next;
    }
    out.add("ftrace_ops_list does not end (loop?)", &[head], "");
}
