//! Hidden code: every page the guest kernel may execute, from its own page
//! tables, must belong to code the kernel keeps track of. Code that is not
//! kernel text, not the text of a module in the module list, and not one
//! of the few things the kernel writes and runs itself (BPF JIT images,
//! ftrace trampolines, kprobe instruction slots, module init code awaiting
//! free, the real-mode trampoline) is hidden: a module that unlinked itself, or shellcode copied into
//! vmalloc space or the direct map. Nothing is allowed wholesale ("the
//! module area"): each executable page needs an owner. Layouts come from
//! the build's BTF.
#![deny(clippy::arithmetic_side_effects)]

use std::time::Duration;

use super::{Check, Context, Report};
use crate::detect::{Finding, FindingKind};
use crate::kernel::code::known_code;
use crate::kernel::text::subtract;

pub struct HiddenCode;

/// Page tables read at most: a 1 TiB guest maps its direct map in 1 GiB
/// pages and its vmalloc space in a few thousand tables.
const MAX_TABLES: usize = 1 << 16;
/// Executable memory is freed in steps (a module's init code goes to a
/// worker, an ftrace trampoline leaves kallsyms first): what has no owner
/// must still have none a moment later.
const SETTLE: Duration = Duration::from_millis(100);
/// Bytes of an ownerless range read to show it (and to see it is inert).
const SAMPLE: usize = 64 << 10;
/// Ownerless executable memory read in full to see it is all int3, at
/// most, in one check (a BPF pack is 2 MiB per NUMA node).
const MAX_INERT: u64 = 256 << 20;
/// The largest executable extent an owner read from the guest may claim
/// (a module's text, a JIT image, a BPF pack of 2 MiB per node).
const MAX_OWNED: u64 = 128 << 20;
/// int3, what the kernel fills unused executable memory with (BPF packs).
const INT3: u8 = 0xcc;

impl Check for HiddenCode {
    fn kind(&self) -> FindingKind {
        FindingKind::HiddenCode
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(first) = ownerless(cx, out) else {
            return;
        };
        // Free space the kernel filled with int3 (BPF packs) is never
        // reported: only the rest is worth a second look.
        let mut scan = MAX_INERT;
        let first: Vec<(u64, u64)> = first
            .into_iter()
            .filter(|&(s, e)| !inert(cx, s, e, &mut scan))
            .collect();
        if first.is_empty() {
            return;
        }
        std::thread::sleep(SETTLE);
        let Some(second) = ownerless(cx, out) else {
            return;
        };
        // Only what had no owner both times.
        let still: Vec<(u64, u64)> = second
            .into_iter()
            .flat_map(|(s, e)| {
                first
                    .iter()
                    .filter(move |&&(fs, fe)| fs < e && s < fe)
                    .map(move |&(fs, fe)| (s.max(fs), e.min(fe)))
            })
            .collect();
        let hidden_modules = cx.unlisted_module_code();
        let mut found = Vec::new();
        let mut scan = MAX_INERT;
        for (s, e) in still {
            if let Some(f) = report(cx, out, s, e, &hidden_modules, &mut scan) {
                found.push(f);
            }
        }
        out.capped(found, "executable memory");
    }
}

/// The executable ranges no owner accounts for, page-aligned; None (with a
/// finding) if the page tables cannot be walked.
fn ownerless(cx: &Context, out: &mut Report) -> Option<Vec<(u64, u64)>> {
    let exec = match cx.page_tables().executable_ranges(MAX_TABLES) {
        Ok(r) => r,
        Err(_) => {
            out.add(
                format!(
                    "the kernel's page tables hold more than {MAX_TABLES} tables: executable memory not checked"
                ),
                &[],
                "",
            );
            return None;
        }
    };
    let text = (cx.sym("_text"), cx.sym("_etext"));
    let owned: Vec<(u64, u64)> = known_code(cx)
        .into_iter()
        // Extents come from guest memory: one that claims more than any
        // module or JIT image could hold (to cover someone else's code)
        // owns nothing. The kernel's text comes from the build.
        .filter(|o| {
            (Some(o.start), Some(o.end)) == text || o.end.saturating_sub(o.start) <= MAX_OWNED
        })
        .map(|o| (o.start & !0xfff, o.end.saturating_add(0xfff) & !0xfff))
        .collect();
    log::debug!("hidden code: executable {:x?}; owned {:x?}", exec, owned);
    Some(exec.into_iter().flat_map(|r| subtract(r, &owned)).collect())
}

/// Does `[s, e)` hold nothing but int3? Read in pieces, out of a budget
/// of bytes for the whole check (`scan`, from [`MAX_INERT`]): past it,
/// ownerless memory counts as code.
fn inert(cx: &Context, s: u64, e: u64, scan: &mut u64) -> bool {
    let Some(left) = scan.checked_sub(e.saturating_sub(s)) else {
        return false;
    };
    *scan = left;
    let mut buf = vec![0u8; SAMPLE];
    let mut at = s;
    while at < e {
        let n = usize::try_from(e.saturating_sub(at)).map_or(SAMPLE, |n| n.min(SAMPLE));
        let chunk = &mut buf[..n];
        if cx.read(at, chunk).is_none() || chunk.iter().any(|&b| b != INT3) {
            return false;
        }
        at = at.saturating_add(n as u64);
    }
    true
}

/// A finding for ownerless `[s, e)`, unless it holds nothing but int3.
fn report(
    cx: &Context,
    out: &Report,
    s: u64,
    e: u64,
    hidden: &[(u64, u64, String)],
    scan: &mut u64,
) -> Option<Finding> {
    let len = e.saturating_sub(s);
    if inert(cx, s, e, scan) {
        return None; // free BPF pack space and the like
    }
    let n = usize::try_from(len).unwrap_or(SAMPLE).min(SAMPLE);
    let mut bytes = vec![0u8; n];
    let readable = cx.read(s, &mut bytes).is_some();
    let head: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let module = hidden
        .iter()
        .find(|(ms, me, _)| *ms < e && s < *me)
        .map(|(_, _, n)| n.clone());
    let what = match &module {
        Some(m) => format!(", the code of module {m}, which is not in the module list"),
        None => String::new(),
    };
    let f = out.finding(
        format!(
            "executable kernel memory {s:#x}..{e:#x} ({} KiB) belongs to no code the kernel knows{what}",
            len / 1024
        ),
        &[s, e],
        if readable {
            format!(
                "not kernel text, a listed module, a BPF program, an ftrace trampoline or kprobe slots; it starts {}",
                head.join(" ")
            )
        } else {
            "not kernel text, a listed module, a BPF program, an ftrace trampoline or kprobe slots".into()
        },
    );
    Some(match module {
        Some(m) => f.owned_by(m),
        None => f,
    })
}
