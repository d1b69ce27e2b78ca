//! A stock kernel's bzImage, for a build whose distribution ships no debug
//! package: the stripped vmlinux and the KASLR relocation table inside its
//! compressed payload.
//!
//! The payload decompresses to `vmlinux.bin` (`objcopy -R .comment -S
//! vmlinux`, still an ELF with its section headers) with `vmlinux.relocs`
//! (arch/x86/tools/relocs.c) appended; the decompressor's
//! handle_relocations() reads the table backwards from the end of the
//! buffer, and so does [`unpack`].
#![deny(clippy::arithmetic_side_effects)]

use crate::abi::le::{u16_at, u32_at, u64_at};
use crate::kernel::vmlinux::{Reloc, RelocKind};

/// Largest decompressed payload accepted (Debian's largest vmlinux with
/// its relocations is under 80 MiB).
pub const MAX_OUTPUT: usize = 512 << 20;
/// The LZ4 legacy frame's magic (little-endian), as `lz4 -l` writes it.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Each block of an LZ4 legacy frame decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Section headers an ELF may have (ELF's own limit without extensions).
const MAX_SECTIONS: usize = 0xff00;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;

pub struct Unpacked {
    /// The ELF `vmlinux.bin`: a vmlinux without symbols or debug info.
    pub vmlinux: Vec<u8>,
    /// Every site KASLR rewrites, by link-time address, sorted.
    pub relocs: Vec<Reloc>,
}

/// The vmlinux and relocation table of an x86 bzImage.
pub fn unpack(bzimage: &[u8]) -> Result<Unpacked, String> {
    unpack_bounded(bzimage, MAX_OUTPUT)
}

fn unpack_bounded(bzimage: &[u8], max_output: usize) -> Result<Unpacked, String> {
    let compressed = payload(bzimage)?;
    let mut out = decompress(compressed, max_output)?;
    let elf = ElfLayout::parse(&out).map_err(|e| format!("the decompressed kernel: {e}"))?;
    let image = elf
        .image()
        .ok_or("the decompressed vmlinux has no allocated sections")?;
    let table = out
        .get(elf.len..)
        .ok_or("the decompressed vmlinux is shorter than its ELF headers say")?;
    let relocs = parse_relocs(table, image)?;
    out.truncate(elf.len);
    Ok(Unpacked {
        vmlinux: out,
        relocs,
    })
}

/// The compressed payload that the boot header (Documentation/x86/boot.rst)
/// points at.
fn payload(bz: &[u8]) -> Result<&[u8], String> {
    let short = || "not a bzImage: shorter than its boot header".to_string();
    if u16_at(bz, 0x1fe).ok_or_else(short)? != 0xaa55 || bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage: no boot sector signature or \"HdrS\" header".into());
    }
    let version = u16_at(bz, 0x206).ok_or_else(short)?;
    if version < 0x0208 {
        return Err(format!(
            "boot protocol {}.{:02}: older than 2.08, no payload fields",
            version >> 8,
            version & 0xff
        ));
    }
    let setup_sects = match *bz.get(0x1f1).ok_or_else(short)? {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = setup_sects.saturating_add(1).saturating_mul(512);
    let (off, len) = (
        u32_at(bz, 0x248).ok_or_else(short)?,
        u32_at(bz, 0x24c).ok_or_else(short)?,
    );
    let start = usize::try_from(off)
        .ok()
        .and_then(|o| o.checked_add(pm_start));
    let end = start.and_then(|s| s.checked_add(usize::try_from(len).ok()?));
    match (start, end) {
        (Some(s), Some(e)) if len > 0 => bz.get(s..e).ok_or_else(|| {
            format!(
                "the payload ({len} bytes at {s:#x}) ends past the bzImage's {} bytes",
                bz.len()
            )
        }),
        _ => Err(format!("bad payload offset {off:#x} or length {len:#x}")),
    }
}

