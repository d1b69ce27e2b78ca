//! Where a running x86-64 kernel's text legitimately differs from its
//! build: the sites its own patching machinery rewrites, read from the
//! build's tables (arch/x86/kernel/alternative.c, jump_label.c,
//! static_call.c, paravirt.c, ftrace.c), and what each may hold.
//!
//! Boot-time patching (`alternative_instructions()`) runs in this order:
//! paravirt calls, retpoline thunk calls, return thunks, alternatives,
//! IBT seals, then the SMP lock prefixes of a uniprocessor guest. At run
//! time, jump labels, static calls and ftrace's call sites change. Every
//! such site is listed in a table of the vmlinux; nothing else in the text
//! changes, apart from KASLR's relocations.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use crate::abi::le::{i32_at, u64_at};
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::Vmlinux;

/// The NOPs `add_nops()` writes, by length (arch/x86/include/asm/nops.h,
/// 64-bit).
pub const NOPS: [&[u8]; 9] = [
    &[],
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// `add_nops(len)`: the kernel's NOP filling of `len` bytes.
pub fn nop_fill(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut left = len;
    while left > 0 {
        let n = left.min(NOPS.len().saturating_sub(1));
        out.extend_from_slice(NOPS[n]);
        left = left.saturating_sub(n);
    }
    out
}

/// One `struct alt_instr` for a site: replacement bytes at `replacement`
/// (link time), used when CPU feature `cpuid` is present (or absent, with
/// the inverting flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternative {
    pub replacement: u64,
    pub replacement_len: usize,
    pub cpuid: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Patch {
    /// ftrace's `call __fentry__` (`__mcount_loc`).
    Fentry,
    /// `jmp __x86_return_thunk` (`.return_sites`).
    ReturnThunk,
    /// A call or jump through `__x86_indirect_thunk_<reg>`
    /// (`.retpoline_sites`).
    Retpoline { reg: u8 },
    /// `ALTERNATIVE()` code, with its replacements in table order.
    Alternative(Vec<Alternative>),
    /// A static branch (`__jump_table`): a NOP or a jump to `target`.
    JumpLabel { target: u64 },
    /// A static call site (`.static_call_sites`).
    StaticCall,
    /// An indirect call through `pv_ops[index]` (`.parainstructions`).
    Paravirt { index: u8 },
    /// A `lock` prefix a uniprocessor kernel turns into `ds` (`.smp_locks`).
    SmpLock,
    /// An `endbr64` that IBT seals (`.ibt_endbr_seal`).
    EndbrSeal,
    /// The call in ftrace's own callers (`ftrace_call`, `ftrace_regs_call`)
    /// that `ftrace_update_ftrace_func()` aims at the list function or the
    /// one kernel ftrace_ops callback.
    FtraceDispatch,
}

/// A patch site: link-time address, length, kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub addr: u64,
    pub len: usize,
    pub patch: Patch,
}

impl Site {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.len as u64)
    }
}

/// Largest table read (the biggest, `.return_sites`, is a few hundred KiB).
const MAX_TABLE: u64 = 16 << 20;

/// The bytes of the table between two symbols, if the build has it.
fn table(v: &Vmlinux, map: &SystemMap, start: &str, end: &str) -> Option<(u64, Vec<u8>)> {
    let (s, e) = (map.addr(start)?, map.addr(end)?);
    let len = e.checked_sub(s)?;
    if len > MAX_TABLE {
        return None;
    }
    Some((s, v.bytes(s, len)?))
}

/// Entries of a table of `s32` offsets relative to each entry (and to the
/// field at `field` inside an entry of `stride` bytes).
fn relative(
    base: u64,
    bytes: &[u8],
    stride: usize,
    field: usize,
) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(stride)
        .enumerate()
        .filter_map(move |(i, e)| {
            let off = i32_at(e, field)?;
            let at = base
                .checked_add(u64::try_from(i.checked_mul(stride)?).ok()?)?
                .checked_add(field as u64)?;
            Some(at.wrapping_add(off as i64 as u64))
        })
}

