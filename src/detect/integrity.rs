//! Live integrity of the guest kernel's control data, read from guest RAM
//! without pausing it and compared with the trusted build (System.map and
//! vmlinux, shifted by the KASLR slide):
//! - syscall dispatch: `sys_call_table` (still a finding on 6.1.85+, where
//!   `x64_sys_call()` dispatches) and the code of `x64_sys_call` itself,
//!   byte for byte but for the changes the kernel makes itself, taken from
//!   the build's own tables: KASLR relocation sites from its relocation
//!   records, and ftrace's call sites from `__mcount_loc`, where only the
//!   5-byte NOP or a call to ftrace's own callers or trampolines may stand;
//! - the IDT: every present gate must enter kernel text at a symbol;
//! - well-known operation tables (const, so they must equal the build);
//! - ftrace's own hook list: callbacks outside the kernel image are how
//!   ftrace-hooking rootkits show.
#![deny(clippy::arithmetic_side_effects)]

use crate::escape::escape_bytes;
use crate::guest::memory::GuestRam;
use crate::guest::paging::PageTables;
use crate::kernel::locate::GuestKernel;
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::{Reloc, RelocKind, Vmlinux};

use super::Finding;

/// Operation tables that file-hiding rootkits swap pointers in.
pub const OPERATION_TABLES: &[&str] = &[
    "proc_root_operations",
    "proc_dir_operations",
    "proc_root_inode_operations",
    "proc_dir_inode_operations",
    "simple_dir_operations",
    "simple_dir_inode_operations",
    "ramfs_dir_inode_operations",
    "shmem_dir_inode_operations",
    "shmem_file_operations",
    "ext4_dir_operations",
    "ext4_file_operations",
    "tcp4_seq_ops",
    "udp_seq_ops",
    "raw_seq_ops",
];

/// The 5-byte NOP ftrace writes over an unused `__fentry__` call.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// Longest run of code compared at once.
const MAX_CODE: u64 = 64 << 10;
/// Modules read from the guest's list, at most.
const MAX_MODULES: usize = 4096;

pub struct Context<'a> {
    pub ram: &'a GuestRam,
    pub map: &'a SystemMap,
    pub kernel: &'a GuestKernel,
    pub vmlinux: &'a Vmlinux,
    /// Loaded modules (address of `struct module`, escaped name), read on
    /// first use.
    pub modules: std::cell::OnceCell<Vec<(u64, String)>>,
}

