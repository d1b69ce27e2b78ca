//! The kernel's mapping of its own image. Every image check (text, rodata,
//! the system call table, the IDT, operation tables) reads the image at
//! `_text`'s physical address plus the offset, but the CPU runs and reads
//! what the kernel's page tables map there. A rootkit that points one
//! page-table entry at a patched copy passes every one of those checks; so
//! each mapped page of `[_text, _end)` must map its own frame, with the
//! permissions a running kernel gives it (`STRICT_KERNEL_RWX`: text not
//! writable, read-only data neither writable nor executable, data not
//! executable), and the IDT's read-only alias in the CPU entry area, which
//! the CPU reads through `IDTR`, must map `idt_table`'s frame.
//!
//! A CPU in kernel mode translates through the top-level table of the
//! process it runs (`mm->pgd`), whose kernel half the kernel keeps equal to
//! `init_top_pgt`'s: a process whose kernel half differs (outside the slot
//! of its own LDT mapping) is a finding, still so a moment later.
//!
//! Not yet: the live `IDTR` and `MSR_LSTAR` of the vCPUs.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report, CEA_RO_IDT};
use crate::detect::{Finding, FindingKind};
use crate::guest::addr::VirtAddr;

pub struct KernelMapping;

/// The image a build may have, at most (a bigger one is not trusted to be
/// walked).
const MAX_IMAGE: u64 = 1 << 30;
/// Findings for pages of one kind, at most, before one that counts the rest.
const MAX_PAGES: usize = 16;
/// Tasks walked at most for their top-level tables.
const MAX_TASKS: usize = 1 << 16;
/// Distinct top-level tables compared at most (one per process).
const MAX_MMS: usize = 1 << 14;
/// What a top-level entry says: present, writable, user, huge, the table's
/// address, no-execute (not the accessed and dirty bits the CPU sets).
const ENTRY_BITS: u64 = 0x800f_ffff_ffff_f087;
/// Processes exit while they are read: a difference must hold this long.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// What a running kernel allows in a part of its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Text,
    Rodata,
    Data,
    /// Padding, init memory: only its frame is checked.
    Other,
}

impl Check for KernelMapping {
    fn kind(&self) -> FindingKind {
        FindingKind::KernelMapping
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let (Some(text), Some(etext), Some(end)) =
            (cx.sym("_text"), cx.sym("_etext"), cx.sym("_end"))
        else {
            return;
        };
        if end <= text || end.saturating_sub(text) > MAX_IMAGE {
            out.add(
                "the build's image bounds are implausible: its mapping not checked",
                &[],
                "",
            );
            return;
        }
        let k = cx.view.kernel;
        let sealed = cx.system_running();
        // The parts' bounds, looked up once: the walk asks per page.
        let range = |a: &str, b: &str| cx.sym(a).zip(cx.sym(b));
        let (rodata, data, bss) = (
            range("__start_rodata", "__end_rodata"),
            range("_sdata", "_edata"),
            range("__bss_start", "__bss_stop"),
        );
        let within = |r: Option<(u64, u64)>, va: u64| r.is_some_and(|(s, e)| s <= va && va < e);
        let part = |va: u64| -> Part {
            if va < etext {
                Part::Text
            } else if within(rodata, va) {
                Part::Rodata
            } else if within(data, va) || within(bss, va) {
                Part::Data
            } else {
                Part::Other
            }
        };
        let pt = cx.page_tables();
        let mut found: Vec<Finding> = Vec::new();
        let mut counts = [0usize; 4];
        let mut note = |i: usize, f: Finding, found: &mut Vec<Finding>| {
            counts[i] = counts[i].saturating_add(1);
            if counts[i] <= MAX_PAGES {
                found.push(f);
            }
        };
        let mut va = text & !0xfff;
        while va < end {
            let own = k.text_pa.0.saturating_add(va.saturating_sub(text));
            let Some(leaf) = pt.leaf(VirtAddr(va)) else {
                if part(va) == Part::Text {
                    let f = out.finding(
                        format!("kernel text at {va:#x} ({}) is not mapped", cx.name(va)),
                        &[va],
                        "the kernel's page tables leave out a page of its code",
                    );
                    note(0, f, &mut found);
                }
                va = va.saturating_add(0x1000);
                continue;
            };
            // The part of this leaf that lies in the image, page by page
            // for the permissions (a 2 MiB page may straddle two parts).
            let leaf_end = leaf.va.saturating_add(leaf.size).min(end);
            let maps = leaf.pa.0.saturating_add(va.saturating_sub(leaf.va));
            if maps != own {
                let f = out.finding(
                    format!(
                        "the kernel's page tables map {va:#x} ({}) to physical {maps:#x}, not to the image's own page at {own:#x}: the CPU runs and reads a copy that the image checks never see",
                        cx.name(va)
                    ),
                    &[va, maps],
                    format!("a {} KiB page at {:#x}", leaf.size / 1024, leaf.pa.0),
                );
                note(1, f, &mut found);
            }
            if sealed {
                let mut p = va;
                while p < leaf_end {
                    let wrong = match part(p) {
                        Part::Text if leaf.writable => Some("kernel text mapped writable"),
                        Part::Rodata if leaf.writable => Some("read-only data mapped writable"),
                        Part::Rodata | Part::Data if leaf.executable => {
                            Some("kernel data mapped executable")
                        }
                        _ => None,
                    };
                    if let Some(what) = wrong {
                        let f = out.finding(
                            format!("{what} at {p:#x} ({})", cx.name(p)),
                            &[p],
                            format!(
                                "a {} KiB page at {:#x}; a running kernel never maps it so (STRICT_KERNEL_RWX)",
                                leaf.size / 1024,
                                leaf.va
                            ),
                        );
                        note(2, f, &mut found);
                        break; // one finding per leaf
                    }
                    p = p.saturating_add(0x1000);
                }
            }
            va = leaf_end.max(va.saturating_add(0x1000)) & !0xfff;
        }
        idt_alias(cx, text, &mut found, out);
        process_tables(cx, &mut found, out);
        for (i, what) in [
            "unmapped text pages",
            "pages mapped elsewhere",
            "pages with wrong permissions",
        ]
        .iter()
        .enumerate()
        {
            let more = counts[i].saturating_sub(MAX_PAGES);
            if more > 0 {
                found.push(out.finding(
                    format!("{more} more {what} in the kernel's image"),
                    &[],
                    "",
                ));
            }
        }
        out.extend(found);
    }
}

