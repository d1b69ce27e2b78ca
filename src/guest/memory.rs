//! Guest physical memory, read and written through the file that backs it.
//!
//! QEMU's `memory-backend-file` with `share=on` keeps guest RAM in a file;
//! mapping that file shared gives the host the same pages the guest is using
//! right now. The guest writes them concurrently, so nothing here hands out a
//! `&[u8]` over the mapping: reads copy out with volatile or atomic loads, and
//! the few host writes are single aligned 8-byte atomic stores.
#![deny(clippy::arithmetic_side_effects)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::base::error::{Error, ReadError, ReadFailure, Result};

pub use crate::guest::addr::GuestAddress;

/// The x86 machine type, which decides where RAM above the PCI hole goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// i440fx (`pc-*`): up to 3 GiB below 4 GiB once RAM reaches 3.5 GiB.
    Pc,
    /// Q35 (`pc-q35-*`): up to 2 GiB below 4 GiB once RAM reaches 2.75 GiB.
    Q35,
}

/// The page size RAM regions are mapped in.
const PAGE: u64 = 4096;

/// One stretch of guest physical memory that is contiguous in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub gpa: GuestAddress,
    pub len: u64,
    /// Which backing file (index into the files the layout was built for).
    pub file: usize,
    pub file_offset: u64,
}

impl RamRegion {
    /// Where the region ends (exclusive), saturating at the top of the
    /// address space.
    pub fn end(&self) -> u64 {
        self.gpa.0.saturating_add(self.len)
    }
}

/// A place in the backing files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOffset {
    pub file: usize,
    pub offset: u64,
}

/// Where each guest physical range lives in the RAM file(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<RamRegion>,
}

const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 * GIB;

impl MemoryLayout {
    /// Layout of a single RAM backend of `ram_size` bytes on an x86_64 `pc`
    /// or `q35` machine, as QEMU builds it: RAM below the low-memory limit
    /// is at GPA = file offset; the rest starts at 4 GiB. `lowmem` overrides
    /// the limit (QEMU's `max-ram-below-4g`).
    pub fn x86(ram_size: u64, machine: Machine, lowmem: Option<u64>) -> Self {
        let default_low = match machine {
            Machine::Pc if ram_size >= 0xe000_0000 => 0xc000_0000,
            Machine::Q35 if ram_size >= 0xb000_0000 => 0x8000_0000,
            _ => ram_size,
        };
        let low = lowmem
            .map_or(default_low, |l| l.min(default_low))
            .min(ram_size);
        let mut regions = vec![RamRegion {
            gpa: GuestAddress(0),
            len: low,
            file: 0,
            file_offset: 0,
        }];
        if let Some(high) = ram_size.checked_sub(low).filter(|&h| h > 0) {
            regions.push(RamRegion {
                gpa: GuestAddress(FOUR_GIB),
                len: high,
                file: 0,
                file_offset: low,
            });
        }
        MemoryLayout { regions }
    }

    /// A layout given region by region (from QEMU's memory map, or tests).
    /// Neighbours contiguous both in guest memory and in the same file
    /// merge; regions whose end does not fit in 64 bits are dropped.
    pub fn from_regions(mut regions: Vec<RamRegion>) -> Self {
        regions.retain(|r| {
            // RAM is mapped in pages: a region that does not start, end
            // and sit in its file on page boundaries is not RAM as QEMU
            // maps it, and would put aligned guest words at unaligned
            // host addresses.
            let paged = [r.gpa.0, r.file_offset, r.len].iter().all(|v| v % PAGE == 0);
            if !paged {
                log::warn!(
                    "ignoring a RAM region that is not page-aligned: guest {:#x}, {:#x} bytes at file offset {:#x}",
                    r.gpa.0,
                    r.len,
                    r.file_offset
                );
            }
            paged
                && r.len > 0
                && r.gpa.checked_add(r.len).is_some()
                && r.file_offset.checked_add(r.len).is_some()
        });
        regions.sort_by_key(|r| r.gpa);
        let mut merged: Vec<RamRegion> = Vec::with_capacity(regions.len());
        for r in regions {
            match merged.last_mut() {
                Some(m)
                    if m.file == r.file
                        && m.gpa.checked_add(m.len) == Some(r.gpa)
                        && m.file_offset.checked_add(m.len) == Some(r.file_offset) =>
                {
                    m.len = m.len.saturating_add(r.len)
                }
                _ => merged.push(r),
            }
        }
        MemoryLayout { regions: merged }
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Where `[gpa, gpa + len)` is, if the whole range is RAM contiguous in
    /// one file.
    pub fn locate(&self, gpa: GuestAddress, len: u64) -> Option<FileOffset> {
        let (r, off) = self
            .regions
            .iter()
            .find_map(|r| Some((r, gpa.offset_from(r.gpa).filter(|&o| o < r.len)?)))?;
        if len > r.len.checked_sub(off)? {
            return None;
        }
        Some(FileOffset {
            file: r.file,
            offset: r.file_offset.checked_add(off)?,
        })
    }

    /// Offset in its file of `[gpa, gpa + len)`.
    pub fn to_file_offset(&self, gpa: GuestAddress, len: u64) -> Option<u64> {
        self.locate(gpa, len).map(|f| f.offset)
    }

    /// Guest physical address of an offset in file `file`.
    pub fn to_gpa(&self, file: usize, file_offset: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|r| {
            let off = file_offset
                .checked_sub(r.file_offset)
                .filter(|&o| r.file == file && o < r.len)?;
            r.gpa.checked_add(off)
        })
    }

