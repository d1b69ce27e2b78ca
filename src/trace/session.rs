//! A tracing session: `on` starts a background collector, `off` stops the
//! guest's tracer, drains the rings through the collector and writes
//! `trace_graph.txt`; `status` reports both sides.
//!
//! The collector is this same binary (`xftrace collect`), started in its own
//! session with the guest's state lock inherited from `on`, so exactly one
//! collector runs per guest and `off` knows when it has finished. `off`
//! then takes the lock itself and holds it while it writes the trace, so
//! that no new session can remove the spool under it.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::abi::Op;
use crate::error::{Error, Result};
use crate::escape::escape;
use crate::host::files;
use crate::host::statedir::{self, now_unix, GuestState, Status};
use crate::kernel::symbols::SystemMap;
use crate::kernel::target::Target;
use crate::trace::keys::KeyController;
use crate::trace::render;
use crate::trace::rings::RingReader;
use crate::trace::spool::{self, SpoolWriter};
use crate::trace::switch;

/// How the collector works.
#[derive(Clone, Copy, Debug)]
pub struct CollectOptions {
    pub key_interval: Duration,
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
            poll_interval: Duration::from_millis(10),
            irqs: false,
            spool_limit: spool::DEFAULT_LIMIT,
        }
    }
}

const COLLECTOR_READY: Duration = Duration::from_secs(20);
const GUEST_ACK: Duration = Duration::from_secs(20);
const COLLECTOR_STOP: Duration = Duration::from_secs(30);
/// A heartbeat unchanged this long while the VM should run is reported.
const HEARTBEAT_STALL: Duration = Duration::from_secs(5);
/// The last lines of a collector's log worth quoting.
const LOG_TAIL: u64 = 4096;

/// `xftrace on FUNCS...`
pub fn on(target: &Target, functions: &[String], opts: CollectOptions) -> Result<()> {
    let (symbols, pid) = start(target, functions, opts)?;
    println!(
        "tracing {} in {} (collector pid {pid}); stop with `xftrace off`",
        symbols.join(" "),
        target.describe(),
    );
    Ok(())
}

