//! What the vCPUs run on right now, from QEMU rather than from the guest's
//! memory ([`crate::guest::vcpu`]): every other check reads the tables the
//! kernel keeps, but a CPU takes its interrupts through the table its IDT
//! register names and translates addresses through the page-table root in
//! its CR3. A rootkit that loads either with a copy of its own leaves the
//! kernel's tables as built.
//!
//! - IDTR: a 64-bit vCPU's IDT register must name the kernel's IDT, at its
//!   read-only alias in the CPU entry area (`CPU_ENTRY_AREA_RO_IDT`, what
//!   6.1 loads once it has set up its gates) or at `idt_table` itself
//!   (before), with the limit of 256 gates.
//! - CR3: a 64-bit vCPU's page-table root must be one the kernel keeps: the
//!   kernel's own (`init_mm`), the text-patching mm (`poking_mm`), an mm
//!   some CPU has loaded (`cpu_tlbstate.loaded_mm`) or a task's mm, or its
//!   page-table-isolation user half (the next page of an 8 KiB root).
//!
//! Registers and memory are read a moment apart while the guest runs: a
//! context switch in between can make a root look unknown, so a vCPU is
//! reported only if it looks wrong three times, 50 ms apart.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report, CEA_RO_IDT};
use crate::detect::FindingKind;
use crate::guest::addr::VirtAddr;
use crate::guest::vcpu::VcpuRegs;

pub struct VcpuState;

/// 256 gates of 16 bytes, less one.
const IDT_LIMIT: u32 = 0xfff;
/// Tasks whose mm is read, at most.
const MAX_TASKS: usize = 65536;
/// Looks before a vCPU is reported, and the pause between them.
const LOOKS: usize = 3;
const PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// CR3's page-table root: bits 12 to 51 (the low bits are the PCID).
const CR3_ROOT: u64 = 0x000f_ffff_ffff_f000;

impl Check for VcpuState {
    fn kind(&self) -> FindingKind {
        FindingKind::VcpuState
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(read) = cx.vcpus else {
            return; // no monitor of the guest's QEMU is known
        };
        let mut odd: Option<Vec<Odd>> = None;
        for look in 0..LOOKS {
            if look > 0 {
                crate::base::settle::settle(PAUSE);
            }
            let regs = match read() {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    out.add(
                        format!("the vCPUs' registers cannot be read from QEMU: {e}"),
                        &[],
                        "IDT registers and page-table roots not checked",
                    );
                    return;
                }
                None => return,
            };
            let now = judge(cx, &regs);
            // Only what was wrong at every look: the same register of the
            // same vCPU.
            let kept: Vec<Odd> = match odd {
                None => now,
                Some(before) => now
                    .into_iter()
                    .filter(|n| before.iter().any(|b| (b.cpu, b.reg) == (n.cpu, n.reg)))
                    .collect(),
            };
            if kept.is_empty() {
                return;
            }
            odd = Some(kept);
        }
        for o in odd.unwrap_or_default() {
            out.add(o.detail, &[o.at], "read from QEMU, three times 50 ms apart");
        }
    }
}

/// A register of a vCPU that is not the kernel's.
#[derive(Debug)]
struct Odd {
    cpu: u32,
    /// Which register: `"idtr"` or `"cr3"`.
    reg: &'static str,
    detail: String,
    /// The address or root it holds.
    at: u64,
}

