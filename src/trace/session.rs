//! A tracing session: `on` starts a background collector, `off` stops the
//! guest's tracer, drains the rings through the collector and writes
//! `trace_graph.txt`; `status` reports both sides.
//!
//! The collector is this same binary (`xftrace collect`, see
//! [`crate::trace::collector`]), started in its own session with the guest's
//! lock inherited from `on`, so exactly one collector runs per guest and
//! `off` knows when it has finished. `off` then takes the lock itself and
//! holds it while it writes the trace, so that no new session can remove
//! the spool under it. Callers that have opened the guest already (`check`)
//! pass it in; the collector is told where the kernel is, so it validates
//! that one control block instead of searching again.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::abi::Op;
use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::host::files;
use crate::host::process;
use crate::host::signals;
use crate::host::statedir::{now_unix, GuestDir};
use crate::kernel::guest::Guest;
use crate::kernel::symbols::{Symbolizer, SystemMap};
use crate::kernel::target::Target;
use crate::trace::probe::{Probe, Tally};
use crate::trace::render;
use crate::trace::spool;
use crate::trace::status::{CollectorState, CollectorStatus};
use crate::trace::switch;

/// How the collector works.
#[derive(Clone, Copy, Debug)]
pub struct CollectOptions {
    pub key_interval: Duration,
    /// The longest the collector sleeps between polls: a vCPU that
    /// starts writing at rate r while it sleeps loses what exceeds its ring
    /// (`cargo bench --bench sustain`).
    pub poll_interval: Duration,
    /// Also trace interrupt handlers that run inside traced calls.
    pub irqs: bool,
    /// Bytes of decoded records to keep; the rest is counted as lost.
    pub spool_limit: u64,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            key_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(2),
            irqs: false,
            spool_limit: spool::DEFAULT_LIMIT,
        }
    }
}

const COLLECTOR_READY: Duration = Duration::from_secs(20);
const GUEST_ACK: Duration = Duration::from_secs(20);
const COLLECTOR_STOP: Duration = Duration::from_secs(30);
/// The last lines of a collector's log worth quoting.
const LOG_TAIL: u64 = 4096;

fn deadline(d: Duration) -> Instant {
    Instant::now().checked_add(d).unwrap_or_else(Instant::now)
}

/// Remove the previous session's files.
pub fn reset(dir: &GuestDir) -> Result<()> {
    spool::remove(dir.path())?;
    dir.remove(&[
        dir.klog(),
        dir.anomalies(),
        dir.anomalies_rotated(),
        dir.status_path(),
        dir.collector_log(),
    ])
}

/// Drop the spool and Klog once a trace (with its Klog) has been written.
pub fn finish(dir: &GuestDir) -> Result<()> {
    spool::remove(dir.path())?;
    dir.remove(&[dir.klog()])
}

/// The functions of a session the domain's stop interrupted (a `virsh
/// save`, managed save or a stop while tracing): its collector ended with
/// the guest, and no `off` has written it since.
pub fn interrupted_session(st: &GuestDir) -> Option<Vec<String>> {
    let s = CollectorStatus::read(st)?;
    let unfinished = matches!(
        s.state,
        CollectorState::Starting
            | CollectorState::Collecting
            | CollectorState::Stopped
            | CollectorState::GuestGone
    );
    (unfinished && !st.collector_running().unwrap_or(true) && spool::exists(st.path()))
        .then_some(s.functions)
}

/// What `on` (or `on --adopt`) did, for the command line to say (as text,
/// or as JSON: `{"result": "tracing", "target": …, "symbols": […], "pid": N}`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Began {
    /// `on`: the guest traces `symbols`, read by the collector `pid`.
    Tracing {
        target: String,
        symbols: Vec<String>,
        pid: u32,
    },
    /// `on --adopt`: the guest goes on tracing what it traced.
    Adopted {
        target: String,
        symbols: Vec<String>,
        pid: u32,
    },
    /// `on --adopt` of a guest whose tracer is off: nothing done.
    NothingToAdopt { target: String },
}

impl fmt::Display for Began {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Began::Tracing {
                target,
                symbols,
                pid,
            } => write!(
                f,
                "tracing {} in {target} (collector pid {pid}); stop with `xftrace off`",
                symbols.join(" "),
            ),
            Began::Adopted {
                target,
                symbols,
                pid,
            } => write!(
                f,
                "adopted the tracer of {target}: tracing {} (collector pid {pid}); stop with `xftrace off`",
                symbols.join(" "),
            ),
            Began::NothingToAdopt { target } => write!(
                f,
                "{target}: the guest's tracer is off; nothing to adopt"
            ),
        }
    }
}

/// `xftrace on FUNCS...`; `gaps` are notes for the trace's header (the
/// libvirt hook says why it starts a session).
pub fn on(
    target: &Target,
    functions: &[String],
    opts: CollectOptions,
    gaps: &[String],
) -> Result<Began> {
    let g = target.open()?;
    let (symbols, pid) = start(target, &g, functions, opts, gaps)?;
    Ok(Began::Tracing {
        target: target.describe(),
        symbols,
        pid,
    })
}

