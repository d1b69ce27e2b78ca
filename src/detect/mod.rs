//! Rootkit detection: findings from guest memory (control-data integrity,
//! the tracer's own integrity) and from traces (call flow).

pub mod callflow;
pub mod integrity;
pub mod tracer;

use serde::Serialize;

/// One thing an operator should look at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub domain: String,
    pub time: f64,
    /// syscall-table, syscall-dispatch, idt, operation-table, ftrace-hook,
    /// tracer-integrity, call-flow-unknown-code, call-flow-new-edge
    pub kind: String,
    pub detail: String,
    /// Addresses involved, as hex strings.
    pub addresses: Vec<String>,
    pub evidence: String,
}

impl Finding {
    pub fn new(
        kind: &str,
        detail: impl Into<String>,
        addresses: &[u64],
        evidence: impl Into<String>,
    ) -> Self {
        Finding {
            domain: String::new(),
            time: crate::host::statedir::now_unix(),
            kind: kind.to_string(),
            detail: detail.into(),
            addresses: addresses.iter().map(|a| format!("{a:#x}")).collect(),
            evidence: evidence.into(),
        }
    }
}

/// One line per finding, whatever guest-derived text it holds.
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::escape::escape;
        write!(
            f,
            "[{}] {}: {}",
            escape(&self.domain),
            escape(&self.kind),
            escape(&self.detail)
        )?;
        if !self.evidence.is_empty() {
            write!(f, " ({})", escape(&self.evidence))?;
        }
        Ok(())
    }
}

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::error::{Error, Result};
use crate::host::statedir::{now_unix, GuestState};
use crate::kernel::locate::GuestKernel;
use crate::kernel::target::Target;
use crate::trace::session;

/// How `check` and `watch` work.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Seconds of tracing for the call-flow check (needs a baseline; 0 skips it).
    pub trace_seconds: u64,
}

fn baseline_path(state: &GuestState) -> PathBuf {
    state.dir().join("baseline.json")
}

/// A baseline is a few hundred kilobytes of call edges.
const MAX_BASELINE: u64 = 64 << 20;

fn namer(map: &crate::kernel::symbols::SystemMap, slide: u64) -> impl Fn(u64) -> String + '_ {
    move |a: u64| match map.containing(a.wrapping_sub(slide)) {
        Some((s, _)) => s.to_string(),
        None => format!("{a:#x}"),
    }
}

/// One check of the guest: integrity of control data and of the tracer,
/// and, with a baseline, its call flow. With several control blocks (a
/// decoy), that is a finding, and every other check still runs, against
/// each of them.
pub fn check(target: &Target, opts: &CheckOptions) -> Result<Vec<Finding>> {
    let domain = target.describe();
    let state = target.state()?;
    let g = target.open_all()?;
    let vmlinux = g.vmlinux.as_ref().ok_or_else(|| {
        Error::Input(format!(
            "checks compare the guest with its build's vmlinux: none beside {}; pass --vmlinux",
            g.system_map.display()
        ))
    })?;
    let kernels: Vec<&GuestKernel> = std::iter::once(&g.kernel).chain(&g.others).collect();
    let mut findings = Vec::new();
    if kernels.len() > 1 {
        let all = kernels.iter().map(|k| (*k).clone()).collect();
        let e = crate::kernel::locate::decoy(&crate::kernel::locate::Located {
            kernels: all,
            candidates: 0,
            rejected: 0,
            first_reason: None,
        });
        findings.push(Finding::new(
            "tracer-integrity",
            e.to_string(),
            &kernels.iter().map(|k| k.ctl.0).collect::<Vec<_>>(),
            "control block duplicated: every check ran against each",
        ));
    }
    for k in &kernels {
        let cx = integrity::Context {
            ram: &g.ram,
            map: &g.map,
            kernel: k,
            vmlinux,
            modules: Default::default(),
        };
        findings.extend(integrity::check_all(&cx));
        findings.extend(tracer::check(&g.ram, k, &state));
    }
    let single = kernels.len() == 1;
    drop(g);
    let baseline: Option<callflow::Baseline> =
        crate::host::files::read_text_bounded(&baseline_path(&state), MAX_BASELINE, "baseline")
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(b) = baseline.filter(|_| opts.trace_seconds > 0 && single) {
        if state.collector_running()? {
            info!("a tracing session is running: call-flow check skipped");
        } else {
            let cap = session::capture(
                target,
                &b.functions,
                Duration::from_secs(opts.trace_seconds),
            )?;
            let flow = {
                let name = namer(&cap.map, cap.status.slide);
                let slide = cap.status.slide;
                let in_image = |a: u64| cap.map.in_image(a.wrapping_sub(slide));
                callflow::analyze(cap.records()?, &name, &in_image, b.depth)
            };
            findings.extend(flow.unknown_code);
            findings.extend(callflow::new_edges(&b, &flow.edges));
            cap.finish()?;
        }
    }
    for f in &mut findings {
        f.domain = domain.clone();
    }
    Ok(findings)
}