/// The register of an `__x86_indirect_thunk_<reg>` symbol.
fn thunk_register(name: &str) -> Option<u8> {
    const REGS: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let r = name.strip_prefix("__x86_indirect_thunk_")?;
    REGS.iter()
        .position(|&x| x == r)
        .and_then(|i| u8::try_from(i).ok())
}

/// Length of the instruction the build has at a site, for the kinds whose
/// tables do not record it.
fn built_len(v: &Vmlinux, addr: u64) -> Option<(usize, Vec<u8>)> {
    let b = v.bytes(addr, 6)?;
    let len = match (b.first()?, b.get(1)?) {
        (0xe8 | 0xe9, _) => 5,
        (0xeb, _) => 2,
        (0x0f, 0x80..=0x8f) => 6,
        (0x2e, 0xe8 | 0xe9) => 6,
        (0x66, 0x90) => 2,
        (0x0f, 0x1f) if b.get(..5) == Some(NOPS[5]) => 5,
        (0xc3, _) => 1,
        _ => return None,
    };
    Some((len, b))
}

/// Every patch site of the build in link-time `[start, end)`, sorted by
/// address (sites of different kinds may overlap: a return thunk inside an
/// alternative's original code, for one). Tables the build lacks (a kernel
/// without retpolines has no `.retpoline_sites`) give no sites; malformed
/// entries are skipped, so that a site the kernel did patch shows up as a
/// difference rather than being excused.
pub fn sites(v: &Vmlinux, map: &SystemMap, start: u64, end: u64) -> Vec<Site> {
    let inside = |a: u64| a >= start && a < end;
    let mut out = Vec::new();

    if let Some((base, b)) = table(v, map, "__start_mcount_loc", "__stop_mcount_loc") {
        out.extend(
            b.chunks_exact(8)
                .filter_map(|c| u64_at(c, 0))
                .filter(|&a| inside(a))
                .map(|addr| Site {
                    addr,
                    len: 5,
                    patch: Patch::Fentry,
                }),
        );
        let _ = base;
    }
    if let Some((base, b)) = table(v, map, "__return_sites", "__return_sites_end") {
        for addr in relative(base, &b, 4, 0).filter(|&a| inside(a)) {
            if let Some((len, _)) = built_len(v, addr) {
                out.push(Site {
                    addr,
                    len,
                    patch: Patch::ReturnThunk,
                });
            }
        }
    }
    if let Some((base, b)) = table(v, map, "__retpoline_sites", "__retpoline_sites_end") {
        for addr in relative(base, &b, 4, 0).filter(|&a| inside(a)) {
            let Some((len, code)) = built_len(v, addr) else {
                continue;
            };
            // The rel32 ends the instruction whatever its prefix or opcode.
            let Some(disp) = len.checked_sub(4).and_then(|at| i32_at(&code, at)) else {
                continue;
            };
            let target = addr
                .wrapping_add(len as u64)
                .wrapping_add(disp as i64 as u64);
            if let Some(reg) = map.function_at(target).and_then(thunk_register) {
                out.push(Site {
                    addr,
                    len,
                    patch: Patch::Retpoline { reg },
                });
            }
        }
    }
    if let Some((base, b)) = table(v, map, "__alt_instructions", "__alt_instructions_end") {
        // struct alt_instr (6.1): s32 instr, s32 repl, u16 cpuid, u8 instrlen, u8 replacementlen.
        const ENT: usize = 12;
        let mut by_site: BTreeMap<u64, (usize, Vec<Alternative>)> = BTreeMap::new();
        if b.len() % ENT == 0 {
            let instrs: Vec<u64> = relative(base, &b, ENT, 0).collect();
            let repls: Vec<u64> = relative(base, &b, ENT, 4).collect();
            for ((e, &instr), &repl) in b.chunks_exact(ENT).zip(&instrs).zip(&repls) {
                if !inside(instr) {
                    continue;
                }
                let cpuid = u16::from_le_bytes([e[8], e[9]]);
                let (instrlen, repllen) = (usize::from(e[10]), usize::from(e[11]));
                let s = by_site.entry(instr).or_insert((instrlen, Vec::new()));
                s.0 = s.0.max(instrlen);
                s.1.push(Alternative {
                    replacement: repl,
                    replacement_len: repllen,
                    cpuid,
                });
            }
        }
        out.extend(by_site.into_iter().map(|(addr, (len, alts))| Site {
            addr,
            len,
            patch: Patch::Alternative(alts),
        }));
    }
    if let Some((base, b)) = table(v, map, "__start___jump_table", "__stop___jump_table") {
        // struct jump_entry: s32 code, s32 target, long key (all relative).
        let codes: Vec<u64> = relative(base, &b, 16, 0).collect();
        let targets: Vec<u64> = relative(base, &b, 16, 4).collect();
        for (&addr, &target) in codes.iter().zip(&targets) {
            if !inside(addr) {
                continue;
            }
            if let Some((len @ (2 | 5), _)) = built_len(v, addr) {
                out.push(Site {
                    addr,
                    len,
                    patch: Patch::JumpLabel { target },
                });
            }
        }
    }
    // Tables of 32-bit self-relative site addresses, `stride` bytes an
    // entry: what one entry says is patched, and how many bytes.
    let relative_tables: [(&str, &str, usize, usize, Patch); 3] = [
        (
            "__start_static_call_sites",
            "__stop_static_call_sites",
            8,
            5,
            Patch::StaticCall,
        ),
        ("__smp_locks", "__smp_locks_end", 4, 1, Patch::SmpLock),
        (
            "__ibt_endbr_seal",
            "__ibt_endbr_seal_end",
            4,
            4,
            Patch::EndbrSeal,
        ),
    ];
    for (first, last, stride, len, patch) in relative_tables {
        if let Some((base, b)) = table(v, map, first, last) {
            out.extend(
                relative(base, &b, stride, 0)
                    .filter(|&a| inside(a))
                    .map(|addr| Site {
                        addr,
                        len,
                        patch: patch.clone(),
                    }),
            );
        }
    }
    if let Some((_, b)) = table(v, map, "__parainstructions", "__parainstructions_end") {
        // struct paravirt_patch_site: u8 *instr; u8 type; u8 len; (16 bytes).
        for e in b.chunks_exact(16) {
            let (Some(addr), index, len) = (u64_at(e, 0), e[8], usize::from(e[9])) else {
                continue;
            };
            if inside(addr) && (5..=16).contains(&len) {
                out.push(Site {
                    addr,
                    len,
                    patch: Patch::Paravirt { index },
                });
            }
        }
    }
    out.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.len)));
    out
}

