//! `check`, `watch` and `baseline`: open the guest once per round, run
//! every check against it, and trace through the same opened guest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::base::error::{Error, Result};
use crate::host::statedir::{now_unix, GuestDir};
use crate::kernel::callgraph::CallGraph;
use crate::kernel::target::Target;
use crate::trace::session;

use super::checks::{self, Context};
use super::last_check::LastCheck;
use super::{callflow, witness, Finding, FindingKind};

/// How `check` and `watch` work.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Seconds of tracing for the call-flow check (needs a baseline; 0 skips it).
    pub trace_seconds: u64,
}

fn baseline_path(dir: &GuestDir) -> PathBuf {
    dir.path().join("baseline.json")
}

/// A baseline is a few hundred kilobytes of call edges.
const MAX_BASELINE: u64 = 64 << 20;
/// Distinct findings `watch` remembers, at most.
const MAX_KNOWN: usize = 100_000;

/// What one check found, and the part of it that could not run (its
/// findings are still reported).
#[derive(Debug)]
pub struct Checked {
    pub findings: Vec<Finding>,
    pub failed: Option<Error>,
    /// The kernel release the guest runs (`6.1.0-57-cloud-amd64`), from its
    /// `linux_banner` as located (checked against the build's where the
    /// build is known).
    pub kernel: Option<String>,
}

/// The release in a `Linux version RELEASE (…)` banner: one word, at most
/// 64 bytes of it (the banner is in guest memory).
pub fn release(banner: &str) -> Option<String> {
    let r = banner
        .strip_prefix("Linux version ")?
        .split_whitespace()
        .next()?;
    Some(r.chars().take(64).collect())
}

/// One check of the guest: integrity of control data and of the tracer,
/// and, with a baseline, its call flow. The guest is opened once; with
/// several control blocks (a decoy), that is a finding, and every other
/// check still runs, against each of them. Each part reports on its own:
/// a call-flow trace the guest refuses is a finding, and one that fails on
/// the host leaves the other findings standing.
pub fn check(target: &Target, opts: &CheckOptions) -> Result<Checked> {
    let t = Instant::now();
    let r = check_once(target, opts);
    // What it found, for `xftrace metrics`. Only a guest with a state
    // directory (one `check_once` could create), and not a check a stop
    // signal cut short.
    let kept = match &r {
        Ok(c) if !matches!(c.failed, Some(Error::Interrupted { .. })) => {
            let mut k = LastCheck::new(&c.findings, c.failed.as_ref(), t.elapsed());
            k.kernel.clone_from(&c.kernel);
            Some(k)
        }
        Err(Error::Interrupted { .. }) | Ok(_) => None,
        Err(e) => Some(LastCheck::new(&[], Some(e), t.elapsed())),
    };
    if let (Some(k), Ok(dir)) = (kept, target.dir()) {
        if let Err(e) = k.write(&dir) {
            warn!("{}: cannot keep the check's result: {e}", target.describe());
        }
    }
    r
}

