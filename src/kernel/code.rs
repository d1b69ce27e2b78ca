//! Code the guest kernel knows it runs: its text, the code of listed
//! modules (core, init while loading, ITS thunk pages), BPF JIT images and
//! packs, ftrace trampolines, kprobe instruction slots, module init code
//! awaiting free and the real-mode trampoline. What is executable and in
//! none of these is hidden code; a pointer the kernel calls through that
//! leads into none of them leads nowhere the kernel put code. Layouts come
//! from the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use crate::kernel::guest::KernelView;

/// Entries followed in each of the kernel's lists, at most.
const MAX_ENTRIES: usize = 16_384;
/// BPF packs read, at most (each is 2 MiB per NUMA node of JIT images).
const MAX_PACKS: usize = 64;

/// What owns a range of known code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    KernelText,
    Module,
    Bpf,
    FtraceTrampoline,
    KprobeSlots,
    ModuleInit,
    RealMode,
}

/// Executable memory with a known owner, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owned {
    pub start: u64,
    pub end: u64,
    pub owner: Owner,
}

/// Everything executable the kernel accounts for.
pub fn known_code(cx: &KernelView) -> Vec<Owned> {
    let mut o = Vec::new();
    if let (Some(s), Some(e)) = (cx.sym("_text"), cx.sym("_etext")) {
        o.push(Owned {
            start: s,
            end: e,
            owner: Owner::KernelText,
        });
    }
    modules(cx, &mut o);
    bpf(cx, &mut o);
    bpf_packs(cx, &mut o);
    ftrace_trampolines(cx, &mut o);
    kprobe_slots(cx, &mut o);
    init_awaiting_free(cx, &mut o);
    real_mode_trampoline(cx, &mut o);
    o
}

/// Offsets from the build's BTF, where it has them.
fn off(cx: &KernelView, s: &str, path: &[&str]) -> Option<u64> {
    cx.field(s, path)
}

/// `[base, base + size)` with a 32-bit size at `size_at`.
fn range_u32(cx: &KernelView, base_at: u64, size_at: u64, owner: Owner) -> Option<Owned> {
    let base = cx.read_word(base_at)?;
    let end = base.checked_add(u64::from(cx.read_u32(size_at)?))?;
    (base != 0).then_some(Owned {
        start: base,
        end,
        owner,
    })
}

/// Listed modules: core text, init text (while loading) and the pages of
/// indirect-branch thunks (the ITS mitigation) the kernel made for them.
fn modules(cx: &KernelView, o: &mut Vec<Owned>) {
    let init = (
        off(cx, "module", &["init_layout", "base"]),
        off(cx, "module", &["init_layout", "text_size"]),
    );
    let its = (
        off(cx, "module", &["its_num_pages"]),
        off(cx, "module", &["its_page_array"]),
    );
    for m in cx.read_modules() {
        if let Some((s, e)) = m.text {
            o.push(Owned {
                start: s,
                end: e,
                owner: Owner::Module,
            });
        }
        if let (Some(b), Some(t)) = init {
            o.extend(range_u32(
                cx,
                m.addr.wrapping_add(b),
                m.addr.wrapping_add(t),
                Owner::ModuleInit,
            ));
        }
        if let (Some(n), Some(a)) = its {
            let n = cx.read_u32(m.addr.wrapping_add(n)).unwrap_or(0);
            let pages = cx
                .read_word(m.addr.wrapping_add(a))
                .filter(|&p| p != 0)
                .and_then(|p| cx.read_words(p, (n as usize).min(MAX_ENTRIES)));
            for p in pages.unwrap_or_default() {
                o.push(Owned {
                    owner: Owner::Module,
                    start: p,
                    end: p.saturating_add(4096),
                });
            }
        }
    }
}

/// JIT images of BPF programs, trampolines and dispatchers: `bpf_kallsyms`
/// lists them all (struct bpf_ksym).
fn bpf(cx: &KernelView, o: &mut Vec<Owned>) {
    let (Some(head), Some(lnode), Some(start), Some(end)) = (
        cx.sym("bpf_kallsyms"),
        off(cx, "bpf_ksym", &["lnode"]),
        off(cx, "bpf_ksym", &["start"]),
        off(cx, "bpf_ksym", &["end"]),
    ) else {
        return;
    };
    for node in cx.list(head, MAX_ENTRIES) {
        let k = node.wrapping_sub(lnode);
        if let (Some(s), Some(e)) = (
            cx.read_word(k.wrapping_add(start)),
            cx.read_word(k.wrapping_add(end)),
        ) {
            if s < e {
                o.push(Owned {
                    start: s,
                    end: e,
                    owner: Owner::Bpf,
                });
            }
        }
    }
}

