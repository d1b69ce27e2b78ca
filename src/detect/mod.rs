//! Rootkit detection: findings from guest memory (control-data integrity,
//! the tracer's own integrity) and from traces (call flow).
//!
//! | module | what |
//! |---|---|
//! | [`checks`] | one file per check over guest memory, behind the [`checks::Check`] trait |
//! | [`callflow`] | what traced syscalls call, against a baseline |
//! | [`inventory`] | the hooks a baseline records as known (`hooks.json`) |
//! | [`kernel_log`] | Oopses, BUGs, warnings and panics in the guest kernel's log, as `watch` follows it |
//! | [`witness`] | the tracer's records as a witness of which tasks run, against a census of the kernel's tasks |
//! | [`run`] | `check`, `watch` and `baseline`: open the guest once, run everything |
//! | [`last_check`] | what the last check found, kept for `xftrace metrics` |

pub mod callflow;
pub mod checks;
pub mod inventory;
pub mod kernel_log;
pub mod last_check;
pub mod run;
pub mod witness;

pub use run::{baseline, check, follow_log, watch, CheckOptions, Checked, Rounds, Watch};

use serde::{Deserialize, Serialize};

/// Declares [`FindingKind`] with each kind's name, written once: the
/// name is its JSON form, what `Display` prints, and what `--kind`-style
/// input parses.
macro_rules! finding_kinds {
    ($($(#[$doc:meta])* $kind:ident = $name:literal,)*) => {
        /// What a finding is about; its JSON form is its name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum FindingKind {
            $($(#[$doc])* $kind,)*
        }

        impl FindingKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [FindingKind] = &[$(FindingKind::$kind,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(FindingKind::$kind => $name,)*
                }
            }
        }
    };
}

finding_kinds! {
    /// A `sys_call_table` entry differs from the build.
    SyscallTable = "syscall-table",
    /// `x64_sys_call`'s code differs from the build where the kernel does
    /// not change it itself.
    SyscallDispatch = "syscall-dispatch",
    /// Kernel code differs from the build where the kernel never patches
    /// itself, or a patch site holds what the kernel never writes there.
    KernelText = "kernel-text",
    /// Kernel read-only data (outside `__ro_after_init`) differs from the
    /// build.
    KernelRodata = "kernel-rodata",
    /// An int3 breakpoint in kernel code: a kprobe (or a debugger).
    Kprobe = "kprobe",
    /// `__ro_after_init` data changed since this boot's snapshot, or points
    /// into module space.
    RoAfterInit = "ro-after-init",
    /// A module in the kernel's module address tree but not in its list.
    HiddenModule = "hidden-module",
    /// A task missing from one of the kernel's enumerations of tasks (the
    /// task list, the process tree, the PID allocator) and present in
    /// another, or on a run queue: unlinked to hide it.
    HiddenTask = "hidden-task",
    /// A task's credentials changed behind the kernel's back: IDs written
    /// in place, an object another process or the idle task holds, one
    /// made outside the credential cache, capabilities beyond the
    /// bounding set.
    Credentials = "credentials",
    /// Executable kernel memory that no known code owns.
    HiddenCode = "hidden-code",
    /// The kernel's page tables map its image somewhere other than its own
    /// pages (a shadow copy the image checks never read), or with
    /// permissions the kernel never gives it.
    KernelMapping = "kernel-mapping",
    /// A notifier, tracepoint, netfilter or LSM handler in no known code,
    /// or in a module outside the build that the hook inventory lacks.
    HookRegistry = "hook-registry",
    /// A raw or packet socket with a BPF filter attached, by a process the
    /// baseline's inventory does not know (without one: inventory, low).
    SocketFilter = "socket-filter",
    /// A BPF program the baseline's hook inventory lacks (without one: a
    /// program that hooks the kernel's own control flow).
    BpfProgram = "bpf-program",
    /// An IDT gate enters something other than kernel entry code.
    Idt = "idt",
    /// A vCPU's live IDT register or page-table root (read from QEMU) is
    /// not one the kernel keeps.
    VcpuState = "vcpu-state",
    /// A well-known operation table differs from the build.
    OperationTable = "operation-table",
    /// A function pointer in the kernel's writable data (`.data`, `.bss`,
    /// per-CPU data) leads outside the kernel's functions and differs from
    /// the build.
    ControlData = "control-data",
    /// An operation-table pointer or callback of a kernel object (inode,
    /// super block, file, socket, network device, protocol, proc entry,
    /// TTY) leads outside the tables and code of the kernel and its build.
    ObjectOperations = "object-operations",
    /// A kernel thread, timer, work item, tasklet or IRQ handler runs code
    /// outside the kernel and its build.
    DeferredCode = "deferred-code",
    /// A loaded module (listed, or found by the hidden-module walk) that
    /// the build does not ship and the baseline's inventory lacks.
    ForeignModule = "foreign-module",
    /// An ftrace callback outside the kernel image.
    FtraceHook = "ftrace-hook",
    /// The kernel's taint mask lacks a flag a loaded module set, or one it
    /// had at the baseline in the same boot (cleared); or flags set since
    /// the baseline (low).
    Taint = "taint",
    /// The guest kernel logged an Oops, a BUG, a warning, a lockup, a
    /// stall or a panic (`watch`, as it happens).
    KernelLog = "kernel-log",
    /// xftrace itself was attacked, narrowed or duplicated.
    TracerIntegrity = "tracer-integrity",
    /// A traced call ran code outside the kernel image.
    CallFlowUnknownCode = "call-flow-unknown-code",
    /// A traced call made a call the baseline never saw.
    CallFlowNewEdge = "call-flow-new-edge",
}

impl std::str::FromStr for FindingKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FindingKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown finding kind '{}'", crate::base::escape::escape(s)))
    }
}

