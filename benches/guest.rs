//! What tracing costs the guest, measured inside it, side by side in one
//! boot: tracing off, xftrace on a filter, and stock ftrace (function_graph
//! through tracefs) on the same filter; for a traced system call path
//! (openat + read + close) and an untraced one (getppid). Then, with
//! `--unpatched`, tracing off on the patched kernel against the same
//! kernel without the xftrace patches. And what an idle guest pays for
//! xftrace being there: the xftrace thread's wakeups and the guest's local
//! timer interrupts per second of an idle guest (each one a VM exit under
//! KVM), before any session and after one; whether a session made ftrace
//! allocate its own ring buffers (tracefs `buffer_size_kb`); and the rings
//! xftrace allocated. With `--dkms`, the same on Debian's stock kernel (the
//! Debian VM image's) traced by the xftrace-dkms module: tracing off before
//! and after the module is loaded, the module on the filter, and stock
//! function_graph on the same filter, in one boot; then a build of the
//! module that writes no records (`XFTRACE_BENCH_NOWRITE=y`), which
//! takes the traced path's cost apart: fgraph's machinery, the records.
//!
//!   cargo bench --bench guest [-- --rounds N] [-- --unpatched] [-- --dkms]
//!
//! The guest runs under TCG with `-icount shift=1,sleep=on` (one vCPU):
//! its clock follows the instructions it executes, so rounds agree within
//! about 1 % on a noisy host. (Under KVM, where these machines cannot run
//! guests, figures would be wall-clock and noisier.) XFTRACE_KERNEL_DIR picks the
//! kernel build, as for the tests; `--unpatched` builds or reuses the
//! unpatched one (`guest-kernel/build.sh --unpatched`, cached).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{median, Boot, Vm, Xftrace};

/// Rounds of the traced path per measurement; the untraced one runs ten
/// times as many.
const N: u32 = 2000;
const FILTER: &str = "__x64_sys_openat";

/// One measurement: nanoseconds per round of each path, in guest time.
#[derive(Clone, Copy, Debug)]
struct Sample {
    traced: f64,
    untraced: f64,
}

/// The static in-guest program, in an initramfs of its own.
fn bench_initramfs() -> PathBuf {
    let target = common::repo().join("target");
    // Absent when cargo builds elsewhere (CARGO_TARGET_DIR).
    std::fs::create_dir_all(&target).expect("create target/");
    let bin = target.join("xftrace-bench-syscalls");
    common::static_program(&common::repo().join("benches/guest/syscalls.c"), &bin);
    let out = target.join("xftrace-bench-initramfs.cpio.gz");
    let st = Command::new("bash")
        .arg(common::repo().join("tests/guest/make-initramfs.sh"))
        .arg(&out)
        .arg(&bin)
        .status()
        .expect("run make-initramfs.sh");
    assert!(st.success(), "make-initramfs.sh");
    out
}

