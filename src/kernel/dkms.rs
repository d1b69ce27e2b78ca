//! The tracer of the `xftrace-dkms` module (`guest-dkms/`), on a stock
//! kernel: the same control block, heads and rings as xftrace's kernel,
//! found where a module keeps them (docs/abi.md §1.1).
//!
//! The control block is a page-aligned variable of the module named
//! [`MODULE_NAME`]: the host looks for it in that module's memory, one read
//! per page, and takes it only where the kernel's own page tables map the
//! virtual address it names to the very page it was read from. The ring
//! heads are one physically contiguous allocation; every page of it must
//! translate to the next physical page. The probe is the module's symbol
//! `xftrace_probe`, read from the module's own symbol table, which must lie
//! in the module's code. Everything here is read from guest memory that
//! the guest's kernel can rewrite: a second module of that name, or a
//! second block in it, is a decoy and refused.
#![deny(clippy::arithmetic_side_effects)]

use crate::abi::{self, ControlHeader};
use crate::guest::addr::VirtAddr;
use crate::guest::memory::GuestAddress;
use crate::kernel::guest::KernelView;
use crate::kernel::locate::{Control, TracerModule};

/// The module's name (`guest-dkms/Makefile`).
pub const MODULE_NAME: &str = "xftrace";
/// The most module memory searched for the block: the module is ~100 KiB.
const MAX_MODULE_BYTES: u64 = 16 << 20;
/// The most symbols read from the module's symbol table.
const MAX_SYMBOLS: u64 = 65_536;
/// `sizeof(Elf64_Sym)`.
const ELF64_SYM: u64 = 24;
const PAGE: u64 = 4096;

/// The module's tracer: None when no module of that name is loaded; an
/// error (one line, for the operator) when one is, but its tracer is not
/// what the ABI says.
pub fn find(v: &KernelView) -> Result<Option<Control>, String> {
    let mods: Vec<_> = v
        .modules()
        .iter()
        .filter(|m| m.name == MODULE_NAME)
        .collect();
    let m = match mods.as_slice() {
        [] => return Ok(None),
        [m] => *m,
        _ => {
            return Err(format!(
                "{} modules are named {MODULE_NAME}: a decoy",
                mods.len()
            ))
        }
    };
    let (start, end) = m.memory.ok_or(if v.module_layout.is_some() {
        "its memory's bounds cannot be read, or end past the address space"
    } else {
        "its memory is not known (the build has no BTF for struct module)"
    })?;
    let len = end
        .checked_sub(start)
        .ok_or("its memory ends before it starts")?;
    if len > MAX_MODULE_BYTES {
        return Err(format!("its memory claims {len} bytes"));
    }
    let pt = v.page_tables();
    let mut found = Vec::new();
    let mut va = start.div_ceil(PAGE).saturating_mul(PAGE);
    while va.checked_add(abi::CTL_SIZE).is_some_and(|e| e <= end) {
        if let Some(w) = pt.walk(VirtAddr(va)) {
            if v.ram.read_u64(w.pa).is_ok_and(|x| x == abi::MAGIC) {
                found.push((va, w.pa));
            }
        }
        va = match va.checked_add(PAGE) {
            Some(n) => n,
            None => break,
        };
    }
    let (va, pa) = match found.as_slice() {
        [] => return Err("its memory holds no control block (it is loading, or unloading)".into()),
        [one] => *one,
        _ => {
            return Err(format!(
                "its memory holds {} control blocks: a decoy",
                found.len()
            ))
        }
    };
    let mut head = [0u8; 64];
    v.ram.read_into(pa, &mut head).map_err(|e| e.to_string())?;
    let header = ControlHeader::parse(&head)?;
    if header.ctl_va != va {
        return Err(format!(
            "its control block at {va:#x} says it is at {:#x}",
            header.ctl_va
        ));
    }
    if header.text_va != v.kernel.text_va {
        return Err(format!(
            "its control block says the kernel is at {:#x}, it is at {:#x}",
            header.text_va, v.kernel.text_va
        ));
    }
    let heads = contiguous(v, header.heads_va, header.heads_len())
        .ok_or("its ring heads are not one physically contiguous range of RAM")?;
    let probe = probe(v, m.addr, m.text)
        .ok_or("its symbol table has no xftrace_probe in its code (not the xftrace-dkms module)")?;
    Ok(Some(Control {
        ctl: pa,
        header,
        heads,
        module: Some(TracerModule {
            addr: m.addr,
            probe,
        }),
    }))
}

