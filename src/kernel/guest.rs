//! An opened guest: its RAM, the trusted build, and the kernel (or
//! kernels, with a decoy) found in it; opened once and passed down to
//! whatever reads it.
#![deny(clippy::arithmetic_side_effects)]

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::abi::le;
use crate::guest::addr::Slide;
use crate::guest::memory::GuestRam;
use crate::guest::paging::PageTables;
use crate::kernel::btf::{Btf, ModuleLayout};
use crate::kernel::locate::GuestKernel;
use crate::kernel::modules::Module;
use crate::kernel::symbols::{Symbolizer, SystemMap};
use crate::kernel::vmlinux::Vmlinux;

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
        v.btf = self.vmlinux.as_ref().and_then(Vmlinux::btf);
        v.module_layout = self.module_layout;
        v.build_modules = self.build_modules.as_ref();
        v
    }
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
    /// The build's BTF, where it has one: field offsets ([`Self::field`]).
    pub btf: Option<&'a Btf>,
    /// Field offsets looked up so far, by `struct.member.member`.
    fields: RefCell<HashMap<String, Option<u64>>>,
    /// Loaded modules, read on first use ([`Self::modules`]).
    pub(super) modules: OnceCell<Vec<Module>>,
}

impl<'a> KernelView<'a> {
    pub fn new(ram: &'a GuestRam, map: &'a SystemMap, kernel: &'a GuestKernel) -> Self {
        KernelView {
            ram,
            kernel,
            sym: Symbolizer::new(map, kernel.slide),
            module_layout: None,
            build_modules: None,
            btf: None,
            fields: RefCell::new(HashMap::new()),
            modules: OnceCell::new(),
        }
    }

    /// The trusted System.map.
    pub fn map(&self) -> &'a SystemMap {
        self.sym.map
    }

    /// The KASLR slide: runtime minus link-time addresses in the image.
    pub fn slide(&self) -> Slide {
        self.sym.slide
    }

    /// Runtime address of link-time `link` (moved by the slide).
    pub fn runtime(&self, link: u64) -> u64 {
        self.sym.runtime(link)
    }

    /// Link-time address of runtime `addr` (meaningful in the image).
    pub fn link(&self, addr: u64) -> u64 {
        self.sym.link(addr)
    }

    /// Runtime address of a symbol.
    pub fn sym(&self, name: &str) -> Option<u64> {
        self.sym.addr(name)
    }

    /// True if runtime `addr` lies in the kernel image.
    pub fn in_image(&self, addr: u64) -> bool {
        self.sym.in_image(addr)
    }

    /// Byte offset of member `path` (outer first) in struct `ty`, from the
    /// build's BTF (looked up once per view); None without BTF or without
    /// such a member. A walk names its fields through this instead of
    /// hard-coding offsets.
    pub fn field(&self, ty: &str, path: &[&str]) -> Option<u64> {
        let key = format!("{ty}.{}", path.join("."));
        if let Some(&o) = self.fields.borrow().get(&key) {
            return o;
        }
        let o = self.btf?.offset_of(ty, path);
        self.fields.borrow_mut().insert(key, o);
        o
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
