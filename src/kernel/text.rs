//! The integrity engine for kernel code: the guest's code against the
//! trusted build, byte for byte, except where the build's own tables say
//! the kernel rewrites it (see [`crate::kernel::patching`], the other half:
//! where the sites are): KASLR relocations move by the slide, and each
//! patch site (alternatives, retpolines, return thunks, static calls,
//! jump labels, paravirt calls, ftrace call sites) may hold only what the
//! kernel's patching code would write there. Anything else is a
//! [`Difference`], described with what the changed instruction now calls.
//! Checks turn differences into findings; nothing here knows findings.
#![deny(clippy::arithmetic_side_effects)]

use std::ops::Deref;

use crate::abi::le;
use crate::guest::addr::Slide;
use crate::kernel::guest::KernelView;
use crate::kernel::patching::{self, nop_fill, Alternative, Patch, Site, NOPS};
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::{Reloc, RelocKind, Vmlinux};

/// What the engine reads: a guest kernel and its trusted build.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    pub view: &'a KernelView<'a>,
    pub vmlinux: &'a Vmlinux,
}

impl<'a> Deref for Image<'a> {
    type Target = KernelView<'a>;
    fn deref(&self) -> &KernelView<'a> {
        self.view
    }
}

/// Code that differs from the build where the kernel does not rewrite it,
/// or a patch site that holds what the kernel never writes there, or code
/// that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The difference is an int3 the build does not have: a kprobe's (or a
    /// debugger's) breakpoint.
    pub breakpoint: bool,
    /// What differs, where, and what the changed instruction now reaches.
    pub detail: String,
    /// Runtime addresses involved: the place first, then any target.
    pub addresses: Vec<u64>,
    /// The live and built bytes, where there are any.
    pub evidence: String,
}

impl Difference {
    fn new(detail: impl Into<String>, addresses: &[u64], evidence: impl Into<String>) -> Self {
        Difference {
            breakpoint: false,
            detail: detail.into(),
            addresses: addresses.to_vec(),
            evidence: evidence.into(),
        }
    }
}

/// Longest run of code compared at once.
const MAX_CODE: u64 = 64 << 10;
/// `[start, end)` less the `skip` ranges, in order.
pub fn subtract((start, end): (u64, u64), skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut skip = skip.to_vec();
    skip.sort_unstable();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in skip {
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out.retain(|(a, b)| a < b);
    out
}

/// How [`changed_runs`] groups differing bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// Byte-precise: from the first differing byte to just after the
    /// last, differing bytes at most `gap` apart together (code, rodata).
    Bytes { gap: usize },
    /// Word-aligned (pointer data): from the 8-byte word holding the
    /// first differing byte to the first equal byte at or after the next
    /// word boundary.
    Words,
}

/// The runs of bytes where `a` and `b` differ, as `[start, end)`, grouped
/// by `how`. The one place every byte comparison of kernel data finds its
/// changes.
pub fn changed_runs(a: &[u8], b: &[u8], how: Runs) -> Vec<(usize, usize)> {
    let n = a.len().min(b.len());
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < n {
        if a[i] == b[i] {
            i = i.saturating_add(1);
            continue;
        }
        let (start, end) = match how {
            Runs::Bytes { gap } => {
                let mut last = i;
                let mut k = i;
                while k < n && k.saturating_sub(last) <= gap {
                    if a[k] != b[k] {
                        last = k;
                    }
                    k = k.saturating_add(1);
                }
                (i, last.saturating_add(1))
            }
            Runs::Words => {
                let w = i & !7;
                let mut j = w.saturating_add(8).min(n);
                while j < n && a[j] != b[j] {
                    j = j.saturating_add(1);
                }
                (w, j)
            }
        };
        out.push((start, end));
        i = end.max(i.saturating_add(1));
    }
    out
}

/// Most variants tried at one site (alternatives times nested sites).
const MAX_VARIANTS: usize = 4096;
/// How long a site that looked wrong is given to finish being patched.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

const INT3: u8 = 0xcc;
const RET: u8 = 0xc3;
const JMP32: u8 = 0xe9;
const CALL: u8 = 0xe8;

/// The thunks a return site may jump to, by the mitigation in force
/// (arch/x86/kernel/cpu/bugs.c sets `x86_return_thunk` to one of them).
const RETURN_THUNKS: &[&str] = &[
    "__x86_return_thunk",
    "retbleed_return_thunk",
    "srso_return_thunk",
    "srso_alias_return_thunk",
    "its_return_thunk",
    "entry_untrain_ret",
    "zen_untrain_ret",
    "call_depth_return_thunk",
];

/// `e8`/`e9` rel32 target of the instruction at `at` in `code` (loaded at `base`).
pub fn rel32_target(code: &[u8], at: usize, base: u64) -> Option<u64> {
    let op = *code.get(at)?;
    if op != CALL && op != JMP32 {
        return None;
    }
    let rel = le::i32_at(code, at.checked_add(1)?)?;
    Some(
        base.wrapping_add(at as u64)
            .wrapping_add(5)
            .wrapping_add(rel as i64 as u64),
    )
}

/// `op rel32` at `at` to `target`.
fn rel32(op: u8, at: u64, target: u64) -> [u8; 5] {
    let rel = target.wrapping_sub(at.wrapping_add(5)) as u32;
    let r = rel.to_le_bytes();
    [op, r[0], r[1], r[2], r[3]]
}