    /// Bytes of file `file` the layout needs.
    pub fn file_len(&self, file: usize) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.file == file)
            .map(|r| r.file_offset.saturating_add(r.len))
            .max()
            .unwrap_or(0)
    }

    /// Number of backing files the layout refers to.
    pub fn nr_files(&self) -> usize {
        self.regions
            .iter()
            .map(|r| r.file.saturating_add(1))
            .max()
            .unwrap_or(0)
    }
}

/// One mapped backing file.
struct MappedFile {
    map: MmapRaw,
    len: u64,
    path: PathBuf,
    file: File,
}

impl MappedFile {
    fn open(path: &Path, needed: u64, follow_links: bool) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = if follow_links { 0 } else { libc::O_NOFOLLOW };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("cannot open guest RAM file {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::NotGuestRam(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let len = meta.len();
        if len < 16 << 20 || len % 4096 != 0 || usize::try_from(len).is_err() {
            return Err(Error::NotGuestRam(format!(
                "{} is {} bytes; guest RAM files are page-sized multiples of at least 16 MiB",
                path.display(),
                len
            )));
        }
        if needed > len {
            return Err(Error::NotGuestRam(format!(
                "{} is {} bytes but the memory layout needs {}",
                path.display(),
                len,
                needed
            )));
        }
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        // xftrace reads guest RAM at scattered places: read-ahead around
        // each one would pull in (or zero-fill) megabytes it never looks at.
        let _ = map.advise(memmap2::Advice::Random);
        Ok(MappedFile {
            map,
            len,
            path: path.to_path_buf(),
            file,
        })
    }
}

/// Guest RAM mapped from its backing file(s).
pub struct GuestRam {
    files: Vec<MappedFile>,
    layout: MemoryLayout,
}

impl GuestRam {
    /// Map `path` shared, read-write, with `layout`. The file is never
    /// resized, truncated or created.
    pub fn open(path: &Path, layout: MemoryLayout) -> Result<Self> {
        Self::open_files(&[path.to_path_buf()], layout, true)
    }