fn decompress(p: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let unsupported = |what: &str, config: &str| {
        Err(format!(
            "the kernel payload is {what}-compressed ({config}): only LZ4 (CONFIG_KERNEL_LZ4) is supported"
        ))
    };
    match p {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(p, max),
        [0x1f, 0x8b, ..] => unsupported("gzip", "CONFIG_KERNEL_GZIP"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => unsupported("XZ", "CONFIG_KERNEL_XZ"),
        [b'B', b'Z', b'h', ..] => unsupported("bzip2", "CONFIG_KERNEL_BZIP2"),
        [0x5d, 0, 0, ..] => unsupported("LZMA", "CONFIG_KERNEL_LZMA"),
        [0x89, b'L', b'Z', b'O', ..] => unsupported("LZO", "CONFIG_KERNEL_LZO"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => unsupported("zstd", "CONFIG_KERNEL_ZSTD"),
        _ => Err(format!(
            "the kernel payload starts with {:02x?}: no known compression",
            p.get(..p.len().min(6)).unwrap_or_default()
        )),
    }
}

/// An LZ4 legacy frame (`lz4 -l`, as lib/decompress_unlz4.c reads it):
/// the magic, then blocks of a little-endian u32 compressed size and an
/// independent LZ4 block of at most 8 MiB; a repeated magic starts another
/// frame. The kernel's `_with_size` rule appends the uncompressed size as a
/// last u32, which must then match.
fn lz4_legacy(p: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    // Each block is decompressed here, then copied: zeroing a fresh 8 MiB
    // of `out` for every block would cost 8 MiB a block, however small.
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK.min(max)];
    let mut at = 4usize;
    while at < p.len() {
        let Some(word) = u32_at(p, at) else {
            return Err(format!(
                "LZ4 payload: {} stray bytes at its end",
                p.len().saturating_sub(at)
            ));
        };
        let data = at.saturating_add(4);
        if word == LZ4_LEGACY_MAGIC {
            at = data;
            continue;
        }
        if data == p.len() {
            // Not a block: the size the build appended. It is the length
            // modulo 2^32.
            if word == out.len() as u32 {
                break;
            }
            return Err(format!(
                "LZ4 payload: its last word ({word}) is neither a block nor the decompressed size ({})",
                out.len()
            ));
        }
        let end = usize::try_from(word)
            .ok()
            .and_then(|n| data.checked_add(n))
            .filter(|&e| e <= p.len() && word > 0)
            .ok_or_else(|| {
                format!("LZ4 payload: a block of {word} bytes at {at:#x} past its end")
            })?;
        let room = max.saturating_sub(out.len()).min(LZ4_LEGACY_BLOCK);
        let input = p.get(data..end).unwrap_or_default();
        let dest = block.get_mut(..room).unwrap_or_default();
        let n = lz4_flex::block::decompress_into(input, dest).map_err(|e| {
            if room < LZ4_LEGACY_BLOCK {
                format!("LZ4 payload: decompresses past the bound of {max} bytes")
            } else {
                format!("LZ4 payload: the block at {at:#x}: {e}")
            }
        })?;
        out.extend_from_slice(block.get(..n).unwrap_or_default());
        at = end;
    }
    if out.is_empty() {
        return Err("LZ4 payload: no data".into());
    }
    Ok(out)
}

/// The table relocs.c writes (a stop, the 64-bit sites, a stop, the
/// inverse 32-bit sites, a stop, the 32-bit sites), read backwards from its
/// end as handle_relocations() does. Each entry is the low 32 bits of a
/// link-time address in the kernel's top 2 GiB; every one must lie in the
/// image (`[lo, hi)` of its allocated sections) and the first stop must be
/// the table's first word.
fn parse_relocs(table: &[u8], image: (u64, u64)) -> Result<Vec<Reloc>, String> {
    if table.is_empty() {
        // A kernel built without CONFIG_RELOCATABLE.
        return Ok(Vec::new());
    }
    let chunks = table.chunks_exact(4);
    if !chunks.remainder().is_empty() {
        return Err(format!(
            "the relocation table after the vmlinux is {} bytes: not whole 32-bit entries",
            table.len()
        ));
    }
    let words: Vec<u32> = chunks.filter_map(|c| u32_at(c, 0)).collect();
    let mut i = words.len();
    let mut out = Vec::new();
    for (kind, list) in [
        (RelocKind::Abs32, "32-bit"),
        (RelocKind::NegPc32, "inverse 32-bit"),
        (RelocKind::Abs64, "64-bit"),
    ] {
        loop {
            i = i.checked_sub(1).ok_or_else(|| {
                format!("the relocation table has no stop before its {list} list")
            })?;
            let w = words.get(i).copied().unwrap_or_default();
            if w == 0 {
                break;
            }
            // Sign-extended, as handle_relocations()'s `long extended = *reloc`.
            let addr = i64::from(w as i32) as u64;
            let inside = addr >= image.0
                && addr
                    .checked_add(kind.width())
                    .is_some_and(|end| end <= image.1);
            if !inside {
                return Err(format!(
                    "a {list} relocation at {addr:#x} lies outside the image [{:#x}, {:#x})",
                    image.0, image.1
                ));
            }
            out.push(Reloc { addr, kind });
        }
    }
    if i != 0 {
        return Err(format!(
            "the relocation table's first stop is {i} words after the vmlinux's end: not a relocs table"
        ));
    }
    out.sort_by_key(|r| r.addr);
    Ok(out)
}

/// One section header of an in-memory ELF.
#[derive(Clone, Debug)]
pub(crate) struct ElfSection {
    pub name: String,
    pub ty: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

/// The section headers of an x86_64 ELF held in memory, and its length:
/// the end of the furthest headers or section contents.
pub(crate) struct ElfLayout {
    pub sections: Vec<ElfSection>,
    pub len: usize,
}

impl ElfLayout {
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.get(0..6) != Some(b"\x7fELF\x02\x01") || u16_at(b, 0x12) != Some(62) {
            return Err("not a 64-bit little-endian x86_64 ELF".into());
        }
        let bad = |what: &str| format!("ELF: {what}");
        let field = |o: usize| u64_at(b, o).ok_or_else(|| bad("truncated header"));
        let half = |o: usize| {
            u16_at(b, o)
                .map(u64::from)
                .ok_or_else(|| bad("truncated header"))
        };
        let (phoff, shoff) = (field(0x20)?, field(0x28)?);
        let (phentsize, phnum) = (half(0x36)?, half(0x38)?);
        let (shentsize, shnum, shstrndx) = (half(0x3a)?, half(0x3c)?, half(0x3e)?);
        let table_end = |off: u64, ent: u64, num: u64| {
            ent.checked_mul(num)
                .and_then(|n| off.checked_add(n))
                .filter(|&e| e <= b.len() as u64)
        };
        let mut len = 64u64;
        if phnum > 0 {
            len = len.max(
                table_end(phoff, phentsize, phnum)
                    .ok_or_else(|| bad("program headers past its end"))?,
            );
        }
        if shnum == 0 || shentsize < 64 || shnum > MAX_SECTIONS as u64 {
            return Err(bad("no usable section headers"));
        }
        len = len.max(
            table_end(shoff, shentsize, shnum)
                .ok_or_else(|| bad("section headers past its end"))?,
        );
        let mut raw = Vec::new();
        for i in 0..shnum {
            let h = shentsize
                .checked_mul(i)
                .and_then(|o| o.checked_add(shoff))
                .and_then(|o| usize::try_from(o).ok())
                .ok_or_else(|| bad("section header offset overflow"))?;
            let at = |o: usize| h.saturating_add(o);
            let trunc = || bad("truncated section header");
            let s = ElfSection {
                name: String::new(),
                ty: u32_at(b, at(4)).ok_or_else(trunc)?,
                flags: u64_at(b, at(8)).ok_or_else(trunc)?,
                addr: u64_at(b, at(0x10)).ok_or_else(trunc)?,
                offset: u64_at(b, at(0x18)).ok_or_else(trunc)?,
                size: u64_at(b, at(0x20)).ok_or_else(trunc)?,
            };
            if s.ty != SHT_NOBITS {
                let end = s
                    .offset
                    .checked_add(s.size)
                    .filter(|&e| e <= b.len() as u64)
                    .ok_or_else(|| bad(&format!("section {i}'s contents past its end")))?;
                len = len.max(end);
            }
            raw.push((u32_at(b, h).ok_or_else(trunc)?, s));
        }
        let names = usize::try_from(shstrndx)
            .ok()
            .and_then(|i| raw.get(i))
            .and_then(|(_, s)| slice(b, s.offset, s.size))
            .ok_or_else(|| bad("no section name table"))?;
        let sections = raw
            .into_iter()
            .map(|(name_off, mut s)| {
                s.name = usize::try_from(name_off)
                    .ok()
                    .and_then(|o| names.get(o..))
                    .and_then(|rest| {
                        let end = rest.iter().position(|&c| c == 0)?;
                        std::str::from_utf8(rest.get(..end)?).ok()
                    })
                    .unwrap_or_default()
                    .to_string();
                s
            })
            .collect();
        Ok(ElfLayout {
            sections,
            len: usize::try_from(len).map_err(|_| bad("too large"))?,
        })
    }

    /// The first section called `name` with contents in the file.
    pub fn section(&self, name: &str) -> Option<&ElfSection> {
        self.sections
            .iter()
            .find(|s| s.name == name && s.ty != SHT_NOBITS)
    }

    /// The contents of `s` in `b` (the bytes this layout was parsed from).
    pub fn data<'b>(&self, b: &'b [u8], s: &ElfSection) -> Option<&'b [u8]> {
        if s.ty == SHT_NOBITS {
            return None;
        }
        slice(b, s.offset, s.size)
    }

    /// `[lowest start, highest end)` of the allocated sections linked at a
    /// non-zero address (the per-CPU template is linked at 0).
    pub fn image(&self) -> Option<(u64, u64)> {
        let mut it = self
            .sections
            .iter()
            .filter(|s| s.flags & SHF_ALLOC != 0 && s.addr != 0)
            .map(|s| (s.addr, s.addr.saturating_add(s.size)));
        let first = it.next()?;
        Some(it.fold(first, |(lo, hi), (a, e)| (lo.min(a), hi.max(e))))
    }
}