/// `xftrace on --adopt`: a guest whose tracer is on with no collector of
/// this host reading it (it arrived by live migration, or this host lost
/// the session's state) goes on tracing what it traces, as a new session
/// under this host's keys. A guest that is not tracing is left alone.
pub fn adopt(target: &Target, opts: CollectOptions, gaps: &[String]) -> Result<Began> {
    let g = target.open()?;
    let ctl = g.kernel.control()?;
    if !switch::guest_alive(&g.ram, ctl, switch::LIVENESS)? {
        return Err(not_running());
    }
    if !switch::read_status(&g.ram, ctl)?.tracing {
        return Ok(Began::NothingToAdopt {
            target: target.describe(),
        });
    }
    // What the control block says the guest traces: written by a host,
    // rewritable by the guest, so checked like any function name (and
    // resolved against the trusted System.map by `start`).
    let Some((functions, flags)) = switch::applied_on(&g.ram, ctl)? else {
        switch::send(&g.ram, ctl, Op::Off, &[], 0, GUEST_ACK, None)?;
        return Err(Error::State(format!(
            "{}: the guest was tracing under a command xftrace cannot read back, so its tracer was switched off; start a session with `xftrace on FUNCTION...`",
            target.describe()
        )));
    };
    let opts = CollectOptions {
        irqs: flags & crate::abi::FLAG_IRQS != 0,
        ..opts
    };
    let (symbols, pid) = start(target, &g, &functions, opts, gaps)?;
    Ok(Began::Adopted {
        target: target.describe(),
        symbols,
        pid,
    })
}

/// Run `attempt` (an `on` or an `adopt`), retrying for up to `wait` while
/// the guest cannot be opened yet (not running, arriving by migration or
/// restore, or its kernel still booting).
pub fn waiting<T>(target: &Target, wait: Duration, attempt: impl Fn() -> Result<T>) -> Result<T> {
    let end = deadline(wait);
    loop {
        match attempt() {
            Err(Error::Guest(m) | Error::Libvirt(m)) if Instant::now() < end => {
                info!("{}: not ready ({m}); retrying", target.describe());
                if !signals::sleep(Duration::from_secs(2)) {
                    signals::check("the guest's tracer was not switched on")?;
                }
            }
            r => return r,
        }
    }
}

fn not_running() -> Error {
    Error::Guest(
        "the guest kernel is not running: its xftrace heartbeat did not advance in 3 s (is the VM paused, stopped or being restored?)".into(),
    )
}

/// The kernel symbols (or globs) `functions` name, without repeats.
fn resolve(map: &SystemMap, functions: &[String]) -> Result<Vec<String>> {
    if functions.is_empty() {
        return Err(Error::Input(
            "name at least one function to trace, e.g. `xftrace on sys_openat sys_read`".into(),
        ));
    }
    let mut symbols = Vec::new();
    for f in functions {
        let s = map.resolve_function(f)?;
        if !symbols.contains(&s) {
            symbols.push(s);
        }
    }
    Ok(symbols)
}

/// Start tracing the opened guest `g`: returns the kernel symbols traced
/// and the collector's pid.
pub fn start(
    target: &Target,
    g: &Guest,
    functions: &[String],
    opts: CollectOptions,
    gaps_given: &[String],
) -> Result<(Vec<String>, u32)> {
    let ctl = g.kernel.control()?;
    let symbols = resolve(&g.map, functions)?;
    let dir = target.dir()?;
    let Some(lock) = dir.try_lock()? else {
        let pid = CollectorStatus::read(&dir).map_or(0, |s| s.process.pid);
        return Err(Error::State(format!(
            "tracing is already on for {} (collector pid {pid}); run `xftrace off` first",
            target.describe()
        )));
    };
    let mut gaps = Vec::new();
    if spool::exists(dir.path()) {
        gaps.push(recover(target, &dir)?);
    }
    let flags = if opts.irqs { crate::abi::FLAG_IRQS } else { 0 };
    // A guest being restored is paused while its RAM is still arriving:
    // nothing is adopted or started before its kernel runs (`on --wait`
    // retries).
    if !switch::guest_alive(&g.ram, ctl, switch::LIVENESS)? {
        return Err(not_running());
    }
    // The `on` below needs a beat after this one.
    let seen_alive = switch::Beat::read(&g.ram, ctl)?;
    gaps.extend(gaps_given.iter().cloned());
    if switch::read_status(&g.ram, ctl)?.tracing {
        // Adopted: the guest was tracing with no collector of ours reading
        // it (a collector died, a restore, a live migration). Its current
        // key came from a Klog this session does not have (a dead
        // collector's, or another host's), so records under it could not
        // be told from forgeries: the tracer is switched off, and on again
        // under this session's keys.
        let gap = "the guest's tracer was already on with no collector of this session reading it (adopted: switched off, then on again under this session's keys): what it recorded before is not in this trace".to_string();
        warn!("{}: {gap}", target.describe());
        switch::send(&g.ram, ctl, Op::Off, &[], 0, GUEST_ACK, None)?;
        gaps.push(gap);
    }
    reset(&dir)?;
    let mut child = spawn_collector(target, g, &dir, &lock, &symbols, opts, &gaps)?;
    drop(lock);
    wait_collecting(&dir, &mut child)?;
    if let Err(e) = switch::send(
        &g.ram,
        ctl,
        Op::On,
        &symbols,
        flags,
        GUEST_ACK,
        Some(seen_alive),
    ) {
        if let Some(s) = CollectorStatus::read(&dir) {
            s.process.terminate();
        }
        let _ = dir.wait_unlocked(COLLECTOR_STOP);
        let _ = child.wait();
        return Err(e);
    }
    Ok((symbols, child.id()))
}

