//! The metrics and their alerting rules against Prometheus's own tool:
//! `promtool check rules` and `promtool test rules` on
//! `prometheus/xftrace.rules.yml` (its unit tests fire each alert on
//! synthetic series), and `promtool check metrics` on what `xftrace
//! metrics` prints for a state directory holding a collector's status and
//! a check with findings; `--textfile` writes the same, readable by
//! node_exporter. promtool comes from Debian's `prometheus` package,
//! fetched and unpacked (not installed: nothing is started).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::prometheus::promtool;

use xftrace::detect::last_check::LastCheck;
use xftrace::detect::{Finding, FindingKind};
use xftrace::host::statedir::GuestDir;
use xftrace::trace::status::{CollectorState, CollectorStatus};

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let dir = common::repo().join("prometheus");
    let out = common::prometheus::run(&dir, &["check", "rules", "xftrace.rules.yml"]);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = common::prometheus::run(&dir, &["test", "rules", "xftrace.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

fn state_with_a_finding(root: &Path) {
    let web = GuestDir::for_domain(root, "web01").unwrap();
    let f = |k| Finding::new(k, "x", &[], "");
    LastCheck::new(
        &[f(FindingKind::SyscallTable), f(FindingKind::ForeignModule)],
        None,
        Duration::from_millis(180),
    )
    .write(&web)
    .unwrap();
    let mut s = CollectorStatus {
        state: CollectorState::Collecting,
        key_rotations: 12,
        ..Default::default()
    };
    s.rings.records = 4096;
    web.write_json(&web.status_path(), &s).unwrap();
    GuestDir::for_domain(root, "db01").unwrap();
}

#[test]
fn xftrace_metrics_is_valid_exposition_text() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    state_with_a_finding(&root);
    let xftrace = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xftrace"))
            .arg("--state-dir")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    let o = xftrace(&["metrics"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = String::from_utf8(o.stdout).unwrap();
    for want in [
        "xftrace_findings{domain=\"web01\",kind=\"syscall-table\",severity=\"high\"} 1",
        "xftrace_last_check_findings{domain=\"web01\",severity=\"low\"} 1",
        // The collector's status says collecting, and no collector holds
        // the lock: it died.
        "xftrace_collector_state{domain=\"web01\",state=\"died\"} 1",
        "xftrace_collector_up{domain=\"db01\"} 0",
        "xftrace_records_collected_total{domain=\"web01\"} 4096",
    ] {
        assert!(m.lines().any(|l| l == want), "{want} not in\n{m}");
    }
    let mut lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let o = lint.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // The textfile: the same text, 0644, nothing else left in its directory.
    let tf = tmp.path().join("textfile");
    std::fs::create_dir(&tf).unwrap();
    let prom = tf.join("xftrace.prom");
    let o = xftrace(&["metrics", "--textfile", prom.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = std::fs::read_to_string(&prom).unwrap();
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("xftrace_collector_up"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&written), strip(&m));
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read_dir(&tf).unwrap().count(), 1);
}