fn check_once(target: &Target, opts: &CheckOptions) -> Result<Checked> {
    let dir = target.dir()?;
    let g = target.open_all()?;
    let vmlinux = g.vmlinux.as_ref().ok_or_else(|| {
        Error::Input(format!(
            "checks compare the guest with its build's vmlinux: none beside {}; pass --vmlinux",
            g.system_map.display()
        ))
    })?;
    let mut findings = Vec::new();
    if !g.others.is_empty() {
        let all: Vec<_> = g.kernels().cloned().collect();
        let ctls: Vec<u64> = all
            .iter()
            .map(crate::kernel::locate::GuestKernel::id)
            .collect();
        let e = crate::kernel::locate::decoy(&crate::kernel::locate::Located {
            kernels: all,
            candidates: 0,
            rejected: 0,
            first_reason: None,
        });
        findings.push(Finding::new(
            FindingKind::TracerIntegrity,
            e.to_string(),
            &ctls,
            "control block duplicated: every check ran against each",
        ));
    }
    let vcpus = || target.vcpu_registers();
    for k in g.kernels() {
        let mut cx = Context::new(g.view(k), vmlinux, &dir);
        cx.vcpus = Some(&vcpus);
        findings.extend(checks::run_all(&cx));
    }
    let mut failed = None;
    let traced = g.kernel.tracer.is_some();
    if !traced && opts.trace_seconds > 0 {
        log::info!(
            "{}: a stock kernel, checked from outside: no call-flow window (it needs the tracer)",
            target.describe()
        );
    }
    // A baseline with call flow was taken through a tracer: on a kernel
    // that has none now, the xftrace-dkms module was unloaded (or the
    // guest booted a kernel without it), like a tracer stopped for good.
    if !traced {
        if let Some(b) = read_baseline(&dir).filter(|b| !b.functions.is_empty()) {
            findings.push(Finding::new(
                FindingKind::TracerIntegrity,
                format!(
                    "the baseline's call flow ({}) was traced through xftrace's tracer, which this kernel no longer has: the {} module was unloaded, or the guest booted without it",
                    b.functions.join(" "),
                    crate::kernel::dkms::MODULE_NAME
                ),
                &[g.kernel.text_pa.0],
                "take a new baseline if the tracer was removed on purpose",
            ));
        }
    }
    if g.others.is_empty() && traced && opts.trace_seconds > 0 {
        match call_flow(target, &g, &dir, opts) {
            Ok(f) => findings.extend(f),
            // The baseline's functions were traced when it was taken: a
            // guest that now refuses them, or does not answer, is blinding
            // the tracer (or a guest user holds function_graph).
            Err(e @ (Error::Guest(_) | Error::Timeout(_))) => findings.push(Finding::new(
                FindingKind::TracerIntegrity,
                format!("the call-flow check could not trace the baseline's functions: {e}"),
                &[g.kernel.control()?.ctl.0],
                "they were traced when the baseline was taken",
            )),
            Err(e) => failed = Some(e),
        }
    }
    // A check a stop signal cut short claims nothing: what it found is
    // reported, and it is not clean.
    if failed.is_none() {
        failed = crate::host::signals::check("the check did not finish").err();
    }
    let view = g.view(&g.kernel);
    for f in &mut findings {
        f.domain = target.describe();
        f.attribute(&|a| view.module_of(a));
    }
    Ok(Checked {
        findings,
        failed,
        kernel: release(&g.kernel.banner),
    })
}

/// The guest's saved baseline, if it has one that reads.
fn read_baseline(dir: &GuestDir) -> Option<callflow::Baseline> {
    crate::host::files::read_text_bounded(&baseline_path(dir), MAX_BASELINE, "baseline")
        .ok()
        .and_then(|t| serde_json::from_str::<callflow::Baseline>(&t).ok())
}

