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
//!
//! A module can also hide in plain sight, under the name of a module the
//! build ships; where the build's `.ko` files are known, a listed module of
//! such a name whose code is not the build's is reported as well
//! ([`crate::kernel::modcode`]).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::kernel::modcode::Identity;
use crate::kernel::modules::{Module, MAX_NODES};
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
        // A walk that cannot be read to its end (or loops) is not the
        // structure: what it hides is unknown, which is itself reported.
        let cut = |what: &str, end: End, out: &mut Report| match end {
            End::Complete | End::Running => false,
            End::Truncated => {
                out.add(
                    format!("{what} has more than {MAX_NODES} entries (a loop?): hidden modules not fully looked for"),
                    &[root],
                    "",
                );
                true
            }
            End::Unreadable(a) => {
                out.add(
                    format!("{what} cannot be read to its end (at {a:#x}): hidden modules not fully looked for"),
                    &[a],
                    "",
                );
                true
            }
        };
        let odd = |out: &mut Report| -> (Vec<(u64, &'static str)>, bool) {
            let (list, list_end) = cx.module_list();
            let listed: BTreeSet<u64> = list.iter().map(|m| m.addr).collect();
            let (tree, end) = cx
                .tree_modules()
                .unwrap_or((BTreeSet::new(), End::Complete));
            let mut broken = cut("the module list", list_end, out);
            broken |= cut("mod_tree", end, out);
            let sysfs = cx.sysfs_modules();
            if let Some((_, e)) = &sysfs {
                broken |= cut("module_kset (/sys/module)", *e, out);
            }
            let mut odd: Vec<(u64, &'static str)> = tree
                .difference(&listed)
                .map(|&m| {
                    (
                        m,
                        "is in the kernel's module address tree but not in the module list",
                    )
                })
                .collect();
            if let Some((sysfs, End::Complete)) = sysfs {
                odd.extend(
                    sysfs
                        .difference(&listed)
                        .filter(|m| !tree.contains(m))
                        .map(|&m| (m, "is in sysfs (/sys/module) but not in the module list")),
                );
                if list_end == End::Complete {
                    odd.extend(
                        listed
                            .difference(&sysfs)
                            .map(|&m| (m, "is in the module list but not in sysfs (/sys/module)")),
                    );
                }
            }
            // The kernel refuses a module whose name is loaded already:
            // two of one name means one renamed itself (to pass for a
            // module of the build, say).
            odd.extend(same_names(&list).into_iter().map(|m| {
                (m, "shares its name with another listed module (the kernel loads one module of a name)")
            }));
            (odd, broken)
        };
        impostors(cx, out);
        let (first, broken) = odd(&mut out.scratch());
        if first.is_empty() && !broken {
            return;
        }
        // Loading and unloading pass through these states for a moment.
        crate::base::settle::settle(SETTLE);
        for (m, what) in odd(out).0 {
            let name = cx.module_name(m).unwrap_or_else(|| "?".into());
            out.push(
                out.finding(
                    format!("module {name} (struct module at {m:#x}) {what}: it hid itself"),
                    &[m],
                    "the kernel's module list, address tree and sysfs disagree, or a name is taken twice",
                )
                .owned_by(name),
            );
        }
    }
}

/// Listed modules that pass for a module of the build by name and are
/// not it by content ([`crate::kernel::modcode`]), still so a moment later
/// (a module being loaded is listed before its code is in place); and
/// those that cannot be told, which is reported too.
fn impostors(cx: &Context, out: &mut Report) {
    let (Some(build), Some(_)) = (cx.build_modules, cx.module_files) else {
        return;
    };
    let state = cx.field("module", &["state"]).unwrap_or(0);
    // MODULE_STATE_UNFORMED: listed, its code not yet copied in.
    const UNFORMED: u32 = 3;
    let suspects: Vec<&Module> = cx
        .modules()
        .iter()
        .filter(|m| build.contains(&m.name))
        .filter(|m| m.addr.checked_add(state).and_then(|a| cx.read_u32(a)) != Some(UNFORMED))
        .filter(|m| cx.module_identity(m) != Identity::Build)
        .collect();
    if suspects.is_empty() {
        return;
    }
    crate::base::settle::settle(SETTLE);
    for m in suspects {
        let (what, why) = match cx.module_identity_now(m) {
            Identity::Build => continue,
            Identity::Differs(why) => (
                "bears the name of a module the build ships, but its code is not that module's",
                why,
            ),
            Identity::Unverified(why) => (
                "bears the name of a module the build ships and cannot be compared with it",
                why,
            ),
        };
        out.push(
            out.finding(
                format!(
                    "module {} (struct module at {:#x}) {what}: {why}",
                    m.name, m.addr
                ),
                &[m.addr],
                "a module passes for one of the build by its name alone",
            )
            .owned_by(m.name.clone()),
        );
    }
}

/// The modules whose name another listed module has too.
fn same_names(list: &[Module]) -> Vec<u64> {
    let mut names: std::collections::BTreeMap<&str, Vec<u64>> = std::collections::BTreeMap::new();
    for m in list {
        names.entry(m.name.as_str()).or_default().push(m.addr);
    }
    names
        .into_values()
        .filter(|a| a.len() > 1)
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_taken_twice_names_both_modules() {
        let m = |addr, name: &str| Module {
            addr,
            name: name.into(),
            text: None,
            memory: None,
        };
        assert!(same_names(&[m(1, "ext4"), m(2, "xfs")]).is_empty());
        assert_eq!(
            same_names(&[m(1, "ext4"), m(2, "xfs"), m(3, "ext4")]),
            vec![1, 3]
        );
    }
}
