//! End to end: the patched guest kernel under real qemu-system-x86_64, traced
//! by the real xftrace binary through the guest's RAM file.
//!
//! Needs qemu-system-x86_64, busybox-static and the guest kernel (built and
//! cached by guest-kernel/build.sh on first use).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Vm, Xftrace};

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Lines of a function_graph trace: (indent depth, function text, duration us).
fn body(trace: &str) -> Vec<(usize, String, Option<f64>)> {
    trace
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" |  "))
        .map(|l| {
            let (left, right) = l.split_once(" |  ").unwrap();
            let depth = (right.len() - right.trim_start().len()) / 2;
            let dur = left
                .split_once(')')
                .map(|(_, d)| {
                    d.trim()
                        .trim_start_matches(['+', '!', '#', '*', '@', '$'])
                        .trim()
                })
                .and_then(|d| d.strip_suffix("us"))
                .and_then(|d| d.trim().parse().ok());
            (depth, right.trim().to_string(), dur)
        })
        .collect()
}

#[test]
fn traces_openat_and_read_on_a_running_guest() {
    let _one = common::serial();
    let mut vm = Vm::boot(512, 2);
    let x = Xftrace::new(&vm.ram);

    let o = x.run(&["on", "sys_openat", "sys_read", "--json"]);
    assert!(o.status.success(), "on failed: {:?}", text(&o));
    let began: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert_eq!(began["result"], "tracing", "{began}");
    assert_eq!(
        began["symbols"],
        serde_json::json!(["__x64_sys_openat", "__x64_sys_read"])
    );
    assert!(began["pid"].as_u64().is_some_and(|p| p > 1), "{began}");

    // Watch the guest while collecting: QMP must say running every time, and
    // the guest's own counter must keep moving.
    let stop = Arc::new(AtomicBool::new(false));
    let qmp_dir = vm.dir.path().to_path_buf();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut states = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                states.push(common::qmp_status_at(&qmp_dir));
                std::thread::sleep(Duration::from_millis(200));
            }
            states
        })
    };
    let ticks_before = vm.ticks();
    let status = x.run(&["status"]);
    assert!(text(&status).0.contains("tracer on"), "{:?}", text(&status));
    // Into a pipe whose reader is gone: ended by SIGPIPE, quietly.
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$@" status | true; echo "exit ${PIPESTATUS[0]}""#)
        .arg("bash")
        .arg(x.command(&[]).get_program())
        .args(x.command(&[]).get_args())
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&piped.stdout),
        String::from_utf8_lossy(&piped.stderr),
    );
    assert!(
        out.contains("exit 141") && !err.contains("panicked") && !err.contains("Broken pipe"),
        "status into a closed pipe: {out} {err}"
    );
    for _ in 0..3 {
        let out = vm.sh("cat /tmp/hello.txt");
        assert!(out.contains("hello from the guest"), "{out}");
        vm.sh("head -c 100 /init > /dev/null");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let ticks_after = vm.ticks();

    let out_dir = tempfile::tempdir().unwrap();
    let trace_path = out_dir.path().join("trace_graph.txt");
    let o = x.run(&["off", "--json", "--output", trace_path.to_str().unwrap()]);
    stop.store(true, Ordering::SeqCst);
    let states = watcher.join().unwrap();
    assert!(o.status.success(), "off failed: {:?}", text(&o));
    let wrote: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert!(
        wrote["records"].as_u64() > Some(0)
            && wrote["lines"].as_u64() > Some(0)
            && wrote["failed_integrity"] == 0
            && wrote["guest_gone"].is_null()
            && wrote["trace"] == trace_path.to_str().unwrap(),
        "{wrote}"
    );

    assert!(states.len() >= 3, "QMP polled only {} times", states.len());
    assert!(
        states.iter().all(|s| s == "running"),
        "the guest left the running state during collection: {states:?}"
    );
    assert!(
        ticks_after > ticks_before + 3,
        "the guest's counter did not advance: {ticks_before} -> {ticks_after}"
    );
    assert_eq!(vm.qmp_status(), "running");

    let trace = std::fs::read_to_string(&trace_path).unwrap();
    eprintln!(
        "--- trace_graph.txt (head) ---\n{}",
        trace.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(trace.starts_with("# tracer: function_graph\n"));
    assert!(trace.contains("# CPU  DURATION                  FUNCTION CALLS\n"));
    // Every record the kernel wrote decoded under its epoch's key.
    assert!(
        trace.contains(" 0 failed integrity checks"),
        "integrity failures in {}",
        trace.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    let mode = std::fs::metadata(&trace_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let klog = out_dir.path().join("trace_graph.klog");
    assert_eq!(
        std::fs::metadata(&klog).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&klog).unwrap().lines().count() >= 2,
        "keys were not rotated"
    );

    // The nested call flow of openat: do_sys_openat2 under __x64_sys_openat,
    // getname under do_sys_openat2.
    let lines = body(&trace);
    let open = lines
        .iter()
        .position(|(d, f, _)| *d == 0 && f == "__x64_sys_openat() {")
        .expect("an __x64_sys_openat() { line at depth 0");
    let sub: Vec<_> = lines[open + 1..]
        .iter()
        .take_while(|(d, _, _)| *d > 0)
        .collect();
    let d2 = sub
        .iter()
        .position(|(d, f, _)| *d == 1 && f == "do_sys_openat2() {")
        .unwrap_or_else(|| panic!("do_sys_openat2 not nested under openat: {sub:?}"));
    assert!(
        sub[d2 + 1..]
            .iter()
            .take_while(|(d, _, _)| *d > 1)
            .any(|(d, f, _)| *d == 2 && f.starts_with("getname")),
        "getname not nested under do_sys_openat2: {sub:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(d, f, _)| *d == 0 && f.starts_with("__x64_sys_read()")),
        "no read traced"
    );
    // Durations are present and sane for every closing line and leaf.
    let durs: Vec<f64> = lines.iter().filter_map(|(_, _, d)| *d).collect();
    assert!(durs.len() > 20, "too few timed lines");
    assert!(
        durs.iter().all(|d| *d >= 0.0 && *d < 30_000_000.0),
        "insane duration in {durs:?}"
    );
    let closing = lines
        .iter()
        .filter(|(_, f, d)| f.starts_with('}') && d.is_some())
        .count();
    assert!(closing > 5);
}

#[test]
fn refuses_bad_input_with_clear_errors() {
    let _one = common::serial();
    let vm = Vm::boot(256, 1);
    let x = Xftrace::new(&vm.ram);

    // off without on
    let o = x.run(&["off"]);
    assert_eq!(o.status.code(), Some(5), "{:?}", text(&o));
    assert!(text(&o).1.contains("tracing is not on"), "{:?}", text(&o));

    // an unknown function, with a suggestion
    let o = x.run(&["on", "sys_opnat"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("unknown function 'sys_opnat'"),
        "{:?}",
        text(&o)
    );
    assert!(
        text(&o).1.contains("did you mean __x64_sys_openat"),
        "{:?}",
        text(&o)
    );

    // a System.map of another build
    let other = x.state.path().join("other.map");
    let map = std::fs::read_to_string(&x.system_map).unwrap();
    let shifted: String = map
        .lines()
        .map(|l| {
            let (a, rest) = l.split_once(' ').unwrap();
            if rest.ends_with(" xftrace_control") {
                let a = u64::from_str_radix(a, 16).unwrap() + 0x1000;
                format!("{a:016x} {rest}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&other, shifted).unwrap();
    let o = common::xftrace_with_map(&x, &other, &["on", "sys_read"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("does not match the System.map"),
        "{:?}",
        text(&o)
    );

    // a file that is not guest RAM
    let junk = x.state.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 32 << 20]).unwrap();
    let y = Xftrace::new(&junk);
    let o = y.run(&["on", "sys_read"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("no xftrace control block"),
        "{:?}",
        text(&o)
    );
    let tiny = x.state.path().join("tiny");
    std::fs::write(&tiny, b"not ram").unwrap();
    let o = Xftrace::new(&tiny).run(&["on", "sys_read"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));

    // on twice
    let o = x.run(&["on", "sys_read"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = x.run(&["on", "sys_read"]);
    assert_eq!(o.status.code(), Some(5), "{:?}", text(&o));
    assert!(text(&o).1.contains("already on"), "{:?}", text(&o));
    let o = x.run(&[
        "off",
        "--output",
        x.state.path().join("t.txt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    // and off twice
    let o = x.run(&[
        "off",
        "--output",
        x.state.path().join("t2.txt").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(5), "{:?}", text(&o));
    assert!(!x.state.path().join("t2.txt").exists());
}

#[test]
fn guest_that_stops_while_tracing_leaves_a_complete_trace() {
    let _one = common::serial();
    let mut vm = Vm::boot(256, 1);
    let x = Xftrace::new(&vm.ram);
    let o = x.run(&["on", "sys_openat"]);
    assert!(o.status.success(), "{:?}", text(&o));
    for _ in 0..3 {
        vm.sh("cat /tmp/hello.txt > /dev/null");
    }
    std::thread::sleep(Duration::from_millis(500));
    vm.kill();

    let out = x.state.path().join("trace_graph.txt");
    let o = x.run(&["off", "--output", out.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{stdout} {stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
    assert!(stdout.contains("wrote"), "{stdout}");
    let trace = std::fs::read_to_string(&out).unwrap();
    assert!(trace.starts_with("# tracer: function_graph\n"));
    assert!(trace.contains("__x64_sys_openat() {"), "{trace}");
    // Well-formed: every line is a comment or a CPU line.
    let odd: Vec<&str> = trace
        .lines()
        .filter(|l| !(l.starts_with('#') || l.starts_with(' ') || l.is_empty()))
        .take(10)
        .collect();
    assert!(odd.is_empty(), "{odd:#?}");
}

/// A guest that reboots while QEMU keeps running keeps its RAM: the old
/// kernel's control block stays behind beside the new one's. xftrace sets
/// the earlier boot's aside (it no longer moves), says so in `status`,
/// checks and traces the new kernel, and finds nothing on the clean guest.
#[test]
fn a_warm_reboot_leaves_a_stale_control_block_that_is_set_aside() {
    let _one = common::serial();
    let mut vm = Vm::boot_with(
        512,
        1,
        &common::Boot {
            warm_reboot: true,
            ..Default::default()
        },
    );
    let x = Xftrace::new(&vm.ram);
    let o = x.run(&["status"]);
    assert!(o.status.success(), "{:?}", text(&o));
    // KASLR puts each boot's kernel elsewhere, but the new kernel may
    // reuse the old one's pages: reboot until a stale block stays.
    let mut stale = None;
    for round in 0..4 {
        vm.reboot();
        let o = x.run(&["status"]);
        let (stdout, stderr) = text(&o);
        assert!(
            o.status.success(),
            "status after reboot {round}: {stdout} {stderr}"
        );
        if let Some(l) = stdout.lines().find(|l| l.starts_with("stale:")) {
            stale = Some(l.to_string());
            break;
        }
        eprintln!("reboot {round}: no stale control block left");
    }
    let stale = stale.expect("no reboot of four left its control block behind");
    assert!(stale.contains("of an earlier boot"), "{stale}");
    // Remembered: the next command finds the same block with the same values.
    let o = x.run(&["status"]);
    assert!(
        text(&o).0.contains(&stale),
        "the stale block is no longer named: {:?}",
        text(&o)
    );
    assert_eq!(findings(&x), Vec::<serde_json::Value>::new());
    // The new kernel is the one driven.
    let o = x.run(&["on", "sys_openat"]);
    assert!(o.status.success(), "{:?}", text(&o));
    for _ in 0..3 {
        vm.sh("cat /tmp/hello.txt > /dev/null");
    }
    let out = x.state.path().join("trace_graph.txt");
    let o = x.run(&["off", "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let trace = std::fs::read_to_string(&out).unwrap();
    assert!(trace.contains("__x64_sys_openat() {"), "{trace}");
}

/// The guest's state directory under `x`'s state root.
fn guest_state(x: &Xftrace) -> std::path::PathBuf {
    let guests = x.state.path().join("guests");
    let mut dirs: Vec<_> = std::fs::read_dir(&guests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

/// A collector killed in the middle of a trace (OOM, `kill -9`): `status`
/// says it died and that the guest still traces, `check` reports the
/// tracer left on, `on` writes what it had collected aside and adopts the
/// guest, and the new trace's header states both gaps. Then commands
/// stopped by signals ([`stopped_commands_switch_the_tracer_off`]).
#[test]
fn a_killed_collector_is_noticed_and_nothing_it_collected_is_lost() {
    let _one = common::serial();
    let mut vm = Vm::boot(256, 1);
    let x = Xftrace::new(&vm.ram);
    let o = x.run(&["on", "sys_openat"]);
    assert!(o.status.success(), "{:?}", text(&o));
    for _ in 0..3 {
        vm.sh("cat /tmp/hello.txt > /dev/null");
    }
    // Let it spool them (it reads every 10 ms and reports every second).
    std::thread::sleep(Duration::from_millis(2500));
    let dir = guest_state(&x);
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap()).unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    assert!(status["records"].as_u64().unwrap() > 0, "{status}");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        std::thread::sleep(Duration::from_millis(50));
    }

    let o = x.run(&["status"]);
    let (stdout, _) = text(&o);
    assert!(stdout.contains(&format!("died (pid {pid})")), "{stdout}");
    assert!(
        stdout.contains("the guest's tracer is on and no collector of this host reads it"),
        "{stdout}"
    );
    let f = findings(&x);
    assert!(
        f.iter().any(|x| x["kind"] == "tracer-integrity"
            && x["detail"].as_str().unwrap().contains("its collector died")),
        "{f:#?}"
    );

    // `on` adopts the guest, after writing the dead session's records aside.
    let o = x.run(&["on", "sys_openat"]);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let recovered = common::recovered_traces(&dir);
    assert_eq!(recovered.len(), 1, "{recovered:?} {stderr}");
    assert!(
        stderr.contains(&recovered[0].display().to_string()),
        "{stderr}"
    );
    let old = std::fs::read_to_string(&recovered[0]).unwrap();
    assert!(old.contains("__x64_sys_openat() {"), "{old}");
    assert_eq!(
        std::fs::metadata(&recovered[0])
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0
    );
    for _ in 0..3 {
        vm.sh("cat /tmp/hello.txt > /dev/null");
    }
    let out = x.state.path().join("trace_graph.txt");
    let o = x.run(&["off", "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let trace = std::fs::read_to_string(&out).unwrap();
    assert!(trace.contains("__x64_sys_openat() {"), "{trace}");
    assert!(
        trace.contains(
            "gap: the guest's tracer was already on with no collector of this session reading it (adopted"
        ),
        "{}",
        &trace[..trace.len().min(2000)]
    );
    assert!(
        trace.contains("gap: the previous session (collector pid"),
        "{}",
        &trace[..trace.len().min(2000)]
    );
    // Nothing left over.
    assert_eq!(findings(&x), Vec::<serde_json::Value>::new());
    assert!(!text(&x.run(&["status"])).0.contains("warning:"));
    stopped_commands_switch_the_tracer_off(&mut vm, &x, &dir);
}

/// `baseline`, `check` and `watch`, each stopped in the middle of its
/// trace window by a different stop signal: each switches the guest's
/// tracer off, says it was interrupted, exits 128 + the signal, and claims
/// nothing (no "clean", no baseline saved). (Shares the boot of the
/// killed-collector test.)
fn stopped_commands_switch_the_tracer_off(vm: &mut Vm, x: &Xftrace, dir: &std::path::Path) {
    let baseline = dir.join("baseline.json");
    let cases: [(&[&str], i32); 3] = [
        (
            &["baseline", "--duration", "60", "sys_openat"],
            libc::SIGTERM,
        ),
        (&["check", "--trace-seconds", "60"], libc::SIGINT),
        (
            &["watch", "--interval", "1", "--trace-seconds", "60"],
            libc::SIGHUP,
        ),
    ];
    for (i, (args, sig)) in cases.into_iter().enumerate() {
        if i == 1 {
            // check and watch trace only with a baseline.
            assert!(!baseline.exists(), "an interrupted baseline was saved");
            let o = x.run(&["baseline", "--json", "--duration", "2", "sys_openat"]);
            assert!(o.status.success(), "{:?}", text(&o));
            let b: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
            assert!(
                b["baseline"]["functions"]
                    .as_array()
                    .is_some_and(|f| f.contains(&serde_json::json!("__x64_sys_openat"))),
                "{b}"
            );
        }
        let before = std::fs::read(&baseline).ok();
        let child = x
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Mid-window: its collector reads the guest.
        let t = std::time::Instant::now();
        loop {
            let collecting = std::fs::read_to_string(dir.join("status.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["state"] == "collecting");
            if collecting {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{args:?}: never traced"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        vm.sh("cat /tmp/hello.txt > /dev/null");
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let (stdout, stderr) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(128 + sig),
            "{args:?}: {stdout}{stderr}"
        );
        assert!(stderr.contains("interrupted by SIG"), "{args:?}: {stderr}");
        assert!(!stdout.contains("clean"), "{args:?}: {stdout}");
        assert_eq!(std::fs::read(&baseline).ok(), before, "{args:?}");
        // The tracer is off: no "tracer left on" finding, and `status`
        // says nothing traces.
        assert_eq!(findings(x), Vec::<serde_json::Value>::new(), "{args:?}");
        let (status, _) = text(&x.run(&["status"]));
        assert!(!status.contains("tracer is on"), "{args:?}: {status}");
    }
}

/// Run `check --trace-seconds 0 --json` and return the findings.
fn findings(x: &Xftrace) -> Vec<serde_json::Value> {
    let o = x.run(&["check", "--json", "--trace-seconds", "0"]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{:?}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// A guest root user cannot blind xftrace through tracefs: what concerns
/// the function_graph tracer has no effect on xftrace's own client, and
/// what narrows every graph client is reported.
#[test]
fn guest_root_cannot_blind_the_tracer_through_tracefs() {
    let _one = common::serial();
    let mut vm = Vm::boot(256, 1);
    let x = Xftrace::new(&vm.ram);
    vm.sh("mount -t tracefs nodev /sys/kernel/tracing");
    let t = "/sys/kernel/tracing";

    let o = x.run(&["on", "sys_openat"]);
    assert!(o.status.success(), "{:?}", text(&o));
    // Everything a root user in the guest can do to the function_graph
    // tracer: switch it off or on, filter it, exclude, restrict by pid,
    // set a threshold.
    let tried = vm.sh(&format!(
        "echo nop > {t}/current_tracer; echo function_graph > {t}/current_tracer; \
         echo do_sys_openat2 > {t}/set_graph_notrace; echo __x64_sys_read > {t}/set_graph_function; \
         echo 1 > {t}/set_ftrace_pid; echo 100000000 > {t}/tracing_thresh; cat {t}/current_tracer"
    ));
    eprintln!("guest: {tried}");
    assert!(tried.contains("busy"), "function_graph took over: {tried}");
    for _ in 0..3 {
        vm.sh("cat /tmp/hello.txt > /dev/null");
    }
    std::thread::sleep(Duration::from_millis(500));
    let f = findings(&x);
    assert!(f.is_empty(), "{f:#?}");
    let out = tempfile::tempdir().unwrap();
    let trace_path = out.path().join("t.txt");
    let o = x.run(&["off", "--output", trace_path.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let lines = body(&trace);
    let open = lines
        .iter()
        .position(|(d, f, _)| *d == 0 && f == "__x64_sys_openat() {")
        .unwrap_or_else(|| panic!("openat was not traced:\n{trace}"));
    assert!(
        lines[open..]
            .iter()
            .any(|(d, f, _)| *d == 1 && f.starts_with("do_sys_openat2")),
        "set_graph_notrace thinned the trace"
    );
    assert!(trace.contains(" 0 failed integrity checks"));
    vm.sh(&format!(
        "echo > {t}/set_graph_notrace; echo > {t}/set_graph_function; echo > {t}/set_ftrace_pid; echo 0 > {t}/tracing_thresh"
    ));

    // What narrows every graph client, xftrace's too, is a finding.
    vm.sh(&format!("echo __x64_sys_read > {t}/set_ftrace_filter"));
    std::thread::sleep(Duration::from_millis(200));
    let f = findings(&x);
    assert!(
        f.iter().any(|x| x["kind"] == "tracer-integrity"
            && x["detail"].as_str().unwrap().contains("set_ftrace_filter")),
        "{f:#?}"
    );
    vm.sh(&format!(
        "echo > {t}/set_ftrace_filter; echo 0 > /proc/sys/kernel/ftrace_enabled"
    ));
    std::thread::sleep(Duration::from_millis(200));
    let f = findings(&x);
    assert!(
        f.iter()
            .any(|x| x["detail"].as_str().unwrap().contains("ftrace is disabled")),
        "{f:#?}"
    );
    let o = x.run(&["status"]);
    assert!(
        text(&o).0.contains("warning:    ftrace is disabled"),
        "{:?}",
        text(&o)
    );
    vm.sh("echo 1 > /proc/sys/kernel/ftrace_enabled");
    std::thread::sleep(Duration::from_millis(200));
    assert!(findings(&x).is_empty());
}

/// Every CPU gets a ring, not only the first 16.
#[test]
fn cpus_beyond_sixteen_are_traced() {
    let _one = common::serial();
    let mut vm = Vm::boot(512, 18);
    let x = Xftrace::new(&vm.ram);
    let o = x.run(&["on", "sys_openat"]);
    assert!(o.status.success(), "{:?}", text(&o));
    vm.sh("taskset -c 17 cat /tmp/hello.txt > /dev/null; taskset -c 16 cat /tmp/hello.txt > /dev/null");
    std::thread::sleep(Duration::from_millis(500));
    let status = x.run(&["status"]);
    let out = tempfile::tempdir().unwrap();
    let trace_path = out.path().join("t.txt");
    let o = x.run(&["off", "--output", trace_path.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    for cpu in [16, 17] {
        assert!(
            trace
                .lines()
                .any(|l| l.starts_with(&format!(" {cpu}) ")) && l.contains("|  __x64_sys_openat()")),
            "nothing from CPU {cpu}:\n{}",
            trace.lines().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        text(&status).0.contains(" 0 dropped by the guest"),
        "{:?}",
        text(&status)
    );
}

/// The command protocol against the real guest: a command being written
/// (odd sequence number) is never applied, and a function list longer than
/// the field is refused, not truncated.
#[test]
fn the_guest_applies_only_whole_commands() {
    use xftrace::abi::{self, off};
    use xftrace::guest::memory::{GuestRam, Machine, MemoryLayout};
    let _one = common::serial();
    let vm = Vm::boot(256, 1);
    let size = std::fs::metadata(&vm.ram).unwrap().len();
    let ram = GuestRam::open(&vm.ram, MemoryLayout::x86(size, Machine::Pc, None)).unwrap();
    let map = xftrace::kernel::symbols::SystemMap::load(&common::system_map()).unwrap();
    let k = xftrace::kernel::locate::locate(&ram, &map, None)
        .unwrap()
        .tracer
        .expect("our kernel has a control block");
    let w = |o: u64, v: u64| ram.write_u64(k.field(o), v).unwrap();
    let r = |o: u64| ram.read_u64(k.field(o)).unwrap();
    let wait_ack = |seq: u64| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while r(off::ACK_SEQ) != seq {
            assert!(
                std::time::Instant::now() < end,
                "no acknowledgement of {seq}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        r(off::ACK_RESULT_TRACING) as u32 as i32
    };
    let base = r(off::CMD_SEQ).max(r(off::ACK_SEQ)) | 1;
    // Half a command: odd sequence number, op "on", no list yet.
    w(off::CMD_SEQ, base);
    w(off::CMD_OP_FUNCS_LEN, abi::Op::On as u64 | (5 << 32));
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        r(off::ACK_SEQ),
        base,
        "applied a command still being written"
    );
    // Finished with a list longer than the field: refused whole.
    w(off::CMD_OP_FUNCS_LEN, abi::Op::On as u64 | (2000 << 32));
    w(off::CMD_SEQ, base + 1);
    assert_eq!(wait_ack(base + 1), -libc::E2BIG);
    assert_eq!(r(off::ACK_RESULT_TRACING) >> 32, 0, "tracing turned on");
    // A name that matches nothing is refused, and nothing changes.
    for (i, c) in b"no_such_fn\0\0\0\0\0\0".chunks(8).enumerate() {
        w(
            off::FUNCS + 8 * i as u64,
            u64::from_le_bytes(c.try_into().unwrap()),
        );
    }
    w(off::CMD_SEQ, base + 2);
    w(off::CMD_OP_FUNCS_LEN, abi::Op::On as u64 | (10 << 32));
    w(off::CMD_SEQ, base + 3);
    assert_eq!(wait_ack(base + 3), -libc::EINVAL);
}

/// Call trees of a trace, per task: the depth-0 functions, returns without
/// their entry, and entries left open at the end. Tasks are told apart by
/// ftrace's context-switch lines (`comm-pid => comm-pid`), so a task that
/// blocks inside a call, or moves to another CPU, is followed.
#[derive(Debug, Default)]
struct Trees {
    roots: std::collections::BTreeSet<String>,
    orphan_returns: Vec<String>,
    open_at_end: Vec<String>,
}

fn trees(trace: &str) -> Trees {
    use std::collections::BTreeMap;
    let mut t = Trees::default();
    let pid_of = |s: &str| s.trim().rsplit('-').next().unwrap_or("").to_string();
    let lines = || trace.lines().filter(|l| !l.starts_with('#'));
    // ftrace names no task before a CPU's first switch line: that line's
    // "prev" is the CPU's first task. Known up front, a task that moved to
    // another CPU before its first CPU switched again is still one stack.
    let mut on_cpu: BTreeMap<String, String> = BTreeMap::new();
    for l in lines() {
        if let Some((cpu, rest)) = l.split_once(')') {
            if let Some((prev, _)) = rest.split_once(" => ") {
                on_cpu
                    .entry(cpu.trim().to_string())
                    .or_insert_with(|| pid_of(prev));
            }
        }
    }
    let mut stacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Tasks whose records were lost: followed again from their next
    // top-level call.
    let mut resync: std::collections::BTreeSet<String> = Default::default();
    for l in lines() {
        if l.starts_with("CPU:") && l.contains(" [LOST ") {
            // Which tasks ran in the gap is unknown: all start over.
            for (task, s) in stacks.iter_mut() {
                s.clear();
                resync.insert(task.clone());
            }
            resync.extend(on_cpu.values().cloned());
            continue;
        }
        let Some((cpu, rest)) = l.split_once(')') else {
            continue;
        };
        let cpu = cpu.trim().to_string();
        if let Some((_, next)) = rest.split_once(" => ") {
            on_cpu.insert(cpu, pid_of(next));
            continue;
        }
        let Some((_, f)) = rest.split_once(" |  ") else {
            continue;
        };
        let depth = (f.len() - f.trim_start().len()) / 2;
        let f = f.trim();
        let task = on_cpu
            .entry(cpu.clone())
            .or_insert(format!("cpu{cpu}"))
            .clone();
        let stack = stacks.entry(task.clone()).or_default();
        // An entry at depth 0 while the task's call is open is an
        // interrupt that came while that call was returning (fgraph lowers
        // the depth before the return is recorded), not a new tree.
        if depth == 0 && !f.starts_with('}') && stack.is_empty() {
            t.roots
                .insert(f.trim_end_matches(['{', ';', ' ']).to_string());
            resync.remove(&task);
        }
        // ftrace writes "} /* func */" whenever the line above is not the
        // entry (another task ran on the CPU in between): still a return.
        if f.starts_with('}') {
            if stack.pop().is_none() && !resync.contains(&task) {
                t.orphan_returns.push(l.to_string());
            }
        } else if f.ends_with('{') {
            stack.push(f.to_string());
        }
    }
    for (task, s) in stacks {
        for f in s {
            t.open_at_end.push(format!("{task}: {f}"));
        }
    }
    t
}

/// Sessions hold whole call trees of the filtered functions only: none
/// starts or ends halfway through a call although the guest is busy in
/// them at `on` and `off`; interrupts that hit a filtered function (not
/// traced without --irqs) leave no unfiltered tree behind; a guest user's
/// own tracefs session is neither taken over nor disturbed, and `off`
/// works while they read trace_pipe.
#[test]
fn sessions_hold_whole_call_trees_of_the_filtered_functions_only() {
    let _one = common::serial();
    let mut vm = Vm::boot(512, 2);
    let x = Xftrace::new(&vm.ram);
    let t = "/sys/kernel/tracing";
    vm.sh("mount -t tracefs nodev /sys/kernel/tracing");

    // A guest user's function_graph session: xftrace's `on` must not take
    // it over (one graph tracer at a time on 6.1) nor touch its filter.
    vm.sh(&format!(
        "echo vfs_read > {t}/set_graph_function; echo function_graph > {t}/current_tracer"
    ));
    let o = x.run(&["on", "sys_openat"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("runs function_graph through tracefs"),
        "{:?}",
        text(&o)
    );
    assert_eq!(
        vm.output(&format!("cat {t}/current_tracer")).trim(),
        "function_graph"
    );
    assert_eq!(
        vm.output(&format!("cat {t}/set_graph_function")).trim(),
        "vfs_read"
    );
    assert!(vm.output(&format!("cat {t}/trace")).contains("vfs_read"));
    // The user moves to tracing scheduler events and keeps reading the
    // pipe. (A function filter of theirs would narrow xftrace too: ftrace
    // shares set_ftrace_filter among graph clients; xftrace reports it.)
    vm.sh(&format!(
        "echo nop > {t}/current_tracer; echo > {t}/set_graph_function; \
         echo 1 > {t}/events/sched/sched_switch/enable; (cat {t}/trace_pipe > /tmp/pipe.out &)"
    ));

    // Busy in openat and read on both CPUs when the session opens and
    // closes, with timer interrupts all along.
    vm.sh("for i in 1 2; do (while :; do cat /tmp/hello.txt > /dev/null; done &); done");
    let out = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let o = x.run(&["on", "sys_openat", "sys_read"]);
        assert!(o.status.success(), "{:?}", text(&o));
        std::thread::sleep(Duration::from_millis(1500));
        let path = out.path().join(format!("busy{round}.txt"));
        let o = x.run(&["off", "--output", path.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "off with trace_pipe open: {:?}",
            text(&o)
        );
        let trace = std::fs::read_to_string(&path).unwrap();
        let tr = trees(&trace);
        // Kept for a look when an assertion below fails.
        let kept = std::env::temp_dir().join(format!("xftrace-e2e-busy{round}.txt"));
        std::fs::copy(&path, &kept).unwrap();
        let want: std::collections::BTreeSet<String> = ["__x64_sys_openat()", "__x64_sys_read()"]
            .into_iter()
            .map(String::from)
            .collect();
        assert!(
            !tr.roots.is_empty(),
            "nothing traced in round {round}:\n{}",
            trace.lines().take(40).collect::<Vec<_>>().join("\n")
        );
        assert!(
            tr.roots.is_subset(&want),
            "unfiltered trees: {:?}",
            tr.roots
        );
        assert!(
            tr.orphan_returns.is_empty(),
            "partial trees at the start: {:?}",
            tr.orphan_returns
        );
        assert!(
            tr.open_at_end.is_empty(),
            "partial trees at the end: {:?}",
            tr.open_at_end
        );
        assert!(trace.contains(" 0 failed integrity checks"));
    }
    // The user's session is as they left it, and still producing.
    assert_eq!(vm.output(&format!("cat {t}/current_tracer")).trim(), "nop");
    assert_eq!(
        vm.output(&format!("cat {t}/events/sched/sched_switch/enable"))
            .trim(),
        "1"
    );
    let before = vm
        .output("wc -c < /tmp/pipe.out")
        .trim()
        .parse::<u64>()
        .unwrap();
    vm.sh("cat /tmp/hello.txt > /dev/null; sleep 1");
    let after = vm
        .output("wc -c < /tmp/pipe.out")
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        after > before,
        "the user's trace_pipe stopped: {before} -> {after}"
    );
    vm.sh(&format!("echo 0 > {t}/events/sched/sched_switch/enable"));

    // A function that interrupts hit as well as tasks: without --irqs, only
    // task-context trees of it, and nothing else, are recorded.
    vm.sh("(while :; do sleep 0.01; done &)");
    let o = x.run(&["on", "try_to_wake_up"]);
    assert!(o.status.success(), "{:?}", text(&o));
    std::thread::sleep(Duration::from_secs(2));
    let path = out.path().join("wakeups.txt");
    let o = x.run(&["off", "--output", path.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let trace = std::fs::read_to_string(&path).unwrap();
    let tr = trees(&trace);
    assert!(!tr.roots.is_empty(), "no wakeup traced");
    assert!(
        tr.roots.iter().all(|r| r == "try_to_wake_up()"),
        "unfiltered trees after interrupts: {:?}",
        tr.roots
    );
    assert!(
        tr.orphan_returns.is_empty() && tr.open_at_end.is_empty(),
        "{tr:?}"
    );
    assert_eq!(vm.qmp_status(), "running");
}