    /// Map several backing files (one per QEMU memory backend, e.g. per NUMA
    /// node); `layout` regions name them by index. Paths that came from
    /// somewhere less trusted than the operator (QEMU's monitor) are opened
    /// with `follow_links` false: a link planted there is refused.
    pub fn open_files(paths: &[PathBuf], layout: MemoryLayout, follow_links: bool) -> Result<Self> {
        if paths.is_empty() || layout.nr_files() > paths.len() {
            return Err(Error::NotGuestRam(format!(
                "the memory layout refers to {} backing files, {} given",
                layout.nr_files(),
                paths.len()
            )));
        }
        let files = paths
            .iter()
            .enumerate()
            .map(|(i, p)| MappedFile::open(p, layout.file_len(i), follow_links))
            .collect::<Result<Vec<_>>>()?;
        Ok(GuestRam { files, layout })
    }

    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The first backing file (the only one outside NUMA setups).
    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    /// True once a backing file has been unlinked (the VM's RAM directory
    /// was removed: the domain stopped). The mapping stays valid but stale.
    pub fn unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.files
            .iter()
            .any(|f| f.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true))
    }

    fn ptr_at(&self, gpa: GuestAddress, len: u64) -> Result<*mut u8> {
        let at = self
            .layout
            .locate(gpa, len)
            .filter(|at| {
                self.files
                    .get(at.file)
                    .is_some_and(|f| at.offset.checked_add(len).is_some_and(|end| end <= f.len))
            })
            .ok_or(ReadError::physical(gpa.0, len, ReadFailure::NotRam))?;
        let f = &self.files[at.file];
        // In bounds of that file's mapping, checked above (the mapping's
        // length fits in usize, so the offset does too).
        Ok(unsafe { f.map.as_mut_ptr().add(at.offset as usize) })
    }

    /// The host address of the `len` bytes of u64 words at `gpa`, checked
    /// aligned in the guest and in the mapping (atomics need both).
    fn words_at(&self, gpa: GuestAddress, len: u64) -> Result<*mut u64> {
        let p = self.ptr_at(gpa, len)?;
        if !gpa.0.is_multiple_of(8) || !(p as usize).is_multiple_of(8) {
            return Err(ReadError::physical(gpa.0, 8, ReadFailure::Unaligned).into());
        }
        Ok(p as *mut u64)
    }

    fn atomic_at(&self, gpa: GuestAddress) -> Result<&AtomicU64> {
        let p = self.words_at(gpa, 8)?;
        // Aligned, in bounds, and the mapping lives as long as `self`.
        // Concurrent access by the guest is what atomics are for.
        Ok(unsafe { AtomicU64::from_ptr(p) })
    }

    /// Atomically load the aligned u64 at `gpa`.
    pub fn read_u64(&self, gpa: GuestAddress) -> Result<u64> {
        Ok(self.atomic_at(gpa)?.load(Ordering::Acquire))
    }

    /// Atomically store `val` at `gpa` (aligned): the guest sees either the
    /// old or the new value, never a mix.
    pub fn write_u64(&self, gpa: GuestAddress, val: u64) -> Result<()> {
        self.atomic_at(gpa)?.store(val, Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Copy `buf.len()` bytes from `gpa` with volatile loads.
    pub fn read_into(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<()> {
        let p = self.ptr_at(gpa, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // In bounds: ptr_at checked the whole range.
            *b = unsafe { std::ptr::read_volatile(p.add(i)) };
        }
        fence(Ordering::Acquire);
        Ok(())
    }

    /// Copy aligned u64 words starting at `gpa` with atomic loads, in order.
    pub fn read_words(&self, gpa: GuestAddress, words: &mut [u64]) -> Result<()> {
        if !gpa.0.is_multiple_of(8) {
            return Err(ReadError::physical(gpa.0, 8, ReadFailure::Unaligned).into());
        }
        let len = (words.len() as u64)
            .checked_mul(8)
            .ok_or(ReadError::physical(gpa.0, u64::MAX, ReadFailure::Overflow))?;
        let p = self.words_at(gpa, len)?;
        for (i, w) in words.iter_mut().enumerate() {
            // Aligned and in bounds, as checked above.
            *w = unsafe { AtomicU64::from_ptr(p.add(i)) }.load(Ordering::Acquire);
        }
        Ok(())
    }

    /// Load `out.len()` aligned u64 words, `stride` bytes apart, starting at
    /// `gpa` (each atomically, in order): one word of each of a run of
    /// records, with one bounds check.
    pub fn read_strided(&self, gpa: GuestAddress, stride: u64, out: &mut [u64]) -> Result<()> {
        if !gpa.0.is_multiple_of(8) || !stride.is_multiple_of(8) || stride == 0 {
            return Err(ReadError::physical(gpa.0, 8, ReadFailure::Unaligned).into());
        }
        let range = || ReadError::physical(gpa.0, u64::MAX, ReadFailure::Overflow);
        let len = (out.len() as u64)
            .checked_sub(1)
            .map_or(Some(0), |n| n.checked_mul(stride))
            .and_then(|l| l.checked_add(8))
            .ok_or_else(range)?;
        let p = self.words_at(gpa, len)?;
        let step = (stride / 8) as usize;
        for (i, w) in out.iter_mut().enumerate() {
            // Aligned and in bounds: the last word read ends at `len`.
            *w =
                unsafe { AtomicU64::from_ptr(p.add(i.wrapping_mul(step))) }.load(Ordering::Acquire);
        }
        Ok(())
    }

    /// Read the u64 at `gpa` with pread rather than through the mapping: for
    /// probing many scattered places (the locator's candidates) without
    /// mapping a page, or a whole large folio, of each into this process.
    /// Not atomic: for words the guest does not change (the magic).
    pub fn probe_u64(&self, gpa: GuestAddress) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let at = self
            .layout
            .locate(gpa, 8)
            .filter(|at| self.files.get(at.file).is_some())
            .ok_or(ReadError::physical(gpa.0, 8, ReadFailure::NotRam))?;
        let f = &self.files[at.file];
        let mut word = [0u8; 8];
        f.file
            .read_exact_at(&mut word, at.offset)
            .map_err(|e| Error::io(format!("cannot read {}", f.path.display()), e))?;
        Ok(u64::from_le_bytes(word))
    }

    /// Read all of every backing file in chunks of at most `chunk` bytes,
    /// each overlapping the next by `overlap`, with pread into one host
    /// buffer (a copy: the guest may write while it is read), and call
    /// `f` on each; `f` returns false to stop. Where a chunk lies in guest
    /// physical memory is not said: this is for finding strings.
    pub fn scan_chunks(
        &self,
        chunk: usize,
        overlap: usize,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let chunk = chunk.max(overlap.saturating_add(1));
        let step = chunk.saturating_sub(overlap) as u64;
        let mut buf = vec![0u8; chunk];
        for m in &self.files {
            let mut off = 0u64;
            while off < m.len {
                let n = usize::try_from(m.len.saturating_sub(off))
                    .unwrap_or(chunk)
                    .min(chunk);
                let b = &mut buf[..n];
                m.file
                    .read_exact_at(b, off)
                    .map_err(|e| Error::io(format!("cannot read {}", m.path.display()), e))?;
                if !f(b) {
                    return Ok(());
                }
                off = off.saturating_add(step);
            }
        }
        Ok(())
    }

    /// Read the u64 at each page boundary of every backing file: the cheap
    /// first pass of a scan for a page-aligned structure. Calls
    /// `f(gpa, word)` for pages that are guest RAM. Uses pread rather than
    /// the mapping, so scanning a large guest neither faults every page into
    /// this process nor copies whole pages.
    pub fn scan_page_words(&self, mut f: impl FnMut(GuestAddress, u64)) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut word = [0u8; 8];
        for (i, m) in self.files.iter().enumerate() {
            for off in (0..m.len.saturating_sub(7)).step_by(4096) {
                m.file
                    .read_exact_at(&mut word, off)
                    .map_err(|e| Error::io(format!("cannot read {}", m.path.display()), e))?;
                if let Some(gpa) = self.layout.to_gpa(i, off) {
                    f(gpa, u64::from_le_bytes(word));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_all_low_memory() {
        for m in [Machine::Pc, Machine::Q35] {
            let l = MemoryLayout::x86(512 << 20, m, None);
            assert_eq!(l.regions().len(), 1);
            assert_eq!(l.to_file_offset(GuestAddress(0x1000), 8), Some(0x1000));
            assert_eq!(l.to_file_offset(GuestAddress((512 << 20) - 4), 8), None);
            assert_eq!(l.to_file_offset(GuestAddress(FOUR_GIB), 8), None);
        }
    }

    #[test]
    fn q35_splits_above_four_gib() {
        let ram = 6 * GIB;
        let l = MemoryLayout::x86(ram, Machine::Q35, None);
        assert_eq!(
            l.to_file_offset(GuestAddress(2 * GIB - 8), 8),
            Some(2 * GIB - 8)
        );
        // The PCI hole is not RAM.
        assert_eq!(l.to_file_offset(GuestAddress(3 * GIB), 8), None);
        assert_eq!(l.to_file_offset(GuestAddress(FOUR_GIB), 8), Some(2 * GIB));
        assert_eq!(
            l.to_file_offset(GuestAddress(FOUR_GIB + 4 * GIB - 8), 8),
            Some(6 * GIB - 8)
        );
        assert_eq!(l.to_file_offset(GuestAddress(FOUR_GIB + 4 * GIB), 8), None);
        assert_eq!(
            l.to_gpa(0, 2 * GIB + 0x1000),
            Some(GuestAddress(FOUR_GIB + 0x1000))
        );
        assert_eq!(l.file_len(0), ram);
    }

    #[test]
    fn pc_keeps_three_gib_low() {
        let l = MemoryLayout::x86(4 * GIB, Machine::Pc, None);
        assert_eq!(
            l.to_file_offset(GuestAddress(3 * GIB - 8), 8),
            Some(3 * GIB - 8)
        );
        assert_eq!(l.to_file_offset(GuestAddress(FOUR_GIB), 8), Some(3 * GIB));
        // Below 3.5 GiB the pc machine keeps everything low.
        let l = MemoryLayout::x86(3 * GIB + (256 << 20), Machine::Pc, None);
        assert_eq!(l.regions().len(), 1);
    }

    #[test]
    fn max_ram_below_4g_lowers_the_split() {
        let l = MemoryLayout::x86(2 * GIB, Machine::Pc, Some(GIB));
        assert_eq!(l.to_file_offset(GuestAddress(FOUR_GIB), 8), Some(GIB));
    }

    #[test]
    fn ranges_do_not_straddle_regions() {
        let l = MemoryLayout::x86(6 * GIB, Machine::Q35, None);
        assert_eq!(l.to_file_offset(GuestAddress(2 * GIB - 4), 8), None);
    }

    #[test]
    fn regions_from_a_memory_map_merge_and_span_files() {
        let r = |gpa, len, file, file_offset| RamRegion {
            gpa: GuestAddress(gpa),
            len,
            file,
            file_offset,
        };
        let l = MemoryLayout::from_regions(vec![
            r(0x100000, 0x1000_0000 - 0x100000, 0, 0x100000),
            r(0, 0xc3000, 0, 0),
            r(0xc3000, 0x3d000, 0, 0xc3000),
            // A second NUMA node's backend, from 256 MiB up.
            r(0x1000_0000, 0x1000_0000, 1, 0),
        ]);
        assert_eq!(l.regions().len(), 2, "{:?}", l.regions());
        assert_eq!(
            l.to_file_offset(GuestAddress(0xbf000), 0x2000),
            Some(0xbf000)
        );
        assert_eq!(
            l.locate(GuestAddress(0x1000_2000), 8),
            Some(FileOffset {
                file: 1,
                offset: 0x2000
            })
        );
        assert_eq!(l.to_gpa(1, 0x10), Some(GuestAddress(0x1000_0010)));
        assert_eq!(l.nr_files(), 2);
        // Not contiguous across the node boundary.
        assert_eq!(l.locate(GuestAddress(0x0fff_fffc), 8), None);
    }

    /// QEMU reports a region at an odd file offset: an aligned guest word
    /// would sit at an unaligned host address, where an atomic access is
    /// undefined behaviour. Such a region is not RAM.
    #[test]
    fn regions_off_page_boundaries_are_not_ram() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let r = |gpa, len, file_offset| RamRegion {
            gpa: GuestAddress(gpa),
            len,
            file: 0,
            file_offset,
        };
        for bad in [r(0, 0x8000, 4), r(4, 0x8000, 0), r(0, 0x8004, 0)] {
            let l = MemoryLayout::from_regions(vec![bad, r(0x10_0000, 0x1000, 0x1000)]);
            assert_eq!(l.regions().len(), 1, "{bad:?}");
            let ram = GuestRam::open(&p, l).unwrap();
            assert!(ram.read_u64(GuestAddress(0x1000)).is_err());
            assert!(ram.write_u64(GuestAddress(0x1000), 1).is_err());
            assert!(ram.read_u64(GuestAddress(0x10_0000)).is_ok());
        }
    }

    #[test]
    fn reads_and_writes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
        let ram = GuestRam::open(&p, MemoryLayout::x86(16 << 20, Machine::Pc, None)).unwrap();
        ram.write_u64(GuestAddress(0x2000), 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(
            ram.read_u64(GuestAddress(0x2000)).unwrap(),
            0x1122_3344_5566_7788
        );
        let mut b = [0u8; 3];
        ram.read_into(GuestAddress(0x2001), &mut b).unwrap();
        assert_eq!(b, [0x77, 0x66, 0x55]);
        assert!(matches!(
            ram.read_u64(GuestAddress(0x2004)),
            Err(Error::Read(ReadError {
                why: ReadFailure::Unaligned,
                ..
            }))
        ));
        assert!(matches!(
            ram.read_u64(GuestAddress(16 << 20)),
            Err(Error::Read(ReadError {
                why: ReadFailure::NotRam,
                ..
            }))
        ));
        let data = std::fs::read(&p).unwrap();
        assert_eq!(
            &data[0x2000..0x2008],
            &0x1122_3344_5566_7788u64.to_le_bytes()
        );
    }

    #[test]
    fn paths_from_qemu_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
        let link = dir.path().join("pc.ram");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let layout = MemoryLayout::x86(16 << 20, Machine::Pc, None);
        assert!(GuestRam::open_files(std::slice::from_ref(&link), layout.clone(), false).is_err());
        assert!(GuestRam::open_files(&[link], layout, true).is_ok());
    }

    #[test]
    fn refuses_files_that_are_not_ram() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small");
        std::fs::write(&p, b"hello").unwrap();
        let e = GuestRam::open(&p, MemoryLayout::x86(5, Machine::Pc, None))
            .err()
            .unwrap();
        assert!(matches!(e, Error::NotGuestRam(_)), "{e}");
    }
}
