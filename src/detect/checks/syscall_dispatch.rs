//! The dispatcher since 6.1.85, `x64_sys_call`, byte for byte against the
//! build, except where the build's own tables say the kernel changes it:
//! KASLR relocation sites from its relocation records, and ftrace's call
//! sites from `__mcount_loc`, where only the 5-byte NOP or a call to
//! ftrace's own callers or trampolines may stand.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context};
use crate::abi::le;
use crate::detect::{Finding, FindingKind};
use crate::kernel::vmlinux::{Reloc, RelocKind};

/// The 5-byte NOP ftrace writes over an unused `__fentry__` call.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// Longest run of code compared at once.
const MAX_CODE: u64 = 64 << 10;
pub struct SyscallDispatch;

impl Check for SyscallDispatch {
    fn kind(&self) -> FindingKind {
        FindingKind::SyscallDispatch
    }

    fn run(&self, cx: &Context, out: &mut Vec<Finding>) {
        x64_sys_call(cx, out)
    }
}

/// `e8`/`e9` rel32 target of the instruction at `at` in `code` (loaded at `base`).
fn rel32_target(code: &[u8], at: usize, base: u64) -> Option<u64> {
    let op = *code.get(at)?;
    if op != 0xe8 && op != 0xe9 {
        return None;
    }
    let rel = i32::from_le_bytes(
        code.get(at.checked_add(1)?..at.checked_add(5)?)?
            .try_into()
            .ok()?,
    );
    Some(
        base.wrapping_add(at as u64)
            .wrapping_add(5)
            .wrapping_add(rel as i64 as u64),
    )
}

/// The ftrace call sites (`__mcount_loc`) in `[start, end)`, link-time.
fn mcount_sites(cx: &Context, start: u64, end: u64) -> Vec<u64> {
    let table = cx
        .map()
        .addr("__start_mcount_loc")
        .zip(cx.map().addr("__stop_mcount_loc"));
    table
        .and_then(|t| cx.vmlinux.mcount_sites(t, start, end))
        .unwrap_or_default()
}

