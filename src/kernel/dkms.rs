//! The tracer of the `xftrace-dkms` module (`guest-dkms/`), on a stock
//! kernel: the same control block, heads and rings as xftrace's kernel,
//! found where a module keeps them (docs/abi.md §1.1).
//!
//! The control block is a page-aligned variable of the module named
//! [`MODULE_NAME`]: the host looks for it in that module's memory, one read
//! per page, and takes it only where the kernel's own page tables map the
//! virtual address it names to the very page it was read from. The ring
//! heads are one physically contiguous allocation; every page of it must
//! translate to the next physical page. The probe is the module's symbol
//! `xftrace_probe`, read from the module's own symbol table, which must lie
//! in the module's code. Everything here is read from guest memory that
//! the guest's kernel can rewrite: a second module of that name, or a
//! second block in it, is a decoy and refused.
#![deny(clippy::arithmetic_side_effects)]

use crate::abi::{self, ControlHeader};
use crate::guest::addr::VirtAddr;
use crate::guest::memory::GuestAddress;
use crate::kernel::guest::KernelView;
use crate::kernel::locate::{Control, TracerModule};

/// The module's name (`guest-dkms/Makefile`).
pub const MODULE_NAME: &str = "xftrace";
/// The most module memory searched for the block: the module is ~100 KiB.
const MAX_MODULE_BYTES: u64 = 16 << 20;
/// The most symbols read from the module's symbol table.
const MAX_SYMBOLS: u64 = 65_536;
/// `sizeof(Elf64_Sym)`.
const ELF64_SYM: u64 = 24;
const PAGE: u64 = 4096;

/// The module's tracer: None when no module of that name is loaded; an
/// error (one line, for the operator) when one is, but its tracer is not
/// what the ABI says.
pub fn find(v: &KernelView) -> Result<Option<Control>, String> {
    let mods: Vec<_> = v
        .modules()
        .iter()
        .filter(|m| m.name == MODULE_NAME)
        .collect();
    let m = match mods.as_slice() {
        [] => return Ok(None),
        [m] => *m,
        _ => {
            return Err(format!(
                "{} modules are named {MODULE_NAME}: a decoy",
                mods.len()
            ))
        }
    };
    let (start, end) = m
        .memory
        .ok_or("its memory is not known (the build has no BTF for struct module)")?;
    let len = end
        .checked_sub(start)
        .ok_or("its memory ends before it starts")?;
    if len > MAX_MODULE_BYTES {
        return Err(format!("its memory claims {len} bytes"));
    }
    let pt = v.page_tables();
    let mut found = Vec::new();
    let mut va = start.div_ceil(PAGE).saturating_mul(PAGE);
    while va.checked_add(abi::CTL_SIZE).is_some_and(|e| e <= end) {
        if let Some(w) = pt.walk(VirtAddr(va)) {
            if v.ram.read_u64(w.pa).is_ok_and(|x| x == abi::MAGIC) {
                found.push((va, w.pa));
            }
        }
        va = match va.checked_add(PAGE) {
            Some(n) => n,
            None => break,
        };
    }
    let (va, pa) = match found.as_slice() {
        [] => return Err("its memory holds no control block (it is loading, or unloading)".into()),
        [one] => *one,
        _ => {
            return Err(format!(
                "its memory holds {} control blocks: a decoy",
                found.len()
            ))
        }
    };
    let mut head = [0u8; 64];
    v.ram.read_into(pa, &mut head).map_err(|e| e.to_string())?;
    let header = ControlHeader::parse(&head)?;
    if header.ctl_va != va {
        return Err(format!(
            "its control block at {va:#x} says it is at {:#x}",
            header.ctl_va
        ));
    }
    if header.text_va != v.kernel.text_va {
        return Err(format!(
            "its control block says the kernel is at {:#x}, it is at {:#x}",
            header.text_va, v.kernel.text_va
        ));
    }
    let heads = contiguous(v, header.heads_va, header.heads_len())
        .ok_or("its ring heads are not one physically contiguous range of RAM")?;
    let probe = probe(v, m.addr, m.text)
        .ok_or("its symbol table has no xftrace_probe in its code (not the xftrace-dkms module)")?;
    Ok(Some(Control {
        ctl: pa,
        header,
        heads,
        module: Some(TracerModule {
            addr: m.addr,
            probe,
        }),
    }))
}

/// The guest physical address of `[va, va + len)` when the kernel's page
/// tables map it page by page onto consecutive physical pages of RAM.
fn contiguous(v: &KernelView, va: u64, len: u64) -> Option<GuestAddress> {
    if va % PAGE != 0 || len == 0 || len > u64::from(abi::MAX_RINGS) * 64 {
        return None;
    }
    let pt = v.page_tables();
    let base = pt.walk(VirtAddr(va))?.pa;
    let mut off = PAGE;
    while off < len {
        let pa = pt.walk(VirtAddr(va.checked_add(off)?))?.pa;
        if pa != base.checked_add(off)? {
            return None;
        }
        off = off.checked_add(PAGE)?;
    }
    v.ram.layout().locate(base, len)?;
    Some(base)
}

/// `[start, end)` of the module's `xftrace_probe`, from its own symbol
/// table (`module->kallsyms`), inside its code.
fn probe(v: &KernelView, module: u64, text: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let (ts, te) = text?;
    let kallsyms = v.read_word(module.checked_add(v.field("module", &["kallsyms"])?)?)?;
    let symtab = v.read_word(kallsyms.checked_add(v.field("mod_kallsyms", &["symtab"])?)?)?;
    let num = v.read_u32(kallsyms.checked_add(v.field("mod_kallsyms", &["num_symtab"])?)?)?;
    let strtab = v.read_word(kallsyms.checked_add(v.field("mod_kallsyms", &["strtab"])?)?)?;
    let want = crate::abi::funcs::PROBE;
    for i in 0..u64::from(num).min(MAX_SYMBOLS) {
        let mut s = [0u8; ELF64_SYM as usize];
        v.read(symtab.checked_add(i.checked_mul(ELF64_SYM)?)?, &mut s)?;
        let name = u64::from(u32::from_le_bytes(s[0..4].try_into().ok()?));
        let value = u64::from_le_bytes(s[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(s[16..24].try_into().ok()?);
        if !(ts..te).contains(&value) {
            continue;
        }
        let mut b = [0u8; 16];
        if v.read(strtab.checked_add(name)?, &mut b).is_none() {
            continue;
        }
        if b.starts_with(want.as_bytes()) && b.get(want.len()) == Some(&0) {
            // A function of a few instructions; no more than 64 bytes is
            // taken from a guest-written size.
            let end = value.checked_add(size.clamp(1, 64))?.min(te);
            return Some((value, end));
        }
    }
    None
}
