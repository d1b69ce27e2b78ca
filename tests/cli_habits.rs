//! The command line as an operator meets it, through libvirt's own test
//! driver (`test:///FILE`, in process, no daemon): a mistyped domain
//! leaves no state behind, the domain may be given as virsh takes it,
//! `-v`/`-q` set the log level, log lines are journald's when systemd
//! collects them, the help says what xftrace is for, and the completions
//! offer no internal command.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.xml"),
            "<node><domain type='test'><name>web01</name><memory>65536</memory>\
             <os><type>hvm</type></os></domain></node>",
        )
        .unwrap();
        Node { dir }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn xftrace(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        c.arg("--state-dir")
            .arg(self.state())
            .arg("--connect")
            .arg(format!(
                "test://{}",
                self.dir.path().join("node.xml").display()
            ))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM");
        c
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_domain_that_does_not_exist_gets_no_state() {
    let node = Node::new();
    for args in [
        &["status", "web0l"][..],
        &["off", "web0l"],
        &["dmesg", "web0l"],
        &["check", "web0l"],
        &["watch", "web0l", "--rounds", "1"],
        &["--domain", "web0l", "on", "sys_read"],
        &["--domain", "web0l", "baseline"],
    ] {
        let o = node.xftrace(args);
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("no domain named 'web0l'"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(
            !node.state().join("domains/web0l").exists(),
            "{args:?} created state for a domain that does not exist"
        );
    }
    // The exit codes stay each command's: an input error (3), and 2 for
    // the detection commands.
    assert_eq!(node.xftrace(&["status", "web0l"]).status.code(), Some(3));
    assert_eq!(node.xftrace(&["check", "web0l"]).status.code(), Some(2));
}

#[test]
fn the_domain_is_positional_as_in_virsh() {
    let node = Node::new();
    // The domain exists: its state is created, and the command goes on to
    // fail on what the test driver cannot give (a RAM file).
    let o = node.xftrace(&["status", "web01"]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("no domain named"),
        "{}",
        text(&o)
    );
    assert!(node.state().join("domains/web01").is_dir(), "{}", text(&o));
    // The same domain twice is one; two different ones are refused.
    let same = node.xftrace(&["--domain", "web01", "status", "web01"]);
    assert!(
        !String::from_utf8_lossy(&same.stderr).contains("two domains"),
        "{}",
        text(&same)
    );
    let two = node.xftrace(&["--domain", "web01", "check", "web02"]);
    assert_eq!(two.status.code(), Some(2), "{}", text(&two));
    assert!(
        String::from_utf8_lossy(&two.stderr).contains("two domains given"),
        "{}",
        text(&two)
    );
    let both = node.xftrace(&["--mem-file", "/dev/null", "status", "web01"]);
    assert_eq!(both.status.code(), Some(3), "{}", text(&both));
    // `check --all`: the connection's running enrolled domains (none
    // here), and no single domain besides.
    let all = node.xftrace(&["check", "--all"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    assert!(
        String::from_utf8_lossy(&all.stdout).contains("no running enrolled domain"),
        "{}",
        text(&all)
    );
    let o = node.xftrace(&["--domain", "web01", "check", "--all"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = node.xftrace(&["check", "web01", "--all"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses both: {}", text(&o));
}

#[test]
fn verbosity_and_journald() {
    let node = Node::new();
    let debug = |o: &Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("xftrace 0.") && l.contains(": List"))
    };
    let quiet = node.xftrace(&["list"]);
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(!debug(&quiet), "{}", text(&quiet));
    let vv = node.xftrace(&["-vv", "list"]);
    assert!(vv.status.success() && debug(&vv), "{}", text(&vv));
    let q = node.xftrace(&["-q", "-q", "list"]);
    assert!(q.status.success(), "{}", text(&q));
    assert!(
        node.xftrace(&["-v", "-q", "list"]).status.code() == Some(2),
        "-v and -q together are refused"
    );

    // Under systemd, stderr is the journal's stream and JOURNAL_STREAM
    // names it: lines carry sd-daemon priorities, no timestamp.
    let err_path = node.dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let m = err.metadata().unwrap();
    let st = node
        .command(&["-vv", "list"])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(err)
        .status()
        .unwrap();
    assert!(st.success());
    let logged = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.starts_with("<7>xftrace") && l.contains(": List")),
        "{logged}"
    );
    // A JOURNAL_STREAM inherited by a process whose stderr went elsewhere
    // is not the journal.
    let o = node
        .command(&["-vv", "list"])
        .env("JOURNAL_STREAM", "1:2")
        .output()
        .unwrap();
    assert!(
        debug(&o) && !String::from_utf8_lossy(&o.stderr).contains("<7>"),
        "{}",
        text(&o)
    );
}

#[test]
fn help_and_completions_show_what_an_operator_uses() {
    let node = Node::new();
    let help = node.xftrace(&["--help"]);
    let h = String::from_utf8_lossy(&help.stdout);
    assert!(h.contains("Rootkit detection for KVM guests"), "{h}");
    let commands: Vec<&str> = h
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for c in [
        "on",
        "off",
        "status",
        "check",
        "watch",
        "enroll",
        "completions",
    ] {
        assert!(commands.contains(&c), "{c} missing from {commands:?}");
    }
    for c in ["collect", "hook"] {
        assert!(
            !commands.contains(&c),
            "internal command {c} in {commands:?}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = node.xftrace(&["completions", shell]);
        assert!(o.status.success(), "{}", text(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("baseline") && script.contains("domain"),
            "{shell}"
        );
        // The hidden commands say "not for direct use" in their help.
        for internal in ["not for direct use", "--lock-fd", "--wait", "--gap"] {
            assert!(
                !script.contains(internal),
                "{shell} completion offers {internal}"
            );
        }
    }
    // The bash script parses.
    let o = node.xftrace(&["completions", "bash"]);
    let path = node.dir.path().join("xftrace.bash");
    std::fs::write(&path, &o.stdout).unwrap();
    let st = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(st.success(), "bash -n {}", Path::new(&path).display());
}

#[test]
fn json_answers_and_errors() {
    let node = Node::new();
    let o = node.xftrace(&["list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(rows.len(), 1, "{}", text(&o));
    assert_eq!(rows[0]["domain"], "web01");
    assert_eq!(rows[0]["enrolled"], "no");
    assert_eq!(rows[0]["tracing"], "no");
    assert!(rows[0]["system_map"].is_null());
    // An error, whatever the command: one object on stdout, the exit code
    // it names, nothing on stderr.
    for (args, code) in [
        (&["--json", "check", "web0l"][..], 2),
        (
            &["--json", "metrics", "--textfile", "/nonexistent/dir/x.prom"],
            3,
        ),
        (&["--json", "unenroll", "web01"], 5),
    ] {
        let o = node.xftrace(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)));
        assert_eq!(v["exit"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o));
    }
    // `status` of a domain whose RAM cannot be read (the test driver has
    // none): what it knows as data, then the error.
    let o = node.xftrace(&["--json", "status", "web01"]);
    let out: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(out.len(), 2, "{}", text(&o));
    assert_eq!(out[0]["target"], "domain web01", "{}", out[0]);
    assert_eq!(out[0]["collector"]["state"], "none", "{}", out[0]);
    assert!(
        out[0]["tracer_on"].is_null() && out[0]["lines"].is_array(),
        "{}",
        out[0]
    );
    assert_eq!(out[1]["exit"], o.status.code().unwrap(), "{}", out[1]);
}

/// The watch service's unit: systemd accepts it (`systemd-analyze verify`,
/// with its ExecStart pointed at this build), it is hardened (systemd's own
/// exposure score at most 2.5 of 10: today 1.9), and a second `watch --all`
/// on the same state directory is refused while one runs.
#[test]
fn the_watch_service_unit_verifies_is_hardened_and_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("xftrace-watch.service");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/xftrace-watch.service"),
    )
    .unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/xftrace watch --all"));
    std::fs::write(
        &unit,
        shipped.replace("/usr/bin/xftrace", env!("CARGO_BIN_EXE_xftrace")),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = Command::new("systemd-analyze")
            .args(args)
            .arg(&unit)
            .output()
            .expect("systemd-analyze (package systemd; tests/guest/install-deps.sh installs it)");
        eprintln!(
            "systemd-analyze {args:?}: {}{}",
            text_of(&o.stdout),
            text_of(&o.stderr)
        );
        o
    };
    assert!(run(&["verify", "--man=no"]).status.success());
    let o = run(&["security", "--offline=true", "--threshold=25"]);
    assert!(o.status.success(), "the unit's exposure is above 2.5");

    let n = Node::new();
    let mut first = n.command(&["watch", "--all"]).spawn().unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !n.state().join("watch-all.lock").exists() {
        assert!(std::time::Instant::now() < end, "watch --all never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = n.xftrace(&["watch", "--all"]);
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    assert!(
        text(&second).contains("another `xftrace watch --all` runs"),
        "{}",
        text(&second)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        first.wait().unwrap().code(),
        Some(0),
        "stopped, it ends cleanly"
    );
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
