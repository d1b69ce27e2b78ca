//! Checks of the guest's memory against the trusted build, one file per
//! check behind one small trait. Adding a check: write a file here with a
//! type that implements [`Check`], and add it to [`CHECKS`] (see
//! `docs/checks.md`).
#![deny(clippy::arithmetic_side_effects)]

pub mod bpf_programs;
pub mod control_data;
pub mod credentials;
pub mod deferred_code;
pub mod foreign_modules;
pub mod ftrace_hooks;
pub mod hidden_code;
pub mod hidden_modules;
pub mod hidden_tasks;
pub mod hook_registries;
pub mod idt;
pub mod kernel_mapping;
pub mod kernel_rodata;
pub mod kernel_text;
pub mod kprobes;
pub mod object_operations;
pub mod operation_tables;
pub mod ro_after_init;
pub mod socket_filters;
pub mod syscall_dispatch;
pub mod syscall_table;
pub mod taint;
pub mod tracer;
pub mod vcpu_state;

use std::collections::BTreeSet;
use std::ops::Deref;

use crate::abi::le;
use crate::guest::paging::TooMany;
use crate::host::statedir::GuestDir;
use crate::kernel::code::{known_code, Owned, Owner as CodeOwner};
use crate::kernel::guest::KernelView;
use crate::kernel::objects::{Census, OpPointer, Points, MAX_LINKS, MAX_OBJECTS, MAX_POINTERS};
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
    /// Reads the vCPUs' live registers from QEMU (None: no monitor of
    /// the guest's QEMU is known).
    pub vcpus: Option<&'a VcpuReader<'a>>,
    /// Code the kernel knows it runs, sorted by start (read once).
    code: std::sync::OnceLock<Vec<Owned>>,
    /// The census of the kernel's objects (walked once, for the checks
    /// of their operations and of their sockets).
    objects: std::sync::OnceLock<Census>,
}

/// What reads the vCPUs' registers: None where no monitor is known.
pub type VcpuReader<'a> =
    dyn Fn() -> Option<std::result::Result<Vec<crate::guest::vcpu::VcpuRegs>, String>> + 'a;

/// `CPU_ENTRY_AREA_RO_IDT`: where x86_64 maps the IDT read-only for every
/// CPU (`CPU_ENTRY_AREA_BASE`, with 4- and 5-level paging; not randomized
/// in 6.1), and what the CPUs' IDT registers hold once the kernel has set
/// up its gates.
pub(super) const CEA_RO_IDT: u64 = 0xffff_fe00_0000_0000;

impl<'a> Context<'a> {
    pub fn new(mut view: KernelView<'a>, vmlinux: &'a Vmlinux, dir: &'a GuestDir) -> Self {
        if view.btf.is_none() {
            view.btf = vmlinux.btf();
        }
        let heartbeat = view
            .kernel
            .tracer
            .as_ref()
            .and_then(|c| view.ram.read_u64(c.field(crate::abi::off::HEARTBEAT)).ok())
            .map(|h| (h, std::time::Instant::now()));
        Context {
            view,
            vmlinux,
            dir,
            heartbeat,
            vcpus: None,
            code: std::sync::OnceLock::new(),
            objects: std::sync::OnceLock::new(),
        }
    }

    /// The census of the kernel's objects ([`KernelView::object_operations`]),
    /// walked at the first call.
    pub fn objects(&self) -> &Census {
        self.objects.get_or_init(|| {
            let t = std::time::Instant::now();
            let c = self.view.object_operations();
            log::debug!(
                "kernel objects: {} objects, {} pointers, {} sockets in {:?}",
                c.objects,
                c.pointers.len(),
                c.sockets.len(),
                t.elapsed()
            );
            c
        })
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

/// Where a pointer the kernel follows leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lands {
    /// The entry of a kernel function.
    KernelFunction,
    /// Kernel text where no function starts (the middle of `.0`).
    KernelInside(String),
    /// The kernel image outside its text: its data and read-only data.
    KernelData,
    /// Code or data of a listed module the build ships.
    BuildModule,
    /// A listed module the build does not ship: its code (`text`) or data.
    Module { name: String, text: bool },
    /// Code the kernel made itself: BPF, ftrace trampolines, kprobe slots.
    KernelMade(CodeOwner),
    /// None of these: heap memory, or code the kernel does not know.
    Elsewhere,
}

/// What a pointer's target says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Into a module the build does not ship: a finding unless the
    /// baseline's inventory knows it.
    Foreign(String),
    /// Wrong wherever it came from: why.
    Wrong(String),
}