/// Packs of JIT images (`pack_list`, struct bpf_prog_pack): every pack is
/// 2 MiB per possible NUMA node of executable memory, filled with int3,
/// and its bitmap marks the 64-byte chunks in use. Only those are owned:
/// classic BPF (seccomp filters, socket filters) is JITed there too but
/// has no `bpf_kallsyms` entry, and a pack's free space must stay int3.
fn bpf_packs(cx: &KernelView, o: &mut Vec<Owned>) {
    const CHUNK: u64 = 64;
    let (Some(head), Some(ptr), Some(bitmap)) = (
        cx.sym("pack_list"),
        off(cx, "bpf_prog_pack", &["ptr"]),
        off(cx, "bpf_prog_pack", &["bitmap"]),
    ) else {
        return;
    };
    let nodes = cx
        .sym("nr_node_ids")
        .and_then(|a| cx.read_u32(a))
        .unwrap_or(1)
        .clamp(1, 64);
    let size = (2u64 << 20).saturating_mul(u64::from(nodes));
    let words = usize::try_from(size / CHUNK / 64).unwrap_or(0);
    let l = off(cx, "bpf_prog_pack", &["list"]).unwrap_or(0);
    for node in cx.list(head, MAX_ENTRIES).take(MAX_PACKS) {
        let pack = node.wrapping_sub(l);
        let (Some(base), Some(bits)) = (
            cx.read_word(pack.wrapping_add(ptr)),
            cx.read_words(pack.wrapping_add(bitmap), words),
        ) else {
            continue;
        };
        for (first, end) in bit_runs(&bits) {
            o.push(Owned {
                owner: Owner::Bpf,
                start: base.wrapping_add(first.wrapping_mul(CHUNK)),
                end: base.wrapping_add(end.wrapping_mul(CHUNK)),
            });
        }
    }
}

/// The runs of set bits of a bitmap of words (bit 0 of word 0 first), as
/// `[first, end)` bit numbers; whole words of zeros or ones at once.
fn bit_runs(words: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut run: Option<u64> = None;
    for (i, &w) in words.iter().enumerate() {
        let base = (i as u64).wrapping_mul(64);
        match (w, run) {
            (0, None) | (u64::MAX, Some(_)) => continue,
            (0, Some(first)) => {
                out.push((first, base));
                run = None;
                continue;
            }
            _ => {}
        }
        for b in 0..64u64 {
            match (w >> b & 1 == 1, run) {
                (true, None) => run = Some(base.wrapping_add(b)),
                (false, Some(first)) => {
                    out.push((first, base.wrapping_add(b)));
                    run = None;
                }
                _ => {}
            }
        }
    }
    if let Some(first) = run {
        out.push((first, (words.len() as u64).wrapping_mul(64)));
    }
    out
}

/// The real-mode trampoline (AP startup, resume), which the kernel copies
/// below 1 MiB at boot and makes executable in the direct map:
/// `real_mode_header` points to it, and its `text_start`..`ro_end` are
/// physical addresses.
fn real_mode_trampoline(cx: &KernelView, o: &mut Vec<Owned>) {
    let (Some(hdr), Some(pob), Some(ts), Some(re)) = (
        cx.sym("real_mode_header"),
        cx.sym("page_offset_base"),
        off(cx, "real_mode_header", &["text_start"]),
        off(cx, "real_mode_header", &["ro_end"]),
    ) else {
        return;
    };
    let (Some(h), Some(base)) = (cx.read_word(hdr), cx.read_word(pob)) else {
        return;
    };
    let u32_at = |a: u64| cx.read_u32(a).map(u64::from);
    if let (Some(s), Some(e)) = (u32_at(h.wrapping_add(ts)), u32_at(h.wrapping_add(re))) {
        if s < e && e < 1 << 20 {
            o.push(Owned {
                owner: Owner::RealMode,
                start: base.wrapping_add(s),
                end: base.wrapping_add(e),
            });
        }
    }
}