/// Each 64-bit vCPU whose IDT register or page-table root is not the
/// kernel's.
fn judge(cx: &Context, regs: &[VcpuRegs]) -> Vec<Odd> {
    let mut out = Vec::new();
    let idt_table = cx.sym("idt_table");
    let roots = known_roots(cx);
    for r in regs.iter().filter(|r| r.long_mode) {
        if let Some((base, limit)) = r.idt {
            if !(base == CEA_RO_IDT || Some(base) == idt_table) || limit != IDT_LIMIT {
                out.push(Odd {
                    cpu: r.cpu,
                    reg: "idtr",
                    detail: format!(
                        "vCPU {}: its IDT register names {base:#x} (limit {limit:#x}), not the kernel's IDT ({CEA_RO_IDT:#x}, or idt_table{}, limit {IDT_LIMIT:#x}): it takes interrupts and exceptions through a table the idt check never reads",
                        r.cpu,
                        idt_table.map_or(String::new(), |a| format!(" at {a:#x}"))
                    ),
                    at: base,
                });
            }
        }
        if let (Some(cr3), Some(roots)) = (r.cr3, &roots) {
            let root = cr3 & CR3_ROOT;
            let known = roots.contains(&root)
                || root
                    .checked_sub(0x1000)
                    .is_some_and(|k| k % 0x2000 == 0 && roots.contains(&k));
            if !known {
                out.push(Odd {
                    cpu: r.cpu,
                    reg: "cr3",
                    detail: format!(
                        "vCPU {}: it translates through page tables at physical {root:#x} (CR3 {cr3:#x}), which are neither the kernel's, nor the text-patching mm's, nor any loaded or task's mm's: a shadow page-table root the mapping checks never walk",
                        r.cpu
                    ),
                    at: root,
                });
            }
        }
    }
    out
}