/// Page tables read at most: a 1 TiB guest maps its direct map in 1 GiB
/// pages and its vmalloc space in a few thousand tables.
pub const MAX_TABLES: usize = 1 << 16;
/// Separate executable ranges of the kernel half read at most: a clean
/// kernel maps a few hundred (its text, each module's, BPF images).
pub const MAX_EXEC_RANGES: usize = 1 << 16;

/// `SYSTEM_RUNNING` in `enum system_states` (include/linux/kernel.h).
pub const SYSTEM_RUNNING: u32 = 3;

impl<'a> Context<'a> {
    /// Has the guest finished booting (`system_state` is `SYSTEM_RUNNING`)?
    /// By then its `__ro_after_init` data and its image's permissions are
    /// sealed (`mark_rodata_ro` runs just before).
    pub fn system_running(&self) -> bool {
        self.sym("system_state")
            .and_then(|a| self.view.read_u32(a))
            .is_some_and(|s| s == SYSTEM_RUNNING)
    }

    /// What the kernel's page tables let it execute, sorted and merged,
    /// within [`MAX_TABLES`] and [`MAX_EXEC_RANGES`].
    pub fn executable_ranges(&self) -> Result<Vec<(u64, u64)>, TooMany> {
        self.page_tables()
            .executable_ranges(MAX_TABLES, MAX_EXEC_RANGES)
    }

    /// Code the kernel knows it runs (kernel text, listed modules, BPF,
    /// trampolines, ...), sorted by start; read once per check run.
    pub fn known_code(&self) -> &[Owned] {
        self.code.get_or_init(|| {
            let mut c = known_code(&self.view);
            c.sort_by_key(|o| o.start);
            c
        })
    }

    /// Where runtime address `a` leads.
    pub fn lands(&self, a: u64) -> Lands {
        let link = self.link(a);
        let map = self.map();
        if let (Some(s), Some(e)) = (map.addr("_text"), map.addr("_etext")) {
            if (s..e).contains(&link) {
                return match map.containing(link) {
                    Some((_, 0)) => Lands::KernelFunction,
                    Some((f, _)) => Lands::KernelInside(f.to_string()),
                    None => Lands::KernelInside("kernel text".into()),
                };
            }
        }
        if map.in_image(link) {
            return Lands::KernelData;
        }
        if let Some(m) = self.module_memory_at(a) {
            let text = self.module_of(a).is_some();
            return if self.is_build_module(m) {
                Lands::BuildModule
            } else {
                Lands::Module {
                    name: m.name.clone(),
                    text,
                }
            };
        }
        let code = self.known_code();
        let i = code.partition_point(|o| o.start <= a);
        if let Some(o) = i.checked_sub(1).and_then(|i| code.get(i)) {
            if a < o.end && !matches!(o.owner, CodeOwner::KernelText | CodeOwner::Module) {
                return Lands::KernelMade(o.owner);
            }
        }
        // Owned ranges may overlap: look a little further back.
        for o in code.iter().take(i).rev().take(64) {
            if o.start <= a
                && a < o.end
                && !matches!(o.owner, CodeOwner::KernelText | CodeOwner::Module)
            {
                return Lands::KernelMade(o.owner);
            }
        }
        Lands::Elsewhere
    }

