//! End to end through a real libvirtd: enrollment, the `virsh start` hook,
//! and tracing a domain by name while it runs.

mod common;

use std::time::{Duration, Instant};

use common::libvirtd::{virsh, Libvirtd, OtherHost, URI};
use common::{xftrace, Console};

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A line of `xftrace list`: name, state, enrolled, tracing.
fn list_row(line: &str, name: &str, want: [&str; 3]) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() >= 4 && f[0] == name && f[1..4] == want
}

/// State directory and a libvirtd with the hook pointing at it.
fn setup() -> (tempfile::TempDir, Libvirtd) {
    let state = common::state_dir();
    let lv = Libvirtd::start(state.path());
    (state, lv)
}

/// `xftrace enroll NAME --system-map <the test kernel's> EXTRA...`
fn enroll(st: &std::path::Path, name: &str, extra: &[&str]) -> std::process::Output {
    let map = common::system_map();
    let mut args = vec![
        "-c",
        URI,
        "enroll",
        name,
        "--system-map",
        map.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    xftrace(st, &args)
}

/// `xftrace --domain NAME off --output TRACE`
fn off(st: &std::path::Path, name: &str, trace: &std::path::Path) -> std::process::Output {
    xftrace(
        st,
        &["--domain", name, "off", "--output", trace.to_str().unwrap()],
    )
}

fn domstate(name: &str) -> String {
    String::from_utf8_lossy(&virsh(&["domstate", name]).stdout)
        .trim()
        .to_string()
}

#[test]
fn enroll_start_trace_by_name_and_survive_destroy() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let name = format!("xft-e2e-{}", std::process::id());
    let console = lv.define(&name, 256);

    // Enrollment: dry run changes nothing, then the real one, then idempotent.
    let o = enroll(st, &name, &["--dry-run"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("+    <source type='file'/>"),
        "{}",
        out(&o)
    );
    assert!(
        !String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &name]).stdout)
            .contains("xftrace:enrollment")
    );
    let o = enroll(st, &name, &[]);
    assert!(o.status.success(), "{}", out(&o));
    let xml =
        String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &name]).stdout).into_owned();
    for want in [
        "<source type='file'/>",
        "<access mode='shared'/>",
        "<allocation mode='immediate'/>",
        "<memballoon model='none'/>",
        "xftrace:enrollment",
    ] {
        assert!(xml.contains(want), "{want} missing from {xml}");
    }
    let o = enroll(st, &name, &[]);
    assert!(out(&o).contains("already enrolled"), "{}", out(&o));
    // The same answers in JSON (what the Ansible roles read).
    for (args, diff) in [
        (&["--json"][..], None),
        (&["--json", "--dry-run"], Some("(no change)\n")),
    ] {
        let o = enroll(st, &name, args);
        assert!(o.status.success(), "{}", out(&o));
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert_eq!(v["changed"], false, "{v}");
        assert_eq!(v["domain"], name.as_str(), "{v}");
        match diff {
            Some(d) => assert_eq!(v["diff"], d, "{v}"),
            None => assert_eq!(v["live"], "unchanged", "{v}"),
        }
    }
    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["off", "yes", "no"])),
        "{}",
        out(&o)
    );

    // Start through libvirt (the hook runs), trace by name.
    let o = virsh(&["start", &name]);
    assert!(o.status.success(), "{}", out(&o));
    let mut con = Console::tcp(&console, Duration::from_secs(30)).unwrap();
    con.wait_for("XFTRACE-GUEST-READY", Duration::from_secs(180), &mut || {
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(common::hook_state(st, &name).as_deref(), Some("running"));

    let o = xftrace(st, &["--domain", &name, "on", "sys_openat", "sys_read"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = xftrace(st, &["--domain", &name, "status"]);
    assert!(
        out(&o).contains("tracer on") && out(&o).contains("collector:  running"),
        "{}",
        out(&o)
    );
    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["running", "yes", "yes"])),
        "{}",
        out(&o)
    );
    let mut states = Vec::new();
    for _ in 0..3 {
        assert!(con
            .sh("cat /tmp/hello.txt")
            .contains("hello from the guest"));
        states.push(domstate(&name));
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace_graph.txt");
    let o = off(st, &name, &trace);
    assert!(o.status.success(), "{}", out(&o));
    states.push(domstate(&name));
    assert!(states.iter().all(|s| s == "running"), "{states:?}");
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains(&format!("# xftrace: guest domain {name}")),
        "{}",
        &text[..400.min(text.len())]
    );
    assert!(text.contains(" 0 failed integrity checks"));
    let open = text.find("|  __x64_sys_openat() {").expect("openat traced");
    assert!(
        text[open..].contains("|    do_sys_openat2() {"),
        "do_sys_openat2 not nested"
    );

    // `virsh destroy` while collecting: a complete trace and a clear status.
    let o = xftrace(st, &["--domain", &name, "on", "sys_openat"]);
    assert!(o.status.success(), "{}", out(&o));
    con.sh("cat /tmp/hello.txt > /dev/null");
    std::thread::sleep(Duration::from_millis(300));
    let o = virsh(&["destroy", &name]);
    assert!(o.status.success(), "{}", out(&o));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let o = xftrace(st, &["--domain", &name, "status"]);
        let s = out(&o);
        if s.contains("collector:  not running") || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(status.contains("not running"), "{status}");
    assert!(
        status.contains("guest-gone") || status.contains("stopped"),
        "{status}"
    );
    assert!(
        status.contains("domain") && status.contains("not running"),
        "{status}"
    );
    assert_eq!(common::hook_state(st, &name).as_deref(), Some("stopped"));
    let trace2 = dir.path().join("after-destroy.txt");
    let o = off(st, &name, &trace2);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("does not run here"), "{}", out(&o));
    let text = std::fs::read_to_string(&trace2).unwrap();
    assert!(text.starts_with("# tracer: function_graph\n"));
    assert!(text.contains("__x64_sys_openat() {"), "{text}");

    // Unenroll restores the definition.
    let o = xftrace(st, &["-c", URI, "unenroll", &name]);
    assert!(o.status.success(), "{}", out(&o));
    let xml =
        String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &name]).stdout).into_owned();
    assert!(
        !xml.contains("xftrace:enrollment") && !xml.contains("<access mode='shared'/>"),
        "{xml}"
    );
    drop(lv);
}