/// `code` with KASLR's relocations applied, as the decompressor does.
pub fn relocated(code: &[u8], link: u64, relocs: &[Reloc], slide: Slide) -> Vec<u8> {
    let mut out = code.to_vec();
    for r in relocs {
        let Some(off) = r
            .addr
            .checked_sub(link)
            .and_then(|o| usize::try_from(o).ok())
        else {
            continue;
        };
        let w = r.kind.width() as usize;
        let Some(b) = out.get_mut(off..off.saturating_add(w)) else {
            continue;
        };
        if b.len() != w {
            continue;
        }
        match r.kind {
            RelocKind::Abs64 => {
                let v = slide.relocate64(u64::from_le_bytes(b.try_into().expect("8 bytes")));
                b.copy_from_slice(&v.to_le_bytes());
            }
            RelocKind::Abs32 | RelocKind::NegPc32 => {
                let v = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                let v = if r.kind == RelocKind::Abs32 {
                    slide.relocate32(v)
                } else {
                    slide.relocate32_inverse(v)
                };
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// Does `live` equal `want` up to `optimize_nops()`, which rewrites runs
/// of one-byte NOPs into the kernel's longer NOPs (possibly after some
/// one-byte NOPs it did not treat as a run start)?
pub fn same_up_to_nops(want: &[u8], live: &[u8]) -> bool {
    if want.len() != live.len() {
        return false;
    }
    let mut i = 0;
    while i < want.len() {
        if want[i] == 0x90 {
            let j = want[i..]
                .iter()
                .position(|&b| b != 0x90)
                .map_or(want.len(), |n| i.saturating_add(n));
            let ok = (i..=j).any(|k| {
                live[i..k].iter().all(|&b| b == 0x90) && live[k..j] == nop_fill(j.saturating_sub(k))
            });
            if !ok {
                return false;
            }
            i = j;
            continue;
        }
        if want[i] != live[i] {
            return false;
        }
        i = i.saturating_add(1);
    }
    true
}

/// One region of kernel code to compare.
pub struct Region<'a> {
    /// What findings call it (`x64_sys_call`).
    pub label: &'a str,
    /// Link-time start and length.
    pub link: u64,
    pub len: u64,
}

/// Compare a region of the guest's kernel code with the build; differences
/// are added to `out`.
pub fn compare(cx: &Image, r: &Region, out: &mut Vec<Difference>) {
    let end = r.link.saturating_add(r.len.min(MAX_CODE));
    let sites = patching::sites(cx.vmlinux, cx.map(), r.link, end);
    compare_with_sites(cx, r, &sites, out)
}

/// [`compare`], with the patch sites given.
pub fn compare_with_sites(cx: &Image, r: &Region, sites: &[Site], out: &mut Vec<Difference>) {
    let len = r.len.min(MAX_CODE);
    let end = r.link.saturating_add(len);
    match cx.vmlinux.kaslr_relocations(r.link, end) {
        Ok(relocs) => compare_piece(cx, r.label, r.link, len, sites, &relocs, out),
        Err(e) => out.push(Difference::new(
            format!("cannot check {}: {e}", r.label),
            &[cx.runtime(r.link)],
            "",
        )),
    }
}

/// The code of the system call path `map`'s build has: the entry code
/// (`entry_SYSCALL_64` to `entry_SYSRETQ_end`), `do_syscall_64`, and the
/// dispatchers (`x64_sys_call`, and `x32_sys_call`/`ia32_sys_call` where
/// built).
pub fn syscall_path(map: &SystemMap) -> Vec<Region<'static>> {
    let mut out = Vec::new();
    // The entry code is one assembly block cut into several symbols.
    if let Some(start) = map.addr("entry_SYSCALL_64") {
        let end = map
            .addr("entry_SYSRETQ_end")
            .and_then(|e| Some(e.saturating_add(map.extent("entry_SYSRETQ_end")?)))
            .filter(|&e| e > start)
            .or_else(|| Some(start.saturating_add(map.extent("entry_SYSCALL_64")?)));
        if let Some(end) = end {
            out.push(Region {
                label: "entry_SYSCALL_64",
                link: start,
                len: end.saturating_sub(start),
            });
        }
    }
    for name in [
        "do_syscall_64",
        "x64_sys_call",
        "x32_sys_call",
        "ia32_sys_call",
    ] {
        if let (Some(link), Some(len)) = (map.addr(name), map.extent(name)) {
            out.push(Region {
                label: name,
                link,
                len,
            });
        }
    }
    out
}

/// Largest piece of code compared at once by [`compare_image_code`].
const PIECE: u64 = 256 << 10;
const MAX_PIECE: u64 = 4 << 20;

/// Compare all of link-time `[start, end)` (the build's text: trusted
/// bounds) with the guest, in pieces cut where functions start, at the
/// sites of the build's tables and `extra` ones. `skip` ranges are other
/// checks' to compare. Findings name `function+offset`.
pub fn compare_image_code(
    cx: &Image,
    (start, end): (u64, u64),
    extra: Vec<Site>,
    skip: &[(u64, u64)],
    out: &mut Vec<Difference>,
) {
    let mut sites = patching::sites(cx.vmlinux, cx.map(), start, end);
    sites.extend(extra);
    sites.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.len)));
    let mut relocs = match cx.vmlinux.kaslr_relocations(start, end) {
        Ok(r) => r,
        Err(e) => {
            out.push(Difference::new(
                format!("cannot check the kernel's code: {e}"),
                &[cx.runtime(start)],
                "",
            ));
            return;
        }
    };
    relocs.sort_by_key(|r| r.addr);
    let starts: Vec<u64> = cx
        .map()
        .function_starts()
        .filter(|&a| a > start && a < end)
        .collect();
    for (a, b) in pieces((start, end), skip, &starts, &sites) {
        let s = sites.partition_point(|x| x.addr < a)..sites.partition_point(|x| x.addr < b);
        let r = relocs.partition_point(|x| x.addr < a)..relocs.partition_point(|x| x.addr < b);
        compare_piece(cx, "", a, b.saturating_sub(a), &sites[s], &relocs[r], out);
    }
}

/// `[start, end)` less `skip`, cut into pieces of about [`PIECE`] bytes at
/// function starts that no patch site spans.
fn pieces(
    (start, end): (u64, u64),
    skip: &[(u64, u64)],
    starts: &[u64],
    sites: &[Site],
) -> Vec<(u64, u64)> {
    let spans = subtract((start, end), skip);
    let spanned = |cut: u64| {
        let i = sites.partition_point(|x| x.addr < cut);
        sites[..i].iter().rev().take(8).any(|x| x.end() > cut)
    };
    let mut out = Vec::new();
    for (a, b) in spans {
        let mut p = a;
        while p < b {
            let want = p.saturating_add(PIECE);
            let mut i = starts.partition_point(|&x| x < want);
            while starts.get(i).is_some_and(|&c| spanned(c)) {
                i = i.saturating_add(1);
            }
            let cut = starts
                .get(i)
                .copied()
                .unwrap_or(b)
                .min(b)
                .min(p.saturating_add(MAX_PIECE))
                .max(p.saturating_add(1));
            out.push((p, cut));
            p = cut;
        }
    }
    out
}

