//! x86_64 guest page tables, walked in guest RAM from the host.
//!
//! Kernel-image addresses translate linearly (see [`crate::kernel::locate`]), but
//! modules, vmalloc and the direct map do not: those need the guest's own
//! page tables, from `init_top_pgt` (4-level, or 5-level when the guest
//! enabled LA57), with 1 GiB and 2 MiB pages. Every entry is guest data:
//! a walk that leads outside RAM simply fails.
#![deny(clippy::arithmetic_side_effects)]

use crate::guest::addr::VirtAddr;
use crate::guest::memory::{GuestAddress, GuestRam};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

pub struct PageTables<'a> {
    ram: &'a GuestRam,
    /// Guest physical address of the top-level table.
    root: u64,
    levels: u32,
}

/// How a virtual address translated: the guest physical address of the
/// table consulted at each level, top first, and where it led.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub tables: Vec<GuestAddress>,
    pub pa: GuestAddress,
}

impl<'a> PageTables<'a> {
    pub fn new(ram: &'a GuestRam, root: GuestAddress, five_level: bool) -> Self {
        PageTables {
            ram,
            root: root.0 & ADDR_MASK,
            levels: if five_level { 5 } else { 4 },
        }
    }

    /// Walk the tables for `va`, if it is mapped.
    pub fn walk(&self, va: VirtAddr) -> Option<Walk> {
        let va = va.0;
        let mut table = self.root;
        let mut tables = Vec::with_capacity(self.levels as usize);
        for level in (1..=self.levels).rev() {
            // level ≤ 5: shift ≤ 48.
            let shift = 12u32.wrapping_add(9u32.wrapping_mul(level.wrapping_sub(1)));
            let index = (va >> shift) & 511;
            tables.push(GuestAddress(table));
            let entry = self
                .ram
                .read_u64(GuestAddress(table.checked_add(index << 3)?))
                .ok()?;
            if entry & PRESENT == 0 {
                return None;
            }
            // 1 GiB (level 3) and 2 MiB (level 2) pages.
            if (level == 2 || level == 3) && entry & HUGE != 0 {
                let size_mask = (1u64 << shift).wrapping_sub(1);
                let pa = (entry & ADDR_MASK & !size_mask) | (va & size_mask);
                return Some(Walk {
                    tables,
                    pa: GuestAddress(pa),
                });
            }
            table = entry & ADDR_MASK;
        }
        Some(Walk {
            tables,
            pa: GuestAddress(table | (va & 0xfff)),
        })
    }

    /// The page that maps `va`, with what the CPU may do there (the
    /// permissions of every level combined), if mapped.
    pub fn leaf(&self, va: VirtAddr) -> Option<Leaf> {
        let va = va.0;
        let mut table = self.root;
        let (mut writable, mut executable) = (true, true);
        for level in (1..=self.levels).rev() {
            // level ≤ 5: shift ≤ 48.
            let shift = 12u32.wrapping_add(9u32.wrapping_mul(level.wrapping_sub(1)));
            let index = (va >> shift) & 511;
            let entry = self
                .ram
                .read_u64(GuestAddress(table.checked_add(index << 3)?))
                .ok()?;
            if entry & PRESENT == 0 {
                return None;
            }
            writable &= entry & WRITABLE != 0;
            executable &= entry & NO_EXECUTE == 0;
            let last = level == 1 || ((level == 2 || level == 3) && entry & HUGE != 0);
            if last {
                let size = 1u64 << shift;
                let base = va & !size.wrapping_sub(1);
                return Some(Leaf {
                    va: base,
                    pa: GuestAddress(entry & ADDR_MASK & !size.wrapping_sub(1)),
                    size,
                    writable,
                    executable,
                });
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// The guest physical address `va` maps to, if mapped.
    pub fn translate(&self, va: VirtAddr) -> Option<GuestAddress> {
        self.walk(va).map(|w| w.pa)
    }

    /// Copy `buf.len()` bytes from guest virtual `va`, page by page.
    pub fn read(&self, va: VirtAddr, buf: &mut [u8]) -> Option<()> {
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let cur = va.checked_add(done as u64)?;
            // 1 ..= 4096.
            let in_page = 4096u64.wrapping_sub(cur.0 & 0xfff) as usize;
            let n = in_page.min(rest.len());
            let pa = self.translate(cur)?;
            self.ram.read_into(pa, &mut rest[..n]).ok()?;
            done = done.checked_add(n)?;
        }
        Some(())
    }

    /// Every mapping of the kernel half that the kernel may execute
    /// (present, executable at every level, not user-accessible: SMEP keeps
    /// the kernel from running user pages), as sorted, merged `[start, end)`
    /// ranges of virtual addresses. Reads at most `max_tables` tables and
    /// returns at most `max_ranges` ranges: a guest may build tables that
    /// never end, or reuse a few to map one page in two over terabytes.
    pub fn executable_ranges(
        &self,
        max_tables: usize,
        max_ranges: usize,
    ) -> Result<Vec<(u64, u64)>, TooMany> {
        let mut walk = ExecWalk {
            tables: self,
            budget: max_tables,
            max_ranges,
            out: Vec::new(),
        };
        let top_shift = 12u32.wrapping_add(9u32.wrapping_mul(self.levels.wrapping_sub(1)));
        // The upper half: the top table's entries 256..512.
        walk.table(self.root, self.levels, 256, 0, top_shift, true)?;
        Ok(walk.out)
    }

    pub fn read_u64(&self, va: VirtAddr) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Some(u64::from_le_bytes(b))
    }
}

/// One page of a mapping: the virtual and physical address it starts
/// at, its size (4 KiB, 2 MiB or 1 GiB), and what every level allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub va: u64,
    pub pa: GuestAddress,
    pub size: u64,
    pub writable: bool,
    pub executable: bool,
}