#[test]
fn hook_passes_plain_domains_and_refuses_broken_enrollments() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let plain = format!("xft-plain-{}", std::process::id());
    let broken = format!("xft-broken-{}", std::process::id());
    lv.define(&plain, 128);
    lv.define(&broken, 128);

    // Not enrolled: starts as if xftrace were not there.
    let o = virsh(&["start", &plain]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(domstate(&plain), "running");
    assert!(common::hook_state(st, &plain).is_none());
    virsh(&["destroy", &plain]);

    // Enrolled, then the memory backing edited away by hand: refused.
    let o = enroll(st, &broken, &[]);
    assert!(o.status.success(), "{}", out(&o));
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &broken]).stdout)
        .replace("<access mode='shared'/>", "");
    let f = lv.images.join("broken-edited.xml");
    std::fs::write(&f, xml).unwrap();
    assert!(virsh(&["define", f.to_str().unwrap()]).status.success());
    let o = virsh(&["start", &broken]);
    assert!(
        !o.status.success(),
        "a broken enrolled domain started: {}",
        out(&o)
    );
    let msg = out(&o);
    assert!(
        msg.contains("xftrace enroll"),
        "libvirt did not pass on the hook's message: {msg}"
    );
    assert_ne!(domstate(&broken), "running");

    // Whoever may define domains tries to run a command as root through
    // always-on monitoring, and points xftrace at a file of their choice.
    let evil = format!("xft-evil-{}", std::process::id());
    lv.define(&evil, 128);
    let o = enroll(st, &evil, &["--monitor", "sys_openat"]);
    assert!(o.status.success(), "{}", out(&o));
    let marker = lv.images.join("pwned");
    let script = lv.images.join("pwn.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let xml =
        String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &evil]).stdout).into_owned();
    let stored = xml
        .split("system-map path=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a recorded System.map")
        .to_string();
    assert!(
        stored.starts_with(&st.join("kernels").display().to_string()),
        "{stored}"
    );
    let xml = xml
        .replace(
            "functions=\"sys_openat\"",
            &format!(
                "functions=\"sys_openat --connect=qemu+ext:///system?command={}\"",
                script.display()
            ),
        )
        .replace(&stored, "/dev/zero");
    let f = lv.images.join("evil-edited.xml");
    std::fs::write(&f, xml).unwrap();
    assert!(virsh(&["define", f.to_str().unwrap()]).status.success());
    let o = virsh(&["start", &evil]);
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_secs(5));
    assert!(!marker.exists(), "the domain definition ran a command");
    let log = std::fs::read_to_string(st.join("domains").join(&evil).join("monitor.log")).unwrap();
    assert!(
        log.contains("not monitoring") && log.contains("not a function name"),
        "{log}"
    );
    // The path from the definition is refused where it is used.
    let o = xftrace(st, &["--domain", &evil, "status"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("/dev/zero") && err.contains("not in xftrace's state directory"),
        "{err}"
    );
    virsh(&["destroy", &evil]);

    // A domain that does not exist: one error line, xftrace's, exit 3.
    let o = xftrace(st, &["--domain", "no-such-domain", "status"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        err.lines().filter(|l| !l.contains(" INFO ")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("no domain named 'no-such-domain'"), "{err}");
    drop(lv);
}

#[test]
fn always_on_monitoring_starts_from_the_hook() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let name = format!("xft-mon-{}", std::process::id());
    let console = lv.define(&name, 256);
    let o = enroll(st, &name, &["--monitor", "sys_openat"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(virsh(&["start", &name]).status.success());
    let mut con = Console::tcp(&console, Duration::from_secs(30)).unwrap();
    con.wait_for("XFTRACE-GUEST-READY", Duration::from_secs(180), &mut || {
        Ok(())
    })
    .unwrap();
    // The hook started `on` in the background; it waits for the kernel.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let s = out(&xftrace(st, &["--domain", &name, "status"]));
        if s.contains("tracer on")
            && s.contains("collector:  running")
            && s.contains(", collecting")
        {
            break;
        }
        assert!(Instant::now() < end, "monitoring never started: {s}");
        std::thread::sleep(Duration::from_secs(1));
    }
    con.sh("cat /tmp/hello.txt > /dev/null");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace_graph.txt");
    let o = off(st, &name, &trace);
    assert!(o.status.success(), "{}", out(&o));
    assert!(std::fs::read_to_string(&trace)
        .unwrap()
        .contains("__x64_sys_openat() {"));
    watch_service(&mut lv, st, &name, &mut con);
    drop(lv);
}

/// The host's watch service (`watch --all`), on the guest the hook
/// monitored, now with no collector: it starts the monitoring itself,
/// checks the guest every round, goes on while another enrolled domain
/// (started paused: no kernel runs in it) cannot be checked, follows that
/// domain's start and stop through libvirt's events while the hook leaves
/// its start to the service, writes the metrics file, and when stopped
/// switches off the tracing it started and writes its trace.
fn watch_service(lv: &mut Libvirtd, st: &std::path::Path, name: &str, con: &mut Console) {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let t0 = Instant::now();
    let other = format!("xft-mon2-{}", std::process::id());
    lv.define(&other, 128);
    let o = enroll(st, &other, &[]);
    assert!(o.status.success(), "{}", out(&o));
    let prom = st.join("xftrace.prom");
    let log = std::fs::File::create(st.join("watch-all.log")).unwrap();
    let mut svc = std::process::Command::new(env!("CARGO_BIN_EXE_xftrace"))
        .arg("--state-dir")
        .arg(st)
        .args(["-c", URI, "watch", "--all", "--json", "--interval", "2"])
        .arg("--textfile")
        .arg(&prom)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let reader = {
        let (lines, stdout) = (lines.clone(), svc.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                lines.lock().unwrap().push(v);
            }
        })
    };
    let seen = |what: &dyn Fn(&[serde_json::Value]) -> bool, why: &str| {
        let end = Instant::now() + Duration::from_secs(180);
        loop {
            if what(&lines.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < end,
                "watch --all: {why}, in {:#?}\n{}",
                lines.lock().unwrap(),
                std::fs::read_to_string(st.join("watch-all.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let event = |v: &serde_json::Value, e: &str, d: &str| v["event"] == e && v["domain"] == d;
    let summary_of =
        |v: &serde_json::Value, d: &str| v["summary"]["domain"] == format!("domain {d}").as_str();
    // It follows the running domain and starts its monitoring itself.
    seen(
        &|l| l.iter().any(|v| event(v, "tracing", name)),
        "no tracing event",
    );
    wait_collecting(st, name);
    seen(
        &|l| {
            l.iter()
                .any(|v| summary_of(v, name) && v["summary"]["failed"].is_null())
        },
        "no checked round of the guest",
    );
    // Another enrolled domain starts (paused: nothing to check in it).
    assert!(virsh(&["start", "--paused", &other]).status.success());
    let monitor_log = std::fs::read_to_string(st.join("domains").join(&other).join("monitor.log"))
        .unwrap_or_default();
    assert!(
        monitor_log.contains("left to the watch service"),
        "the hook did not leave the start to the service: {monitor_log:?}"
    );
    seen(
        &|l| l.iter().any(|v| event(v, "following", &other)),
        "the second domain's start not followed",
    );
    // Its rounds cannot check it (a finding each time it runs so), and the
    // guest's rounds go on after them.
    seen(
        &|l| {
            l.iter()
                .position(|v| {
                    v["domain"] == format!("domain {other}").as_str() && v["kind"].is_string()
                })
                .is_some_and(|i| l[i..].iter().any(|v| summary_of(v, name)))
        },
        "the unreadable domain stopped the guest's rounds",
    );
    assert!(virsh(&["destroy", &other]).status.success());
    seen(
        &|l| l.iter().any(|v| event(v, "left", &other)),
        "the second domain's stop not followed",
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains(&format!("xftrace_collector_up{{domain=\"{name}\"}} 1")),
        "{metrics}"
    );
    // Stopped, it switches off what it started and says where the trace is.
    con.sh("cat /tmp/hello.txt > /dev/null");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(svc.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = svc.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "watch --all did not end cleanly");
    let l = lines.lock().unwrap();
    let stopped = l
        .iter()
        .find(|v| event(v, "stopped", name))
        .unwrap_or_else(|| panic!("no stopped event: {l:#?}"));
    let trace = std::fs::read_to_string(stopped["trace"].as_str().unwrap()).unwrap();
    assert!(trace.contains("__x64_sys_openat() {"), "{trace}");
    let o = xftrace(st, &["--json", "--domain", name, "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", out(&o)));
    assert!(
        v["mode"] == "patched"
            && v["guest_running"] == true
            && v["tracer_on"] == false
            && v["collector"]["state"] == "stopped"
            && v["collector"]["records"].as_u64() > Some(0),
        "{v:#}"
    );
    eprintln!(
        "watch --all: {} events and rounds in {:.1} s",
        l.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// Calls traced after a restore: the adoption switched the restored
/// guest's tracer off and on again, which also restarts its session clock
/// (a TCG guest's TSC does not carry over a save, and calls that seem to
/// start before the session opened are not recorded).
fn traced_after_restore(text: &str, what: &str) {
    assert!(
        text.contains("__x64_sys_openat() {"),
        "{what}: no calls traced after the restore: {text}"
    );
}

/// Define domain `name`, enroll it (with `extra` arguments), start it
/// through libvirt and wait for the guest's shell. Returns the console's
/// address and the console.
fn start_enrolled(
    lv: &mut Libvirtd,
    st: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (String, Console) {
    let console = lv.define(name, 256);
    let o = enroll(st, name, extra);
    assert!(o.status.success(), "{}", out(&o));
    assert!(virsh(&["start", name]).status.success());
    let mut con = Console::tcp(&console, Duration::from_secs(30)).unwrap();
    con.wait_for("XFTRACE-GUEST-READY", Duration::from_secs(180), &mut || {
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    (console, con)
}

/// Wait until `status` says the guest traces and a collector reads it;
/// returns how long that took.
fn wait_collecting(st: &std::path::Path, name: &str) -> Duration {
    wait_collecting_by(|| xftrace(st, &["--domain", name, "status"]))
}

/// [`wait_collecting`], with `status` run by `status`.
fn wait_collecting_by(status: impl Fn() -> std::process::Output) -> Duration {
    let t = Instant::now();
    let end = t + Duration::from_secs(180);
    loop {
        let s = out(&status());
        if s.contains("tracer on")
            && s.contains("collector:  running")
            && s.contains(", collecting")
        {
            return t.elapsed();
        }
        assert!(Instant::now() < end, "tracing never resumed: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The records of the session a stop interrupted, written aside by `on`.
fn recovered(st: &std::path::Path, name: &str) -> Vec<String> {
    common::recovered_traces(&st.join("domains").join(name))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// `virsh save` while tracing, then `virsh restore`: the collector ends with
/// the guest and keeps what it read; the hook resumes the session after the
/// restore (the guest comes back still tracing, and is adopted); nothing
/// collected before the save is lost and the trace states its gap.
#[test]
fn tracing_continues_across_save_and_restore() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let name = format!("xft-sav-{}", std::process::id());
    let (console, mut con) = start_enrolled(&mut lv, st, &name, &[]);
    let o = xftrace(st, &["--domain", &name, "on", "sys_openat"]);
    assert!(o.status.success(), "{}", out(&o));
    for _ in 0..3 {
        con.sh("cat /tmp/hello.txt > /dev/null");
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(con);

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("saved");
    let o = virsh(&["save", &name, image.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(s.contains("collector:  not running"), "{s}");

    let o = virsh(&["restore", image.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let untraced = wait_collecting(st, &name);
    eprintln!(
        "save/restore: the restored guest traced without a collector for at most {:.1} s",
        untraced.as_secs_f64()
    );
    let mut con = Console::tcp(&console, Duration::from_secs(30)).unwrap();
    for _ in 0..3 {
        assert!(con
            .sh("cat /tmp/hello.txt")
            .contains("hello from the guest"));
    }
    let trace = dir.path().join("trace_graph.txt");
    let o = off(st, &name, &trace);
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    traced_after_restore(&text, "save/restore");
    for gap in [
        "# xftrace: gap: the previous session (collector pid",
        "# xftrace: gap: the guest's tracer was already on with no collector of this session reading it (adopted",
    ] {
        assert!(
            text.contains(gap),
            "{gap}: {}",
            &text[..text.len().min(2000)]
        );
    }
    let before = recovered(st, &name);
    assert_eq!(before.len(), 1);
    assert!(before[0].contains("__x64_sys_openat() {"), "{}", before[0]);
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(s.contains("tracer off") && !s.contains("warning:"), "{s}");
    drop(lv);
}

/// Always-on monitoring across a managed save: `virsh managedsave`, then
/// `virsh start` restores the guest, and the hook's monitoring adopts its
/// tracer by itself. Meanwhile `status` and `check` say the truth.
#[test]
fn monitoring_resumes_after_managed_save() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let name = format!("xft-msv-{}", std::process::id());
    let (console, mut con) = start_enrolled(&mut lv, st, &name, &["--monitor", "sys_openat"]);
    wait_collecting(st, &name);
    con.sh("cat /tmp/hello.txt > /dev/null");
    std::thread::sleep(Duration::from_secs(2));
    drop(con);

    let o = virsh(&["managedsave", &name]);
    assert!(o.status.success(), "{}", out(&o));
    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["off", "yes", "no"])),
        "{}",
        out(&o)
    );
    assert!(virsh(&["start", &name]).status.success());
    let untraced = wait_collecting(st, &name);
    eprintln!(
        "managed save: monitoring adopted the restored guest after {:.1} s",
        untraced.as_secs_f64()
    );
    let mut con = Console::tcp(&console, Duration::from_secs(30)).unwrap();
    con.sh("cat /tmp/hello.txt > /dev/null");
    let o = xftrace(
        st,
        &["--domain", &name, "check", "--json", "--trace-seconds", "0"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    // `list` shows that check; `check --all` checks every running enrolled
    // domain, this one.
    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["running", "yes", "yes"])
                && l.contains(" ago ")
                && l.contains(" clean ")),
        "{}",
        out(&o)
    );
    let o = xftrace(st, &["-c", URI, "list", "--json"]);
    let row: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["domain"] == name.as_str())
        .unwrap_or_else(|| panic!("{}", out(&o)));
    assert_eq!(row["last_check"]["findings"]["high"], 0, "{row}");
    assert_eq!(row["last_check"]["failed"], false, "{row}");
    let o = xftrace(st, &["-c", URI, "check", "--all", "--trace-seconds", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("domain {name}: clean")),
        "{}",
        out(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace_graph.txt");
    let o = off(st, &name, &trace);
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    traced_after_restore(&text, "managed save");
    assert!(
        text.contains("(adopted: switched off, then on again"),
        "{}",
        &text[..text.len().min(2000)]
    );
    // What monitoring read before the save is all kept.
    let before = recovered(st, &name);
    assert_eq!(before.len(), 1);
    assert!(before[0].contains("__x64_sys_openat() {"), "{}", before[0]);
    drop(lv);
}

/// libvirtd crashes and is started again while a domain is traced: the
/// collector goes on and loses nothing. Then the collector itself is
/// killed: `list` and `status` say it died and that the guest still traces,
/// `check` reports the tracer left on, and `off` writes every record the
/// collector had read.
#[test]
fn a_libvirtd_restart_and_a_killed_collector_lose_nothing() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let name = format!("xft-kil-{}", std::process::id());
    let (_, mut con) = start_enrolled(&mut lv, st, &name, &[]);
    let o = xftrace(st, &["--domain", &name, "on", "sys_openat"]);
    assert!(o.status.success(), "{}", out(&o));
    con.sh("cat /tmp/hello.txt > /dev/null");

    lv.crash_and_restart_libvirtd();
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(
        s.contains("tracer on") && s.contains("collector:  running"),
        "{s}"
    );
    for _ in 0..3 {
        con.sh("cat /tmp/hello.txt > /dev/null");
    }
    // Let the collector spool it all and report (every second).
    std::thread::sleep(Duration::from_secs(3));
    let dir = st.join("domains").join(&name);
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap()).unwrap();
    let read = status["records"].as_u64().unwrap();
    assert!(read > 0, "{status}");
    let pid = status["pid"].as_i64().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));

    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["running", "yes", "died"])),
        "{}",
        out(&o)
    );
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(
        s.contains(&format!("died (pid {pid})"))
            && s.contains("the guest's tracer is on and no collector of this host reads it"),
        "{s}"
    );
    let o = xftrace(
        st,
        &["--domain", &name, "check", "--json", "--trace-seconds", "0"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("its collector died"), "{}", out(&o));

    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace_graph.txt");
    let o = off(st, &name, &trace);
    assert!(o.status.success(), "{}", out(&o));
    // Every cat before the kill, one before libvirtd's crash and three
    // after it, is in the trace.
    let text = std::fs::read_to_string(&trace).unwrap();
    let opens = text.matches("__x64_sys_openat() {").count();
    assert!(opens >= 4, "{opens} openat calls in {text}");
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(s.contains("tracer off") && !s.contains("warning:"), "{s}");
    drop(lv);
}

/// `wait_collecting` on the second host.
fn wait_collecting_on(host: &OtherHost, name: &str) -> Duration {
    wait_collecting_by(|| host.xftrace(&["--domain", name, "status"]))
}

/// Live migration between two libvirtd instances (two "hosts" on this
/// machine, see `OtherHost`), of a monitored domain and of a domain an
/// operator traces. On the source the collector ends with the domain and
/// keeps what it read; the destination's hook adopts the arriving guest
/// (which still traces, under the source's key) by itself: monitoring goes
/// on, and an operator's session goes on with the functions the guest
/// traces, under the destination's keys. `status` and `list` say the
/// truth on both hosts, and each trace states its gap.
#[test]
fn tracing_and_monitoring_follow_a_live_migration() {
    let _one = common::serial();
    let (state, mut lv) = setup();
    let st = state.path();
    let host2 = OtherHost::start(st);
    let map = common::system_map();

    // A migration to a host without the domain's kernel build is refused
    // (the guest could be neither monitored nor switched off there).
    let name = format!("xft-mig-{}", std::process::id());
    let (console, mut con) = start_enrolled(&mut lv, st, &name, &["--monitor", "sys_openat"]);
    let from: u16 = console.rsplit(':').next().unwrap().parse().unwrap();
    wait_collecting(st, &name);
    let to = common::free_port();
    let (o, _) = host2.try_migrate_here(&name, from, to);
    assert!(!o.status.success());
    assert!(out(&o).contains("xftrace add-kernel"), "{}", out(&o));
    assert_eq!(domstate(&name), "running");
    let o = host2.xftrace(&[
        "--json",
        "--system-map",
        map.to_str().unwrap(),
        "add-kernel",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    assert!(
        v["changed"] == true
            && v["system_map"]
                .as_str()
                .is_some_and(|p| p.ends_with("/System.map")),
        "{v}"
    );

    // 1. Always-on monitoring.
    for _ in 0..3 {
        con.sh("cat /tmp/hello.txt > /dev/null");
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(con);
    let took = host2.migrate_here(&name, from, to);
    let untraced = wait_collecting_on(&host2, &name);
    eprintln!(
        "live migration (monitored): migrated in {:.1} s; the guest traced without a collector for at most {:.1} s after it arrived",
        took.as_secs_f64(),
        untraced.as_secs_f64()
    );
    // The source: the domain is off there, its collector ended, nothing
    // traces; the destination: running, enrolled, traced.
    let o = xftrace(st, &["-c", URI, "list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["off", "yes", "no"])),
        "{}",
        out(&o)
    );
    let o = host2.xftrace(&["list"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| list_row(l, &name, ["running", "yes", "yes"])),
        "{}",
        out(&o)
    );
    let s = out(&xftrace(st, &["--domain", &name, "status"]));
    assert!(s.contains("collector:  not running"), "{s}");
    let mut con = Console::tcp(&format!("127.0.0.1:{to}"), Duration::from_secs(30)).unwrap();
    for _ in 0..3 {
        assert!(con
            .sh("cat /tmp/hello.txt")
            .contains("hello from the guest"));
    }
    drop(con);
    let o = host2.xftrace(&["--domain", &name, "check", "--json", "--trace-seconds", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let dir = tempfile::tempdir().unwrap();
    let there = dir.path().join("destination.txt");
    let o = host2.xftrace(&[
        "--domain",
        &name,
        "off",
        "--output",
        there.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&there).unwrap();
    assert!(text.contains("__x64_sys_openat() {"), "{text}");
    for gap in [
        "# xftrace: gap: the domain arrived by live migration from another host",
        "(adopted: switched off, then on again under this session's keys)",
    ] {
        assert!(
            text.contains(gap),
            "{gap}: {}",
            &text[..text.len().min(2000)]
        );
    }
    // What the source read before the migration is all there.
    let here = dir.path().join("source.txt");
    let o = off(st, &name, &here);
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&here).unwrap();
    assert!(text.matches("__x64_sys_openat() {").count() >= 3, "{text}");

    // 2. A session an operator started on the source (no monitoring):
    // the destination's hook adopts the guest with what it traces.
    let name2 = format!("xft-mg2-{}", std::process::id());
    let (console, mut con) = start_enrolled(&mut lv, st, &name2, &[]);
    let from: u16 = console.rsplit(':').next().unwrap().parse().unwrap();
    let o = xftrace(st, &["--domain", &name2, "on", "sys_openat", "--irqs"]);
    assert!(o.status.success(), "{}", out(&o));
    con.sh("cat /tmp/hello.txt > /dev/null");
    std::thread::sleep(Duration::from_secs(2));
    drop(con);
    let to = common::free_port();
    let took = host2.migrate_here(&name2, from, to);
    let untraced = wait_collecting_on(&host2, &name2);
    eprintln!(
        "live migration (operator's session): migrated in {:.1} s; the guest traced without a collector for at most {:.1} s after it arrived",
        took.as_secs_f64(),
        untraced.as_secs_f64()
    );
    let s = out(&host2.xftrace(&["--domain", &name2, "status"]));
    assert!(s.contains("functions:  __x64_sys_openat"), "{s}");
    let log = std::fs::read_to_string(st.join("domains").join(&name2).join("monitor.log"))
        .unwrap_or_default();
    assert!(log.is_empty(), "the first host's hook did something: {log}");
    let mut con = Console::tcp(&format!("127.0.0.1:{to}"), Duration::from_secs(30)).unwrap();
    con.sh("cat /tmp/hello.txt > /dev/null");
    drop(con);
    let there = dir.path().join("destination2.txt");
    let o = host2.xftrace(&[
        "--domain",
        &name2,
        "off",
        "--output",
        there.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&there).unwrap();
    assert!(text.contains("__x64_sys_openat() {"), "{text}");
    assert!(
        text.contains("# xftrace: gap: the domain arrived by live migration"),
        "{}",
        &text[..text.len().min(2000)]
    );
    drop(host2);
    drop(lv);
}