impl Context<'_> {
    fn slide(&self) -> u64 {
        self.kernel.slide
    }

    /// Runtime address of a symbol.
    fn sym(&self, name: &str) -> Option<u64> {
        self.map.addr(name).map(|a| a.wrapping_add(self.slide()))
    }

    fn page_tables(&self) -> PageTables<'_> {
        self.kernel.page_tables(self.ram)
    }

    /// Read guest kernel virtual memory: the image linearly, the rest
    /// through the guest's page tables.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Option<()> {
        let last = va.wrapping_add((buf.len() as u64).saturating_sub(1));
        if self.in_image(va) && self.in_image(last) {
            let pa = self.kernel.kva_to_gpa(va)?;
            return self.ram.read_into(pa, buf).ok();
        }
        self.page_tables().read(va, buf)
    }

    fn read_words(&self, va: u64, n: usize) -> Option<Vec<u64>> {
        let mut b = vec![0u8; n.checked_mul(8)?];
        self.read(va, &mut b)?;
        Some(
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        )
    }

    /// True if runtime `addr` lies in the kernel image.
    fn in_image(&self, addr: u64) -> bool {
        self.map.in_image(addr.wrapping_sub(self.slide()))
    }

    /// `symbol+0xoff` for a runtime address, or the bare address (with the
    /// module that probably owns it).
    pub fn name(&self, addr: u64) -> String {
        match self.map.containing(addr.wrapping_sub(self.slide())) {
            Some((s, 0)) => s.to_string(),
            Some((s, off)) => format!("{s}+{off:#x}"),
            None => match self.module_of(addr) {
                Some(m) => format!("{addr:#x} (outside the kernel image, in module {m})"),
                None => format!("{addr:#x} (outside the kernel image)"),
            },
        }
    }

    /// The guest's module list: `modules` heads a list of `struct module`,
    /// which on 6.1 starts `{ enum module_state state; struct list_head
    /// list; char name[56]; ... }` whatever the config. Names are escaped:
    /// they come from guest memory.
    fn modules(&self) -> &[(u64, String)] {
        self.modules.get_or_init(|| {
            let mut out = Vec::new();
            let Some(head) = self.sym("modules") else {
                return out;
            };
            let mut p = self.read_words(head, 1).map_or(head, |w| w[0]);
            while p != head && p != 0 && out.len() < MAX_MODULES {
                let mut name = [0u8; 56];
                let (Some(name_at), Some(module)) = (p.checked_add(16), p.checked_sub(8)) else {
                    break;
                };
                if self.read(name_at, &mut name).is_none() {
                    break;
                }
                let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                out.push((module, escape_bytes(&name[..n])));
                p = match self.read_words(p, 1) {
                    Some(w) => w[0],
                    None => break,
                };
            }
            out
        })
    }

    /// The module whose `struct module` (in its own data, after its code)
    /// is the nearest one above `addr`: an attribution by layout, not proof.
    fn module_of(&self, addr: u64) -> Option<&str> {
        self.modules()
            .iter()
            .filter(|(m, _)| m.checked_sub(addr).is_some_and(|d| d < 8 << 20))
            .min_by_key(|(m, _)| *m)
            .map(|(_, n)| n.as_str())
    }
}

/// Run every check.
pub fn check_all(cx: &Context) -> Vec<Finding> {
    let mut f = Vec::new();
    syscall_tables(cx, &mut f);
    x64_sys_call(cx, &mut f);
    idt(cx, &mut f);
    operation_tables(cx, &mut f);
    ftrace_ops(cx, &mut f);
    f
}

/// Compare a table of pointers with the build, word by word.
fn compare_table(
    cx: &Context,
    name: &str,
    kind: &str,
    entry_name: &dyn Fn(usize) -> String,
    out: &mut Vec<Finding>,
) {
    let (Some(link), Some(extent)) = (cx.map.addr(name), cx.map.extent(name)) else {
        return;
    };
    let n = (extent / 8).min(1024);
    let runtime = link.wrapping_add(cx.slide());
    let (Some(built), Some(live)) = (
        cx.vmlinux.bytes(link, n.saturating_mul(8)),
        cx.read_words(runtime, n as usize),
    ) else {
        out.push(Finding::new(
            kind,
            format!("cannot read {name} from the guest or the build"),
            &[runtime],
            "",
        ));
        return;
    };
    for (i, (b, &l)) in built.chunks_exact(8).zip(&live).enumerate() {
        let b = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let want = if cx.map.in_image(b) {
            b.wrapping_add(cx.slide())
        } else {
            b
        };
        if l != want {
            let at = runtime.wrapping_add((i as u64).wrapping_mul(8));
            out.push(Finding::new(
                kind,
                format!(
                    "{} points to {} instead of {}",
                    entry_name(i),
                    cx.name(l),
                    cx.name(want)
                ),
                &[at, l, want],
                format!("{name} differs from the trusted build"),
            ));
        }
    }
}

fn syscall_tables(cx: &Context, out: &mut Vec<Finding>) {
    for table in [
        "sys_call_table",
        "ia32_sys_call_table",
        "x32_sys_call_table",
    ] {
        compare_table(
            cx,
            table,
            "syscall-table",
            &|i| format!("{table}[{i}]"),
            out,
        );
    }
}

/// `e8`/`e9` rel32 target of the instruction at `at` in `code` (loaded at `base`).
fn rel32_target(code: &[u8], at: usize, base: u64) -> Option<u64> {
    let op = *code.get(at)?;
    if op != 0xe8 && op != 0xe9 {
        return None;
    }
    let rel = i32::from_le_bytes(
        code.get(at.checked_add(1)?..at.checked_add(5)?)?
            .try_into()
            .ok()?,
    );
    Some(
        base.wrapping_add(at as u64)
            .wrapping_add(5)
            .wrapping_add(rel as i64 as u64),
    )
}

