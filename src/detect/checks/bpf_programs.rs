//! BPF programs: kernel hooks that need no module. A process with
//! `CAP_BPF` can attach a program to a kprobe, a tracepoint, a raw
//! tracepoint, a kernel function's entry or exit (fentry/fexit), an LSM
//! hook or the network path; their handlers are the kernel's own
//! (`kprobe_dispatcher`, `bpf_trace_run*`, BPF trampolines), so the other
//! checks find them in known code. Every loaded program is in the
//! kernel's `prog_idr`: each is judged by what it is (its type, name and
//! attach point) against the baseline's hook inventory (`hooks.json`),
//! where the clean guest's programs are listed; cgroup programs (which
//! systemd loads for its units as they start) by their type alone.
//! Without an inventory only the programs that hook the kernel itself are
//! reported. Layouts come from the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet};

use super::{Check, Context, Report};
use crate::base::escape::escape_bytes;
use crate::detect::{inventory, FindingKind};

pub struct BpfPrograms;

/// Programs and links read, at most.
const MAX_PROGRAMS: usize = 4096;

/// `enum bpf_prog_type` (uapi, stable), by value.
const PROG_TYPES: &[&str] = &[
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
];

/// Types whose programs run inside the kernel's own control flow: on a
/// probe, a tracepoint, a function's entry or exit, an LSM hook, or in
/// place of another program or of kernel operations.
const HOOKS_THE_KERNEL: &[&str] = &[
    "kprobe",
    "tracepoint",
    "perf_event",
    "raw_tracepoint",
    "raw_tracepoint_writable",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
];

/// `enum bpf_link_type` values (uapi: stable).
const LINK_RAW_TRACEPOINT: u32 = 1;
const LINK_CGROUP: u32 = 3;
const LINK_ITER: u32 = 4;
const LINK_NETNS: u32 = 5;
const LINK_XDP: u32 = 6;
const LINK_PERF_EVENT: u32 = 7;
const LINK_KPROBE_MULTI: u32 = 8;

/// One loaded program.
#[derive(Clone, Debug)]
pub struct Program {
    pub addr: u64,
    pub id: u32,
    pub kind: String,
    /// Its name (escaped; a rootkit chooses it).
    pub name: String,
    /// What it is attached to, where the kernel keeps it: the function of
    /// fentry/fexit/LSM programs, the tracepoint of raw tracepoint links,
    /// the cgroup or device of other links, the kprobe or tracepoint of a
    /// perf event, the device of XDP attached without a link.
    pub attach: String,
    /// What holds it attached where a task or namespace does ("perf event
    /// fd 4 of pid 90 (loader)"): not part of its inventory line.
    pub held_by: Option<String>,
    /// Its code (JIT image), if any.
    pub code: u64,
}

impl Program {
    /// How the inventory names it (ids change with every load). Cgroup
    /// programs by their type alone: systemd loads them per unit as units
    /// start, with its own names, long after any baseline.
    fn line(&self) -> String {
        if self.kind.starts_with("cgroup_") {
            format!("bpf {}", self.kind)
        } else {
            format!("bpf {} {} {}", self.kind, self.name, self.attach)
        }
    }

    fn hooks_the_kernel(&self) -> bool {
        HOOKS_THE_KERNEL.contains(&self.kind.as_str())
    }
}

impl Check for BpfPrograms {
    fn kind(&self) -> FindingKind {
        FindingKind::BpfProgram
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(progs) = programs(cx, out) else {
            return;
        };
        let known = inventory::load(cx.dir);
        let mut found = Vec::new();
        for p in progs {
            let listed = known.as_ref().map(|k| k.contains(&p.line()));
            if listed == Some(true) || (listed.is_none() && !p.hooks_the_kernel()) {
                continue;
            }
            let at = match (p.attach.is_empty(), &p.held_by) {
                (true, _) => String::new(),
                (false, None) => format!(" attached to {}", p.attach),
                (false, Some(h)) => format!(" attached to {} by the {h}", p.attach),
            };
            found.push(out.finding(
                format!(
                    "a {} BPF program '{}' (id {}){at}{}",
                    p.kind,
                    p.name,
                    p.id,
                    if p.hooks_the_kernel() {
                        ", which runs in the kernel's own control flow"
                    } else {
                        ""
                    }
                ),
                &[p.addr, p.code],
                inventory::missing(&known),
            ));
        }
        out.capped(found, "BPF programs");
    }

    /// The guest's programs now.
    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        programs(cx, &mut Report::discard(self.kind()))
            .unwrap_or_default()
            .iter()
            .map(Program::line)
            .collect()
    }
}