/// The previous session's records, never written (its collector died, or
/// the guest went away and no `off` followed): write them aside in the
/// guest's state directory before a new session replaces them. Returns
/// the note for the new trace's header.
fn recover(target: &Target, dir: &GuestDir) -> Result<String> {
    let status = CollectorStatus::read(dir).unwrap_or_default();
    let out = dir
        .path()
        .join(format!("recovered-{}.txt", now_unix() as u64));
    let map = session_map(target, &status)?;
    write_trace(dir, &status, &Symbolizer::new(&map, status.slide), &out).map_err(|e| {
        Error::State(format!(
            "the previous session's records (collector pid {}, {}) could not be written aside ({e}); run `xftrace off` to write them first",
            status.process.pid, status.state
        ))
    })?;
    let note = format!(
        "the previous session (collector pid {}, {}) ended without `off`: its {} records are in {}",
        status.process.pid,
        status.state,
        status.rings.records,
        out.display()
    );
    warn!("{}: {note}", target.describe());
    Ok(note)
}

/// `xftrace collect` for this guest, holding the lock `on` took.
fn spawn_collector(
    target: &Target,
    g: &Guest,
    dir: &GuestDir,
    lock: &File,
    symbols: &[String],
    opts: CollectOptions,
    gaps: &[String],
) -> Result<Child> {
    let log = files::create_new_private(&dir.collector_log())?;
    let fd = lock.as_raw_fd();
    let mut args: Vec<OsString> = target.args();
    args.extend([
        "collect".into(),
        format!("--lock-fd={fd}").into(),
        format!("--key-interval-ms={}", opts.key_interval.as_millis()).into(),
        format!("--spool-limit={}", opts.spool_limit).into(),
        format!("--text-pa={:#x}", g.kernel.text_pa).into(),
    ]);
    args.extend(gaps.iter().map(|gap| format!("--gap={gap}").into()));
    args.push("--".into());
    args.extend(symbols.iter().map(OsString::from));
    process::spawn_detached(&args, log, Some(fd))
}