/// The ftrace call sites (`__mcount_loc`) in `[start, end)`, link-time.
fn mcount_sites(cx: &Context, start: u64, end: u64) -> Vec<u64> {
    let table = cx
        .map
        .addr("__start_mcount_loc")
        .zip(cx.map.addr("__stop_mcount_loc"));
    table
        .and_then(|t| cx.vmlinux.mcount_sites(t, start, end))
        .unwrap_or_default()
}

/// What may stand at an ftrace call site: the 5-byte NOP, the build's own
/// `call __fentry__`, or a call to ftrace's callers or to a trampoline
/// ftrace made for one of the kernel's own ftrace_ops.
fn fentry_site_ok(cx: &Context, live: &[u8], site: u64) -> Result<(), String> {
    if live == NOP5 {
        return Ok(());
    }
    let target = match live.first() {
        Some(0xe8) => rel32_target(live, 0, site),
        _ => None,
    }
    .ok_or("neither the 5-byte NOP nor a call")?;
    let ours = ["ftrace_caller", "ftrace_regs_caller", "__fentry__"];
    if ours.iter().any(|s| cx.sym(s) == Some(target)) {
        return Ok(());
    }
    if cx.in_image(target) {
        return Err(format!(
            "calls {} instead of an ftrace caller",
            cx.name(target)
        ));
    }
    ftrace_trampoline(cx, target).map_err(|why| format!("calls {}: {why}", cx.name(target)))
}

/// Is the code at `t` (outside the image) a trampoline ftrace built
/// (arch/x86/kernel/ftrace.c, create_trampoline()): a copy of
/// `ftrace_caller` or `ftrace_regs_caller` up to its `_end` label, where
/// only the ftrace_ops load, the callback call and (for regs) a 2-byte NOP
/// for the direct-call jump differ, followed by a return and a pointer to
/// an ftrace_ops of the kernel image itself?
fn ftrace_trampoline(cx: &Context, t: u64) -> Result<(), String> {
    let templates = [
        (
            "ftrace_caller",
            "ftrace_caller_end",
            "ftrace_caller_op_ptr",
            "ftrace_call",
            None,
        ),
        (
            "ftrace_regs_caller",
            "ftrace_regs_caller_end",
            "ftrace_regs_caller_op_ptr",
            "ftrace_regs_call",
            Some("ftrace_regs_caller_jmp"),
        ),
    ];
    let mut why = String::from("not an ftrace trampoline (this build has no ftrace callers)");
    for (start, end, op, call, jmp) in templates {
        match trampoline_like(cx, t, start, end, op, call, jmp) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(why)
}

fn trampoline_like(
    cx: &Context,
    t: u64,
    start: &str,
    end: &str,
    op: &str,
    call: &str,
    jmp: Option<&str>,
) -> Result<(), String> {
    let at = |s: &str| {
        cx.map
            .addr(s)
            .ok_or_else(|| format!("no {s} in System.map"))
    };
    let (s, e, op, call) = (at(start)?, at(end)?, at(op)?, at(call)?);
    let rel = |a: u64| {
        a.checked_sub(s)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| format!("{start} labels out of order"))
    };
    let size = rel(e)?;
    let (op_off, call_off) = (rel(op)?, rel(call)?);
    let jmp_off = jmp.map(|j| at(j).and_then(rel)).transpose()?;
    if size > 4096 || op_off.saturating_add(7) > size || call_off.saturating_add(5) > size {
        return Err(format!("{start} is not shaped like an ftrace caller"));
    }
    let tmpl = cx
        .vmlinux
        .bytes(s, size as u64)
        .ok_or_else(|| format!("cannot read {start} from the build"))?;
    // The copy, its return (up to 5 bytes) and the ops pointer after it.
    let mut code = vec![0u8; size.saturating_add(5 + 8)];
    cx.read(t, &mut code).ok_or("unreadable")?;
    let skip = |i: usize| {
        (op_off.saturating_add(3)..op_off.saturating_add(7)).contains(&i)
            || (call_off.saturating_add(1)..call_off.saturating_add(5)).contains(&i)
            || jmp_off.is_some_and(|j| {
                (j..j.saturating_add(2)).contains(&i)
                    && code.get(j..j.saturating_add(2)) == Some(&[0x66, 0x90][..])
            })
    };
    if let Some(i) = (0..size).find(|&i| code[i] != tmpl[i] && !skip(i)) {
        return Err(format!(
            "not an ftrace trampoline: byte {i:#x} differs from {start}"
        ));
    }
    let callee = rel32_target(&code, call_off, t).ok_or("no callback call")?;
    if !cx.in_image(callee) {
        return Err(format!(
            "its callback {} is outside the kernel image",
            cx.name(callee)
        ));
    }
    // movq disp32(%rip), %rdx: the ops pointer must be right after the return.
    let disp = code
        .get(op_off.saturating_add(3)..op_off.saturating_add(7))
        .and_then(|b| b.try_into().ok())
        .map(i32::from_le_bytes)
        .ok_or("no ftrace_ops load")?;
    let ptr = t
        .wrapping_add(op_off as u64)
        .wrapping_add(7)
        .wrapping_add(disp as i64 as u64);
    let after = ptr.wrapping_sub(t).wrapping_sub(size as u64);
    if !(1..=5).contains(&after) {
        return Err("its ftrace_ops pointer is not where ftrace puts it".into());
    }
    let ops = cx
        .read_words(ptr, 1)
        .map(|w| w[0])
        .ok_or("its ftrace_ops pointer is unreadable")?;
    if !cx.in_image(ops) {
        return Err(format!(
            "it serves ftrace_ops at {ops:#x}, outside the kernel image (ftrace only builds trampolines for the kernel's own)"
        ));
    }
    Ok(())
}