fn run(vm: &mut Vm) -> Sample {
    let out = vm.output(&format!("/lib/xftrace-test/xftrace-bench-syscalls {N}"));
    let line = out
        .lines()
        .find(|l| l.contains("XFBENCH"))
        .unwrap_or_else(|| panic!("no XFBENCH line in {out:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    Sample {
        traced: f[2].parse().unwrap(),
        untraced: f[4].parse().unwrap(),
    }
}

/// An idle guest over 10 s of guest time.
#[derive(Clone, Copy, Debug)]
struct Idle {
    /// The xftrace thread's wakeups per second (0 without the thread).
    wakeups: f64,
    /// Local timer interrupts per second, all CPUs.
    timer_irqs: f64,
}

const IDLE_SCRIPT: &str = r#"p=; for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = xftrace ] && p=${d#/proc/}; done
w() { if [ -n "$p" ]; then awk '/^voluntary_ctxt_switches/ {print $2}' /proc/$p/status; else echo 0; fi; }
l() { awk '/LOC:/ {n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n}' /proc/interrupts; }
t0=$(cut -d' ' -f1 /proc/uptime); w0=$(w); l0=$(l); sleep 10; t1=$(cut -d' ' -f1 /proc/uptime); w1=$(w); l1=$(l)
echo XFIDLE $t0 $t1 $w0 $w1 $l0 $l1"#;

fn idle(vm: &mut Vm) -> Idle {
    let out = vm.output(IDLE_SCRIPT);
    let line = out
        .lines()
        .find(|l| l.starts_with("XFIDLE"))
        .unwrap_or_else(|| panic!("no XFIDLE line in {out:?}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("a number"))
        .collect();
    let secs = f[1] - f[0];
    Idle {
        wakeups: (f[3] - f[2]) / secs,
        timer_irqs: (f[5] - f[4]) / secs,
    }
}

/// tracefs `buffer_size_kb`: "7 (expanded: 1408)" while ftrace's ring
/// buffers are still at their boot size.
fn ftrace_buffers(vm: &mut Vm) -> String {
    vm.output("cat /sys/kernel/tracing/buffer_size_kb")
        .trim()
        .to_string()
}

fn boot(kernel: Option<&Path>, initramfs: &Path) -> Vm {
    let vm = Vm::boot_with(
        256,
        1,
        &Boot {
            initramfs: Some(initramfs.to_path_buf()),
            icount: true,
            kernel: kernel.map(Path::to_path_buf),
            ..Default::default()
        },
    );
    assert_eq!(
        common::accel(),
        "tcg",
        "this benchmark's figures are guest instruction time: it needs TCG with -icount"
    );
    vm
}

fn mem_free_kb(vm: &mut Vm) -> i64 {
    let out = vm.output("awk '/^MemFree:/ {print $2}' /proc/meminfo");
    out.trim().parse().expect("MemFree")
}

/// A stock tracer through tracefs: on, `setting` (a tracefs file) set to
/// `value` and `tracer` current; off, the tracer `nop`, the setting and the
/// buffer emptied.
fn tracefs(vm: &mut Vm, on: bool, tracer: &str, setting: &str, value: &str) {
    let cmd = if on {
        format!("cd /sys/kernel/tracing && echo {value} > {setting} && echo {tracer} > current_tracer && cat current_tracer; cd /")
    } else {
        format!("cd /sys/kernel/tracing && echo nop > current_tracer && echo > {setting} && echo > trace && cat current_tracer; cd /")
    };
    let out = vm.output(&cmd);
    let want = if on { tracer } else { "nop" };
    assert!(out.contains(want), "tracefs: {out:?}");
}

/// Stock function_graph on the filter.
fn stock(vm: &mut Vm, on: bool) {
    tracefs(vm, on, "function_graph", "set_graph_function", FILTER);
}

/// The function tracer with its pid filter on kthreadd (pid 2, asleep):
/// every call site then calls ftrace's trampoline, which calls the pid
/// check and returns: what patching a call site costs with the cheapest
/// callback there is.
fn stock_function_elsewhere(vm: &mut Vm, on: bool) {
    tracefs(vm, on, "function", "set_ftrace_pid", "2");
}

/// Call sites ftrace has enabled (tracefs `enabled_functions`).
fn enabled_sites(vm: &mut Vm) -> u64 {
    let out = vm.output("wc -l < /sys/kernel/tracing/enabled_functions");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("enabled_functions: {out:?}"))
}

/// Traced functions one getppid call enters: the function tracer on the
/// bench program alone, events written for 20 000 calls less those for
/// none (its exec and exit), read before the tracer is switched off (which
/// empties the buffer).
fn entries_per_getppid(vm: &mut Vm) -> f64 {
    const CALLS: u32 = 20_000;
    let mut written = |n: u32| -> f64 {
        let out = vm.output(&format!(
            "cd /sys/kernel/tracing && echo > trace && sh -c 'echo $$ > set_ftrace_pid && echo function > current_tracer && exec /lib/xftrace-test/xftrace-bench-syscalls -g {n}'; grep -m1 entries-in-buffer trace; echo nop > current_tracer; echo > set_ftrace_pid; echo > trace; cd /"
        ));
        // "# entries-in-buffer/entries-written: 61/61   #P:1"
        let line = out
            .lines()
            .find(|l| l.contains("entries-written:"))
            .unwrap_or_else(|| panic!("no entries-written in {out:?}"));
        let w = line
            .split(':')
            .nth(1)
            .and_then(|x| x.split_whitespace().next());
        w.and_then(|x| x.split('/').nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("entries-written: {line:?}"))
    };
    let none = written(0);
    (written(CALLS) - none) / f64::from(CALLS)
}

fn xftrace_on(x: &Xftrace, vm: &mut Vm, on: bool, trace: &Path) {
    let o = if on {
        x.run(&["on", FILTER])
    } else {
        x.run(&["off", "--output", trace.to_str().unwrap()])
    };
    assert!(
        o.status.success(),
        "xftrace {}",
        if on { "on" } else { "off" }
    );
    let _ = vm;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |r| r.parse().expect("--rounds N"));
    let unpatched = args.iter().any(|a| a == "--unpatched");
    let initramfs = bench_initramfs();
    if args.iter().any(|a| a == "--dkms") {
        dkms(rounds);
        return;
    }

    let mut vm = boot(None, &initramfs);
    vm.output("mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; echo mounted");
    let x = Xftrace::new(&vm.ram);
    let trace = x.state.path().join("bench-trace.txt");
    run(&mut vm); // warm the page cache and the path
    let never = idle(&mut vm);
    let buffers_before = ftrace_buffers(&mut vm);
    let free_before = mem_free_kb(&mut vm);
    xftrace_on(&x, &mut vm, true, &trace);
    let buffers_on = ftrace_buffers(&mut vm);
    let free_on = mem_free_kb(&mut vm);
    xftrace_on(&x, &mut vm, false, &trace);
    let after = idle(&mut vm);
    let per_getppid = entries_per_getppid(&mut vm);
    xftrace_on(&x, &mut vm, true, &trace);
    let sites_xftrace = enabled_sites(&mut vm);
    xftrace_on(&x, &mut vm, false, &trace);
    stock_function_elsewhere(&mut vm, true);
    let sites_function = enabled_sites(&mut vm);
    stock_function_elsewhere(&mut vm, false);
    let (mut off, mut xf, mut st, mut el) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        off.push(run(&mut vm));
        stock_function_elsewhere(&mut vm, true);
        el.push(run(&mut vm));
        stock_function_elsewhere(&mut vm, false);
        xftrace_on(&x, &mut vm, true, &trace);
        xf.push(run(&mut vm));
        xftrace_on(&x, &mut vm, false, &trace);
        stock(&mut vm, true);
        st.push(run(&mut vm));
        stock(&mut vm, false);
        eprintln!(
            "round {r}: off {:?}, function tracer elsewhere {:?}, xftrace {:?}, stock {:?}",
            off[r], el[r], xf[r], st[r]
        );
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let t = |s: &Sample| s.traced;
    let u = |s: &Sample| s.untraced;
    let (off_t, xf_t, st_t) = (m(&off, t), m(&xf, t), m(&st, t));
    let (off_u, xf_u, st_u) = (m(&off, u), m(&xf, u), m(&st, u));
    let el_u = m(&el, u);
    let spread = |v: &[Sample], f: fn(&Sample) -> f64| {
        let xs: Vec<f64> = v.iter().map(f).collect();
        let (lo, hi) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        100.0 * (hi - lo) / lo
    };
    println!("guest overhead, {rounds} rounds in one boot, medians of guest time per round (TCG -icount shift=1, 1 vCPU, filter {FILTER}):");
    println!("| in the guest | tracing off | xftrace on the filter | stock function_graph, same filter |");
    println!("|---|---|---|---|");
    println!(
        "| openat+read+close (traced) | {:.2} µs | {:.2} µs | {:.2} µs |",
        off_t / 1e3,
        xf_t / 1e3,
        st_t / 1e3
    );
    println!(
        "| getppid (not traced) | {:.3} µs | {:.3} µs (×{:.2}) | {:.3} µs (×{:.2}) |",
        off_u / 1e3,
        xf_u / 1e3,
        xf_u / off_u,
        st_u / 1e3,
        st_u / off_u
    );
    println!(
        "traced path: xftrace adds {:.2} µs, stock adds {:.2} µs: {:.2}× stock's added cost (target ≤ 0.5)",
        (xf_t - off_t) / 1e3,
        (st_t - off_t) / 1e3,
        (xf_t - off_t) / (st_t - off_t)
    );
    println!(
        "untraced path: xftrace {:.3}× stock (target ≤ 1.0; stretch: ×{:.2} of off, target ≤ 1.10)",
        xf_u / st_u,
        xf_u / off_u
    );
    println!(
        "spread between rounds: function tracer elsewhere {:.1} % (untraced)",
        spread(&el, u)
    );
    println!(
        "spread between rounds: off {:.1} %/{:.1} %, xftrace {:.1} %/{:.1} %, stock {:.1} %/{:.1} % (traced/untraced)",
        spread(&off, t),
        spread(&off, u),
        spread(&xf, t),
        spread(&xf, u),
        spread(&st, t),
        spread(&st, u)
    );
    // Where an untraced call's added cost goes, per call site it enters.
    let site = |c: f64| (c - off_u) / per_getppid;
    println!(
        "where the untraced cost goes: getppid enters {per_getppid:.2} traced functions; each costs, with every site patched: {:.0} ns for the call to ftrace's trampoline and back with the cheapest callback (function tracer, pid filter elsewhere: getppid {:.3} µs, ×{:.2}), {:.0} ns with xftrace's graph entry and filter test ({:.0} ns more), {:.0} ns with stock function_graph's",
        site(el_u),
        el_u / 1e3,
        el_u / off_u,
        site(xf_u),
        site(xf_u) - site(el_u),
        site(st_u)
    );
    println!(
        "call sites enabled (tracefs enabled_functions): xftrace on {FILTER}: {sites_xftrace}; function tracer: {sites_function}"
    );
    println!(
        "idle guest (10 s of guest time): xftrace thread {:.1} wakeups/s and {:.1} timer interrupts/s before any session, {:.1} and {:.1} after one",
        never.wakeups, never.timer_irqs, after.wakeups, after.timer_irqs
    );
    println!(
        "a session's memory: ftrace buffer_size_kb {buffers_before:?} before the first `on`, {buffers_on:?} while on; MemFree {} KiB less while on (xftrace's rings, kept for the next session)",
        free_before - free_on
    );
    drop(vm);

    if unpatched {
        let out = Command::new("bash")
            .arg(common::repo().join("guest-kernel/build.sh"))
            .arg("--unpatched")
            .output()
            .expect("run guest-kernel/build.sh --unpatched");
        assert!(out.status.success(), "guest-kernel/build.sh --unpatched");
        let dir = PathBuf::from(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .expect("build.sh prints the build directory"),
        );
        let mut vm = boot(Some(&dir), &initramfs);
        run(&mut vm);
        let plain_idle = idle(&mut vm);
        println!(
            "idle guest, unpatched kernel: {:.1} timer interrupts/s (patched, never traced: {:.1})",
            plain_idle.timer_irqs, never.timer_irqs
        );
        let plain: Vec<Sample> = (0..rounds).map(|_| run(&mut vm)).collect();
        let (p_t, p_u) = (m(&plain, t), m(&plain, u));
        println!(
            "tracing off, patched vs unpatched kernel: openat+read+close {:.2} vs {:.2} µs ({:+.2} %), getppid {:.3} vs {:.3} µs ({:+.2} %); unpatched spread {:.1} %/{:.1} %",
            off_t / 1e3,
            p_t / 1e3,
            100.0 * (off_t - p_t) / p_t,
            off_u / 1e3,
            p_u / 1e3,
            100.0 * (off_u - p_u) / p_u,
            spread(&plain, t),
            spread(&plain, u)
        );
    }
}

/// Debian's stock kernel of the Debian VM image
/// (`tests/guest/make-debian-image.sh`): its release, and a directory with
/// its `vmlinuz` as `bzImage` (from its package, fetched by apt once).
fn stock_kernel() -> (String, PathBuf) {
    let out = Command::new("bash")
        .arg(common::repo().join("tests/guest/make-debian-image.sh"))
        .output()
        .expect("run make-debian-image.sh");
    assert!(out.status.success(), "make-debian-image.sh");
    let img = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("make-debian-image.sh prints its directory"),
    );
    let release = std::fs::read_to_string(img.join("stock-kernel"))
        .unwrap()
        .trim()
        .to_string();
    let dir = common::repo()
        .join("target/xftrace-bench-stock")
        .join(&release);
    if !dir.join("bzImage").is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::unpack_package(&format!("linux-image-{release}"), &dir.join("pkg"));
        std::fs::copy(
            dir.join("pkg/boot").join(format!("vmlinuz-{release}")),
            dir.join("bzImage"),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(dir.join("pkg"));
    }
    (release, dir)
}

