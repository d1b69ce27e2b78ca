//! An opened guest: its RAM, the trusted build, and the kernel (or
//! kernels, with a decoy) found in it; opened once and passed down to
//! whatever reads it.
#![deny(clippy::arithmetic_side_effects)]

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::abi::le;
use crate::escape::escape_bytes;
use crate::guest::memory::GuestRam;
use crate::guest::paging::PageTables;
use crate::kernel::btf::ModuleLayout;
use crate::kernel::locate::GuestKernel;
use crate::kernel::symbols::{Symbolizer, SystemMap};
use crate::kernel::vmlinux::Vmlinux;

/// Modules read from the guest's list, at most.
const MAX_MODULES: usize = 4096;

/// A guest opened for tracing or checking.
pub struct Guest {
    pub ram: GuestRam,
    pub map: SystemMap,
    pub kernel: GuestKernel,
    /// Every other control block that passed; any is a decoy.
    pub others: Vec<GuestKernel>,
    /// Control blocks of an earlier boot, set aside ([`crate::kernel::stale`]).
    pub stale: Vec<GuestKernel>,
    pub vmlinux: Option<Vmlinux>,
    pub system_map: PathBuf,
    /// Where `struct module` keeps its list, name and code, from the
    /// build's BTF (None: the build has none).
    pub module_layout: Option<ModuleLayout>,
    /// The modules the build ships, by name (None: not known).
    pub build_modules: Option<BTreeSet<String>>,
}

impl Guest {
    /// The kernel, then any decoys.
    pub fn kernels(&self) -> impl Iterator<Item = &GuestKernel> {
        std::iter::once(&self.kernel).chain(&self.others)
    }

    /// Reading the memory of one of its kernels.
    pub fn view<'a>(&'a self, kernel: &'a GuestKernel) -> KernelView<'a> {
        let mut v = KernelView::new(&self.ram, &self.map, kernel);
        v.module_layout = self.module_layout;
        v.build_modules = self.build_modules.as_ref();
        v
    }
}

/// A loaded module as the guest's module list has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Address of its `struct module`.
    pub addr: u64,
    /// Its name, escaped (it comes from guest memory).
    pub name: String,
    /// `[start, end)` of its core code, where the layout is known.
    pub text: Option<(u64, u64)>,
}

/// The virtual memory of a guest kernel, read from the host: the image
/// linearly, the rest through the kernel's own page tables.
pub struct KernelView<'a> {
    pub ram: &'a GuestRam,
    pub kernel: &'a GuestKernel,
    pub sym: Symbolizer<'a>,
    /// See [`Guest::module_layout`].
    pub module_layout: Option<ModuleLayout>,
    /// See [`Guest::build_modules`].
    pub build_modules: Option<&'a BTreeSet<String>>,
    /// Loaded modules, read on first use.
    modules: OnceCell<Vec<Module>>,
}

impl<'a> KernelView<'a> {
    pub fn new(ram: &'a GuestRam, map: &'a SystemMap, kernel: &'a GuestKernel) -> Self {
        KernelView {
            ram,
            kernel,
            sym: Symbolizer::new(map, kernel.slide),
            module_layout: None,
            build_modules: None,
            modules: OnceCell::new(),
        }
    }

