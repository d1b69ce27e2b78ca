//! The clean-guest soak's bookkeeping, shared by its raw-QEMU half
//! (`tests/soak.rs`, state in `XFTRACE_SOAK_STATE`) and its Debian/libvirt
//! half (`tests/e2e_debian.rs` with `XFTRACE_SOAK_DEBIAN_CHECKS`, state in
//! `XFTRACE_SOAK_DEBIAN_STATE`): counts and every finding, kept as JSON so
//! that a long soak adds up over runs.

use std::path::PathBuf;
use std::process::Output;

use serde_json::{json, Value};

use super::detection::findings;

/// Progress of a soak, loaded from and saved to its state file (if any).
pub struct SoakState {
    path: Option<PathBuf>,
    pub v: Value,
}

impl SoakState {
    /// The state kept in the file that environment variable `var` names
    /// (none: counted for this run only).
    pub fn load(var: &str) -> SoakState {
        let path = std::env::var_os(var).map(PathBuf::from);
        let v = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| {
                json!({"checks": 0, "with_call_flow": 0, "boots": 0, "findings": [], "by_workload": {}})
            });
        SoakState { path, v }
    }

    pub fn n(&self, k: &str) -> u64 {
        self.v[k].as_u64().unwrap_or(0)
    }

    pub fn bump(&mut self, k: &str) {
        self.v[k] = json!(self.n(k) + 1);
    }

    /// Count one check of `o` under `workload`, keeping it if it found
    /// anything or did not exit 0 (`context` says when and how).
    pub fn record(&mut self, o: &Output, workload: &str, call_flow: bool, context: Value) {
        let f = findings(o);
        self.bump("checks");
        if call_flow {
            self.bump("with_call_flow");
        }
        let per = self.v["by_workload"][workload].as_u64().unwrap_or(0);
        self.v["by_workload"][workload] = json!(per + 1);
        if !f.is_empty() || o.status.code() != Some(0) {
            let mut entry = context;
            entry["workload"] = json!(workload);
            entry["call_flow"] = json!(call_flow);
            entry["exit"] = json!(o.status.code());
            entry["findings"] = json!(f);
            entry["stderr"] = json!(String::from_utf8_lossy(&o.stderr));
            self.v["findings"].as_array_mut().unwrap().push(entry);
        }
        self.save();
    }

    pub fn bad(&self) -> usize {
        self.v["findings"].as_array().map_or(0, |a| a.len())
    }

    pub fn save(&self) {
        if let Some(p) = &self.path {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&self.v).unwrap()).unwrap();
            std::fs::rename(&tmp, p).unwrap();
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} checks ({} with call flow) over {} boots, by workload {}; {} with findings",
            self.n("checks"),
            self.n("with_call_flow"),
            self.n("boots"),
            self.v["by_workload"],
            self.bad()
        )
    }
}

/// `XFTRACE_SOAK_INTEGRITY_ONLY=1`: every check of a soak without the
/// call-flow window (the integrity checks alone, many more per hour).
pub fn integrity_only() -> bool {
    std::env::var("XFTRACE_SOAK_INTEGRITY_ONLY").is_ok_and(|v| v == "1")
}
