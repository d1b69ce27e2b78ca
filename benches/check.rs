//! How long an integrity-only `xftrace check` takes (every detection check,
//! no call-flow window: `--trace-seconds 0`), end to end as an operator runs
//! it (process start, System.map and vmlinux loaded, kernel located, every
//! check), on a running test guest of 512 MiB and one of 16 GiB (its RAM
//! file sparse), and what a check with a call-flow window spends outside
//! its window.
//!
//!   cargo bench --bench check [-- --runs N]
//!
//! The guests run under TCG; the host side is what is timed. The first
//! check of a boot takes its `__ro_after_init` snapshot and is reported
//! apart.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::{median, Boot, Vm, Xftrace};

/// Seconds one `xftrace check ARGS` takes, and its exit code (0 clean).
fn timed(x: &Xftrace, args: &[&str]) -> (f64, Option<i32>) {
    let mut c: Command = x.command(args);
    let t = Instant::now();
    let o = c.output().expect("run xftrace");
    let dt = t.elapsed().as_secs_f64();
    if !matches!(o.status.code(), Some(0)) {
        eprintln!(
            "xftrace {}: {:?}\n{}{}",
            args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (dt, o.status.code())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |v| v.parse().expect("--runs N"));
    for (mb, sparse) in [(512u64, false), (16u64 << 10, true)] {
        let mut vm = Vm::boot_with(
            mb,
            1,
            &Boot {
                sparse,
                ..Default::default()
            },
        );
        let x = Xftrace::new(&vm.ram);
        let check = ["check", "--json", "--trace-seconds", "0"];
        let (first, code) = timed(&x, &check);
        assert_eq!(code, Some(0), "a clean guest's check");
        let times: Vec<f64> = (0..runs).map(|_| timed(&x, &check).0).collect();
        println!(
            "integrity-only check, {} MiB guest{}: median {:.0} ms of {runs} (min {:.0}, max {:.0}); the boot's first (snapshot taken) {:.0} ms",
            mb,
            if sparse { " (sparse RAM file)" } else { "" },
            median(times.clone()) * 1e3,
            times.iter().cloned().fold(f64::MAX, f64::min) * 1e3,
            times.iter().cloned().fold(0.0, f64::max) * 1e3,
            first * 1e3
        );
        if mb == 512 {
            // The task census (hidden-task, credentials) with 500 more
            // processes: the tasks walked and what each check took.
            let census = |x: &Xftrace| {
                let mut c = x.command(&check);
                c.env("RUST_LOG", "xftrace::detect::checks=debug");
                let o = c.output().expect("run xftrace");
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .filter(|l| {
                        l.contains("hidden-task")
                            || l.contains("check credentials took")
                            || l.contains("credentials:")
                    })
                    .map(|l| l.split_once("] ").map_or(l, |x| x.1).to_string())
                    .collect::<Vec<_>>()
            };
            println!("task census, idle guest: {:?}", census(&x));
            vm.sh("i=0; while [ $i -lt 500 ]; do sleep 3600 > /dev/null 2>&1 & i=$((i+1)); done; echo spawned");
            let more: Vec<f64> = (0..runs).map(|_| timed(&x, &check).0).collect();
            println!(
                "integrity-only check with 500 more processes: median {:.0} ms of {runs} ({:+.0} ms); {:?}",
                median(more.clone()) * 1e3,
                (median(more) - median(times.clone())) * 1e3,
                census(&x)
            );
            vm.sh("killall sleep; echo killed");
            // A call-flow check (every syscall, against a baseline of the
            // same): what it spends beyond its window.
            let o = x.run(&["baseline", "--duration", "5"]);
            assert!(o.status.success(), "baseline");
            let window = 3.0;
            let (dt, code) = timed(&x, &["check", "--json", "--trace-seconds", "3"]);
            println!(
                "check with a {window:.0} s call-flow window (every syscall): {:.2} s, {:.2} s of it outside the window (exit {code:?})",
                dt,
                dt - window
            );
        }
        drop(vm);
    }
}