/// The kernel half (entries 256..512) of every process's own top-level
/// table must be `init_top_pgt`'s, but for the slot where the kernel maps
/// that process's LDT (with page-table isolation): what differs, by slot.
fn differing_processes(cx: &Context) -> Option<Vec<(u64, u64, u64)>> {
    let (init, tasks, mm_off, pgd_off) = (
        cx.sym("init_task")?,
        cx.field("task_struct", &["tasks"])?,
        cx.field("task_struct", &["mm"])?,
        cx.field("mm_struct", &["pgd"])?,
    );
    let k = cx.view.kernel;
    let mut top = [0u8; 4096];
    cx.view.ram.read_into(k.pgd, &mut top).ok()?;
    let ldt_slot: usize = if k.five_level { 512 - 112 } else { 512 - 240 };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut page = vec![0u8; 4096];
    for t in cx.list(init.wrapping_add(tasks), MAX_TASKS) {
        let task = t.wrapping_sub(tasks);
        let Some(mm) = cx.read_word(task.wrapping_add(mm_off)).filter(|&m| m != 0) else {
            continue; // a kernel thread
        };
        if seen.len() >= MAX_MMS || !seen.insert(mm) {
            continue;
        }
        let Some(pgd) = cx.read_word(mm.wrapping_add(pgd_off)) else {
            continue;
        };
        if pgd == 0 || cx.read(pgd, &mut page).is_none() {
            continue;
        }
        for slot in 256..512usize {
            if slot == ldt_slot {
                continue;
            }
            let at = slot.wrapping_mul(8);
            let (a, b) = (
                crate::abi::le::u64_at(&page, at).unwrap_or(0),
                crate::abi::le::u64_at(&top, at).unwrap_or(0),
            );
            // The CPU sets each copy's accessed bit on its own: compare the
            // table an entry leads to and what it allows.
            if a & ENTRY_BITS != b & ENTRY_BITS {
                out.push((mm, slot as u64, a));
            }
        }
    }
    Some(out)
}