/// Every program in `prog_idr`; None (with a finding) where the build
/// lacks what it takes to read them.
pub fn programs(cx: &Context, out: &mut Report) -> Option<Vec<Program>> {
    let Some(idr) = cx.sym("prog_idr") else {
        // A kernel without the bpf() syscall has no programs.
        return Some(Vec::new());
    };
    let off = |ty: &str, path: &[&str]| cx.field(ty, path);
    let (
        Some(head),
        Some(_slots),
        Some(o_type),
        Some(o_aux),
        Some(o_func),
        Some(o_id),
        Some(o_name),
        Some(o_attach),
    ) = (
        off("idr", &["idr_rt", "xa_head"]),
        off("xa_node", &["slots"]),
        off("bpf_prog", &["type"]),
        off("bpf_prog", &["aux"]),
        off("bpf_prog", &["bpf_func"]),
        off("bpf_prog_aux", &["id"]),
        off("bpf_prog_aux", &["name"]),
        off("bpf_prog_aux", &["attach_func_name"]),
    )
    else {
        out.add(
            "the build has no BTF for prog_idr and struct bpf_prog: BPF programs not checked",
            &[],
            "",
        );
        return None;
    };
    let links = links(cx);
    // Programs attached without a link: to perf events (kprobes,
    // tracepoints) held open by a task, XDP on a device.
    let objects: BTreeMap<u64, (&str, &str)> = cx
        .objects()
        .attached
        .iter()
        .map(|(p, a, h)| (*p, (a.as_str(), h.as_str())))
        .collect();
    let v = &cx.view;
    let mut progs = Vec::new();
    for p in v.xarray(idr.checked_add(head)?, MAX_PROGRAMS).0 {
        let word = |o: u64| p.checked_add(o).and_then(|a| v.read_word(a));
        let (Some(ty), Some(aux)) = (
            p.checked_add(o_type).and_then(|a| v.read_u32(a)),
            word(o_aux),
        ) else {
            continue;
        };
        let aux_u32 = |o: u64| aux.checked_add(o).and_then(|a| v.read_u32(a));
        let mut name = [0u8; 16];
        let _ = aux.checked_add(o_name).and_then(|a| v.read(a, &mut name));
        let held_by = objects.get(&p).map(|(_, h)| h.to_string());
        let attach = match links
            .get(&p)
            .map(String::as_str)
            .or(objects.get(&p).map(|(a, _)| *a))
        {
            Some(a) => a.to_string(),
            None => aux
                .checked_add(o_attach)
                .and_then(|a| v.read_word(a))
                .filter(|&s| s != 0)
                .and_then(|s| cstring(cx, s))
                .map(|f| format!("function {f}"))
                .unwrap_or_default(),
        };
        progs.push(Program {
            addr: p,
            id: aux_u32(o_id).unwrap_or(0),
            kind: PROG_TYPES
                .get(ty as usize)
                .map_or_else(|| format!("type-{ty}"), |t| t.to_string()),
            name: escape_bytes(until_nul(&name)),
            attach,
            held_by,
            code: word(o_func).unwrap_or(0),
        });
    }
    Some(progs)
}

/// Where each link of `link_idr` attaches its program, by program: the
/// tracepoint of a raw tracepoint link, the cgroup of a cgroup link, the
/// device of an XDP link, the kind of the rest (a tracing link's function
/// is its program's `attach_func_name`, not named here). Link types are
/// the UAPI's `enum bpf_link_type`.
fn links(cx: &Context) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let off = |ty: &str, path: &[&str]| cx.field(ty, path);
    let (Some(idr), Some(head), Some(o_type), Some(o_prog)) = (
        cx.sym("link_idr"),
        off("idr", &["idr_rt", "xa_head"]),
        off("bpf_link", &["type"]),
        off("bpf_link", &["prog"]),
    ) else {
        return out;
    };
    let v = &cx.view;
    let Some(at) = idr.checked_add(head) else {
        return out;
    };
    let word = |a: Option<u64>| a.and_then(|a| v.read_word(a)).filter(|&w| w != 0);
    let str_at = |a: Option<u64>| word(a).and_then(|s| cstring(cx, s));
    for l in v.xarray(at, MAX_PROGRAMS).0 {
        let at = |o: Option<u64>| o.and_then(|o| l.checked_add(o));
        let Some(prog) = word(at(Some(o_prog))) else {
            continue;
        };
        let attach = match at(Some(o_type)).and_then(|a| v.read_u32(a)) {
            Some(LINK_RAW_TRACEPOINT) => {
                let tp = word(at(off("bpf_raw_tp_link", &["btp"]))).and_then(|btp| {
                    word(off("bpf_raw_event_map", &["tp"]).and_then(|o| btp.checked_add(o)))
                });
                tp.and_then(|tp| {
                    str_at(off("tracepoint", &["name"]).and_then(|o| tp.checked_add(o)))
                })
                .map(|n| format!("tracepoint {n}"))
            }
            Some(LINK_CGROUP) => {
                let name = word(at(off("bpf_cgroup_link", &["cgroup"])))
                    .and_then(|c| word(off("cgroup", &["kn"]).and_then(|o| c.checked_add(o))))
                    .and_then(|kn| {
                        str_at(off("kernfs_node", &["name"]).and_then(|o| kn.checked_add(o)))
                    });
                Some(format!("cgroup {}", name.as_deref().unwrap_or("?")))
            }
            Some(LINK_XDP) => {
                let dev = word(at(off("bpf_xdp_link", &["dev"])))
                    .and_then(|d| off("net_device", &["name"]).and_then(|o| d.checked_add(o)))
                    .and_then(|a| cx.read_cstr(a, 16).ok());
                Some(format!(
                    "XDP on device {} (link)",
                    dev.as_deref().unwrap_or("?")
                ))
            }
            Some(LINK_NETNS) => Some("a network namespace (link)".into()),
            Some(LINK_PERF_EVENT) => Some("a perf event (link)".into()),
            Some(LINK_KPROBE_MULTI) => Some("kprobes (kprobe_multi link)".into()),
            Some(LINK_ITER) => Some("an iterator (link)".into()),
            _ => None,
        };
        if let Some(a) = attach {
            out.insert(prog, a);
        }
    }
    out
}

/// A C string of at most 127 bytes at `va`, escaped.
fn cstring(cx: &Context, va: u64) -> Option<String> {
    cx.read_cstr(va, 128).ok()
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}
