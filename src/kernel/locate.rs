//! Finding the running guest kernel's xftrace control block despite KASLR,
//! and despite anything a guest process writes into its own memory.
//!
//! x86_64 loads the kernel physically contiguous at a 2 MiB-aligned
//! address, so the control block can only be at `P + (xftrace_control −
//! _text)` for a 2 MiB-aligned `P`: one read per 2 MiB of RAM finds every
//! candidate. Each must then agree with the trusted System.map (every
//! address it reports is its link-time address plus one KASLR slide), carry
//! the build's `linux_banner` at the derived physical address, and be
//! confirmed by the guest kernel's own page tables: the top-level table
//! inside that candidate image (`init_top_pgt`) must map `ctl_va` to this
//! very page through the image's own static tables. A user process can fill
//! pages with copies of the header and the banner (both are readable from
//! /proc), but it cannot make those pages the kernel's page tables.
#![deny(clippy::arithmetic_side_effects)]

use log::debug;

use crate::abi::{self, ControlHeader};
use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::guest::addr::{LinkAddr, Slide, VirtAddr};
use crate::guest::memory::{GuestAddress, GuestRam};
use crate::guest::paging::PageTables;
use crate::kernel::symbols::{SystemMap, START_KERNEL_MAP};

const ALIGN_2M: u64 = 2 << 20;
/// x86_64 KASLR keeps the kernel image inside the 1 GiB text mapping.
const KERNEL_IMAGE_SIZE: u64 = 1 << 30;
/// Candidates that pass every check beyond this many are not kept.
const MAX_KEPT: usize = 8;

/// The guest kernel as found in RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    /// Runtime virtual address of `_text`.
    pub text_va: u64,
    /// Runtime minus link-time virtual address.
    pub slide: Slide,
    /// Guest physical address of `_text`.
    pub text_pa: GuestAddress,
    /// The banner read from guest memory (no control characters).
    pub banner: String,
    /// The kernel's top-level page table and whether it is 5-level.
    pub pgd: GuestAddress,
    pub five_level: bool,
    /// xftrace's control block, where the guest kernel has the tracer
    /// (xftrace's kernel, or the xftrace-dkms module); None for a stock
    /// kernel checked from outside only.
    pub tracer: Option<Control>,
}

/// The xftrace control block of a guest kernel that has the tracer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub ctl: GuestAddress,
    pub header: ControlHeader,
    /// Guest physical address of the ring head lines.
    pub heads: GuestAddress,
    /// The `xftrace-dkms` module that holds it, or None: xftrace's kernel.
    pub module: Option<TracerModule>,
}

/// The `xftrace-dkms` module whose tracer a stock kernel runs
/// ([`crate::kernel::dkms`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracerModule {
    /// Its `struct module`.
    pub addr: u64,
    /// `[start, end)` of its `xftrace_probe` (runtime addresses).
    pub probe: (u64, u64),
}

impl Control {
    /// Guest physical address of a field of the control block (`off` is
    /// one of [`abi::off`] or computed by [`abi`]: below 4096).
    pub fn field(&self, off: u64) -> GuestAddress {
        GuestAddress(self.ctl.0 | (off % abi::CTL_SIZE))
    }

    /// Guest physical address of ring `ring`'s head (records written).
    pub fn head(&self, ring: u32) -> GuestAddress {
        self.head_field(ring, abi::layout::head::HEAD)
    }

    /// Guest physical address of ring `ring`'s dropped-events counter.
    pub fn dropped(&self, ring: u32) -> GuestAddress {
        self.head_field(ring, abi::layout::head::DROPPED)
    }

    fn head_field(&self, ring: u32, field: u64) -> GuestAddress {
        // heads is page-aligned and the lines fit in the RAM checked at
        // validation.
        GuestAddress(self.heads.0.saturating_add(abi::head_line(ring)) | field)
    }
}

impl GuestKernel {
    /// Guest physical address of a runtime kernel-image virtual address.
    pub fn kva_to_gpa(&self, va: u64) -> Option<GuestAddress> {
        let off = va
            .checked_sub(self.text_va)
            .filter(|&o| o < KERNEL_IMAGE_SIZE)?;
        self.text_pa.checked_add(off)
    }

    /// The tracer's control block, or why there is none.
    pub fn control(&self) -> Result<&Control> {
        self.tracer.as_ref().ok_or_else(|| {
            Error::Input(
                "the guest runs a kernel without xftrace's tracer (a stock kernel, checked from outside only): tracing needs xftrace's guest kernel or the xftrace-dkms module in the guest".into(),
            )
        })
    }