/// Is `live[off..]` the built value at a KASLR relocation site, moved by
/// the slide as the kernel moves it?
fn relocated_ok(r: &Reloc, built: &[u8], live: &[u8], off: usize, slide: u64) -> bool {
    let w = r.kind.width() as usize;
    let (Some(b), Some(l)) = (
        built.get(off..off.saturating_add(w)),
        live.get(off..off.saturating_add(w)),
    ) else {
        return false;
    };
    match r.kind {
        RelocKind::Abs64 => {
            let (b, l) = (
                u64::from_le_bytes(b.try_into().expect("8 bytes")),
                u64::from_le_bytes(l.try_into().expect("8 bytes")),
            );
            b.wrapping_add(slide) == l
        }
        RelocKind::Abs32 | RelocKind::NegPc32 => {
            let (b, l) = (
                u32::from_le_bytes(b.try_into().expect("4 bytes")),
                u32::from_le_bytes(l.try_into().expect("4 bytes")),
            );
            let s = slide as u32;
            if r.kind == RelocKind::Abs32 {
                b.wrapping_add(s) == l
            } else {
                b.wrapping_sub(s) == l
            }
        }
    }
}

/// The dispatcher since 6.1.85: its code must match the build, except where
/// the build's tables say the kernel changes it.
fn x64_sys_call(cx: &Context, out: &mut Vec<Finding>) {
    let name = "x64_sys_call";
    let (Some(link), Some(len)) = (cx.map.addr(name), cx.map.extent(name)) else {
        return;
    };
    let len = len.min(MAX_CODE);
    let runtime = link.wrapping_add(cx.slide());
    let mut live = vec![0u8; len as usize];
    let (Some(built), Some(())) = (cx.vmlinux.bytes(link, len), cx.read(runtime, &mut live)) else {
        out.push(Finding::new(
            "syscall-dispatch",
            format!("cannot read {name}"),
            &[runtime],
            "",
        ));
        return;
    };
    let relocs = match cx.vmlinux.kaslr_relocations(link, link.saturating_add(len)) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::new(
                "syscall-dispatch",
                format!("cannot check {name}: {e}"),
                &[runtime],
                "",
            ));
            return;
        }
    };
    let sites = mcount_sites(cx, link, link.saturating_add(len));
    compare_code(cx, name, link, &built, &live, &relocs, &sites, out);
}

