//! Taint flags cleared to hide a module: a module that taints the kernel
//! (out of tree, unsigned, forced) sets its flag in its own `taints` and
//! in the kernel's `tainted_mask`, and the kernel never clears either. A
//! flag a loaded module still carries that the kernel's mask no longer
//! has was cleared by someone who did not want the kernel to look tainted
//! (rootkits do, so that `/proc/sys/kernel/tainted` and Oops reports read
//! clean).
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::kernel::taint;

pub struct Taint;

impl Check for Taint {
    fn kind(&self) -> FindingKind {
        FindingKind::Taint
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(at) = cx.sym("tainted_mask") else {
            return;
        };
        let Some(mask) = taint::mask(cx) else {
            out.add(
                "the kernel's tainted_mask cannot be read",
                &[at],
                "taint flags not checked",
            );
            return;
        };
        let mut modules: Vec<(u64, String)> = cx
            .modules()
            .iter()
            .map(|m| (m.addr, m.name.clone()))
            .collect();
        if let Some((tree, _)) = cx.tree_modules() {
            for m in tree {
                if !modules.iter().any(|(a, _)| *a == m) {
                    modules.push((m, cx.module_name(m).unwrap_or_else(|| "?".into())));
                }
            }
        }
        for (addr, name) in modules {
            let Some(t) = taint::of_module(cx, addr) else {
                continue;
            };
            let cleared = t & !mask;
            if cleared != 0 {
                let f = out
                    .finding(
                        format!(
                            "module {name} tainted the kernel with {}, which the kernel's tainted_mask ({}) no longer has: someone cleared it",
                            taint::describe(cleared),
                            taint::describe(mask)
                        ),
                        &[at, addr],
                        format!("the module's taints {}", taint::describe(t)),
                    )
                    .owned_by(name);
                out.push(f);
            }
        }
    }
}