    /// The guest physical address that tells this kernel from another
    /// copy in the same RAM: its control block's, or its `_text`'s.
    pub fn id(&self) -> u64 {
        self.tracer.as_ref().map_or(self.text_pa.0, |c| c.ctl.0)
    }

    /// Where the kernel is, for logs and errors: its control block, or
    /// its physical base where it has none.
    pub fn place(&self) -> String {
        match &self.tracer {
            Some(Control {
                ctl,
                module: Some(_),
                ..
            }) => format!(
                "stock kernel at {}, xftrace-dkms control block at {ctl}",
                self.text_pa
            ),
            Some(c) => format!("control block at {}", c.ctl),
            None => format!("stock kernel at {}", self.text_pa),
        }
    }

    /// The guest kernel's own page tables.
    pub fn page_tables<'a>(&self, ram: &'a GuestRam) -> PageTables<'a> {
        PageTables::new(ram, self.pgd, self.five_level)
    }
}

/// How hard to look.
#[derive(Clone, Copy, Debug)]
pub struct LocateOptions {
    /// Require the guest's own page tables to map the control block. Only
    /// tests turn this off, to show what it protects against.
    pub confirm_with_page_tables: bool,
}

impl Default for LocateOptions {
    fn default() -> Self {
        LocateOptions {
            confirm_with_page_tables: true,
        }
    }
}

/// Every candidate that passed, and how many did not (with the first
/// reason: memory stays bounded however many pages a guest sprays).
#[derive(Debug)]
pub struct Located {
    pub kernels: Vec<GuestKernel>,
    pub candidates: u64,
    pub rejected: u64,
    pub first_reason: Option<String>,
}

struct Layout {
    off_ctl: u64,
    image_len: u64,
}

fn sym(map: &SystemMap, n: &str) -> std::result::Result<u64, String> {
    map.addr(n).ok_or(format!(
        "System.map has no {n}: not an xftrace kernel build"
    ))
}

/// Where the control block sits in the image, from System.map.
fn layout(map: &SystemMap) -> std::result::Result<Layout, String> {
    let (start, end) = map.image();
    let off_ctl = sym(map, "xftrace_control")?
        .checked_sub(start)
        .filter(|&o| o < KERNEL_IMAGE_SIZE)
        .ok_or("xftrace_control lies outside the kernel image")?;
    Ok(Layout {
        off_ctl,
        image_len: end.saturating_sub(start),
    })
}

/// Read a NUL-terminated string of at most 256 bytes.
fn read_cstr(ram: &GuestRam, at: GuestAddress) -> std::result::Result<Vec<u8>, String> {
    let mut b = [0u8; 256];
    ram.read_into(at, &mut b).map_err(|e| e.to_string())?;
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Ok(b[..n].to_vec())
}

/// Check one candidate whose `_text` would be at physical `text_pa`.
fn validate(
    ram: &GuestRam,
    map: &SystemMap,
    text_pa: u64,
    lay: &Layout,
    expected_banner: Option<&str>,
    opts: LocateOptions,
) -> std::result::Result<GuestKernel, String> {
    let mut kernel = identity(ram, map, text_pa, lay)?;
    kernel.banner = banner(ram, map, &kernel, expected_banner)?;
    let runtime = |n: &str| sym(map, n).map(|a| kernel.slide.runtime(LinkAddr(a)).0);
    kernel.pgd = kernel
        .kva_to_gpa(runtime("init_top_pgt")?)
        .ok_or("init_top_pgt outside the image")?;
    kernel.five_level = match map.addr("__pgtable_l5_enabled") {
        Some(a) => {
            let pa = kernel
                .kva_to_gpa(kernel.slide.runtime(LinkAddr(a)).0)
                .ok_or("__pgtable_l5_enabled outside the image")?;
            let mut b = [0u8; 4];
            ram.read_into(pa, &mut b).map_err(|e| e.to_string())?;
            u32::from_le_bytes(b) != 0
        }
        None => false,
    };
    if opts.confirm_with_page_tables {
        confirm_by_page_tables(ram, map, &kernel)?;
    }
    Ok(kernel)
}