/// Compare `len` bytes of code at link-time `link` with the build.
#[allow(clippy::too_many_arguments)]
fn compare_piece(
    cx: &Image,
    label: &str,
    link: u64,
    len: u64,
    sites: &[Site],
    relocs: &[Reloc],
    out: &mut Vec<Difference>,
) {
    let runtime = cx.runtime(link);
    let what = || {
        if label.is_empty() {
            cx.name(runtime)
        } else {
            label.to_string()
        }
    };
    let Ok(n) = usize::try_from(len) else {
        return;
    };
    let mut live = vec![0u8; n];
    let (Some(built), Some(())) = (cx.vmlinux.bytes(link, len), cx.read(runtime, &mut live)) else {
        out.push(Difference::new(
            format!("cannot read {}", what()),
            &[runtime],
            "",
        ));
        return;
    };
    let mut code = Code {
        cx,
        label,
        link,
        expected: relocated(&built, link, relocs, cx.slide()),
        live,
    };
    code.walk(sites, out);
}

struct Code<'a, 'c> {
    cx: &'a Image<'c>,
    label: &'a str,
    link: u64,
    /// The build's bytes, relocated.
    expected: Vec<u8>,
    live: Vec<u8>,
}

impl Code<'_, '_> {
    /// Where offset `off` is, for findings: `label+off`, or, for a region
    /// without a label, the symbol and offset there.
    fn place(&self, off: usize) -> String {
        if self.label.is_empty() {
            self.cx.name(self.runtime(off))
        } else {
            format!("{}+{off:#x}", self.label)
        }
    }

    fn off(&self, link: u64) -> usize {
        link.saturating_sub(self.link) as usize
    }

    fn runtime(&self, off: usize) -> u64 {
        self.cx.runtime(self.link).wrapping_add(off as u64)
    }

    fn walk(&mut self, sites: &[Site], out: &mut Vec<Difference>) {
        let n = self.expected.len().min(self.live.len());
        let mut pos = 0usize;
        let mut k = 0usize;
        // Sites that hold something unexpected: (site, nested sites, range).
        let mut failed = Vec::new();
        while k < sites.len() {
            let site = &sites[k];
            let start = self.off(site.addr);
            let end = self.off(site.end()).min(n);
            // Sites inside this one (a return thunk in an alternative's
            // original code) are its to judge.
            let nested_end = sites[k..]
                .iter()
                .position(|s| s.addr >= site.end())
                .map_or(sites.len(), |p| k.saturating_add(p));
            let nested = k.saturating_add(1)..nested_end;
            let this = k;
            k = nested_end;
            if start < pos || start >= end {
                continue;
            }
            self.exact(pos, start, out);
            if self
                .site_ok(site, &sites[nested.clone()], start, end)
                .is_err()
            {
                failed.push((this, nested, start, end));
            }
            pos = end;
        }
        self.exact(pos, n, out);
        if failed.is_empty() {
            return;
        }
        // The kernel patches a site in steps (text_poke_bp: an int3 first,
        // then the tail, then the first byte), and our copy may have raced
        // with a step. Only what a site still holds a moment later counts.
        crate::base::settle::settle(SETTLE);
        for (i, nested, start, end) in failed {
            let site = &sites[i];
            let mut now = vec![0u8; end.saturating_sub(start)];
            if self.cx.read(self.runtime(start), &mut now).is_some() {
                self.live[start..end].copy_from_slice(&now);
            }
            let Err(why) = self.site_ok(site, &sites[nested], start, end) else {
                continue;
            };
            let breakpoint = self.live[start] == INT3;
            // Where a changed call or jump leads now, for the owner.
            let now = (0..end.saturating_sub(start).min(2))
                .find_map(|i| rel32_target(&self.live[start..end], i, self.runtime(start)));
            let mut addrs = vec![self.runtime(start)];
            addrs.extend(now);
            out.push(Difference {
                breakpoint,
                ..Difference::new(
                    format!("{} ({}) {why}", self.place(start), describe(&site.patch)),
                    &addrs,
                    format!(
                        "live {:02x?}, built {:02x?}",
                        &self.live[start..end],
                        &self.expected[start..end]
                    ),
                )
            });
        }
    }

    /// Bytes in `[from, to)` must be the build's.
    fn exact(&self, from: usize, to: usize, out: &mut Vec<Difference>) {
        let mut i = from;
        while i < to {
            if self.expected[i] == self.live[i] {
                i = i.saturating_add(1);
                continue;
            }
            let start = self.changed_instruction(i, out);
            i = start.saturating_add(5).max(i.saturating_add(1));
        }
    }

    /// Report a changed byte at `i`; returns where the instruction covering
    /// it starts (a rel32 call/jmp starting up to four bytes back, in
    /// either version, is reported with its targets).
    fn changed_instruction(&self, i: usize, out: &mut Vec<Difference>) -> usize {
        let base = self.runtime(0);
        let (e, l) = (&self.expected, &self.live);
        let start = (i.saturating_sub(4)..=i)
            .find(|&s| rel32_target(e, s, base).is_some() || rel32_target(l, s, base).is_some())
            .unwrap_or(i);
        let was = rel32_target(e, start, base);
        let now = rel32_target(l, start, base);
        if l.get(i) == Some(&INT3) && e.get(i) != Some(&INT3) {
            // A breakpoint: how kprobes (and debuggers) hook an instruction.
            out.push(Difference {
                breakpoint: true,
                ..Difference::new(
                    format!(
                        "{}: int3 breakpoint where the build has {:#04x} (a kprobe or a debugger's breakpoint)",
                        self.place(i),
                        e.get(i).copied().unwrap_or(0)
                    ),
                    &[self.runtime(i)],
                    format!("live {}, built {}", rel32_bytes(l, i), rel32_bytes(e, i)),
                )
            });
            return i;
        }
        let detail = match now {
            Some(t) => format!(
                "{} now {} {} (the build {})",
                self.place(start),
                if l[start] == CALL {
                    "calls"
                } else {
                    "jumps to"
                },
                self.cx.name(t),
                was.map_or("has no call or jump here".into(), |w| format!(
                    "calls {}",
                    self.cx.name(w)
                ))
            ),
            None => format!("{} code differs from the build", self.place(start)),
        };
        out.push(Difference::new(
            detail,
            &[self.runtime(start), now.unwrap_or(0)],
            format!(
                "live {}, built {}",
                rel32_bytes(l, start),
                rel32_bytes(e, start)
            ),
        ));
        start
    }