/// Wait for the collector to install the first key and start reading.
fn wait_collecting(dir: &GuestDir, child: &mut Child) -> Result<()> {
    let end = deadline(COLLECTOR_READY);
    loop {
        if CollectorStatus::read(dir).is_some_and(|s| s.state == CollectorState::Collecting) {
            return Ok(());
        }
        if let Ok(Some(code)) = child.try_wait() {
            return Err(Error::State(format!(
                "the collector exited ({code}) before it started: {}",
                last_line(&dir.collector_log())
            )));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            return Err(Error::Timeout(
                "the collector did not start within 20 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last_line(path: &Path) -> String {
    files::read_tail(path, LOG_TAIL)
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| escape(l).into_owned())
        })
        .unwrap_or_else(|| "no output".into())
}

/// What `stop` leaves for writing the trace.
pub struct Stopped {
    pub dir: GuestDir,
    guest_error: Option<Error>,
    /// Held until the trace is written.
    _lock: File,
}

/// Turn the guest's tracer off (through `g`, when the guest could be
/// opened, else `open_error` says why not) and stop the collector, keeping
/// its spool. A guest found gone is noted in `gone`.
fn stop(
    target: &Target,
    g: Option<&Guest>,
    open_error: Option<Error>,
    gone: &mut Option<String>,
) -> Result<Stopped> {
    let dir = target.dir()?;
    let running = dir.collector_running()?;
    let status = CollectorStatus::read(&dir);
    let have_spool = spool::exists(dir.path());
    let mut guest_error = None;
    match (g, open_error) {
        (Some(g), _) => {
            let ctl = g.kernel.control()?;
            let gs = switch::read_status(&g.ram, ctl)?;
            if !running && !gs.tracing && !have_spool {
                return Err(Error::State(format!(
                    "tracing is not on for {}; start it with `xftrace on FUNCTION...`",
                    target.describe()
                )));
            }
            if !running && !have_spool {
                warn!("no collector was running: turning the guest's tracer off, nothing to write");
            }
            if let Err(e) = switch::send(&g.ram, ctl, Op::Off, &[], 0, GUEST_ACK, None) {
                guest_error = Some(e);
            }
        }
        // A guest that is gone (its domain stopped or migrated away)
        // traces nothing any more: writing its trace is all there is to do.
        (None, _) if (running || have_spool) && target.known_stopped() => {
            *gone = Some(format!(
                "note: {} does not run here (any more): writing what its collector read",
                target.describe()
            ));
        }
        (None, e) if running || have_spool => guest_error = e,
        (None, e) => {
            return Err(e.unwrap_or_else(|| Error::Guest("the guest cannot be opened".into())))
        }
    }
    if let Some(s) = status.as_ref().filter(|_| running) {
        if !s.process.terminate() {
            warn!(
                "the collector (pid {}) could not be signalled as itself; waiting for it to notice",
                s.process.pid
            );
        }
    }
    let Some(lock) = dir.lock_waiting(COLLECTOR_STOP)? else {
        return Err(Error::Timeout(format!(
            "the collector (pid {}) did not stop within {} s; its data is in {}",
            status.map_or(0, |s| s.process.pid),
            COLLECTOR_STOP.as_secs(),
            dir.path().display()
        )));
    };
    if !spool::exists(dir.path()) {
        return Err(guest_error.unwrap_or_else(|| Error::State("no records were collected".into())));
    }
    Ok(Stopped {
        dir,
        guest_error,
        _lock: lock,
    })
}

/// Undo an `on` that a stop signal interrupted: the guest's tracer off,
/// the collector stopped, what it read dropped.
pub fn abandon(target: &Target) -> Result<()> {
    let g = target.open()?;
    let stopped = stop(target, Some(&g), None, &mut None);
    finish(&target.dir()?)?;
    match stopped {
        Ok(s) => s.guest_error.map_or(Ok(()), Err),
        // Nothing collected yet is nothing to drop.
        Err(Error::State(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The System.map for rendering: given, or the one the session used.
fn session_map(target: &Target, status: &CollectorStatus) -> Result<SystemMap> {
    match &target.system_map {
        Some(p) => SystemMap::load(p),
        None if !status.system_map.is_empty() => SystemMap::load(Path::new(&status.system_map)),
        None => Err(Error::Input(
            "pass --system-map: the session did not record one".into(),
        )),
    }
}

/// Where the Klog of a trace written to `output` goes; refuses an output
/// that would be overwritten by its own Klog.
pub fn klog_beside(output: &Path) -> Result<PathBuf> {
    let klog = output.with_extension("klog");
    if klog == output {
        return Err(Error::Input(format!(
            "{} would be overwritten by its own key log; name the trace something not ending in .klog",
            output.display()
        )));
    }
    Ok(klog)
}

/// What `off` did, in the order the command line says it.
#[derive(Debug)]
pub struct Off {
    /// A note (for stderr) that the guest no longer runs here.
    pub gone: Option<String>,
    /// Which trace was written, and what it holds.
    pub wrote: Option<Wrote>,
    /// The path of the trace written, or the error that ended `off`
    /// (after the trace was written, when the guest's tracer could not be
    /// switched off).
    pub result: Result<PathBuf>,
}

/// The trace `off` wrote (docs/json.md).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Wrote {
    pub trace: PathBuf,
    pub lines: u64,
    pub records: u64,
    /// Lost in the rings or dropped by the guest.
    pub lost: u64,
    pub failed_integrity: u64,
}

impl fmt::Display for Wrote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} ({} lines, {} records, {} lost, {} failed integrity checks)",
            self.trace.display(),
            self.lines,
            self.records,
            self.lost,
            self.failed_integrity
        )
    }
}

/// `xftrace off`: writes the trace to `output`.
pub fn off(target: &Target, output: &Path) -> Off {
    let mut report = Off {
        gone: None,
        wrote: None,
        result: Ok(PathBuf::new()),
    };
    report.result = off_into(target, output, &mut report.gone, &mut report.wrote);
    report
}

fn off_into(
    target: &Target,
    output: &Path,
    gone: &mut Option<String>,
    wrote: &mut Option<Wrote>,
) -> Result<PathBuf> {
    klog_beside(output)?;
    let (g, open_error) = match target.open() {
        Ok(g) => (Some(g), None),
        Err(e) => (None, Some(e)),
    };
    let stopped = stop(target, g.as_ref(), open_error, gone)?;
    drop(g);
    let dir = &stopped.dir;
    let status = CollectorStatus::read(dir).unwrap_or_default();
    let map = session_map(target, &status)?;
    let n = write_trace(dir, &status, &Symbolizer::new(&map, status.slide), output)?;
    // The session's data now lives in the trace and its Klog; a second `off`
    // has nothing left to write.
    finish(dir)?;
    let mut done = status.clone();
    done.state = CollectorState::Written;
    done.message = format!("trace written to {}", output.display());
    done.write(dir)?;
    let missing = status.rings.missing().saturating_add(status.guest_dropped);
    *wrote = Some(Wrote {
        trace: output.to_path_buf(),
        lines: n,
        records: status.rings.records,
        lost: missing,
        failed_integrity: status.rings.integrity_failures(),
    });
    if status.rings.integrity_failures() > 0 {
        warn!(
            "{} records failed integrity checks: see {}",
            status.rings.integrity_failures(),
            dir.anomalies().display()
        );
    }
    for why in &status.narrowed {
        warn!("the guest narrowed the capture: {why}");
    }
    match stopped.guest_error {
        Some(e) => Err(e),
        None => Ok(output.to_path_buf()),
    }
}