/// The control block's identity against System.map: one slide for every
/// address it reports, an image and ring heads inside guest RAM.
fn identity(
    ram: &GuestRam,
    map: &SystemMap,
    text_pa: u64,
    lay: &Layout,
) -> std::result::Result<GuestKernel, String> {
    let ctl = GuestAddress(text_pa.checked_add(lay.off_ctl).ok_or("address overflow")?);
    let mut head = [0u8; 64];
    ram.read_into(ctl, &mut head).map_err(|e| e.to_string())?;
    let header = ControlHeader::parse(&head)?;
    let slide = Slide::between(
        LinkAddr(sym(map, "xftrace_control")?),
        VirtAddr(header.ctl_va),
    );
    if !slide.0.is_multiple_of(ALIGN_2M) || slide.0 >= KERNEL_IMAGE_SIZE {
        return Err(format!(
            "slide {slide:#x} is not a KASLR slide: System.map does not match"
        ));
    }
    if Slide::between(LinkAddr(sym(map, "_text")?), VirtAddr(header.text_va)) != slide
        || Slide::between(
            LinkAddr(sym(map, "xftrace_heads")?),
            VirtAddr(header.heads_va),
        ) != slide
    {
        return Err("addresses disagree with System.map: it belongs to another build".into());
    }
    // Both 2 MiB-aligned, so physical and virtual agree on the whole image.
    if header.text_va.wrapping_sub(START_KERNEL_MAP) % ALIGN_2M != 0 {
        return Err("kernel text is not 2 MiB-aligned".into());
    }
    if ram
        .layout()
        .locate(GuestAddress(text_pa), lay.image_len)
        .is_none()
    {
        return Err("kernel image would lie outside guest RAM".into());
    }
    let mut kernel = GuestKernel {
        text_va: header.text_va,
        slide,
        text_pa: GuestAddress(text_pa),
        banner: String::new(),
        pgd: GuestAddress(0),
        five_level: false,
        tracer: None,
    };
    let heads = kernel
        .kva_to_gpa(header.heads_va)
        .filter(|&h| ram.layout().locate(h, header.heads_len()).is_some())
        .ok_or("ring heads lie outside guest RAM")?;
    kernel.tracer = Some(Control {
        ctl,
        header,
        heads,
        module: None,
    });
    Ok(kernel)
}

/// `linux_banner` where System.map puts it: no control characters but its
/// newline, and the build's (or at least a Linux banner).
fn banner(
    ram: &GuestRam,
    map: &SystemMap,
    kernel: &GuestKernel,
    expected: Option<&str>,
) -> std::result::Result<String, String> {
    let at = kernel.slide.runtime(LinkAddr(sym(map, "linux_banner")?)).0;
    let pa = kernel
        .kva_to_gpa(at)
        .ok_or("linux_banner outside the image")?;
    let raw = read_cstr(ram, pa)?;
    let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
    if text.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(format!(
            "the banner holds control characters: {}",
            crate::base::escape::escape_bytes(&raw)
        ));
    }
    let banner = String::from_utf8_lossy(text).into_owned();
    match expected {
        Some(want) if want.trim_end() != banner => Err(format!(
            "linux_banner is \"{}\", the build's is \"{}\"",
            escape(&banner),
            escape(want.trim_end())
        )),
        None if !banner.starts_with("Linux version ") => {
            Err("no linux_banner where System.map puts it".into())
        }
        _ => Ok(banner),
    }
}

/// The candidate's own `init_top_pgt` must map `ctl_va` to the candidate's
/// control block (a stock kernel: `linux_banner` to its banner), through
/// the image's static kernel tables.
fn confirm_by_page_tables(
    ram: &GuestRam,
    map: &SystemMap,
    k: &GuestKernel,
) -> std::result::Result<(), String> {
    let (va, pa, what) = match &k.tracer {
        Some(c) => (c.header.ctl_va, c.ctl, "control block"),
        None => {
            let va = k.slide.runtime(LinkAddr(sym(map, "linux_banner")?)).0;
            let pa = k.kva_to_gpa(va).ok_or("linux_banner outside the image")?;
            (va, pa, "banner")
        }
    };
    let walk = k.page_tables(ram).walk(VirtAddr(va)).ok_or(format!(
        "the kernel's own page tables do not map its {what}"
    ))?;
    if walk.pa != pa {
        return Err(format!(
            "the kernel's own page tables map its {what} to {}, not here",
            walk.pa
        ));
    }
    // Below the top level, the kernel mapping goes through tables that are
    // part of the image (arch/x86/kernel/head_64.S).
    let statics: &[&str] = if k.five_level {
        &[
            "level4_kernel_pgt",
            "level3_kernel_pgt",
            "level2_kernel_pgt",
        ]
    } else {
        &["level3_kernel_pgt", "level2_kernel_pgt"]
    };
    for (table, name) in walk.tables.iter().skip(1).zip(statics) {
        let Some(link) = map.addr(name) else {
            continue;
        };
        let want = k.kva_to_gpa(k.slide.runtime(LinkAddr(link)).0);
        if want != Some(*table) {
            return Err(format!(
                "the kernel mapping goes through a table at {table}, not the image's {name}"
            ));
        }
    }
    Ok(())
}