    fn site_ok(
        &self,
        site: &Site,
        nested: &[Site],
        start: usize,
        end: usize,
    ) -> Result<(), String> {
        let live = &self.live[start..end];
        if live == &self.expected[start..end] {
            return Ok(());
        }
        let at = self.runtime(start);
        match &site.patch {
            Patch::Fentry => fentry_site_ok(self.cx, live, at),
            Patch::FtraceDispatch => self.ftrace_dispatch_ok(live, at),
            Patch::StaticCall => self.static_call_ok(live, at),
            Patch::Retpoline { reg } if self.its_thunk_ok(live, at, *reg) => Ok(()),
            Patch::Alternative(alts) => {
                let bases = self.nested_variants(nested, start, end);
                let mut tried = 0usize;
                for base in &bases {
                    for v in self.alternatives(site, alts, base) {
                        tried = tried.saturating_add(1);
                        if same_up_to_nops(&v, live) {
                            return Ok(());
                        }
                    }
                }
                Err(format!(
                    "matches neither its original code nor any combination of its {} alternative(s) ({tried} tried)",
                    alts.len()
                ))
            }
            _ => {
                if self
                    .variants(site, &self.expected[start..end], at)
                    .iter()
                    .any(|v| same_up_to_nops(v, live))
                {
                    Ok(())
                } else {
                    Err(self.why_not(site, live, at))
                }
            }
        }
    }

    /// What the kernel may have written at a site whose bytes were
    /// `orig` (the relocated build, or an earlier patch), at runtime `at`.
    fn variants(&self, site: &Site, orig: &[u8], at: u64) -> Vec<Vec<u8>> {
        let len = orig.len();
        let mut v = vec![orig.to_vec()];
        let cx = self.cx;
        match &site.patch {
            Patch::ReturnThunk => {
                let mut ret = vec![INT3; len];
                if let Some(b) = ret.first_mut() {
                    *b = RET;
                }
                v.push(ret);
                if len >= 5 {
                    for t in RETURN_THUNKS.iter().filter_map(|n| cx.sym(n)) {
                        let mut j = rel32(JMP32, at, t).to_vec();
                        j.resize(len, INT3);
                        v.push(j);
                    }
                }
            }
            Patch::Retpoline { reg } => {
                for lfence in [false, true] {
                    v.extend(retpoline(orig, *reg, lfence));
                }
            }
            Patch::JumpLabel { target } => {
                v.push(NOPS.get(len).map_or(Vec::new(), |n| n.to_vec()));
                let t = cx.runtime(*target);
                if len == 5 {
                    v.push(rel32(JMP32, at, t).to_vec());
                } else if len == 2 {
                    let rel = t.wrapping_sub(at.wrapping_add(2)) as i64;
                    if let Ok(r) = i8::try_from(rel) {
                        v.push(vec![0xeb, r as u8]);
                    }
                }
            }
            Patch::Paravirt { index } => {
                v.push(nop_fill(len));
                let op = cx
                    .sym("pv_ops")
                    .map(|p| p.wrapping_add(u64::from(*index).wrapping_mul(8)))
                    .and_then(|p| cx.view.read_word(p));
                for t in op.into_iter().chain(cx.sym("paravirt_BUG")) {
                    if cx.in_image(t) && len >= 5 {
                        let mut c = rel32(CALL, at, t).to_vec();
                        c.extend(nop_fill(len.saturating_sub(5)));
                        v.push(c);
                    }
                }
            }
            Patch::SmpLock => {
                v.push(vec![0xf0]);
                v.push(vec![0x3e]);
            }
            Patch::EndbrSeal => v.push(vec![0x66, 0x0f, 0x1f, 0x00]),
            Patch::Fentry | Patch::StaticCall | Patch::Alternative(_) | Patch::FtraceDispatch => {}
        }
        v
    }

    /// The original code of an alternative site, with what boot-time
    /// patching before the alternatives may have written at the sites
    /// inside it.
    fn nested_variants(&self, nested: &[Site], start: usize, end: usize) -> Vec<Vec<u8>> {
        let mut bases = vec![self.expected[start..end].to_vec()];
        for s in nested {
            let (Some(from), Some(to)) = (
                self.off(s.addr).checked_sub(start),
                self.off(s.end()).checked_sub(start),
            ) else {
                continue;
            };
            if to > end.saturating_sub(start) || from >= to {
                continue;
            }
            let at = self.runtime(self.off(s.addr));
            let mut next = Vec::new();
            for b in &bases {
                for v in self.variants(s, &b[from..to], at) {
                    if next.len() >= MAX_VARIANTS {
                        break;
                    }
                    let mut c = b.clone();
                    c[from..to].copy_from_slice(&v);
                    next.push(c);
                }
            }
            bases = next;
        }
        bases
    }

    /// `base` with every subset of `alts` applied in table order, as
    /// apply_alternatives() would for some set of CPU features.
    fn alternatives(&self, site: &Site, alts: &[Alternative], base: &[u8]) -> Vec<Vec<u8>> {
        let n = alts.len().min(8);
        let mut out = Vec::new();
        for mask in 0u32..(1u32 << n) {
            let mut c = base.to_vec();
            let mut ok = true;
            for (k, a) in alts.iter().enumerate().take(n) {
                if mask & (1 << k) != 0 {
                    ok &= self.apply_alternative(&mut c, site.addr, a).is_some();
                }
            }
            if ok {
                out.push(c);
            }
        }
        out
    }

