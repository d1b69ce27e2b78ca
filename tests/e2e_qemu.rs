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

    let o = x.run(&["on", "sys_openat", "sys_read"]);
    assert!(o.status.success(), "on failed: {:?}", text(&o));
    assert!(text(&o).0.contains("__x64_sys_openat __x64_sys_read"));

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
    for _ in 0..3 {
        let out = vm.sh("cat /tmp/hello.txt");
        assert!(out.contains("hello from the guest"), "{out}");
        vm.sh("head -c 100 /init > /dev/null");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let ticks_after = vm.ticks();

    let out_dir = tempfile::tempdir().unwrap();
    let trace_path = out_dir.path().join("trace_graph.txt");
    let o = x.run(&["off", "--output", trace_path.to_str().unwrap()]);
    stop.store(true, Ordering::SeqCst);
    let states = watcher.join().unwrap();
    assert!(o.status.success(), "off failed: {:?}", text(&o));

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
    assert!(trace
        .lines()
        .all(|l| l.starts_with('#') || l.starts_with(' ') || l.is_empty()));
}
