//! Detection against real rootkit techniques, loaded as kernel modules into
//! the running patched guest: a clean guest first (zero findings over 20
//! checks), then each rootkit in turn, each of which must be reported with
//! what it hooked. The guest is never paused.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::detection::{
    body_hooks, census_cost, cleared_taint, control_data_hooks, findings, has, hidden_module,
    hidden_task, idt_register, impostor_module, kernel_oops, magic_packet_filter, measured,
    muted_tracer, pick, registry_hooks, root_by_credentials, shadow_page, summary, CASES,
};
use common::{Boot, Vm, Xftrace};

#[test]
fn detects_every_test_rootkit_and_nothing_on_a_clean_guest() {
    let _one = common::serial();
    let initramfs = common::rootkit_initramfs().to_path_buf();
    let mut vm = Vm::boot_with(
        512,
        1,
        &Boot {
            initramfs: Some(initramfs),
            cmdline: "xftrace_demo".into(),
            ..Default::default()
        },
    );
    let mut x = Xftrace::new(&vm.ram);
    // The build ships the kernel's own modules and rk_benign, told by content.
    x.modules = Some(common::build_modules_dir().to_path_buf());
    // Its QEMU's monitor, for the vCPUs' registers.
    x.qmp = Some(vm.dir.path().join("qmp.sock"));

    // Clean: a baseline under the mixed workload, then 20 consecutive checks
    // with call flow under the same workload.
    const WORKLOAD: &str =
        "ls / > /dev/null; cat /init > /dev/null; cat /nonexistent 2> /dev/null; \
         ps > /dev/null; echo x > /tmp/f; sh -c 'cat /tmp/f' > /dev/null; rm /tmp/f";
    let mut baseline = x
        .command(&["baseline", "--duration", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..6 {
        vm.sh(WORKLOAD);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(baseline.wait().unwrap().success(), "baseline failed");
    let mut worst = (Duration::ZERO, 0);
    for i in 0..20 {
        vm.sh(WORKLOAD);
        let (o, t, rss) = measured(x.command(&["check", "--json", "--trace-seconds", "1"]));
        let f = findings(&o);
        assert!(
            f.is_empty() && o.status.code() == Some(0),
            "clean check {i} found {f:?}"
        );
        let s = summary(&o).expect("check --json ends with its summary");
        assert!(
            s["clean"] == true && s["findings"]["high"] == 0 && s["failed"].is_null(),
            "{s}"
        );
        // The release the guest runs, as its own uname says.
        if i == 0 {
            let uname = vm.output("uname -r");
            assert_eq!(s["kernel"].as_str(), Some(uname.trim()), "{s}");
        }
        worst = (worst.0.max(t), worst.1.max(rss));
        assert_eq!(
            vm.qmp_status(),
            "running",
            "the guest left the running state"
        );
    }
    // A guest that refuses the call-flow trace (here a guest user holds
    // function_graph) gets a finding, with every other check still run,
    // never only an error exit.
    let t = "/sys/kernel/tracing";
    vm.sh(&format!(
        "mount -t tracefs nodev {t}; echo vfs_read > {t}/set_ftrace_filter; \
         echo function_graph > {t}/current_tracer"
    ));
    let o = x.run(&["check", "--json", "--trace-seconds", "1"]);
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(
            &f,
            "tracer-integrity",
            &["could not trace the baseline's functions"]
        ),
        "{f:#?}"
    );
    vm.sh(&format!(
        "echo nop > {t}/current_tracer; echo > {t}/set_ftrace_filter"
    ));

    // With a session on, ftrace's own patching (a call to its trampoline at
    // every traced function, x64_sys_call's included) is no finding.
    let o = x.run(&["on", "sys_openat", "sys_read"]);
    assert!(o.status.success());
    vm.sh(WORKLOAD);
    let o = x.run(&["check", "--json", "--trace-seconds", "0"]);
    let f = findings(&o);
    assert!(
        f.is_empty() && o.status.code() == Some(0),
        "clean check while tracing found {f:?}"
    );
    let o = x.run(&[
        "off",
        "--output",
        x.state.path().join("clean.txt").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    // The guest's probe is witnessed in the trace's header, not in its body.
    let text = std::fs::read_to_string(x.state.path().join("clean.txt")).unwrap();
    assert!(
        text.contains("probe calls (not shown) by CPU: cpu0 ")
            && !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("xftrace_probe")),
        "{}",
        text.chars().take(2000).collect::<String>()
    );
    // A tracer blinded without being stopped: an empty capture is a finding.
    muted_tracer(
        &mut |c| vm.sh(c),
        &|| x.run(&["check", "--json", "--trace-seconds", "1"]),
        "/lib/xftrace-test",
    );
    let (o, t, rss) = measured(x.command(&["check", "--json", "--trace-seconds", "0"]));
    assert_eq!(o.status.code(), Some(0));
    eprintln!(
        "cost: integrity check {:.0} ms, {} KiB peak RSS; with 1 s call flow at most {:.2} s, {} KiB",
        t.as_secs_f64() * 1e3,
        rss,
        worst.0.as_secs_f64(),
        worst.1
    );

    census_cost(
        x.command(&["check", "--json", "--trace-seconds", "0"]),
        "busybox guest",
    );

    // Detection latency: `watch` running while a rootkit loads.
    let mut watch = x
        .command(&["watch", "--json", "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = vm.sh("insmod /lib/xftrace-test/rk_idt.ko");
    let loaded = Instant::now();
    assert!(!out.contains("rror"), "{out}");
    // The IDT hook, within 30 s. A round that met the module half loaded
    // (in mod_tree, not yet listed, its init not yet run) may report it as
    // a foreign module first, and the taint flag it set since the
    // baseline: inventory (severity low), both.
    let until = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let (seen, line) = loop {
        let (t, l) = rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("watch did not report the IDT hook: {lines:#?}"));
        if l.contains("\"idt\"") {
            break (t, l);
        }
        // Each round ends with its summary (docs/json.md).
        if !l.starts_with("{\"summary\"") {
            lines.push(l);
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains("IDT vector 0 enters") && line.contains("in module rk_idt"),
        "{line}"
    );
    assert!(
        lines.iter().all(|l| {
            (l.contains("\"foreign-module\"") && l.contains("rk_idt"))
                || (l.contains("\"taint\"") && l.contains("\"severity\":\"low\""))
        }),
        "watch reported something else first: {lines:#?}"
    );
    eprintln!(
        "detection latency (insmod returned -> watch reported): {:.2} s",
        seen.saturating_duration_since(loaded).as_secs_f64()
    );
    // What that watch's last round found, as metrics, fires the alert.
    let o = x.run(&["metrics"]);
    assert!(o.status.success());
    let series =
        common::prometheus::rootkit_alert_fires(&String::from_utf8_lossy(&o.stdout), "idt");
    eprintln!("XftraceRootkitFinding fires on {series}");

    // Each rootkit, cumulatively.
    for (module, kind, parts, flow) in CASES {
        let out = vm.sh(&format!("insmod /lib/xftrace-test/{module}.ko"));
        assert!(!out.contains("rror"), "{module}: {out}");
        let o = x.run(&["check", "--json", "--trace-seconds", "3"]);
        assert_eq!(o.status.code(), Some(1), "{module} not reported");
        let f = findings(&o);
        let s = summary(&o).expect("check --json ends with its summary");
        assert!(
            s["clean"] == false && s["findings"]["high"].as_u64() >= Some(1),
            "{module}: {s}"
        );
        assert!(
            has(&f, kind, parts),
            "{module}: no {kind} finding with {parts:?} in {f:#?}"
        );
        // ... naming the module that owns the hook.
        assert!(
            has(&f, kind, &[&format!("in module {module}")]),
            "{module}: the {kind} finding does not name the module: {f:#?}"
        );
        if let Some(flow) = flow {
            assert!(
                has(&f, "call-flow-unknown-code", flow),
                "{module}: call-flow analysis missed it: {f:#?}"
            );
        }
        assert!(f
            .iter()
            .all(|x| x["domain"].is_string() && x["addresses"].is_array()));
        assert_eq!(
            vm.qmp_status(),
            "running",
            "the guest left the running state"
        );
    }

    // One integrity-only check, as the rootkit helpers run it.
    let check = || x.run(&["check", "--json", "--trace-seconds", "0"]);
    // Hooks on ordinary functions, at targets drawn per run.
    body_hooks(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    shadow_page(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    registry_hooks(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    impostor_module(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    idt_register(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    cleared_taint(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    // `status`: the taint flags, and what changed since the baseline
    // (the test rootkits' out-of-tree flag).
    let o = x.run(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    // "0x1000 (O)", "0x1080 (D O)": the letters in parentheses.
    let has_o = |l: &str| {
        l.split_once('(')
            .is_some_and(|(_, r)| r.split([' ', ')']).any(|w| w == "O"))
    };
    assert!(
        text.lines()
            .any(|l| l.starts_with("tainted:    ") && has_o(l))
            && text
                .lines()
                .any(|l| l.starts_with("baseline:   tainted with ")
                    && has_o(l)
                    && l.ends_with(" since (same boot)")),
        "{text}"
    );
    magic_packet_filter(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");
    let traced = || x.run(&["check", "--json", "--trace-seconds", "3"]);
    hidden_task(&mut |c| vm.sh(c), &check, &traced, "/lib/xftrace-test");
    root_by_credentials(
        &mut |c| vm.sh(c),
        &check,
        x.command(&["check", "--json", "--trace-seconds", "6"]),
        "/lib/xftrace-test",
    );
    // The guest's kernel log, read from the host, holds what the guest's
    // own dmesg shows (the tracer's boot line, rk_untaint's).
    let o = x.run(&["dmesg"]);
    assert!(o.status.success());
    let host = String::from_utf8_lossy(&o.stdout).to_string();
    let guest = vm.sh("dmesg | grep -e 'xftrace: ' -e 'rk_untaint: '");
    let lines: Vec<&str> = guest
        .lines()
        .filter_map(|l| l.split_once("] ").map(|x| x.1.trim_end()))
        .filter(|l| l.starts_with("xftrace: ") || l.starts_with("rk_untaint: "))
        .collect();
    assert!(lines.len() >= 2, "{guest}");
    for l in &lines {
        assert!(host.contains(l), "{l:?} not in the host's dmesg:\n{host}");
    }
    // The same records as JSON, their text as the guest wrote it.
    let o = x.run(&["--json", "dmesg"]);
    assert!(o.status.success());
    let texts: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert!(
                v["seq"].is_u64() && v["time"].is_f64() && v["level"].as_u64() <= Some(7),
                "{v}"
            );
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    for l in &lines {
        assert!(
            texts.iter().any(|t| t.trim_end() == *l),
            "{l:?} not in dmesg --json"
        );
    }
    control_data_hooks(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");

    // Data sealed after boot: /dev/ptmx's open operation swapped. Seen to
    // fire, then found against this boot's snapshot (taken by the clean
    // checks above) and as a pointer into module space.
    vm.sh("mkdir -p /dev/pts; mount -t devpts devpts /dev/pts");
    let ptmx = |vm: &mut Vm| vm.sh("(: < /dev/ptmx) 2>&1; echo rc=$?");
    assert!(ptmx(&mut vm).contains("rc=0"), "/dev/ptmx cannot be opened");
    // Drawn per run: whether it first erases the boot identity the host
    // wrote, so that the host may take the boot for a new one.
    let erase = pick("rk_ro_after_init erase", &[0u8, 1]);
    vm.sh(&format!(
        "insmod /lib/xftrace-test/rk_ro_after_init.ko erase={erase}"
    ));
    assert!(
        ptmx(&mut vm).contains("Permission denied"),
        "rk_ro_after_init did not fire"
    );
    let o = x.run(&["check", "--json", "--trace-seconds", "0"]);
    assert_eq!(o.status.code(), Some(1));
    let f = findings(&o);
    // A pointer into a module is found whatever the snapshot holds.
    assert!(
        has(
            &f,
            "ro-after-init",
            &["ptmx_fops+", "in module rk_ro_after_init"]
        ),
        "{f:#?}"
    );
    vm.sh("rmmod rk_ro_after_init");
    assert!(
        ptmx(&mut vm).contains("rc=0"),
        "rk_ro_after_init did not unload"
    );
    let o = x.run(&["check", "--json", "--trace-seconds", "0"]);
    let f = findings(&o);
    if erase == 1 {
        // The erased identity made the host take a new snapshot, with the
        // hook in it: the hook's removal is a change from that snapshot,
        // reported, so the erasure does not go unseen either.
        assert!(
            has(
                &f,
                "ro-after-init",
                &["ptmx_fops+", "changed since this boot's snapshot"]
            ),
            "{f:#?}"
        );
    } else {
        assert!(!has(&f, "ro-after-init", &[]), "{f:#?}");
    }

    // A module that hides from the module list or sysfs.
    hidden_module(&mut |c| vm.sh(c), &check, "/lib/xftrace-test");

    // A kernel thread that oopses (or warns): reported by `watch` as the
    // kernel writes it, whatever its rounds are doing.
    let took = kernel_oops(
        &mut |c| vm.sh(c),
        x.command(&[
            "watch",
            "--json",
            "--interval",
            "30",
            "--trace-seconds",
            "0",
        ]),
        "/lib/xftrace-test",
    );
    assert!(
        took < Duration::from_secs(1),
        "the kernel's log reached watch {:.2} s after insmod returned, not within 1 s",
        took.as_secs_f64()
    );

    // A rootkit that goes for xftrace itself, while a session runs.
    let o = x.run(&["on", "sys_openat", "sys_read"]);
    assert!(o.status.success());
    std::thread::sleep(Duration::from_secs(1));
    vm.sh("insmod /lib/xftrace-test/rk_blind.ko");
    std::thread::sleep(Duration::from_secs(2));
    let o = x.run(&["check", "--json", "--trace-seconds", "0"]);
    assert_eq!(o.status.code(), Some(1));
    let f = findings(&o);
    assert!(
        has(&f, "tracer-integrity", &["heartbeat did not advance"]),
        "{f:#?}"
    );
    assert!(
        has(&f, "tracer-integrity", &["failed their check"]),
        "{f:#?}"
    );
    let _ = x.run(&[
        "off",
        "--output",
        x.state.path().join("blind.txt").to_str().unwrap(),
    ]);
    assert_eq!(vm.qmp_status(), "running");
}