/// The physical page-table roots the kernel keeps: init_mm's, poking_mm's,
/// every CPU's loaded mm's and every task's mm's and active mm's. None if
/// the build does not say where they are.
fn known_roots(cx: &Context) -> Option<BTreeSet<u64>> {
    let pgd = cx.field("mm_struct", &["pgd"])?;
    let pa = |va: u64| -> Option<u64> {
        if cx.in_image(va) {
            return cx.kernel.kva_to_gpa(va).map(|g| g.0);
        }
        cx.page_tables().translate(VirtAddr(va)).map(|g| g.0)
    };
    let root_of = |mm: u64| -> Option<u64> {
        let p = cx.read_word(mm.checked_add(pgd)?)?;
        pa(p)
    };
    let mut roots = BTreeSet::new();
    let mut mms = Vec::new();
    mms.extend(cx.sym("init_mm"));
    mms.extend(cx.sym("poking_mm").and_then(|p| cx.read_word(p)));
    mms.extend(cx.sym("efi_mm"));
    if let (Some(tlb), Some(loaded)) = (
        // Per-CPU: its System.map value is an offset, not slid.
        cx.map().addr("cpu_tlbstate"),
        cx.field("tlb_state", &["loaded_mm"]),
    ) {
        for (_, at) in cx.per_cpu(tlb).unwrap_or_default() {
            mms.extend(at.checked_add(loaded).and_then(|a| cx.read_word(a)));
        }
    }
    if let (Some(init), Some(tasks), Some(mm), Some(active)) = (
        cx.sym("init_task"),
        cx.field("task_struct", &["tasks"]),
        cx.field("task_struct", &["mm"]),
        cx.field("task_struct", &["active_mm"]),
    ) {
        for t in cx.list(init.wrapping_add(tasks), MAX_TASKS) {
            let task = t.wrapping_sub(tasks);
            for f in [mm, active] {
                mms.extend(
                    task.checked_add(f)
                        .and_then(|a| cx.read_word(a))
                        .filter(|&m| m != 0),
                );
            }
        }
    }
    mms.sort_unstable();
    mms.dedup();
    for m in mms {
        roots.extend(root_of(m));
    }
    Some(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::vcpu::parse_info_registers;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::locate;
    use crate::testkit::synthetic::{
        put_link, synthetic_guest, unit_build, UNIT_MAP, UNIT_SLIDE, UNIT_TEXT_PA,
    };

    /// init_mm's root, its page-table-isolation user half, and a root no
    /// mm has.
    #[test]
    fn a_page_table_root_no_mm_has_is_named_and_the_kernels_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = crate::kernel::symbols::SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff82120000 D init_mm\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        // init_mm.pgd: a page of the image, 8 KiB aligned.
        let pgd_link = 0xffff_ffff_8213_0000u64;
        put_link(&ram, 0xffff_ffff_8212_0000 + 8, pgd_link + UNIT_SLIDE);
        let root = pgd_link - 0xffff_ffff_8100_0000 + UNIT_TEXT_PA;
        let layouts = crate::kernel::btf::Btf::parse(&crate::testkit::synthetic::btf(&[(
            "mm_struct",
            64,
            &[("pgd", 8, "")],
        )]))
        .unwrap();
        let mut view = KernelView::new(&ram, &map, &k);
        view.btf = Some(&layouts);
        let cx = Context::new(view, &vmlinux, &state);
        let regs = |cr3: u64| {
            parse_info_registers(&format!(
                "CPU#0\nCR0=80050033 CR2=0 CR3={cr3:016x} CR4=0\nEFER=0000000000000d01\n"
            ))
            .unwrap()
        };
        assert!(judge(&cx, &regs(root)).is_empty());
        // With a PCID in the low bits, and the user half.
        assert!(judge(&cx, &regs(root | 0x1000 | 0x806)).is_empty());
        let odd = judge(&cx, &regs(0x0123_4000));
        assert_eq!(odd.len(), 1, "{odd:?}");
        assert!(
            odd[0].detail.contains("page tables at physical 0x1234000"),
            "{odd:?}"
        );
        // Wrong at every look, but not the same register each time (the
        // IDT register, then CR3, then the IDT register): nothing.
        let looks = std::cell::Cell::new(0u32);
        let read = || {
            looks.set(looks.get() + 1);
            let (idt, cr3) = match looks.get() % 2 {
                1 => (0xffff_c900_0012_3000u64, root),
                _ => (0xfffffe0000000000, 0x0123_4000),
            };
            Some(parse_info_registers(&format!(
                "CPU#0\nIDT=     {idt:016x} 00000fff\nCR0=80050033 CR2=0 CR3={cr3:016x} CR4=0\nEFER=0000000000000d01\n"
            )))
        };
        let mut cx = cx;
        cx.vcpus = Some(&read);
        let mut all = Vec::new();
        crate::base::settle::without_settling(|| {
            VcpuState.run(&cx, &mut Report::new(FindingKind::VcpuState, &mut all));
        });
        assert_eq!(looks.get(), 2, "the second look already differs");
        assert!(all.is_empty(), "{all:?}");
    }

    #[test]
    fn an_idt_register_elsewhere_is_named_and_the_kernels_is_not() {
        let regs = parse_info_registers(
            "CPU#0\nIDT=     fffffe0000000000 00000fff\nEFER=0000000000000d01\n\
             CPU#1\nIDT=     ffffc90000123000 00000fff\nEFER=0000000000000d01\n\
             CPU#2\nIDT=     0000000000000000 0000ffff\nEFER=0000000000000000\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let cx = Context::new(KernelView::new(&ram, &map, &k), &vmlinux, &state);
        let odd = judge(&cx, &regs);
        assert_eq!(odd.len(), 1, "{odd:?}");
        assert_eq!((odd[0].cpu, odd[0].reg), (1, "idtr"));
        assert_eq!(odd[0].at, 0xffff_c900_0012_3000);
        assert!(odd[0]
            .detail
            .contains("IDT register names 0xffffc90000123000"));
        // Without a monitor, nothing is said.
        let mut all = Vec::new();
        VcpuState.run(&cx, &mut Report::new(FindingKind::VcpuState, &mut all));
        assert!(all.is_empty());
        // One that reads the same every time: reported once.
        let read = || Some(Ok(regs.clone()));
        let mut cx = cx;
        cx.vcpus = Some(&read);
        crate::base::settle::without_settling(|| {
            VcpuState.run(&cx, &mut Report::new(FindingKind::VcpuState, &mut all));
        });
        assert_eq!(all.len(), 1, "{all:?}");
        // One whose monitor fails: said so.
        let fails = || Some(Err("QEMU monitor socket closed".to_string()));
        cx.vcpus = Some(&fails);
        all.clear();
        VcpuState.run(&cx, &mut Report::new(FindingKind::VcpuState, &mut all));
        assert!(all[0].detail.contains("cannot be read"), "{all:?}");
    }
}