/// A finished capture: its status and System.map, and its spool, which
/// stays on disk (and locked) until this is dropped.
pub struct Capture {
    pub status: CollectorStatus,
    pub map: SystemMap,
    stopped: Stopped,
}

impl Capture {
    /// The captured records, merged across CPUs in time order, streamed;
    /// without the guest's probe, which is not the guest's call flow.
    pub fn records(&self) -> Result<impl Iterator<Item = crate::abi::Record>> {
        let probe = Probe::of(self.status.probe, &self.symbolizer());
        Ok(crate::trace::probe::without(
            spool::Merged::new(spool::open(self.stopped.dir.path())?),
            probe,
        ))
    }

    /// Every captured record, the probe's included, numbered as its ring
    /// numbered it (what ring heads read from the guest compare with:
    /// [`Capture::records`] renumbers around the probe calls it leaves out).
    pub fn records_as_written(&self) -> Result<impl Iterator<Item = crate::abi::Record>> {
        Ok(spool::Merged::new(spool::open(self.stopped.dir.path())?))
    }

    /// The probe's entries and all records, per ring (`None`: the build has
    /// no probe).
    pub fn probes(&self) -> Result<Option<Tally>> {
        Probe::of(self.status.probe, &self.symbolizer())
            .map(|p| p.tally(self.stopped.dir.path()))
            .transpose()
    }

    pub fn symbolizer(&self) -> Symbolizer<'_> {
        Symbolizer::new(&self.map, self.status.slide)
    }

    pub fn finish(self) -> Result<()> {
        finish(&self.stopped.dir)
    }
}

/// When [`capture`] lets its caller look at the guest while the tracer
/// records (the censuses that the records then witness for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Halfway through the window.
    Midway,
    /// At its end, before the tracer is switched off.
    Last,
}

/// Trace `functions` of the opened guest `g` for `duration` (for baselines
/// and call-flow checks), calling `look` halfway through the window and
/// at its end, while the tracer still records (not after a stop signal).
pub fn capture(
    target: &Target,
    g: &Guest,
    functions: &[String],
    duration: Duration,
    look: &mut dyn FnMut(Look),
) -> Result<Capture> {
    let t = Instant::now();
    start(target, g, functions, CollectOptions::default(), &[])?;
    debug!("capture: tracing on after {:?}", t.elapsed());
    // A stop signal (caught by the command) ends the window early; the
    // tracer is switched off all the same, and the part seen is dropped.
    let half = duration / 2;
    signals::sleep(half);
    if signals::caught().is_none() {
        look(Look::Midway);
    }
    signals::sleep(duration.saturating_sub(half));
    if signals::caught().is_none() {
        look(Look::Last);
    }
    let t = Instant::now();
    let stopped = stop(target, Some(g), None, &mut None)?;
    debug!(
        "capture: tracing off and collector stopped after {:?}",
        t.elapsed()
    );
    if signals::caught().is_some() {
        finish(&stopped.dir)?;
        signals::check("the guest's tracer is off again; the partial capture was dropped")?;
    }
    if let Some(e) = stopped.guest_error {
        return Err(e);
    }
    let status = CollectorStatus::read(&stopped.dir).unwrap_or_default();
    let map = session_map(target, &status)?;
    Ok(Capture {
        status,
        map,
        stopped: Stopped {
            guest_error: None,
            ..stopped
        },
    })
}

