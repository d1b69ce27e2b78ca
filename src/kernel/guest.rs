//! An opened guest: its RAM, the trusted build, and the kernel (or
//! kernels, with a decoy) found in it; opened once and passed down to
//! whatever reads it.
#![deny(clippy::arithmetic_side_effects)]

use std::cell::OnceCell;
use std::path::PathBuf;

use crate::abi::le;
use crate::escape::escape_bytes;
use crate::guest::memory::GuestRam;
use crate::guest::paging::PageTables;
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
    pub vmlinux: Option<Vmlinux>,
    pub system_map: PathBuf,
}

impl Guest {
    /// The kernel, then any decoys.
    pub fn kernels(&self) -> impl Iterator<Item = &GuestKernel> {
        std::iter::once(&self.kernel).chain(&self.others)
    }

    /// Reading the memory of one of its kernels.
    pub fn view<'a>(&'a self, kernel: &'a GuestKernel) -> KernelView<'a> {
        KernelView::new(&self.ram, &self.map, kernel)
    }
}

/// The virtual memory of a guest kernel, read from the host: the image
/// linearly, the rest through the kernel's own page tables.
pub struct KernelView<'a> {
    pub ram: &'a GuestRam,
    pub kernel: &'a GuestKernel,
    pub sym: Symbolizer<'a>,
    /// Loaded modules (address of `struct module`, escaped name), read on
    /// first use.
    modules: OnceCell<Vec<(u64, String)>>,
}

impl<'a> KernelView<'a> {
    pub fn new(ram: &'a GuestRam, map: &'a SystemMap, kernel: &'a GuestKernel) -> Self {
        KernelView {
            ram,
            kernel,
            sym: Symbolizer::new(map, kernel.slide),
            modules: OnceCell::new(),
        }
    }

    fn page_tables(&self) -> PageTables<'_> {
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

    /// The guest's module list: `modules` heads a list of `struct module`,
    /// which on 6.1 starts `{ enum module_state state; struct list_head
    /// list; char name[56]; ... }` whatever the config. Names are escaped:
    /// they come from guest memory.
    pub fn modules(&self) -> &[(u64, String)] {
        self.modules.get_or_init(|| {
            let mut out = Vec::new();
            let Some(head) = self.sym.addr("modules") else {
                return out;
            };
            let mut p = self.read_word(head).unwrap_or(head);
            while p != head && p != 0 && out.len() < MAX_MODULES {
                let mut name = [0u8; 56];
                let (Some(name_at), Some(module)) = (p.checked_add(16), p.checked_sub(8)) else {
                    break;
                };
                if self.read(name_at, &mut name).is_none() {
                    break;
                }
                let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                out.push((module, escape_bytes(&name[..n])));
                p = match self.read_word(p) {
                    Some(next) => next,
                    None => break,
                };
            }
            out
        })
    }

    /// The module whose `struct module` (in its own data, after its code)
    /// is the nearest one above `addr`: an attribution by layout, not proof.
    pub fn module_of(&self, addr: u64) -> Option<&str> {
        self.modules()
            .iter()
            .filter(|(m, _)| m.checked_sub(addr).is_some_and(|d| d < 8 << 20))
            .min_by_key(|(m, _)| *m)
            .map(|(_, n)| n.as_str())
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
