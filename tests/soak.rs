//! Clean-guest soak: many `check`s of a clean SMP guest (2 vCPUs; under
//! TCG `thread=single`) over several boots and workloads, every one of
//! which must find nothing. Each boot takes a baseline under one workload
//! and then checks under the others, alternately with the default 3 s
//! call-flow window and integrity-only, while the workload runs or after
//! it stopped.
//!
//! CI runs a short version (`XFTRACE_SOAK_CHECKS`, default 16, over 2
//! boots). `tests/soak.sh` runs the long one, resumable: progress and every
//! finding go to `XFTRACE_SOAK_STATE` (a JSON file), and a run that was
//! interrupted continues from there with a new boot.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::soak::SoakState;
use common::{Boot, Vm, Xftrace};
use serde_json::json;

/// Workloads in the guest, by name: files, processes, network.
const WORKLOADS: &[(&str, &str)] = &[
    (
        "file",
        "for i in 1 2 3; do ls -R /sys/kernel > /dev/null 2>&1; cat /proc/*/status > /dev/null 2>&1; \
         echo $i > /tmp/s$i; cat /tmp/s$i > /dev/null; rm /tmp/s$i; done",
    ),
    (
        "process",
        "for i in 1 2 3 4 5 6; do sh -c 'ps > /dev/null; true' & done; wait",
    ),
    (
        "network",
        "ip link set lo up 2>/dev/null; (nc -l -p 7000 > /dev/null &); sleep 0.2; \
         echo hello | nc 127.0.0.1 7000; ping -c 2 -i 0.2 127.0.0.1 > /dev/null 2>&1; true",
    ),
];

/// Checks per boot, at most (a short run spreads its checks over 2 boots).
const PER_BOOT: u64 = 200;

#[test]
fn clean_checks_find_nothing_over_boots_and_workloads() {
    let _one = common::serial();
    let want: u64 = std::env::var("XFTRACE_SOAK_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let per_boot = std::env::var("XFTRACE_SOAK_PER_BOOT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((want / 2).clamp(1, PER_BOOT))
        .max(1);
    let mut st = SoakState::load("XFTRACE_SOAK_STATE");
    let started = Instant::now();
    while st.n("checks") < want {
        let boot = st.n("boots");
        let mut vm = Vm::boot_with(512, 2, &Boot::default());
        let x = Xftrace::new(&vm.ram);
        // The baseline under one workload (a different one each boot),
        // the checks under all of them.
        let (bname, bload) = WORKLOADS[boot as usize % WORKLOADS.len()];
        let mut b = x
            .command(&["baseline", "--duration", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(9);
        while Instant::now() < until {
            vm.sh(bload);
        }
        assert!(b.wait().unwrap().success(), "baseline failed");
        eprintln!("soak: boot {boot}, baseline under the {bname} workload");
        for i in 0..per_boot.min(want - st.n("checks")) {
            let (wname, wload) = WORKLOADS[(i as usize + 1) % WORKLOADS.len()];
            let with_flow = i % 2 == 0 && !common::soak::integrity_only();
            // Half the checks run while the workload still runs.
            let busy = i % 4 < 2;
            if busy {
                vm.sh(&format!("{{ ({wload}) > /dev/null 2>&1 & }}"));
            } else {
                vm.sh(wload);
            }
            let secs = if with_flow { "3" } else { "0" };
            let o = x.run(&["check", "--json", "--trace-seconds", secs]);
            st.record(
                &o,
                wname,
                with_flow,
                json!({"boot": boot, "check": i, "busy": busy}),
            );
        }
        st.bump("boots");
        st.save();
        vm.kill();
    }
    eprintln!(
        "soak: {}; this run {:.0} s",
        st.summary(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        st.bad(),
        0,
        "clean checks with findings: {:#}",
        st.v["findings"]
    );
}
