//! Checks of the guest's memory against the trusted build, one file per
//! check behind one small trait. Adding a check: write a file here with a
//! type that implements [`Check`], and add it to [`CHECKS`] (see
//! `docs/checks.md`).
#![deny(clippy::arithmetic_side_effects)]

pub mod bpf_programs;
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

use std::collections::BTreeSet;
use std::ops::Deref;

use crate::abi::le;
use crate::host::statedir::GuestDir;
use crate::kernel::guest::KernelView;
use crate::kernel::text::{Difference, Image};
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
    pub fn new(mut view: KernelView<'a>, vmlinux: &'a Vmlinux, dir: &'a GuestDir) -> Self {
        if view.btf.is_none() {
            view.btf = vmlinux.btf();
        }
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

impl<'a> Context<'a> {
    /// The guest's kernel with its trusted build, for the integrity engine.
    pub fn image(&self) -> Image<'_> {
        Image {
            view: &self.view,
            vmlinux: self.vmlinux,
        }
    }
}

/// A check reads the guest through its kernel view.
impl<'a> Deref for Context<'a> {
    type Target = KernelView<'a>;
    fn deref(&self) -> &KernelView<'a> {
        &self.view
    }
}

/// Where a check puts what it finds: findings of the check's own kind,
/// unless it names another; or nowhere, for a look whose findings only
/// count if a second look agrees.
pub struct Report<'o> {
    kind: FindingKind,
    out: Option<&'o mut Vec<Finding>>,
}

impl<'o> Report<'o> {
    /// Findings of `kind` into `out`.
    pub fn new(kind: FindingKind, out: &'o mut Vec<Finding>) -> Self {
        Report {
            kind,
            out: Some(out),
        }
    }

    /// A report whose findings go nowhere.
    pub fn discard(kind: FindingKind) -> Report<'static> {
        Report { kind, out: None }
    }

    /// A report of the same kind whose findings go nowhere.
    pub fn scratch(&self) -> Report<'static> {
        Report::discard(self.kind)
    }

    /// The kind of the check reporting.
    pub fn kind(&self) -> FindingKind {
        self.kind
    }

    /// A finding of the check's kind, to report later or not.
    pub fn finding(
        &self,
        detail: impl Into<String>,
        addresses: &[u64],
        evidence: impl Into<String>,
    ) -> Finding {
        Finding::new(self.kind, detail, addresses, evidence)
    }

    /// Report a finding of the check's kind.
    pub fn add(
        &mut self,
        detail: impl Into<String>,
        addresses: &[u64],
        evidence: impl Into<String>,
    ) {
        let f = self.finding(detail, addresses, evidence);
        self.push(f);
    }

    /// Report the integrity engine's differences as findings of the
    /// check's kind (a breakpoint is a [`FindingKind::Kprobe`] whatever the
    /// region).
    pub fn differences(&mut self, found: Vec<Difference>) {
        for d in found {
            let kind = if d.breakpoint {
                FindingKind::Kprobe
            } else {
                self.kind
            };
            self.push(Finding::new(kind, d.detail, &d.addresses, d.evidence));
        }
    }

    /// Report any finding.
    pub fn push(&mut self, f: Finding) {
        if let Some(out) = self.out.as_mut() {
            out.push(f);
        }
    }

    /// Report `found`, at most [`MAX_CHANGES`] of them and then one
    /// finding that counts the rest (a guest that rewrites everything must
    /// not flood the report).
    pub fn capped(&mut self, found: Vec<Finding>, what: &str) {
        let n = found.len();
        self.extend(found.into_iter().take(MAX_CHANGES));
        if n > MAX_CHANGES {
            self.add(
                format!("{} more changes in {what}", n.saturating_sub(MAX_CHANGES)),
                &[],
                "",
            );
        }
    }
}

impl Extend<Finding> for Report<'_> {
    fn extend<I: IntoIterator<Item = Finding>>(&mut self, it: I) {
        for f in it {
            self.push(f);
        }
    }
}

/// A check of the guest's memory.
pub trait Check: Sync {
    /// What it reports.
    fn kind(&self) -> FindingKind;
    /// Look, and report what is wrong to `out` (findings of
    /// [`Check::kind`] unless the check names another). Never fails: what
    /// cannot be read is itself a finding.
    fn run(&self, cx: &Context, out: &mut Report);
    /// What of the guest a baseline records as known (its lines of the
    /// hook inventory, [`crate::detect::inventory`]); most checks have
    /// none.
    fn inventory(&self, _cx: &Context) -> BTreeSet<String> {
        BTreeSet::new()
    }
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

/// Every check's inventory lines: the guest's hooks that a baseline
/// records as known.
pub fn inventory(cx: &Context) -> BTreeSet<String> {
    CHECKS.iter().flat_map(|c| c.inventory(cx)).collect()
}

/// Run every check.
pub fn run_all(cx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in CHECKS {
        let t = std::time::Instant::now();
        c.run(cx, &mut Report::new(c.kind(), &mut out));
        log::debug!("check {} took {:?}", c.kind(), t.elapsed());
    }
    out
}

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

/// Changes of one check reported one by one, at most; beyond, one summary.
const MAX_CHANGES: usize = 32;

/// `object` or `object+0xoff` for link-time `link` in kernel data, else the
/// runtime address.
fn data_place(cx: &Context, link: u64) -> String {
    match cx.map().object_containing(link) {
        Some((o, 0)) => o.to_string(),
        Some((o, off)) => format!("{o}+{off:#x}"),
        None => format!("{:#x}", cx.runtime(link)),
    }
}

/// Compare a table of pointers with the build, word by word.
fn compare_table(cx: &Context, name: &str, entry_name: &dyn Fn(usize) -> String, out: &mut Report) {
    let (Some(link), Some(extent)) = (cx.map().addr(name), cx.map().extent(name)) else {
        return;
    };
    let n = (extent / 8).min(1024);
    let runtime = cx.runtime(link);
    let (Some(built), Some(live)) = (
        cx.vmlinux.bytes(link, n.saturating_mul(8)),
        cx.read_words(runtime, n as usize),
    ) else {
        out.add(
            format!("cannot read {name} from the guest or the build"),
            &[runtime],
            "",
        );
        return;
    };
    for (i, (b, &l)) in le::words(&built).zip(&live).enumerate() {
        let want = if cx.map().in_image(b) {
            cx.runtime(b)
        } else {
            b
        };
        if l != want {
            let at = runtime.wrapping_add((i as u64).wrapping_mul(8));
            out.add(
                format!(
                    "{} points to {} instead of {}",
                    entry_name(i),
                    cx.name(l),
                    cx.name(want)
                ),
                &[at, l, want],
                format!("{name} differs from the trusted build"),
            );
        }
    }
}
