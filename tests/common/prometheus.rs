//! Prometheus's promtool, from Debian's `prometheus` package (fetched and
//! unpacked under target/, never installed: nothing is started), and an
//! alert of `prometheus/xftrace.rules.yml` fired on what `xftrace metrics`
//! says of a real guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::repo;

/// promtool, unpacked once for all the tests of a binary.
pub fn promtool() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(fetch).clone()
}

fn fetch() -> PathBuf {
    let dir = super::kernel::scratch().join("promtool");
    let bin = dir.join("usr/bin/promtool");
    if bin.is_file() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&dir);
    super::unpack_package("prometheus", &dir);
    bin
}

/// Run promtool with `args` in `dir`; its output, which must say success.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}: {text}");
    text
}

/// `XftraceRootkitFinding` fires on the `xftrace_findings` series of
/// `kind` and high severity in `metrics` (what `xftrace metrics` printed):
/// promtool's rule unit test, fed that series as a host's node_exporter
/// would export it (`instance="kvm1"`). Returns the series.
pub fn rootkit_alert_fires(metrics: &str, kind: &str) -> String {
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("xftrace_findings{")
                && l.contains(&format!("kind=\"{kind}\""))
                && l.contains("severity=\"high\"")
        })
        .unwrap_or_else(|| panic!("no high {kind} finding in the metrics:\n{metrics}"));
    let (series, value) = line.rsplit_once(' ').unwrap();
    let domain = series
        .split("domain=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let labels = series.trim_end_matches('}').to_string() + ",instance=\"kvm1\"}";
    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("prometheus/xftrace.rules.yml");
    let test = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{labels}'
        values: '{value}x5'
    alert_rule_test:
      - eval_time: 2m
        alertname: XftraceRootkitFinding
        exp_alerts:
          - exp_labels:
              severity: critical
              domain: {domain}
              kind: {kind}
              instance: kvm1
            exp_annotations:
              summary: "{domain}: {kind} on kvm1"
              description: "The last check of {domain} found {value} {kind} finding(s) of high severity: control data or code of the guest kernel changed. `xftrace check {domain}` says what."
"#,
        rules = rules.display()
    );
    std::fs::write(dir.path().join("alert.test.yml"), test).unwrap();
    let out = run(dir.path(), &["test", "rules", "alert.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    line.to_string()
}
