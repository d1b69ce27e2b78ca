//! The trusted build's vmlinux: bytes of its sections by link-time address,
//! its KASLR relocation sites and its `__mcount_loc` table, to compare with
//! what the running guest holds.
//!
//! A vmlinux with debug info is hundreds of megabytes, so nothing reads it
//! whole: the section headers are parsed once and each request reads just
//! the bytes it needs, with a bound.
#![deny(clippy::arithmetic_side_effects)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::abi::le::{u16_at, u32_at, u64_at};
use crate::base::error::{Error, Result};

/// Largest single read a caller may ask for.
const MAX_READ: u64 = 64 << 20;
/// Section headers a vmlinux may have (ELF's own limit without extensions).
const MAX_SECTIONS: usize = 0xff00;

const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHN_UNDEF: u16 = 0;
const SHN_ABS: u16 = 0xfff1;
/// Not an ELF value: an absolute symbol the relocs tool relocates.
const SHN_ABS_RELOCATED: u16 = 0xfff0;

const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_32: u32 = 10;
const R_X86_64_32S: u32 = 11;

#[derive(Clone, Debug)]
struct Section {
    name: String,
    ty: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

/// How KASLR changes the bytes at a relocation site (arch/x86/tools/relocs.c
/// and the decompressor's handle_relocations()).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocKind {
    /// A 32-bit absolute address: plus the slide.
    Abs32,
    /// A 64-bit absolute address: plus the slide.
    Abs64,
    /// A 32-bit PC-relative reference to a per-CPU symbol: minus the slide.
    NegPc32,
}