/// Trace the baseline's functions through the opened guest and compare.
fn call_flow(
    target: &Target,
    g: &crate::kernel::guest::Guest,
    dir: &GuestDir,
    opts: &CheckOptions,
) -> Result<Vec<Finding>> {
    let Some(b) = read_baseline(dir) else {
        return Ok(Vec::new());
    };
    if dir.collector_running()? {
        info!("a tracing session is running: call-flow check skipped");
        return Ok(Vec::new());
    }
    let length = Duration::from_secs(opts.trace_seconds);
    // Halfway through the window, two censuses of the kernel's tasks a
    // moment apart, which the records from before and after them witness
    // for; at its end (the tracer still on) a third, for who became root.
    let mut census = None;
    let mut last = None;
    // Who each task was at the first census and at the last, read then.
    let mut ids_at = (None, None);
    // Each ring's dropped-events counter at the first census and the
    // last, and its head at the last: what the window between them lost.
    let mut dropped_at = (Vec::new(), Vec::new());
    let mut last_heads = Vec::new();
    let mut look = |at: session::Look| {
        let view = g.view(&g.kernel);
        match at {
            session::Look::Midway => {
                dropped_at.0 = dropped(g);
                let before = heads(g);
                let first = crate::kernel::tasks::census(&view);
                ids_at.0 = first.as_ref().map(|c| ids(&view, c));
                crate::base::settle::settle(checks::SETTLE);
                let second = crate::kernel::tasks::census(&view);
                census = first.zip(second).map(|cs| {
                    (
                        witness::Bracket {
                            before,
                            after: heads(g),
                        },
                        cs,
                    )
                });
                info!("call-flow window: censuses of the guest's tasks taken halfway");
            }
            session::Look::Last => {
                last = crate::kernel::tasks::census(&view);
                ids_at.1 = last.as_ref().map(|c| ids(&view, c));
                last_heads = heads(g);
                dropped_at.1 = dropped(g);
            }
        }
    };
    let (cap, mut out) = probed_capture(target, g, &b.functions, length, &mut look)?;
    if let Some((bracket, (c1, c2))) = &census {
        // Ring heads count every record written, the probe's included:
        // compared with the records as their rings numbered them (with
        // the probe's calls taken out and the rest renumbered, a task that
        // began after the census looked as if it ran before it too).
        let (seen, full) = witness::sides(cap.records_as_written()?, bracket);
        if full {
            info!(
                "task witness: more than {} PIDs in the records; the rest not followed",
                witness::MAX_PIDS
            );
        }
        if let Some(cut) = c1.cut.first().or(c2.cut.first()) {
            info!("task witness: a census was cut short ({cut}); no witness this window");
        }
        let both = seen
            .values()
            .filter(|s| s.before > 0 && s.after > 0)
            .count();
        log::debug!(
            "task witness: {} PIDs in the records, {both} before and after censuses of {} and {} tasks (ring heads {:?} -> {:?})",
            seen.len(),
            c1.tasks.len(),
            c2.tasks.len(),
            bracket.before,
            bracket.after
        );
        log::trace!(
            "task witness: {:?}",
            seen.iter()
                .take(256)
                .map(|(p, s)| format!("{p} {} {}/{}", s.comm, s.before, s.after))
                .collect::<Vec<_>>()
        );
        out.extend(witness::hidden(&seen, &[c1, c2]));
        if let (Some(c3), (Some(a), Some(c))) = (&last, &ids_at) {
            let dropped = dropped_at.0.is_empty() || dropped_at.0 != dropped_at.1;
            let window = Window {
                start: &bracket.before,
                end: &last_heads,
                dropped,
            };
            let cut = !c1.cut.is_empty() || !c3.cut.is_empty();
            out.extend(rooted(&cap, &b.functions, &window, cut, a, c)?);
        }
    }
    let flow = {
        let view = g.view(&g.kernel);
        callflow::analyze(
            cap.records()?,
            &|a| flow_name(&view, a),
            &|a| view.is_build_code(a),
            b.depth,
        )
    };
    cap.finish()?;
    out.extend(flow.unknown_code);
    let news = callflow::new_edges(&b, &flow.edges, &|_, _| false);
    if !news.is_empty() {
        // Only edges the baseline lacks are judged against the build.
        let graph = match g.vmlinux.as_ref() {
            Some(v) => Some(CallGraph::new(v, &g.map)?),
            None => None,
        };
        out.extend(callflow::new_edges(&b, &flow.edges, &|caller, callee| {
            // Code of the build's modules is reached through what they
            // registered, and what they call is theirs to call.
            caller.starts_with('[')
                || callee.starts_with('[')
                || graph.as_ref().is_some_and(|cg| cg.allows(caller, callee))
        }));
    }
    Ok(out)
}

/// Trace `functions` for `length` and judge whether every CPU's tracer
/// recorded in it (the guest's probe, `checks::tracer::probed`): the
/// capture, and what that judgement found.
fn probed_capture(
    target: &Target,
    g: &crate::kernel::guest::Guest,
    functions: &[String],
    length: Duration,
    look: &mut dyn FnMut(session::Look),
) -> Result<(session::Capture, Vec<Finding>)> {
    let c = g.kernel.control()?;
    let h = &c.header;
    let rings = h.nr_rings.min(h.nr_cpus).min(crate::abi::MAX_RINGS);
    let online = || g.view(&g.kernel).online_cpus(rings);
    let before = online();
    let cap = session::capture(target, g, functions, length, look)?;
    // Online from the start of the window to its end.
    let online = before.zip(online()).map(|(a, b)| &a & &b);
    let tally = cap.probes()?;
    let found = checks::tracer::probed(&checks::tracer::Window {
        length,
        tally: tally.as_ref(),
        online,
        rings,
        ctl: c.ctl.0,
    });
    Ok((cap, found))
}

/// The part of a call-flow window between its first census and its last,
/// by the rings' heads; `dropped`: a ring's guest counted events it could
/// not record in it.
struct Window<'a> {
    start: &'a [u64],
    end: &'a [u64],
    dropped: bool,
}

