//! The metrics and their alerting rules against Prometheus's own tool:
//! `promtool check rules` and `promtool test rules` on
//! `prometheus/xftrace.rules.yml` (its unit tests fire each alert on
//! synthetic series), and `promtool check metrics` on what `xftrace
//! metrics` prints for a state directory holding a collector's status and
//! a check with findings; `--textfile` writes the same, readable by
//! node_exporter. promtool comes from Debian's `prometheus` package,
//! fetched and unpacked (not installed: nothing is started).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use xftrace::detect::last_check::LastCheck;
use xftrace::detect::{Finding, FindingKind};
use xftrace::host::statedir::GuestDir;
use xftrace::trace::status::{CollectorState, CollectorStatus};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// promtool from Debian's package, unpacked once under target/ (once for
/// all the tests of this binary, which run at once).
fn promtool() -> PathBuf {
    static P: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(fetch_promtool).clone()
}

fn fetch_promtool() -> PathBuf {
    let dir = repo().join("target/xftrace-test/promtool");
    let bin = dir.join("usr/bin/promtool");
    if bin.is_file() {
        return bin;
    }
    let dl = dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dl).unwrap();
    let st = Command::new("apt-get")
        .args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "prometheus",
        ])
        .current_dir(&dl)
        .status()
        .expect("run apt-get download");
    assert!(st.success(), "apt-get download prometheus");
    let deb = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the package");
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .expect("run dpkg-deb");
    assert!(st.success(), "dpkg-deb -x {}", deb.display());
    let _ = std::fs::remove_dir_all(&dl);
    bin
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let p = promtool();
    let dir = repo().join("prometheus");
    let out = run(Command::new(&p)
        .args(["check", "rules", "xftrace.rules.yml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = run(Command::new(&p)
        .args(["test", "rules", "xftrace.rules.test.yml"])
        .current_dir(&dir));
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