impl Serialize for FindingKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FindingKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgently a finding wants a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Inventory, not a hook: what the guest runs that the build does not
    /// ship. Alone it leaves `check`'s exit code 0.
    Low,
    /// Weak evidence alone: a call the baseline never saw that the build's
    /// code could make.
    Medium,
    /// Control data or code changed, hooks outside the kernel, or the
    /// tracer attacked.
    High,
}

impl FindingKind {
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::CallFlowNewEdge | FindingKind::KernelLog => Severity::Medium,
            FindingKind::ForeignModule => Severity::Low,
            _ => Severity::High,
        }
    }
}

/// Do `findings` call for the operator (any of medium or high severity)?
/// Low ones (inventory) are reported but leave a check clean.
pub fn alarming(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity > Severity::Low)
}

/// What `owner` says when no loaded module holds the code involved.
pub const NO_MODULE: &str = "no module";

/// One thing an operator should look at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub domain: String,
    pub time: f64,
    pub kind: FindingKind,
    pub severity: Severity,
    /// The module whose code the finding involves (escaped), or "no module".
    pub owner: String,
    pub detail: String,
    /// Addresses involved, as hex strings.
    pub addresses: Vec<String>,
    pub evidence: String,
    #[serde(skip)]
    raw: Vec<u64>,
}

impl Finding {
    pub fn new(
        kind: FindingKind,
        detail: impl Into<String>,
        addresses: &[u64],
        evidence: impl Into<String>,
    ) -> Self {
        Finding {
            domain: String::new(),
            time: crate::host::statedir::now_unix(),
            kind,
            severity: kind.severity(),
            owner: NO_MODULE.into(),
            detail: detail.into(),
            addresses: addresses.iter().map(|a| format!("{a:#x}")).collect(),
            evidence: evidence.into(),
            raw: addresses.to_vec(),
        }
    }

    /// Name the owner: the first module whose code holds one of the
    /// addresses (`module_of`), unless a check named it already.
    pub fn attribute<'m>(&mut self, module_of: &dyn Fn(u64) -> Option<&'m str>) {
        if self.owner != NO_MODULE {
            return;
        }
        if let Some(m) = self.raw.iter().find_map(|&a| module_of(a)) {
            self.owner = m.to_string();
        }
    }

    /// The owner, set by the check that knows it (a hidden module).
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }
}

