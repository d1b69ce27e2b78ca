//! Finding the running guest kernel's xftrace control block despite KASLR.
//!
//! The control block is page-aligned in the kernel's .data, so the locator
//! reads one word per page of guest RAM looking for the magic, then checks
//! each candidate against the trusted System.map: every address the guest
//! reports must be its link-time address plus one 2 MiB-aligned slide, the
//! physical base must be 2 MiB-aligned, and `linux_banner` at the derived
//! physical address must match the build. Candidates that fail (stale copies,
//! page cache, decoys) are rejected; two that pass is itself an error.

use std::path::Path;

use log::debug;

use crate::abi::{self, ControlHeader};
use crate::error::{Error, Result};
use crate::guest_memory::{GuestAddress, GuestRam};
use crate::symbols::{SystemMap, START_KERNEL_MAP};

const ALIGN_2M: u64 = 2 << 20;
/// x86_64 KASLR keeps the kernel image inside the 1 GiB text mapping.
const KERNEL_IMAGE_SIZE: u64 = 1 << 30;

/// The guest kernel as found in RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub ctl: GuestAddress,
    pub header: ControlHeader,
    /// Runtime minus link-time virtual address.
    pub slide: u64,
    /// Guest physical address of `_text`.
    pub text_pa: u64,
    pub rings: GuestAddress,
    /// The banner read from guest memory.
    pub banner: String,
}

impl GuestKernel {
    /// Guest physical address of a runtime kernel-image virtual address.
    pub fn kva_to_gpa(&self, va: u64) -> Option<GuestAddress> {
        let off = va.checked_sub(self.header.text_va)?;
        (off < KERNEL_IMAGE_SIZE).then(|| GuestAddress(self.text_pa + off))
    }

    /// Guest physical address of a field of the control block.
    pub fn field(&self, off: u64) -> GuestAddress {
        GuestAddress(self.ctl.0 + off)
    }

    /// Guest physical address of slot `idx` of ring `cpu`.
    pub fn slot(&self, cpu: u32, idx: u64) -> GuestAddress {
        GuestAddress(
            self.rings.0
                + (u64::from(cpu) * u64::from(self.header.ring_slots) + idx) * abi::SLOT_SIZE,
        )
    }
}

/// The `linux_banner` string of a vmlinux.
pub fn banner_from_vmlinux(path: &Path, banner_addr: u64) -> Result<String> {
    crate::vmlinux::Vmlinux::load(path)?
        .cstring(banner_addr)
        .ok_or_else(|| {
            Error::Input(format!(
                "{}: no linux_banner at {banner_addr:#x}; is it the vmlinux of this System.map?",
                path.display()
            ))
        })
}