fn slice(b: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    b.get(start..start.checked_add(usize::try_from(size).ok()?)?)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    /// A section of a synthetic ELF: name, type, flags, address, and its
    /// contents (for SHT_NOBITS only their length counts).
    pub(crate) struct Sec<'a> {
        pub name: &'a str,
        pub ty: u32,
        pub flags: u64,
        pub addr: u64,
        pub data: Vec<u8>,
    }

    /// A minimal x86_64 ELF with `secs` (after the null section) and a
    /// `.shstrtab`, section headers last, as objcopy lays them out.
    pub(crate) fn elf(secs: &[Sec]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        let mut names = vec![0u8];
        let mut hdrs: Vec<(u32, u32, u64, u64, u64, u64)> = vec![(0, 0, 0, 0, 0, 0)];
        for s in secs {
            while !out.len().is_multiple_of(16) {
                out.push(0);
            }
            let off = out.len() as u64;
            if s.ty != SHT_NOBITS {
                out.extend_from_slice(&s.data);
            }
            hdrs.push((
                names.len() as u32,
                s.ty,
                s.flags,
                s.addr,
                off,
                s.data.len() as u64,
            ));
            names.extend_from_slice(s.name.as_bytes());
            names.push(0);
        }
        let shstr_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");
        let off = out.len() as u64;
        out.extend_from_slice(&names);
        hdrs.push((shstr_name, 3, 0, 0, off, names.len() as u64));
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        for (name, ty, flags, addr, off, size) in &hdrs {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            h[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&h);
        }
        out[0..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(hdrs.len() as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((hdrs.len() - 1) as u16).to_le_bytes());
        out
    }

    const TEXT: u64 = 0xffff_ffff_8100_0000;

    fn kernel_elf() -> Vec<u8> {
        elf(&[
            Sec {
                name: ".text",
                ty: 1,
                flags: 6,
                addr: TEXT,
                data: (0..=255u8).cycle().take(0x3000).collect(),
            },
            Sec {
                name: ".data..percpu",
                ty: 1,
                flags: 3,
                addr: 0,
                data: vec![0; 0x100],
            },
            Sec {
                name: ".bss",
                ty: SHT_NOBITS,
                flags: 3,
                addr: TEXT + 0x3000,
                data: vec![0; 0x1000],
            },
        ])
    }

    /// The table relocs.c writes for these sites.
    fn relocs_table(abs32: &[u64], neg: &[u64], abs64: &[u64]) -> Vec<u8> {
        let mut t = Vec::new();
        for list in [abs64, neg, abs32] {
            t.extend_from_slice(&0u32.to_le_bytes());
            for &a in list {
                t.extend_from_slice(&(a as u32).to_le_bytes());
            }
        }
        t
    }

    /// An LZ4 legacy frame of `data` in blocks of `block` bytes, with the
    /// size appended as the kernel's `_with_size` rule does.
    fn lz4_legacy_frame(data: &[u8], block: usize, with_size: bool) -> Vec<u8> {
        let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for c in data.chunks(block) {
            let z = lz4_flex::block::compress(c);
            p.extend_from_slice(&(z.len() as u32).to_le_bytes());
            p.extend_from_slice(&z);
        }
        if with_size {
            p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        p
    }

    fn bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            setup_sects as usize
        };
        let pm = (sects + 1) * 512;
        let mut b = vec![0u8; pm + 0x40];
        b[0x1f1] = setup_sects;
        b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0xee; 16]); // whatever follows the payload
        b
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let vmlinux = kernel_elf();
        let mut full = vmlinux.clone();
        full.extend(relocs_table(
            &[TEXT + 0x20, TEXT + 0x10],
            &[TEXT + 0x2ffc],
            &[TEXT + 0x100, TEXT + 0x8],
        ));
        (vmlinux, full)
    }

    #[test]
    fn unpacks_lz4_payload_and_reads_relocations_backwards() {
        let (vmlinux, full) = sample();
        for (sects, block, with_size) in [(0u8, 1000, true), (7, 1 << 20, false)] {
            let bz = bzimage(sects, &lz4_legacy_frame(&full, block, with_size));
            let u = unpack(&bz).unwrap();
            assert_eq!(u.vmlinux, vmlinux);
            let r = |addr, kind| Reloc { addr, kind };
            assert_eq!(
                u.relocs,
                vec![
                    r(TEXT + 0x8, RelocKind::Abs64),
                    r(TEXT + 0x10, RelocKind::Abs32),
                    r(TEXT + 0x20, RelocKind::Abs32),
                    r(TEXT + 0x100, RelocKind::Abs64),
                    r(TEXT + 0x2ffc, RelocKind::NegPc32),
                ]
            );
        }
        // Two frames, as concatenated lz4 files.
        let mut p = lz4_legacy_frame(&full[..500], 500, false);
        p.extend(lz4_legacy_frame(&full[500..], 4096, false));
        p.extend_from_slice(&(full.len() as u32).to_le_bytes());
        assert_eq!(unpack(&bzimage(1, &p)).unwrap().vmlinux, vmlinux);
        // No relocation table: a kernel that does not relocate.
        let bz = bzimage(1, &lz4_legacy_frame(&vmlinux, 4096, true));
        assert!(unpack(&bz).unwrap().relocs.is_empty());
    }

    #[test]
    fn names_unsupported_compressions() {
        for (magic, name) in [
            (&b"\x1f\x8b\x08\0"[..], "gzip"),
            (b"\xfd7zXZ\0", "XZ"),
            (b"BZh9", "bzip2"),
            (b"\x28\xb5\x2f\xfd", "zstd"),
        ] {
            let e = unpack(&bzimage(1, magic)).err().unwrap();
            assert!(e.contains(name), "{e}");
        }
        assert!(unpack(&bzimage(1, b"junk")).is_err());
    }

    #[test]
    fn hostile_bzimages_are_errors() {
        let (_, full) = sample();
        let good = bzimage(1, &lz4_legacy_frame(&full, 1000, true));
        assert!(unpack(&good).is_ok());
        assert!(unpack(&[]).is_err());
        // Every truncation of the payload (16 bytes follow it), and
        // header fields pointing anywhere.
        for n in (0..good.len() - 16).step_by(7) {
            assert!(unpack(&good[..n]).is_err(), "{n}");
        }
        for (at, v) in [
            (0x248, u32::MAX),
            (0x24c, u32::MAX),
            (0x24c, 0),
            (0x248, 0xffff_fff0),
        ] {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert!(unpack(&b).is_err(), "{at:#x}={v:#x}");
        }
        let mut b = good.clone();
        b[0x202] = b'X';
        assert!(unpack(&b).is_err());
        let mut b = good.clone();
        b[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(unpack(&b).is_err());
        // Corrupt every byte of the payload in turn: never a panic.
        let pm = 2 * 512 + 0x40;
        for i in (pm..good.len() - 16).step_by(3) {
            let mut b = good.clone();
            b[i] ^= 0xa5;
            let _ = unpack(&b);
        }
        // A block size past the end, a wrong size trailer, stray bytes.
        let mut p = lz4_legacy_frame(&full, 1000, true);
        p[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&bzimage(1, &p)).is_err());
        let mut p = lz4_legacy_frame(&full, 1000, false);
        p.extend_from_slice(&7u32.to_le_bytes());
        assert!(unpack(&bzimage(1, &p)).is_err());
        let mut p = lz4_legacy_frame(&full, 1000, true);
        p.push(0);
        assert!(unpack(&bzimage(1, &p)).is_err());
        // A zero-length block.
        let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(unpack(&bzimage(1, &p)).is_err());
    }

    #[test]
    fn the_output_is_bounded() {
        let (_, full) = sample();
        let bz = bzimage(1, &lz4_legacy_frame(&full, 1000, true));
        assert!(unpack_bounded(&bz, full.len()).is_ok());
        let e = unpack_bounded(&bz, full.len() - 1).err().unwrap();
        assert!(e.contains("bound"), "{e}");
        // A block that claims more than 8 MiB.
        let big = vec![0u8; LZ4_LEGACY_BLOCK + 1];
        let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        let z = lz4_flex::block::compress(&big);
        p.extend_from_slice(&(z.len() as u32).to_le_bytes());
        p.extend_from_slice(&z);
        assert!(unpack(&bzimage(1, &p)).is_err());
    }

    #[test]
    fn relocation_tables_are_checked() {
        let img = (TEXT, TEXT + 0x3000);
        assert_eq!(
            parse_relocs(&relocs_table(&[TEXT], &[], &[]), img).unwrap(),
            vec![Reloc {
                addr: TEXT,
                kind: RelocKind::Abs32
            }]
        );
        // Outside the image, an 8-byte site past its end, a positive entry.
        for t in [
            relocs_table(&[TEXT + 0x3000], &[], &[]),
            relocs_table(&[], &[], &[TEXT + 0x2ffc]),
            relocs_table(&[0x1000], &[], &[]),
        ] {
            assert!(parse_relocs(&t, img).is_err());
        }
        // Missing stops, words before the first stop, a partial word.
        let t = relocs_table(&[TEXT], &[TEXT], &[TEXT]);
        assert!(parse_relocs(&t[4..], img).is_err());
        let mut longer = (TEXT as u32).to_le_bytes().to_vec();
        longer.extend_from_slice(&t);
        assert!(parse_relocs(&longer, img).is_err());
        assert!(parse_relocs(&t[..t.len() - 1], img).is_err());
        assert!(parse_relocs(&[0, 0, 0, 0], img).is_err());
        assert!(parse_relocs(&[0; 12], img).unwrap().is_empty());
    }

    #[test]
    fn elf_layout_finds_its_length_and_refuses_garbage() {
        let e = kernel_elf();
        let l = ElfLayout::parse(&e).unwrap();
        assert_eq!(l.len, e.len());
        assert_eq!(l.image(), Some((TEXT, TEXT + 0x4000)));
        assert!(l.section(".text").is_some() && l.section(".bss").is_none());
        for n in 0..e.len() {
            assert!(ElfLayout::parse(&e[..n]).is_err());
        }
        for i in 0..e.len() {
            let mut b = e.clone();
            b[i] = 0xff;
            let _ = ElfLayout::parse(&b);
        }
    }
}
