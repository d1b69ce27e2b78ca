//! Modules against the build: every loaded module, listed or found by the
//! hidden-module walk (`mod_tree`), whose name is not among the modules
//! the guest kernel's build ships (the `modules` list beside its
//! System.map), is reported once, at low severity, with its taint flags
//! and signature state, unless the baseline's inventory (`hooks.json`)
//! has it. It is inventory, not a hook: what a module hooks is for the
//! other checks to name, and this finding alone leaves `check` clean.
//! A module is matched by name; that its code is the build's is not
//! checked here. The xftrace-dkms module that serves the kernel's tracer
//! is not reported (`status` names it).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::{inventory, FindingKind};

pub struct ForeignModules;

impl Check for ForeignModules {
    fn kind(&self) -> FindingKind {
        FindingKind::ForeignModule
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let known = inventory::load(cx.dir);
        for (addr, name, listed) in foreign(cx) {
            if known.as_ref().is_some_and(|k| k.contains(&line(&name))) {
                continue;
            }
            let f = out
                .finding(
                    format!(
                        "module {name} is not one the build ships ({}; {})",
                        if listed {
                            "in the module list"
                        } else {
                            "not in the module list"
                        },
                        state(cx, addr)
                    ),
                    &[addr],
                    inventory::missing(&known),
                )
                .owned_by(name);
            out.push(f);
        }
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        foreign(cx).into_iter().map(|(_, n, _)| line(&n)).collect()
    }
}

fn line(name: &str) -> String {
    format!("module {name}")
}

/// `(struct module, name, listed)` of every loaded module the build does
/// not ship; none when the build's module list is unknown.
fn foreign(cx: &Context) -> Vec<(u64, String, bool)> {
    let Some(build) = cx.build_modules else {
        return Vec::new();
    };
    let mut out: Vec<(u64, String, bool)> = cx
        .modules()
        .iter()
        .map(|m| (m.addr, m.name.clone(), true))
        .collect();
    if let Some((tree, _)) = cx.tree_modules() {
        let listed: BTreeSet<u64> = out.iter().map(|m| m.0).collect();
        for m in tree.difference(&listed) {
            out.push((*m, cx.module_name(*m).unwrap_or_else(|| "?".into()), false));
        }
    }
    // The tracer's own module (xftrace-dkms) is named by `status`.
    out.retain(|(a, n, _)| !build.contains(n) && !cx.is_tracer_module(*a));
    out
}

/// The module's taint flags and signature state, as far as the build's
/// BTF describes them.
fn state(cx: &Context, module: u64) -> String {
    let taints = cx
        .field("module", &["taints"])
        .and_then(|o| cx.read_word(module.checked_add(o)?))
        .map_or("taints unknown".to_string(), |t| format!("taints {t:#x}"));
    let sig = match cx
        .field("module", &["sig_ok"])
        .and_then(|o| cx.read_u32(module.checked_add(o)?))
    {
        Some(v) if v & 0xff != 0 => "signature verified",
        Some(_) => "signature not verified",
        None => "signature state unknown",
    };
    format!("{taints}, {sig}")
}
