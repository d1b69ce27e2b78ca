//! Live integrity of the guest kernel's control data, read from guest RAM
//! without pausing it and compared with the trusted build (System.map and
//! vmlinux, shifted by the KASLR slide):
//! - syscall dispatch: `sys_call_table` (still a finding on 6.1.85+, where
//!   `x64_sys_call()` dispatches) and the code of `x64_sys_call` itself;
//! - the IDT: every present gate must enter kernel text at a symbol;
//! - well-known operation tables (const, so they must equal the build);
//! - ftrace's own hook list: callbacks outside the kernel image are how
//!   ftrace-hooking rootkits show.

use crate::guest_memory::GuestRam;
use crate::kernel::GuestKernel;
use crate::paging::PageTables;
use crate::symbols::SystemMap;
use crate::vmlinux::Vmlinux;

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

pub struct Context<'a> {
    pub ram: &'a GuestRam,
    pub map: &'a SystemMap,
    pub kernel: &'a GuestKernel,
    pub vmlinux: &'a Vmlinux,
    /// Loaded modules (address of `struct module`, name), read on first use.
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

    fn page_tables(&self) -> Option<PageTables<'_>> {
        let root = self.kernel.kva_to_gpa(self.sym("init_top_pgt")?)?;
        let l5 = self
            .sym("__pgtable_l5_enabled")
            .and_then(|a| self.kernel.kva_to_gpa(a))
            .and_then(|pa| {
                let mut b = [0u8; 4];
                self.ram.read_into(pa, &mut b).ok()?;
                Some(u32::from_le_bytes(b) != 0)
            })
            .unwrap_or(false);
        Some(PageTables::new(self.ram, root, l5))
    }

    /// Read guest kernel virtual memory: the image linearly, the rest
    /// through the guest's page tables.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Option<()> {
        let in_image = self.map.in_image(va.wrapping_sub(self.slide()))
            && self.map.in_image(
                va.wrapping_sub(self.slide())
                    .wrapping_add(buf.len() as u64 - 1),
            );
        if in_image {
            let pa = self.kernel.kva_to_gpa(va)?;
            return self.ram.read_into(pa, buf).ok();
        }
        self.page_tables()?.read(va, buf)
    }

    fn read_words(&self, va: u64, n: usize) -> Option<Vec<u64>> {
        let mut b = vec![0u8; n * 8];
        self.read(va, &mut b)?;
        Some(
            b.chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
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
    /// list; char name[56]; ... }` whatever the config.
    fn modules(&self) -> &[(u64, String)] {
        self.modules.get_or_init(|| {
            let mut out = Vec::new();
            let Some(head) = self.sym("modules") else {
                return out;
            };
            let mut p = self.read_words(head, 1).map_or(head, |w| w[0]);
            while p != head && p != 0 && out.len() < 1024 {
                let mut name = [0u8; 56];
                if self.read(p + 16, &mut name).is_none() {
                    break;
                }
                let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                out.push((p - 8, String::from_utf8_lossy(&name[..n]).into_owned()));
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
            .filter(|(m, _)| *m >= addr && *m - addr < 8 << 20)
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
    let n = (extent / 8).min(1024) as usize;
    let (Some(built), Some(live)) = (
        cx.vmlinux.bytes(link, n as u64 * 8),
        cx.read_words(link + cx.slide(), n),
    ) else {
        out.push(Finding::new(
            kind,
            format!("cannot read {name} from the guest or the build"),
            &[link + cx.slide()],
            "",
        ));
        return;
    };
    for (i, (b, &l)) in built.chunks(8).zip(&live).enumerate() {
        let b = u64::from_le_bytes(b.try_into().unwrap());
        let want = if cx.map.in_image(b) {
            b + cx.slide()
        } else {
            b
        };
        if l != want {
            out.push(Finding::new(
                kind,
                format!(
                    "{} points to {} instead of {}",
                    entry_name(i),
                    cx.name(l),
                    cx.name(want)
                ),
                &[link + cx.slide() + 8 * i as u64, l, want],
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
    let rel = i32::from_le_bytes(code.get(at + 1..at + 5)?.try_into().ok()?);
    Some(
        base.wrapping_add(at as u64 + 5)
            .wrapping_add(rel as i64 as u64),
    )
}

/// The dispatcher since 6.1.85: its code must match the build, except the
/// `__fentry__` call that ftrace patches.
fn x64_sys_call(cx: &Context, out: &mut Vec<Finding>) {
    let name = "x64_sys_call";
    let (Some(link), Some(len)) = (cx.map.addr(name), cx.map.extent(name)) else {
        return;
    };
    let len = len.min(64 << 10);
    let runtime = link + cx.slide();
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
    let fentry = cx.map.addr("__fentry__");
    // KASLR relocates absolute 32-bit addresses in code (a switch's jump
    // table operand, say): built value + slide is the live one.
    let relocated = |at: usize| {
        let w = |b: &[u8]| {
            b.get(at..at + 4)
                .map(|x| u32::from_le_bytes(x.try_into().unwrap()))
        };
        matches!((w(built), w(&live)), (Some(b), Some(l)) if b.wrapping_add(cx.slide() as u32) == l && b != l)
    };
    let mut i = 0usize;
    while i < built.len() {
        if built[i] == live[i] {
            i += 1;
            continue;
        }
        if let Some(at) = (i.saturating_sub(3)..=i).find(|&a| relocated(a)) {
            i = at + 4;
            continue;
        }
        // The instruction that covers this byte: a rel32 call/jmp starting
        // up to four bytes back, in either version.
        let start = (i.saturating_sub(4)..=i)
            .find(|&s| {
                rel32_target(built, s, link).is_some() || rel32_target(&live, s, runtime).is_some()
            })
            .unwrap_or(i);
        let was = rel32_target(built, start, link);
        if was.is_some() && was == fentry {
            i = start + 5; // ftrace's own call site
            continue;
        }
        let now = rel32_target(&live, start, runtime);
        let detail = match now {
            Some(t) => format!(
                "{name}+{start:#x} now calls {} (the build calls {})",
                cx.name(t),
                was.map_or("nothing here".into(), |w| cx.name(w + cx.slide()))
            ),
            None => format!("{name}+{start:#x} code differs from the build"),
        };
        out.push(Finding::new(
            "syscall-dispatch",
            detail,
            &[runtime + start as u64, now.unwrap_or(0)],
            format!(
                "live {:02x?}, built {:02x?}",
                &live[start..(start + 5).min(live.len())],
                &built[start..(start + 5).min(built.len())]
            ),
        ));
        i = start + 5;
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
    for (vector, g) in b.chunks(16).enumerate() {
        let present = g[5] & 0x80 != 0;
        if !present {
            continue;
        }
        let handler = u64::from(u16::from_le_bytes([g[0], g[1]]))
            | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
            | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
        let link = handler.wrapping_sub(cx.slide());
        let in_stubs = stub_ranges.iter().any(|&(a, n)| link >= a && link < a + n);
        let at_symbol = cx.map.function_at(link).is_some();
        if !cx.in_image(handler) || !(in_stubs || at_symbol) {
            out.push(Finding::new(
                "idt",
                format!("IDT vector {vector} enters {}", cx.name(handler)),
                &[table + 16 * vector as u64, handler],
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