impl RelocKind {
    pub fn width(self) -> u64 {
        match self {
            RelocKind::Abs64 => 8,
            RelocKind::Abs32 | RelocKind::NegPc32 => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    /// Link-time address of the bytes KASLR rewrites.
    pub addr: u64,
    pub kind: RelocKind,
}

pub struct Vmlinux {
    file: File,
    path: PathBuf,
    len: u64,
    sections: Vec<Section>,
    /// The symbol table, read once: every relocation names a symbol.
    symtab: std::sync::OnceLock<Option<Vec<u8>>>,
    /// A stripped vmlinux's KASLR relocations, from the table its bzImage
    /// carries ([`crate::kernel::bzimage`]), sorted: used instead of
    /// `.rela.*` sections, which such a vmlinux no longer has.
    table: Option<Vec<Reloc>>,
    btf: std::sync::OnceLock<Option<crate::kernel::btf::Btf>>,
}

impl Vmlinux {
    pub fn load(path: &Path) -> Result<Self> {
        let file = crate::host::files::open_regular(path, "vmlinux")?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat vmlinux {}", path.display()), e))?
            .len();
        let not_elf = || Error::Input(format!("{} is not an x86_64 ELF vmlinux", path.display()));
        let mut v = Vmlinux {
            file,
            path: path.to_path_buf(),
            len,
            sections: Vec::new(),
            symtab: std::sync::OnceLock::new(),
            btf: std::sync::OnceLock::new(),
            table: None,
        };
        v.sections = v.parse_sections().ok_or_else(not_elf)?;
        Ok(v)
    }

    /// Load a stripped vmlinux (a stock kernel's, out of its bzImage) with
    /// the relocation table stored beside it ([`write_relocs`]).
    pub fn load_with_relocs(path: &Path, relocs: &Path) -> Result<Self> {
        let mut v = Vmlinux::load(path)?;
        let b = crate::host::files::read_bounded(relocs, MAX_RELOCS_FILE, "relocation table")?;
        v.table = Some(parse_relocs(&b).ok_or_else(|| {
            Error::Input(format!(
                "{} is not a relocation table xftrace wrote",
                relocs.display()
            ))
        })?);
        Ok(v)
    }

    fn read_at(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if len > MAX_READ || offset.checked_add(len)? > self.len {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    fn parse_sections(&self) -> Option<Vec<Section>> {
        let eh = self.read_at(0, 64)?;
        if eh.get(0..6)? != b"\x7fELF\x02\x01" || u16_at(&eh, 0x12)? != 62 {
            return None;
        }
        let shoff = u64_at(&eh, 0x28)?;
        let shentsize = u64::from(u16_at(&eh, 0x3a)?);
        let shnum = usize::from(u16_at(&eh, 0x3c)?);
        let shstrndx = usize::from(u16_at(&eh, 0x3e)?);
        if shentsize < 64 || shnum > MAX_SECTIONS {
            return None;
        }
        let table = self.read_at(shoff, shentsize.checked_mul(shnum as u64)?)?;
        let mut raw = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let sh = usize::try_from(shentsize.checked_mul(i as u64)?).ok()?;
            raw.push((
                u32_at(&table, sh)?,
                Section {
                    name: String::new(),
                    ty: u32_at(&table, sh.checked_add(4)?)?,
                    addr: u64_at(&table, sh.checked_add(0x10)?)?,
                    offset: u64_at(&table, sh.checked_add(0x18)?)?,
                    size: u64_at(&table, sh.checked_add(0x20)?)?,
                    link: u32_at(&table, sh.checked_add(0x28)?)?,
                    info: u32_at(&table, sh.checked_add(0x2c)?)?,
                },
            ));
        }
        // Section names, if the string table is sane (1 MiB is plenty).
        let names = raw
            .get(shstrndx)
            .and_then(|(_, s)| self.read_at(s.offset, s.size.min(1 << 20)));
        Some(
            raw.into_iter()
                .map(|(name_off, mut s)| {
                    if let Some(n) = names.as_deref().and_then(|n| {
                        let rest = n.get(usize::try_from(name_off).ok()?..)?;
                        let end = rest.iter().position(|&c| c == 0)?;
                        std::str::from_utf8(&rest[..end]).ok()
                    }) {
                        s.name = n.to_string();
                    }
                    s
                })
                .collect(),
        )
    }

    /// The section holding `[addr, addr + len)` with bytes in the file.
    fn section_of(&self, addr: u64, len: u64) -> Option<&Section> {
        self.sections.iter().find(|s| {
            s.ty != SHT_NOBITS
                && s.addr != 0
                && addr
                    .checked_sub(s.addr)
                    .is_some_and(|o| o < s.size && len <= s.size.saturating_sub(o))
        })
    }

    /// The bytes of the section called `name` (at most 64 MiB).
    pub fn section(&self, name: &str) -> Option<Vec<u8>> {
        let s = self
            .sections
            .iter()
            .find(|s| s.name == name && s.ty != SHT_NOBITS)?;
        self.read_at(s.offset, s.size)
    }

    /// Link-time `[start, end)` of the section called `name`.
    pub fn section_range(&self, name: &str) -> Option<(u64, u64)> {
        let s = self
            .sections
            .iter()
            .find(|s| s.name == name && s.addr != 0)?;
        Some((s.addr, s.addr.checked_add(s.size)?))
    }

    /// The build's BTF, if it has one that parses (parsed once).
    pub fn btf(&self) -> Option<&crate::kernel::btf::Btf> {
        self.btf
            .get_or_init(|| crate::kernel::btf::Btf::parse(&self.section(".BTF")?).ok())
            .as_ref()
    }

    /// `len` bytes at link-time address `addr`, if one section holds them.
    pub fn bytes(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let s = self.section_of(addr, len)?;
        let off = s.offset.checked_add(addr.checked_sub(s.addr)?)?;
        self.read_at(off, len)
    }

    pub fn u64_at(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    /// The NUL-terminated string at `addr` (at most 512 bytes).
    pub fn cstring(&self, addr: u64) -> Option<String> {
        let s = self.section_of(addr, 1)?;
        let avail = s.size.saturating_sub(addr.checked_sub(s.addr)?).min(512);
        let b = self.bytes(addr, avail)?;
        let n = b.iter().position(|&c| c == 0)?;
        String::from_utf8(b[..n].to_vec()).ok()
    }

    /// Every place in `[start, end)` (link-time) whose bytes KASLR changes,
    /// from the build's own relocation records (`.rela.*`, which x86
    /// kernels keep with `--emit-relocs` for exactly this purpose), chosen
    /// as the kernel's `relocs` tool chooses them.
    pub fn kaslr_relocations(&self, start: u64, end: u64) -> Result<Vec<Reloc>> {
        if let Some(t) = &self.table {
            let from = t.partition_point(|r| r.addr < start);
            let to = t.partition_point(|r| r.addr < end);
            return Ok(t.get(from..to).unwrap_or_default().to_vec());
        }
        let bad = |what: &str| {
            Error::Input(format!(
                "vmlinux {}: {what}; is it the vmlinux of this kernel build?",
                self.path.display()
            ))
        };
        let target = self
            .sections
            .iter()
            .position(|s| {
                s.addr <= start && start < s.addr.saturating_add(s.size) && s.ty != SHT_RELA
            })
            .ok_or_else(|| bad("no section holds the code to check"))?;
        let rela = self
            .sections
            .iter()
            .find(|s| s.ty == SHT_RELA && s.info as usize == target)
            .ok_or_else(|| {
                bad("no relocation records (.rela.*): it was not linked with --emit-relocs")
            })?;
        let symtab = self
            .sections
            .get(rela.link as usize)
            .filter(|s| s.ty == SHT_SYMTAB)
            .ok_or_else(|| bad("relocations without a symbol table"))?;
        let percpu = self.sections.iter().position(|s| s.name == ".data..percpu");
        let syms = self
            .symtab
            .get_or_init(|| self.read_at(symtab.offset, symtab.size))
            .as_deref()
            .ok_or_else(|| bad("symbol table beyond the file"))?;
        let strtab = self.sections.get(symtab.link as usize);
        let name_of = |st_name: u32| -> String {
            strtab
                .and_then(|t| {
                    let off = u64::from(st_name);
                    let n = t.size.checked_sub(off)?.min(128);
                    self.read_at(t.offset.checked_add(off)?, n)
                })
                .and_then(|b| {
                    let end = b.iter().position(|&c| c == 0)?;
                    String::from_utf8(b[..end].to_vec()).ok()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        const ENT: u64 = 24;
        const CHUNK: u64 = ENT * 4096;
        let mut at = 0u64;
        while at < rela.size {
            let n = rela.size.saturating_sub(at).min(CHUNK);
            let off = rela
                .offset
                .checked_add(at)
                .ok_or_else(|| bad("relocations beyond the file"))?;
            let buf = self
                .read_at(off, n)
                .ok_or_else(|| bad("relocations beyond the file"))?;
            for e in buf.chunks_exact(ENT as usize) {
                let (Some(r_offset), Some(r_info)) = (u64_at(e, 0), u64_at(e, 8)) else {
                    continue;
                };
                if r_offset < start || r_offset >= end {
                    continue;
                }
                let ty = r_info as u32;
                let sym = usize::try_from(r_info >> 32)
                    .ok()
                    .and_then(|i| i.checked_mul(24))
                    .and_then(|o| syms.get(o..o.checked_add(24)?))
                    .ok_or_else(|| bad("a relocation names a symbol past the symbol table"))?;
                let (Some(st_name), Some(mut shndx)) = (u32_at(sym, 0), u16_at(sym, 6)) else {
                    continue;
                };
                // The relocs tool's exceptions, by name: linker-script
                // symbols inside the per-CPU section that are addresses,
                // and absolute ones that move with the kernel.
                let in_percpu = percpu.is_some_and(|p| usize::from(shndx) == p);
                let is_percpu = in_percpu && !moves_with_kernel(&name_of(st_name));
                if shndx == SHN_ABS && moves_with_kernel(&name_of(st_name)) {
                    shndx = SHN_ABS_RELOCATED;
                }
                if let Some(kind) = reloc_kind(ty, shndx, is_percpu) {
                    out.push(Reloc {
                        addr: r_offset,
                        kind,
                    });
                }
            }
            at = at.saturating_add(n);
        }
        out.sort_by_key(|r| r.addr);
        Ok(out)
    }

    /// The link-time addresses in `[start, end)` of the words the build
    /// holds as 64-bit pointers (its `Abs64` KASLR relocations); none if
    /// the build has no relocation records there.
    pub fn pointer_words(&self, start: u64, end: u64) -> std::collections::BTreeSet<u64> {
        self.kaslr_relocations(start, end)
            .map(|r| {
                r.into_iter()
                    .filter(|x| x.kind == RelocKind::Abs64)
                    .map(|x| x.addr)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Addresses the build's code and data refer to, not as the target of
    /// a call: every 8-byte word of its allocated data sections (pointers
    /// in tables, initialised at link time) and every address its code
    /// loads (`mov $sym`, `lea sym(%rip)`: R_X86_64_32S and R_X86_64_PC32
    /// relocations of `.text`). Callers keep those that start functions:
    /// the only functions an indirect call can legitimately reach.
    pub fn referenced_addresses(&self) -> Result<Vec<u64>> {
        let bad = |what: &str| {
            Error::Input(format!(
                "vmlinux {}: {what}; is it the vmlinux of this kernel build?",
                self.path.display()
            ))
        };
        let mut out = Vec::new();
        for sec in self.sections.iter().filter(|s| {
            s.ty != SHT_NOBITS
                && s.ty != SHT_RELA
                && s.addr != 0
                && matches!(s.name.as_str(), ".data" | ".rodata" | ".data..percpu")
        }) {
            let mut at = 0u64;
            while at < sec.size {
                let n = sec.size.saturating_sub(at).min(MAX_READ);
                let b = self
                    .read_at(sec.offset.saturating_add(at), n)
                    .ok_or_else(|| bad("a data section beyond the file"))?;
                out.extend(b.chunks_exact(8).filter_map(|c| u64_at(c, 0)));
                at = at.saturating_add(n);
            }
        }
        if let Some(t) = &self.table {
            // A stripped vmlinux: the addresses its code loads absolute
            // (`mov $sym`, the relocation table's 32-bit sites), read from
            // the code. Its `lea sym(%rip)` are not relocated and so not in
            // the table: those functions are missing here.
            for name in [".text", ".init.text"] {
                let Some((lo, hi)) = self.section_range(name) else {
                    continue;
                };
                let from = t.partition_point(|r| r.addr < lo);
                let to = t.partition_point(|r| r.addr < hi);
                for r in t.get(from..to).unwrap_or_default() {
                    if r.kind != RelocKind::Abs32 {
                        continue;
                    }
                    if let Some(b) = self.bytes(r.addr, 4) {
                        let v = i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                        out.push(v as u64);
                    }
                }
            }
            return Ok(out);
        }
        let text = self
            .sections
            .iter()
            .position(|s| s.name == ".text" && s.ty != SHT_RELA)
            .ok_or_else(|| bad("no .text section"))?;
        // Boot code takes addresses too (it registers callbacks).
        let init = self
            .sections
            .iter()
            .position(|s| s.name == ".init.text" && s.ty != SHT_RELA);
        for rela in self.sections.iter().filter(|s| {
            s.ty == SHT_RELA && (s.info as usize == text || Some(s.info as usize) == init)
        }) {
            self.code_references(rela, &mut out)?;
        }
        Ok(out)
    }

    /// The addresses the code a `.rela` section applies to loads.
    fn code_references(&self, rela: &Section, out: &mut Vec<u64>) -> Result<()> {
        let bad = |what: &str| {
            Error::Input(format!(
                "vmlinux {}: {what}; is it the vmlinux of this kernel build?",
                self.path.display()
            ))
        };
        let symtab = self
            .sections
            .get(rela.link as usize)
            .filter(|s| s.ty == SHT_SYMTAB)
            .ok_or_else(|| bad("relocations without a symbol table"))?;
        let syms = self
            .read_at(symtab.offset, symtab.size)
            .ok_or_else(|| bad("a symbol table beyond the file or too large"))?;
        const ENT: u64 = 24;
        const CHUNK: u64 = ENT * 4096;
        let mut at = 0u64;
        while at < rela.size {
            let n = rela.size.saturating_sub(at).min(CHUNK);
            let buf = self
                .read_at(rela.offset.saturating_add(at), n)
                .ok_or_else(|| bad("relocations beyond the file"))?;
            for e in buf.chunks_exact(ENT as usize) {
                let (Some(info), Some(addend)) = (u64_at(e, 8), u64_at(e, 16)) else {
                    continue;
                };
                let extra = match info as u32 {
                    R_X86_64_32S => 0u64,
                    // The displacement ends the instruction (lea, mov).
                    R_X86_64_PC32 => 4,
                    _ => continue,
                };
                let value = usize::try_from((info >> 32).saturating_mul(ENT))
                    .ok()
                    .and_then(|o| u64_at(&syms, o.checked_add(8)?));
                if let Some(v) = value {
                    out.push(v.wrapping_add(addend).wrapping_add(extra));
                }
            }
            at = at.saturating_add(n);
        }
        Ok(())
    }

    /// Link-time addresses in `[start, end)` from the build's `__mcount_loc`
    /// table (between `table_start` and `table_end`): the `__fentry__` call
    /// sites ftrace patches.
    pub fn mcount_sites(&self, table: (u64, u64), start: u64, end: u64) -> Option<Vec<u64>> {
        let len = table.1.checked_sub(table.0)?;
        let b = self.bytes(table.0, len)?;
        Some(
            b.chunks_exact(8)
                .filter_map(|c| u64_at(c, 0))
                .filter(|&a| a >= start && a < end)
                .collect(),
        )
    }
}

/// A stored relocation table: 8 bytes of magic, then per site its
/// link-time address (8 bytes, little-endian) and kind (1 byte).
const RELOCS_MAGIC: &[u8; 8] = b"XFRELOC1";
/// A 6.1 cloud kernel has about 130 000 sites; 8 Mi is far beyond any.
const MAX_RELOCS: usize = 8 << 20;
const MAX_RELOCS_FILE: u64 = 8 + 9 * (MAX_RELOCS as u64);

/// The bytes of a relocation table file for [`Vmlinux::load_with_relocs`].
pub fn write_relocs(relocs: &[Reloc]) -> Vec<u8> {
    let mut out = Vec::with_capacity(relocs.len().saturating_mul(9).saturating_add(8));
    out.extend_from_slice(RELOCS_MAGIC);
    for r in relocs {
        out.extend_from_slice(&r.addr.to_le_bytes());
        out.push(match r.kind {
            RelocKind::Abs32 => 0,
            RelocKind::Abs64 => 1,
            RelocKind::NegPc32 => 2,
        });
    }
    out
}

/// A relocation table file's sites, sorted; None if it is not one.
pub fn parse_relocs(b: &[u8]) -> Option<Vec<Reloc>> {
    let body = b.strip_prefix(RELOCS_MAGIC)?;
    if body.len() % 9 != 0 || body.len() / 9 > MAX_RELOCS {
        return None;
    }
    let mut out = body
        .chunks_exact(9)
        .map(|c| {
            let kind = match c.get(8)? {
                0 => RelocKind::Abs32,
                1 => RelocKind::Abs64,
                2 => RelocKind::NegPc32,
                _ => return None,
            };
            Some(Reloc {
                addr: u64_at(c, 0)?,
                kind,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    out.sort_by_key(|r| r.addr);
    Some(out)
}

/// How KASLR changes a relocation of type `ty` against a symbol in section
/// `shndx`, as the kernel's relocs tool decides: absolute references move
/// with the slide, PC-relative ones to per-CPU symbols against it, the rest
/// not at all.
/// Symbols the relocs tool (arch/x86/tools/relocs.c) relocates although
/// they are absolute or lie in the per-CPU section: its `S_REL` list and
/// `is_percpu_sym()` exceptions.
fn moves_with_kernel(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "__init_begin",
        "__init_end",
        "__per_cpu_load",
        "__x86_cpu_dev_start",
        "__x86_cpu_dev_end",
        "__alt_instructions",
        "__alt_instructions_end",
        "__iommu_table",
        "__iommu_table_end",
        "__apicdrivers",
        "__apicdrivers_end",
        "__smp_locks",
        "__smp_locks_end",
        "__start_builtin_fw",
        "__end_builtin_fw",
        "__tracedata_start",
        "__tracedata_end",
        "__start_notes",
        "__stop_notes",
        "__end_rodata",
        "__end_rodata_aligned",
        "__end_rodata_hpage_align",
        "__initramfs_start",
        "jiffies",
        "jiffies_64",
        "__vvar_page",
        "_end",
    ];
    /// `__start_X` and `__stop_X` for these X.
    const BOUNDS: &[&str] = &[
        "__ksymtab",
        "__ksymtab_gpl",
        "__kcrctab",
        "__kcrctab_gpl",
        "__param",
        "__modver",
        "__bug_table",
    ];
    if EXACT.contains(&name) || name.starts_with("init_per_cpu_") {
        return true;
    }
    if ["__start_pci_", "__end_pci_"]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
    {
        return true;
    }
    ["__start_", "__stop_"]
        .iter()
        .filter_map(|p| name.strip_prefix(p))
        .any(|rest| BOUNDS.contains(&rest))
}

fn reloc_kind(ty: u32, shndx: u16, is_percpu: bool) -> Option<RelocKind> {
    match ty {
        _ if shndx == SHN_UNDEF => None,
        R_X86_64_PC32 | R_X86_64_PLT32 if is_percpu => Some(RelocKind::NegPc32),
        R_X86_64_32 | R_X86_64_32S if !is_percpu && shndx != SHN_ABS => Some(RelocKind::Abs32),
        R_X86_64_64 if !is_percpu && shndx != SHN_ABS => Some(RelocKind::Abs64),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::testkit::synthetic::elf;

    #[test]
    fn reads_sections_and_picks_kaslr_relocations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        let base = 0xffff_ffff_8100_0000;
        let text: Vec<u8> = (0..64u8).collect();
        std::fs::write(
            &p,
            elf(
                base,
                &text,
                &[
                    (base + 4, R_X86_64_32S, 1),
                    (base + 8, R_X86_64_PC32, 1), // PC-relative: unchanged
                    (base + 12, R_X86_64_32, 2),  // absolute symbol: unchanged
                    (base + 16, R_X86_64_PC32, 3), // per-CPU: minus the slide
                    (base + 24, R_X86_64_64, 1),
                    (base + 100, R_X86_64_64, 1), // outside the range asked
                ],
            ),
        )
        .unwrap();
        let v = Vmlinux::load(&p).unwrap();
        assert_eq!(v.bytes(base + 2, 3).unwrap(), vec![2, 3, 4]);
        assert_eq!(v.bytes(base + 62, 4), None);
        let r = v.kaslr_relocations(base, base + 64).unwrap();
        assert_eq!(
            r,
            vec![
                Reloc {
                    addr: base + 4,
                    kind: RelocKind::Abs32
                },
                Reloc {
                    addr: base + 16,
                    kind: RelocKind::NegPc32
                },
                Reloc {
                    addr: base + 24,
                    kind: RelocKind::Abs64
                },
            ]
        );
    }

    #[test]
    fn the_relocs_tools_exceptions_by_name() {
        for n in [
            "__init_begin",
            "__per_cpu_load",
            "init_per_cpu__gdt_page",
            "__start___ksymtab_gpl",
            "__stop___param",
            "__start_pci_fixups_early",
            "_end",
        ] {
            assert!(moves_with_kernel(n), "{n}");
        }
        for n in [
            "",
            "__start___ksymtab_strings",
            "__start_pci_",
            "fixed_percpu_data",
            "__end",
        ] {
            assert!(!moves_with_kernel(n), "{n}");
        }
    }

    /// A stripped vmlinux (no `.rela.*`, no symbols) with its bzImage's
    /// relocation table stored beside it: the table is the relocations,
    /// and the 32-bit sites in its code are the addresses it loads.
    #[test]
    fn a_stripped_vmlinux_takes_its_relocations_from_the_stored_table() {
        let dir = tempfile::tempdir().unwrap();
        let (p, t) = (dir.path().join("vmlinux"), dir.path().join("relocs"));
        let base = 0xffff_ffff_8100_0000u64;
        let mut text = vec![0u8; 64];
        // mov $0xffffffff81000020, %rax: its immediate at +4.
        text[4..8].copy_from_slice(&(base as u32 + 0x20).to_le_bytes());
        std::fs::write(&p, elf(base, &text, &[])).unwrap();
        let table = [
            Reloc {
                addr: base + 24,
                kind: RelocKind::Abs64,
            },
            Reloc {
                addr: base + 4,
                kind: RelocKind::Abs32,
            },
            Reloc {
                addr: base + 200,
                kind: RelocKind::NegPc32,
            },
        ];
        std::fs::write(&t, write_relocs(&table)).unwrap();
        let v = Vmlinux::load_with_relocs(&p, &t).unwrap();
        let r = v.kaslr_relocations(base, base + 64).unwrap();
        assert_eq!(r, vec![table[1], table[0]]);
        assert_eq!(v.pointer_words(base, base + 64).len(), 1);
        assert_eq!(v.referenced_addresses().unwrap(), vec![base + 0x20]);
        // Not a table: refused, whole or cut.
        let mut b = write_relocs(&table);
        b.pop();
        assert!(parse_relocs(&b).is_none());
        b.push(7);
        assert!(parse_relocs(&b).is_none());
        assert!(parse_relocs(b"XFRELOC0").is_none());
        assert_eq!(parse_relocs(b"XFRELOC1"), Some(vec![]));
        std::fs::write(&t, b"nonsense").unwrap();
        assert!(Vmlinux::load_with_relocs(&p, &t).is_err());
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, b"\x7fELF\x02\x01garbage").unwrap();
        assert!(Vmlinux::load(&p).is_err());
        let mut e = elf(
            0xffff_ffff_8100_0000,
            &[0; 16],
            &[(0xffff_ffff_8100_0000, 11, 99)],
        );
        std::fs::write(&p, &e).unwrap();
        let v = Vmlinux::load(&p).unwrap();
        assert!(v
            .kaslr_relocations(0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010)
            .is_err());
        // A section count beyond the file.
        e[0x3c..0x3e].copy_from_slice(&0xfff0u16.to_le_bytes());
        std::fs::write(&p, &e).unwrap();
        assert!(Vmlinux::load(&p).is_err());
    }
}
