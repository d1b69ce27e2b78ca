//! Modules that hid themselves: a rootkit unlinks its `struct module` from
//! the `modules` list (so `lsmod` and `/proc/modules` miss it, as does every
//! check that attributes code to modules), but the kernel still finds the
//! module's code through `mod_tree`, the latched tree of module addresses
//! it keeps for exceptions, kallsyms and stack traces, and its kobject may
//! still be in `module_kset` (`/sys/module`); or it deletes its kobject and
//! stays in the list. A module in one of the three and missing from
//! another, still so a moment later (loading and unloading pass through
//! such states), has hidden itself. Layouts come from the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context};
use crate::detect::{Finding, FindingKind};
use crate::escape::escape_bytes;

pub struct HiddenModules;

/// Tree nodes followed at most (a module has one or two: core and init).
const MAX_NODES: usize = 8192;
/// How long a module out of the list may be on its way out.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

struct Layout {
    /// `mod_tree_root.root.tree[0]` in `mod_tree`.
    tree: u64,
    rb_right: u64,
    rb_left: u64,
    /// `struct mod_tree_node`: `mod`, and `node` (a latch_tree_node whose
    /// first rb_node is tree 0's).
    mtn_mod: u64,
    mtn_node: u64,
    name: u64,
}

impl Layout {
    fn from(cx: &Context) -> Option<Layout> {
        let btf = cx.vmlinux.btf()?;
        Some(Layout {
            tree: btf.offset_of("mod_tree_root", &["root", "tree"])?,
            rb_right: btf.offset_of("rb_node", &["rb_right"])?,
            rb_left: btf.offset_of("rb_node", &["rb_left"])?,
            mtn_mod: btf.offset_of("mod_tree_node", &["mod"])?,
            mtn_node: btf.offset_of("mod_tree_node", &["node"])?,
            name: btf.offset_of("module", &["name"])?,
        })
    }
}

impl Check for HiddenModules {
    fn kind(&self) -> FindingKind {
        FindingKind::HiddenModule
    }

    fn run(&self, cx: &Context, out: &mut Vec<Finding>) {
        let Some(root) = cx.sym("mod_tree") else {
            return; // no MODULES_TREE_LOOKUP, or no modules
        };
        let Some(l) = Layout::from(cx) else {
            out.push(Finding::new(
                FindingKind::HiddenModule,
                "the build has no BTF for mod_tree: hidden modules not looked for",
                &[root],
                "",
            ));
            return;
        };
        let odd = |out: &mut Vec<Finding>| -> Vec<(u64, &'static str)> {
            let listed: BTreeSet<u64> = cx.view.read_modules().iter().map(|m| m.addr).collect();
            let tree = tree_modules(cx, &l, root, out);
            let sysfs = sysfs_modules(cx);
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
        if odd(&mut Vec::new()).is_empty() {
            return;
        }
        // Loading and unloading pass through these states for a moment.
        std::thread::sleep(SETTLE);
        for (m, what) in odd(out) {
            let name = module_name(cx, &l, m);
            out.push(
                Finding::new(
                    FindingKind::HiddenModule,
                    format!("module {name} (struct module at {m:#x}) {what}: it hid itself"),
                    &[m],
                    "the kernel's module list, address tree and sysfs disagree",
                )
                .owned_by(name),
            );
        }
    }
}

/// The `struct module`s behind `/sys/module`: the kobjects of
/// `module_kset` that are a `struct module_kobject` with a module (built-in
/// modules' parameters have none). None if the kset cannot be read.
fn sysfs_modules(cx: &Context) -> Option<BTreeSet<u64>> {
    let btf = cx.vmlinux.btf()?;
    let kset = cx.view.read_word(cx.sym("module_kset")?)?;
    let list = btf.offset_of("kset", &["list"])?;
    let entry = btf.offset_of("kobject", &["entry"])?;
    let kobj = btf.offset_of("module_kobject", &["kobj"])?;
    let module = btf.offset_of("module_kobject", &["mod"])?;
    let head = kset.wrapping_add(list);
    let mut out = BTreeSet::new();
    let mut p = cx.view.read_word(head)?;
    let mut n = 0usize;
    while p != head && p != 0 && n < MAX_NODES {
        n = n.saturating_add(1);
        let mk = p.wrapping_sub(entry).wrapping_sub(kobj);
        if let Some(m) = cx
            .view
            .read_word(mk.wrapping_add(module))
            .filter(|&m| m != 0)
        {
            out.insert(m);
        }
        p = cx.view.read_word(p)?;
    }
    Some(out)
}

/// `[start, end)` of the core code of each module in `mod_tree` but not in
/// the module list, with its name: what hidden code belongs to.
pub fn unlisted_module_code(cx: &Context) -> Vec<(u64, u64, String)> {
    let (Some(root), Some(l)) = (cx.sym("mod_tree"), Layout::from(cx)) else {
        return Vec::new();
    };
    let listed: BTreeSet<u64> = cx.view.read_modules().iter().map(|m| m.addr).collect();
    tree_modules(cx, &l, root, &mut Vec::new())
        .difference(&listed)
        .filter_map(|&m| {
            let (s, e) = cx.view.module_text(m)?;
            Some((s, e, module_name(cx, &l, m)))
        })
        .collect()
}

/// The escaped name of the `struct module` at `m`.
fn module_name(cx: &Context, l: &Layout, m: u64) -> String {
    let mut name = [0u8; 56];
    match cx.read(m.wrapping_add(l.name), &mut name) {
        Some(()) => {
            let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            escape_bytes(&name[..n])
        }
        None => "?".into(),
    }
}

/// The `struct module`s of the nodes of `mod_tree`'s first tree.
fn tree_modules(cx: &Context, l: &Layout, root: u64, out: &mut Vec<Finding>) -> BTreeSet<u64> {
    let mut mods = BTreeSet::new();
    let mut stack = Vec::new();
    if let Some(top) = cx.view.read_word(root.wrapping_add(l.tree)) {
        stack.push(top);
    }
    let mut seen = 0usize;
    while let Some(n) = stack.pop() {
        if n == 0 {
            continue;
        }
        seen = seen.saturating_add(1);
        if seen > MAX_NODES {
            out.push(Finding::new(
                FindingKind::HiddenModule,
                format!("mod_tree has more than {MAX_NODES} nodes (a loop?)"),
                &[root],
                "",
            ));
            break;
        }
        // `node` is tree 0's rb_node of the latch_tree_node in a mod_tree_node.
        let mtn = n.wrapping_sub(l.mtn_node);
        let (Some(m), Some(r), Some(left)) = (
            cx.view.read_word(mtn.wrapping_add(l.mtn_mod)),
            cx.view.read_word(n.wrapping_add(l.rb_right)),
            cx.view.read_word(n.wrapping_add(l.rb_left)),
        ) else {
            continue;
        };
        mods.insert(m);
        stack.push(r);
        stack.push(left);
    }
    mods
}
