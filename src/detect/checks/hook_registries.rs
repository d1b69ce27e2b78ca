//! The kernel's hook registries besides ftrace and kprobes (which have
//! their own checks): notifier chains, tracepoint probes, netfilter hooks
//! and LSM hooks. Every handler must be kernel text or the text of a
//! listed module; a listed module that the build does not ship must have
//! hooked the same thing when the baseline was taken (`hooks.json`, the
//! clean guest's hook inventory), so a module the operator loads on
//! purpose alarms once, until the next baseline, and not forever. Layouts
//! come from the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::{inventory, Finding, FindingKind};

pub struct HookRegistries;

/// Entries followed per list, and hooks per registry point, at most.
const MAX_ENTRIES: usize = 4096;
/// Hooks read in all, at most (a clean cloud guest has a few hundred): a
/// guest that fills every registry cannot make the check read without end.
const MAX_HOOKS: usize = 65_536;

/// Notifier chains rootkits use, with the type of their head (whose
/// `head` member points to the first `struct notifier_block`).
const CHAINS: &[(&str, &str)] = &[
    ("module_notify_list", "blocking_notifier_head"),
    ("die_chain", "atomic_notifier_head"),
    ("reboot_notifier_list", "blocking_notifier_head"),
    ("restart_handler_list", "atomic_notifier_head"),
    ("panic_notifier_list", "atomic_notifier_head"),
    ("keyboard_notifier_list", "atomic_notifier_head"),
    ("vt_notifier_list", "atomic_notifier_head"),
    ("netdev_chain", "raw_notifier_head"),
    ("inetaddr_chain", "blocking_notifier_head"),
    ("inet6addr_chain", "atomic_notifier_head"),
    ("netevent_notif_chain", "atomic_notifier_head"),
    ("pm_chain_head", "blocking_notifier_head"),
    ("oom_notify_list", "blocking_notifier_head"),
];

/// Netfilter hook arrays of `struct netns_nf`, with their length (the
/// uapi's NF_INET_NUMHOOKS, NF_ARP_NUMHOOKS).
const NF_FAMILIES: &[(&str, usize)] = &[
    ("hooks_ipv4", 5),
    ("hooks_ipv6", 5),
    ("hooks_arp", 3),
    ("hooks_bridge", 5),
];

/// One registered handler.
#[derive(Clone, Debug)]
pub struct Hook {
    /// "notifier", "tracepoint", "netfilter" or "lsm".
    pub registry: &'static str,
    /// The chain, tracepoint, hook point or LSM hook.
    pub point: String,
    pub handler: u64,
}

impl Check for HookRegistries {
    fn kind(&self) -> FindingKind {
        FindingKind::HookRegistry
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(first) = judge(cx, out) else {
            return;
        };
        if first.is_empty() {
            return;
        }
        // Registries change under RCU: a handler array being replaced, a
        // notifier being unlinked. What is wrong must still be so a moment
        // later.
        std::thread::sleep(SETTLE);
        let seen: BTreeSet<String> = first.into_iter().map(|f| f.detail).collect();
        let found: Vec<Finding> = judge(cx, &mut out.scratch())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| seen.contains(&f.detail))
            .collect();
        out.capped(found, "hook registries");
    }

    /// The guest's hooks by modules outside the build.
    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        let mut lines = BTreeSet::new();
        for h in hooks(cx, &mut Report::discard(self.kind())).unwrap_or_default() {
            if let Owner::Module(m) = owner(cx, h.handler) {
                lines.insert(line(&h, &m));
            }
        }
        lines
    }
}

/// How long a registry may be in the middle of a change.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The handlers that are wrong now; None if the registries cannot be read.
fn judge(cx: &Context, out: &mut Report) -> Option<Vec<Finding>> {
    let hooks = hooks(cx, out)?;
    let known = inventory::load(cx.dir);
    let mut found = Vec::new();
    for h in hooks {
        let where_ = format!("{} {}", h.registry, h.point);
        match owner(cx, h.handler) {
            Owner::Kernel | Owner::BuildModule => {}
            Owner::Module(m) => {
                if known
                    .as_ref()
                    .is_some_and(|k| k.contains(&line(&h, &m)))
                {
                    continue;
                }
                found.push(
                    out.finding(
                        format!(
                            "{where_} runs {}, a module the build does not ship",
                            cx.name(h.handler)
                        ),
                        &[h.handler],
                        inventory::missing(&known),
                    )
                    .owned_by(m),
                );
            }
            Owner::Nobody => found.push(out.finding(
                format!(
                    "{where_} runs {}, which is neither kernel text nor the code of a listed module",
                    cx.name(h.handler)
                ),
                &[h.handler],
                "a handler in no known code",
            )),
        }
    }
    Some(found)
}