    /// The kernel's own page tables (`init_top_pgt`).
    pub fn page_tables(&self) -> PageTables<'_> {
        self.kernel.page_tables(self.ram)
    }

    /// Read guest kernel virtual memory at `va`.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Option<()> {
        let last = va.wrapping_add((buf.len() as u64).saturating_sub(1));
        if self.sym.in_image(va) && self.sym.in_image(last) {
            let pa = self.kernel.kva_to_gpa(va)?;
            return self.ram.read_into(pa, buf).ok();
        }
        self.page_tables().read(va, buf)
    }

    /// `n` words at `va`.
    pub fn read_words(&self, va: u64, n: usize) -> Option<Vec<u64>> {
        let mut b = vec![0u8; n.checked_mul(8)?];
        self.read(va, &mut b)?;
        Some(le::words(&b).collect())
    }

    /// The word at `va`.
    pub fn read_word(&self, va: u64) -> Option<u64> {
        self.read_words(va, 1).map(|w| w[0])
    }

    /// The 32-bit value at `va`.
    pub fn read_u32(&self, va: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Some(u32::from_le_bytes(b))
    }

    /// The nodes of the `struct list_head` list at `head` (the addresses of
    /// the `list_head`s in its entries), at most `max`; ends early where
    /// the list cannot be read.
    pub fn list_nodes(&self, head: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut p = self.read_word(head).unwrap_or(head);
        while p != head && p != 0 && out.len() < max {
            out.push(p);
            p = match self.read_word(p) {
                Some(n) => n,
                None => break,
            };
        }
        out
    }

    /// The pointers stored in the XArray whose `xa_head` is the word at
    /// `head` (an IDR's `idr_rt`), at most `max`; `slots` is the offset of
    /// `struct xa_node`'s 64 slots (BTF). Value and internal entries are
    /// skipped. A node is read at most once and the tree is at most 11
    /// levels deep (64-bit indices, 6 bits a level), so a hostile tree
    /// ends.
    pub fn xarray_entries(&self, head: u64, slots: u64, max: usize) -> Vec<u64> {
        const CHUNK: usize = 64;
        const MAX_LEVELS: usize = 11;
        let is_node = |e: u64| e & 3 == 2 && e > 4096;
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut level = vec![self.read_word(head).unwrap_or(0)];
        for _ in 0..=MAX_LEVELS {
            let mut next = Vec::new();
            for e in level {
                if is_node(e) {
                    let node = e & !3;
                    if seen.len() < max && seen.insert(node) {
                        if let Some(w) = node
                            .checked_add(slots)
                            .and_then(|a| self.read_words(a, CHUNK))
                        {
                            next.extend(w.into_iter().filter(|&x| x != 0));
                        }
                    }
                } else if e != 0 && e & 3 == 0 && out.len() < max {
                    out.push(e);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        out
    }

    /// `[start, end)` of the core code of the `struct module` at `module`,
    /// where the layout is known.
    pub fn module_text(&self, module: u64) -> Option<(u64, u64)> {
        let l = self.module_layout?;
        let base = self.read_word(module.checked_add(l.text_base)?)?;
        let size = self.read_u32(module.checked_add(l.text_size)?)?;
        Some((base, base.checked_add(u64::from(size))?))
    }

    /// The guest's module list: `modules` heads a list of `struct module`.
    /// Offsets come from the build's BTF; without it, 6.1's start of the
    /// struct (`{ enum module_state state; struct list_head list; char
    /// name[56]; ... }` whatever the config) and no code ranges.
    pub fn modules(&self) -> &[Module] {
        self.modules.get_or_init(|| self.read_modules())
    }

    /// The module list as it is now (not cached).
    pub fn read_modules(&self) -> Vec<Module> {
        {
            let l = self.module_layout.unwrap_or(ModuleLayout {
                list: 8,
                name: 24,
                text_base: 0,
                text_size: 0,
            });
            let mut out = Vec::new();
            let Some(head) = self.sym.addr("modules") else {
                return out;
            };
            let mut p = self.read_word(head).unwrap_or(head);
            while p != head && p != 0 && out.len() < MAX_MODULES {
                let Some(module) = p.checked_sub(l.list) else {
                    break;
                };
                let mut name = [0u8; 56];
                if module
                    .checked_add(l.name)
                    .and_then(|a| self.read(a, &mut name))
                    .is_none()
                {
                    break;
                }
                let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                let text = self.module_text(module);
                out.push(Module {
                    addr: module,
                    name: escape_bytes(&name[..n]),
                    text,
                });
                p = match self.read_word(p) {
                    Some(next) => next,
                    None => break,
                };
            }
            out
        }
    }

    /// The module whose code holds `addr`: exactly, where the layout is
    /// known; else the one whose `struct module` (in its own data, after
    /// its code) is the nearest above `addr`, an attribution by layout,
    /// not proof.
    pub fn module_of(&self, addr: u64) -> Option<&str> {
        let mods = self.modules();
        if self.module_layout.is_some() {
            return mods
                .iter()
                .find(|m| m.text.is_some_and(|(s, e)| s <= addr && addr < e))
                .map(|m| m.name.as_str());
        }
        mods.iter()
            .filter(|m| m.addr.checked_sub(addr).is_some_and(|d| d < 8 << 20))
            .min_by_key(|m| m.addr)
            .map(|m| m.name.as_str())
    }

    /// Is `addr` code of the kernel's build: in its image, or in the code
    /// of a loaded module the build ships? (A module is matched by name and
    /// code range; that its code is the build's is not checked here.)
    pub fn is_build_code(&self, addr: u64) -> bool {
        if self.sym.in_image(addr) {
            return true;
        }
        let Some(build) = self.build_modules else {
            return false;
        };
        self.module_layout.is_some() && self.module_of(addr).is_some_and(|m| build.contains(m))
    }

    /// `symbol+0xoff` for a runtime address, or the bare address (with the
    /// module that probably owns it).
    pub fn name(&self, addr: u64) -> String {
        match self.sym.with_offset(addr) {
            Some(s) => s,
            None => match self.module_of(addr) {
                Some(m) => format!("{addr:#x} (outside the kernel image, in module {m})"),
                None => format!("{addr:#x} (outside the kernel image)"),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;
    use crate::kernel::locate::locate;
    use crate::kernel::locate::tests::{synthetic_guest, SLIDE, TEXT_PA};

    #[test]
    fn an_xarray_is_walked_once_whatever_its_nodes_say() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        // Link-time 0xffffffff82900000 on: inside the image, read linearly.
        let va = |off: u64| 0xffff_ffff_8290_0000 + SLIDE + off;
        let pa = |off: u64| GuestAddress(TEXT_PA + 0x190_0000 + off);
        let slots = 40;
        let (head, n1, n2) = (0, 0x1000, 0x2000);
        ram.write_u64(pa(head), va(n1) | 2).unwrap();
        let slot = |node: u64, i: u64, e: u64| ram.write_u64(pa(node + slots + 8 * i), e).unwrap();
        slot(n1, 0, 0xffff_8880_0000_1000); // a pointer
        slot(n1, 1, va(n2) | 2); // a node
        slot(n1, 2, (7 << 1) | 1); // a value entry
        slot(n1, 3, va(n1) | 2); // a cycle back to itself
        slot(n1, 4, 0x102); // a retry entry (internal, not a node)
        slot(n2, 63, 0xffff_8880_0000_2000);
        let mut e = v.xarray_entries(va(head), slots, 100);
        e.sort();
        assert_eq!(e, vec![0xffff_8880_0000_1000, 0xffff_8880_0000_2000]);
        assert_eq!(v.xarray_entries(va(head), slots, 1).len(), 1);
        // A head that points nowhere readable gives nothing.
        ram.write_u64(pa(head), 0xdead_0000_0000_0002).unwrap();
        assert!(v.xarray_entries(va(head), slots, 100).is_empty());
    }
}