/// Check one candidate control block found at `ctl`.
fn validate(
    ram: &GuestRam,
    map: &SystemMap,
    ctl: GuestAddress,
    expected_banner: Option<&str>,
) -> Result<GuestKernel, String> {
    let mut head = [0u8; 64];
    ram.read_into(ctl, &mut head).map_err(|e| e.to_string())?;
    let header = ControlHeader::parse(&head)?;
    let sym = |n: &str| {
        map.addr(n).ok_or(format!(
            "System.map has no {n}: not an xftrace kernel build"
        ))
    };
    let slide = header.ctl_va.wrapping_sub(sym("xftrace_control")?);
    if slide % ALIGN_2M != 0 || slide >= KERNEL_IMAGE_SIZE {
        return Err(format!(
            "slide {slide:#x} is not a KASLR slide: System.map does not match"
        ));
    }
    if header.text_va.wrapping_sub(sym("_text")?) != slide
        || header.rings_va.wrapping_sub(sym("xftrace_rings")?) != slide
    {
        return Err("addresses disagree with System.map: it belongs to another build".into());
    }
    // The image is physically contiguous: PA = VA - __START_KERNEL_map + phys_base.
    let phys_base = ctl
        .0
        .wrapping_sub(header.ctl_va.wrapping_sub(START_KERNEL_MAP));
    let text_pa = header
        .text_va
        .wrapping_sub(START_KERNEL_MAP)
        .wrapping_add(phys_base);
    if text_pa % ALIGN_2M != 0 {
        return Err(format!(
            "kernel physical base {text_pa:#x} is not 2 MiB-aligned"
        ));
    }
    let kernel = GuestKernel {
        ctl,
        rings: GuestAddress(header.rings_va - header.text_va + text_pa),
        slide,
        text_pa,
        banner: String::new(),
        header,
    };
    let (start, end) = map.image();
    if ram
        .layout()
        .locate(GuestAddress(text_pa), end - start)
        .is_none()
    {
        return Err("kernel image would lie outside guest RAM".into());
    }
    if ram
        .layout()
        .locate(kernel.rings, kernel.header.rings_len())
        .is_none()
    {
        return Err("rings lie outside guest RAM".into());
    }
    let banner_pa = kernel
        .kva_to_gpa(sym("linux_banner")? + slide)
        .ok_or("linux_banner outside the image")?;
    let mut b = [0u8; 256];
    ram.read_into(banner_pa, &mut b)
        .map_err(|e| e.to_string())?;
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let banner = String::from_utf8_lossy(&b[..n]).trim_end().to_string();
    match expected_banner {
        Some(want) if want.trim_end() != banner => {
            return Err(format!(
                "linux_banner is {banner:?}, the build's is {:?}",
                want.trim_end()
            ))
        }
        None if !banner.starts_with("Linux version ") => {
            return Err("no linux_banner where System.map puts it".into())
        }
        _ => {}
    }
    Ok(GuestKernel { banner, ..kernel })
}