/// Every 2 MiB-aligned physical address where `_text` could be.
fn text_candidates(ram: &GuestRam, lay: &Layout) -> Vec<u64> {
    let mut out = Vec::new();
    for r in ram.layout().regions() {
        let end = r.end();
        let mut p = r.gpa.0.div_ceil(ALIGN_2M).saturating_mul(ALIGN_2M);
        while p.checked_add(lay.off_ctl).is_some_and(|c| c < end) {
            out.push(p);
            p = match p.checked_add(ALIGN_2M) {
                Some(n) => n,
                None => break,
            };
        }
    }
    out
}

/// Find every control block that passes validation. `expected_banner` is
/// the build's `linux_banner` (from its vmlinux), if known.
pub fn locate_all(
    ram: &GuestRam,
    map: &SystemMap,
    expected_banner: Option<&str>,
    opts: LocateOptions,
) -> Result<Located> {
    let lay = layout(map).map_err(|m| Error::Input(format!("System.map: {m}")))?;
    let mut found = Located {
        kernels: Vec::new(),
        candidates: 0,
        rejected: 0,
        first_reason: None,
    };
    for text_pa in text_candidates(ram, &lay) {
        let ctl = GuestAddress(text_pa.saturating_add(lay.off_ctl));
        if ram.probe_u64(ctl).ok() != Some(abi::MAGIC) {
            continue;
        }
        found.candidates = found.candidates.saturating_add(1);
        match validate(ram, map, text_pa, &lay, expected_banner, opts) {
            Ok(k) if found.kernels.len() < MAX_KEPT => found.kernels.push(k),
            Ok(_) => found.rejected = found.rejected.saturating_add(1),
            Err(why) => {
                debug!("rejected control block candidate at {ctl}: {why}");
                found.rejected = found.rejected.saturating_add(1);
                found.first_reason.get_or_insert(why);
            }
        }
    }
    Ok(found)
}

/// Find and validate the guest kernel's control block: exactly one.
pub fn locate(
    ram: &GuestRam,
    map: &SystemMap,
    expected_banner: Option<&str>,
) -> Result<GuestKernel> {
    let mut found = locate_all(ram, map, expected_banner, LocateOptions::default())?;
    match found.kernels.len() {
        1 => Ok(found.kernels.remove(0)),
        0 => Err(not_found(ram, &found)),
        _ => Err(decoy(&found)),
    }
}

/// Validate only the kernel whose `_text` another process found at
/// `text_pa` (with page-table confirmation).
pub fn locate_at(
    ram: &GuestRam,
    map: &SystemMap,
    text_pa: u64,
    expected_banner: Option<&str>,
) -> Result<GuestKernel> {
    let lay = layout(map).map_err(|m| Error::Input(format!("System.map: {m}")))?;
    if !text_pa.is_multiple_of(ALIGN_2M) {
        return Err(Error::Guest(format!(
            "{text_pa:#x} is not a 2 MiB-aligned kernel base"
        )));
    }
    validate(
        ram,
        map,
        text_pa,
        &lay,
        expected_banner,
        LocateOptions::default(),
    )
    .map_err(|why| {
        Error::Guest(format!(
            "the guest kernel is no longer at {text_pa:#x} ({why}); was the guest rebooted?"
        ))
    })
}