/// Render the session's spool to `output`, with the Klog beside it; both
/// private and replaced atomically. Returns the lines written.
pub fn write_trace(
    dir: &GuestDir,
    status: &CollectorStatus,
    sym: &Symbolizer,
    output: &Path,
) -> Result<u64> {
    let klog_path = klog_beside(output)?;
    let name = |addr: u64| sym.function(addr);
    let probe = Probe::of(status.probe, sym);
    let mut notes = vec![
        format!("guest {} ({})", status.target, status.banner),
        format!("functions {}", status.functions.join(" ")),
        format!(
            "{} records, {} lost in the rings, {} over the spool limit of {} bytes, {} dropped by the guest, {} failed integrity checks, {} keys",
            status.rings.records,
            status.rings.lost,
            status.rings.over_limit,
            status.spool_limit,
            status.guest_dropped,
            status.rings.integrity_failures(),
            status.key_rotations
        ),
    ];
    notes.extend(
        status
            .narrowed
            .iter()
            .map(|w| format!("guest narrowed the capture: {w}")),
    );
    notes.extend(status.gaps.iter().map(|g| format!("gap: {g}")));
    if let Some(p) = &probe {
        // Left out of the trace, counted here: each online CPU's ring
        // should hold some (docs/abi.md §3.1).
        notes.push(format!(
            "probe calls (not shown) by CPU: {}",
            p.tally(dir.path())?.summary()
        ));
    }
    if let Ok(mut k) = files::open_regular(&dir.klog(), "Klog") {
        let mut out = files::AtomicFile::create(&klog_path)?;
        std::io::copy(&mut k, out.writer())
            .map_err(|e| Error::io(format!("cannot write {}", klog_path.display()), e))?;
        out.commit()?;
    }
    let rings: Vec<_> = spool::open(dir.path())?
        .into_iter()
        .map(|s| (s.cpu(), crate::trace::probe::without(s, probe)))
        .collect();
    let mut out = files::AtomicFile::create(output)?;
    let n = render::render(out.writer(), rings, status.nr_cpus.max(1), &name, &notes)?;
    out.commit()?;
    Ok(n)
}

/// What `xftrace status` says: its lines, and the error that follows
/// them (an unavailable guest is an error, after the collector's part).
#[derive(Debug)]
pub struct Status {
    pub lines: Vec<String>,
    /// The same, as data (`status --json`, docs/json.md).
    pub facts: StatusFacts,
    pub result: Result<()>,
}

/// What `status` knows, as data: the guest's side (None where the guest
/// could not be opened) and the collector's.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StatusFacts {
    pub target: String,
    /// The kernel's `linux_banner` (guest memory: a JSON string).
    pub kernel: Option<String>,
    /// `patched` (xftrace's kernel), `module` (a stock kernel traced by
    /// xftrace-dkms) or `stock` (checked from outside, no tracer).
    pub mode: Option<&'static str>,
    /// The guest's tracer thread beats (None: no tracer to ask).
    pub guest_running: Option<bool>,
    pub tracer_on: Option<bool>,
    pub key_epoch: Option<u64>,
    pub cmd_seq: Option<u64>,
    pub ack_seq: Option<u64>,
    pub ack_result: Option<i32>,
    pub warnings: Vec<String>,
    /// Control blocks of an earlier boot, set aside.
    pub stale: Vec<String>,
    pub collector: CollectorFacts,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CollectorFacts {
    /// `running`, `starting`, `died`, `stopped` or `none` (never started).
    pub state: &'static str,
    pub pid: Option<u32>,
    /// What its status file says it was doing (`collecting`, `written`, …).
    pub phase: Option<String>,
    pub message: Option<String>,
    pub functions: Vec<String>,
    pub records: Option<u64>,
    pub lost: Option<u64>,
    pub dropped_by_guest: Option<u64>,
    pub failed_integrity: Option<u64>,
    pub key_epoch: Option<u64>,
    pub key_rotations: Option<u64>,
    /// When its status was last written, seconds since the epoch.
    pub updated: Option<f64>,
}

/// `xftrace status`: what is known of the guest's tracer and the collector.
pub fn status(target: &Target) -> Status {
    let mut lines = Vec::new();
    let mut facts = StatusFacts {
        target: target.describe(),
        ..Default::default()
    };
    let result = status_into(target, &mut lines, &mut facts);
    Status {
        lines,
        facts,
        result,
    }
}

fn status_into(target: &Target, out: &mut Vec<String>, facts: &mut StatusFacts) -> Result<()> {
    let dir = target.dir()?;
    out.push(format!("guest:      {}", target.describe()));
    let guest = target.open();
    let running = dir.collector_running()?;
    let status = CollectorStatus::read(&dir);
    if let Ok(g) = &guest {
        let tracing = tracer_lines(g, out, facts)?;
        if tracing && !running {
            let w = format!(
                "the guest's tracer is on and no collector of this host reads it: `xftrace on` adopts it, `xftrace off` stops it{}",
                if spool::exists(dir.path()) {
                    " and writes what was collected"
                } else {
                    ""
                }
            );
            out.push(format!("warning:    {w}"));
            facts.warnings.push(w);
        }
    }
    match status {
        Some(s) => collector_lines(&s, running, out, &mut facts.collector),
        None => {
            facts.collector.state = if running { "starting" } else { "none" };
            out.push(format!(
                "collector:  {}",
                if running {
                    "starting"
                } else {
                    "not running (tracing is off)"
                }
            ))
        }
    }
    guest.map(|_| ())
}