    /// apply_alternatives() for one entry: the replacement (relocated), a
    /// rel32 call or jump in it re-aimed from its new place, one-byte NOPs
    /// after it.
    fn apply_alternative(&self, buf: &mut [u8], instr: u64, a: &Alternative) -> Option<()> {
        let cx = self.cx;
        let rlen = a.replacement_len;
        if rlen > buf.len() {
            return None;
        }
        let end = a.replacement.checked_add(rlen as u64)?;
        let relocs = cx.vmlinux.kaslr_relocations(a.replacement, end).ok()?;
        let raw = if rlen == 0 {
            Vec::new()
        } else {
            cx.vmlinux.bytes(a.replacement, rlen as u64)?
        };
        let mut ib = relocated(&raw, a.replacement, &relocs, cx.slide());
        if rlen == 5 && ib[0] == CALL {
            let d = le::i32_at(&ib, 1)?.wrapping_add(a.replacement.wrapping_sub(instr) as i32);
            ib[1..5].copy_from_slice(&d.to_le_bytes());
        }
        if rlen == 5 && (raw[0] == 0xeb || raw[0] == JMP32) {
            // recompute_jump(): the jump's target, from the site.
            let o = le::i32_at(&ib, 1)?;
            let tgt = a.replacement.wrapping_add(5).wrapping_add(o as i64 as u64);
            let n = tgt.wrapping_sub(instr) as i64;
            let short = if n >= 0 {
                n.wrapping_sub(2) <= 127
            } else {
                (n.wrapping_sub(2) & 0xff) == n.wrapping_sub(2)
            };
            ib = if short {
                let mut j = vec![0xeb, n.wrapping_sub(2) as u8];
                j.extend(nop_fill(3));
                j
            } else {
                let mut j = vec![JMP32];
                j.extend((n.wrapping_sub(5) as i32).to_le_bytes());
                j
            };
        }
        ib.resize(buf.len(), 0x90);
        buf.copy_from_slice(&ib);
        Some(())
    }

    /// A static call site: a NOP, a `ret`, or a call or jump into the
    /// kernel image (a static call aimed at module code is reported).
    fn static_call_ok(&self, live: &[u8], at: u64) -> Result<(), String> {
        // `xor %eax, %eax` (with prefixes) stands for a call to
        // __static_call_return0 (arch/x86/kernel/static_call.c, xor5rax).
        if live == NOPS[5]
            || live == [RET, INT3, INT3, INT3, INT3]
            || live == [0x2e, 0x2e, 0x2e, 0x31, 0xc0]
        {
            return Ok(());
        }
        match rel32_target(live, 0, at) {
            // Modules aim the kernel's static calls through
            // static_call_update() (kvm's perf guest callbacks, a
            // tracepoint's only probe): code of a module the build ships
            // is the kernel's own; any other module's is a hook.
            Some(t) if self.cx.view.is_build_code(t) => Ok(()),
            Some(t) => Err(format!(
                "now reaches {}, outside the kernel image and the build's modules",
                self.cx.name(t)
            )),
            None => Err("is neither a call, a jump, a NOP nor a return".into()),
        }
    }

    /// ftrace's dispatch call: a call to the start of a kernel function
    /// (`ftrace_ops_list_func`, `ftrace_stub`, or the callback of the one
    /// kernel ftrace_ops). Module callbacks go through the list function.
    fn ftrace_dispatch_ok(&self, live: &[u8], at: u64) -> Result<(), String> {
        let t = match live.first() {
            Some(&CALL) => rel32_target(live, 0, at),
            _ => None,
        }
        .ok_or("is not a call")?;
        let link = self.cx.link(t);
        if self.cx.in_image(t) && self.cx.map().function_at(link).is_some() {
            Ok(())
        } else {
            Err(format!(
                "calls {}, not the start of a kernel function",
                self.cx.name(t)
            ))
        }
    }

    /// The Indirect Target Selection mitigation: the branch goes through a
    /// thunk `jmp *%reg; int3`, in the image or on a page of its own.
    fn its_thunk_ok(&self, live: &[u8], at: u64, reg: u8) -> bool {
        let i = match live.first() {
            Some(0x2e) if live.len() == 6 => 1,
            Some(0x0f) if live.len() == 6 => 2,
            _ => 0,
        };
        let Some(t) = (match live.get(i) {
            Some(&CALL | &JMP32) => rel32_target(live, i, at),
            _ if i == 2 => {
                le::i32_at(live, 2).map(|d| at.wrapping_add(6).wrapping_add(d as i64 as u64))
            }
            _ => None,
        }) else {
            return false;
        };
        let name = self.cx.name(t);
        if self.cx.in_image(t) {
            return name.starts_with("__x86_indirect_its_thunk_");
        }
        let mut thunk = Vec::new();
        if reg >= 8 {
            thunk.push(0x41);
        }
        thunk.extend([0xff, 0xe0 | (reg & 7), INT3]);
        let mut got = vec![0u8; thunk.len()];
        self.cx.read(t, &mut got).is_some() && got == thunk
    }

    fn why_not(&self, site: &Site, live: &[u8], at: u64) -> String {
        match rel32_target(live, 0, at) {
            Some(t) => format!(
                "now {} {}, which the kernel never writes there",
                if live[0] == CALL { "calls" } else { "jumps to" },
                self.cx.name(t)
            ),
            None => format!(
                "holds code the kernel never writes at a {}",
                describe(&site.patch)
            ),
        }
    }
}