/// Whose code a handler is.
enum Owner {
    Kernel,
    BuildModule,
    Module(String),
    Nobody,
}

fn owner(cx: &Context, a: u64) -> Owner {
    if let (Some(s), Some(e)) = (cx.sym("_text"), cx.sym("_etext")) {
        if s <= a && a < e {
            return Owner::Kernel;
        }
    }
    if cx.module_layout.is_none() {
        return Owner::Nobody; // code ranges unknown
    }
    match cx.module_of(a) {
        None => Owner::Nobody,
        Some(m) if cx.build_modules.is_some_and(|b| b.contains(m)) => Owner::BuildModule,
        Some(m) => Owner::Module(m.to_string()),
    }
}

/// How the inventory names a hook: which module hooks what (offsets within
/// a module change with its build, so they are left out).
fn line(h: &Hook, module: &str) -> String {
    format!("{} {} {module}", h.registry, h.point)
}

/// Every handler of every registry this build has; None (with a finding)
/// without BTF.
pub fn hooks(cx: &Context, out: &mut Report) -> Option<Vec<Hook>> {
    let Some(_) = cx.btf else {
        out.add(
            "the build has no BTF: notifier, tracepoint, netfilter and LSM hooks not checked",
            &[],
            "",
        );
        return None;
    };
    let mut h = Vec::new();
    if let (Some(call), Some(next)) = (
        cx.field("notifier_block", &["notifier_call"]),
        cx.field("notifier_block", &["next"]),
    ) {
        for (chain, ty) in CHAINS {
            let (Some(at), Some(head)) = (cx.sym(chain), cx.field(ty, &["head"])) else {
                continue;
            };
            notifiers(cx, at.wrapping_add(head), (call, next), chain, &mut h);
        }
        for (net, name) in cx.net_namespaces() {
            if let Some(o) = cx.field("net", &["netdev_chain", "head"]) {
                let point = format!("netdev_chain of netns {name}");
                notifiers(cx, net.wrapping_add(o), (call, next), &point, &mut h);
            }
        }
    }
    tracepoints(cx, &mut h);
    netfilter(cx, &mut h);
    lsm(cx, &mut h);
    if h.len() >= MAX_HOOKS {
        out.add(
            format!("the hook registries hold more than {MAX_HOOKS} handlers: the rest not read"),
            &[],
            "",
        );
    }
    Some(h)
}

/// The `struct notifier_block`s from the pointer at `first`.
fn notifiers(cx: &Context, first: u64, (call, next): (u64, u64), point: &str, h: &mut Vec<Hook>) {
    for nb in cx.chain_at(first, next, 0, MAX_ENTRIES) {
        if h.len() >= MAX_HOOKS {
            break;
        }
        let Some(f) = cx.read_word(nb.wrapping_add(call)) else {
            break;
        };
        h.push(Hook {
            registry: "notifier",
            point: point.to_string(),
            handler: f,
        });
    }
}

/// The probes of every tracepoint of the image (`__tracepoint_*`): each
/// `funcs` array of `struct tracepoint_func`, ended by a NULL func.
fn tracepoints(cx: &Context, h: &mut Vec<Hook>) {
    let Some(btf) = cx.vmlinux.btf() else { return };
    let (Some(funcs), Some(func), Some(size)) = (
        cx.field("tracepoint", &["funcs"]),
        cx.field("tracepoint_func", &["func"]),
        btf.size_of("tracepoint_func")
            .filter(|&s| (8..=256).contains(&s)),
    ) else {
        return;
    };
    for (name, link) in cx.map().objects_with_prefix("__tracepoint_") {
        let tp = cx.runtime(link);
        let Some(array) = cx.read_word(tp.wrapping_add(funcs)).filter(|&a| a != 0) else {
            continue;
        };
        let point = name.trim_start_matches("__tracepoint_");
        for i in 0..MAX_ENTRIES as u64 {
            if h.len() >= MAX_HOOKS {
                return;
            }
            let at = array.wrapping_add(i.wrapping_mul(size)).wrapping_add(func);
            match cx.read_word(at) {
                Some(f) if f != 0 => h.push(Hook {
                    registry: "tracepoint",
                    point: point.to_string(),
                    handler: f,
                }),
                _ => break,
            }
        }
    }
}