#[allow(clippy::too_many_arguments)]
fn compare_code(
    cx: &Context,
    name: &str,
    link: u64,
    built: &[u8],
    live: &[u8],
    relocs: &[Reloc],
    sites: &[u64],
    out: &mut Vec<Finding>,
) {
    let runtime = link.wrapping_add(cx.slide());
    let at = |i: usize| runtime.wrapping_add(i as u64);
    let bytes = |c: &[u8], i: usize| format!("{:02x?}", &c[i..i.saturating_add(5).min(c.len())]);
    let mut i = 0usize;
    while i < built.len().min(live.len()) {
        let here = link.wrapping_add(i as u64);
        if sites.contains(&here) {
            let end = i.saturating_add(5).min(live.len());
            if let Err(why) = fentry_site_ok(cx, &live[i..end], at(i)) {
                out.push(Finding::new(
                    "syscall-dispatch",
                    format!("{name}+{i:#x} (ftrace's call site) {why}"),
                    &[at(i)],
                    format!("live {}, built {}", bytes(live, i), bytes(built, i)),
                ));
            }
            i = end;
            continue;
        }
        if built[i] == live[i] {
            i = i.saturating_add(1);
            continue;
        }
        if let Some(r) = relocs
            .iter()
            .find(|r| r.addr <= here && here.wrapping_sub(r.addr) < r.kind.width())
        {
            let off = (r.addr.wrapping_sub(link)) as usize;
            if relocated_ok(r, built, live, off, cx.slide()) {
                i = off.saturating_add(r.kind.width() as usize);
                continue;
            }
        }
        // The instruction that covers this byte: a rel32 call/jmp starting
        // up to four bytes back, in either version.
        let start = (i.saturating_sub(4)..=i)
            .find(|&s| {
                rel32_target(built, s, link).is_some() || rel32_target(live, s, runtime).is_some()
            })
            .unwrap_or(i);
        let was = rel32_target(built, start, link);
        let detail = match rel32_target(live, start, runtime) {
            Some(t) => format!(
                "{name}+{start:#x} now calls {} (the build calls {})",
                cx.name(t),
                was.map_or("nothing here".into(), |w| cx
                    .name(w.wrapping_add(cx.slide())))
            ),
            None => format!("{name}+{start:#x} code differs from the build"),
        };
        let now = rel32_target(live, start, runtime).unwrap_or(0);
        out.push(Finding::new(
            "syscall-dispatch",
            detail,
            &[at(start), now],
            format!("live {}, built {}", bytes(live, start), bytes(built, start)),
        ));
        i = start.saturating_add(5);
    }
}

fn idt(cx: &Context, out: &mut Vec<Finding>) {
    let Some(table) = cx.sym("idt_table") else {
        return;
    };
    let mut b = vec![0u8; 256 * 16];
    if cx.read(table, &mut b).is_none() {
        out.push(Finding::new("idt", "cannot read idt_table", &[table], ""));
        return;
    }
    let stubs = |name: &str| cx.map.addr(name).zip(cx.map.extent(name));
    // Per-vector stubs without symbols of their own; reserved exception
    // vectors keep the early boot handlers.
    let stub_ranges: Vec<(u64, u64)> = [
        "irq_entries_start",
        "spurious_entries_start",
        "early_idt_handler_array",
    ]
    .iter()
    .filter_map(|n| stubs(n))
    .collect();
    for (vector, g) in b.chunks_exact(16).enumerate() {
        let present = g[5] & 0x80 != 0;
        if !present {
            continue;
        }
        let handler = u64::from(u16::from_le_bytes([g[0], g[1]]))
            | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
            | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
        let link = handler.wrapping_sub(cx.slide());
        let in_stubs = stub_ranges
            .iter()
            .any(|&(a, n)| link.checked_sub(a).is_some_and(|o| o < n));
        let at_symbol = cx.map.function_at(link).is_some();
        if !cx.in_image(handler) || !(in_stubs || at_symbol) {
            out.push(Finding::new(
                "idt",
                format!("IDT vector {vector} enters {}", cx.name(handler)),
                &[
                    table.wrapping_add((vector as u64).wrapping_mul(16)),
                    handler,
                ],
                "gates must enter kernel text at an entry symbol",
            ));
        }
    }
}