/// Find every copy of a kernel without a control block (a distribution's
/// stock kernel) whose build is `map`, with `banner` its `linux_banner`
/// from the trusted image: at every 2 MiB-aligned physical address `P`,
/// the build's banner must lie at `P + (linux_banner − _text)`; the
/// candidate's own `init_top_pgt` (inside the candidate image) must map
/// the kernel text mapping's 2 MiB slot at `_text + slide` to `P`, for
/// exactly one KASLR slide, and the banner's virtual address to the banner
/// read, through the image's static tables. A process can fill its pages
/// with the banner (it is in /proc/version), but it cannot make them the
/// kernel's page tables.
pub fn locate_stock_all(ram: &GuestRam, map: &SystemMap, banner: &str) -> Result<Located> {
    let (start, end) = map.image();
    let text = sym(map, "_text").map_err(|m| Error::Input(format!("System.map: {m}")))?;
    let off_banner = sym(map, "linux_banner")
        .ok()
        .and_then(|b| b.checked_sub(text))
        .filter(|&o| o < KERNEL_IMAGE_SIZE)
        .ok_or_else(|| Error::Input("System.map: no linux_banner inside the image".into()))?;
    let lay = Layout {
        off_ctl: off_banner,
        image_len: end.saturating_sub(start),
    };
    let mut found = Located {
        kernels: Vec::new(),
        candidates: 0,
        rejected: 0,
        first_reason: None,
    };
    for text_pa in banner_bases(ram, off_banner, banner) {
        if ram
            .layout()
            .locate(GuestAddress(text_pa), lay.image_len)
            .is_none()
        {
            continue;
        }
        found.candidates = found.candidates.saturating_add(1);
        match validate_stock(ram, map, text_pa, &lay, banner) {
            Ok(k) if found.kernels.len() < MAX_KEPT => found.kernels.push(k),
            Ok(_) => found.rejected = found.rejected.saturating_add(1),
            Err(why) => {
                debug!("rejected stock kernel candidate at {text_pa:#x}: {why}");
                found.rejected = found.rejected.saturating_add(1);
                found.first_reason.get_or_insert(why);
            }
        }
    }
    Ok(found)
}

/// The 2 MiB-aligned bases in `ram` at which a kernel would have `banner`
/// at `offset` from its `_text`.
pub fn banner_bases(ram: &GuestRam, offset: u64, banner: &str) -> Vec<u64> {
    let want = banner.as_bytes();
    let mut head = vec![0u8; want.len().min(256)];
    let lay = Layout {
        off_ctl: offset,
        image_len: 0,
    };
    text_candidates(ram, &lay)
        .into_iter()
        .filter(|&p| {
            let at = GuestAddress(p.saturating_add(offset));
            ram.read_into(at, &mut head).is_ok() && head == want[..head.len()]
        })
        .collect()
}

/// Distinct kernel banners anywhere in guest RAM (at most `max`, each at
/// most 256 bytes without control characters), in the order found: what
/// names the build of a stock kernel before there is one. Anything in RAM
/// may have written them (/proc/version is world-readable): they are a
/// hint for which build to try, never evidence.
pub fn banners_in(ram: &GuestRam, max: usize) -> Vec<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    const LONGEST: usize = 256;
    /// Hits looked at, at most, whatever a guest sprays.
    const MAX_HITS: usize = 4096;
    let finder = memchr::memmem::Finder::new(NEEDLE);
    let mut out: Vec<String> = Vec::new();
    let mut hits = 0usize;
    let _ = ram.scan_chunks(1 << 20, LONGEST, |b| {
        for at in finder.find_iter(b) {
            hits = hits.saturating_add(1);
            let Some(rest) = b.get(at..) else { break };
            let end = rest
                .iter()
                .take(LONGEST)
                .position(|&c| c == 0 || c == b'\n');
            // Cut by the chunk's end: the next chunk holds it whole.
            let Some(end) = end else { continue };
            let text = &rest[..end];
            if text.iter().all(|&c| (0x20..0x7f).contains(&c)) {
                let s = String::from_utf8_lossy(text).into_owned();
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            if out.len() >= max || hits >= MAX_HITS {
                return false;
            }
        }
        true
    });
    out
}

/// Validate only the stock kernel another process found at `text_pa`.
pub fn locate_stock_at(
    ram: &GuestRam,
    map: &SystemMap,
    text_pa: u64,
    banner: &str,
) -> Result<GuestKernel> {
    let (start, end) = map.image();
    let lay = Layout {
        off_ctl: 0,
        image_len: end.saturating_sub(start),
    };
    if !text_pa.is_multiple_of(ALIGN_2M) {
        return Err(Error::Guest(format!(
            "{text_pa:#x} is not a 2 MiB-aligned kernel base"
        )));
    }
    validate_stock(ram, map, text_pa, &lay, banner).map_err(|why| {
        Error::Guest(format!(
            "the guest kernel is no longer at {text_pa:#x} ({why}); was the guest rebooted?"
        ))
    })
}

