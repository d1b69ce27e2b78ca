//! Module identity by content: is the code of a loaded module the code of
//! the build's module of that name?
//!
//! A name is no proof: a rootkit can load (or rename its `struct module`)
//! under the name of a module the build ships. So the build's `.ko` files
//! are kept beside its System.map (`modules.d/NAME.ko`), and a loaded
//! module counts as the build's only if its core code is what 6.1's loader
//! makes of that file (kernel/module/main.c):
//!
//! - `layout_sections()` puts every allocated executable section that is
//!   not `.init*` first, in section-header order, each at its alignment,
//!   then rounds up to a page (`core_layout.text_size`); the data groups
//!   follow in the same memory, and `move_module()` zeroes it all first.
//! - `apply_relocate_add()` writes each relocation of that code: checked
//!   here against where the symbol is (the trusted System.map for the
//!   kernel's exports, the module's own layout for its sections, the code
//!   of a loaded build module for another module's exports).
//! - `module_finalize()` and later patching rewrite the sites listed in the
//!   module's tables (alternatives, paravirt calls, retpolines, return
//!   thunks, IBT seals, SMP lock prefixes, static branches, static calls,
//!   ftrace's call sites): those bytes are not compared (what they may hold
//!   is the kernel-text check's rules; modules do not get them yet).
//!
//! Every other byte of `[base, base + text_size)`, padding included, must
//! equal the file's.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::LittleEndian as LE;

use crate::base::error::{Error, Result};
use crate::host::files;
use crate::kernel::guest::KernelView;
use crate::kernel::modules::Module;

/// A `.ko` larger than this is not read (the largest of Debian's cloud
/// kernel is a few MiB).
pub const MAX_KO: u64 = 64 << 20;
/// `.ko` files taken from one directory tree, at most.
const MAX_FILES: usize = 16384;
/// Directory levels followed below the modules directory.
const MAX_DEPTH: usize = 8;
/// Code compared per module, at most (a larger `text_size` in the guest is
/// itself a difference).
const MAX_TEXT: u64 = 64 << 20;
/// Module code read from the guest per view, at most: a guest that lists
/// thousands of modules under build names, each the size of the build's
/// file, gets the rest reported as not compared rather than read.
const MAX_COMPARED: u64 = 256 << 20;
/// `SHF_RO_AFTER_INIT`: what the loader marks `.data..ro_after_init` and
/// `__jump_table` with before laying them out.
const SHF_RO_AFTER_INIT: u64 = 0x0020_0000;
const PAGE: u64 = 4096;

/// The build's `.ko` files, by module name (`-` read as `_`).
#[derive(Clone, Debug, Default)]
pub struct ModuleFiles {
    files: BTreeMap<String, PathBuf>,
}