/// The guest's side; returns whether its tracer is on.
fn tracer_lines(g: &Guest, out: &mut Vec<String>, facts: &mut StatusFacts) -> Result<bool> {
    facts.kernel = Some(g.kernel.banner.clone());
    facts.stale = g.stale.iter().map(|k| k.place()).collect();
    out.push(format!("kernel:     {}", escape(&g.kernel.banner)));
    out.extend(crate::kernel::taint::status_lines(&g.view(&g.kernel)));
    let stale = |out: &mut Vec<String>| {
        for k in &g.stale {
            out.push(format!(
                "stale:      {} of an earlier boot (its heartbeat and jiffies stand still): ignored",
                k.place()
            ));
        }
    };
    let Some(ctl) = g.kernel.tracer.as_ref() else {
        facts.mode = Some("stock");
        out.push(format!(
            "mode:       stock kernel, checked from outside (kernel at {}, slide {:#x}): no tracer, integrity checks only",
            g.kernel.text_pa,
            g.kernel.slide.0,
        ));
        stale(out);
        return Ok(false);
    };
    facts.mode = Some(if ctl.module.is_some() {
        "module"
    } else {
        "patched"
    });
    if let Some(m) = ctl.module {
        out.push(format!(
            "mode:       stock kernel, traced by the {} module (xftrace-dkms; struct module at {:#x}, control block at {}): every check, call flow included; the module's code is not checked against a reference",
            crate::kernel::dkms::MODULE_NAME,
            m.addr,
            ctl.ctl
        ));
    }
    let gs = switch::read_status(&g.ram, ctl)?;
    // An idle guest's thread beats at least once a second.
    let alive = switch::guest_alive(&g.ram, ctl, Duration::from_secs(2))?;
    out.push(format!(
        "guest:      {}, tracer {}, key epoch {}, command {}/{} (result {})",
        if alive {
            "running"
        } else {
            "not running (heartbeat stalled)"
        },
        if gs.tracing { "on" } else { "off" },
        gs.key_epoch,
        gs.ack_seq,
        gs.cmd_seq,
        gs.ack_result
    ));
    facts.guest_running = Some(alive);
    facts.tracer_on = Some(gs.tracing);
    facts.key_epoch = Some(gs.key_epoch);
    facts.cmd_seq = Some(gs.cmd_seq);
    facts.ack_seq = Some(gs.ack_seq);
    facts.ack_result = Some(gs.ack_result);
    for why in gs.narrowed_reasons() {
        out.push(format!("warning:    {why}"));
        facts.warnings.push(why.to_string());
    }
    stale(out);
    Ok(gs.tracing)
}

