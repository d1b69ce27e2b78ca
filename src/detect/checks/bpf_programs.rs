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

/// `enum bpf_link_type` value of raw tracepoint links (uapi).
const LINK_RAW_TRACEPOINT: u32 = 1;

/// One loaded program.
#[derive(Clone, Debug)]
pub struct Program {
    pub addr: u64,
    pub id: u32,
    pub kind: String,
    /// Its name (escaped; a rootkit chooses it).
    pub name: String,
    /// What it is attached to, where the kernel keeps it: the function of
    /// fentry/fexit/LSM programs, the tracepoint of raw tracepoint links.
    pub attach: String,
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
            let at = if p.attach.is_empty() {
                String::new()
            } else {
                format!(" attached to {}", p.attach)
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
    let tracepoints = raw_tracepoint_links(cx);
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
        let attach = match tracepoints.get(&p) {
            Some(tp) => format!("tracepoint {tp}"),
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
            code: word(o_func).unwrap_or(0),
        });
    }
    Some(progs)
}

/// The tracepoint each raw tracepoint link attaches its program to, by
/// program (`link_idr`; a link is what `BPF_RAW_TRACEPOINT_OPEN` makes).
fn raw_tracepoint_links(cx: &Context) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let off = |ty: &str, path: &[&str]| cx.field(ty, path);
    let (Some(idr), Some(head), Some(o_type), Some(o_prog), Some(o_btp), Some(o_tp), Some(o_name)) = (
        cx.sym("link_idr"),
        off("idr", &["idr_rt", "xa_head"]),
        off("bpf_link", &["type"]),
        off("bpf_link", &["prog"]),
        off("bpf_raw_tp_link", &["btp"]),
        off("bpf_raw_event_map", &["tp"]),
        off("tracepoint", &["name"]),
    ) else {
        return out;
    };
    let v = &cx.view;
    let Some(at) = idr.checked_add(head) else {
        return out;
    };
    for l in v.xarray(at, MAX_PROGRAMS).0 {
        let at = |o: u64| l.checked_add(o);
        if at(o_type).and_then(|a| v.read_u32(a)) != Some(LINK_RAW_TRACEPOINT) {
            continue;
        }
        let name = at(o_btp)
            .and_then(|a| v.read_word(a))
            .and_then(|btp| btp.checked_add(o_tp))
            .and_then(|a| v.read_word(a))
            .and_then(|tp| tp.checked_add(o_name))
            .and_then(|a| v.read_word(a))
            .and_then(|s| cstring(cx, s));
        if let (Some(prog), Some(name)) = (at(o_prog).and_then(|a| v.read_word(a)), name) {
            out.insert(prog, name);
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
