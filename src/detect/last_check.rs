//! What the last check of a guest found, kept in its state directory
//! (`last-check.json`) for `xftrace metrics`: when it ended, how long it
//! took, its findings counted by kind and severity, and the error that cut
//! it short, if one did. Written by every `check` and every `watch` round.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::host::statedir::{now_unix, GuestDir};

use super::{Finding, Severity};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    /// When it ended, seconds since the Unix epoch.
    pub time: f64,
    /// How long it took, seconds.
    pub duration: f64,
    /// Findings by kind and severity: (`kind`, `severity`) → how many.
    pub findings: Vec<Counted>,
    /// What could not run (the check's error, or the part that failed).
    pub error: Option<String>,
    /// The kernel release the guest ran (None: the check found no kernel).
    #[serde(default)]
    pub kernel: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    pub kind: String,
    pub severity: String,
    pub count: u64,
}

fn path(dir: &GuestDir) -> PathBuf {
    dir.path().join("last-check.json")
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
    }
}

impl LastCheck {
    pub fn new(findings: &[Finding], error: Option<&Error>, took: Duration) -> Self {
        let mut n: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for f in findings {
            let c = n
                .entry((f.kind.as_str(), severity(f.severity)))
                .or_default();
            *c = c.saturating_add(1);
        }
        LastCheck {
            time: now_unix(),
            duration: took.as_secs_f64(),
            findings: n
                .into_iter()
                .map(|((kind, severity), count)| Counted {
                    kind: kind.into(),
                    severity: severity.into(),
                    count,
                })
                .collect(),
            error: error.map(ToString::to_string),
            kernel: None,
        }
    }

    /// How many findings of `severity` (`high`, `medium`, `low`) it had.
    pub fn count(&self, severity: &str) -> u64 {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .fold(0u64, |a, f| a.saturating_add(f.count))
    }

    pub fn read(dir: &GuestDir) -> Option<Self> {
        dir.read_json(&path(dir))
    }

    pub fn write(&self, dir: &GuestDir) -> Result<()> {
        dir.write_json(&path(dir), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FindingKind;

    #[test]
    fn counts_by_kind_and_severity_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = GuestDir::for_domain(&tmp.path().join("state"), "d").unwrap();
        assert_eq!(LastCheck::read(&dir), None);
        let f = |k| Finding::new(k, "x", &[], "");
        let c = LastCheck::new(
            &[
                f(FindingKind::SyscallTable),
                f(FindingKind::SyscallTable),
                f(FindingKind::ForeignModule),
            ],
            Some(&Error::Guest("half".into())),
            Duration::from_millis(250),
        );
        assert_eq!(c.findings.len(), 2);
        assert!(c.findings.contains(&Counted {
            kind: "syscall-table".into(),
            severity: "high".into(),
            count: 2
        }));
        assert!(c
            .findings
            .iter()
            .any(|x| x.severity == "low" && x.count == 1));
        assert_eq!(c.duration, 0.25);
        assert!(c.error.as_deref().is_some_and(|e| e.contains("half")));
        c.write(&dir).unwrap();
        assert_eq!(LastCheck::read(&dir), Some(c));
    }
}