/// What may stand at an ftrace call site: the 5-byte NOP, the build's own
/// `call __fentry__`, or a call to ftrace's callers or to a trampoline
/// ftrace made for one of the kernel's own ftrace_ops.
fn fentry_site_ok(cx: &Context, live: &[u8], site: u64) -> Result<(), String> {
    if live == NOP5 {
        return Ok(());
    }
    let target = match live.first() {
        Some(0xe8) => rel32_target(live, 0, site),
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
fn ftrace_trampoline(cx: &Context, t: u64) -> Result<(), String> {
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
    cx: &Context,
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
    cx: &Context,
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
fn serves_kernel_ops(cx: &Context, t: u64, c: &Caller, code: &[u8]) -> Result<(), String> {
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

/// Is `live[off..]` the built value at a KASLR relocation site, moved by
/// the slide as the kernel moves it?
fn relocated_ok(r: &Reloc, built: &[u8], live: &[u8], off: usize, slide: u64) -> bool {
    let w = r.kind.width() as usize;
    let (Some(b), Some(l)) = (
        built.get(off..off.saturating_add(w)),
        live.get(off..off.saturating_add(w)),
    ) else {
        return false;
    };
    match r.kind {
        RelocKind::Abs64 => {
            let (b, l) = (
                u64::from_le_bytes(b.try_into().expect("8 bytes")),
                u64::from_le_bytes(l.try_into().expect("8 bytes")),
            );
            b.wrapping_add(slide) == l
        }
        RelocKind::Abs32 | RelocKind::NegPc32 => {
            let (b, l) = (
                u32::from_le_bytes(b.try_into().expect("4 bytes")),
                u32::from_le_bytes(l.try_into().expect("4 bytes")),
            );
            let s = slide as u32;
            if r.kind == RelocKind::Abs32 {
                b.wrapping_add(s) == l
            } else {
                b.wrapping_sub(s) == l
            }
        }
    }
}

/// The dispatcher since 6.1.85: its code must match the build, except where
/// the build's tables say the kernel changes it.
fn x64_sys_call(cx: &Context, out: &mut Vec<Finding>) {
    let name = "x64_sys_call";
    let (Some(link), Some(len)) = (cx.map().addr(name), cx.map().extent(name)) else {
        return;
    };
    let len = len.min(MAX_CODE);
    let runtime = link.wrapping_add(cx.slide());
    let mut live = vec![0u8; len as usize];
    let (Some(built), Some(())) = (cx.vmlinux.bytes(link, len), cx.read(runtime, &mut live)) else {
        out.push(Finding::new(
            FindingKind::SyscallDispatch,
            format!("cannot read {name}"),
            &[runtime],
            "",
        ));
        return;
    };
    let relocs = match cx.vmlinux.kaslr_relocations(link, link.saturating_add(len)) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::new(
                FindingKind::SyscallDispatch,
                format!("cannot check {name}: {e}"),
                &[runtime],
                "",
            ));
            return;
        }
    };
    let sites = mcount_sites(cx, link, link.saturating_add(len));
    compare_code(cx, name, link, &built, &live, &relocs, &sites, out);
}

#[allow(clippy::too_many_arguments)]
fn compare_code(
    cx: &Context,
    name: &str,
    link: u64,
    built: &[u8],
    live: &[u8],
    relocs: &[Reloc],
    sites: &[u64],
    out: &mut Vec<Finding>,
) {
    let at = |i: usize| link.wrapping_add(cx.slide()).wrapping_add(i as u64);
    let mut i = 0usize;
    while i < built.len().min(live.len()) {
        let here = link.wrapping_add(i as u64);
        if sites.contains(&here) {
            let end = i.saturating_add(5).min(live.len());
            if let Err(why) = fentry_site_ok(cx, &live[i..end], at(i)) {
                out.push(Finding::new(
                    FindingKind::SyscallDispatch,
                    format!("{name}+{i:#x} (ftrace's call site) {why}"),
                    &[at(i)],
                    format!("live {}, built {}", five(live, i), five(built, i)),
                ));
            }
            i = end;
            continue;
        }
        if built[i] == live[i] {
            i = i.saturating_add(1);
            continue;
        }
        if let Some(r) = relocs
            .iter()
            .find(|r| r.addr <= here && here.wrapping_sub(r.addr) < r.kind.width())
        {
            let off = (r.addr.wrapping_sub(link)) as usize;
            if relocated_ok(r, built, live, off, cx.slide()) {
                i = off.saturating_add(r.kind.width() as usize);
                continue;
            }
        }
        let start = changed_instruction(cx, link, built, live, i, name, out);
        i = start.saturating_add(5);
    }
}

/// Report a byte of `live` at `i` that differs from the build where the
/// kernel changes nothing; returns where the instruction covering it
/// starts (a rel32 call/jmp starting up to four bytes back, in either
/// version, is reported with its targets).
fn changed_instruction(
    cx: &Context,
    link: u64,
    built: &[u8],
    live: &[u8],
    i: usize,
    name: &str,
    out: &mut Vec<Finding>,
) -> usize {
    let runtime = link.wrapping_add(cx.slide());
    let start = (i.saturating_sub(4)..=i)
        .find(|&s| {
            rel32_target(built, s, link).is_some() || rel32_target(live, s, runtime).is_some()
        })
        .unwrap_or(i);
    let was = rel32_target(built, start, link);
    let now = rel32_target(live, start, runtime);
    let detail = match now {
        Some(t) => format!(
            "{name}+{start:#x} now calls {} (the build calls {})",
            cx.name(t),
            was.map_or("nothing here".into(), |w| cx
                .name(w.wrapping_add(cx.slide())))
        ),
        None => format!("{name}+{start:#x} code differs from the build"),
    };
    out.push(Finding::new(
        FindingKind::SyscallDispatch,
        detail,
        &[runtime.wrapping_add(start as u64), now.unwrap_or(0)],
        format!("live {}, built {}", five(live, start), five(built, start)),
    ));
    start
}

/// The five bytes at `i`, for evidence.
fn five(c: &[u8], i: usize) -> String {
    format!(
        "{:02x?}",
        &c[i.min(c.len())..i.saturating_add(5).min(c.len())]
    )
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::{GuestAddress, GuestRam};
    use crate::host::statedir::GuestDir;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::tests::{pa_of, SLIDE, TEXT_PA};
    use crate::kernel::locate::GuestKernel;
    use crate::kernel::locate::{locate, tests::synthetic_guest};
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

    fn findings(code: &[u8]) -> Vec<Finding> {
        let (d, ram, map, k, v) = guest(code);
        let dir = GuestDir::for_domain(&d.path().join("state"), "t").unwrap();
        let cx = Context {
            view: KernelView::new(&ram, &map, &k),
            vmlinux: &v,
            dir: &dir,
        };
        let built = built_code();
        let mut live = vec![0u8; 64];
        cx.read(FN + SLIDE, &mut live).unwrap();
        let relocs = v.kaslr_relocations(FN, FN + 64).unwrap();
        let mut out = Vec::new();
        compare_code(
            &cx,
            "x64_sys_call",
            FN,
            &built,
            &live,
            &relocs,
            &[FN],
            &mut out,
        );
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
        assert!(findings(&runtime_code(&NOP5)).is_empty());
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
        let mut c = runtime_code(&NOP5);
        let v = 0x8180_0000u32;
        c[13..17].copy_from_slice(&v.wrapping_add(SLIDE as u32).to_le_bytes());
        let f = findings(&c);
        assert_eq!(f.len(), 1, "{f:?}");
        // The real site holding a value other than built + slide.
        let mut c = runtime_code(&NOP5);
        c[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(findings(&c).len(), 1);
    }
}