/// The guest's page tables hold more than a walk may read.
#[derive(Debug, PartialEq, Eq)]
pub enum TooMany {
    /// More tables.
    Tables,
    /// More separate executable ranges.
    Ranges,
}

struct ExecWalk<'p, 'a> {
    tables: &'p PageTables<'a>,
    budget: usize,
    max_ranges: usize,
    out: Vec<(u64, u64)>,
}

impl ExecWalk<'_, '_> {
    /// Entries `first..512` of the table at `pa`, a table of `level` whose
    /// entries map `1 << shift` bytes each from `base` (not yet
    /// sign-extended). Tables that cannot be read map nothing.
    fn table(
        &mut self,
        pa: u64,
        level: u32,
        first: u64,
        base: u64,
        shift: u32,
        user: bool,
    ) -> Result<(), TooMany> {
        self.budget = self.budget.checked_sub(1).ok_or(TooMany::Tables)?;
        // Word by word, as the CPU reads entries (never torn), and at a
        // word's cost rather than eight volatile bytes'.
        let mut raw = [0u64; 512];
        if self
            .tables
            .ram
            .read_words(GuestAddress(pa), &mut raw)
            .is_err()
        {
            return Ok(());
        }
        for index in first..512 {
            let entry = raw[index as usize];
            // A subtree marked no-execute is so at any depth.
            if entry & PRESENT == 0 || entry & NO_EXECUTE != 0 {
                continue;
            }
            // A page is user-accessible only if every level says so (the
            // kernel's own tables mark upper levels user, and leaves not).
            // The kernel half has one such page, vsyscall's, which SMEP
            // keeps the kernel from running.
            let user = user && entry & USER != 0;
            let va = base | (index << shift);
            if level == 1 || ((level == 2 || level == 3) && entry & HUGE != 0) {
                if user {
                    continue;
                }
                let top_bit = 12u32
                    .wrapping_add(9u32.wrapping_mul(self.tables.levels))
                    .wrapping_sub(1);
                let start = sign_extend(va, top_bit);
                let end = start.wrapping_add(1u64 << shift);
                let full = self.out.len() >= self.max_ranges;
                match self.out.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ if full => return Err(TooMany::Ranges),
                    _ => self.out.push((start, end)),
                }
                continue;
            }
            if level > 1 {
                self.table(
                    entry & ADDR_MASK,
                    level.wrapping_sub(1),
                    0,
                    va,
                    shift.wrapping_sub(9),
                    user,
                )?;
            }
        }
        Ok(())
    }
}