    /// Is `value` what a pointer that must lead to `points` may hold?
    pub fn verdict(&self, points: Points, value: u64) -> Verdict {
        let lands = self.lands(value);
        let table = matches!(points, Points::Table | Points::TableOrCode);
        let code = matches!(points, Points::Code | Points::TableOrCode);
        match lands {
            Lands::KernelFunction if code => Verdict::Fine,
            Lands::KernelData if table => Verdict::Fine,
            Lands::BuildModule => Verdict::Fine,
            Lands::KernelMade(CodeOwner::Bpf | CodeOwner::FtraceTrampoline) if code => {
                Verdict::Fine
            }
            Lands::Module { name, text } if text == code || table => Verdict::Foreign(name),
            Lands::Module { name, .. } => {
                Verdict::Wrong(format!("data of module {name}, not code"))
            }
            Lands::KernelInside(f) => Verdict::Wrong(format!(
                "the middle of {f}, where no function starts"
            )),
            Lands::KernelFunction => Verdict::Wrong("kernel code, not a table".into()),
            Lands::KernelData => Verdict::Wrong("kernel data, not code".into()),
            Lands::KernelMade(o) => Verdict::Wrong(format!("{o:?}, not a function")),
            Lands::Elsewhere if table => Verdict::Wrong(
                "outside the kernel image and the build's modules (a copy in heap memory, or a module that hid itself)".into(),
            ),
            Lands::Elsewhere => Verdict::Wrong(
                "outside any code the kernel knows (not kernel text, a listed module, BPF or an ftrace trampoline)".into(),
            ),
        }
    }
}

/// Judge the pointers of objects a walk collected: a finding for each that
/// leads where it must not, or into a module outside the build that the
/// baseline's inventory (`known`) does not have for its class. Findings are
/// of `out`'s kind and name the object, the member, where it leads and the
/// owner.
pub fn judge_pointers(
    cx: &Context,
    pointers: &[OpPointer],
    known: &Option<BTreeSet<String>>,
    out: &mut Report,
) -> Vec<(u64, u64, Finding)> {
    let mut found = Vec::new();
    for p in pointers {
        let what = match p.points {
            Points::Table => "an operation table",
            Points::Code => "code",
            Points::TableOrCode => "an operation table or code",
        };
        let f = match cx.verdict(p.points, p.value) {
            Verdict::Fine => continue,
            Verdict::Foreign(m) => {
                if known
                    .as_ref()
                    .is_some_and(|k| k.contains(&pointer_line(p, &m)))
                {
                    continue;
                }
                out.finding(
                    format!(
                        "{}: {} points to {}, a module the build does not ship, where the kernel expects {what}",
                        p.object,
                        p.member,
                        cx.name(p.value)
                    ),
                    &[p.at, p.value],
                    super::inventory::missing(known),
                )
                .owned_by(m)
            }
            Verdict::Wrong(why) => {
                let f = out.finding(
                    format!(
                        "{}: {} points to {}: {why}, where the kernel expects {what}",
                        p.object,
                        p.member,
                        cx.name(p.value)
                    ),
                    &[p.at, p.value],
                    format!("{} = {:#x}", p.member, p.value),
                );
                match cx.module_of(p.value) {
                    Some(m) => f.owned_by(m.to_string()),
                    None => f,
                }
            }
        };
        found.push((p.at, p.value, f));
    }
    found
}

/// How long an object may be in the middle of a change (freed, its
/// pointer being replaced).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The findings whose pointer (at `.0`) still holds the same value (`.1`)
/// a moment later: objects come and go while they are read.
pub fn settled(cx: &Context, found: Vec<(u64, u64, Finding)>) -> Vec<Finding> {
    if found.is_empty() {
        return Vec::new();
    }
    crate::base::settle::settle(SETTLE);
    found
        .into_iter()
        .filter(|(at, v, _)| cx.read_word(*at) == Some(*v))
        .map(|(_, _, f)| f)
        .collect()
}