/// `on`, retrying for up to `wait` while the guest cannot be opened yet
/// (not running, or its kernel still booting).
pub fn on_waiting(
    wait: Duration,
    target: &Target,
    functions: &[String],
    opts: CollectOptions,
) -> Result<()> {
    let end = Instant::now()
        .checked_add(wait)
        .unwrap_or_else(Instant::now);
    loop {
        match on(target, functions, opts) {
            Err(Error::Guest(m) | Error::Libvirt(m)) if Instant::now() < end => {
                info!("{}: not ready ({m}); retrying", target.describe());
                std::thread::sleep(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

/// Start tracing: returns the kernel symbols traced and the collector's pid.
fn start(
    target: &Target,
    functions: &[String],
    opts: CollectOptions,
) -> Result<(Vec<String>, u32)> {
    if functions.is_empty() {
        return Err(Error::Input(
            "name at least one function to trace, e.g. `xftrace on sys_openat sys_read`".into(),
        ));
    }
    let guest = target.open()?;
    let mut symbols = Vec::new();
    for f in functions {
        let s = guest.map.resolve_function(f)?;
        if !symbols.contains(&s) {
            symbols.push(s);
        }
    }
    let state = target.state()?;
    let Some(lock) = state.try_lock()? else {
        let pid = state.read_status().map_or(0, |s| s.pid);
        return Err(Error::State(format!(
            "tracing is already on for {} (collector pid {pid}); run `xftrace off` first",
            target.describe()
        )));
    };
    state.reset_session()?;

    let log = files::create_new_private(&state.collector_log())?;
    let fd = lock.as_raw_fd();
    let mut args: Vec<OsString> = target.args();
    args.extend([
        "collect".into(),
        format!("--lock-fd={fd}").into(),
        format!("--key-interval-ms={}", opts.key_interval.as_millis()).into(),
        format!("--spool-limit={}", opts.spool_limit).into(),
        "--".into(),
    ]);
    args.extend(symbols.iter().map(OsString::from));
    let mut child = spawn_detached(
        &args,
        log,
        |cmd| {
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
        },
        Some(fd),
    )?;
    drop(lock);

    // Wait for the collector to install the first key and start reading.
    let end = Instant::now()
        .checked_add(COLLECTOR_READY)
        .unwrap_or_else(Instant::now);
    loop {
        if state.read_status().is_some_and(|s| s.state == "collecting") {
            break;
        }
        if let Ok(Some(code)) = child.try_wait() {
            return Err(Error::State(format!(
                "the collector exited ({code}) before it started: {}",
                last_line(&state.collector_log())
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

    let flags = if opts.irqs { crate::abi::FLAG_IRQS } else { 0 };
    if let Err(e) = switch::send(
        &guest.ram,
        &guest.kernel,
        Op::On,
        &symbols,
        flags,
        GUEST_ACK,
    ) {
        if let Some(s) = state.read_status() {
            statedir::signal_collector(&s);
        }
        let _ = state.wait_unlocked(COLLECTOR_STOP);
        let _ = child.wait();
        return Err(e);
    }
    Ok((symbols, child.id()))
}

/// Start this binary with `args` in a session of its own (no terminal, no
/// process group of the caller's), output to `log`. `keep_fd` stays open
/// across exec (the collector's lock).
pub fn spawn_detached(
    args: &[OsString],
    log: File,
    tweak: impl FnOnce(&mut Command),
    keep_fd: Option<i32>,
) -> Result<std::process::Child> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the xftrace binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Error::io("cannot dup log", e))?,
        )
        .stderr(log);
    tweak(&mut cmd);
    // In the child, before exec: leave the caller's session and keep the
    // lock descriptor open across exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(fd) = keep_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::io("cannot start a background xftrace", e))
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
struct Stopped {
    state: GuestState,
    guest_error: Option<Error>,
    /// Held until the trace is written.
    _lock: File,
}

/// Turn the guest's tracer off and stop the collector, keeping its spool.
fn stop(target: &Target) -> Result<Stopped> {
    let state = target.state()?;
    let running = state.collector_running()?;
    let status = state.read_status();
    let have_spool = spool::exists(state.dir());
    let mut guest_error = None;
    match target.open() {
        Ok(g) => {
            let gs = switch::read_status(&g.ram, &g.kernel)?;
            if !running && !gs.tracing && !have_spool {
                return Err(Error::State(format!(
                    "tracing is not on for {}; start it with `xftrace on FUNCTION...`",
                    target.describe()
                )));
            }
            if !running && !have_spool {
                warn!("no collector was running: turning the guest's tracer off, nothing to write");
            }
            if let Err(e) = switch::send(&g.ram, &g.kernel, Op::Off, &[], 0, GUEST_ACK) {
                guest_error = Some(e);
            }
        }
        Err(e) if running || have_spool => guest_error = Some(e),
        Err(e) => return Err(e),
    }
    if running {
        if let Some(s) = &status {
            if !statedir::signal_collector(s) {
                warn!(
                    "the collector (pid {}) could not be signalled as itself; waiting for it to notice",
                    s.pid
                );
            }
        }
    }
    let Some(lock) = state.lock_waiting(COLLECTOR_STOP)? else {
        return Err(Error::Timeout(format!(
            "the collector (pid {}) did not stop within {} s; its data is in {}",
            status.map_or(0, |s| s.pid),
            COLLECTOR_STOP.as_secs(),
            state.dir().display()
        )));
    };
    if !spool::exists(state.dir()) {
        return Err(guest_error.unwrap_or_else(|| Error::State("no records were collected".into())));
    }
    Ok(Stopped {
        state,
        guest_error,
        _lock: lock,
    })
}

/// The System.map for rendering: given, or the one the session used.
fn session_map(target: &Target, status: &Status) -> Result<SystemMap> {
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

/// `xftrace off`: returns the path of the trace written.
pub fn off(target: &Target, output: &Path) -> Result<PathBuf> {
    klog_beside(output)?;
    let stopped = stop(target)?;
    let state = &stopped.state;
    let status = state.read_status().unwrap_or_default();
    let map = session_map(target, &status)?;
    let n = write_trace(state, &status, &map, output)?;
    // The session's data now lives in the trace and its Klog; a second `off`
    // has nothing left to write.
    state.finish_session()?;
    let mut done = status.clone();
    done.state = "written".into();
    done.message = format!("trace written to {}", output.display());
    state.write_status(&done)?;
    let missing = status.rings.missing().saturating_add(status.guest_dropped);
    println!(
        "wrote {} ({n} lines, {} records, {missing} lost, {} failed integrity checks)",
        output.display(),
        status.rings.records,
        status.rings.integrity_failures()
    );
    if status.rings.integrity_failures() > 0 {
        warn!(
            "{} records failed integrity checks: see {}",
            status.rings.integrity_failures(),
            state.anomalies().display()
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
    pub status: Status,
    pub map: SystemMap,
    stopped: Stopped,
}

impl Capture {
    /// The captured records, merged across CPUs in time order, streamed.
    pub fn records(&self) -> Result<impl Iterator<Item = crate::abi::Record>> {
        Ok(spool::Merged::new(spool::open(self.stopped.state.dir())?))
    }

    pub fn finish(self) -> Result<()> {
        self.stopped.state.finish_session()
    }
}

/// Trace `functions` for `duration` (for baselines and call-flow checks).
pub fn capture(target: &Target, functions: &[String], duration: Duration) -> Result<Capture> {
    start(target, functions, CollectOptions::default())?;
    std::thread::sleep(duration);
    let stopped = stop(target)?;
    if let Some(e) = stopped.guest_error {
        return Err(e);
    }
    let status = stopped.state.read_status().unwrap_or_default();
    let map = session_map(target, &status)?;
    Ok(Capture {
        status,
        map,
        stopped,
    })
}

/// Render the session's spool to `output`, with the Klog beside it; both
/// private and replaced atomically. Returns the lines written.
pub fn write_trace(
    state: &GuestState,
    status: &Status,
    map: &SystemMap,
    output: &Path,
) -> Result<u64> {
    let klog_path = klog_beside(output)?;
    let slide = status.slide;
    let name = |addr: u64| match map.containing(addr.wrapping_sub(slide)) {
        Some((sym, _)) => sym.to_string(),
        None => format!("{addr:#x}"),
    };
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
    if let Ok(k) = files::open_regular(&state.klog(), "Klog") {
        let mut out = files::AtomicFile::create(&klog_path)?;
        std::io::copy(&mut { k }, out.writer())
            .map_err(|e| Error::io(format!("cannot write {}", klog_path.display()), e))?;
        out.commit()?;
    }
    let rings: Vec<(u32, spool::RingStream)> = spool::open(state.dir())?
        .into_iter()
        .map(|s| (s.cpu(), s))
        .collect();
    let mut out = files::AtomicFile::create(output)?;
    let n = render::render(out.writer(), rings, status.nr_cpus.max(1), &name, &notes)?;
    out.commit()?;
    Ok(n)
}

/// `xftrace status`: prints what is known; an unavailable guest is an error
/// (exit code) after the collector's part has been printed.
pub fn status(target: &Target) -> Result<()> {
    let state = target.state()?;
    println!("guest:      {}", target.describe());
    let guest = target.open();
    if let Ok(g) = &guest {
        let gs = switch::read_status(&g.ram, &g.kernel)?;
        let alive = switch::guest_alive(&g.ram, &g.kernel, Duration::from_secs(1))?;
        println!("kernel:     {}", escape(&g.kernel.banner));
        println!(
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
        );
        for why in gs.narrowed_reasons() {
            println!("warning:    {why}");
        }
    }
    let running = state.collector_running()?;
    match state.read_status() {
        Some(s) => {
            println!(
                "collector:  {} (pid {}), {}{}",
                if running { "running" } else { "not running" },
                s.pid,
                escape(&s.state),
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape(&s.message))
                }
            );
            println!("functions:  {}", s.functions.join(" "));
            println!(
                "records:    {} collected, {} lost, {} dropped by the guest, {} failed integrity checks",
                s.rings.records,
                s.rings.missing(),
                s.guest_dropped,
                s.rings.integrity_failures()
            );
            println!(
                "keys:       epoch {}, {} rotations, updated {:.1} s ago",
                s.key_epoch,
                s.key_rotations,
                (now_unix() - s.updated).max(0.0)
            );
        }
        None => println!(
            "collector:  {}",
            if running {
                "starting"
            } else {
                "not running (tracing is off)"
            }
        ),
    }
    guest.map(|_| ())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// `xftrace collect` (started by `on`): collect until SIGTERM, the guest's
/// RAM file disappears, or an error.
pub fn collect(
    target: &Target,
    lock: File,
    functions: &[String],
    opts: CollectOptions,
) -> Result<()> {
    let state = target.state()?;
    let (pid, pid_start, boot_id) = statedir::own_identity();
    let mut status = Status {
        state: "starting".into(),
        pid,
        pid_start,
        boot_id,
        target: target.describe(),
        functions: functions.to_vec(),
        started: now_unix(),
        updated: now_unix(),
        spool_limit: opts.spool_limit,
        ..Default::default()
    };
    let result = collect_loop(target, &state, &mut status, opts);
    if let Err(e) = &result {
        error!("collector failed: {e}");
        status.state = "failed".into();
        status.message = e.to_string();
    }
    status.updated = now_unix();
    state.write_status(&status)?;
    drop(lock);
    result
}

fn collect_loop(
    target: &Target,
    state: &GuestState,
    status: &mut Status,
    opts: CollectOptions,
) -> Result<()> {
    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        // Only sets an atomic flag.
        unsafe { nix::sys::signal::signal(sig, handler) }
            .map_err(|e| Error::io("cannot install signal handler", e.into()))?;
    }
    let g = target.open()?;
    status.slide = g.kernel.slide;
    status.nr_cpus = g.kernel.header.nr_cpus;
    status.banner = escape(&g.kernel.banner).into_owned();
    status.system_map = g.system_map.display().to_string();

    let mut keys = KeyController::new(&g.ram, &g.kernel, &state.klog())?;
    let mut reader = RingReader::start(&g.ram, &g.kernel)?;
    let first = keys.rotate(&g.ram, &g.kernel)?;
    reader.note_rotation(&g.ram, &g.kernel, first)?;
    status.key_rotations = 1;
    let mut spool = SpoolWriter::create(state.dir(), g.kernel.header.nr_rings, opts.spool_limit)?;
    let mut anomalies = files::replace_private(&state.anomalies())?;
    status.state = "collecting".into();
    status.key_epoch = keys.epoch();
    state.write_status(status)?;
    info!(
        "collecting from {} with key epoch {}",
        target.describe(),
        keys.epoch()
    );

    let mut logged = 0u64;
    let mut last_rotation = Instant::now();
    let mut last_report = Instant::now();
    let mut heartbeat = (
        g.ram.read_u64(g.kernel.field(crate::abi::off::HEARTBEAT))?,
        Instant::now(),
    );
    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        let gone = g.ram.unlinked();
        let mut write_err = None;
        let mut over_limit = 0u64;
        reader.poll(
            &g.ram,
            &g.kernel,
            keys.klog(),
            |r| match spool.push(&r) {
                Ok(true) => {}
                Ok(false) => over_limit = over_limit.saturating_add(1),
                Err(e) => {
                    write_err.get_or_insert(e);
                }
            },
            |a| {
                // Every anomaly goes to anomalies.log; the log gets the first few.
                logged = logged.saturating_add(1);
                if logged <= 20 {
                    warn!("integrity: {a}");
                } else if logged == 21 {
                    warn!(
                        "more integrity failures: see {}",
                        state.anomalies().display()
                    );
                }
                let _ = writeln!(anomalies, "{:.3} {a}", now_unix());
            },
        )?;
        if let Some(e) = write_err {
            return Err(e);
        }
        if over_limit > 0 && reader.stats.over_limit == 0 {
            warn!(
                "the record spool reached its limit of {} bytes: further records are counted as lost",
                opts.spool_limit
            );
        }
        reader.stats.over_limit = reader.stats.over_limit.saturating_add(over_limit);
        if gone {
            status.state = "guest-gone".into();
            status.message =
                "the guest's RAM file was removed (the VM stopped); trace kept up to that point"
                    .into();
            warn!("{}", status.message);
        }
        if stopping || gone || last_report.elapsed() >= Duration::from_millis(500) {
            let gs = switch::read_status(&g.ram, &g.kernel)?;
            if gs.heartbeat != heartbeat.0 {
                heartbeat = (gs.heartbeat, Instant::now());
                status.heartbeat_stalled = false;
            } else if heartbeat.1.elapsed() >= HEARTBEAT_STALL && !status.heartbeat_stalled {
                status.heartbeat_stalled = true;
                warn!(
                    "the guest's xftrace heartbeat has not advanced for {} s",
                    HEARTBEAT_STALL.as_secs()
                );
            }
            for why in gs.narrowed_reasons() {
                if !status.narrowed.iter().any(|w| w == why) {
                    warn!("the guest narrowed the capture: {why}");
                    status.narrowed.push(why.to_string());
                }
            }
            status.rings = reader.stats.clone();
            status.guest_dropped = gs
                .dropped
                .saturating_add(gs.unringed)
                .saturating_add(gs.nested);
            status.key_epoch = keys.epoch();
            status.updated = now_unix();
            spool.flush()?;
            state.write_status(status)?;
            last_report = Instant::now();
        }
        if stopping || gone {
            break;
        }
        if last_rotation.elapsed() >= opts.key_interval {
            let e = keys.rotate(&g.ram, &g.kernel)?;
            reader.note_rotation(&g.ram, &g.kernel, e)?;
            status.key_rotations = status.key_rotations.saturating_add(1);
            last_rotation = Instant::now();
        }
        std::thread::sleep(opts.poll_interval);
    }
    if status.state == "collecting" {
        status.state = "stopped".into();
    }
    info!(
        "collector done: {} records, {} lost, {} integrity failures",
        reader.stats.records,
        reader.stats.missing(),
        reader.stats.integrity_failures()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = tempfile::tempdir().unwrap();
        let st = GuestState::for_domain(&dir.path().join("state"), "d").unwrap();
        let mut sp = SpoolWriter::create(st.dir(), 1, spool::DEFAULT_LIMIT).unwrap();
        sp.push(&rec(0, 0, 1)).unwrap();
        sp.push(&rec(0, 1, 1)).unwrap();
        sp.flush().unwrap();
        std::fs::write(st.klog(), "1 1 00000000000000aa\n").unwrap();
        // Someone who can write the output directory plants links at the
        // trace's and the Klog's names, and at last time's temp name.
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        for n in [
            "trace_graph.txt",
            "trace_graph.klog",
            ".trace_graph.txt.1234.tmp",
        ] {
            std::os::unix::fs::symlink(&victim, out.join(n)).unwrap();
        }
        let map = SystemMap::parse(crate::kernel::symbols::tests::MAP).unwrap();
        let status = Status {
            nr_cpus: 1,
            ..Default::default()
        };
        write_trace(&st, &status, &map, &out.join("trace_graph.txt")).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let klog = std::fs::read_to_string(out.join("trace_graph.klog")).unwrap();
        assert!(klog.contains("00000000000000aa"));
        let trace = std::fs::read_to_string(out.join("trace_graph.txt")).unwrap();
        assert!(trace.starts_with("# tracer: function_graph"));
    }
}