/// Netfilter hooks of every namespace: `net.nf.hooks_*[hook]` point to a
/// `struct nf_hook_entries { u16 num_hook_entries; ...; struct
/// nf_hook_entry hooks[]; }`.
fn netfilter(cx: &Context, h: &mut Vec<Hook>) {
    let Some(btf) = cx.vmlinux.btf() else { return };
    let (Some(hooks), Some(entry)) = (
        cx.field("nf_hook_entries", &["hooks"]),
        btf.size_of("nf_hook_entry")
            .filter(|&s| (8..=256).contains(&s)),
    ) else {
        return;
    };
    let hook = cx.field("nf_hook_entry", &["hook"]).unwrap_or(0);
    for (net, name) in cx.net_namespaces() {
        for (family, points) in NF_FAMILIES {
            let Some(o) = cx.field("net", &["nf", family]) else {
                continue;
            };
            for p in 0..*points {
                let slot = net.wrapping_add(o).wrapping_add((p as u64).wrapping_mul(8));
                let Some(e) = cx.read_word(slot).filter(|&e| e != 0) else {
                    continue;
                };
                let mut num = [0u8; 2];
                if cx.read(e, &mut num).is_none() {
                    continue;
                }
                let num = u16::from_le_bytes(num).min(MAX_ENTRIES as u16);
                for i in 0..u64::from(num) {
                    if h.len() >= MAX_HOOKS {
                        return;
                    }
                    let at = e
                        .wrapping_add(hooks)
                        .wrapping_add(i.wrapping_mul(entry))
                        .wrapping_add(hook);
                    if let Some(f) = cx.read_word(at) {
                        h.push(Hook {
                            registry: "netfilter",
                            point: format!(
                                "{} hook {p}{} of netns {name}",
                                family.trim_start_matches("hooks_"),
                                nf_point(family, p)
                            ),
                            handler: f,
                        });
                    }
                }
            }
        }
    }
}

/// " (name)" of netfilter hook `p` of a family.
fn nf_point(family: &str, p: usize) -> &'static str {
    const INET: [&str; 5] = [
        " (pre-routing)",
        " (local-in)",
        " (forward)",
        " (local-out)",
        " (post-routing)",
    ];
    const ARP: [&str; 3] = [" (in)", " (out)", " (forward)"];
    let names: &[&str] = if family == "hooks_arp" { &ARP } else { &INET };
    names.get(p).copied().unwrap_or("")
}

/// LSM hooks: `security_hook_heads` is a struct of hlist heads, one per
/// hook, of `struct security_hook_list` nodes.
fn lsm(cx: &Context, h: &mut Vec<Hook>) {
    let Some(btf) = cx.vmlinux.btf() else { return };
    let (Some(heads), Some(size), Some(node), Some(hook)) = (
        cx.sym("security_hook_heads"),
        btf.size_of("security_hook_heads"),
        cx.field("security_hook_list", &["list"]),
        cx.field("security_hook_list", &["hook"]),
    ) else {
        return;
    };
    let n = usize::try_from(size / 8).unwrap_or(0).min(MAX_ENTRIES);
    let Some(firsts) = cx.read_words(heads, n) else {
        return;
    };
    let names: std::collections::BTreeMap<u64, String> = btf
        .members("security_hook_heads")
        .into_iter()
        .map(|(n, o)| (o, n))
        .collect();
    for (i, first) in firsts.into_iter().enumerate() {
        let point = names
            .get(&(i as u64).wrapping_mul(8))
            .cloned()
            .unwrap_or_else(|| format!("hook {i}"));
        for p in cx.chain(first, 0, 0, MAX_ENTRIES) {
            if h.len() >= MAX_HOOKS {
                break;
            }
            let entry = p.wrapping_sub(node);
            if let Some(f) = cx.read_word(entry.wrapping_add(hook)) {
                h.push(Hook {
                    registry: "lsm",
                    point: point.clone(),
                    handler: f,
                });
            }
        }
    }
}
