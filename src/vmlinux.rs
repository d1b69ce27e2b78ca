//! The trusted build's vmlinux: bytes of its sections by link-time address,
//! to compare with what the running guest holds.

use std::path::Path;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug)]
struct Section {
    addr: u64,
    offset: u64,
    size: u64,
}

pub struct Vmlinux {
    data: Vec<u8>,
    sections: Vec<Section>,
}

impl Vmlinux {
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read vmlinux {}", path.display()), e))?;
        Self::parse(data)
            .ok_or_else(|| Error::Input(format!("{} is not an x86_64 ELF vmlinux", path.display())))
    }

    pub fn parse(data: Vec<u8>) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
        if data.get(0..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let shoff = usize::try_from(u64_at(0x28)?).ok()?;
        let shentsize = usize::from(u16_at(0x3a)?);
        let shnum = usize::from(u16_at(0x3c)?);
        let mut sections = Vec::new();
        for i in 0..shnum {
            let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
            let (ty, addr, offset, size) = (
                u32_at(sh + 4)?,
                u64_at(sh + 0x10)?,
                u64_at(sh + 0x18)?,
                u64_at(sh + 0x20)?,
            );
            // SHT_NOBITS (.bss) has no bytes in the file.
            if ty == 8 || addr == 0 || offset.checked_add(size)? > data.len() as u64 {
                continue;
            }
            sections.push(Section { addr, offset, size });
        }
        Some(Vmlinux { data, sections })
    }

    /// `len` bytes at link-time address `addr`, if one section holds them.
    pub fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| {
            addr >= s.addr && addr - s.addr < s.size && len <= s.size - (addr - s.addr)
        })?;
        let start = (s.offset + (addr - s.addr)) as usize;
        self.data.get(start..start + len as usize)
    }

    pub fn u64_at(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    /// The NUL-terminated string at `addr` (at most 512 bytes).
    pub fn cstring(&self, addr: u64) -> Option<String> {
        let s = self
            .sections
            .iter()
            .find(|s| addr >= s.addr && addr - s.addr < s.size)?;
        let avail = (s.size - (addr - s.addr)).min(512);
        let b = self.bytes(addr, avail)?;
        let n = b.iter().position(|&c| c == 0)?;
        String::from_utf8(b[..n].to_vec()).ok()
    }
}