impl Window<'_> {
    /// Is every record the rings numbered in the window in `records`
    /// (none overwritten before the collector read it)?
    fn whole(&self, records: impl Iterator<Item = crate::abi::Record>) -> bool {
        if self.dropped || self.start.len() != self.end.len() || self.start.is_empty() {
            return false;
        }
        let mut seen = vec![0u64; self.start.len()];
        for r in records {
            let Ok(i) = usize::try_from(r.cpu) else {
                continue;
            };
            if let (Some(&s), Some(&e), Some(n)) =
                (self.start.get(i), self.end.get(i), seen.get_mut(i))
            {
                if (s..e).contains(&r.seq) {
                    *n = n.saturating_add(1);
                }
            }
        }
        self.start
            .iter()
            .zip(self.end)
            .zip(&seen)
            .all(|((s, e), n)| e.saturating_sub(*s) == *n)
    }
}

/// Who became root between the first look of a call-flow window
/// (`before`) and its last (`after`) with no credential call of theirs in
/// the trace ([`witness::became_root`]). Judged only where the window
/// traced those calls (the baseline's `functions` cover them) and its
/// censuses were not cut short; where records were lost between the
/// looks, only for tasks that did not run meanwhile. The records are read
/// only if some task became root.
fn rooted(
    cap: &session::Capture,
    functions: &[String],
    window: &Window,
    cut: bool,
    before: &BTreeMap<u32, witness::Ids>,
    after: &BTreeMap<u32, witness::Ids>,
) -> Result<Vec<Finding>> {
    use crate::kernel::symbols::glob_match;
    let sym = cap.symbolizer();
    let calls: Vec<(u64, u64)> = witness::CREDENTIAL_CALLS
        .iter()
        .filter_map(|n| {
            let a = sym.addr(n)?;
            let len = sym.map.extent(n).unwrap_or(16).clamp(1, 4096);
            Some((*n, a, a.checked_add(len)?))
        })
        .filter(|(n, _, _)| functions.iter().any(|p| glob_match(p, n)))
        .map(|(_, a, e)| (a, e))
        .collect();
    let covered = [
        "__x64_sys_execve",
        "__x64_sys_setuid",
        "__x64_sys_setresuid",
    ]
    .iter()
    .all(|n| functions.iter().any(|p| glob_match(p, n)));
    if !witness::any_became_root(before, after) {
        return Ok(Vec::new());
    }
    if !covered || cut || window.start.is_empty() {
        info!(
            "credentials: who became root not judged this window ({})",
            if !covered {
                "the baseline's functions do not cover execve and set*id"
            } else {
                "a census was cut short"
            },
        );
        return Ok(Vec::new());
    }
    let whole = window.whole(cap.records_as_written()?);
    if !whole {
        let r = &cap.status.rings;
        info!(
            "credentials: records were lost between the window's first look and its last ({} lost, {} dropped by the guest in the whole capture): who became root is judged only for tasks that did not run meanwhile",
            r.lost,
            cap.status.guest_dropped
        );
    }
    let is_call = |f: u64| calls.iter().any(|&(a, e)| (a..e).contains(&f));
    Ok(witness::became_root(
        cap.records_as_written()?,
        window.start,
        &is_call,
        whole,
        before,
        after,
    ))
}

/// Who each task of census `c` is now (its objective credentials, read
/// now: a rootkit may write them in place later) and how long it has run.
fn ids(
    view: &crate::kernel::guest::KernelView,
    c: &crate::kernel::tasks::Census,
) -> BTreeMap<u32, witness::Ids> {
    let runtime = view.field("task_struct", &["se", "sum_exec_runtime"]);
    c.tasks
        .values()
        .filter(|t| !t.idle && !t.kthread)
        .filter_map(|t| {
            let cr = crate::kernel::creds::read(view, t.real_cred)?;
            Some((
                t.pid,
                witness::Ids {
                    tgid: t.tgid,
                    uid: cr.uid,
                    euid: cr.euid,
                    comm: t.comm.clone(),
                    ran: runtime
                        .and_then(|o| t.addr.checked_add(o))
                        .and_then(|a| view.read_word(a)),
                },
            ))
        })
        .collect()
}

/// Each ring's dropped-events counter; none at all if one cannot be read.
fn dropped(g: &crate::kernel::guest::Guest) -> Vec<u64> {
    ring_words(g, crate::kernel::locate::Control::dropped)
}

/// Each ring's head (records ever written to it); none at all if one
/// cannot be read (a head read as 0 would put every record of its ring
/// after the census), and then no ring witnesses anything.
fn heads(g: &crate::kernel::guest::Guest) -> Vec<u64> {
    ring_words(g, crate::kernel::locate::Control::head)
}