/// Report the processes whose kernel half differs, if they still do a
/// moment later (a process that exits frees its table while it is read).
fn process_tables(cx: &Context, found: &mut Vec<Finding>, out: &Report) {
    let Some(first) = differing_processes(cx) else {
        return;
    };
    if first.is_empty() {
        return;
    }
    crate::base::settle::settle(SETTLE);
    let again: std::collections::BTreeSet<(u64, u64, u64)> = differing_processes(cx)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut n = 0usize;
    for (mm, slot, entry) in first.into_iter().filter(|d| again.contains(d)) {
        // slot < 512: the shifts stay within 64 bits.
        n = n.saturating_add(1);
        if n <= MAX_PAGES {
            // The first address of the slot, sign-extended.
            let va = if cx.view.kernel.five_level {
                0xfe00_0000_0000_0000u64 | (slot << 48)
            } else {
                0xffff_0000_0000_0000u64 | (slot << 39)
            };
            found.push(out.finding(
                format!(
                    "the top-level page table of a process (mm_struct at {mm:#x}) maps kernel addresses from {va:#x} differently from the kernel's own (init_top_pgt slot {slot}): the CPU runs that process's kernel code through other tables"
                ),
                &[mm, va],
                format!("entry {entry:#x}"),
            ));
        }
    }
    if n > MAX_PAGES {
        found.push(out.finding(
            format!(
                "{} more differing kernel entries in processes' top-level tables",
                n.saturating_sub(MAX_PAGES)
            ),
            &[],
            "",
        ));
    }
}

