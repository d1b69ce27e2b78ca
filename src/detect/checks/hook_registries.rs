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
use crate::kernel::walk::End;

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

/// The handlers read, and the walks that could not be read to their end
/// (what they would hold is unknown: each is a finding).
#[derive(Default)]
pub struct Hooks {
    pub list: Vec<Hook>,
    /// What could not be read, and where.
    pub cut: Vec<(String, u64)>,
}

impl Hooks {
    fn full(&self) -> bool {
        self.list.len() >= MAX_HOOKS
    }

    /// A walk that stopped before its end: `end` as the walk says.
    fn ended(&mut self, what: &str, end: End) {
        match end {
            End::Complete | End::Running => {}
            End::Truncated => self.cut.push((
                format!("{what} has more than {MAX_ENTRIES} entries (a loop?)"),
                0,
            )),
            End::Unreadable(a) => self.unreadable(what, a),
        }
    }

    fn unreadable(&mut self, what: &str, at: u64) {
        self.cut
            .push((format!("{what} cannot be read to its end (at {at:#x})"), at));
    }
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
        crate::base::settle::settle(SETTLE);
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
        let found = hooks(cx, &mut Report::discard(self.kind())).unwrap_or_default();
        for h in found.list {
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
    let mut found: Vec<Finding> = hooks
        .cut
        .iter()
        .map(|(what, at)| {
            out.finding(
                format!("{what}: the handlers past it are not checked"),
                &[*at],
                "a registry the guest keeps unreadable or looping hides what it holds",
            )
        })
        .collect();
    for h in hooks.list {
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
    match cx.module_at(a) {
        None => Owner::Nobody,
        Some(m) if cx.is_build_module(m) => Owner::BuildModule,
        Some(m) => Owner::Module(m.name.clone()),
    }
}

/// How the inventory names a hook: which module hooks what (offsets within
/// a module change with its build, so they are left out).
fn line(h: &Hook, module: &str) -> String {
    format!("{} {} {module}", h.registry, h.point)
}

/// Every handler of every registry this build has; None (with a finding)
/// without BTF.
pub fn hooks(cx: &Context, out: &mut Report) -> Option<Hooks> {
    let Some(_) = cx.btf else {
        out.add(
            "the build has no BTF: notifier, tracepoint, netfilter and LSM hooks not checked",
            &[],
            "",
        );
        return None;
    };
    let mut h = Hooks::default();
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
    if h.full() {
        out.add(
            format!("the hook registries hold more than {MAX_HOOKS} handlers: the rest not read"),
            &[],
            "",
        );
    }
    Some(h)
}

/// The `struct notifier_block`s from the pointer at `first`.
fn notifiers(cx: &Context, first: u64, (call, next): (u64, u64), point: &str, h: &mut Hooks) {
    let what = format!("the notifier chain {point}");
    let mut walk = cx.chain_at(first, next, 0, MAX_ENTRIES);
    for nb in walk.by_ref() {
        if h.full() {
            return;
        }
        let Some(f) = cx.read_word(nb.wrapping_add(call)) else {
            h.unreadable(&what, nb);
            return;
        };
        h.list.push(Hook {
            registry: "notifier",
            point: point.to_string(),
            handler: f,
        });
    }
    h.ended(&what, walk.end());
}

/// The probes of every tracepoint of the image (`__tracepoint_*`): each
/// `funcs` array of `struct tracepoint_func`, ended by a NULL func.
fn tracepoints(cx: &Context, h: &mut Hooks) {
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
        let point = name.trim_start_matches("__tracepoint_");
        let what = || format!("the probes of tracepoint {point}");
        let array = match cx.read_word(tp.wrapping_add(funcs)) {
            Some(0) => continue,
            Some(a) => a,
            None => {
                h.unreadable(&what(), tp);
                continue;
            }
        };
        let mut ended = false;
        for i in 0..MAX_ENTRIES as u64 {
            if h.full() {
                return;
            }
            let at = array.wrapping_add(i.wrapping_mul(size)).wrapping_add(func);
            match cx.read_word(at) {
                Some(0) => {
                    ended = true;
                    break;
                }
                Some(f) => h.list.push(Hook {
                    registry: "tracepoint",
                    point: point.to_string(),
                    handler: f,
                }),
                None => {
                    h.unreadable(&what(), at);
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            h.ended(&what(), End::Truncated);
        }
    }
}

/// Netfilter hooks of every namespace: `net.nf.hooks_*[hook]` point to a
/// `struct nf_hook_entries { u16 num_hook_entries; ...; struct
/// nf_hook_entry hooks[]; }`.
fn netfilter(cx: &Context, h: &mut Hooks) {
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
                let point = || {
                    format!(
                        "{} hook {p}{} of netns {name}",
                        family.trim_start_matches("hooks_"),
                        nf_point(family, p)
                    )
                };
                let what = || format!("the netfilter {}", point());
                let slot = net.wrapping_add(o).wrapping_add((p as u64).wrapping_mul(8));
                let e = match cx.read_word(slot) {
                    Some(0) => continue,
                    Some(e) => e,
                    None => {
                        h.unreadable(&what(), slot);
                        continue;
                    }
                };
                let mut num = [0u8; 2];
                if cx.read(e, &mut num).is_none() {
                    h.unreadable(&what(), e);
                    continue;
                }
                let num = u16::from_le_bytes(num).min(MAX_ENTRIES as u16);
                for i in 0..u64::from(num) {
                    if h.full() {
                        return;
                    }
                    let at = e
                        .wrapping_add(hooks)
                        .wrapping_add(i.wrapping_mul(entry))
                        .wrapping_add(hook);
                    let Some(f) = cx.read_word(at) else {
                        h.unreadable(&what(), at);
                        break;
                    };
                    h.list.push(Hook {
                        registry: "netfilter",
                        point: point(),
                        handler: f,
                    });
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
fn lsm(cx: &Context, h: &mut Hooks) {
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
        h.unreadable("security_hook_heads", heads);
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
        let what = format!("the LSM hook list {point}");
        let mut walk = cx.chain(first, 0, 0, MAX_ENTRIES);
        for p in walk.by_ref() {
            if h.full() {
                return;
            }
            let entry = p.wrapping_sub(node);
            let Some(f) = cx.read_word(entry.wrapping_add(hook)) else {
                h.unreadable(&what, entry);
                break;
            };
            h.list.push(Hook {
                registry: "lsm",
                point: point.clone(),
                handler: f,
            });
        }
        h.ended(&what, walk.end());
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::btf::Btf;
    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{
        btf, put_link, synthetic_guest, unit_build, UNIT_MAP, UNIT_SLIDE,
    };

    /// A notifier chain whose last link leads to memory that cannot be
    /// read, and one that loops: each is a finding (its handlers past the
    /// cut are unknown), not a chain taken for complete.
    #[test]
    fn a_chain_that_cannot_be_read_to_its_end_is_a_finding() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff81400000 T _etext\nffffffff82100000 D die_chain\nffffffff82100100 D reboot_notifier_list\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let layouts = Btf::parse(&btf(&[
            (
                "notifier_block",
                24,
                &[("notifier_call", 0, ""), ("next", 8, "")],
            ),
            ("atomic_notifier_head", 16, &[("head", 8, "")]),
            ("blocking_notifier_head", 16, &[("head", 8, "")]),
        ]))
        .unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let va = |link: u64| link + UNIT_SLIDE;
        let details = |cx: &Context| {
            let mut all = Vec::new();
            HookRegistries.run(cx, &mut Report::new(FindingKind::HookRegistry, &mut all));
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        let (nb1, nb2, nb3) = (
            0xffff_ffff_8210_1000u64,
            0xffff_ffff_8210_2000u64,
            0xffff_ffff_8210_3000u64,
        );
        // die_chain: nb1 -> nb2 -> an address no page table maps.
        put(0xffff_ffff_8210_0008, va(nb1));
        put(nb1, va(0xffff_ffff_8120_0000)); // __x64_sys_read: kernel text
        put(nb1 + 8, va(nb2));
        put(nb2, va(0xffff_ffff_8120_0000));
        put(nb2 + 8, 0xffff_c900_dead_0000);
        // reboot_notifier_list: nb3 -> nb3 -> ...
        put(0xffff_ffff_8210_0108, va(nb3));
        put(nb3, va(0xffff_ffff_8120_0000));
        put(nb3 + 8, va(nb3));
        let mut view = crate::kernel::guest::KernelView::new(&ram, &map, &k);
        view.btf = Some(&layouts);
        let cx = Context::new(view, &vmlinux, &state);
        let got = details(&cx);
        assert!(
            got.iter().any(|d| d.starts_with(
                "the notifier chain die_chain cannot be read to its end (at 0xffffc900dead0000)"
            )),
            "{got:#?}"
        );
        assert!(
            got.iter().any(|d| d
                .starts_with("the notifier chain reboot_notifier_list has more than 4096 entries")),
            "{got:#?}"
        );
        // Whole chains of kernel handlers: nothing.
        put(nb2 + 8, 0);
        put(nb3 + 8, 0);
        assert_eq!(details(&cx), Vec::<String>::new());
    }
}
