//! What the build's code lets call what. A traced call from one function
//! of the image to another is legitimate if the caller's code calls or
//! jumps to the callee directly, possibly through functions ftrace cannot
//! see (no `__fentry__` call, so no record of their own), or if the callee
//! is a function whose address the build takes (stored in its data or
//! loaded by its code): the only kind an indirect call reaches. Anything
//! else is a control flow the build does not contain.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use crate::base::error::Result;
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::Vmlinux;

/// Names of the code through which interrupts and exceptions enter and
/// leave, by prefix (arch/x86/entry, kernel/entry, kernel/softirq.c).
/// Parts of it run in task context (an exception; an interrupt's exit
/// after it has left hardirq context), where the guest records what they
/// call as if the interrupted function had called it.
const ASYNC_ENTRY_PREFIXES: &[&str] = &[
    "exc_",
    "asm_exc_",
    "irqentry_",
    "irq_exit",
    "irq_enter",
    "sysvec_",
    "asm_sysvec_",
    "common_interrupt",
    "asm_common_interrupt",
    "spurious_interrupt",
];

/// Longest function body scanned for calls.
const MAX_BODY: u64 = 64 << 10;
/// Functions without an ftrace call site followed between two traced ones.
const MAX_HIDDEN: usize = 3;

pub struct CallGraph<'a> {
    map: &'a SystemMap,
    vmlinux: &'a Vmlinux,
    /// Function starts (link time) whose address the build takes.
    address_taken: HashSet<u64>,
    /// Function starts ftrace can trace (an `__mcount_loc` site at the
    /// start, or after an `endbr64`).
    traceable: HashSet<u64>,
    /// Direct call and jump targets per function, as scanned.
    targets: Mutex<BTreeMap<u64, BTreeSet<u64>>>,
    /// Interrupt and exception entry and exit functions (link time).
    async_entries: Vec<u64>,
}

impl<'a> CallGraph<'a> {
    pub fn new(vmlinux: &'a Vmlinux, map: &'a SystemMap) -> Result<Self> {
        let starts: HashSet<u64> = map.function_starts().collect();
        let address_taken = vmlinux
            .referenced_addresses()?
            .into_iter()
            .filter(|a| starts.contains(a))
            .collect();
        let table = map
            .addr("__start_mcount_loc")
            .zip(map.addr("__stop_mcount_loc"));
        let (lo, hi) = map.image();
        let traceable = table
            .and_then(|t| vmlinux.mcount_sites(t, lo, hi))
            .unwrap_or_default()
            .into_iter()
            .flat_map(|site| [site, site.wrapping_sub(4)])
            .filter(|a| starts.contains(a))
            .collect();
        let async_entries = map
            .functions()
            .filter(|(n, _)| ASYNC_ENTRY_PREFIXES.iter().any(|p| n.starts_with(p)))
            .map(|(_, a)| a)
            .collect();
        Ok(CallGraph {
            map,
            vmlinux,
            address_taken,
            traceable,
            targets: Mutex::new(BTreeMap::new()),
            async_entries,
        })
    }

    /// rel32 call and jump targets in the body of the function at `f`.
    fn direct_targets(&self, f: u64) -> BTreeSet<u64> {
        if let Some(t) = self.targets.lock().ok().and_then(|m| m.get(&f).cloned()) {
            return t;
        }
        let len = self.map.extent_at(f).unwrap_or(0).min(MAX_BODY);
        let mut out = BTreeSet::new();
        if let Some(code) = self.vmlinux.bytes(f, len) {
            for i in 0..code.len() {
                // call/jmp rel32, and jcc rel32 (0f 80..8f).
                let disp_at = match (code[i], code.get(i.saturating_add(1))) {
                    (0xe8 | 0xe9, _) => i.saturating_add(1),
                    (0x0f, Some(0x80..=0x8f)) => i.saturating_add(2),
                    _ => continue,
                };
                let Some(d) = crate::abi::le::i32_at(&code, disp_at) else {
                    continue;
                };
                let t = f
                    .wrapping_add(disp_at as u64)
                    .wrapping_add(4)
                    .wrapping_add(d as i64 as u64);
                if t != f && self.map.function_at(t).is_some() {
                    out.insert(t);
                }
            }
        }
        if let Ok(mut m) = self.targets.lock() {
            m.insert(f, out.clone());
        }
        out
    }