/// The findings whose pointer (at `.0`) a second census, taken a moment
/// after the first, still finds leading somewhere wrong: objects are freed
/// and their memory reused while a census reads them (a timer that fired,
/// a file closed), and a stale node read mid-change can hold any word.
/// Re-reading the word alone is not enough, since the reused memory holds
/// still; the second walk shows whether the object is still where the
/// kernel will look. Its value may differ (a hook that swaps between two
/// functions is still a hook). `again` is only called when there is
/// something to confirm.
pub fn confirmed(
    cx: &Context,
    found: Vec<(u64, u64, Finding)>,
    again: impl FnOnce() -> Census,
) -> Vec<Finding> {
    if found.is_empty() {
        return Vec::new();
    }
    crate::base::settle::settle(SETTLE);
    let still: std::collections::HashSet<u64> = again()
        .pointers
        .iter()
        .filter(|p| !matches!(cx.verdict(p.points, p.value), Verdict::Fine))
        .map(|p| p.at)
        .collect();
    found
        .into_iter()
        .filter(|(at, _, _)| still.contains(at))
        .map(|(_, _, f)| f)
        .collect()
}

/// A census check: take `census` (timed), judge its pointers, report what
/// it could not see, and keep the findings that a second census (`again`)
/// confirms a moment later.
pub fn run_census(
    cx: &Context,
    what: &str,
    census: &Census,
    again: impl FnOnce() -> Census,
    out: &mut Report,
) {
    log::debug!(
        "{what}: {} objects, {} pointers",
        census.objects,
        census.pointers.len(),
    );
    if log::log_enabled!(log::Level::Trace) {
        let mut by = std::collections::BTreeMap::new();
        for p in &census.pointers {
            let n = by.entry(p.member).or_insert(0usize);
            *n = n.saturating_add(1);
        }
        log::trace!("{what}: pointers by member {by:?}");
    }
    report_cut(census, what, out);
    let known = super::inventory::load(cx.dir);
    let found = judge_pointers(cx, &census.pointers, &known, out);
    out.capped(confirmed(cx, found, again), what);
}

/// What a census could not see: one the guest filled to its bound is a
/// finding (a clean guest is far below it); a class the build does not
/// describe, or a list cut short while it changed, is logged.
pub fn report_cut(census: &Census, what: &str, out: &mut Report) {
    for c in &census.cut {
        log::info!("census of {what}: {c}");
    }
    if census.full {
        out.add(
            format!(
                "more {what} than a census reads ({MAX_OBJECTS} objects, {MAX_POINTERS} pointers, {MAX_LINKS} links): the rest were not checked"
            ),
            &[],
            census.cut.join("; "),
        );
    }
}

/// How the inventory names a pointer into a module outside the build: the
/// object's class, the member and the module (no addresses).
pub fn pointer_line(p: &OpPointer, module: &str) -> String {
    format!("pointer {} {} {module}", p.class, p.member)
}

/// Inventory lines of the pointers that lead into modules outside the
/// build.
pub fn pointer_inventory(cx: &Context, pointers: &[OpPointer]) -> BTreeSet<String> {
    pointers
        .iter()
        .filter_map(|p| match cx.verdict(p.points, p.value) {
            Verdict::Foreign(m) => Some(pointer_line(p, &m)),
            _ => None,
        })
        .collect()
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
    &socket_filters::SocketFilters,
    &hidden_modules::HiddenModules,
    &hidden_tasks::HiddenTasks,
    &credentials::Credentials,
    &hidden_code::HiddenCode,
    &kernel_mapping::KernelMapping,
    &idt::Idt,
    &operation_tables::OperationTables,
    &control_data::ControlData,
    &object_operations::ObjectOperations,
    &deferred_code::DeferredCode,
    &ftrace_hooks::FtraceHooks,
    &tracer::TracerIntegrity,
    &vcpu_state::VcpuState,
    &foreign_modules::ForeignModules,
    &taint::Taint,
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
