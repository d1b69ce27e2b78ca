//! Prometheus metrics (text exposition format 0.0.4) of every guest with
//! state on this host, read from the state directory: each collector's
//! status file and lock, and each guest's last check (`last-check.json`).
//! `xftrace metrics` prints them; `--textfile` writes them for
//! node_exporter's textfile collector. The names, their labels and the
//! alerting rules shipped beside them are in docs/metrics.md.

use std::fmt::Write as _;
use std::path::Path;

use crate::base::error::Result;
use crate::detect::last_check::LastCheck;
use crate::host::statedir::GuestDir;
use crate::trace::status::{CollectorState, CollectorStatus};

/// One metric family: its samples, each `(labels, value)`, the labels
/// already written out (`domain="web01",kind="…"`).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: String, v: f64) {
        self.samples.push((labels, v));
    }
}

/// A label value as the exposition format writes it.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Counters as f64, as Prometheus keeps them.
#[allow(clippy::cast_precision_loss)]
fn count(n: u64) -> f64 {
    n as f64
}

/// The metrics of every guest with state under `root`.
pub fn render(root: &Path) -> Result<String> {
    let mut up = Family::new(
        "xftrace_collector_up",
        "gauge",
        "1 while a collector reads the guest's rings.",
    );
    let mut state = Family::new(
        "xftrace_collector_state",
        "gauge",
        "The last session's collector state (starting, collecting, stopped, guest-gone, failed, written, died): 1 for the current one.",
    );
    let mut records = Family::new(
        "xftrace_records_collected_total",
        "counter",
        "Records the current or last session collected.",
    );
    let mut lost = Family::new(
        "xftrace_records_lost_total",
        "counter",
        "Records of the current or last session lost in the rings (lapped before they were read).",
    );
    let mut failed = Family::new(
        "xftrace_records_failed_integrity_total",
        "counter",
        "Records of the current or last session that failed the host's integrity checks.",
    );
    let mut dropped = Family::new(
        "xftrace_records_dropped_by_guest_total",
        "counter",
        "Events the guest could not record (no valid key, no ring, nested in the tracer).",
    );
    let mut rotations = Family::new(
        "xftrace_key_rotations_total",
        "counter",
        "Key rotations of the current or last session.",
    );
    let mut checked = Family::new(
        "xftrace_last_check_timestamp_seconds",
        "gauge",
        "When the last check (check, or a watch round) ended.",
    );
    let mut took = Family::new(
        "xftrace_last_check_duration_seconds",
        "gauge",
        "How long the last check took.",
    );
    let mut check_failed = Family::new(
        "xftrace_last_check_failed",
        "gauge",
        "1 if the last check, or a part of it, could not run.",
    );
    let mut by_severity = Family::new(
        "xftrace_last_check_findings",
        "gauge",
        "Findings of the last check by severity (high, medium, low).",
    );
    let mut findings = Family::new(
        "xftrace_findings",
        "gauge",
        "Findings of the last check by kind and severity (docs/checks.md).",
    );

    for (name, dir) in GuestDir::all(root)? {
        let d = format!("domain=\"{}\"", label(&name));
        let running = dir.collector_running()?;
        up.push(d.clone(), flag(running));
        if let Some(s) = CollectorStatus::read(&dir) {
            let died = !running
                && matches!(
                    s.state,
                    CollectorState::Starting | CollectorState::Collecting
                );
            let now = if died {
                "died".to_string()
            } else {
                s.state.to_string()
            };
            state.push(format!("{d},state=\"{}\"", label(&now)), 1.0);
            records.push(d.clone(), count(s.rings.records));
            lost.push(d.clone(), count(s.rings.missing()));
            failed.push(d.clone(), count(s.rings.integrity_failures()));
            dropped.push(d.clone(), count(s.guest_dropped));
            rotations.push(d.clone(), count(s.key_rotations));
        }
        if let Some(c) = LastCheck::read(&dir) {
            checked.push(d.clone(), c.time);
            took.push(d.clone(), c.duration);
            check_failed.push(d.clone(), flag(c.error.is_some()));
            for sev in ["high", "medium", "low"] {
                by_severity.push(format!("{d},severity=\"{sev}\""), count(c.count(sev)));
            }
            for f in &c.findings {
                findings.push(
                    format!(
                        "{d},kind=\"{}\",severity=\"{}\"",
                        label(&f.kind),
                        label(&f.severity)
                    ),
                    count(f.count),
                );
            }
        }
    }

    let mut out = String::new();
    for f in [
        up,
        state,
        records,
        lost,
        failed,
        dropped,
        rotations,
        checked,
        took,
        check_failed,
        by_severity,
        findings,
    ] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Finding, FindingKind};
    use std::time::Duration;

    #[test]
    fn every_guest_with_its_collector_and_last_check() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        // No state at all: the families, no samples.
        let empty = render(&root).unwrap();
        assert!(empty.contains("# TYPE xftrace_collector_up gauge"));
        assert!(!empty.lines().any(|l| l.starts_with("xftrace_")));

        let web = GuestDir::for_domain(&root, "web\"01").unwrap();
        let f = |k| Finding::new(k, "x", &[], "");
        LastCheck::new(
            &[f(FindingKind::SyscallTable), f(FindingKind::SyscallTable)],
            None,
            Duration::from_millis(500),
        )
        .write(&web)
        .unwrap();
        let mut s = CollectorStatus {
            state: CollectorState::Collecting,
            key_rotations: 7,
            ..Default::default()
        };
        s.rings.records = 1234;
        web.write_json(&web.status_path(), &s).unwrap();
        let _held = web.try_lock().unwrap().unwrap();
        GuestDir::for_domain(&root, "db01").unwrap();

        let m = render(&root).unwrap();
        let d = "domain=\"web\\\"01\"";
        for want in [
            format!("xftrace_collector_up{{{d}}} 1"),
            "xftrace_collector_up{domain=\"db01\"} 0".to_string(),
            format!("xftrace_collector_state{{{d},state=\"collecting\"}} 1"),
            format!("xftrace_records_collected_total{{{d}}} 1234"),
            format!("xftrace_key_rotations_total{{{d}}} 7"),
            format!("xftrace_last_check_duration_seconds{{{d}}} 0.5"),
            format!("xftrace_last_check_failed{{{d}}} 0"),
            format!("xftrace_last_check_findings{{{d},severity=\"high\"}} 2"),
            format!("xftrace_last_check_findings{{{d},severity=\"low\"}} 0"),
            format!("xftrace_findings{{{d},kind=\"syscall-table\",severity=\"high\"}} 2"),
        ] {
            assert!(m.lines().any(|l| l == want), "{want} not in\n{m}");
        }
        // A collector that died mid-session says so.
        drop(_held);
        let m = render(&root).unwrap();
        assert!(
            m.contains(&format!("xftrace_collector_state{{{d},state=\"died\"}} 1")),
            "{m}"
        );
    }
}
