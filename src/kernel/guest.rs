//! An opened guest: its RAM, the trusted build, and the kernel (or
//! kernels, with a decoy) found in it; opened once and passed down to
//! whatever reads it.
#![deny(clippy::arithmetic_side_effects)]

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::abi::le;
use crate::base::error::{ReadError, ReadFailure};
use crate::base::escape::escape_bytes;
use crate::guest::addr::{Slide, VirtAddr};
use crate::guest::memory::GuestRam;
use crate::guest::paging::PageTables;
use crate::kernel::btf::{Btf, ModuleLayout};
use crate::kernel::locate::GuestKernel;
use crate::kernel::modcode::{IdentityCache, ModuleFiles};
use crate::kernel::modules::Module;
use crate::kernel::symbols::{Symbolizer, SystemMap};
use crate::kernel::vmlinux::Vmlinux;

/// Plain data read from guest memory: a fixed size, every bit pattern a
/// valid value, little-endian.
pub trait Plain: Copy {
    const SIZE: usize;
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl Plain for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("exactly SIZE bytes"))
            }
        }
    )*};
}
plain!(u8, u16, u32, u64, i32, i64);

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
    /// The build's `.ko` files, to tell its modules by content (None: by
    /// name only).
    pub module_files: Option<ModuleFiles>,
    /// The most vCPUs the guest may have, from its manager (None: not
    /// known, e.g. a bare `--mem-file`).
    pub max_vcpus: Option<u32>,
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
        v.module_files = self.module_files.as_ref();
        v.max_vcpus = self.max_vcpus;
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
    /// See [`Guest::module_files`].
    pub module_files: Option<&'a ModuleFiles>,
    /// Modules told by content so far ([`Self::module_identity`]).
    pub(super) identities: IdentityCache,
    /// See [`Guest::max_vcpus`].
    pub max_vcpus: Option<u32>,
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
            module_files: None,
            identities: IdentityCache::default(),
            max_vcpus: None,
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

    /// Read guest kernel virtual memory at runtime `va` into `buf`: the
    /// image linearly (where the kernel maps it), the rest through the
    /// kernel's page tables. The one read every other builds on.
    pub fn read_bytes(&self, va: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let Some(last) = va.checked_add(len.saturating_sub(1)) else {
            return Err(ReadError::virtual_(va, len, ReadFailure::Overflow));
        };
        if self.sym.in_image(va) && self.sym.in_image(last) {
            let pa = self.kernel.kva_to_gpa(va).ok_or(ReadError::virtual_(
                va,
                len,
                ReadFailure::NotMapped,
            ))?;
            return self
                .ram
                .read_into(pa, buf)
                .map_err(|_| ReadError::virtual_(va, len, ReadFailure::MappedOutsideRam));
        }
        let pt = self.page_tables();
        if pt.read(VirtAddr(va), buf).is_some() {
            return Ok(());
        }
        // Why: a page of the range the tables do not map, else a mapping
        // to something that is not RAM.
        // (The first and the last page: two walks, not one per page.)
        let unmapped = [va, last]
            .iter()
            .any(|&a| pt.translate(VirtAddr(a)).is_none());
        Err(ReadError::virtual_(
            va,
            len,
            if unmapped {
                ReadFailure::NotMapped
            } else {
                ReadFailure::MappedOutsideRam
            },
        ))
    }

    /// A value of plain data at runtime `va` (little-endian).
    pub fn read_as<T: Plain>(&self, va: u64) -> Result<T, ReadError> {
        let mut b = [0u8; 16];
        let b = &mut b[..T::SIZE];
        self.read_bytes(va, b)?;
        Ok(T::from_le(b))
    }

    /// `n` pointers (words) at runtime `va`.
    pub fn read_ptrs(&self, va: u64, n: usize) -> Result<Vec<u64>, ReadError> {
        let Some(len) = n.checked_mul(8) else {
            return Err(ReadError::virtual_(va, u64::MAX, ReadFailure::Overflow));
        };
        let mut b = vec![0u8; len];
        self.read_bytes(va, &mut b)?;
        Ok(le::words(&b).collect())
    }

    /// The C string at runtime `va`, up to its NUL or `max` bytes,
    /// escaped (it comes from guest memory). A string that ends near the
    /// end of a mapping is read in smaller pieces, down to 16 bytes.
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<String, ReadError> {
        let mut b = vec![0u8; max];
        let mut n = max;
        loop {
            match self.read_bytes(va, &mut b[..n]) {
                Ok(()) => break,
                Err(e) if n <= 16 => return Err(e),
                Err(_) => n /= 2,
            }
        }
        let end = b[..n].iter().position(|&c| c == 0).unwrap_or(n);
        Ok(escape_bytes(&b[..end]))
    }

    /// [`Self::read_bytes`], where only whether it worked matters.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Option<()> {
        self.read_bytes(va, buf).ok()
    }

    /// `n` words at `va`.
    pub fn read_words(&self, va: u64, n: usize) -> Option<Vec<u64>> {
        self.read_ptrs(va, n).ok()
    }

    /// The word at `va`.
    pub fn read_word(&self, va: u64) -> Option<u64> {
        self.read_as::<u64>(va).ok()
    }

    /// The 32-bit value at `va`.
    pub fn read_u32(&self, va: u64) -> Option<u32> {
        self.read_as::<u32>(va).ok()
    }

    /// The CPUs below `below` that the guest's `__cpu_online_mask` says are
    /// online (None if it cannot be read). Guest-written: a CPU the guest
    /// says is offline is only not expected to do anything.
    pub fn online_cpus(&self, below: u32) -> Option<BTreeSet<u32>> {
        let words = usize::try_from(below.div_ceil(64)).ok()?;
        let mask = self.read_words(self.sym("__cpu_online_mask")?, words)?;
        Some(
            (0..below)
                .filter(|&c| {
                    let (w, b) = ((c / 64) as usize, c % 64);
                    mask.get(w).is_some_and(|m| m >> b & 1 == 1)
                })
                .collect(),
        )
    }

    /// `symbol+0xoff` for a runtime address, or the bare address (with the
    /// module that probably owns it).
    pub fn name(&self, addr: u64) -> String {
        match self.sym.with_offset(addr) {
            Some(s) => s,
            None => match (self.module_of(addr), self.module_memory_of(addr)) {
                (Some(m), _) => format!("{addr:#x} (outside the kernel image, in module {m})"),
                (None, Some(m)) => {
                    format!("{addr:#x} (outside the kernel image, in module {m}'s data)")
                }
                (None, None) => format!("{addr:#x} (outside the kernel image)"),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::base::error::Space;
    use crate::guest::memory::GuestAddress;
    use crate::kernel::locate::locate;
    use crate::kernel::locate::tests::{synthetic_guest, SLIDE, TEXT_PA};

    #[test]
    fn reads_are_typed_and_say_why_they_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        // In the image's data, read linearly.
        let va = 0xffff_ffff_8290_0000 + SLIDE;
        let pa = GuestAddress(TEXT_PA + 0x190_0000);
        ram.write_u64(pa, u64::from_le_bytes(*b"rootkit\0"))
            .unwrap();
        ram.write_u64(GuestAddress(pa.0 + 8), 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(v.read_as::<u64>(va + 8), Ok(0x1122_3344_5566_7788));
        assert_eq!(v.read_as::<u32>(va + 8), Ok(0x5566_7788));
        assert_eq!(v.read_as::<u8>(va + 15), Ok(0x11));
        assert_eq!(v.read_ptrs(va + 8, 1), Ok(vec![0x1122_3344_5566_7788]));
        assert_eq!(v.read_cstr(va, 64).as_deref(), Ok("rootkit"));
        // Outside the image, where the page tables map nothing.
        let e = v.read_as::<u64>(0xffff_8880_0000_0000).unwrap_err();
        assert_eq!(e.space, Space::Virtual);
        assert_eq!((e.addr, e.len), (0xffff_8880_0000_0000, 8));
        assert_eq!(e.why, ReadFailure::NotMapped);
        assert!(e.to_string().contains("not mapped"), "{e}");
        // A range that wraps around the address space.
        let mut b = [0u8; 16];
        assert_eq!(
            v.read_bytes(u64::MAX - 7, &mut b).unwrap_err().why,
            ReadFailure::Overflow
        );
        // The convenience forms say only whether.
        assert_eq!(v.read_word(0xffff_8880_0000_0000), None);
    }
}