fn operation_tables(cx: &Context, out: &mut Vec<Finding>) {
    for table in OPERATION_TABLES {
        compare_table(
            cx,
            table,
            "operation-table",
            &|i| format!("{table} slot {i}"),
            out,
        );
    }
}

/// Walk `ftrace_ops_list`: `struct ftrace_ops { func; next; ... }`.
fn ftrace_ops(cx: &Context, out: &mut Vec<Finding>) {
    let (Some(head), Some(end)) = (cx.sym("ftrace_ops_list"), cx.sym("ftrace_list_end")) else {
        return;
    };
    let Some(mut ops) = cx.read_words(head, 1).map(|w| w[0]) else {
        out.push(Finding::new(
            "ftrace-hook",
            "cannot read ftrace_ops_list",
            &[head],
            "",
        ));
        return;
    };
    for _ in 0..256 {
        if ops == end || ops == 0 {
            return;
        }
        let Some(w) = cx.read_words(ops, 2) else {
            out.push(Finding::new(
                "ftrace-hook",
                format!("ftrace_ops_list leads to unreadable memory at {ops:#x}"),
                &[ops],
                "",
            ));
            return;
        };
        let (func, next) = (w[0], w[1]);
        if !cx.in_image(func) {
            out.push(Finding::new(
                "ftrace-hook",
                format!(
                    "an ftrace hook at {ops:#x} runs {} on traced kernel functions",
                    cx.name(func)
                ),
                &[ops, func],
                if cx.in_image(ops) {
                    "ftrace_ops in the kernel image"
                } else {
                    "ftrace_ops outside the kernel image (module or heap)"
                },
            ));
        }
        ops = next;
    }
    out.push(Finding::new(
        "ftrace-hook",
        "ftrace_ops_list does not end (loop?)",
        &[head],
        "",
    ));
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;
    use crate::kernel::locate::tests::{pa_of, SLIDE, TEXT_PA};
    use crate::kernel::locate::{locate, tests::synthetic_guest};

    /// x64_sys_call of the synthetic build: `call __fentry__` at its start
    /// (an ftrace site), a jump table reference (a KASLR relocation), then
    /// a few jumps.
    const FN: u64 = 0xffff_ffff_8120_0500;
    const FENTRY: u64 = 0xffff_ffff_8120_0700;

    fn built_code() -> Vec<u8> {
        let mut c = vec![0xe8];
        c.extend(((FENTRY - (FN + 5)) as u32).to_le_bytes());
        // jmp *0xffffffff81800240(,%rsi,8): 32S reloc at +8
        c.extend([0xff, 0x24, 0xf5]);
        c.extend((0x8180_0240u32).to_le_bytes());
        // mov $0x81800000, %eax: an immediate that happens to look like an
        // address, with no relocation record.
        c.push(0xb8);
        c.extend((0x8180_0000u32).to_le_bytes());
        c.extend([0x90; 47]);
        c
    }

    /// A synthetic guest whose x64_sys_call is `code` (runtime bytes), and
    /// a vmlinux that says what it was built as.
    fn guest(code: &[u8]) -> (tempfile::TempDir, GuestRam, SystemMap, GuestKernel, Vmlinux) {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map_text = format!(
            "{}ffffffff81200500 T x64_sys_call\nffffffff81200540 T after_it\nffffffff81200700 T __fentry__\nffffffff81200710 T ftrace_caller\nffffffff81200780 T ftrace_regs_caller\nffffffff82006000 D __start_mcount_loc\nffffffff82006008 D __stop_mcount_loc\n",
            crate::kernel::symbols::tests::MAP
        );
        let map = SystemMap::parse(&map_text).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let pa = pa_of(&map, TEXT_PA, "x64_sys_call");
        for (i, c) in code.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            ram.write_u64(GuestAddress(pa + 8 * i as u64), u64::from_le_bytes(w))
                .unwrap();
        }
        // The vmlinux: .text with x64_sys_call's built bytes and a 32S
        // relocation at +8.
        let mut text = vec![0u8; 0x200];
        text[..64].copy_from_slice(&built_code());
        let elf = crate::kernel::vmlinux::tests::elf(FN, &text, &[(FN + 8, 11, 1)]);
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, elf).unwrap();
        let v = Vmlinux::load(&p).unwrap();
        (dir, ram, map, k, v)
    }

    fn findings(code: &[u8]) -> Vec<Finding> {
        let (_d, ram, map, k, v) = guest(code);
        let cx = Context {
            ram: &ram,
            map: &map,
            kernel: &k,
            vmlinux: &v,
            modules: Default::default(),
        };
        let built = built_code();
        let mut live = vec![0u8; 64];
        cx.read(FN + SLIDE, &mut live).unwrap();
        let relocs = v.kaslr_relocations(FN, FN + 64).unwrap();
        let mut out = Vec::new();
        compare_code(
            &cx,
            "x64_sys_call",
            FN,
            &built,
            &live,
            &relocs,
            &[FN],
            &mut out,
        );
        out
    }

    fn runtime_code(site: &[u8]) -> Vec<u8> {
        let mut c = built_code();
        c[..5].copy_from_slice(site);
        // KASLR moved the jump table reference by the slide.
        let t = 0x8180_0240u32.wrapping_add(SLIDE as u32);
        c[8..12].copy_from_slice(&t.to_le_bytes());
        c
    }

    fn call_to(target: u64) -> Vec<u8> {
        let mut c = vec![0xe8];
        c.extend((target.wrapping_sub(FN + SLIDE + 5) as u32).to_le_bytes());
        c
    }

    #[test]
    fn what_the_kernel_itself_writes_is_accepted() {
        assert!(findings(&runtime_code(&NOP5)).is_empty());
        assert!(findings(&runtime_code(&call_to(0xffff_ffff_8120_0710 + SLIDE))).is_empty());
        assert!(findings(&runtime_code(&call_to(0xffff_ffff_8120_0780 + SLIDE))).is_empty());
    }

    #[test]
    fn a_jump_at_the_fentry_site_is_a_finding() {
        // jmp to module memory over ftrace's call site.
        let mut jmp = call_to(0xffff_ffff_c012_3000);
        jmp[0] = 0xe9;
        let f = findings(&runtime_code(&jmp));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].detail.contains("ftrace's call site"),
            "{}",
            f[0].detail
        );
        // A call to module memory that is no ftrace trampoline.
        let f = findings(&runtime_code(&call_to(0xffff_ffff_c012_3000)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].detail.contains("0xffffffffc0123000"),
            "{}",
            f[0].detail
        );
        // A call into the kernel that is not an ftrace caller.
        let f = findings(&runtime_code(&call_to(0xffff_ffff_8120_0100 + SLIDE)));
        assert!(
            f[0].detail.contains("instead of an ftrace caller"),
            "{}",
            f[0].detail
        );
    }

    #[test]
    fn only_real_relocation_sites_may_move_by_the_slide() {
        // A byte window elsewhere that moved by exactly the slide is not a
        // relocation the build knows: a finding.
        let mut c = runtime_code(&NOP5);
        let v = 0x8180_0000u32;
        c[13..17].copy_from_slice(&v.wrapping_add(SLIDE as u32).to_le_bytes());
        let f = findings(&c);
        assert_eq!(f.len(), 1, "{f:?}");
        // The real site holding a value other than built + slide.
        let mut c = runtime_code(&NOP5);
        c[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(findings(&c).len(), 1);
    }
}
