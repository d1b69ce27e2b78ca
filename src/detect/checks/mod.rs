//! Checks of the guest's memory against the trusted build, one file per
//! check behind one small trait. Adding a check: write a file here with a
//! type that implements [`Check`], and add it to [`CHECKS`] (see
//! `docs/checks.md`).
#![deny(clippy::arithmetic_side_effects)]

pub mod bpf_programs;
pub mod code;
pub mod ftrace_hooks;
pub mod hidden_code;
pub mod hidden_modules;
pub mod hook_registries;
pub mod idt;
pub mod kernel_rodata;
pub mod kernel_text;
pub mod kprobes;
pub mod operation_tables;
pub mod ro_after_init;
pub mod syscall_dispatch;
pub mod syscall_table;
pub mod tracer;

use crate::abi::le;
use crate::host::statedir::GuestDir;
use crate::kernel::guest::KernelView;
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::Vmlinux;

use super::{Finding, FindingKind};

/// What every check gets: one kernel of the opened guest, the trusted
/// build, and the guest's state directory.
pub struct Context<'a> {
    pub view: KernelView<'a>,
    pub vmlinux: &'a Vmlinux,
    pub dir: &'a GuestDir,
    /// The guest thread's heartbeat when the checks began, and when: the
    /// tracer check's liveness test counts the other checks' time.
    pub heartbeat: Option<(u64, std::time::Instant)>,
}

impl<'a> Context<'a> {
    pub fn new(view: KernelView<'a>, vmlinux: &'a Vmlinux, dir: &'a GuestDir) -> Self {
        let heartbeat = view
            .ram
            .read_u64(view.kernel.field(crate::abi::off::HEARTBEAT))
            .ok()
            .map(|h| (h, std::time::Instant::now()));
        Context {
            view,
            vmlinux,
            dir,
            heartbeat,
        }
    }
}

impl Context<'_> {
    pub fn map(&self) -> &SystemMap {
        self.view.sym.map
    }

    pub fn slide(&self) -> u64 {
        self.view.sym.slide
    }

    /// Runtime address of a symbol.
    pub fn sym(&self, name: &str) -> Option<u64> {
        self.view.sym.addr(name)
    }

    /// True if runtime `addr` lies in the kernel image.
    pub fn in_image(&self, addr: u64) -> bool {
        self.view.sym.in_image(addr)
    }

    /// Read guest kernel virtual memory.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Option<()> {
        self.view.read(va, buf)
    }

    pub fn read_words(&self, va: u64, n: usize) -> Option<Vec<u64>> {
        self.view.read_words(va, n)
    }

    /// `symbol+0xoff`, or the address with the module that probably owns it.
    pub fn name(&self, addr: u64) -> String {
        self.view.name(addr)
    }
}

/// A check of the guest's memory.
pub trait Check: Sync {
    /// What it reports.
    fn kind(&self) -> FindingKind;
    /// Look, and add what is wrong to `out`. Never fails: what cannot be
    /// read is itself a finding.
    fn run(&self, cx: &Context, out: &mut Vec<Finding>);
}

/// Every check, in the order they run.
pub const CHECKS: &[&dyn Check] = &[
    &syscall_table::SyscallTables,
    &syscall_dispatch::SyscallDispatch,
    &kernel_text::KernelText,
    &kernel_rodata::KernelRodata,
    &ro_after_init::RoAfterInit,
    &kprobes::Kprobes,
    &hook_registries::HookRegistries,
    &bpf_programs::BpfPrograms,
    &hidden_modules::HiddenModules,
    &hidden_code::HiddenCode,
    &idt::Idt,
    &operation_tables::OperationTables,
    &ftrace_hooks::FtraceHooks,
    &tracer::TracerIntegrity,
];

/// Run every check.
pub fn run_all(cx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in CHECKS {
        let t = std::time::Instant::now();
        c.run(cx, &mut out);
        log::debug!("check {} took {:?}", c.kind(), t.elapsed());
    }
    out
}

/// `[start, end)` less the `skip` ranges, in order.
fn subtract((start, end): (u64, u64), skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut skip = skip.to_vec();
    skip.sort_unstable();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in skip {
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out.retain(|(a, b)| a < b);
    out
}

/// Changes of one check reported one by one, at most; beyond, one summary.
const MAX_CHANGES: usize = 32;

/// Add `found` to `out`, at most [`MAX_CHANGES`] of them and then one
/// finding that counts the rest (a guest that rewrites everything must not
/// flood the report).
fn capped(kind: FindingKind, found: Vec<Finding>, what: &str, out: &mut Vec<Finding>) {
    let n = found.len();
    out.extend(found.into_iter().take(MAX_CHANGES));
    if n > MAX_CHANGES {
        out.push(Finding::new(
            kind,
            format!("{} more changes in {what}", n.saturating_sub(MAX_CHANGES)),
            &[],
            "",
        ));
    }
}

/// `object` or `object+0xoff` for link-time `link` in kernel data, else the
/// runtime address.
fn data_place(cx: &Context, link: u64) -> String {
    match cx.map().object_containing(link) {
        Some((o, 0)) => o.to_string(),
        Some((o, off)) => format!("{o}+{off:#x}"),
        None => format!("{:#x}", link.wrapping_add(cx.slide())),
    }
}

/// Compare a table of pointers with the build, word by word.
fn compare_table(
    cx: &Context,
    name: &str,
    kind: FindingKind,
    entry_name: &dyn Fn(usize) -> String,
    out: &mut Vec<Finding>,
) {
    let (Some(link), Some(extent)) = (cx.map().addr(name), cx.map().extent(name)) else {
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
    for (i, (b, &l)) in le::words(&built).zip(&live).enumerate() {
        let want = if cx.map().in_image(b) {
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
