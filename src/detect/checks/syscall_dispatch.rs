//! The system call path, against the build: the entry code
//! (`entry_SYSCALL_64` to `entry_SYSRETQ_end`), `do_syscall_64`, and the
//! dispatchers that replaced `sys_call_table` in 6.1.85 (`x64_sys_call`,
//! and `x32_sys_call`/`ia32_sys_call` where built). An inline hook there
//! redirects every system call without touching a table. Compared byte for
//! byte except where the kernel patches itself (see [`super::code`]).
#![deny(clippy::arithmetic_side_effects)]

use super::code::{compare, Region};
use super::{Check, Context};
use crate::detect::{Finding, FindingKind};

pub struct SyscallDispatch;

impl Check for SyscallDispatch {
    fn kind(&self) -> FindingKind {
        FindingKind::SyscallDispatch
    }

    fn run(&self, cx: &Context, out: &mut Vec<Finding>) {
        for r in regions(cx) {
            compare(cx, FindingKind::SyscallDispatch, &r, out);
        }
    }
}

/// The code of the system call path this build has.
pub(super) fn regions(cx: &Context) -> Vec<Region<'static>> {
    let map = cx.map();
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::detect::checks::code::compare_with_sites;
    use crate::guest::memory::{GuestAddress, GuestRam};
    use crate::host::statedir::GuestDir;
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

    fn findings(code: &[u8]) -> Vec<Finding> {
        let (d, ram, map, k, v) = guest(code);
        let dir = GuestDir::for_domain(&d.path().join("state"), "t").unwrap();
        let cx = Context::new(KernelView::new(&ram, &map, &k), &v, &dir);
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
        compare_with_sites(&cx, FindingKind::SyscallDispatch, &r, &[fentry], &mut out);
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