/// The CPU reads the IDT through its read-only alias in the CPU entry
/// area: that alias must map `idt_table`'s own frame, read-only.
fn idt_alias(cx: &Context, text: u64, found: &mut Vec<Finding>, out: &Report) {
    let Some(idt) = cx.sym("idt_table") else {
        return;
    };
    let own = cx
        .view
        .kernel
        .text_pa
        .0
        .saturating_add(idt.saturating_sub(text));
    match cx.page_tables().leaf(VirtAddr(CEA_RO_IDT)) {
        // Early in boot the alias is not set up yet.
        None => {}
        Some(leaf) => {
            let maps = leaf.pa.0.saturating_add(CEA_RO_IDT.saturating_sub(leaf.va));
            if maps != own {
                found.push(out.finding(
                    format!(
                        "the IDT's read-only alias at {CEA_RO_IDT:#x}, which the CPU reads, maps physical {maps:#x}, not idt_table's page at {own:#x}: interrupts and exceptions enter through a copy the idt check never sees"
                    ),
                    &[CEA_RO_IDT, maps],
                    "",
                ));
            } else if leaf.writable {
                found.push(out.finding(
                    format!("the IDT's read-only alias at {CEA_RO_IDT:#x} is mapped writable"),
                    &[CEA_RO_IDT],
                    "",
                ));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;
    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{
        pa_of, put_link, synthetic_guest, unit_build, UNIT_MAP, UNIT_SLIDE, UNIT_TEXT_PA,
    };

    /// One text page (a 2 MiB one, then a 4 KiB one of a split mapping)
    /// pointed at a copy, and text mapped writable: each a finding; the
    /// image mapped as a running kernel maps it: none.
    #[test]
    fn a_shadow_page_or_writable_text_is_a_finding() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff81400000 T _etext\nffffffff81400000 D __start_rodata\nffffffff81600000 D __end_rodata\nffffffff81600000 D _sdata\nffffffff82ff0000 D _edata\nffffffff82100000 D system_state\nffffffff81601000 b idt_table\nffffffff82110000 D init_task\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let put_va = |link: u64, val: u64| put_link(&ram, link, val);
        put_va(
            0xffff_ffff_8210_0000,
            u64::from(super::super::SYSTEM_RUNNING),
        );
        let layouts = crate::kernel::btf::Btf::parse(&crate::testkit::synthetic::btf(&[
            ("task_struct", 64, &[("tasks", 0, ""), ("mm", 16, "")]),
            ("mm_struct", 64, &[("pgd", 8, "")]),
        ]))
        .unwrap();
        let details = || {
            let mut view = crate::kernel::guest::KernelView::new(&ram, &map, &k);
            view.btf = Some(&layouts);
            let cx = Context::new(view, &vmlinux, &state);
            let mut all = Vec::new();
            KernelMapping.run(&cx, &mut Report::new(FindingKind::KernelMapping, &mut all));
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        // head_64.S's early tables: everything writable and executable.
        let got = details();
        assert!(
            got.iter()
                .any(|d| d.starts_with("kernel text mapped writable")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|d| d.starts_with("kernel data mapped executable")),
            "{got:#?}"
        );
        // As a running kernel maps itself: text RO+X, rodata RO+NX, data NX.
        let l2 = pa_of(&map, UNIT_TEXT_PA, "level2_kernel_pgt");
        let text_va = 0xffff_ffff_8100_0000 + UNIT_SLIDE;
        let slot = |off: u64| GuestAddress(l2 + 8 * (((text_va + off) >> 21) & 511));
        let nx = 1u64 << 63;
        for i in 0..(0x200_0000u64 >> 21) {
            let off = i << 21;
            let flags = match off {
                o if o < 0x40_0000 => 0xe1,      // text
                o if o < 0x60_0000 => 0xe1 | nx, // rodata
                _ => 0xe3 | nx,                  // data
            };
            ram.write_u64(slot(off), (UNIT_TEXT_PA + off) | flags)
                .unwrap();
        }
        assert_eq!(details(), Vec::<String>::new());
        // A 2 MiB text page pointed at a copy.
        ram.write_u64(slot(0x20_0000), (UNIT_TEXT_PA + 0x600_0000) | 0xe1)
            .unwrap();
        let got = details();
        assert!(
            got.len() == 1
                && got[0]
                    .contains("to physical 0xa000000, not to the image's own page at 0x4200000"),
            "{got:#?}"
        );
        // Split into 4 KiB pages, one of them (in __x64_sys_read) a copy.
        let pt = 0x700_0000u64;
        for i in 0..512u64 {
            let pa = UNIT_TEXT_PA + 0x20_0000 + i * 0x1000;
            let pa = if i == 0 { 0x710_0000 } else { pa };
            ram.write_u64(GuestAddress(pt + 8 * i), pa | 0x61).unwrap();
        }
        ram.write_u64(slot(0x20_0000), pt | 0x63).unwrap();
        let got = details();
        assert!(
            got.len() == 1 && got[0].contains("(__x64_sys_read) to physical 0x7100000"),
            "{got:#?}"
        );
        ram.write_u64(slot(0x20_0000), (UNIT_TEXT_PA + 0x20_0000) | 0xe1)
            .unwrap();
        // The IDT's alias in the CPU entry area, on idt_table's page, then
        // on a copy.
        let pgd = pa_of(&map, UNIT_TEXT_PA, "init_top_pgt");
        let (t3, t2, t1) = (0x720_0000u64, 0x721_0000u64, 0x722_0000u64);
        let idx = |shift: u32| 8 * ((CEA_RO_IDT >> shift) & 511);
        ram.write_u64(GuestAddress(pgd + idx(39)), t3 | 0x63)
            .unwrap();
        ram.write_u64(GuestAddress(t3 + idx(30)), t2 | 0x63)
            .unwrap();
        ram.write_u64(GuestAddress(t2 + idx(21)), t1 | 0x63)
            .unwrap();
        let alias = |pa: u64| {
            ram.write_u64(GuestAddress(t1 + idx(12)), pa | 0x61 | nx)
                .unwrap()
        };
        alias(UNIT_TEXT_PA + 0x60_1000);
        assert_eq!(details(), Vec::<String>::new());
        alias(0x730_0000);
        let got = details();
        assert!(
            got.len() == 1
                && got[0].starts_with("the IDT's read-only alias")
                && got[0].contains("maps physical 0x7300000"),
            "{got:#?}"
        );
        alias(UNIT_TEXT_PA + 0x60_1000);
        // A process whose top-level table is the kernel's (its accessed
        // bits aside), then one whose kernel half leads elsewhere.
        let (init, task, mm, top) = (
            0xffff_ffff_8211_0000u64,
            0xffff_ffff_8211_1000u64,
            0xffff_ffff_8211_2000u64,
            0xffff_ffff_8211_3000u64,
        );
        let va = |link: u64| link + UNIT_SLIDE;
        put_va(init, va(task));
        put_va(task, va(init));
        put_va(task + 16, va(mm));
        put_va(mm + 8, va(top));
        for i in 0..512u64 {
            let e = ram.read_u64(GuestAddress(pgd + 8 * i)).unwrap();
            put_va(top + 8 * i, if e != 0 { e | 0x20 } else { e });
        }
        assert_eq!(details(), Vec::<String>::new());
        let slot = (text_va >> 39) & 511;
        put_va(top + 8 * slot, 0x740_0000 | 0x63);
        let got = details();
        assert!(
            got.len() == 1 && got[0].contains(&format!("init_top_pgt slot {slot}")),
            "{got:#?}"
        );
    }
}
