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
            time: crate::state::now_unix(),
            kind: kind.to_string(),
            detail: detail.into(),
            addresses: addresses.iter().map(|a| format!("{a:#x}")).collect(),
            evidence: evidence.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.domain, self.kind, self.detail)?;
        if !self.evidence.is_empty() {
            write!(f, " ({})", self.evidence)?;
        }
        Ok(())
    }
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::error::{Error, Result};
use crate::session;
use crate::state::{now_unix, GuestState};
use crate::target::Target;
use crate::vmlinux::Vmlinux;

/// How `check` and `watch` work.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Seconds of tracing for the call-flow check (needs a baseline; 0 skips it).
    pub trace_seconds: u64,
}

fn baseline_path(state: &GuestState) -> PathBuf {
    state.dir().join("baseline.json")
}

fn load_vmlinux(target: &Target, system_map: &Path) -> Result<Vmlinux> {
    let path = target
        .vmlinux
        .clone()
        .unwrap_or_else(|| system_map.with_file_name("vmlinux"));
    if !path.is_file() {
        return Err(Error::Input(format!(
            "checks compare the guest with its build's vmlinux: none at {}; pass --vmlinux",
            path.display()
        )));
    }
    Vmlinux::load(&path)
}

fn namer(map: &crate::symbols::SystemMap, slide: u64) -> impl Fn(u64) -> String + '_ {
    move |a: u64| match map.containing(a.wrapping_sub(slide)) {
        Some((s, _)) => s.to_string(),
        None => format!("{a:#x}"),
    }
}

/// One check of the guest: integrity of control data and of the tracer,
/// and, with a baseline, its call flow.
pub fn check(target: &Target, root: &Path, opts: &CheckOptions) -> Result<Vec<Finding>> {
    let domain = target.describe();
    let mut findings = match target.open() {
        Ok(g) => {
            let vmlinux = load_vmlinux(target, &g.system_map)?;
            let cx = integrity::Context {
                ram: &g.ram,
                map: &g.map,
                kernel: &g.kernel,
                vmlinux: &vmlinux,
                modules: Default::default(),
            };
            let mut f = integrity::check_all(&cx);
            f.extend(tracer::check(&g.ram, &g.kernel, &target.state(root)?));
            f
        }
        Err(Error::Guest(m)) if m.contains("decoy") => {
            vec![Finding::new(
                "tracer-integrity",
                m,
                &[],
                "control block duplicated or moved",
            )]
        }
        Err(e) => return Err(e),
    };
    let state = target.state(root)?;
    let baseline: Option<callflow::Baseline> = std::fs::read_to_string(baseline_path(&state))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(b) = baseline.filter(|_| opts.trace_seconds > 0) {
        if state.collector_running()? {
            info!("a tracing session is running: call-flow check skipped");
        } else {
            let (records, status, map) = session::capture(
                target,
                root,
                &b.functions,
                Duration::from_secs(opts.trace_seconds),
            )?;
            let name = namer(&map, status.slide);
            let in_image = |a: u64| map.in_image(a.wrapping_sub(status.slide));
            findings.extend(callflow::unknown_code(&records, &in_image, &name));
            findings.extend(callflow::new_edges(
                &b,
                &callflow::edges(&records, &name, b.depth),
            ));
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
    root: &Path,
    functions: &[String],
    duration: Duration,
    depth: u32,
) -> Result<callflow::Baseline> {
    let (records, status, map) = session::capture(target, root, functions, duration)?;
    let name = namer(&map, status.slide);
    let b = callflow::Baseline {
        functions: status.functions.clone(),
        depth,
        edges: callflow::edges(&records, &name, depth),
    };
    let state = target.state(root)?;
    let text = serde_json::to_string_pretty(&b).expect("serializes");
    crate::render::write_atomically(&baseline_path(&state), &text)?;
    info!(
        "baseline of {} records saved in {}",
        records.len(),
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
    root: &Path,
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
        let findings = check(target, root, opts)?;
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