impl ModuleFiles {
    /// Every `*.ko` under `dir` (a module tree such as `/lib/modules/VER`,
    /// or a stored build's flat `modules.d`), not following links. With
    /// `trusted`, every file must be owned by root and written by nobody
    /// else (a stored build).
    pub fn scan(dir: &Path, trusted: bool) -> Result<ModuleFiles> {
        let mut out = ModuleFiles::default();
        let mut stack = vec![(dir.to_path_buf(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| {
                Error::io(format!("cannot read modules directory {}", d.display()), e)
            })?;
            for e in entries {
                let e = e.map_err(|e| Error::io(format!("cannot read {}", d.display()), e))?;
                let p = e.path();
                let meta = std::fs::symlink_metadata(&p)
                    .map_err(|e| Error::io(format!("cannot stat {}", p.display()), e))?;
                if meta.is_dir() && depth < MAX_DEPTH {
                    stack.push((p, depth.saturating_add(1)));
                    continue;
                }
                let Some(name) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                if trusted {
                    files::check_trusted(&meta, &p, "module file")?;
                }
                if out.files.len() >= MAX_FILES {
                    return Err(Error::Input(format!(
                        "{} holds more than {MAX_FILES} modules",
                        dir.display()
                    )));
                }
                out.files.insert(name.replace('-', "_"), p);
            }
        }
        Ok(out)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(PathBuf::as_path)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Where a relocation of the module's code leads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `offset` bytes into the module's core memory.
    Local(u64),
    /// A symbol the module imports, by name.
    Import(String),
    /// Somewhere the loader decides at run time (per-CPU data, init
    /// memory, absolute symbols): not compared.
    Unchecked,
}

#[derive(Clone, Debug)]
struct Reloc {
    /// Offset in the core code.
    at: u64,
    /// 4 or 8 bytes.
    width: u8,
    /// PC-relative (`PC32`, `PLT32`, `PC64`) or absolute.
    relative: bool,
    /// `R_X86_64_32` (zero-extended) rather than `32S`.
    unsigned: bool,
    target: Target,
    addend: i64,
}

/// What the loader makes of a `.ko`'s core code, before relocation.
#[derive(Clone, Debug)]
pub struct KoImage {
    /// The executable sections laid out, padding zero, `text_size` long.
    code: Vec<u8>,
    /// Byte ranges `[start, end)` of the code that patching rewrites.
    sites: Vec<(u64, u64)>,
    relocs: Vec<Reloc>,
}

/// What a loaded module is, by content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Its code is the build's module of its name.
    Build,
    /// It is not: why, in words.
    Differs(String),
    /// It could not be compared (its memory, or the build's file, could
    /// not be read): why.
    Unverified(String),
}

fn bad(what: &str) -> String {
    format!("not a relocatable x86-64 module: {what}")
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    let a = a.max(1);
    v.checked_add(a.checked_sub(1)?)?
        .checked_div(a)?
        .checked_mul(a)
}

impl KoImage {
    /// Lay out and index a `.ko` (from the trusted build, but parsed with
    /// bounds all the same).
    pub fn parse(data: &[u8]) -> std::result::Result<KoImage, String> {
        let e = LE;
        let hdr = elf::FileHeader64::<LE>::parse(data).map_err(|_| bad("ELF header"))?;
        if hdr.e_type(e) != elf::ET_REL || hdr.e_machine(e) != elf::EM_X86_64 {
            return Err(bad("type or machine"));
        }
        let sections = hdr.sections(e, data).map_err(|_| bad("section table"))?;
        let name_of = |s: &elf::SectionHeader64<LE>| -> String {
            sections
                .section_name(e, s)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default()
        };
        // The loader's layout: offset of each core section, by index.
        let masks: [(u64, u64); 5] = [
            (u64::from(elf::SHF_EXECINSTR | elf::SHF_ALLOC), 0),
            (u64::from(elf::SHF_ALLOC), u64::from(elf::SHF_WRITE)),
            (SHF_RO_AFTER_INIT | u64::from(elf::SHF_ALLOC), 0),
            (u64::from(elf::SHF_WRITE | elf::SHF_ALLOC), 0),
            (u64::from(elf::SHF_ALLOC), 0),
        ];
        let flags: Vec<u64> = sections
            .iter()
            .map(|s| {
                let n = name_of(s);
                let mut f = s.sh_flags(e);
                // What layout_and_allocate() changes first.
                if matches!(n.as_str(), "__versions" | ".modinfo" | ".data..percpu") {
                    f &= !u64::from(elf::SHF_ALLOC);
                }
                if matches!(n.as_str(), ".data..ro_after_init" | "__jump_table") {
                    f |= SHF_RO_AFTER_INIT;
                }
                f
            })
            .collect();
        let mut place: Vec<Option<u64>> = vec![None; flags.len()];
        let mut size = 0u64;
        let mut text_size = 0u64;
        for (m, (want, not)) in masks.iter().enumerate() {
            for (i, s) in sections.iter().enumerate() {
                let n = name_of(s);
                if flags[i] & want != *want
                    || flags[i] & not != 0
                    || place[i].is_some()
                    || n.starts_with(".init")
                {
                    continue;
                }
                let at = align_up(size, s.sh_addralign(e)).ok_or_else(|| bad("layout"))?;
                size = at.checked_add(s.sh_size(e)).ok_or_else(|| bad("layout"))?;
                place[i] = Some(at);
            }
            // strict_align() after the code, the read-only data and the
            // data read-only after init (STRICT_MODULE_RWX, always on for
            // x86-64).
            if m <= 2 {
                size = align_up(size, PAGE).ok_or_else(|| bad("layout"))?;
            }
            if m == 0 {
                text_size = size;
            }
        }
        if text_size > MAX_TEXT {
            return Err(bad("code too large"));
        }
        let exec: Vec<bool> = sections
            .iter()
            .enumerate()
            .map(|(i, _)| {
                place[i].is_some_and(|p| p < text_size)
                    && flags[i] & u64::from(elf::SHF_EXECINSTR) != 0
            })
            .collect();
        let mut code = vec![0u8; usize::try_from(text_size).map_err(|_| bad("size"))?];
        let mut sites = Vec::new();
        for (i, s) in sections.iter().enumerate() {
            if !exec[i] {
                continue;
            }
            let n = name_of(s);
            let start = place[i].unwrap_or(0);
            let len = s.sh_size(e);
            if s.sh_type(e) == elf::SHT_PROGBITS {
                let bytes = s.data(e, data).map_err(|_| bad("section data"))?;
                let a = usize::try_from(start).map_err(|_| bad("size"))?;
                let dst = a
                    .checked_add(bytes.len())
                    .and_then(|b| code.get_mut(a..b))
                    .ok_or_else(|| bad("section beyond its layout"))?;
                dst.copy_from_slice(bytes);
            }
            // Static call trampolines a module defines are rewritten whole.
            if n == ".static_call.text" {
                sites.push((start, start.saturating_add(len)));
            }
        }
        let symbols = sections
            .symbols(e, data, elf::SHT_SYMTAB)
            .map_err(|_| bad("symbol table"))?;
        // Where symbol `i` is: a place in core memory, an import, or not
        // decided until load.
        let target_of = |i: usize, addend: i64| -> Target {
            let Ok(sym) = symbols.symbol(object::SymbolIndex(i)) else {
                return Target::Unchecked;
            };
            let sh = usize::from(sym.st_shndx(e));
            if sh == usize::from(elf::SHN_UNDEF) {
                return match symbols.symbol_name(e, sym) {
                    Ok(n) if !n.is_empty() => {
                        Target::Import(String::from_utf8_lossy(n).into_owned())
                    }
                    _ => Target::Unchecked,
                };
            }
            match place.get(sh).copied().flatten() {
                Some(base) => base
                    .checked_add(sym.st_value(e))
                    .and_then(|v| v.checked_add_signed(addend))
                    .map_or(Target::Unchecked, Target::Local),
                None => Target::Unchecked,
            }
        };
        let mut relocs = Vec::new();
        for s in sections.iter() {
            // (`rela()` gives the symbol table's index; the section the
            // relocations apply to is `sh_info`.)
            let Ok(Some((rels, _))) = s.rela(e, data) else {
                continue;
            };
            let target = s.info_link(e);
            let t = target.0;
            let tname = sections.section(target).map(&name_of).unwrap_or_default();
            if exec.get(t).copied().unwrap_or(false) {
                let base = place[t].unwrap_or(0);
                for r in rels {
                    let (width, relative, unsigned) = match r.r_type(e, false) {
                        elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => (4, true, false),
                        elf::R_X86_64_PC64 => (8, true, false),
                        elf::R_X86_64_64 => (8, false, false),
                        elf::R_X86_64_32 => (4, false, true),
                        elf::R_X86_64_32S => (4, false, false),
                        elf::R_X86_64_NONE => continue,
                        _ => return Err(bad("relocation type")),
                    };
                    let at = base
                        .checked_add(r.r_offset(e))
                        .filter(|a| a.saturating_add(width) <= text_size)
                        .ok_or_else(|| bad("relocation outside its section"))?;
                    let addend = r.r_addend(e);
                    let target = target_of(r.r_sym(e, false) as usize, addend);
                    relocs.push(Reloc {
                        at,
                        width: width as u8,
                        relative,
                        unsigned,
                        target,
                        addend,
                    });
                }
                continue;
            }
            // A table of patch sites: (entry size, where its length is or
            // the fixed length).
            let (stride, len): (u64, Len) = match tname.as_str() {
                ".altinstructions" => (12, Len::Byte(10)),
                ".parainstructions" => (16, Len::Byte(9)),
                "__jump_table" => (16, Len::JumpLabel),
                "__mcount_loc" => (8, Len::Fixed(5)),
                ".static_call_sites" => (8, Len::Fixed(5)),
                ".retpoline_sites" => (4, Len::Fixed(6)),
                ".return_sites" => (4, Len::Fixed(5)),
                ".ibt_endbr_seal" => (4, Len::Fixed(4)),
                ".smp_locks" => (4, Len::Fixed(1)),
                _ => continue,
            };
            let table = sections
                .section(target)
                .ok()
                .and_then(|h| h.data(e, data).ok())
                .unwrap_or(&[]);
            for r in rels {
                let off = r.r_offset(e);
                if off.checked_rem(stride) != Some(0) {
                    continue;
                }
                let Target::Local(site) = target_of(r.r_sym(e, false) as usize, r.r_addend(e))
                else {
                    continue;
                };
                if site >= text_size {
                    continue;
                }
                let n = match len {
                    Len::Fixed(n) => n,
                    // A 2-byte NOP or jmp where the target is near (6.1
                    // picks the size at build time), else 5 bytes.
                    Len::JumpLabel => {
                        let at = usize::try_from(site).unwrap_or(usize::MAX);
                        match code.get(at..at.saturating_add(2)) {
                            Some([0x66, 0x90] | [0xeb, _]) => 2,
                            _ => 5,
                        }
                    }
                    Len::Byte(at) => off
                        .checked_add(at)
                        .and_then(|i| table.get(usize::try_from(i).ok()?))
                        .map_or(0, |&b| u64::from(b)),
                };
                sites.push((site, site.saturating_add(n).min(text_size)));
            }
        }
        relocs.sort_by_key(|r| r.at);
        Ok(KoImage {
            code,
            sites: crate::base::ranges::normalize(sites),
            relocs,
        })
    }