/// `baseline`: trace the clean guest and save its call flow.
pub fn baseline(
    target: &Target,
    functions: &[String],
    duration: Duration,
    depth: u32,
) -> Result<callflow::Baseline> {
    let cap = session::capture(target, functions, duration)?;
    let flow = {
        let name = namer(&cap.map, cap.status.slide);
        callflow::analyze(cap.records()?, &name, &|_| true, depth)
    };
    let b = callflow::Baseline {
        functions: cap.status.functions.clone(),
        depth,
        edges: flow.edges,
    };
    let records = cap.status.rings.records;
    cap.finish()?;
    let state = target.state()?;
    let text = serde_json::to_string_pretty(&b).expect("serializes");
    crate::host::files::write_atomically(&baseline_path(&state), text.as_bytes())?;
    info!(
        "baseline of {records} records saved in {}",
        baseline_path(&state).display()
    );
    Ok(b)
}

/// Print findings, one per line, and log them.
pub fn report(findings: &[Finding], json: bool) {
    for f in findings {
        warn!("finding: {f}");
        if json {
            println!("{}", serde_json::to_string(f).expect("serializes"));
        } else {
            println!("{f}");
        }
    }
}

/// `watch`: check every `interval` until interrupted; report each finding
/// when it first appears, with how long after the last clean check.
pub fn watch(
    target: &Target,
    opts: &CheckOptions,
    interval: Duration,
    json: bool,
    rounds: Option<u64>,
) -> Result<bool> {
    let mut known = std::collections::BTreeSet::new();
    let mut last_clean = now_unix();
    let mut any = false;
    let mut n = 0;
    loop {
        let t = Instant::now();
        let findings = check(target, opts)?;
        let new: Vec<Finding> = findings
            .into_iter()
            .filter(|f| known.insert((f.kind.clone(), f.detail.clone())))
            .collect();
        if new.is_empty() && known.is_empty() {
            last_clean = now_unix();
        }
        for f in &new {
            info!(
                "detection latency: {} first seen {:.2} s after the last clean check",
                f.kind,
                f.time - last_clean
            );
        }
        any |= !new.is_empty();
        report(&new, json);
        n += 1;
        if rounds.is_some_and(|r| n >= r) {
            return Ok(any);
        }
        std::thread::sleep(interval.saturating_sub(t.elapsed()));
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::locate::tests::{place_kernel, synthetic_guest, SLIDE, TEXT_PA};
    use crate::kernel::symbols::tests::MAP;
    use crate::kernel::target::Source;

    #[test]
    fn a_finding_is_one_line_whatever_the_guest_wrote() {
        let mut f = Finding::new(
            "ftrace-hook",
            "runs 0x1 (outside the kernel image, in module evil\n[dom] idt: all clear\x1b[2K)",
            &[1],
            "",
        );
        f.domain = "web\r01".into();
        let s = f.to_string();
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(!s.contains('\x1b') && !s.contains('\r'), "{s}");
    }

    /// A decoy (a second control block with page tables of its own, which
    /// takes kernel privileges to build) is reported, and every check still
    /// runs, against each block.
    #[test]
    fn a_decoy_is_reported_and_every_check_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        place_kernel(&ram, &map, TEXT_PA + (32 << 20), SLIDE);
        drop(ram);
        std::fs::write(dir.path().join("System.map"), MAP).unwrap();
        // A vmlinux holding the build's banner where System.map puts it.
        let banner = map.addr("linux_banner").unwrap();
        let mut data = b"Linux version 6.1.192 (test) #1 SMP\n\0".to_vec();
        data.resize(64, 0);
        std::fs::write(
            dir.path().join("vmlinux"),
            crate::fuzzing::elf(banner, &data, &[]),
        )
        .unwrap();
        let target = Target {
            source: Source::MemFile {
                path: dir.path().join("ram"),
                machine: None,
                max_ram_below_4g: None,
            },
            system_map: Some(dir.path().join("System.map")),
            vmlinux: None,
            state_root: dir.path().join("state"),
        };
        let f = check(&target, &CheckOptions { trace_seconds: 0 }).unwrap();
        assert!(
            f.iter()
                .any(|x| x.kind == "tracer-integrity" && x.detail.contains("decoy")),
            "{f:#?}"
        );
        // The synthetic guest's thread never beats: each block's tracer
        // check says so, once per block.
        let stalled = f
            .iter()
            .filter(|x| x.detail.contains("heartbeat did not advance"))
            .count();
        assert_eq!(stalled, 2, "{f:#?}");
    }
}
