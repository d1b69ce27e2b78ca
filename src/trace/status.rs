//! What the collector says about a session, in the guest's state
//! directory (`status.json`): read by `status`, `list`, `off`, `check` and
//! the hook.

use serde::{Deserialize, Serialize};

use crate::base::error::Result;
use crate::guest::addr::Slide;
use crate::host::process::ProcessId;
use crate::host::statedir::GuestDir;
use crate::trace::rings::RingStats;

/// Where a session stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollectorState {
    #[default]
    Starting,
    Collecting,
    Stopped,
    /// The guest's RAM file went away (the VM stopped).
    GuestGone,
    Failed,
    /// `off` wrote the trace; nothing is left to collect.
    Written,
}

impl std::fmt::Display for CollectorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CollectorState::Starting => "starting",
            CollectorState::Collecting => "collecting",
            CollectorState::Stopped => "stopped",
            CollectorState::GuestGone => "guest-gone",
            CollectorState::Failed => "failed",
            CollectorState::Written => "written",
        })
    }
}

/// What the collector reports about the current session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CollectorStatus {
    pub state: CollectorState,
    /// The collector process.
    #[serde(flatten)]
    pub process: ProcessId,
    pub target: String,
    pub functions: Vec<String>,
    pub started: f64,
    pub updated: f64,
    pub key_epoch: u64,
    pub key_rotations: u64,
    pub slide: Slide,
    pub nr_cpus: u32,
    pub banner: String,
    /// The System.map the collector used (for rendering after the guest is gone).
    pub system_map: String,
    /// `[start, end)` of the probe where the build's System.map does not
    /// have it: the `xftrace-dkms` module's.
    pub probe: Option<(u64, u64)>,
    #[serde(flatten)]
    pub rings: RingStats,
    /// Events the guest could not record: no valid key, a CPU without a
    /// ring, or a CPU already inside the tracer (NMI).
    pub guest_dropped: u64,
    pub heartbeat_stalled: bool,
    /// The guest's tracer was seen on during this session (`on` switches
    /// it on only once the collector reads, a little after it starts).
    pub guest_tracing: bool,
    /// Why the guest's capture was thinner than asked, as it reported.
    pub narrowed: Vec<String>,
    /// The spool's limit in bytes.
    pub spool_limit: u64,
    /// What this trace lacks that the guest did (an earlier session left
    /// unwritten, a tracer adopted), for the trace's header.
    pub gaps: Vec<String>,
    pub message: String,
}

impl CollectorStatus {
    pub fn read(dir: &GuestDir) -> Option<Self> {
        dir.read_json(&dir.status_path())
    }

    pub fn write(&self, dir: &GuestDir) -> Result<()> {
        dir.write_json(&dir.status_path(), self)
    }
}

/// Only who the collector is, from its status file (what the hook needs).
pub fn collector_process(dir: &GuestDir) -> Option<ProcessId> {
    dir.read_json(&dir.status_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format_is_flat_and_kebab_case() {
        let root = tempfile::tempdir().unwrap();
        let dir = GuestDir::for_domain(&root.path().join("state"), "d").unwrap();
        let s = CollectorStatus {
            state: CollectorState::GuestGone,
            process: ProcessId {
                pid: 42,
                pid_start: 7,
                boot_id: "b".into(),
            },
            ..Default::default()
        };
        s.write(&dir).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.status_path()).unwrap()).unwrap();
        assert_eq!(v["state"], "guest-gone");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["records"], 0);
        assert_eq!(CollectorStatus::read(&dir).unwrap(), s);
        assert_eq!(collector_process(&dir).unwrap().pid, 42);
    }
}