/// patch_retpoline(): `[jncc.d8 1f] [lfence] call/jmp *%reg [int3] nops 1:`,
/// if it fits the original instruction.
fn retpoline(orig: &[u8], reg: u8, lfence: bool) -> Option<Vec<u8>> {
    let len = orig.len();
    let mut b = Vec::with_capacity(len);
    let mut op = match orig.first()? {
        0x2e => *orig.get(1)?,
        &o => o,
    };
    if op == 0x0f {
        let cc = (orig.get(1)? & 0xf) ^ 1;
        b.extend([0x70 | cc, u8::try_from(len.checked_sub(2)?).ok()?]);
        op = JMP32;
    }
    if lfence {
        b.extend([0x0f, 0xae, 0xe8]);
    }
    if reg >= 8 {
        b.push(0x41);
    }
    b.push(0xff);
    b.push(if op == CALL { 0xd0 } else { 0xe0 } | (reg & 7));
    if op == JMP32 && b.len() < len {
        b.push(INT3);
    }
    if b.len() > len {
        return None;
    }
    b.resize(len, 0x90);
    Some(b)
}

fn describe(p: &Patch) -> &'static str {
    match p {
        Patch::Fentry => "ftrace's call site",
        Patch::ReturnThunk => "return thunk site",
        Patch::Retpoline { .. } => "retpoline site",
        Patch::Alternative(_) => "alternative site",
        Patch::JumpLabel { .. } => "static branch",
        Patch::StaticCall => "static call site",
        Patch::Paravirt { .. } => "paravirt call site",
        Patch::SmpLock => "lock prefix",
        Patch::EndbrSeal => "sealed endbr64",
        Patch::FtraceDispatch => "ftrace's dispatch call",
    }
}

/// What may stand at an ftrace call site: the 5-byte NOP, the build's own
/// `call __fentry__`, or a call to ftrace's callers or to a trampoline
/// ftrace made for one of the kernel's own ftrace_ops.
pub fn fentry_site_ok(cx: &Image, live: &[u8], site: u64) -> Result<(), String> {
    if live == NOPS[5] {
        return Ok(());
    }
    let target = match live.first() {
        Some(&CALL) => rel32_target(live, 0, site),
        _ => None,
    }
    .ok_or("neither the 5-byte NOP nor a call")?;
    let ours = ["ftrace_caller", "ftrace_regs_caller", "__fentry__"];
    if ours.iter().any(|s| cx.sym(s) == Some(target)) {
        return Ok(());
    }
    if cx.in_image(target) {
        return Err(format!(
            "calls {} instead of an ftrace caller",
            cx.name(target)
        ));
    }
    ftrace_trampoline(cx, target).map_err(|why| format!("calls {}: {why}", cx.name(target)))
}