/// Trampolines ftrace made for its ops: `ftrace_ops_trampoline_list`
/// (through `ftrace_ops.list`), and any on `ftrace_ops_list`.
fn ftrace_trampolines(cx: &KernelView, o: &mut Vec<Owned>) {
    let (Some(tramp), Some(size)) = (
        off(cx, "ftrace_ops", &["trampoline"]),
        off(cx, "ftrace_ops", &["trampoline_size"]),
    ) else {
        return;
    };
    let mut ops = Vec::new();
    if let (Some(head), Some(l)) = (
        cx.sym("ftrace_ops_trampoline_list"),
        off(cx, "ftrace_ops", &["list"]),
    ) {
        ops.extend(cx.list(head, MAX_ENTRIES).map(|n| n.wrapping_sub(l)));
    }
    if let (Some(head), Some(end), Some(next)) = (
        cx.sym("ftrace_ops_list"),
        cx.sym("ftrace_list_end"),
        off(cx, "ftrace_ops", &["next"]),
    ) {
        let room = MAX_ENTRIES.saturating_sub(ops.len());
        ops.extend(cx.chain_at(head, next, end, room));
    }
    for p in ops {
        let (Some(t), Some(n)) = (
            cx.read_word(p.wrapping_add(tramp)),
            cx.read_word(p.wrapping_add(size)),
        ) else {
            continue;
        };
        if t != 0 && n != 0 && n < 1 << 20 {
            o.push(Owned {
                owner: Owner::FtraceTrampoline,
                start: t,
                end: t.saturating_add(n),
            });
        }
    }
}

/// Pages of kprobe instruction slots (copied instructions, optprobe
/// detours): the `pages` lists of `kprobe_insn_slots` and
/// `kprobe_optinsn_slots`.
fn kprobe_slots(cx: &KernelView, o: &mut Vec<Owned>) {
    let (Some(pages), Some(insns)) = (
        off(cx, "kprobe_insn_cache", &["pages"]),
        off(cx, "kprobe_insn_page", &["insns"]),
    ) else {
        return;
    };
    let l = off(cx, "kprobe_insn_page", &["list"]).unwrap_or(0);
    for cache in ["kprobe_insn_slots", "kprobe_optinsn_slots"] {
        let Some(c) = cx.sym(cache) else { continue };
        for node in cx.list(c.wrapping_add(pages), MAX_ENTRIES) {
            if let Some(p) = cx.read_word(node.wrapping_sub(l).wrapping_add(insns)) {
                o.push(Owned {
                    owner: Owner::KprobeSlots,
                    start: p,
                    end: p.saturating_add(4096),
                });
            }
        }
    }
}

/// Init code of modules that finished loading, queued on `init_free_list`
/// (struct mod_initfree) until a worker frees it, a moment later. Its size
/// is not kept there: the 64 KiB from its base are taken as its own.
fn init_awaiting_free(cx: &KernelView, o: &mut Vec<Owned>) {
    let (Some(head), Some(at)) = (
        cx.sym("init_free_list"),
        off(cx, "mod_initfree", &["module_init"]),
    ) else {
        return;
    };
    // An llist: a pointer to the first node, each node's first word next.
    for p in cx.chain_at(head, 0, 0, MAX_ENTRIES) {
        if let Some(base) = cx.read_word(p.wrapping_add(at)).filter(|&b| b != 0) {
            o.push(Owned {
                owner: Owner::ModuleInit,
                start: base,
                end: base.saturating_add(64 << 10),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bit_runs;

    #[test]
    fn runs_of_used_chunks_in_a_pack_bitmap() {
        assert_eq!(bit_runs(&[0, 0]), vec![]);
        assert_eq!(bit_runs(&[0b0110, 0]), vec![(1, 3)]);
        // A run across words, and one to the end.
        assert_eq!(
            bit_runs(&[1 << 63, u64::MAX, 1, 0, 1 << 63]),
            vec![(63, 129), (319, 320)]
        );
        assert_eq!(bit_runs(&[u64::MAX; 3]), vec![(0, 192)]);
        assert_eq!(bit_runs(&[0b101]), vec![(0, 1), (2, 3)]);
    }
}