/// One line per finding, whatever guest-derived text it holds.
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::base::escape::escape;
        write!(
            f,
            "[{}] {} {}: {}",
            escape(&self.domain),
            self.kind,
            match self.severity {
                Severity::High => "(high)",
                Severity::Medium => "(medium)",
                Severity::Low => "(low)",
            },
            escape(&self.detail)
        )?;
        if self.owner != NO_MODULE {
            write!(f, " [owner: {}]", escape(&self.owner))?;
        }
        if !self.evidence.is_empty() {
            write!(f, " ({})", escape(&self.evidence))?;
        }
        Ok(())
    }
}

/// The lines that report findings: one per finding, JSON objects with
/// `json` (the command line prints them, once: not also as a log line).
pub fn report(findings: &[Finding], json: bool) -> Vec<String> {
    findings
        .iter()
        .map(|f| {
            if json {
                serde_json::to_string(f).expect("serializes")
            } else {
                f.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::run::{check, watch, CheckOptions};
    use super::*;

    #[test]
    fn every_kind_has_one_name_for_json_display_and_parsing() {
        let mut names = std::collections::BTreeSet::new();
        for &k in FindingKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<FindingKind>(&json).unwrap(), k);
            assert_eq!(k.to_string().parse::<FindingKind>(), Ok(k));
            assert!(k
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c == b'-'));
            assert!(names.insert(k.as_str()), "{k} twice");
        }
        assert_eq!(names.len(), 27);
        assert!(serde_json::from_str::<FindingKind>("\"rootkit\"").is_err());
    }
    use crate::kernel::locate::tests::{place_kernel, synthetic_guest, SLIDE, TEXT_PA};
    use crate::kernel::symbols::tests::MAP;
    use crate::kernel::target::{MemFile, Source, Target};
    use std::time::Duration;

    #[test]
    fn a_finding_is_one_line_whatever_the_guest_wrote() {
        let mut f = Finding::new(
            FindingKind::FtraceHook,
            "runs 0x1 (outside the kernel image, in module evil\n[dom] idt: all clear\x1b[2K)",
            &[1],
            "",
        );
        f.domain = "web\r01".into();
        let s = f.to_string();
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(!s.contains('\x1b') && !s.contains('\r'), "{s}");
    }

    #[test]
    fn findings_carry_a_severity_and_the_owning_module() {
        let mut f = Finding::new(FindingKind::KernelText, "x", &[0x1000, 0xc000_0010], "");
        f.attribute(&|a| (a == 0xc000_0010).then_some("rk_inline"));
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(j["severity"], "high");
        assert_eq!(j["owner"], "rk_inline");
        assert!(j.get("raw").is_none());
        let mut g = Finding::new(FindingKind::CallFlowNewEdge, "y", &[1], "");
        g.attribute(&|_| None);
        let j = serde_json::to_value(&g).unwrap();
        assert_eq!(
            (j["severity"].as_str(), j["owner"].as_str()),
            (Some("medium"), Some(NO_MODULE))
        );
        // A check that knows the owner keeps it.
        let mut h = Finding::new(FindingKind::HiddenModule, "z", &[1], "").owned_by("rk_hide");
        h.attribute(&|_| Some("other"));
        assert_eq!(h.owner, "rk_hide");
        assert!(h.to_string().contains("[owner: rk_hide]"));
    }

    /// A decoy (a second control block with page tables of its own, which
    /// takes kernel privileges to build) is reported, and every check still
    /// runs, against each block.
    #[test]
    fn a_decoy_is_reported_and_every_check_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let target = decoy_guest(dir.path());
        // Its thread never beats: no watching it longer (10 s a block).
        let f = crate::base::settle::without_settling(|| {
            check(&target, &CheckOptions { trace_seconds: 0 })
        })
        .unwrap()
        .findings;
        assert!(
            f.iter()
                .any(|x| x.kind == FindingKind::TracerIntegrity && x.detail.contains("decoy")),
            "{f:#?}"
        );
        // The synthetic guest's thread never beats: each block's tracer
        // check says so, once per block.
        let stalled = f
            .iter()
            .filter(|x| x.detail.contains("heartbeat did not advance"))
            .count();
        assert_eq!(stalled, 2, "{f:#?}");
        // Reported one line each, or one JSON object each.
        assert_eq!(report(&f, false)[0], f[0].to_string());
        let j: serde_json::Value = serde_json::from_str(&report(&f, true)[0]).unwrap();
        assert_eq!(j["detail"], f[0].detail.as_str());
    }

    /// `watch` yields each finding in the round it first appears, checks
    /// at least once, and stops after its rounds.
    #[test]
    fn watch_reports_each_finding_once_over_its_rounds() {
        // The decoy guest's thread never beats: no watching it longer.
        crate::base::settle::without_settling(watch_reports_each_finding_once);
    }

    fn watch_reports_each_finding_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = decoy_guest(dir.path());
        let opts = CheckOptions { trace_seconds: 0 };
        let rounds: Vec<Vec<Finding>> = watch(&target, &opts, Duration::ZERO, Some(2))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rounds.len(), 2);
        assert!(!rounds[0].is_empty());
        assert!(rounds[1].is_empty(), "{:#?}", rounds[1]);
        assert_eq!(watch(&target, &opts, Duration::ZERO, Some(0)).count(), 1);
        let on = |path: std::path::PathBuf| Target {
            source: Source::MemFile(MemFile {
                path,
                machine: None,
                max_ram_below_4g: None,
                qmp: None,
            }),
            system_map: target.system_map.clone(),
            vmlinux: None,
            modules: None,
            state_root: target.state_root.clone(),
        };
        // A stopped guest (no RAM file) is not checked, and watch goes on.
        let gone = on(dir.path().join("no-such-ram"));
        let r: Vec<_> = watch(&gone, &opts, Duration::ZERO, Some(3)).collect();
        assert_eq!(r.len(), 3);
        assert!(
            r.iter().all(|x| x.as_ref().is_ok_and(|f| f.is_empty())),
            "{r:?}"
        );
        // A running guest whose control block is gone (a rootkit zeroed
        // it): a finding, once, and watch goes on.
        let blank = dir.path().join("blank-ram");
        std::fs::File::create(&blank)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let r: Vec<_> = watch(&on(blank), &opts, Duration::ZERO, Some(2))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(r.len(), 2);
        assert!(
            r[0].len() == 1
                && r[0][0].kind == FindingKind::TracerIntegrity
                && r[0][0].detail.contains("could not be checked"),
            "{r:#?}"
        );
        assert!(r[1].is_empty(), "{r:#?}");
        // A command line that can never work (no vmlinux) ends it.
        let bare = dir.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        std::fs::copy(dir.path().join("System.map"), bare.join("System.map")).unwrap();
        let no_vmlinux = Target {
            system_map: Some(bare.join("System.map")),
            ..on(dir.path().join("ram"))
        };
        let r: Vec<_> = watch(&no_vmlinux, &opts, Duration::ZERO, None).collect();
        assert!(
            matches!(r.as_slice(), [Err(crate::base::error::Error::Input(_))]),
            "{r:?}"
        );
    }

    /// A synthetic guest with a decoy: a second control block with page
    /// tables of its own.
    fn decoy_guest(dir: &std::path::Path) -> Target {
        let (ram, map) = synthetic_guest(dir);
        place_kernel(&ram, &map, TEXT_PA + (32 << 20), SLIDE);
        drop(ram);
        std::fs::write(dir.join("System.map"), MAP).unwrap();
        // A vmlinux holding the build's banner where System.map puts it.
        let banner = map.addr("linux_banner").unwrap();
        let mut data = b"Linux version 6.1.192 (test) #1 SMP\n\0".to_vec();
        data.resize(64, 0);
        std::fs::write(
            dir.join("vmlinux"),
            crate::testkit::synthetic::elf(banner, &data, &[]),
        )
        .unwrap();
        Target {
            source: Source::MemFile(MemFile {
                path: dir.join("ram"),
                machine: None,
                max_ram_below_4g: None,
                qmp: None,
            }),
            system_map: Some(dir.join("System.map")),
            vmlinux: None,
            modules: None,
            state_root: dir.join("state"),
        }
    }
}