    /// `core_layout.text_size` this file gives.
    pub fn text_size(&self) -> u64 {
        self.code.len() as u64
    }

    fn in_site(&self, at: u64, width: u64) -> bool {
        let end = at.saturating_add(width);
        let i = self.sites.partition_point(|s| s.1 <= at);
        self.sites.get(i).is_some_and(|s| s.0 < end)
    }

    /// Compare `live`, the module's code loaded at `base`, with this file.
    /// `import` gives where the kernel resolves a symbol the module
    /// imports: Ok(exact address) for one of the kernel's, Err(whether
    /// the address is code or data of a loaded build module) for another
    /// module's.
    pub fn compare(
        &self,
        live: &[u8],
        base: u64,
        import: &dyn Fn(&str, u64) -> std::result::Result<u64, bool>,
    ) -> std::result::Result<(), String> {
        if live.len() != self.code.len() {
            return Err(format!(
                "its code is {:#x} bytes, the build's is {:#x}",
                live.len(),
                self.code.len()
            ));
        }
        let mut want = self.code.clone();
        for r in &self.relocs {
            let w = u64::from(r.width);
            if self.in_site(r.at, w) {
                continue;
            }
            let (Ok(a), Some(b)) = (
                usize::try_from(r.at),
                usize::try_from(r.at.saturating_add(w)).ok(),
            ) else {
                continue;
            };
            let Some(got) = live.get(a..b) else {
                continue;
            };
            let mut word = [0u8; 8];
            word[..got.len()].copy_from_slice(got);
            let raw = u64::from_le_bytes(word);
            let place = base.wrapping_add(r.at);
            // The symbol's address the live bytes encode.
            let value = match (r.width, r.unsigned) {
                (4, true) => raw,
                (4, false) => raw as u32 as i32 as i64 as u64,
                _ => raw,
            };
            let s = if r.relative {
                value.wrapping_add(place)
            } else {
                value
            }
            .wrapping_sub(r.addend as u64);
            let ok = match &r.target {
                Target::Unchecked => true,
                Target::Local(off) => s.wrapping_add(r.addend as u64) == base.wrapping_add(*off),
                Target::Import(name) => match import(name, s) {
                    Ok(exact) => exact == s,
                    Err(inside) => inside,
                },
            };
            if !ok {
                let leads = match &r.target {
                    Target::Import(n) => format!("the build's leads to {n}"),
                    _ => "the build's leads into the module".into(),
                };
                return Err(format!(
                    "the relocated word at +{:#x} leads to {:#x}; {leads}",
                    r.at,
                    s.wrapping_add(if matches!(r.target, Target::Local(_)) {
                        r.addend as u64
                    } else {
                        0
                    })
                ));
            }
            want[a..b].copy_from_slice(got);
        }
        for (s, e) in &self.sites {
            let (Ok(s), Ok(e)) = (usize::try_from(*s), usize::try_from(*e)) else {
                continue;
            };
            if let (Some(w), Some(l)) = (want.get_mut(s..e), live.get(s..e)) {
                w.copy_from_slice(l);
            }
        }
        if let Some(i) = want.iter().zip(live).position(|(a, b)| a != b) {
            let bytes = |b: &[u8]| {
                b.get(i..i.saturating_add(8).min(b.len()))
                    .unwrap_or_default()
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(format!(
                "its code differs from the build's at +{i:#x} ({}, the build's {})",
                bytes(live),
                bytes(&want)
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Len {
    Fixed(u64),
    /// A static branch: as long as the instruction the build put there.
    JumpLabel,
    /// The byte at this offset of the entry.
    Byte(u64),
}

/// Identities worked out in one view, by `struct module` address.
#[derive(Default)]
pub struct IdentityCache {
    by_module: std::cell::RefCell<HashMap<u64, Identity>>,
    /// Bytes of module code read so far ([`MAX_COMPARED`]).
    compared: std::cell::Cell<u64>,
    images: std::cell::RefCell<HashMap<String, std::result::Result<std::rc::Rc<KoImage>, String>>>,
}

impl KernelView<'_> {
    /// Is the loaded module `m` the build's module of its name? Name only
    /// where the build's `.ko` files are not known.
    pub fn is_build_module(&self, m: &Module) -> bool {
        // The xftrace-dkms module that serves the located control block is
        // the tracer, taken as part of the build; its code is not compared
        // with a reference (docs/threat-model.md).
        if self.is_tracer_module(m.addr) {
            return true;
        }
        let Some(build) = self.build_modules else {
            return false;
        };
        if !build.contains(&m.name) {
            return false;
        }
        match self.module_files {
            None => true,
            Some(_) => self.module_identity(m) == Identity::Build,
        }
    }

    /// The module's identity by content, worked out once per view; None
    /// where there is nothing to compare it with (no `.ko` files, or a name
    /// the build does not ship).
    pub fn module_identity(&self, m: &Module) -> Identity {
        if let Some(i) = self.identities.by_module.borrow().get(&m.addr) {
            return i.clone();
        }
        let i = self.work_out_identity(m);
        self.identities
            .by_module
            .borrow_mut()
            .insert(m.addr, i.clone());
        i
    }

    /// The module's identity worked out again now (not from the view's
    /// cache): after a moment, for a module that was being loaded.
    pub fn module_identity_now(&self, m: &Module) -> Identity {
        let i = self.work_out_identity(m);
        self.identities
            .by_module
            .borrow_mut()
            .insert(m.addr, i.clone());
        i
    }

    fn ko_image(&self, name: &str) -> std::result::Result<std::rc::Rc<KoImage>, String> {
        if let Some(i) = self.identities.images.borrow().get(name) {
            return i.clone();
        }
        let i = (|| {
            let files = self
                .module_files
                .ok_or("the build's module files are not known")?;
            let path = files
                .path(name)
                .ok_or_else(|| format!("the build has no {name}.ko"))?;
            let bytes =
                files::read_bounded(path, MAX_KO, "module file").map_err(|e| e.to_string())?;
            KoImage::parse(&bytes)
                .map(std::rc::Rc::new)
                .map_err(|e| format!("{}: {e}", path.display()))
        })();
        self.identities
            .images
            .borrow_mut()
            .insert(name.to_string(), i.clone());
        i
    }

    fn work_out_identity(&self, m: &Module) -> Identity {
        let ko = match self.ko_image(&m.name) {
            Ok(k) => k,
            Err(e) => return Identity::Unverified(e),
        };
        let Some((start, end)) = m.text else {
            return Identity::Unverified("its code range cannot be read".into());
        };
        let len = end.saturating_sub(start);
        if len != ko.text_size() {
            return Identity::Differs(format!(
                "its code is {len:#x} bytes, the build's {}.ko makes {:#x}",
                m.name,
                ko.text_size()
            ));
        }
        let total = self.identities.compared.get().saturating_add(len);
        if total > MAX_COMPARED {
            return Identity::Unverified(format!(
                "more than {MAX_COMPARED} bytes of module code compared in this check"
            ));
        }
        self.identities.compared.set(total);
        let mut live = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if let Err(e) = self.read_bytes(start, &mut live) {
            return Identity::Unverified(format!("its code cannot be read: {e}"));
        }
        let import = |name: &str, at: u64| -> std::result::Result<u64, bool> {
            if let Some(link) = self.map().addr(name) {
                // Per-CPU symbols are offsets, not moved by KASLR.
                let want = if link < 0xffff_8000_0000_0000 {
                    link
                } else {
                    self.runtime(link)
                };
                if want == at {
                    return Ok(at);
                }
                // The map keeps one address a name: another of that name.
                return match self.sym.containing(at) {
                    Some((n, 0)) if n == name => Ok(at),
                    _ => Ok(want),
                };
            }
            // Another module's export: its code or data, or one of its
            // per-CPU variables (an offset into the per-CPU area).
            Err(self.modules().iter().filter(|o| o.addr != m.addr).any(|o| {
                let inside = |r: Option<(u64, u64)>| r.is_some_and(|(s, e)| s <= at && at < e);
                self.build_modules.is_some_and(|b| b.contains(&o.name))
                    && (inside(o.memory) || inside(self.module_percpu(o.addr)))
            }))
        };
        match ko.compare(&live, start, &import) {
            Ok(()) => Identity::Build,
            Err(why) => Identity::Differs(why),
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::testkit::synthetic::synthetic_ko as ko;

    const BASE: u64 = 0xffff_ffff_c000_0000;
    const PRINTK: u64 = 0xffff_ffff_8112_3450;

    /// What the loader makes of it at `BASE`: laid out, relocated, the
    /// ftrace site a NOP.
    fn loaded(k: &KoImage) -> Vec<u8> {
        let mut live = k.code.clone();
        for r in &k.relocs {
            let s = match &r.target {
                Target::Local(off) => BASE + off - r.addend as u64,
                Target::Import(n) if n == "_printk" => PRINTK,
                Target::Import(_) => 0xffff_ffff_8100_1000,
                Target::Unchecked => continue,
            };
            let v = s.wrapping_add(r.addend as u64);
            let v = if r.relative {
                v.wrapping_sub(BASE + r.at)
            } else {
                v
            };
            let at = r.at as usize;
            live[at..at + usize::from(r.width)]
                .copy_from_slice(&v.to_le_bytes()[..usize::from(r.width)]);
        }
        live[..5].copy_from_slice(crate::kernel::patching::NOPS[5]);
        live
    }

    fn import(name: &str, _at: u64) -> std::result::Result<u64, bool> {
        match name {
            "_printk" => Ok(PRINTK),
            "__fentry__" => Ok(0xffff_ffff_8100_1000),
            _ => Err(false),
        }
    }

    #[test]
    fn the_loaded_code_of_the_file_matches_and_nothing_else_does() {
        let k = KoImage::parse(&ko()).unwrap();
        // .text (16-aligned, 27 bytes), then .exit.text; .init.text not.
        assert_eq!(k.text_size(), 4096);
        assert_eq!(&k.code[27..29], &[0x90, 0xc3]);
        assert_eq!(k.sites, vec![(0, 5)]);
        // .data after the page of code and the page of read-only data
        // (__mcount_loc): where the relocation of its load leads.
        let load = k.relocs.iter().find(|r| r.at == 18).unwrap();
        assert_eq!(load.target, Target::Local(0x2000 + 8 - 4));
        let live = loaded(&k);
        assert_eq!(k.compare(&live, BASE, &import), Ok(()));

        // A byte changed outside any site or relocation.
        let mut bad = live.clone();
        bad[22] = 0xcc;
        assert!(k
            .compare(&bad, BASE, &import)
            .unwrap_err()
            .contains("+0x16"));
        // Code hidden in the padding.
        let mut bad = live.clone();
        bad[100] = 0x90;
        assert!(k.compare(&bad, BASE, &import).is_err());
        // The call to _printk aimed elsewhere.
        let mut bad = live.clone();
        bad[6..10].copy_from_slice(&0x1234i32.to_le_bytes());
        let e = k.compare(&bad, BASE, &import).unwrap_err();
        assert!(e.contains("_printk"), "{e}");
        // The local call aimed elsewhere.
        let mut bad = live.clone();
        bad[11..15].copy_from_slice(&0x40i32.to_le_bytes());
        assert!(k.compare(&bad, BASE, &import).is_err());
        // The ftrace site may hold a call (tracing on): not compared.
        let mut traced = live.clone();
        traced[..5].copy_from_slice(&[0xe8, 1, 2, 3, 4]);
        assert_eq!(k.compare(&traced, BASE, &import), Ok(()));
        // Another size.
        assert!(k.compare(&live[..2048], BASE, &import).is_err());
    }

    /// A static branch the compiler made 2 bytes long (`66 90`), right
    /// before an instruction whose displacement is relocated: the site is
    /// those 2 bytes, and the relocation after it is checked, not skipped
    /// (taken as 5 bytes, it left Debian's kvm and virtio_net unrelocated
    /// and "impostors").
    #[test]
    fn a_two_byte_static_branch_leaves_the_next_relocation_checked() {
        use object::write::{Object, Relocation};
        use object::{Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind};
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
        // nop2 (a static branch), cmpb $0, data(%rip), ret.
        let code = [0x66, 0x90, 0x80, 0x3d, 0, 0, 0, 0, 0, 0xc3];
        o.append_section_data(text, &code, 16);
        let data = o.add_section(Vec::new(), b".data".to_vec(), SectionKind::Data);
        o.append_section_data(data, &[0u8; 8], 8);
        let jt = o.add_section(Vec::new(), b"__jump_table".to_vec(), SectionKind::Data);
        o.append_section_data(jt, &[0u8; 16], 8);
        let (ts, ds) = (o.section_symbol(text), o.section_symbol(data));
        let rel = |o: &mut Object, s, offset, symbol, addend, r_type| {
            o.add_relocation(
                s,
                Relocation {
                    offset,
                    symbol,
                    addend,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .unwrap()
        };
        // The displacement ends 1 byte before the instruction does.
        rel(&mut o, text, 4, ds, -5, object::elf::R_X86_64_PC32);
        // The jump entry: code, target, key.
        rel(&mut o, jt, 0, ts, 0, object::elf::R_X86_64_PC32);
        rel(&mut o, jt, 4, ts, 9, object::elf::R_X86_64_PC32);
        rel(&mut o, jt, 8, ds, 0, object::elf::R_X86_64_64);
        let k = KoImage::parse(&o.write().unwrap()).unwrap();
        assert_eq!(k.sites, vec![(0, 2)]);
        let mut live = k.code.clone();
        let r = k.relocs.iter().find(|r| r.at == 4).unwrap();
        let Target::Local(to) = r.target else {
            panic!("{:?}", r.target)
        };
        // Where the loader puts it: the data's place, PC-relative.
        let v = (BASE + to).wrapping_sub(BASE + 4);
        live[4..8].copy_from_slice(&(v as u32).to_le_bytes());
        assert_eq!(k.compare(&live, BASE, &import), Ok(()));
        // The branch enabled (a 2-byte jmp): still the build's.
        let mut on = live.clone();
        on[..2].copy_from_slice(&[0xeb, 0x07]);
        assert_eq!(k.compare(&on, BASE, &import), Ok(()));
        // The compare aimed at another byte: found.
        let mut bad = live.clone();
        bad[4..8].copy_from_slice(&((v as u32) + 0x40).to_le_bytes());
        assert!(k.compare(&bad, BASE, &import).is_err());
    }

    #[test]
    fn a_hostile_or_foreign_file_is_refused_not_panicked_on() {
        assert!(KoImage::parse(b"not an ELF").is_err());
        let mut f = ko();
        for i in (0..f.len()).step_by(7) {
            let keep = f[i];
            f[i] ^= 0xa5;
            let _ = KoImage::parse(&f);
            f[i] = keep;
        }
    }
}