/// One word of each ring's line in `xftrace_heads`, or none at all.
fn ring_words(
    g: &crate::kernel::guest::Guest,
    at: fn(&crate::kernel::locate::Control, u32) -> crate::guest::addr::GuestAddress,
) -> Vec<u64> {
    let Some(c) = g.kernel.tracer.as_ref() else {
        return Vec::new();
    };
    (0..c.header.nr_rings.min(crate::abi::MAX_RINGS))
        .map(|r| g.ram.read_u64(at(c, r)).ok())
        .collect::<Option<Vec<u64>>>()
        .unwrap_or_default()
}

/// A function's name in call flow: its symbol in the image; `[module]+off`
/// in the code of a module of the build (the same at every boot); else
/// its address.
fn flow_name(view: &crate::kernel::guest::KernelView, a: u64) -> String {
    if view.sym.in_image(a) {
        return view.sym.function(a);
    }
    if view.is_build_code(a) {
        if let Some(m) = view.module_at(a) {
            let off = m.text.map_or(0, |(s, _)| a.saturating_sub(s));
            return format!("[{}]+{off:#x}", m.name);
        }
    }
    format!("{a:#x}")
}

/// `baseline`: trace the clean guest and save its call flow.
pub fn baseline(
    target: &Target,
    functions: &[String],
    duration: Duration,
    depth: u32,
) -> Result<callflow::Baseline> {
    let g = target.open()?;
    if g.kernel.tracer.is_none() {
        // A stock kernel: no call flow to record, only what it holds now.
        let b = callflow::Baseline {
            functions: Vec::new(),
            depth,
            edges: Default::default(),
        };
        save_baseline(target, &g, &b)?;
        info!(
            "a stock kernel: its baseline holds its hook inventory and kernel state, no call flow"
        );
        return Ok(b);
    }
    let (cap, blinded) = probed_capture(target, &g, functions, duration, &mut |_| {})?;
    if let Some(f) = blinded.first() {
        // A baseline is what later checks trust: not from a blinded tracer.
        cap.finish()?;
        return Err(Error::Guest(format!("{}; no baseline was saved", f.detail)));
    }
    let flow = {
        let view = g.view(&g.kernel);
        callflow::analyze(cap.records()?, &|a| flow_name(&view, a), &|_| true, depth)
    };
    let b = callflow::Baseline {
        functions: cap.status.functions.clone(),
        depth,
        edges: flow.edges,
    };
    let records = cap.status.rings.records;
    cap.finish()?;
    save_baseline(target, &g, &b)?;
    info!("baseline of {records} records saved");
    Ok(b)
}

/// Save `b` and the guest's hook inventory as its baseline.
fn save_baseline(
    target: &Target,
    g: &crate::kernel::guest::Guest,
    b: &callflow::Baseline,
) -> Result<()> {
    crate::host::signals::check("no baseline was saved")?;
    let dir = target.dir()?;
    // The clean guest's hooks by modules outside the build, which later
    // checks compare with.
    if let Some(vmlinux) = g.vmlinux.as_ref() {
        let cx = Context::new(g.view(&g.kernel), vmlinux, &dir);
        let lines = checks::inventory(&cx);
        super::inventory::save(&dir, &lines)?;
        let n = lines.len();
        info!("hook inventory: {n} hooks by modules outside the build and BPF programs");
    }
    let text = serde_json::to_string_pretty(b).expect("serializes");
    crate::host::signals::check("no baseline was saved")?;
    crate::host::files::write_atomically(&baseline_path(&dir), text.as_bytes())?;
    info!("baseline saved in {}", baseline_path(&dir).display());
    Ok(())
}

/// How often [`follow_log`] reads the guest's log.
pub const LOG_POLL: Duration = Duration::from_millis(200);
/// How long [`follow_log`] keeps one opening of the guest (a reboot moves
/// its kernel; the next opening finds it).
const LOG_REOPEN: Duration = Duration::from_secs(30);

