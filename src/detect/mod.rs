//! Rootkit detection: findings from guest memory (control-data integrity,
//! the tracer's own integrity) and from traces (call flow).
//!
//! | module | what |
//! |---|---|
//! | [`checks`] | one file per check over guest memory, behind the [`checks::Check`] trait |
//! | [`callflow`] | what traced syscalls call, against a baseline |
//! | [`run`] | `check`, `watch` and `baseline`: open the guest once, run everything |

pub mod callflow;
pub mod checks;
pub mod run;

pub use run::{baseline, check, watch, CheckOptions, Checked};

use log::warn;
use serde::{Deserialize, Serialize};

/// What a finding is about; its JSON form is the kebab-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A `sys_call_table` entry differs from the build.
    SyscallTable,
    /// `x64_sys_call`'s code differs from the build where the kernel does
    /// not change it itself.
    SyscallDispatch,
    /// Kernel code differs from the build where the kernel never patches
    /// itself, or a patch site holds what the kernel never writes there.
    KernelText,
    /// Kernel read-only data (outside `__ro_after_init`) differs from the
    /// build.
    KernelRodata,
    /// An int3 breakpoint in kernel code: a kprobe (or a debugger).
    Kprobe,
    /// An IDT gate enters something other than kernel entry code.
    Idt,
    /// A well-known operation table differs from the build.
    OperationTable,
    /// An ftrace callback outside the kernel image.
    FtraceHook,
    /// xftrace itself was attacked, narrowed or duplicated.
    TracerIntegrity,
    /// A traced call ran code outside the kernel image.
    CallFlowUnknownCode,
    /// A traced call made a call the baseline never saw.
    CallFlowNewEdge,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::SyscallTable => "syscall-table",
            FindingKind::SyscallDispatch => "syscall-dispatch",
            FindingKind::KernelText => "kernel-text",
            FindingKind::KernelRodata => "kernel-rodata",
            FindingKind::Kprobe => "kprobe",
            FindingKind::Idt => "idt",
            FindingKind::OperationTable => "operation-table",
            FindingKind::FtraceHook => "ftrace-hook",
            FindingKind::TracerIntegrity => "tracer-integrity",
            FindingKind::CallFlowUnknownCode => "call-flow-unknown-code",
            FindingKind::CallFlowNewEdge => "call-flow-new-edge",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing an operator should look at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub domain: String,
    pub time: f64,
    pub kind: FindingKind,
    pub detail: String,
    /// Addresses involved, as hex strings.
    pub addresses: Vec<String>,
    pub evidence: String,
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
            detail: detail.into(),
            addresses: addresses.iter().map(|a| format!("{a:#x}")).collect(),
            evidence: evidence.into(),
        }
    }
}

/// One line per finding, whatever guest-derived text it holds.
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::escape::escape;
        write!(
            f,
            "[{}] {}: {}",
            escape(&self.domain),
            self.kind,
            escape(&self.detail)
        )?;
        if !self.evidence.is_empty() {
            write!(f, " ({})", escape(&self.evidence))?;
        }
        Ok(())
    }
}

/// Print findings, one per line, and log them.
pub fn report(findings: &[Finding], json: bool) {
    for f in findings {
        warn!("finding: {f}");
        if json {
            println!("{}", serde_json::to_string(f).expect("serializes"));
        } else {
            println!("{f}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::run::{check, CheckOptions};
    use super::*;
    use crate::kernel::locate::tests::{place_kernel, synthetic_guest, SLIDE, TEXT_PA};
    use crate::kernel::symbols::tests::MAP;
    use crate::kernel::target::{MemFile, Source, Target};

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

    /// A decoy (a second control block with page tables of its own, which
    /// takes kernel privileges to build) is reported, and every check still
    /// runs, against each block.
    #[test]
    fn a_decoy_is_reported_and_every_check_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        place_kernel(&ram, &map, TEXT_PA + (32 << 20), SLIDE);
        drop(ram);
        std::fs::write(dir.path().join("System.map"), MAP).unwrap();
        // A vmlinux holding the build's banner where System.map puts it.
        let banner = map.addr("linux_banner").unwrap();
        let mut data = b"Linux version 6.1.192 (test) #1 SMP\n\0".to_vec();
        data.resize(64, 0);
        std::fs::write(
            dir.path().join("vmlinux"),
            crate::fuzzing::elf(banner, &data, &[]),
        )
        .unwrap();
        let target = Target {
            source: Source::MemFile(MemFile {
                path: dir.path().join("ram"),
                machine: None,
                max_ram_below_4g: None,
            }),
            system_map: Some(dir.path().join("System.map")),
            vmlinux: None,
            state_root: dir.path().join("state"),
        };
        let f = check(&target, &CheckOptions { trace_seconds: 0 })
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
    }
}
