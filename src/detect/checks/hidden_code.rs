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

use super::{Check, Context, Report, MAX_EXEC_RANGES, MAX_TABLES};
use crate::base::ranges::{groups, intersect, normalize, subtract_all};
use crate::detect::{Finding, FindingKind};
use crate::guest::paging::TooMany;
use crate::kernel::code::known_code;

pub struct HiddenCode;

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
/// Ownerless ranges at most this far apart are one finding: a guest that
/// scatters pages gets one line per cluster, not one per page.
const COALESCE: u64 = 2 << 20;
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
        let mut inert = Inert::new();
        let first: Vec<(u64, u64)> = first
            .into_iter()
            .filter(|&(s, e)| !inert.holds(cx, s, e))
            .collect();
        if first.is_empty() {
            return;
        }
        crate::base::settle::settle(SETTLE);
        let Some(second) = ownerless(cx, out) else {
            return;
        };
        // Only what had no owner both times (both lists are sorted and
        // disjoint: one pass).
        let still = intersect(&first, &second);
        let hidden_modules = cx.unlisted_module_code();
        let mut inert = Inert::new();
        let mut found = Vec::new();
        for cluster in groups(&still, COALESCE) {
            if let Some(f) = report(cx, out, cluster, &hidden_modules, &mut inert) {
                found.push(f);
            }
        }
        out.capped(found, "executable memory");
    }
}

/// The executable ranges no owner accounts for, page-aligned, sorted and
/// disjoint; None (with a finding) if the page tables cannot be walked
/// within their bounds.
fn ownerless(cx: &Context, out: &mut Report) -> Option<Vec<(u64, u64)>> {
    let exec = match cx.executable_ranges() {
        Ok(r) => r,
        Err(too_many) => {
            out.add(
                match too_many {
                    TooMany::Tables => format!(
                        "the kernel's page tables hold more than {MAX_TABLES} tables: executable memory not checked"
                    ),
                    TooMany::Ranges => format!(
                        "the kernel's page tables map more than {MAX_EXEC_RANGES} separate executable ranges (a clean kernel maps a few hundred): executable memory not checked"
                    ),
                },
                &[],
                "",
            );
            return None;
        }
    };
    let text = (cx.sym("_text"), cx.sym("_etext"));
    let owned = normalize(
        known_code(cx)
            .into_iter()
            // Extents come from guest memory: one that claims more than any
            // module or JIT image could hold (to cover someone else's code)
            // owns nothing. The kernel's text comes from the build.
            .filter(|o| {
                (Some(o.start), Some(o.end)) == text || o.end.saturating_sub(o.start) <= MAX_OWNED
            })
            .map(|o| (o.start & !0xfff, o.end.saturating_add(0xfff) & !0xfff))
            .collect(),
    );
    log::debug!(
        "hidden code: {} executable ranges, {} owned",
        exec.len(),
        owned.len()
    );
    log::trace!("hidden code: executable {:x?}; owned {:x?}", exec, owned);
    Some(subtract_all(&exec, &owned))
}

/// Reads ranges to see that they hold nothing but int3, out of a budget of
/// bytes for the whole check ([`MAX_INERT`]): past it, ownerless memory
/// counts as code.
struct Inert {
    budget: u64,
    buf: Vec<u8>,
}

impl Inert {
    fn new() -> Self {
        Inert {
            budget: MAX_INERT,
            buf: vec![0u8; SAMPLE],
        }
    }

    /// Does `[s, e)` hold nothing but int3?
    fn holds(&mut self, cx: &Context, s: u64, e: u64) -> bool {
        let Some(left) = self.budget.checked_sub(e.saturating_sub(s)) else {
            return false;
        };
        self.budget = left;
        let mut at = s;
        while at < e {
            let n = usize::try_from(e.saturating_sub(at)).map_or(SAMPLE, |n| n.min(SAMPLE));
            let chunk = &mut self.buf[..n];
            if cx.read(at, chunk).is_none() || chunk.iter().any(|&b| b != INT3) {
                return false;
            }
            at = at.saturating_add(n as u64);
        }
        true
    }
}

/// One finding for a cluster of ownerless ranges (sorted, at most
/// [`COALESCE`] apart), unless they hold nothing but int3.
fn report(
    cx: &Context,
    out: &Report,
    cluster: &[(u64, u64)],
    hidden: &[(u64, u64, String)],
    inert: &mut Inert,
) -> Option<Finding> {
    let live: Vec<(u64, u64)> = cluster
        .iter()
        .copied()
        .filter(|&(s, e)| !inert.holds(cx, s, e))
        .collect();
    let (&(s, _), &(_, e)) = (live.first()?, live.last()?);
    let bytes_in: u64 = live
        .iter()
        .fold(0u64, |n, &(a, b)| n.saturating_add(b.saturating_sub(a)));
    let (s0, e0) = live[0];
    let n = usize::try_from(e0.saturating_sub(s0))
        .unwrap_or(SAMPLE)
        .min(SAMPLE);
    let mut bytes = vec![0u8; n];
    let readable = cx.read(s0, &mut bytes).is_some();
    let head: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let module = hidden
        .iter()
        .find(|(ms, me, _)| *ms < e && s < *me)
        .map(|(_, _, n)| n.clone());
    let what = match &module {
        Some(m) => format!(", the code of module {m}, which is not in the module list"),
        None => String::new(),
    };
    let pieces = match live.len() {
        1 => String::new(),
        k => format!(" in {k} pieces"),
    };
    let f = out.finding(
        format!(
            "executable kernel memory {s:#x}..{e:#x} ({} KiB{pieces}) belongs to no code the kernel knows{what}",
            bytes_in / 1024
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