/// The records a session wrote, from `off`'s "wrote … (L lines, R records,
/// …)".
fn session_records(out: &str) -> u64 {
    out.split(" records,")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {out:?}"))
}

/// `--dkms`: the xftrace-dkms module on Debian's stock kernel, side by side
/// with tracing off (module not loaded, then loaded) and stock
/// function_graph, in one boot.
fn dkms(rounds: usize) {
    let (release, kdir) = stock_kernel();
    let ko = common::stock_xftrace_module(&release);
    let target = common::repo().join("target");
    // The same module writing no records: fgraph's machinery alone.
    let nowrite = target.join("xftrace-nowrite.ko");
    std::fs::copy(
        common::stock_xftrace_module_with(&release, &["XFTRACE_BENCH_NOWRITE=y"]),
        &nowrite,
    )
    .unwrap();
    let initramfs = target.join("xftrace-bench-dkms-initramfs.cpio.gz");
    let st = Command::new("bash")
        .arg(common::repo().join("tests/guest/make-initramfs.sh"))
        .arg(&initramfs)
        .arg(target.join("xftrace-bench-syscalls"))
        .arg(&ko)
        .arg(&nowrite)
        .status()
        .expect("run make-initramfs.sh");
    assert!(st.success(), "make-initramfs.sh");
    let mut vm = boot(Some(&kdir), &initramfs);
    vm.output("mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; echo mounted");
    let state = common::state_dir();
    let trace = state.path().join("bench-trace.txt");
    let ram = vm.ram.clone();
    let xs = |state: &Path, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_xftrace"))
            .arg("--state-dir")
            .arg(state)
            .arg("--mem-file")
            .arg(&ram)
            .args(args)
            .output()
            .expect("run xftrace");
        assert!(
            o.status.success(),
            "xftrace {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
    };
    let x = |args: &[&str]| xs(state.path(), args);
    run(&mut vm);
    let plain: Vec<Sample> = (0..rounds).map(|_| run(&mut vm)).collect();
    let out = vm.output("insmod /lib/xftrace-test/xftrace.ko; echo rc=$?");
    assert!(out.contains("rc=0"), "insmod xftrace.ko: {out}");
    // The first opening fetches Debian's package of the kernel.
    let t = std::time::Instant::now();
    x(&["status"]);
    let first = t.elapsed();
    let (mut off, mut xf, mut st) = (Vec::new(), Vec::new(), Vec::new());
    let mut records = Vec::new();
    for r in 0..rounds {
        off.push(run(&mut vm));
        x(&["on", FILTER]);
        xf.push(run(&mut vm));
        records.push(session_records(&x(&[
            "off",
            "--output",
            trace.to_str().unwrap(),
        ])));
        stock(&mut vm, true);
        st.push(run(&mut vm));
        stock(&mut vm, false);
        eprintln!(
            "round {r}: off {:?}, xftrace-dkms {:?}, stock {:?}",
            off[r], xf[r], st[r]
        );
    }
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains(" 0 failed integrity checks") && text.contains("__x64_sys_openat() {"),
        "the module's trace: {}",
        text.chars().take(2000).collect::<String>()
    );
    // The build that writes nothing, in the same boot: a state directory of
    // its own (another module, another control block).
    x(&["status"]);
    let out = vm.output(
        "rmmod xftrace && insmod /lib/xftrace-test/xftrace-nowrite.ko && dmesg | grep -c 'writes no records'; echo rc=$?",
    );
    assert!(out.contains("rc=0"), "insmod xftrace-nowrite.ko: {out}");
    let state_nw = common::state_dir();
    let trace_nw = state_nw.path().join("bench-trace.txt");
    let mut nw = Vec::new();
    for r in 0..rounds {
        xs(state_nw.path(), &["on", FILTER]);
        nw.push(run(&mut vm));
        let out = xs(
            state_nw.path(),
            &["off", "--output", trace_nw.to_str().unwrap()],
        );
        assert_eq!(
            session_records(&out),
            0,
            "the nowrite build wrote records: {out}"
        );
        eprintln!("round {r}: xftrace-dkms writing nothing {:?}", nw[r]);
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let t = |s: &Sample| s.traced;
    let u = |s: &Sample| s.untraced;
    let (p_t, off_t, xf_t, st_t) = (m(&plain, t), m(&off, t), m(&xf, t), m(&st, t));
    let (p_u, off_u, xf_u, st_u) = (m(&plain, u), m(&off, u), m(&xf, u), m(&st, u));
    let nw_t = m(&nw, t);
    println!("xftrace-dkms on Debian's {release}, {rounds} rounds in one boot, medians of guest time per round (TCG -icount shift=1, 1 vCPU, filter {FILTER}):");
    println!("| in the guest | no module | module loaded, tracing off | xftrace-dkms on the filter | stock function_graph, same filter |");
    println!("|---|---|---|---|---|");
    println!(
        "| openat+read+close (traced) | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
        p_t / 1e3,
        off_t / 1e3,
        xf_t / 1e3,
        st_t / 1e3
    );
    println!(
        "| getppid (not traced) | {:.3} µs | {:.3} µs | {:.3} µs (×{:.2}) | {:.3} µs (×{:.2}) |",
        p_u / 1e3,
        off_u / 1e3,
        xf_u / 1e3,
        xf_u / off_u,
        st_u / 1e3,
        st_u / off_u
    );
    println!(
        "traced path: xftrace-dkms adds {:.2} µs, stock adds {:.2} µs: {:.2}× stock's added cost; untraced: {:.3}× stock",
        (xf_t - off_t) / 1e3,
        (st_t - off_t) / 1e3,
        (xf_t - off_t) / (st_t - off_t),
        xf_u / st_u
    );
    // Records of one traced openat+read+close: a session's records over
    // the rounds of the traced path it ran (nearly all of them).
    let per_round = median(records.iter().map(|&n| n as f64).collect()) / f64::from(N);
    println!(
        "the traced path's added cost taken apart: the same module writing no records {:.2} µs: fgraph's entry and return machinery with xftrace's decisions add {:.2} µs ({:.2}× stock's added cost), the records {:.2} µs ({:.2}×): {per_round:.1} records a round, {:.0} ns a record",
        nw_t / 1e3,
        (nw_t - off_t) / 1e3,
        (nw_t - off_t) / (st_t - off_t),
        (xf_t - nw_t) / 1e3,
        (xf_t - nw_t) / (st_t - off_t),
        (xf_t - nw_t) / per_round
    );
    println!(
        "module loaded, tracing off, against no module: openat+read+close {:+.2} %, getppid {:+.2} %; the host's first opening of this kernel (Debian's package fetched): {:.1} s",
        100.0 * (off_t - p_t) / p_t,
        100.0 * (off_u - p_u) / p_u,
        first.as_secs_f64()
    );
}
