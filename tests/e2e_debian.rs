//! xftrace on a real Debian VM, end to end, through a real libvirtd: a
//! bookworm image with systemd, sshd and nginx boots Debian's stock cloud
//! kernel from its own disk; the domain is enrolled; the Ansible guest role
//! installs the xftrace kernel package over SSH, makes it GRUB's default,
//! reboots into it and hands its System.map to the host's enrollment; then
//! nginx's and systemd's calls are traced under HTTP load, 8 checks of the
//! clean guest find nothing, and every test rootkit is found. libvirt's
//! lifecycle events show the guest was never paused.
//!
//! The kernel is the one tests/run.sh builds (XFTRACE_KERNEL_DIR): the small
//! profile in CI, the cloud profile in the release run
//! (`tests/release.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::debian::{image_dir, Lifecycle};
use common::detection::{
    body_hooks, census_cost, cleared_taint, control_data_hooks, findings, has, hidden_module,
    hidden_task, idt_register, measured, registry_hooks, root_by_credentials, shadow_page, CASES,
};
use common::libvirtd::{virsh, Libvirtd, URI};
use common::xftrace;

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ansible_playbook(args: &[&str], dir: &Path) -> Output {
    let bin = match std::env::var_os("XFTRACE_ANSIBLE_BIN") {
        Some(d) => Path::new(&d).join("ansible-playbook"),
        None => "ansible-playbook".into(),
    };
    let o = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin:?} (tests/run.sh installs it): {e}"));
    eprintln!(
        "$ ansible-playbook {}\n  exit {:?}\n{}{}",
        args.join(" "),
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `changed=N` of the recap line for `host`.
fn changed(o: &Output, host: &str) -> u32 {
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find(|l| l.starts_with(host) && l.contains("changed="))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("changed="))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recap for {host} in {text}"))
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn debian_vm_gets_the_kernel_by_ansible_and_is_traced_and_checked() {
    let _one = common::serial();
    let img = image_dir();
    let kdir = common::kernel_dir();
    let release = read_trimmed(&kdir.join("kernelversion"));
    let stock = read_trimmed(&img.join("stock-kernel"));
    let state = common::state_dir();
    let st = state.path();
    let mut lv = Libvirtd::start(st);
    // Where the test's time goes, phase by phase.
    let phases = std::cell::RefCell::new((Instant::now(), Vec::<(&str, f64)>::new()));
    // Each phase's row is written as it ends: a run that fails later
    // still shows where its time went.
    let phase = |name: &'static str| {
        let mut p = phases.borrow_mut();
        let secs = p.0.elapsed().as_secs_f64();
        p.1.push((name, secs));
        common::phase_timing(name, secs);
        p.0 = Instant::now();
    };
    let name = format!("xft-deb-{}", std::process::id());
    let vm = lv.define_debian(&name, 1024);
    let events = Lifecycle::watch(&name, &lv.images);

    // Enrolled for the kernel it is to run, while it still has Debian's.
    let map = kdir.join("System.map");
    let o = xftrace(
        st,
        &[
            "-c",
            URI,
            "enroll",
            &name,
            "--system-map",
            map.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));

    // A real boot: SeaBIOS, the image's GRUB, Debian's kernel, systemd.
    let t = Instant::now();
    let o = virsh(&["start", &name]);
    assert!(o.status.success(), "{}", out(&o));
    vm.wait_multi_user(Duration::from_secs(900));
    let boot = t.elapsed();
    assert_eq!(vm.sh("uname -r").trim(), stock);
    assert_eq!(vm.http_get("/"), Some(200), "nginx does not answer");
    eprintln!(
        "debian: virsh start to multi-user.target with the stock kernel ({stock}): {:.1} s",
        boot.as_secs_f64()
    );
    phase("define, enroll, boot");

    // Debian's own kernel, nothing of xftrace in the guest: xftrace finds
    // no control block, takes the guest for the stock kernel its banner
    // names, fetches that package from Debian's archive (the first check
    // of a new kernel version), and checks it from the host.
    let stock_check = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        c.arg("--state-dir")
            .arg(st)
            .args(["-c", URI, "--domain", &name])
            .args(args);
        c
    };
    let (o, first, _) = measured(stock_check(&["check", "--json", "--trace-seconds", "0"]));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("runs Linux version {stock} "))
            && err.contains("checked as a stock kernel"),
        "{err}"
    );
    // Its build, fetched and stored with the package it came from.
    let fetched: Vec<String> = std::fs::read_dir(st.join("kernels"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("reference")).ok())
        .collect();
    assert!(
        fetched.len() == 1 && fetched[0].contains(&format!("package=linux-image-{stock} ")),
        "{fetched:?}"
    );
    let (o, again, _) = measured(stock_check(&["check", "--json", "--trace-seconds", "0"]));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    eprintln!(
        "debian: the stock kernel's first check, its build fetched from Debian's archive: {:.1} s; the next: {:.1} s",
        first.as_secs_f64(),
        again.as_secs_f64()
    );
    let o = xftrace(st, &["--domain", &name, "status"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("mode:       stock kernel"), "{}", out(&o));
    let o = xftrace(st, &["--domain", &name, "baseline"]);
    assert!(o.status.success(), "{}", out(&o));
    for i in 0..3 {
        let o = stock_check(&["check", "--json", "--trace-seconds", "0"])
            .output()
            .unwrap();
        let f = findings(&o);
        assert!(
            f.is_empty() && o.status.code() == Some(0),
            "clean check {i} of the stock kernel found {f:#?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Tracing needs the tracer: a clear refusal.
    let o = xftrace(st, &["--domain", &name, "on", "sys_read"]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("without xftrace's tracer"), "{}", out(&o));
    phase("stock kernel: found, fetched, clean");
    // The test rootkits, built against Debian's headers package of that
    // kernel, found on it, at targets drawn per run.
    vm.copy_in(common::stock_rootkit_modules(&stock), "/root/rk-stock");
    let check = || {
        stock_check(&["check", "--json", "--trace-seconds", "0"])
            .output()
            .unwrap()
    };
    body_hooks(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    registry_hooks(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    shadow_page(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    for (module, kind, parts, _) in CASES {
        vm.sh(&format!("insmod /root/rk-stock/{module}.ko"));
        let o = check();
        let f = findings(&o);
        assert_eq!(o.status.code(), Some(1), "{module} not reported: {f:#?}");
        assert!(
            has(&f, kind, parts) && has(&f, kind, &[&format!("in module {module}")]),
            "{module} on the stock kernel: no {kind} finding with {parts:?} naming the module in {f:#?}"
        );
    }
    for (module, ..) in CASES.iter().rev() {
        vm.sh(&format!("rmmod {module}"));
    }
    // Control data in writable memory and heap objects, deferred code, the
    // vCPUs' IDT register and cleared taint flags: none needs the tracer.
    control_data_hooks(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    idt_register(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    cleared_taint(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    phase("stock kernel: rootkits found");

    // The fleet rollout, for real: the guest role over the forwarded SSH
    // port, with this machine as the guest's hypervisor.
    let tmp = tempfile::Builder::new()
        .prefix("xftrace-debian-")
        .tempdir()
        .unwrap();
    let inventory = format!(
        r#"all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
      xftrace_binary_dest: {bin}
      xftrace_state_dir: {st}
      xftrace_libvirt_uri: "{URI}"
  children:
    xftrace_guests:
      hosts:
        debian-guest:
          ansible_host: 127.0.0.1
          ansible_port: {port}
          ansible_user: root
          ansible_ssh_private_key_file: {key}
          ansible_ssh_common_args: "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
          ansible_python_interpreter: /usr/bin/python3
          xftrace_guest_hypervisor: localhost
          xftrace_guest_domain: {name}
      vars:
        xftrace_guest_tracer: kernel
        xftrace_guest_kernel_dir: {kdir}
"#,
        bin = env!("CARGO_BIN_EXE_xftrace"),
        st = st.display(),
        port = vm.ssh_port,
        key = vm.key.display(),
        kdir = kdir.display(),
    );
    let inv = tmp.path().join("inventory.yml");
    std::fs::write(&inv, inventory).unwrap();
    let site = common::repo().join("ansible/site.yml");
    let args = [
        "-i",
        inv.to_str().unwrap(),
        site.to_str().unwrap(),
        "--limit",
        "xftrace_guests",
    ];
    // The same stock kernel traced by xftrace-dkms: the guest role in its
    // default mode installs the package (guest-dkms/build-deb.sh), DKMS
    // builds the module in the guest against Debian's headers, it loads,
    // and the domain is enrolled for a stock kernel. The host finds the
    // module's control block.
    let deb = common::xftrace_dkms_deb();
    let dkms_vars = format!("xftrace_guest_dkms_deb={}", deb.display());
    let dkms_args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["-e", "xftrace_guest_tracer=dkms", "-e", &dkms_vars])
        .collect();
    let t = Instant::now();
    let o = ansible_playbook(&dkms_args, tmp.path());
    assert!(o.status.success(), "the guest role (dkms) failed");
    assert!(changed(&o, "debian-guest") > 0);
    let dkms_time = t.elapsed();
    assert_eq!(vm.sh("cat /sys/module/xftrace/initstate").trim(), "live");
    let o = ansible_playbook(&dkms_args, tmp.path());
    assert!(o.status.success(), "the guest role (dkms), again, failed");
    assert_eq!(
        changed(&o, "debian-guest"),
        0,
        "the second run (dkms) changed something"
    );
    eprintln!(
        "debian: guest role, dkms: {:.0} s (the package installed, DKMS built the module in the guest, loaded; enrolled for a stock kernel)",
        dkms_time.as_secs_f64()
    );
    let o = xftrace(st, &["--domain", &name, "status"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("mode:       stock kernel, traced by the xftrace module"),
        "{}",
        out(&o)
    );
    // Under HTTP load, while a unit of the guest lists directories and
    // reads files, from the trace through the baseline to the checks.
    let load = vm.http_load();
    vm.sh("systemd-run --unit xftrace-dkms-workload sh -c \
         'while :; do ls / /run > /dev/null; cat /etc/hostname > /dev/null; sleep 0.3; done'");
    std::thread::sleep(Duration::from_secs(1));
    let o = xftrace(st, &["--domain", &name, "on", "sys_read"]);
    assert!(o.status.success(), "{}", out(&o));
    // nginx serves with recvfrom and sendfile: something that reads.
    for _ in 0..4 {
        vm.sh("cat /etc/hostname /etc/os-release > /dev/null");
        std::thread::sleep(Duration::from_secs(1));
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace_graph.txt");
    let o = xftrace(
        st,
        &[
            "--domain",
            &name,
            "off",
            "--output",
            trace.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    let excerpt = |t: &str| t.chars().take(3000).collect::<String>();
    assert!(
        text.contains(" 0 failed integrity checks") && text.contains("|  __x64_sys_read() {"),
        "{}",
        excerpt(&text)
    );
    assert!(text.contains("|    ksys_read() {"), "{}", excerpt(&text));
    // The (one) vCPU's ring holds the module's probe calls.
    let probes = text
        .lines()
        .find(|l| l.starts_with("# xftrace: probe calls (not shown) by CPU: "))
        .unwrap_or_else(|| panic!("no probe line: {}", excerpt(&text)));
    assert!(probes.contains("cpu0 "), "{probes}");
    eprintln!(
        "debian: xftrace-dkms traced sys_read for 4 s: {} lines; {probes}",
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    // A baseline with call flow, clean checks with it, and the call-flow
    // rootkits seen by their call flow too.
    let o = xftrace(st, &["--domain", &name, "baseline", "--duration", "10"]);
    assert!(o.status.success(), "{}", out(&o));
    let flow_check = || {
        stock_check(&["check", "--json", "--trace-seconds", "3"])
            .output()
            .unwrap()
    };
    for i in 0..2 {
        let o = flow_check();
        let f = findings(&o);
        assert!(
            f.is_empty() && o.status.code() == Some(0),
            "clean check {i} of the stock kernel traced by xftrace-dkms found {f:#?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (module, kind, parts, flow) in CASES {
        let Some(flow) = flow else { continue };
        vm.sh(&format!("insmod /root/rk-stock/{module}.ko"));
        let o = flow_check();
        let f = findings(&o);
        assert_eq!(o.status.code(), Some(1), "{module} not reported: {f:#?}");
        assert!(
            has(&f, kind, parts) && has(&f, "call-flow-unknown-code", flow),
            "{module} on the stock kernel traced by xftrace-dkms: no {kind} finding with {parts:?}, or call flow missed it, in {f:#?}"
        );
        vm.sh(&format!("rmmod {module}"));
    }
    vm.sh("systemctl stop xftrace-dkms-workload");
    drop(load);
    // Unloading the module is a tracer gone: reported, like a stopped one.
    vm.sh("rmmod xftrace");
    let o = check();
    let f = findings(&o);
    assert!(
        o.status.code() == Some(1) && has(&f, "tracer-integrity", &["no longer has"]),
        "the unloaded tracer was not reported: {f:#?}"
    );
    // A module that hides, which cannot be unloaded: the reboot of the
    // kernel update below ends it.
    hidden_module(&mut |c| vm.sh(c), &check, "/root/rk-stock");
    phase("stock kernel traced by xftrace-dkms: trace, call flow, unload");

    // A kernel update: the guest boots another of Debian's cloud kernels
    // (the image holds each one the archive offers, with its headers, and
    // DKMS built the module for each when the package was installed). The
    // host meets a version it has no build of, fetches Debian's package of
    // it, and the checks stay clean; the module, loaded at boot by
    // modules-load.d, traces it.
    let next = read_trimmed(&img.join("other-kernels"));
    let next = next.lines().next().unwrap_or_else(|| {
        panic!("the image holds one cloud kernel ({stock}): the archive offers no second version to update to")
    });
    // GRUB's menu lists the image's kernels newest first: the next entry.
    vm.sh("sed -i 's/^set default=0$/set default=1/' /boot/grub/grub.cfg");
    vm.reboot(Duration::from_secs(900));
    assert_eq!(vm.sh("uname -r").trim(), next);
    let (o, first, _) = measured(stock_check(&["check", "--json", "--trace-seconds", "0"]));
    let f = findings(&o);
    assert!(
        f.is_empty() && o.status.code() == Some(0),
        "the first check of {next} found {f:#?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fetched: Vec<String> = std::fs::read_dir(st.join("kernels"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("reference")).ok())
        .collect();
    assert!(
        fetched
            .iter()
            .any(|r| r.contains(&format!("package=linux-image-{next} "))),
        "{fetched:?}"
    );
    let o = xftrace(st, &["--domain", &name, "status"]);
    assert!(
        out(&o).contains("traced by the xftrace module") && out(&o).contains(next),
        "{}",
        out(&o)
    );
    let o = xftrace(st, &["--domain", &name, "on", "sys_read"]);
    assert!(o.status.success(), "{}", out(&o));
    vm.sh("cat /etc/hostname /etc/os-release > /dev/null");
    std::thread::sleep(Duration::from_secs(1));
    let trace = dir.path().join("update.txt");
    let o = xftrace(
        st,
        &[
            "--domain",
            &name,
            "off",
            "--output",
            trace.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains(" 0 failed integrity checks") && text.contains("|  __x64_sys_read() {"),
        "{}",
        excerpt(&text)
    );
    eprintln!(
        "debian: kernel update to {next}: its first check, Debian's package fetched, {:.1} s; clean; traced by the module DKMS built for it",
        first.as_secs_f64()
    );
    // Back to the newest kernel, which the guest role then replaces.
    vm.sh("sed -i 's/^set default=1$/set default=0/' /boot/grub/grub.cfg");
    phase("kernel update: another stock kernel, fetched, clean, traced");

    let t = Instant::now();
    let first = ansible_playbook(&args, tmp.path());
    let first_time = t.elapsed();
    assert!(first.status.success(), "the guest role failed");
    assert!(changed(&first, "debian-guest") > 0);
    assert_eq!(
        vm.sh("uname -r").trim(),
        release,
        "the guest did not boot the new kernel"
    );
    let systemd = vm.sh("systemd-analyze || true");
    let o = xftrace(st, &["--domain", &name, "status"]);
    assert!(
        o.status.success(),
        "xftrace does not find the kernel: {}",
        out(&o)
    );
    assert!(out(&o).contains(&release), "{}", out(&o));
    let t = Instant::now();
    let second = ansible_playbook(&args, tmp.path());
    let second_time = t.elapsed();
    assert!(second.status.success());
    assert_eq!(
        changed(&second, "debian-guest"),
        0,
        "the second run changed something"
    );
    eprintln!(
        "debian: guest role first run {:.0} s (install, reboot), second run {:.0} s; after the reboot: {}",
        first_time.as_secs_f64(),
        second_time.as_secs_f64(),
        systemd.trim()
    );

    phase("guest role, twice");
    // nginx's and systemd's own call flows, under HTTP load.
    let load = vm.http_load();
    std::thread::sleep(Duration::from_secs(2));
    let o = xftrace(st, &["--domain", &name, "on", "sys_openat", "sys_read"]);
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_secs(3));
    // systemd at work: PID 1 reloads its units, journald logs.
    vm.sh("systemctl daemon-reload && logger xftrace-test && systemctl status nginx > /dev/null");
    std::thread::sleep(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace_graph.txt");
    let o = xftrace(
        st,
        &[
            "--domain",
            &name,
            "off",
            "--output",
            trace.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    let excerpt = |t: &str| t.chars().take(3000).collect::<String>();
    assert!(
        text.contains(" 0 failed integrity checks"),
        "{}",
        excerpt(&text)
    );
    assert!(
        text.contains("|  __x64_sys_openat() {"),
        "{}",
        excerpt(&text)
    );
    assert!(
        text.contains("|    do_sys_openat2() {"),
        "{}",
        excerpt(&text)
    );
    assert!(text.contains("ext4_file_open"), "no ext4 in the trace");
    assert!(text.contains("|  __x64_sys_read() {"), "no read traced");
    for task in ["nginx-", "systemd-1 "] {
        assert!(
            text.lines().any(|l| l.contains(" => ") && l.contains(task)),
            "no task switch to or from {task} in the trace"
        );
    }
    assert!(load.answered() > 0, "no HTTP request was answered");
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!(
        "debian: traced sys_openat and sys_read for 6 s: {lines} lines, {} HTTP requests answered",
        load.answered()
    );

    phase("a traced session");
    // A baseline of the clean guest under the same load, then 8 checks
    // with call flow: no finding.
    // Legitimate credential changes all through: su and runuser to an
    // unprivileged user (and an ssh login per clean check below).
    vm.sh("systemd-run --unit xftrace-creds sh -c \
         'while :; do su -s /bin/sh nobody -c id > /dev/null; runuser -u nobody -- true; sleep 1; done'");
    let o = xftrace(st, &["--domain", &name, "baseline", "--duration", "10"]);
    assert!(o.status.success(), "{}", out(&o));
    let x = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        c.arg("--state-dir")
            .arg(st)
            .args(["--domain", &name])
            .args(args);
        c
    };
    let mut worst = (Duration::ZERO, 0);
    for i in 0..8 {
        vm.sh("true");
        let (o, t, rss) = measured(x(&["check", "--json", "--trace-seconds", "1"]));
        let f = findings(&o);
        assert!(
            f.is_empty() && o.status.code() == Some(0),
            "clean check {i} found {f:#?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        worst = (worst.0.max(t), worst.1.max(rss));
    }
    let (o, t, rss) = measured(x(&["check", "--json", "--trace-seconds", "0"]));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    eprintln!(
        "debian: integrity check {:.0} ms, {rss} KiB peak RSS; with 1 s of call flow at most {:.2} s, {} KiB",
        t.as_secs_f64() * 1e3,
        worst.0.as_secs_f64(),
        worst.1
    );
    vm.sh("systemctl stop xftrace-creds");
    phase("baseline and 8 clean checks with call flow");
    census_cost(
        x(&["check", "--json", "--trace-seconds", "0"]),
        "Debian VM, nginx serving",
    );
    // The task census with 500 more processes (issue 25's cost target is
    // for the release build: XFTRACE_TEST_RELEASE_BIN runs that one here).
    vm.sh("for i in $(seq 500); do setsid sleep 900 < /dev/null > /dev/null 2>&1 & done; sleep 1; true");
    let release = std::env::var_os("XFTRACE_TEST_RELEASE_BIN");
    let mut c = Command::new(
        release
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_xftrace").into()),
    );
    c.arg("--state-dir").arg(st).args([
        "--domain",
        &name,
        "check",
        "--json",
        "--trace-seconds",
        "0",
    ]);
    census_cost(
        c,
        if release.is_some() {
            "Debian VM, nginx serving, 500 more processes, release build"
        } else {
            "Debian VM, nginx serving, 500 more processes"
        },
    );
    vm.sh("pkill -f '^sleep 900$'; true");
    drop(load);
    soak(&vm, &x);
    phase("census cost (and soak)");

    // Every test rootkit, built against the headers package of the kernel
    // the guest runs, loaded by insmod, found. A unit of the guest keeps
    // listing directories (/run is tmpfs, whose directories rk_fops hooks)
    // and reading files meanwhile.
    vm.copy_in(common::rootkit_modules(), "/root/rk");
    vm.sh("systemd-run --unit xftrace-workload sh -c \
         'while :; do ls / /run > /dev/null; cat /etc/hostname > /dev/null; sleep 0.3; done'");
    for (module, kind, parts, flow) in CASES {
        vm.sh(&format!("insmod /root/rk/{module}.ko"));
        let o = x(&["check", "--json", "--trace-seconds", "3"])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{module} not reported: {}",
            out(&o)
        );
        let f = findings(&o);
        assert!(
            has(&f, kind, parts) && has(&f, kind, &[&format!("in module {module}")]),
            "{module}: no {kind} finding with {parts:?} naming the module in {f:#?}"
        );
        if let Some(flow) = flow {
            assert!(
                has(&f, "call-flow-unknown-code", flow),
                "{module}: call-flow analysis missed it: {f:#?}"
            );
        }
    }
    phase("rootkit cases with call flow");
    // One integrity-only check, as the rootkit helpers run it.
    let check = || {
        x(&["check", "--json", "--trace-seconds", "0"])
            .output()
            .unwrap()
    };
    // Hooks at targets drawn per run (function bodies, registries, control
    // data) are not drawn again here: those checks do not use the tracer,
    // and they ran on this guest's userland with Debian's kernel above, and
    // on this same kernel in e2e_rootkits.
    // What rootkits hide: a process, and who a process is.
    let traced = || {
        x(&["check", "--json", "--trace-seconds", "3"])
            .output()
            .unwrap()
    };
    hidden_task(&mut |c| vm.sh(c), &check, &traced, "/root/rk");
    // The window's second half (12 s) holds the module's load over ssh,
    // which takes seconds under TCG while nginx serves: 6.2 s in a CI run
    // beside the other lane, over the 6 s a 12 s window left it.
    root_by_credentials(
        &mut |c| vm.sh(c),
        &check,
        x(&["check", "--json", "--trace-seconds", "24"]),
        "/root/rk",
    );
    phase("hidden tasks and credentials");
    // Data sealed after boot (/dev/ptmx's open swapped), found against this
    // boot's snapshot; then a module that hides itself.
    let ptmx = || vm.sh("(: < /dev/ptmx) 2>&1; echo rc=$?");
    assert!(ptmx().contains("rc=0"), "/dev/ptmx cannot be opened");
    vm.sh("insmod /root/rk/rk_ro_after_init.ko");
    assert!(
        ptmx().contains("Permission denied"),
        "rk_ro_after_init did not fire"
    );
    let o = x(&["check", "--json", "--trace-seconds", "0"])
        .output()
        .unwrap();
    let f = findings(&o);
    assert!(
        has(
            &f,
            "ro-after-init",
            &["ptmx_fops+", "in module rk_ro_after_init"]
        ),
        "{f:#?}"
    );
    vm.sh("rmmod rk_ro_after_init");
    assert!(ptmx().contains("rc=0"), "rk_ro_after_init did not unload");
    hidden_module(&mut |c| vm.sh(c), &check, "/root/rk");
    vm.sh("insmod /root/rk/rk_idt.ko");
    let o = x(&["check", "--json", "--trace-seconds", "0"])
        .output()
        .unwrap();
    let f = findings(&o);
    assert!(
        has(&f, "idt", &["IDT vector 0 enters", "in module rk_idt"]),
        "{f:#?}"
    );
    // The one that goes for xftrace itself, while a session runs.
    let o = xftrace(st, &["--domain", &name, "on", "sys_openat", "sys_read"]);
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_secs(1));
    vm.sh("insmod /root/rk/rk_blind.ko");
    std::thread::sleep(Duration::from_secs(2));
    let o = x(&["check", "--json", "--trace-seconds", "0"])
        .output()
        .unwrap();
    let f = findings(&o);
    assert!(
        has(&f, "tracer-integrity", &["heartbeat did not advance"])
            && has(&f, "tracer-integrity", &["failed their check"]),
        "{f:#?}"
    );
    let blind = dir.path().join("blind.txt");
    let _ = xftrace(
        st,
        &[
            "--domain",
            &name,
            "off",
            "--output",
            blind.to_str().unwrap(),
        ],
    );

    phase("the rest");
    host_package_under_systemd(&vm, dir.path());
    phase("the host package under systemd");

    // Never paused: libvirt saw it start, reboot (the role), and nothing else.
    let ev = events.events();
    assert!(
        ev.iter().any(|e| e.contains("Started")),
        "no lifecycle events recorded: {ev:?}"
    );
    assert!(
        !ev.iter()
            .any(|e| e.contains("Suspended") || e.contains("Stopped")),
        "the guest was paused or stopped: {ev:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&virsh(&["domstate", &name]).stdout).trim(),
        "running"
    );
    eprintln!("debian: lifecycle events: {ev:?}");
    phase("lifecycle events");
    for (name, secs) in &phases.borrow().1 {
        eprintln!("debian: phase {secs:7.1} s  {name}");
    }
}

/// The host package on a Debian 12 host that runs systemd (issue 28): this
/// guest, with libvirt's daemon in its image. Installed with apt while
/// libvirtd runs, the package restarts libvirtd (its hook directory is new),
/// enables and starts xftrace-watch.service, which runs under its hardening
/// as systemd applies it (two capabilities, the exposure
/// `systemd-analyze security` rates), logs to the journal with priorities,
/// follows libvirt's events, reconnects when libvirtd restarts, and writes
/// the metrics file it is configured with; an upgrade restarts it; a stop
/// ends it cleanly (exit 0); a purge leaves no unit, hook, binary or state.
/// No guest runs in this guest (no nested virtualization under TCG): the
/// service following real domains is `e2e_libvirt`'s and `e2e_ansible`'s.
fn host_package_under_systemd(vm: &common::debian::Debian, tmp: &Path) {
    let debs = [
        common::host_package(tmp, "1"),
        common::host_package(tmp, "2"),
    ];
    vm.copy_in(&debs, "/root/xftrace-pkg");
    let file = |d: &PathBuf| d.file_name().unwrap().to_string_lossy().into_owned();
    let apt = |what: &str| {
        let o = vm.ssh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get {what} -y -q 2>&1"
        ));
        assert!(o.status.success(), "apt-get {what}: {}", out(&o));
    };
    let main_pid = |unit: &str| {
        vm.sh(&format!("systemctl show -p MainPID --value {unit}"))
            .trim()
            .to_string()
    };
    // Until `cond` (a shell test) holds in the guest, or 60 s.
    let wait_for = |cond: &str, what: &str| {
        let end = Instant::now() + Duration::from_secs(60);
        while !vm.ssh(cond).status.success() {
            assert!(
                Instant::now() < end,
                "{what}: not so after 60 s; the service's journal, its status and threads:\n{}",
                vm.sh("journalctl -u xftrace-watch -u libvirtd --no-pager -o short-precise | tail -n 40; systemctl status --no-pager xftrace-watch | head -n 12; P=$(systemctl show -p MainPID --value xftrace-watch); for t in /proc/$P/task/*; do echo \"$(cat $t/comm) $(cat $t/wchan)\"; cat $t/stack 2>/dev/null; done")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    // The journal of the service's current process, at `priority` or more
    // urgent, as `journalctl -o cat` prints it.
    let journal = |priority: &str| {
        let pid = main_pid("xftrace-watch");
        vm.sh(&format!(
            "journalctl --no-pager -o cat -p {priority} _PID={pid}"
        ))
    };

    vm.sh("systemctl start libvirtd.service");
    let libvirtd = main_pid("libvirtd");
    assert!(
        !vm.ssh("test -e /etc/libvirt/hooks/qemu.d").status.success(),
        "the image already has libvirt's hook directory"
    );
    apt(&format!("install /root/xftrace-pkg/{}", file(&debs[0])));
    // The hook directory was new: libvirtd was restarted to find it.
    assert_ne!(main_pid("libvirtd"), libvirtd, "libvirtd was not restarted");
    assert_eq!(
        vm.sh("systemctl is-enabled xftrace-watch.service").trim(),
        "enabled"
    );
    wait_for(
        "systemctl is-active -q xftrace-watch && journalctl -o cat _PID=$(systemctl show -p MainPID --value xftrace-watch) | grep -q \"following libvirt's domain events at qemu:///system\"",
        "the service follows libvirt",
    );
    // Under its hardening: root with two capabilities (CAP_DAC_OVERRIDE,
    // CAP_DAC_READ_SEARCH: bits 1 and 2), rated as the host test rates it.
    let pid = main_pid("xftrace-watch");
    let caps = vm.sh(&format!("grep -E '^Cap(Eff|Bnd):' /proc/{pid}/status"));
    assert!(
        caps.lines().all(|l| l.ends_with("0000000000000006")),
        "{caps}"
    );
    let rated = vm.sh("systemd-analyze security --no-pager xftrace-watch.service | tail -n 1");
    let exposure: f64 = rated
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{rated}"));
    assert!(exposure <= 2.5, "{rated}");
    // libvirtd restarts: a warning in the journal, and the service follows
    // it again.
    vm.sh("systemctl restart libvirtd.service");
    wait_for(
        &format!("journalctl -o cat -p warning _PID={pid} | grep -q 'closed (libvirtd stopped or restarted?); reconnecting'"),
        "the service saw libvirtd go",
    );
    wait_for(
        &format!("test $(journalctl -o cat _PID={pid} | grep -c \"following libvirt's domain events\") -ge 2"),
        "the service follows the restarted libvirtd",
    );
    assert_eq!(
        main_pid("xftrace-watch"),
        pid,
        "the service itself restarted"
    );
    // The metrics file, once configured (`systemctl restart` applies
    // /etc/default/xftrace), and an upgrade, which restarts the service.
    vm.sh("mkdir -p /var/lib/prometheus/node-exporter && sed -i 's|^#XFTRACE_TEXTFILE=|XFTRACE_TEXTFILE=|' /etc/default/xftrace && systemctl restart xftrace-watch");
    // (No domain runs in this guest: the file holds the metrics' help and
    // types, no series.)
    wait_for(
        "grep -q '^# TYPE xftrace_collector_up gauge' /var/lib/prometheus/node-exporter/xftrace.prom",
        "the metrics file",
    );
    let before = main_pid("xftrace-watch");
    apt(&format!("install /root/xftrace-pkg/{}", file(&debs[1])));
    assert_ne!(
        main_pid("xftrace-watch"),
        before,
        "the upgrade did not restart the service"
    );
    assert!(
        vm.sh("grep ^XFTRACE_TEXTFILE= /etc/default/xftrace")
            .contains("xftrace.prom"),
        "the upgrade did not keep the settings"
    );
    wait_for(
        "journalctl -o cat -p info _PID=$(systemctl show -p MainPID --value xftrace-watch) | grep -q \"following libvirt's domain events\"",
        "the upgraded service follows libvirt",
    );
    assert!(
        journal("err").trim().is_empty(),
        "errors in the journal: {}",
        journal("err")
    );
    // Stopped, it ends cleanly.
    vm.sh("systemctl stop xftrace-watch");
    let ended = vm.sh("systemctl show -p Result -p ExecMainStatus xftrace-watch");
    assert!(
        ended.contains("Result=success") && ended.contains("ExecMainStatus=0"),
        "{ended}"
    );
    // Purged: nothing of it is left, and libvirt goes on.
    apt("purge xftrace");
    let left = vm.sh(
        "for p in /usr/bin/xftrace /etc/libvirt/hooks/qemu.d/xftrace /lib/systemd/system/xftrace-watch.service /etc/systemd/system/multi-user.target.wants/xftrace-watch.service /etc/default/xftrace /var/lib/xftrace; do [ ! -e $p ] || echo $p; done",
    );
    assert!(left.trim().is_empty(), "left after purge: {left}");
    // libvirt still answers. Not "libvirtd.service is active": Debian's
    // libvirtd is socket-activated with `--timeout 120` and exits once idle
    // (no client since the service stopped; apt's triggers under TCG can
    // take that long), which is libvirt working as shipped. The socket
    // brings it back for virsh.
    let o = vm.ssh("systemctl is-active -q libvirtd.socket && virsh -c qemu:///system list --all");
    assert!(
        o.status.success(),
        "libvirt does not answer after the purge: {}",
        out(&o)
    );
    vm.sh(
        "systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket",
    );
    eprintln!(
        "debian: the host package under systemd: installed, the service ran with exposure {exposure} ({}), upgraded, stopped cleanly, purged",
        caps.lines().next().unwrap_or_default()
    );
}

/// Workloads of the Debian guest's soak, by name (HTTP comes from the host).
const SOAK_WORKLOADS: &[(&str, &str)] = &[
    ("http", "true"),
    (
        "file",
        "find /usr/share/doc -name '*.gz' | head -200 | xargs cat > /dev/null; ls -R /etc > /dev/null 2>&1",
    ),
    (
        "process",
        "for i in $(seq 40); do /bin/true; done; ps aux > /dev/null; systemctl list-units > /dev/null",
    ),
    (
        "network",
        "for i in $(seq 20); do curl -s -o /dev/null http://127.0.0.1/; curl -s -o /dev/null http://127.0.0.1/x; done",
    ),
];

/// The Debian half of the clean-guest soak (`tests/soak.sh --debian N`):
/// `XFTRACE_SOAK_DEBIAN_CHECKS` more clean checks (none by default) under
/// HTTP load and the workloads above, half with the default 3 s call-flow
/// window, half while the workload still runs, rebooting the guest (a new
/// KASLR layout, a new baseline) every `XFTRACE_SOAK_PER_BOOT` (250).
/// Counted into `XFTRACE_SOAK_DEBIAN_STATE`; any finding fails the test.
fn soak(vm: &common::debian::Debian, x: &dyn Fn(&[&str]) -> Command) {
    let n: u64 = std::env::var("XFTRACE_SOAK_DEBIAN_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if n == 0 {
        return;
    }
    let per_boot: u64 = std::env::var("XFTRACE_SOAK_PER_BOOT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250)
        .max(1);
    let mut st = common::soak::SoakState::load("XFTRACE_SOAK_DEBIAN_STATE");
    let mut done = 0;
    while done < n {
        let boot = st.n("boots");
        if done > 0 {
            // A new boot: new KASLR slide, new snapshot, new baseline.
            vm.reboot(Duration::from_secs(600));
            let end = Instant::now() + Duration::from_secs(120);
            loop {
                let o = x(&["status"]).output().unwrap();
                if o.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "xftrace does not find the rebooted kernel: {}",
                    out(&o)
                );
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let (bname, bload) = SOAK_WORKLOADS[boot as usize % SOAK_WORKLOADS.len()];
        let load = vm.http_load();
        let mut b = x(&["baseline", "--duration", "10"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            vm.sh(bload);
        }
        assert!(b.wait().unwrap().success(), "soak: baseline failed");
        drop(load);
        eprintln!("debian soak: boot {boot}, baseline under the {bname} workload");
        for i in 0..per_boot.min(n - done) {
            let (wname, wload) = SOAK_WORKLOADS[(i as usize + 1) % SOAK_WORKLOADS.len()];
            let with_flow = i % 2 == 0 && !common::soak::integrity_only();
            let busy = i % 4 < 2;
            let load = (wname == "http").then(|| vm.http_load());
            if busy {
                vm.sh(&format!(
                    "nohup sh -c '{}' > /dev/null 2>&1 &",
                    wload.replace('\'', "'\\''")
                ));
            } else {
                vm.sh(wload);
            }
            let secs = if with_flow { "3" } else { "0" };
            let o = x(&["check", "--json", "--trace-seconds", secs])
                .output()
                .unwrap();
            drop(load);
            st.record(
                &o,
                wname,
                with_flow,
                serde_json::json!({"boot": boot, "check": i, "busy": busy}),
            );
            done += 1;
        }
        st.bump("boots");
        st.save();
    }
    eprintln!("debian soak: {}", st.summary());
    assert_eq!(
        st.bad(),
        0,
        "clean checks with findings: {:#}",
        st.v["findings"]
    );
}