/// Follow the guest kernel's log (every [`LOG_POLL`]) until `stop` is set
/// or a stop signal is caught, handing each event (an Oops, a BUG, a
/// warning, a panic: [`super::kernel_log`]) to `emit` as a finding as soon
/// as the kernel has written it. `watch` runs it beside its rounds, so
/// that an event is reported within a second whatever a round is doing.
/// A guest that cannot be opened or whose log cannot be read is tried
/// again a second later; what went wrong is logged once until it reads.
pub fn follow_log(
    target: &Target,
    stop: &std::sync::atomic::AtomicBool,
    emit: &mut dyn FnMut(Vec<Finding>),
) {
    use std::sync::atomic::Ordering;
    let mut follower = super::kernel_log::Follower::default();
    let mut guest: Option<(crate::kernel::guest::Guest, Instant)> = None;
    let mut failing: Option<String> = None;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) && crate::host::signals::caught().is_none() {
        let t = Instant::now();
        if guest
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= LOG_REOPEN)
        {
            guest = match target.open() {
                Ok(g) => Some((g, t)),
                Err(e) => {
                    note_failure(&mut failing, format!("cannot open the guest: {e}"));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
        }
        let Some((g, _)) = &guest else { continue };
        let boot = g.kernel.slide.0 ^ g.kernel.text_pa.0.rotate_left(32);
        let events = match crate::kernel::printk::read(&g.view(&g.kernel)) {
            Ok(log) => {
                if failing.take().is_some() {
                    info!("{}: the guest's log reads again", target.describe());
                }
                if first {
                    first = false;
                    info!(
                        "{}: following the guest kernel's log after its record {}",
                        target.describe(),
                        log.records.last().map_or(0, |r| r.seq)
                    );
                }
                follower.feed(boot, &log.records, Instant::now())
            }
            Err(e) => {
                note_failure(&mut failing, format!("cannot read the guest's log: {e}"));
                guest = None;
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !events.is_empty() {
            let findings = events
                .iter()
                .map(|e| {
                    let mut f = e.finding();
                    f.domain = target.describe();
                    f
                })
                .collect();
            emit(findings);
        }
        std::thread::sleep(LOG_POLL.saturating_sub(t.elapsed()));
    }
}

/// Log a failure of [`follow_log`] once, until it reads again.
fn note_failure(failing: &mut Option<String>, what: String) {
    if failing.as_deref() != Some(what.as_str()) {
        warn!("following the guest's log: {what}; trying again every second");
        *failing = Some(what);
    }
}

/// `watch`: check every `interval` until interrupted (or `rounds` checks);
/// each round yields the findings that first appear in it, each logged
/// with how long after the last clean check it appeared.
pub fn watch<'a>(
    target: &'a Target,
    opts: &'a CheckOptions,
    interval: Duration,
    rounds: Option<u64>,
) -> Watch<'a> {
    Watch {
        target,
        opts,
        interval,
        rounds,
        state: Rounds::new(),
        n: 0,
        last_start: None,
        done: false,
        pending: None,
    }
}

/// The rounds of [`watch`]: an iterator of each round's new findings; it
/// ends after `rounds` rounds, a stop signal (an `Err(Interrupted)`, after
/// the findings of the round it cut short) or a command line that cannot
/// work. A round that cannot check the guest does not end it: that is a
/// finding while the guest runs, and the next round checks again.
pub struct Watch<'a> {
    target: &'a Target,
    opts: &'a CheckOptions,
    interval: Duration,
    rounds: Option<u64>,
    state: Rounds,
    n: u64,
    /// When the last round started (the next starts `interval` after it).
    last_start: Option<Instant>,
    /// An error ended it.
    done: bool,
    /// The error to yield after the findings of the round it cut short.
    pending: Option<Error>,
}

impl Iterator for Watch<'_> {
    type Item = Result<Vec<Finding>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        // Every watch checks once, whatever `rounds` says.
        if self.done || (self.n > 0 && self.rounds.is_some_and(|r| self.n >= r)) {
            return None;
        }
        if let Some(t) = self.last_start {
            crate::host::signals::sleep(self.interval.saturating_sub(t.elapsed()));
        }
        if let Err(e) = crate::host::signals::check("watch stopped") {
            self.done = true;
            return Some(Err(e));
        }
        self.last_start = Some(Instant::now());
        self.n += 1;
        let (new, end) = self.state.round(self.target, self.opts);
        if let Some(e) = end {
            self.done = true;
            // What the cut-short round found is still news.
            if !new.is_empty() {
                self.pending = Some(e);
                return Some(Ok(new));
            }
            return Some(Err(e));
        }
        Some(Ok(new))
    }
}

/// What a watch of one guest remembers between its rounds: the findings it
/// has reported (each is reported once), and when the guest was last clean.
/// [`watch`] runs it on a timer; `watch --all` keeps one per domain.
pub struct Rounds {
    known: std::collections::BTreeSet<(FindingKind, String)>,
    last_clean: f64,
}

