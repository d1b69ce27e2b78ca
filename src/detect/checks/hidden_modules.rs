//! Modules that hid themselves: a rootkit unlinks its `struct module` from
//! the `modules` list (so `lsmod` and `/proc/modules` miss it, as does every
//! check that attributes code to modules), but the kernel still finds the
//! module's code through `mod_tree`, the latched tree of module addresses
//! it keeps for exceptions, kallsyms and stack traces, and its kobject may
//! still be in `module_kset` (`/sys/module`); or it deletes its kobject and
//! stays in the list. A module in one of the three and missing from
//! another, still so a moment later (loading and unloading pass through
//! such states), has hidden itself. The walks are
//! [`crate::kernel::modules`]'s.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::kernel::modules::MAX_NODES;
use crate::kernel::walk::End;

pub struct HiddenModules;

/// How long a module out of the list may be on its way out.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

impl Check for HiddenModules {
    fn kind(&self) -> FindingKind {
        FindingKind::HiddenModule
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(root) = cx.sym("mod_tree") else {
            return; // no MODULES_TREE_LOOKUP, or no modules
        };
        if cx.module_tree_layout().is_none() {
            out.add(
                "the build has no BTF for mod_tree: hidden modules not looked for",
                &[root],
                "",
            );
            return;
        }
        let odd = |out: &mut Report| -> Vec<(u64, &'static str)> {
            let listed: BTreeSet<u64> = cx.read_modules().iter().map(|m| m.addr).collect();
            let (tree, end) = cx
                .tree_modules()
                .unwrap_or((BTreeSet::new(), End::Complete));
            if end == End::Truncated {
                out.add(
                    format!("mod_tree has more than {MAX_NODES} nodes (a loop?)"),
                    &[root],
                    "",
                );
            }
            let sysfs = cx.sysfs_modules();
            let mut odd: Vec<(u64, &'static str)> = tree
                .difference(&listed)
                .map(|&m| {
                    (
                        m,
                        "is in the kernel's module address tree but not in the module list",
                    )
                })
                .collect();
            if let Some(sysfs) = sysfs {
                odd.extend(
                    sysfs
                        .difference(&listed)
                        .filter(|m| !tree.contains(m))
                        .map(|&m| (m, "is in sysfs (/sys/module) but not in the module list")),
                );
                odd.extend(
                    listed
                        .difference(&sysfs)
                        .map(|&m| (m, "is in the module list but not in sysfs (/sys/module)")),
                );
            }
            odd
        };
        if odd(&mut out.scratch()).is_empty() {
            return;
        }
        // Loading and unloading pass through these states for a moment.
        std::thread::sleep(SETTLE);
        for (m, what) in odd(out) {
            let name = cx.module_name(m).unwrap_or_else(|| "?".into());
            out.push(
                out.finding(
                    format!("module {name} (struct module at {m:#x}) {what}: it hid itself"),
                    &[m],
                    "the kernel's module list, address tree and sysfs disagree",
                )
                .owned_by(name),
            );
        }
    }
}