/// Is the code at `t` (outside the image) a trampoline ftrace built
/// (arch/x86/kernel/ftrace.c, create_trampoline()): a copy of
/// `ftrace_caller` or `ftrace_regs_caller` up to its `_end` label, where
/// only the ftrace_ops load, the callback call and (for regs) a 2-byte NOP
/// for the direct-call jump differ, followed by a return and a pointer to
/// an ftrace_ops of the kernel image itself?
fn ftrace_trampoline(cx: &Image, t: u64) -> Result<(), String> {
    let templates = [
        (
            "ftrace_caller",
            "ftrace_caller_end",
            "ftrace_caller_op_ptr",
            "ftrace_call",
            None,
        ),
        (
            "ftrace_regs_caller",
            "ftrace_regs_caller_end",
            "ftrace_regs_caller_op_ptr",
            "ftrace_regs_call",
            Some("ftrace_regs_caller_jmp"),
        ),
    ];
    let mut why = String::from("not an ftrace trampoline (this build has no ftrace callers)");
    for (start, end, op, call, jmp) in templates {
        match trampoline_like(cx, t, start, end, op, call, jmp) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// Where the labels of one of ftrace's callers are, relative to its start.
struct Caller {
    start: u64,
    size: usize,
    op_off: usize,
    call_off: usize,
    jmp_off: Option<usize>,
}

fn caller(
    cx: &Image,
    start: &str,
    end: &str,
    op: &str,
    call: &str,
    jmp: Option<&str>,
) -> Result<Caller, String> {
    let at = |s: &str| {
        cx.map()
            .addr(s)
            .ok_or_else(|| format!("no {s} in System.map"))
    };
    let s = at(start)?;
    let rel = |a: u64| {
        a.checked_sub(s)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| format!("{start} labels out of order"))
    };
    let c = Caller {
        start: s,
        size: rel(at(end)?)?,
        op_off: rel(at(op)?)?,
        call_off: rel(at(call)?)?,
        jmp_off: jmp.map(|j| at(j).and_then(rel)).transpose()?,
    };
    if c.size > 4096 || c.op_off.saturating_add(7) > c.size || c.call_off.saturating_add(5) > c.size
    {
        return Err(format!("{start} is not shaped like an ftrace caller"));
    }
    Ok(c)
}

fn trampoline_like(
    cx: &Image,
    t: u64,
    start: &str,
    end: &str,
    op: &str,
    call: &str,
    jmp: Option<&str>,
) -> Result<(), String> {
    let c = caller(cx, start, end, op, call, jmp)?;
    let tmpl = cx
        .vmlinux
        .bytes(c.start, c.size as u64)
        .ok_or_else(|| format!("cannot read {start} from the build"))?;
    // The copy, its return (up to 5 bytes) and the ops pointer after it.
    let mut code = vec![0u8; c.size.saturating_add(5 + 8)];
    cx.read(t, &mut code).ok_or("unreadable")?;
    let skip = |i: usize| {
        (c.op_off.saturating_add(3)..c.op_off.saturating_add(7)).contains(&i)
            || (c.call_off.saturating_add(1)..c.call_off.saturating_add(5)).contains(&i)
            || c.jmp_off.is_some_and(|j| {
                (j..j.saturating_add(2)).contains(&i)
                    && code.get(j..j.saturating_add(2)) == Some(&[0x66, 0x90][..])
            })
    };
    if let Some(i) = (0..c.size).find(|&i| code[i] != tmpl[i] && !skip(i)) {
        return Err(format!(
            "not an ftrace trampoline: byte {i:#x} differs from {start}"
        ));
    }
    let callee = rel32_target(&code, c.call_off, t).ok_or("no callback call")?;
    if !cx.in_image(callee) {
        return Err(format!(
            "its callback {} is outside the kernel image",
            cx.name(callee)
        ));
    }
    serves_kernel_ops(cx, t, &c, &code)
}

/// `movq disp32(%rip), %rdx` must load an ftrace_ops pointer stored right
/// after the trampoline's return, and that ops must be the kernel's own.
fn serves_kernel_ops(cx: &Image, t: u64, c: &Caller, code: &[u8]) -> Result<(), String> {
    let disp = le::i32_at(code, c.op_off.saturating_add(3)).ok_or("no ftrace_ops load")?;
    let ptr = t
        .wrapping_add(c.op_off as u64)
        .wrapping_add(7)
        .wrapping_add(disp as i64 as u64);
    let after = ptr.wrapping_sub(t).wrapping_sub(c.size as u64);
    if !(1..=5).contains(&after) {
        return Err("its ftrace_ops pointer is not where ftrace puts it".into());
    }
    let ops = cx
        .view
        .read_word(ptr)
        .ok_or("its ftrace_ops pointer is unreadable")?;
    if !cx.in_image(ops) {
        return Err(format!(
            "it serves ftrace_ops at {ops:#x}, outside the kernel image (ftrace only builds trampolines for the kernel's own)"
        ));
    }
    Ok(())
}

/// The bytes of the `call`/`jmp rel32` (five bytes) that would start at
/// `i` of `code`, for evidence.
fn rel32_bytes(code: &[u8], i: usize) -> String {
    format!(
        "{:02x?}",
        &code[i.min(code.len())..i.saturating_add(5).min(code.len())]
    )
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_cut_at_function_starts_no_site_spans_around_skipped_ranges() {
        let k = 1u64 << 10;
        let starts: Vec<u64> = (1..2048).map(|i| i * 512).collect();
        // A site spanning the start at 256 KiB: the cut moves to the next.
        let sites = [Site {
            addr: 256 * k - 2,
            len: 5,
            patch: Patch::SmpLock,
        }];
        let p = pieces((0, 1024 * k), &[(600 * k, 700 * k)], &starts, &sites);
        assert_eq!(p.first(), Some(&(0, 256 * k + 512)));
        // Contiguous, never inside the skipped range, covering the rest.
        let covered: u64 = p.iter().map(|(a, b)| b - a).sum();
        assert_eq!(covered, 1024 * k - 100 * k);
        assert!(p.iter().all(|&(a, b)| b <= 600 * k || a >= 700 * k));
        assert!(p.windows(2).all(|w| w[0].1 <= w[1].0));
        // No function starts at all: bounded pieces still.
        let p = pieces((0, 10 << 20), &[], &[], &[]);
        assert!(p.iter().all(|(a, b)| b - a <= MAX_PIECE));
        assert_eq!(p.last().unwrap().1, 10 << 20);
    }

    #[test]
    fn changed_runs_by_bytes_and_by_words() {
        let a = [0u8; 32];
        let mut b = a;
        b[1] = 1;
        b[5] = 1;
        b[20] = 1;
        let bytes = |gap| Runs::Bytes { gap };
        assert_eq!(changed_runs(&a, &b, bytes(8)), [(1, 6), (20, 21)]);
        assert_eq!(changed_runs(&a, &b, bytes(3)), [(1, 2), (5, 6), (20, 21)]);
        assert_eq!(changed_runs(&a, &b, bytes(100)), [(1, 21)]);
        assert!(changed_runs(&a, &a, bytes(8)).is_empty());
        // Unequal lengths: the common part.
        assert_eq!(changed_runs(&a[..4], &b, bytes(8)), [(1, 2)]);
        // Words: from the word, through the next boundary while changed.
        assert_eq!(changed_runs(&a, &b, Runs::Words), [(0, 8), (16, 24)]);
        let mut c = a;
        c[0] = 1;
        c[8] = 1;
        c[9] = 1;
        c[10] = 1;
        assert_eq!(changed_runs(&a, &c, Runs::Words), [(0, 11)]);
    }

    #[test]
    fn nop_runs_may_be_optimized() {
        let want = [0x48, 0x90, 0x90, 0x90, 0x90, 0x90, 0xc3];
        assert!(same_up_to_nops(&want, &want));
        let mut opt = vec![0x48];
        opt.extend(nop_fill(5));
        opt.push(0xc3);
        assert!(same_up_to_nops(&want, &opt));
        // A leading one-byte NOP the kernel treated as an instruction of
        // its own, then the rest optimized.
        let mut later = vec![0x48, 0x90];
        later.extend(nop_fill(4));
        later.push(0xc3);
        assert!(same_up_to_nops(&want, &later));
        // A jump written over the NOPs is no NOP.
        let jmp = [0x48, 0xe9, 0x00, 0x10, 0x00, 0x00, 0xc3];
        assert!(!same_up_to_nops(&want, &jmp));
        assert!(!same_up_to_nops(&want, &want[..6]));
    }

    #[test]
    fn retpolines_as_the_kernel_rewrites_them() {
        // call __x86_indirect_thunk_rax -> call *%rax + nops
        let call = [0xe8, 1, 2, 3, 4];
        assert_eq!(
            retpoline(&call, 0, false).unwrap(),
            [0xff, 0xd0, 0x90, 0x90, 0x90]
        );
        assert_eq!(
            retpoline(&call, 0, true).unwrap(),
            [0x0f, 0xae, 0xe8, 0xff, 0xd0]
        );
        // r11 with lfence does not fit 5 bytes: left alone.
        assert!(retpoline(&call, 11, true).is_none());
        // jmp __x86_indirect_thunk_r11 -> jmp *%r11; int3; nop
        assert_eq!(
            retpoline(&[0xe9, 1, 2, 3, 4], 11, false).unwrap(),
            [0x41, 0xff, 0xe3, 0xcc, 0x90]
        );
        // jne (0f 85) thunk -> je +4; jmp *%rcx; int3; nop
        assert_eq!(
            retpoline(&[0x0f, 0x85, 1, 2, 3, 4], 1, false).unwrap(),
            [0x74, 0x04, 0xff, 0xe1, 0xcc, 0x90]
        );
    }
}

/// The engine on a synthetic guest whose `x64_sys_call` holds chosen code.
#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod site_tests {
    use super::*;
    use crate::guest::memory::{GuestAddress, GuestRam};
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::tests::{pa_of, SLIDE, TEXT_PA};
    use crate::kernel::locate::GuestKernel;
    use crate::kernel::locate::{locate, tests::synthetic_guest};
    use crate::kernel::patching::{Patch, Site, NOPS};
    use crate::kernel::symbols::SystemMap;
    use crate::kernel::vmlinux::Vmlinux;

    /// x64_sys_call of the synthetic build: `call __fentry__` at its start
    /// (an ftrace site), a jump table reference (a KASLR relocation), then
    /// a few jumps.
    const FN: u64 = 0xffff_ffff_8120_0500;
    const FENTRY: u64 = 0xffff_ffff_8120_0700;

    fn built_code() -> Vec<u8> {
        let mut c = vec![0xe8];
        c.extend(((FENTRY - (FN + 5)) as u32).to_le_bytes());
        // jmp *0xffffffff81800240(,%rsi,8): 32S reloc at +8
        c.extend([0xff, 0x24, 0xf5]);
        c.extend((0x8180_0240u32).to_le_bytes());
        // mov $0x81800000, %eax: an immediate that happens to look like an
        // address, with no relocation record.
        c.push(0xb8);
        c.extend((0x8180_0000u32).to_le_bytes());
        c.extend([0x90; 47]);
        c
    }

    /// A synthetic guest whose x64_sys_call is `code` (runtime bytes), and
    /// a vmlinux that says what it was built as.
    fn guest(code: &[u8]) -> (tempfile::TempDir, GuestRam, SystemMap, GuestKernel, Vmlinux) {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map_text = format!(
            "{}ffffffff81200500 T x64_sys_call\nffffffff81200540 T after_it\nffffffff81200700 T __fentry__\nffffffff81200710 T ftrace_caller\nffffffff81200780 T ftrace_regs_caller\nffffffff82006000 D __start_mcount_loc\nffffffff82006008 D __stop_mcount_loc\n",
            crate::kernel::symbols::tests::MAP
        );
        let map = SystemMap::parse(&map_text).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let pa = pa_of(&map, TEXT_PA, "x64_sys_call");
        for (i, c) in code.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            ram.write_u64(GuestAddress(pa + 8 * i as u64), u64::from_le_bytes(w))
                .unwrap();
        }
        // The vmlinux: .text with x64_sys_call's built bytes and a 32S
        // relocation at +8.
        let mut text = vec![0u8; 0x200];
        text[..64].copy_from_slice(&built_code());
        let elf = crate::kernel::vmlinux::tests::elf(FN, &text, &[(FN + 8, 11, 1)]);
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, elf).unwrap();
        let v = Vmlinux::load(&p).unwrap();
        (dir, ram, map, k, v)
    }

    fn findings(code: &[u8]) -> Vec<Difference> {
        let (_d, ram, map, k, v) = guest(code);
        let view = KernelView::new(&ram, &map, &k);
        let image = Image {
            view: &view,
            vmlinux: &v,
        };
        let mut out = Vec::new();
        let fentry = Site {
            addr: FN,
            len: 5,
            patch: Patch::Fentry,
        };
        let r = Region {
            label: "x64_sys_call",
            link: FN,
            len: 64,
        };
        compare_with_sites(&image, &r, &[fentry], &mut out);
        out
    }

    fn runtime_code(site: &[u8]) -> Vec<u8> {
        let mut c = built_code();
        c[..5].copy_from_slice(site);
        // KASLR moved the jump table reference by the slide.
        let t = 0x8180_0240u32.wrapping_add(SLIDE as u32);
        c[8..12].copy_from_slice(&t.to_le_bytes());
        c
    }

    fn call_to(target: u64) -> Vec<u8> {
        let mut c = vec![0xe8];
        c.extend((target.wrapping_sub(FN + SLIDE + 5) as u32).to_le_bytes());
        c
    }

    #[test]
    fn what_the_kernel_itself_writes_is_accepted() {
        assert!(findings(&runtime_code(NOPS[5])).is_empty());
        assert!(findings(&runtime_code(&call_to(0xffff_ffff_8120_0710 + SLIDE))).is_empty());
        assert!(findings(&runtime_code(&call_to(0xffff_ffff_8120_0780 + SLIDE))).is_empty());
    }

    #[test]
    fn a_jump_at_the_fentry_site_is_a_finding() {
        // jmp to module memory over ftrace's call site.
        let mut jmp = call_to(0xffff_ffff_c012_3000);
        jmp[0] = 0xe9;
        let f = findings(&runtime_code(&jmp));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].detail.contains("ftrace's call site"),
            "{}",
            f[0].detail
        );
        // A call to module memory that is no ftrace trampoline.
        let f = findings(&runtime_code(&call_to(0xffff_ffff_c012_3000)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].detail.contains("0xffffffffc0123000"),
            "{}",
            f[0].detail
        );
        // A call into the kernel that is not an ftrace caller.
        let f = findings(&runtime_code(&call_to(0xffff_ffff_8120_0100 + SLIDE)));
        assert!(
            f[0].detail.contains("instead of an ftrace caller"),
            "{}",
            f[0].detail
        );
    }

    #[test]
    fn only_real_relocation_sites_may_move_by_the_slide() {
        // A byte window elsewhere that moved by exactly the slide is not a
        // relocation the build knows: a finding.
        let mut c = runtime_code(NOPS[5]);
        let v = 0x8180_0000u32;
        c[13..17].copy_from_slice(&v.wrapping_add(SLIDE as u32).to_le_bytes());
        let f = findings(&c);
        assert_eq!(f.len(), 1, "{f:?}");
        // The real site holding a value other than built + slide.
        let mut c = runtime_code(NOPS[5]);
        c[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(findings(&c).len(), 1);
    }
}