fn collector_lines(
    s: &CollectorStatus,
    running: bool,
    out: &mut Vec<String>,
    facts: &mut CollectorFacts,
) {
    let died = !running
        && matches!(
            s.state,
            CollectorState::Starting | CollectorState::Collecting
        );
    *facts = CollectorFacts {
        state: if running {
            "running"
        } else if died {
            "died"
        } else {
            "stopped"
        },
        pid: Some(s.process.pid),
        phase: Some(s.state.to_string()),
        message: (!s.message.is_empty()).then(|| s.message.clone()),
        functions: s.functions.clone(),
        records: Some(s.rings.records),
        lost: Some(s.rings.missing()),
        dropped_by_guest: Some(s.guest_dropped),
        failed_integrity: Some(s.rings.integrity_failures()),
        key_epoch: Some(s.key_epoch),
        key_rotations: Some(s.key_rotations),
        updated: Some(s.updated),
    };
    if died {
        out.push(format!(
            "collector:  died (pid {}) while {}: what it collected is kept; `xftrace off` writes it (`xftrace on` writes it aside first)",
            s.process.pid, s.state
        ));
    }
    out.push(format!(
        "collector:  {} (pid {}), {}{}",
        if running {
            "running"
        } else if died {
            "last status"
        } else {
            "not running"
        },
        s.process.pid,
        s.state,
        if s.message.is_empty() {
            String::new()
        } else {
            format!(": {}", escape(&s.message))
        }
    ));
    out.push(format!("functions:  {}", s.functions.join(" ")));
    out.push(format!(
        "records:    {} collected, {} lost, {} dropped by the guest, {} failed integrity checks",
        s.rings.records,
        s.rings.missing(),
        s.guest_dropped,
        s.rings.integrity_failures()
    ));
    out.push(format!(
        "keys:       epoch {}, {} rotations, updated {:.1} s ago",
        s.key_epoch,
        s.key_rotations,
        (now_unix() - s.updated).max(0.0)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::spool::SpoolWriter;

    #[test]
    fn a_session_a_stop_interrupted_is_named_with_its_functions() {
        use crate::trace::rings::tests::rec;
        let tmp = tempfile::tempdir().unwrap();
        let st = GuestDir::for_domain(&tmp.path().join("state"), "t1").unwrap();
        assert_eq!(interrupted_session(&st), None);
        let mut s = CollectorStatus {
            state: CollectorState::GuestGone,
            functions: vec!["__x64_sys_openat".into()],
            ..Default::default()
        };
        s.write(&st).unwrap();
        // No records left: `off` wrote them, or there were none.
        assert_eq!(interrupted_session(&st), None);
        let mut sp = SpoolWriter::create(st.path(), 1, spool::DEFAULT_LIMIT).unwrap();
        sp.push(&rec(0, 0, 1)).unwrap();
        sp.flush().unwrap();
        assert_eq!(
            interrupted_session(&st),
            Some(vec!["__x64_sys_openat".to_string()])
        );
        s.state = CollectorState::Written;
        s.write(&st).unwrap();
        assert_eq!(interrupted_session(&st), None);
    }

    #[test]
    fn what_on_did_reads_as_before() {
        let symbols = vec!["__x64_sys_read".to_string(), "vfs_read".to_string()];
        let t = "domain d1".to_string();
        assert_eq!(
            Began::Tracing {
                target: t.clone(),
                symbols: symbols.clone(),
                pid: 42
            }
            .to_string(),
            "tracing __x64_sys_read vfs_read in domain d1 (collector pid 42); stop with `xftrace off`"
        );
        assert_eq!(
            Began::Adopted {
                target: t.clone(),
                symbols,
                pid: 42
            }
            .to_string(),
            "adopted the tracer of domain d1: tracing __x64_sys_read vfs_read (collector pid 42); stop with `xftrace off`"
        );
        assert_eq!(
            Began::NothingToAdopt { target: t }.to_string(),
            "domain d1: the guest's tracer is off; nothing to adopt"
        );
    }

    #[test]
    fn a_trace_is_never_its_own_klog() {
        assert!(klog_beside(Path::new("/tmp/x.klog")).is_err());
        assert_eq!(
            klog_beside(Path::new("out/trace_graph.txt")).unwrap(),
            Path::new("out/trace_graph.klog")
        );
        assert_eq!(klog_beside(Path::new("t")).unwrap(), Path::new("t.klog"));
    }

    #[test]
    fn off_writes_through_no_planted_link() {
        use crate::trace::rings::tests::rec;
        let tmp = tempfile::tempdir().unwrap();
        let dir = GuestDir::for_domain(&tmp.path().join("state"), "d").unwrap();
        let mut sp = SpoolWriter::create(dir.path(), 1, spool::DEFAULT_LIMIT).unwrap();
        sp.push(&rec(0, 0, 1)).unwrap();
        sp.push(&rec(0, 1, 1)).unwrap();
        sp.flush().unwrap();
        std::fs::write(dir.klog(), "1 1 00000000000000aa\n").unwrap();
        // Someone who can write the output directory plants links at the
        // trace's and the Klog's names, and at last time's temp name.
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        for n in [
            "trace_graph.txt",
            "trace_graph.klog",
            ".trace_graph.txt.1234.tmp",
        ] {
            std::os::unix::fs::symlink(&victim, out.join(n)).unwrap();
        }
        let map = SystemMap::parse(crate::kernel::symbols::tests::MAP).unwrap();
        let status = CollectorStatus {
            nr_cpus: 1,
            ..Default::default()
        };
        write_trace(
            &dir,
            &status,
            &Symbolizer::new(&map, crate::guest::addr::Slide(0)),
            &out.join("trace_graph.txt"),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let klog = std::fs::read_to_string(out.join("trace_graph.klog")).unwrap();
        assert!(klog.contains("00000000000000aa"));
        let trace = std::fs::read_to_string(out.join("trace_graph.txt")).unwrap();
        assert!(trace.starts_with("# tracer: function_graph"));
    }

    /// The records a census's ring heads are compared with keep the
    /// numbers their rings gave them; only the call-flow view renumbers
    /// around the probe's calls.
    #[test]
    fn records_as_written_keep_their_ring_numbers() {
        use crate::trace::rings::tests::rec;
        let tmp = tempfile::tempdir().unwrap();
        let dir = GuestDir::for_domain(&tmp.path().join("state"), "d").unwrap();
        let probe = 0xffff_ffff_8110_0000;
        let mut sp = SpoolWriter::create(dir.path(), 1, spool::DEFAULT_LIMIT).unwrap();
        for (seq, func) in [(0, probe), (1, probe), (2, 0), (3, 0)] {
            let mut r = rec(0, seq, 1);
            if func != 0 {
                r.func = func;
            }
            sp.push(&r).unwrap();
        }
        sp.flush().unwrap();
        let lock = File::open(dir.path()).unwrap();
        let cap = Capture {
            status: CollectorStatus::default(),
            map: SystemMap::parse(
                "ffffffff81000000 T _text\nffffffff81100000 T xftrace_probe\nffffffff81100010 T next_one\nffffffff82000000 B _end\n",
            )
            .unwrap(),
            stopped: Stopped {
                dir,
                guest_error: None,
                _lock: lock,
            },
        };
        let seqs = |it: &mut dyn Iterator<Item = crate::abi::Record>| {
            it.map(|r| r.seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs(&mut cap.records().unwrap()), [0, 1]);
        assert_eq!(seqs(&mut cap.records_as_written().unwrap()), [0, 1, 2, 3]);
    }
}