impl Default for Rounds {
    fn default() -> Self {
        Self::new()
    }
}

impl Rounds {
    pub fn new() -> Self {
        Rounds {
            known: std::collections::BTreeSet::new(),
            last_clean: now_unix(),
        }
    }

    /// Check `target` once: the findings not reported before, and the error
    /// that ends the watch, if one does (a stop signal, or a command line
    /// that can never work: no vmlinux, a bad argument). Anything else a
    /// round meets is a finding while the guest runs, and the next round
    /// checks again.
    pub fn round(&mut self, target: &Target, opts: &CheckOptions) -> (Vec<Finding>, Option<Error>) {
        match check(target, opts) {
            Ok(Checked {
                failed: Some(e @ Error::Interrupted { .. }),
                findings,
                ..
            }) => (self.news(findings), Some(e)),
            Ok(Checked {
                findings, failed, ..
            }) => {
                if let Some(e) = failed {
                    warn!("{}: part of the check failed: {e}", target.describe());
                }
                (self.news(findings), None)
            }
            Err(e @ (Error::Input(_) | Error::Interrupted { .. })) => (Vec::new(), Some(e)),
            Err(e) => {
                let f = Self::round_failed(target, e);
                (self.news(f), None)
            }
        }
    }

    /// A round that could not check the guest: a finding while the guest
    /// runs (its control block unreadable, its tracer gone: what a rootkit
    /// that blinds the host does), an event while the domain is stopped.
    fn round_failed(target: &Target, e: Error) -> Vec<Finding> {
        if target.known_stopped() {
            warn!(
                "{}: not running, not checked this round: {e}",
                target.describe()
            );
            return Vec::new();
        }
        warn!(
            "{}: this round could not check the guest: {e}",
            target.describe()
        );
        let mut f = Finding::new(
            FindingKind::TracerIntegrity,
            format!("the running guest could not be checked: {e}"),
            &[],
            "watch goes on; the next round checks again",
        );
        f.domain = target.describe();
        vec![f]
    }

    /// The findings not reported by an earlier round.
    fn news(&mut self, findings: Vec<Finding>) -> Vec<Finding> {
        let known = &mut self.known;
        let new: Vec<Finding> = findings
            .into_iter()
            .filter(|f| known.insert((f.kind, f.detail.clone())))
            .collect();
        if new.is_empty() && self.known.is_empty() {
            self.last_clean = now_unix();
        }
        for f in &new {
            info!(
                "detection latency: {} first seen {:.2} s after the last clean check",
                f.kind,
                f.time - self.last_clean
            );
        }
        if self.known.len() > MAX_KNOWN {
            self.known.clear();
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_one_bounded_word_of_the_banner() {
        assert_eq!(
            release("Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP"),
            Some("6.1.0-57-cloud-amd64".into())
        );
        assert_eq!(release("Linux version "), None);
        assert_eq!(release("Windows"), None);
        let long = format!("Linux version {} (x)", "a".repeat(4096));
        assert_eq!(release(&long).map(|r| r.len()), Some(64));
    }

    fn rec(cpu: u32, seq: u64) -> crate::abi::Record {
        crate::abi::Record {
            cpu,
            seq,
            epoch: 1,
            kind: crate::abi::Kind::Entry,
            func: 0,
            time: 0,
            calltime: 0,
            depth: 0,
            pid: 1,
            overrun: 0,
            comm: [0; 16],
        }
    }

    /// A window is whole when every record its rings numbered between the
    /// two looks was collected; losses outside it do not count; events
    /// the guest dropped in it, or heads not read, make it not whole.
    #[test]
    fn a_window_is_whole_only_with_every_record_between_its_looks() {
        let w = Window {
            start: &[10, 5],
            end: &[13, 5],
            dropped: false,
        };
        let all = [
            rec(0, 2),
            rec(0, 10),
            rec(0, 11),
            rec(0, 12),
            rec(0, 20),
            rec(1, 9),
        ];
        assert!(w.whole(all.iter().copied()));
        let gap = [rec(0, 10), rec(0, 12), rec(1, 1)];
        assert!(!w.whole(gap.iter().copied()));
        assert!(!Window { dropped: true, ..w }.whole(all.iter().copied()));
        assert!(!Window {
            start: &[],
            end: &[],
            dropped: false
        }
        .whole(all.iter().copied()));
    }
}