    /// May the function named `caller` lead to a traced call of `callee`
    /// without any other traced function between them? Callers outside
    /// the image (module code) are not judged here. Nor is a callee of the
    /// interrupt and exception entry code, which lands under whatever
    /// function an interrupt or exception hit.
    pub fn allows(&self, caller: &str, callee: &str) -> bool {
        let (Some(from), Some(to)) = (self.map.addr(caller), self.map.addr(callee)) else {
            return self.map.addr(caller).is_none();
        };
        if self.address_taken.contains(&to) {
            return true;
        }
        self.reaches(from, to) || self.async_entries.iter().any(|&e| self.reaches(e, to))
    }

    /// The functions (link-time starts) that a call of `roots` can run,
    /// the code of the interrupts and exceptions that may land inside it
    /// included: every direct call or jump target, and once any function
    /// reached makes an indirect call (a retpoline thunk, a static call's
    /// trampoline, or `call *`/`jmp *`), every function whose address the
    /// build takes. Without `indirect`, direct calls only: a lower bound,
    /// not what a call can reach. Bounded by the build's function count.
    pub fn reach(&self, roots: &[u64], indirect: bool) -> BTreeSet<u64> {
        let thunks: HashSet<u64> = self
            .map
            .functions()
            .filter(|(n, _)| {
                n.starts_with("__x86_indirect_")
                    || n.starts_with("__SCT__")
                    || n.starts_with("__static_call_return")
            })
            .map(|(_, a)| a)
            .collect();
        let mut seen: BTreeSet<u64> = roots.iter().copied().collect();
        if indirect {
            seen.extend(self.async_entries.iter().copied());
        }
        let mut work: Vec<u64> = seen.iter().copied().collect();
        let mut all_taken = false;
        while let Some(f) = work.pop() {
            let targets = self.direct_targets(f);
            // Once every address-taken function is in, indirect calls add
            // nothing: the body is not scanned for them again.
            let adds_taken = indirect
                && !all_taken
                && (targets.iter().any(|t| thunks.contains(t)) || self.has_indirect(f));
            for t in targets {
                if seen.insert(t) {
                    work.push(t);
                }
            }
            if adds_taken {
                all_taken = true;
                for &a in &self.address_taken {
                    if seen.insert(a) {
                        work.push(a);
                    }
                }
            }
        }
        seen
    }

    /// Does the body of `f` hold `call *`/`jmp *` (ff /2, ff /4) through a
    /// register or memory? Scanned byte by byte, as the direct targets
    /// are: it may see one in the middle of another instruction, which
    /// only makes the reach larger.
    fn has_indirect(&self, f: u64) -> bool {
        let len = self.map.extent_at(f).unwrap_or(0).min(MAX_BODY);
        self.vmlinux.bytes(f, len).is_some_and(|code| {
            code.windows(2)
                .any(|w| w[0] == 0xff && matches!((w[1] >> 3) & 7, 2 | 4))
        })
    }

    /// Functions ftrace can trace, of those in `fs`.
    pub fn traceable_among(&self, fs: &BTreeSet<u64>) -> usize {
        fs.iter().filter(|f| self.traceable.contains(f)).count()
    }

    /// Functions ftrace can trace in the build: its call sites.
    pub fn traceable_count(&self) -> usize {
        self.traceable.len()
    }

    /// Does the code at `from` call or jump to `to`, directly or through
    /// functions ftrace cannot see?
    fn reaches(&self, from: u64, to: u64) -> bool {
        // Breadth-first through functions ftrace does not see.
        let mut seen = BTreeSet::from([from]);
        let mut level = vec![from];
        for _ in 0..=MAX_HIDDEN {
            let mut next = Vec::new();
            for f in level {
                for t in self.direct_targets(f) {
                    if t == to {
                        return true;
                    }
                    if !self.traceable.contains(&t) && seen.insert(t) {
                        next.push(t);
                    }
                }
            }
            level = next;
        }
        false
    }
}