/// One stock-kernel candidate at `text_pa`: its slide from its own page
/// tables, then the banner and the page tables as for a control block.
fn validate_stock(
    ram: &GuestRam,
    map: &SystemMap,
    text_pa: u64,
    lay: &Layout,
    expected_banner: &str,
) -> std::result::Result<GuestKernel, String> {
    if ram
        .layout()
        .locate(GuestAddress(text_pa), lay.image_len)
        .is_none()
    {
        return Err("kernel image would lie outside guest RAM".into());
    }
    let text = sym(map, "_text")?;
    let image_off = |n: &str| -> std::result::Result<GuestAddress, String> {
        sym(map, n)?
            .checked_sub(text)
            .filter(|&o| o < KERNEL_IMAGE_SIZE)
            .and_then(|o| text_pa.checked_add(o))
            .map(GuestAddress)
            .ok_or(format!("{n} outside the image"))
    };
    let pgd = image_off("init_top_pgt")?;
    let five_level = match map.addr("__pgtable_l5_enabled") {
        Some(_) => {
            let mut b = [0u8; 4];
            ram.read_into(image_off("__pgtable_l5_enabled")?, &mut b)
                .map_err(|e| e.to_string())?;
            u32::from_le_bytes(b) != 0
        }
        None => false,
    };
    let tables = PageTables::new(ram, pgd, five_level);
    // The kernel text mapping: _text at link + slide, slide a multiple of
    // 2 MiB below 1 GiB; exactly one must map this candidate's _text.
    let slots = KERNEL_IMAGE_SIZE
        .saturating_sub(text.wrapping_sub(START_KERNEL_MAP))
        .checked_div(ALIGN_2M)
        .unwrap_or(0);
    let mut slides = (0..slots).filter_map(|i| {
        let slide = i.checked_mul(ALIGN_2M)?;
        let va = text.checked_add(slide)?;
        (tables.walk(VirtAddr(va))?.pa == GuestAddress(text_pa)).then_some(slide)
    });
    let slide = slides
        .next()
        .ok_or("its own page tables do not map its text")?;
    if slides.next().is_some() {
        return Err("its own page tables map its text at two places".into());
    }
    let mut kernel = GuestKernel {
        text_va: text.wrapping_add(slide),
        slide: Slide(slide),
        text_pa: GuestAddress(text_pa),
        banner: String::new(),
        pgd,
        five_level,
        tracer: None,
    };
    kernel.banner = self::banner(ram, map, &kernel, Some(expected_banner))?;
    confirm_by_page_tables(ram, map, &kernel)?;
    Ok(kernel)
}