/// Sites the kernel patches that no table lists: static call trampolines
/// (`__SCT__*`, aimed by `static_call_update()`) and the calls in ftrace's
/// callers, in link-time `[start, end)`.
pub fn symbol_sites(map: &SystemMap, start: u64, end: u64) -> Vec<Site> {
    let inside = |a: u64| a >= start && a.saturating_add(5) <= end;
    let mut out: Vec<Site> = map
        .functions()
        .filter(|(n, a)| n.starts_with("__SCT__") && inside(*a))
        .map(|(_, addr)| Site {
            addr,
            len: 5,
            patch: Patch::StaticCall,
        })
        .collect();
    for name in ["ftrace_call", "ftrace_regs_call"] {
        if let Some(addr) = map.addr(name).filter(|&a| inside(a)) {
            out.push(Site {
                addr,
                len: 5,
                patch: Patch::FtraceDispatch,
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn nop_fill_is_the_kernels() {
        assert_eq!(nop_fill(0), Vec::<u8>::new());
        assert_eq!(nop_fill(5), NOPS[5]);
        let mut ten = NOPS[8].to_vec();
        ten.extend_from_slice(NOPS[2]);
        assert_eq!(nop_fill(10), ten);
    }

    #[test]
    fn thunk_registers() {
        assert_eq!(thunk_register("__x86_indirect_thunk_rax"), Some(0));
        assert_eq!(thunk_register("__x86_indirect_thunk_r11"), Some(11));
        assert_eq!(thunk_register("__x86_indirect_thunk_array"), None);
        assert_eq!(thunk_register("memcpy"), None);
    }
}
