//! What tracing costs whole-guest workloads, side by side in one boot of
//! the Debian VM image (systemd, sshd, nginx) on the small-profile kernel:
//! nginx serving HTTP requests to a client in the guest (a connection
//! each), a shell loop that forks and execs with file I/O, and a pipe
//! ping-pong between two processes; each with tracing off, xftrace on
//! `sys_read`, xftrace on every system call (`__x64_sys_*`), and stock
//! function_graph (tracefs `set_graph_function`) on the same two filters;
//! and, as the floor of any tracer that keeps every call site patched,
//! ftrace's function tracer with its pid filter on a task that sleeps.
//! Medians over rounds, and each one's ratio to tracing off. Also the host's
//! wall-clock time of `xftrace on` and `off`, the guest time of ftrace's
//! text patching (tracefs `current_tracer`), and what xftrace's trace of
//! each filter holds and lost.
//!
//!   cargo bench --bench workloads [-- --rounds N]
//!
//! The guest runs under TCG with `-icount shift=1,sleep=on` (one vCPU), so
//! its clock follows the instructions it runs and figures repeat; the
//! in-guest program is `benches/guest/workloads.c`. XFTRACE_KERNEL_DIR
//! picks the kernel build, as for the tests.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::debian::{Debian, DirectDebian};
use common::{median, Xftrace};

/// A workload, its size, and what one unit of it is.
struct Workload {
    name: &'static str,
    n: u32,
    unit: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "http",
        n: 300,
        unit: "request",
    },
    Workload {
        name: "shell",
        n: 60,
        unit: "iteration (2 fork+exec)",
    },
    Workload {
        name: "pipe",
        n: 5000,
        unit: "round trip",
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    Off,
    /// ftrace's function tracer with its pid filter on kthreadd (pid 2,
    /// asleep): every call site patched, with the cheapest callback there
    /// is; what any tracer that keeps the sites patched costs at least.
    Floor,
    Xftrace,
    Stock,
}

/// One configuration of the guest's tracing.
struct Config {
    label: &'static str,
    tracer: Tracer,
    /// The filter, as both xftrace and tracefs take it.
    filter: &'static str,
}

const CONFIGS: [Config; 6] = [
    Config {
        label: "tracing off",
        tracer: Tracer::Off,
        filter: "",
    },
    Config {
        label: "every site patched, cheapest callback",
        tracer: Tracer::Floor,
        filter: "2",
    },
    Config {
        label: "xftrace on sys_read",
        tracer: Tracer::Xftrace,
        filter: "__x64_sys_read",
    },
    Config {
        label: "xftrace on every syscall",
        tracer: Tracer::Xftrace,
        filter: "__x64_sys_*",
    },
    Config {
        label: "stock function_graph on sys_read",
        tracer: Tracer::Stock,
        filter: "__x64_sys_read",
    },
    Config {
        label: "stock function_graph on every syscall",
        tracer: Tracer::Stock,
        filter: "__x64_sys_*",
    },
];

/// The static in-guest program.
fn program() -> PathBuf {
    let target = common::repo().join("target");
    std::fs::create_dir_all(&target).expect("create target/");
    let bin = target.join("xfwork");
    common::static_program(&common::repo().join("benches/guest/workloads.c"), &bin);
    bin
}