/// `va` with bit `top` copied into every bit above it (a canonical address).
fn sign_extend(va: u64, top: u32) -> u64 {
    if top >= 63 || va >> top & 1 == 0 {
        return va;
    }
    va | !((1u64 << top.wrapping_add(1)).wrapping_sub(1))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::{Machine, MemoryLayout};

    fn ram() -> (tempfile::TempDir, GuestRam) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let r = GuestRam::open(&p, MemoryLayout::x86(64 << 20, Machine::Pc, None)).unwrap();
        (dir, r)
    }

    fn set(ram: &GuestRam, table: u64, index: u64, val: u64) {
        ram.write_u64(GuestAddress(table + index * 8), val).unwrap();
    }

    const VA: u64 = 0xffff_ffff_c012_3456; // a module address
    fn idx(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 511
    }

    #[test]
    fn walks_four_level_tables_with_4k_pages() {
        let (_d, ram) = ram();
        let (pml4, pdpt, pd, pt, page) = (0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000, 0x20_0000);
        set(&ram, pml4, idx(VA, 4), pdpt | 3);
        set(&ram, pdpt, idx(VA, 3), pd | 3);
        set(&ram, pd, idx(VA, 2), pt | 3);
        set(&ram, pt, idx(VA, 1), page | 3 | (1 << 63));
        let pt4 = PageTables::new(&ram, GuestAddress(pml4), false);
        assert_eq!(
            pt4.translate(VirtAddr(VA)),
            Some(GuestAddress(page + 0x456))
        );
        ram.write_u64(GuestAddress(page + 0x458), 0xabcd).unwrap();
        assert_eq!(pt4.read_u64(VirtAddr(VA + 2)), Some(0xabcd));
        assert_eq!(
            pt4.translate(VirtAddr(VA + 0x1000)),
            None,
            "next page is not mapped"
        );
    }

    #[test]
    fn huge_pages_and_five_levels() {
        let (_d, ram) = ram();
        let (pml5, pml4, pdpt, pd) = (0x30_0000, 0x30_1000, 0x30_2000, 0x30_3000);
        set(&ram, pml5, idx(VA, 5), pml4 | 3);
        set(&ram, pml4, idx(VA, 4), pdpt | 3);
        set(&ram, pdpt, idx(VA, 3), pd | 3);
        // 2 MiB page at 0x0200_0000.
        set(&ram, pd, idx(VA, 2), 0x0200_0000 | HUGE | 3);
        let t = PageTables::new(&ram, GuestAddress(pml5), true);
        assert_eq!(
            t.translate(VirtAddr(VA)),
            Some(GuestAddress(0x0200_0000 | (VA & 0x1f_ffff)))
        );
        // 1 GiB page for the direct map.
        let dm = 0xffff_8880_0000_0000u64 + 0x1234_5678;
        let pdpt2 = 0x31_0000;
        set(&ram, pml5, idx(dm, 5), pml4 | 3);
        set(&ram, pml4, idx(dm, 4), pdpt2 | 3);
        set(&ram, pdpt2, idx(dm, 3), HUGE | 3);
        assert_eq!(t.translate(VirtAddr(dm)), Some(GuestAddress(0x1234_5678)));
        // The same tables read as 4-level give something else or nothing.
        assert_ne!(
            PageTables::new(&ram, GuestAddress(pml5), false).translate(VirtAddr(VA)),
            t.translate(VirtAddr(VA))
        );
    }

    #[test]
    fn lists_supervisor_executable_ranges_of_the_kernel_half() {
        let (_d, ram) = ram();
        let (pml4, pdpt, pd, pt) = (0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000);
        let x = 3u64; // present, writable, executable, supervisor
                      // Linux marks upper levels user (_PAGE_TABLE): the leaf decides.
        set(&ram, pml4, idx(VA, 4), pdpt | x | USER);
        set(&ram, pdpt, idx(VA, 3), pd | x | USER);
        set(&ram, pd, idx(VA, 2), pt | x | USER);
        let i = idx(VA, 1);
        set(&ram, pt, i, 0x20_0000 | x);
        set(&ram, pt, i + 1, 0x20_1000 | x); // merges with the first
        set(&ram, pt, i + 2, 0x20_2000 | x | NO_EXECUTE);
        set(&ram, pt, i + 3, 0x20_3000 | x | USER);
        set(&ram, pt, i + 4, 0x20_4000 | x);
        // The next 2 MiB: one executable huge page.
        set(&ram, pd, idx(VA, 2) + 1, 0x40_0000 | x | HUGE);
        // A no-execute directory hides everything under it.
        let dm = 0xffff_8880_0000_0000u64;
        set(&ram, pml4, idx(dm, 4), 0x10_4000 | x | NO_EXECUTE);
        set(&ram, 0x10_4000, 0, HUGE | x);
        // The lower half is user space: not walked.
        set(&ram, pml4, 0, 0x10_4000 | x);
        let t = PageTables::new(&ram, GuestAddress(pml4), false);
        let page = VA & !0xfff;
        let huge = (VA & !0x1f_ffff) + 0x20_0000;
        assert_eq!(
            t.executable_ranges(100, 3),
            Ok(vec![
                (page, page + 0x2000),
                (page + 0x4000, page + 0x5000),
                (huge, huge + 0x20_0000)
            ])
        );
        assert_eq!(t.executable_ranges(3, 3), Err(TooMany::Tables));
        assert_eq!(t.executable_ranges(100, 2), Err(TooMany::Ranges));
        // Tables fanned out without end stop at the budget.
        for i in 8..512 {
            set(&ram, pd, i, pt | x);
        }
        assert_eq!(t.executable_ranges(100, 1 << 20), Err(TooMany::Tables));
        // One reused table of scattered pages under every directory entry
        // (the quadratic-walk attack): the range budget ends it first.
        assert_eq!(t.executable_ranges(1000, 1000), Err(TooMany::Ranges));
        assert_eq!(sign_extend(1 << 47, 47), 0xffff_8000_0000_0000);
        assert_eq!(sign_extend(1 << 56, 56), 0xff00_0000_0000_0000);
    }

    #[test]
    fn hostile_entries_do_not_panic() {
        let (_d, ram) = ram();
        // Points far outside RAM.
        set(&ram, 0x10_0000, idx(VA, 4), 0x000f_ffff_ffff_f000 | 3);
        let t = PageTables::new(&ram, GuestAddress(0x10_0000), false);
        assert_eq!(t.translate(VirtAddr(VA)), None);
        let mut b = [0u8; 16];
        assert!(t.read(VirtAddr(VA), &mut b).is_none());
    }
}