/// The guest physical address of `[va, va + len)` when the kernel's page
/// tables map it page by page onto consecutive physical pages of RAM.
fn contiguous(v: &KernelView, va: u64, len: u64) -> Option<GuestAddress> {
    if !va.is_multiple_of(PAGE) || len == 0 || len > u64::from(abi::MAX_RINGS) * 64 {
        return None;
    }
    let pt = v.page_tables();
    let base = pt.walk(VirtAddr(va))?.pa;
    let mut off = PAGE;
    while off < len {
        let pa = pt.walk(VirtAddr(va.checked_add(off)?))?.pa;
        if pa != base.checked_add(off)? {
            return None;
        }
        off = off.checked_add(PAGE)?;
    }
    v.ram.layout().locate(base, len)?;
    Some(base)
}

/// `[start, end)` of the module's `xftrace_probe`, from its own symbol
/// table (`module->kallsyms`), inside its code.
fn probe(v: &KernelView, module: u64, text: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let (ts, te) = text?;
    let kallsyms = v.read_word(module.checked_add(v.field("module", &["kallsyms"])?)?)?;
    let symtab = v.read_word(kallsyms.checked_add(v.field("mod_kallsyms", &["symtab"])?)?)?;
    let num = v.read_u32(kallsyms.checked_add(v.field("mod_kallsyms", &["num_symtab"])?)?)?;
    let strtab = v.read_word(kallsyms.checked_add(v.field("mod_kallsyms", &["strtab"])?)?)?;
    let want = crate::abi::funcs::PROBE;
    for i in 0..u64::from(num).min(MAX_SYMBOLS) {
        let mut s = [0u8; ELF64_SYM as usize];
        v.read(symtab.checked_add(i.checked_mul(ELF64_SYM)?)?, &mut s)?;
        let name = u64::from(u32::from_le_bytes(s[0..4].try_into().ok()?));
        let value = u64::from_le_bytes(s[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(s[16..24].try_into().ok()?);
        if !(ts..te).contains(&value) {
            continue;
        }
        // The name and its NUL, no more: a string table may end right
        // after it.
        let mut b = vec![0u8; want.len().checked_add(1)?];
        if v.read(strtab.checked_add(name)?, &mut b).is_none() {
            continue;
        }
        if b.starts_with(want.as_bytes()) && b.get(want.len()) == Some(&0) {
            // A function of a few instructions; no more than 64 bytes is
            // taken from a guest-written size.
            let end = value.checked_add(size.clamp(1, 64))?.min(te);
            return Some((value, end));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::guest::memory::GuestRam;
    use crate::kernel::btf::{Btf, ModuleLayout};
    use crate::kernel::locate::{locate, GuestKernel};
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{
        btf, pa_of, put_link, synthetic_guest, UNIT_MAP, UNIT_SLIDE, UNIT_TEXT_PA,
    };

    /// Module memory: 4 KiB pages from here, page `i` at guest physical
    /// `MOD_PA + i * PAGE`, through one page directory and one page table.
    const MOD_VA: u64 = 0xffff_ffff_c000_0000;
    const MOD_PA: u64 = 0x0210_0000;
    const PD_PA: u64 = 0x0200_0000;
    const PT_PA: u64 = 0x0200_1000;
    /// The module's core: a page of code, a page of symbols, the page of
    /// the control block and a page of other data.
    const TEXT_SIZE: u64 = PAGE;
    const CORE_SIZE: u64 = 4 * PAGE;
    const SYMTAB: u64 = MOD_VA + PAGE;
    const STRTAB: u64 = MOD_VA + PAGE + 0x800;
    const CTL: u64 = MOD_VA + 2 * PAGE;
    const PROBE_VA: u64 = MOD_VA + 0x100;
    /// The ring heads of 128 rings: two pages, outside the core.
    const HEADS_VA: u64 = MOD_VA + 16 * PAGE;
    const NR_RINGS: u32 = 128;
    /// `modules` and the `struct module`s (link-time addresses in the
    /// image, which it maps linearly).
    const MODULES: u64 = 0xffff_ffff_8210_0000;
    const MODULE: u64 = 0xffff_ffff_8210_1000;

    /// [`synthetic_guest`] with the xftrace-dkms module loaded: its
    /// control block, ring heads and symbols as the ABI has them.
    struct Dkms {
        _dir: tempfile::TempDir,
        ram: GuestRam,
        map: SystemMap,
        kernel: GuestKernel,
        layouts: Btf,
    }

    impl Dkms {
        fn new() -> Dkms {
            let dir = tempfile::tempdir().unwrap();
            let (ram, _) = synthetic_guest(dir.path());
            let map = SystemMap::parse(&format!("{UNIT_MAP}ffffffff82100000 D modules\n")).unwrap();
            let kernel = locate(&ram, &map, None).unwrap();
            let layouts = Btf::parse(&btf(&[
                ("list_head", 16, &[("next", 0, ""), ("prev", 8, "")]),
                (
                    "module_layout",
                    16,
                    &[("base", 0, ""), ("size", 8, ""), ("text_size", 12, "")],
                ),
                (
                    "mod_kallsyms",
                    24,
                    &[("symtab", 0, ""), ("num_symtab", 8, ""), ("strtab", 16, "")],
                ),
                (
                    "module",
                    128,
                    &[
                        ("list", 8, "list_head"),
                        ("name", 24, ""),
                        ("core_layout", 80, "module_layout"),
                        ("kallsyms", 112, ""),
                    ],
                ),
            ]))
            .unwrap();
            let g = Dkms {
                _dir: dir,
                ram,
                map,
                kernel,
                layouts,
            };
            // Module memory hangs off the image's level-3 table.
            let l3 = pa_of(&g.map, UNIT_TEXT_PA, "level3_kernel_pgt");
            g.ram
                .write_u64(GuestAddress(l3 + 8 * ((MOD_VA >> 30) & 511)), PD_PA | 0x63)
                .unwrap();
            g.ram
                .write_u64(
                    GuestAddress(PD_PA + 8 * ((MOD_VA >> 21) & 511)),
                    PT_PA | 0x63,
                )
                .unwrap();
            for i in (0..CORE_SIZE / PAGE).chain([16, 17]) {
                g.map_page(MOD_VA + i * PAGE, MOD_PA + i * PAGE);
            }
            g.block(CTL, CTL);
            // Symbols: none, the module's init, its probe.
            g.put_bytes(STRTAB, b"\0xftrace_init\0xftrace_probe\0");
            g.symbol(1, 1, MOD_VA + 0x10, 0x40);
            g.symbol(2, 14, PROBE_VA, 0x20);
            g.modules(&["xftrace"]);
            g
        }

        /// Map the 4 KiB page at `va` (module memory) to `pa`.
        fn map_page(&self, va: u64, pa: u64) {
            assert_eq!(va >> 21, MOD_VA >> 21, "one page table");
            self.ram
                .write_u64(GuestAddress(PT_PA + 8 * ((va >> 12) & 511)), pa | 0x63)
                .unwrap();
        }

        /// Write `val` at module memory `va` (mapped as [`Self::new`] does).
        fn put(&self, va: u64, val: u64) {
            self.ram
                .write_u64(GuestAddress(MOD_PA + (va - MOD_VA)), val)
                .unwrap();
        }

        fn put_bytes(&self, va: u64, b: &[u8]) {
            for (i, c) in b.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                self.put(va + 8 * i as u64, u64::from_le_bytes(w));
            }
        }

        /// A control block at `va` that says it is at `ctl_va`.
        fn block(&self, va: u64, ctl_va: u64) {
            let w = |o: u64, v: u64| self.put(va + o, v);
            let rings = u64::from(NR_RINGS);
            w(abi::off::MAGIC, abi::MAGIC);
            w(
                abi::off::ABI_VERSION,
                u64::from(abi::ABI_VERSION) | (4096 << 32),
            );
            w(abi::off::CTL_VA, ctl_va);
            w(abi::off::HEADS_VA, HEADS_VA);
            w(abi::off::TEXT_VA, self.kernel.text_va);
            w(abi::off::NR_RINGS, rings | (2048 << 32));
            w(abi::off::SLOT_SIZE, 64 | (rings << 32));
            w(abi::off::FUNCS_SIZE, 1024 | (16 << 32));
        }

        /// Elf64_Sym `i` of the symbol table: name at `name` in the
        /// string table, `value`, `size`.
        fn symbol(&self, i: u64, name: u64, value: u64, size: u64) {
            let at = SYMTAB + i * ELF64_SYM;
            self.put(at, name);
            self.put(at + 8, value);
            self.put(at + 16, size);
        }

        /// The module list: one `struct module` of each name, all with
        /// the module's memory and symbols.
        fn modules(&self, names: &[&str]) {
            let put = |link: u64, val: u64| put_link(&self.ram, link, val);
            let va = |link: u64| link + UNIT_SLIDE;
            let mut prev = MODULES;
            for (i, name) in names.iter().enumerate() {
                let m = MODULE + 0x1000 * i as u64;
                let mut n = [0u8; 16];
                n[..name.len()].copy_from_slice(name.as_bytes());
                put(m + 24, u64::from_le_bytes(n[..8].try_into().unwrap()));
                put(m + 32, u64::from_le_bytes(n[8..].try_into().unwrap()));
                put(m + 80, MOD_VA);
                put(m + 88, CORE_SIZE | (TEXT_SIZE << 32));
                put(m + 112, va(m + 0x800));
                put(m + 0x800, SYMTAB);
                put(m + 0x808, 3);
                put(m + 0x810, STRTAB);
                put(if prev == MODULES { prev } else { prev + 8 }, va(m + 8));
                prev = m;
            }
            put(if prev == MODULES { prev } else { prev + 8 }, va(MODULES));
        }

        /// [`find`] in a view of the guest as it is now.
        fn find(&self) -> Result<Option<Control>, String> {
            let mut v = KernelView::new(&self.ram, &self.map, &self.kernel);
            v.btf = Some(&self.layouts);
            v.module_layout = ModuleLayout::from_btf(&self.layouts);
            assert!(v.module_layout.is_some());
            find(&v)
        }
    }

    #[test]
    fn finds_the_block_its_heads_and_its_probe() {
        let g = Dkms::new();
        assert_eq!(
            g.find(),
            Ok(Some(Control {
                ctl: GuestAddress(MOD_PA + 2 * PAGE),
                header: ControlHeader {
                    ctl_va: CTL,
                    heads_va: HEADS_VA,
                    text_va: g.kernel.text_va,
                    nr_rings: NR_RINGS,
                    ring_slots: 2048,
                    nr_cpus: NR_RINGS,
                },
                heads: GuestAddress(MOD_PA + 16 * PAGE),
                module: Some(TracerModule {
                    addr: MODULE + UNIT_SLIDE,
                    probe: (PROBE_VA, PROBE_VA + 0x20),
                }),
            }))
        );
        // Among other modules, and wherever the kernel maps its page.
        g.modules(&["ext4", "xftrace", "xfs"]);
        g.map_page(CTL, MOD_PA + 40 * PAGE);
        for o in (0..64).step_by(8) {
            let w = g.ram.read_u64(GuestAddress(MOD_PA + 2 * PAGE + o)).unwrap();
            g.ram
                .write_u64(GuestAddress(MOD_PA + 40 * PAGE + o), w)
                .unwrap();
        }
        let c = g.find().unwrap().unwrap();
        assert_eq!(c.ctl, GuestAddress(MOD_PA + 40 * PAGE));
        assert_eq!(c.module.unwrap().addr, MODULE + 0x1000 + UNIT_SLIDE);
    }

    #[test]
    fn no_module_of_that_name_is_no_tracer() {
        let g = Dkms::new();
        // The same memory, block and symbols, under other names.
        g.modules(&["ext4", "xftrace2", "xfs"]);
        assert_eq!(g.find(), Ok(None));
        g.modules(&[]);
        assert_eq!(g.find(), Ok(None));
    }

    #[test]
    fn two_modules_of_that_name_are_a_decoy() {
        let g = Dkms::new();
        g.modules(&["xftrace", "ext4", "xftrace"]);
        assert_eq!(
            g.find(),
            Err("2 modules are named xftrace: a decoy".to_string())
        );
    }

    #[test]
    fn a_block_that_says_it_is_elsewhere_is_a_copy() {
        let g = Dkms::new();
        // A copy of the block of a module whose block is one page further.
        g.block(CTL, CTL + PAGE);
        assert_eq!(
            g.find(),
            Err(format!(
                "its control block at {CTL:#x} says it is at {:#x}",
                CTL + PAGE
            ))
        );
    }

    #[test]
    fn heads_on_pages_apart_are_refused() {
        let g = Dkms::new();
        // The second page of the heads, elsewhere in RAM.
        g.map_page(HEADS_VA + PAGE, MOD_PA + 32 * PAGE);
        assert_eq!(
            g.find(),
            Err("its ring heads are not one physically contiguous range of RAM".to_string())
        );
        // Not mapped at all.
        g.ram
            .write_u64(GuestAddress(PT_PA + 8 * ((HEADS_VA + PAGE) >> 12 & 511)), 0)
            .unwrap();
        assert_eq!(
            g.find(),
            Err("its ring heads are not one physically contiguous range of RAM".to_string())
        );
    }

    #[test]
    fn a_probe_outside_the_code_is_no_probe() {
        const NO_PROBE: &str =
            "its symbol table has no xftrace_probe in its code (not the xftrace-dkms module)";
        let g = Dkms::new();
        // In the module's data, right after its code.
        g.symbol(2, 14, MOD_VA + TEXT_SIZE, 0x20);
        assert_eq!(g.find(), Err(NO_PROBE.to_string()));
        // Before its code.
        g.symbol(2, 14, MOD_VA - 0x20, 0x20);
        assert_eq!(g.find(), Err(NO_PROBE.to_string()));
        // In its code, but another name that starts the same.
        g.symbol(2, 14, PROBE_VA, 0x20);
        g.put_bytes(STRTAB, b"\0xftrace_init\0xftrace_probe2\0");
        assert_eq!(g.find(), Err(NO_PROBE.to_string()));
        // The table's count leaves it out.
        g.put_bytes(STRTAB, b"\0xftrace_init\0xftrace_probe\0\0");
        assert!(g.find().is_ok_and(|c| c.is_some()));
        put_link(&g.ram, MODULE + 0x808, 2);
        assert_eq!(g.find(), Err(NO_PROBE.to_string()));
    }

    #[test]
    fn two_blocks_in_the_module_are_a_decoy() {
        let g = Dkms::new();
        // The magic at the start of the page after the block's.
        g.put(CTL + PAGE, abi::MAGIC);
        assert_eq!(
            g.find(),
            Err("its memory holds 2 control blocks: a decoy".to_string())
        );
    }

    #[test]
    fn a_module_bigger_than_16_mib_is_refused_unread() {
        let g = Dkms::new();
        let size = |s: u64| put_link(&g.ram, MODULE + 88, s | (TEXT_SIZE << 32));
        // 16 MiB is searched (the pages past the first four map nothing).
        size(16 << 20);
        assert!(g.find().is_ok_and(|c| c.is_some()));
        size((16 << 20) + 1);
        assert_eq!(
            g.find(),
            Err("its memory claims 16777217 bytes".to_string())
        );
        // The most that ends in the address space, from where it is: 2^18
        // pages, refused before any is read.
        size((1 << 30) - 1);
        let t = std::time::Instant::now();
        assert_eq!(
            g.find(),
            Err("its memory claims 1073741823 bytes".to_string())
        );
        assert!(t.elapsed() < std::time::Duration::from_millis(500));
        // More: it would end past the address space.
        size(u64::from(u32::MAX));
        assert_eq!(
            g.find(),
            Err("its memory's bounds cannot be read, or end past the address space".to_string())
        );
    }
}