/// Guest nanoseconds per unit of one workload.
fn run(g: &Debian, w: &Workload) -> f64 {
    let out = g.sh(&format!("/root/xfwork {} {}", w.name, w.n));
    let line = out
        .lines()
        .find(|l| l.starts_with("XFWORK"))
        .unwrap_or_else(|| panic!("no XFWORK line in {out:?}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("XFWORK line {line:?}"))
}

/// What switching a configuration took.
#[derive(Default)]
struct Switched {
    /// xftrace: the host's wall-clock seconds of `on` or `off`.
    host_s: Option<f64>,
    /// tracefs: guest seconds of the write to `current_tracer` (ftrace
    /// patching the kernel's text).
    guest_s: Option<f64>,
    /// xftrace `off`: what it says it wrote (records, lost).
    wrote: Option<String>,
}

/// Switch a configuration on or off.
fn switch(g: &Debian, x: &Xftrace, c: &Config, on: bool, trace: &std::path::Path) -> Switched {
    let tracefs = |tracer: &str, setting: &str| {
        // One shell in the guest: its clock around the write alone.
        let cmd = if on {
            format!("cd /sys/kernel/tracing && echo '{}' > {setting} && t0=$(cut -d' ' -f1 /proc/uptime) && echo {tracer} > current_tracer && t1=$(cut -d' ' -f1 /proc/uptime) && echo XFSWITCH $(cat current_tracer) $t0 $t1", c.filter)
        } else {
            format!("cd /sys/kernel/tracing && t0=$(cut -d' ' -f1 /proc/uptime) && echo nop > current_tracer && t1=$(cut -d' ' -f1 /proc/uptime) && echo > {setting} && echo > trace && echo XFSWITCH $(cat current_tracer) $t0 $t1")
        };
        let out = g.sh(&cmd);
        let f: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("XFSWITCH"))
            .unwrap_or_else(|| panic!("tracefs: {out:?}"))
            .split_whitespace()
            .collect();
        assert_eq!(f[1], if on { tracer } else { "nop" }, "tracefs: {out:?}");
        let t = |i: usize| -> f64 { f[i].parse().expect("uptime") };
        Switched {
            guest_s: Some(t(3) - t(2)),
            ..Default::default()
        }
    };
    match c.tracer {
        Tracer::Off => Switched::default(),
        Tracer::Floor => tracefs("function", "set_ftrace_pid"),
        Tracer::Stock => tracefs("function_graph", "set_graph_function"),
        Tracer::Xftrace => {
            let t = Instant::now();
            let o = if on {
                x.run(&["on", c.filter])
            } else {
                x.run(&["off", "--output", trace.to_str().unwrap()])
            };
            let secs = t.elapsed().as_secs_f64();
            assert!(
                o.status.success(),
                "xftrace {}: {}",
                if on { "on" } else { "off" },
                String::from_utf8_lossy(&o.stderr)
            );
            let out = String::from_utf8_lossy(&o.stdout);
            Switched {
                host_s: Some(secs),
                wrote: out
                    .lines()
                    .find(|l| l.starts_with("wrote"))
                    .and_then(|l| l.split_once('('))
                    .map(|(_, r)| r.trim_end_matches(')').to_string()),
                ..Default::default()
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |r| r.parse().expect("--rounds N"));
    let bin = program();
    let vm = DirectDebian::boot(common::kernel_dir(), 1024, true);
    let g = &vm.guest;
    g.copy_in(&[bin], "/root");
    let x = Xftrace::new(&vm.ram);
    let trace = x.state.path().join("workloads-trace.txt");
    // Warm the page cache and nginx.
    for w in &WORKLOADS {
        let t = Instant::now();
        let v = run(g, w);
        eprintln!(
            "warm-up: {} {:.1} µs per {} ({:.1} s on the host)",
            w.name,
            v / 1e3,
            w.unit,
            t.elapsed().as_secs_f64()
        );
    }
    // ns[config][workload][round]
    let mut ns = vec![vec![Vec::new(); WORKLOADS.len()]; CONFIGS.len()];
    // Switching times of the configurations on sys_read, and xftrace's
    // last word on each filter's records.
    let (mut xf_on, mut xf_off, mut fg_on, mut fg_off) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wrote: Vec<Vec<String>> = vec![Vec::new(); CONFIGS.len()];
    for r in 0..rounds {
        for (ci, c) in CONFIGS.iter().enumerate() {
            let on = switch(g, &x, c, true, &trace);
            for (wi, w) in WORKLOADS.iter().enumerate() {
                ns[ci][wi].push(run(g, w));
            }
            let off = switch(g, &x, c, false, &trace);
            if c.filter == "__x64_sys_read" {
                xf_on.extend(on.host_s);
                xf_off.extend(off.host_s);
                fg_on.extend(on.guest_s);
                fg_off.extend(off.guest_s);
            }
            wrote[ci].extend(off.wrote);
            eprintln!(
                "round {r}: {}: {}",
                c.label,
                WORKLOADS
                    .iter()
                    .enumerate()
                    .map(|(wi, w)| format!("{} {:.1} µs", w.name, ns[ci][wi][r] / 1e3))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let med: Vec<Vec<f64>> = ns
        .iter()
        .map(|per_w| per_w.iter().map(|v| median(v.clone())).collect())
        .collect();
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        100.0 * (hi - lo) / lo
    };
    println!("whole-guest workloads on the Debian VM, small-profile kernel, {rounds} rounds in one boot, medians of guest time (TCG -icount shift=1, 1 vCPU):");
    print!("| workload |");
    for c in &CONFIGS {
        print!(" {} |", c.label);
    }
    println!();
    println!("|---|{}", "---|".repeat(CONFIGS.len()));
    for (wi, w) in WORKLOADS.iter().enumerate() {
        print!("| {} (per {}) |", w.name, w.unit);
        for (ci, _) in CONFIGS.iter().enumerate() {
            let v = med[ci][wi];
            if ci == 0 {
                print!(" {:.1} µs |", v / 1e3);
            } else {
                print!(" {:.1} µs (×{:.2}) |", v / 1e3, v / med[0][wi]);
            }
        }
        println!();
    }
    let http = WORKLOADS.iter().position(|w| w.name == "http").unwrap();
    let cost = |ci: usize| 100.0 * (1.0 - med[0][http] / med[ci][http]);
    println!(
        "nginx: {:.0} requests/s with tracing off; share of its throughput lost: {}",
        1e9 / med[0][http],
        CONFIGS
            .iter()
            .enumerate()
            .skip(1)
            .map(|(ci, c)| format!("{} {:.1} %", c.label, cost(ci)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (ci, c) in CONFIGS.iter().enumerate() {
        if !wrote[ci].is_empty() {
            println!("{}, each round's trace: {}", c.label, wrote[ci].join("; "));
        }
    }
    for (ci, c) in CONFIGS.iter().enumerate() {
        println!(
            "spread between rounds, {}: {}",
            c.label,
            WORKLOADS
                .iter()
                .enumerate()
                .map(|(wi, w)| format!("{} {:.1} %", w.name, spread(&ns[ci][wi])))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "switching on sys_read, medians: xftrace on {:.2} s, off {:.2} s (host wall clock, from the command to the guest's acknowledgement); stock function_graph on {:.2} s, off {:.2} s (guest time of the write to current_tracer: ftrace patching the kernel's text)",
        median(xf_on),
        median(xf_off),
        median(fg_on),
        median(fg_off)
    );
}