/// The error for several control blocks that all pass.
pub fn decoy(found: &Located) -> Error {
    Error::Decoy(format!(
        "{} control blocks pass validation (at {}): the guest's memory holds a decoy; refusing to drive either",
        found.kernels.len(),
        found
            .kernels
            .iter()
            .map(GuestKernel::place)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Why nothing was found: a rejected candidate, a control block where this
/// System.map does not put one (another build), or none at all.
pub fn not_found(ram: &GuestRam, found: &Located) -> Error {
    if let Some(why) = &found.first_reason {
        return Error::Guest(format!(
            "the guest kernel does not match the System.map given ({why}); pass the System.map of the kernel the guest runs"
        ));
    }
    // Slow path, errors only: is there a control block anywhere at all?
    let mut elsewhere = 0u64;
    let _ = ram.scan_page_words(|_, w| {
        if w == abi::MAGIC {
            elsewhere = elsewhere.saturating_add(1);
        }
    });
    if elsewhere > 0 {
        Error::Guest(format!(
            "guest RAM holds {elsewhere} page(s) that start like an xftrace control block, but none where this System.map puts it: the guest kernel does not match the System.map given; pass the System.map of the kernel the guest runs"
        ))
    } else {
        Error::Guest(format!(
            "no xftrace control block in {}: the guest is not running a kernel built from guest-kernel/ (CONFIG_XFTRACE), or has not finished booting",
            ram.path().display()
        ))
    }
}

/// The guest's `max_low_pfn`: on x86-64, where its RAM ends (the kernel
/// sets it to `max_pfn`), which tells pc from q35 layouts of the same RAM
/// size apart.
pub fn max_low_pfn(ram: &GuestRam, map: &SystemMap, k: &GuestKernel) -> Option<u64> {
    let pa = k.kva_to_gpa(k.slide.runtime(LinkAddr(map.addr("max_low_pfn")?)).0)?;
    ram.read_u64(pa).ok()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;
    use crate::guest::memory::{Machine, MemoryLayout};
    use crate::kernel::symbols::tests::MAP;

    pub(crate) use crate::testkit::synthetic::{
        pa_of, place_control, place_kernel, synthetic_guest, UNIT_SLIDE as SLIDE,
        UNIT_TEXT_PA as TEXT_PA,
    };

    #[test]
    fn finds_the_control_block_and_slide() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.slide, Slide(SLIDE));
        assert_eq!(k.text_pa, GuestAddress(TEXT_PA));
        assert_eq!(k.id(), pa_of(&map, TEXT_PA, "xftrace_control"));
        assert_eq!(
            k.tracer.as_ref().unwrap().heads.0,
            pa_of(&map, TEXT_PA, "xftrace_heads")
        );
        assert_eq!(k.pgd.0, pa_of(&map, TEXT_PA, "init_top_pgt"));
        assert!(k.banner.starts_with("Linux version 6.1.192"));
        assert_eq!(max_low_pfn(&ram, &map, &k), Some((160 << 20) >> 12));
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
        place_kernel(&ram, &map, text_pa, SLIDE);
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.text_pa, GuestAddress(text_pa));
        assert_eq!(k.id(), pa_of(&map, text_pa, "xftrace_control"));
        // In the file, that is 2 GiB + 64 MiB + the offset into the image.
        assert_eq!(
            ram.layout().to_file_offset(GuestAddress(k.id()), 8),
            Some((2u64 << 30) + (64 << 20) + 0x100_1000)
        );
    }

    #[test]
    fn ignores_a_copy_that_does_not_fit_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        // A copy of the real block one page away (page cache, a rootkit's
        // decoy): not where a 2 MiB-aligned kernel would have it.
        let ctl = pa_of(&map, TEXT_PA, "xftrace_control");
        let mut words = [0u64; 8];
        ram.read_words(GuestAddress(ctl), &mut words).unwrap();
        for (i, w) in words.iter().enumerate() {
            ram.write_u64(GuestAddress(0x10_0000 + 8 * i as u64), *w)
                .unwrap();
        }
        let k = locate(&ram, &map, None).unwrap();
        assert_eq!(k.id(), ctl);
    }

    /// What an unprivileged process can do: fill pages with the control
    /// block's header and the banner at every offset a 2 MiB-aligned kernel
    /// would have them.
    fn spray(ram: &GuestRam, map: &SystemMap, from: u64, to: u64) -> u32 {
        let mut n = 0;
        let mut p = from;
        while p < to {
            place_control(ram, map, p, SLIDE);
            p += 2 << 20;
            n += 1;
        }
        n
    }

    #[test]
    fn a_sprayed_guest_is_located_through_its_page_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let sprayed = spray(&ram, &map, TEXT_PA + (32 << 20), 128 << 20);
        assert_eq!(sprayed, 16);
        // Without the page-table confirmation the spray passes every other
        // check: each sprayed copy is a "kernel".
        let off = LocateOptions {
            confirm_with_page_tables: false,
        };
        let all = locate_all(&ram, &map, None, off).unwrap();
        assert!(all.kernels.len() > 1, "{all:?}");
        // With it, only the real one.
        let found = locate_all(&ram, &map, None, LocateOptions::default()).unwrap();
        assert_eq!(found.kernels.len(), 1);
        assert_eq!(found.kernels[0].text_pa, GuestAddress(TEXT_PA));
        assert_eq!(found.rejected, u64::from(sprayed));
        assert!(found.first_reason.unwrap().contains("page tables"));
        assert_eq!(
            locate(&ram, &map, None).unwrap().text_pa,
            GuestAddress(TEXT_PA)
        );
    }

    /// A stock kernel (no control block) is found by its banner and its
    /// own page tables; the slide comes from those tables; a process's
    /// pages full of the banner are not taken for it.
    #[test]
    fn a_stock_kernel_is_found_by_its_banner_and_page_tables_not_a_spray() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let banner_pa = pa_of(&map, TEXT_PA, "linux_banner");
        let banner = String::from_utf8(read_cstr(&ram, GuestAddress(banner_pa)).unwrap()).unwrap();
        // No control block at all: erase its magic.
        let ctl = pa_of(&map, TEXT_PA, "xftrace_control");
        ram.write_u64(GuestAddress(ctl), 0).unwrap();
        assert!(locate(&ram, &map, None).is_err());
        // The banner where a kernel 2 MiB-aligned elsewhere would have it,
        // in pages that are not the kernel's page tables.
        let mut sprayed = 0;
        for p in ((TEXT_PA + (32 << 20))..(128 << 20)).step_by(2 << 20) {
            let at = pa_of(&map, p, "linux_banner");
            let mut b = banner.clone().into_bytes();
            b.resize(b.len().div_ceil(8) * 8 + 8, 0);
            for (i, w) in b.chunks_exact(8).enumerate() {
                let w = u64::from_le_bytes(w.try_into().unwrap());
                ram.write_u64(GuestAddress(at + 8 * i as u64), w).unwrap();
            }
            sprayed += 1;
        }
        let found = locate_stock_all(&ram, &map, &banner).unwrap();
        assert_eq!(found.kernels.len(), 1, "{found:?}");
        let k = &found.kernels[0];
        assert_eq!(k.text_pa, GuestAddress(TEXT_PA));
        assert_eq!(k.slide, Slide(SLIDE));
        assert_eq!(k.text_va, map.addr("_text").unwrap() + SLIDE);
        assert!(k.tracer.is_none());
        assert_eq!(k.id(), TEXT_PA);
        assert_eq!(found.rejected, sprayed);
        assert!(k.control().is_err());
        assert_eq!(max_low_pfn(&ram, &map, k), Some((160 << 20) >> 12));
        // Found again where it was; not with another build's banner.
        assert_eq!(
            locate_stock_at(&ram, &map, TEXT_PA, &banner).unwrap(),
            k.clone()
        );
        let other = banner.replace("Linux version", "Linux versioN");
        assert!(locate_stock_all(&ram, &map, &other)
            .unwrap()
            .kernels
            .is_empty());
        assert!(locate_stock_at(&ram, &map, TEXT_PA, &other).is_err());
    }

    /// The banners anywhere in RAM, each once, whole across the scan's
    /// chunks, and no more than asked for however many a guest sprays.
    #[test]
    fn banners_in_ram_are_found_once_each_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _map) = synthetic_guest(dir.path());
        let put = |at: u64, text: &[u8]| {
            let mut b = text.to_vec();
            b.resize(b.len().div_ceil(8) * 8, 0);
            for (i, w) in b.chunks_exact(8).enumerate() {
                let w = u64::from_le_bytes(w.try_into().unwrap());
                ram.write_u64(GuestAddress(at + 8 * i as u64), w).unwrap();
            }
        };
        let found = banners_in(&ram, 8);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("Linux version 6.1.192 "), "{found:?}");
        // One across the boundary of two 1 MiB chunks, one with a control
        // character (not taken), one again (not twice).
        put(
            (3 << 20) - 16,
            b"Linux version 6.1.0-9-cloud-amd64 (x) #1\0",
        );
        put(5 << 20, b"Linux version 6.1.0-8\x1b[2J\0");
        put(6 << 20, b"Linux version 6.1.0-9-cloud-amd64 (x) #1\0");
        let found = banners_in(&ram, 8);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.iter().any(|b| b.contains("6.1.0-8")), "{found:?}");
        assert!(found.contains(&"Linux version 6.1.0-9-cloud-amd64 (x) #1".to_string()));
        for i in 0..64u64 {
            put(
                (8 << 20) + i * 4096,
                format!("Linux version {i}\0").as_bytes(),
            );
        }
        assert_eq!(banners_in(&ram, 4).len(), 4);
    }

    #[test]
    fn a_second_whole_kernel_is_a_decoy() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        // A whole second kernel, page tables included (only kernel code can
        // build that), 32 MiB higher.
        place_kernel(&ram, &map, TEXT_PA + (32 << 20), SLIDE);
        let e = locate(&ram, &map, None).unwrap_err();
        assert!(matches!(e, Error::Decoy(_)), "{e}");
        let found = locate_all(&ram, &map, None, LocateOptions::default()).unwrap();
        assert_eq!(found.kernels.len(), 2);
    }

    #[test]
    fn a_banner_with_control_characters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let banner = pa_of(&map, TEXT_PA, "linux_banner");
        ram.write_u64(GuestAddress(banner + 16), u64::from_le_bytes(*b"\n 0) fak"))
            .unwrap();
        let e = locate(&ram, &map, None).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
    }

    #[test]
    fn wrong_system_map_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let other = SystemMap::parse(&MAP.replace(
            "ffffffff82001000 d xftrace_control",
            "ffffffff82011000 d xftrace_control",
        ))
        .unwrap();
        let e = locate(&ram, &other, None).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let other = SystemMap::parse(&MAP.replace(
            "ffffffff82400000 b xftrace_heads",
            "ffffffff82402000 b xftrace_heads",
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