/// Find and validate the guest kernel's control block.
pub fn locate(ram: &GuestRam, map: &SystemMap, vmlinux: Option<&Path>) -> Result<GuestKernel> {
    let expected = match (vmlinux, map.addr("linux_banner")) {
        (Some(v), Some(a)) => Some(banner_from_vmlinux(v, a)?),
        _ => None,
    };
    let mut candidates = Vec::new();
    ram.scan_page_words(|gpa, w| {
        if w == abi::MAGIC {
            candidates.push(gpa);
        }
    })?;
    if candidates.is_empty() {
        return Err(Error::Guest(format!(
            "no xftrace control block in {}: the guest is not running a kernel built from guest-kernel/ (CONFIG_XFTRACE), or has not finished booting",
            ram.path().display()
        )));
    }
    let mut found = Vec::new();
    let mut reasons = Vec::new();
    for gpa in candidates {
        match validate(ram, map, gpa, expected.as_deref()) {
            Ok(k) => found.push(k),
            Err(why) => {
                debug!("rejected control block candidate at {gpa}: {why}");
                reasons.push(why);
            }
        }
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        0 => Err(Error::Guest(format!(
            "the guest kernel does not match the System.map given ({}); pass the System.map of the kernel the guest runs",
            reasons.first().map_or("no candidate", String::as_str)
        ))),
        n => Err(Error::Guest(format!(
            "{n} control blocks pass validation (at {}): the guest's memory holds a decoy; refusing to trust either",
            found.iter().map(|k| k.ctl.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::guest_memory::{Machine, MemoryLayout};
    use crate::symbols::tests::MAP;

    pub(crate) const SLIDE: u64 = 0x1e00_0000;
    pub(crate) const TEXT_PA: u64 = 0x0400_0000;

    /// A 160 MiB RAM image with a kernel from `symbols::tests::MAP` at
    /// `TEXT_PA`, slid by `SLIDE`.
    pub(crate) fn synthetic_guest(dir: &Path) -> (GuestRam, SystemMap) {
        let map = SystemMap::parse(MAP).unwrap();
        let p = dir.join("ram");
        let size = 160u64 << 20;
        std::fs::write(&p, vec![0u8; size as usize]).unwrap();
        let ram = GuestRam::open(&p, MemoryLayout::x86(size, Machine::Pc, None)).unwrap();
        place_control(&ram, &map, TEXT_PA, SLIDE);
        (ram, map)
    }

    pub(crate) fn pa_of(map: &SystemMap, text_pa: u64, sym: &str) -> u64 {
        map.addr(sym).unwrap() - map.addr("_text").unwrap() + text_pa
    }

    pub(crate) fn place_control(ram: &GuestRam, map: &SystemMap, text_pa: u64, slide: u64) {
        let ctl = pa_of(map, text_pa, "xftrace_control");
        let w = |o: u64, v: u64| ram.write_u64(GuestAddress(ctl + o), v).unwrap();
        w(abi::off::MAGIC, abi::MAGIC);
        w(abi::off::ABI_VERSION, 1 | (4096 << 32));
        w(
            abi::off::CTL_VA,
            map.addr("xftrace_control").unwrap() + slide,
        );
        w(
            abi::off::RINGS_VA,
            map.addr("xftrace_rings").unwrap() + slide,
        );
        w(abi::off::TEXT_VA, map.addr("_text").unwrap() + slide);
        w(abi::off::NR_RINGS, 2 | (256 << 32));
        w(abi::off::SLOT_SIZE, 64 | (2 << 32));
        w(abi::off::FUNCS_SIZE, 1024 | (16 << 32));
        let banner = pa_of(map, text_pa, "linux_banner");
        let text = b"Linux version 6.1.192 (test) #1 SMP\n\0\0\0\0";
        for (i, c) in text.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            ram.write_u64(GuestAddress(banner + 8 * i as u64), u64::from_le_bytes(b))
                .unwrap();
        }
    }

    #[test]
    fn finds_the_control_block_and_slide() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.slide, SLIDE);
        assert_eq!(k.text_pa, TEXT_PA);
        assert_eq!(k.ctl.0, pa_of(&map, TEXT_PA, "xftrace_control"));
        assert_eq!(k.rings.0, pa_of(&map, TEXT_PA, "xftrace_rings"));
        assert!(k.banner.starts_with("Linux version 6.1.192"));
    }

    #[test]
    fn finds_a_kernel_loaded_above_four_gib() {
        // 3 GiB on q35: 2 GiB low, 1 GiB from 4 GiB up (a sparse file).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        let size = 3u64 << 30;
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        let ram = GuestRam::open(&p, MemoryLayout::x86(size, Machine::Q35, None)).unwrap();
        let map = SystemMap::parse(MAP).unwrap();
        let text_pa = (4u64 << 30) + (64 << 20);
        place_control(&ram, &map, text_pa, SLIDE);
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.text_pa, text_pa);
        assert_eq!(k.ctl.0, pa_of(&map, text_pa, "xftrace_control"));
        // In the file, that is 2 GiB + 64 MiB + the offset into the image.
        assert_eq!(
            ram.layout().to_file_offset(k.ctl, 8),
            Some((2u64 << 30) + (64 << 20) + 0x100_1000)
        );
    }

    #[test]
    fn ignores_a_copy_that_does_not_fit_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        // A copy of the real block one page away (page cache, a rootkit's
        // decoy): its own physical address contradicts what it claims.
        let ctl = pa_of(&map, TEXT_PA, "xftrace_control");
        let mut words = [0u64; 8];
        ram.read_words(GuestAddress(ctl), &mut words).unwrap();
        for (i, w) in words.iter().enumerate() {
            ram.write_u64(GuestAddress(0x10_0000 + 8 * i as u64), *w)
                .unwrap();
        }
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.ctl.0, ctl);
    }

    #[test]
    fn a_consistent_decoy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        // A whole second "kernel" 32 MiB higher that passes every check.
        place_control(&ram, &map, TEXT_PA + (32 << 20), SLIDE);
        let e = locate(&ram, &map, None).unwrap_err();
        assert!(e.to_string().contains("decoy"), "{e}");
    }

    #[test]
    fn wrong_system_map_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let other = SystemMap::parse(&MAP.replace(
            "ffffffff82001000 d xftrace_control",
            "ffffffff82003000 d xftrace_control",
        ))
        .unwrap();
        let e = locate(&ram, &other, None).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn unpatched_guest_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
        let ram = GuestRam::open(&p, MemoryLayout::x86(16 << 20, Machine::Pc, None)).unwrap();
        let map = SystemMap::parse(MAP).unwrap();
        let e = locate(&ram, &map, None).unwrap_err();
        assert!(e.to_string().contains("no xftrace control block"), "{e}");
    }
}
