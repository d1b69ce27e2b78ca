//! A tracing session: `on` starts a background collector, `off` stops the
//! guest's tracer, drains the rings through the collector and writes
//! `trace_graph.txt`; `status` reports both sides.
//!
//! The collector is this same binary (`xftrace collect`), started in its own
//! session with the guest's state lock inherited from `on`, so exactly one
//! collector runs per guest and `off` knows when it has finished.

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
use crate::collect::{read_spool, RingReader, Spool};
use crate::error::{Error, Result};
use crate::keys::KeyController;
use crate::render;
use crate::state::{self, now_unix, GuestState, Status};
use crate::symbols::SystemMap;
use crate::target::Target;
use crate::trace_switch;

/// How the collector works.
#[derive(Clone, Copy, Debug)]
pub struct CollectOptions {
    pub key_interval: Duration,
    pub poll_interval: Duration,
    /// Also trace interrupt handlers that run inside traced calls.
    pub irqs: bool,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            key_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(10),
            irqs: false,
        }
    }
}

const COLLECTOR_READY: Duration = Duration::from_secs(20);
const GUEST_ACK: Duration = Duration::from_secs(20);
const COLLECTOR_STOP: Duration = Duration::from_secs(30);
/// A heartbeat unchanged this long while the VM should run is reported.
const HEARTBEAT_STALL: Duration = Duration::from_secs(5);

/// `xftrace on FUNCS...`
pub fn on(target: &Target, root: &Path, functions: &[String], opts: CollectOptions) -> Result<()> {
    let (symbols, pid) = start(target, root, functions, opts)?;
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
    root: &Path,
    functions: &[String],
    opts: CollectOptions,
) -> Result<()> {
    let end = Instant::now() + wait;
    loop {
        match on(target, root, functions, opts) {
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
    root: &Path,
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
    let state = target.state(root)?;
    let Some(lock) = state.try_lock()? else {
        let pid = state.read_status().map_or(0, |s| s.pid);
        return Err(Error::State(format!(
            "tracing is already on for {} (collector pid {pid}); run `xftrace off` first",
            target.describe()
        )));
    };
    state.reset_session()?;

    let log = state::create_private(&state.collector_log())?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the xftrace binary", e))?;
    let fd = lock.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("collect")
        .args(target.args())
        .args(["--state-dir", &root.display().to_string()])
        .args(["--lock-fd", &fd.to_string()])
        .args([
            "--key-interval-ms",
            &opts.key_interval.as_millis().to_string(),
        ])
        .args(&symbols)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Error::io("cannot dup log", e))?,
        )
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // In the child, before exec: detach from the terminal's session and keep
    // the lock descriptor open across exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start the collector", e))?;
    drop(lock);

    // Wait for the collector to install the first key and start reading.
    let end = Instant::now() + COLLECTOR_READY;
    loop {
        if let Some(s) = state.read_status() {
            if s.state == "collecting" {
                break;
            }
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
    if let Err(e) = trace_switch::send(
        &guest.ram,
        &guest.kernel,
        Op::On,
        &symbols,
        flags,
        GUEST_ACK,
    ) {
        stop_collector(&state, child.id());
        let _ = child.wait();
        return Err(e);
    }
    Ok((symbols, child.id()))
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no output".into())
}

fn stop_collector(state: &GuestState, pid: u32) -> bool {
    if pid > 0 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    state.wait_unlocked(COLLECTOR_STOP).unwrap_or(false)
}

/// Turn the guest's tracer off and stop the collector, keeping its spool.
/// Returns the state and the error the guest side had, if any (the spool is
/// still there to write out).
fn stop(target: &Target, root: &Path) -> Result<(GuestState, Option<Error>)> {
    let state = target.state(root)?;
    let running = state.collector_running()?;
    let status = state.read_status();
    let have_spool = state.spool().is_file();
    let mut guest_error = None;
    match target.open() {
        Ok(g) => {
            let gs = trace_switch::read_status(&g.ram, &g.kernel)?;
            if !running && !gs.tracing && !have_spool {
                return Err(Error::State(format!(
                    "tracing is not on for {}; start it with `xftrace on FUNCTION...`",
                    target.describe()
                )));
            }
            if !running && !have_spool {
                warn!("no collector was running: turning the guest's tracer off, nothing to write");
            }
            if let Err(e) = trace_switch::send(&g.ram, &g.kernel, Op::Off, &[], 0, GUEST_ACK) {
                guest_error = Some(e);
            }
        }
        Err(e) if running || have_spool => guest_error = Some(e),
        Err(e) => return Err(e),
    }
    if running {
        let pid = status.as_ref().map_or(0, |s| s.pid);
        if !stop_collector(&state, pid) {
            return Err(Error::Timeout(format!(
                "the collector (pid {pid}) did not stop within {} s; its data is in {}",
                COLLECTOR_STOP.as_secs(),
                state.dir().display()
            )));
        }
    }
    if !have_spool && !state.spool().is_file() {
        return Err(guest_error.unwrap_or_else(|| Error::State("no records were collected".into())));
    }
    Ok((state, guest_error))
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

/// `xftrace off`: returns the path of the trace written.
pub fn off(target: &Target, root: &Path, output: &Path) -> Result<PathBuf> {
    let (state, guest_error) = stop(target, root)?;
    let status = state.read_status().unwrap_or_default();
    let map = session_map(target, &status)?;
    let n = write_trace(&state, &status, &map, output)?;
    // The session's data now lives in the trace and its Klog; a second `off`
    // has nothing left to write.
    state.finish_session()?;
    let mut done = status.clone();
    done.state = "written".into();
    done.message = format!("trace written to {}", output.display());
    state.write_status(&done)?;
    let lost = status.rings.lost + status.guest_dropped;
    println!(
        "wrote {} ({n} records, {lost} lost, {} failed integrity checks)",
        output.display(),
        status.rings.integrity_failures()
    );
    if status.rings.integrity_failures() > 0 {
        warn!(
            "{} records failed integrity checks: see {}",
            status.rings.integrity_failures(),
            state.anomalies().display()
        );
    }
    match guest_error {
        Some(e) => Err(e),
        None => Ok(output.to_path_buf()),
    }
}

/// Trace `functions` for `duration` and return the records (for baselines
/// and call-flow checks), with the session's status and System.map.
pub fn capture(
    target: &Target,
    root: &Path,
    functions: &[String],
    duration: Duration,
) -> Result<(Vec<crate::abi::Record>, Status, SystemMap)> {
    start(target, root, functions, CollectOptions::default())?;
    std::thread::sleep(duration);
    let (state, guest_error) = stop(target, root)?;
    if let Some(e) = guest_error {
        return Err(e);
    }
    let status = state.read_status().unwrap_or_default();
    let mut records = Vec::new();
    read_spool(&state.spool(), |r| records.push(r))?;
    state.finish_session()?;
    let map = session_map(target, &status)?;
    Ok((records, status, map))
}

/// Render the session's spool to `output`, with the Klog beside it.
pub fn write_trace(
    state: &GuestState,
    status: &Status,
    map: &SystemMap,
    output: &Path,
) -> Result<u64> {
    let mut records = Vec::new();
    let n = read_spool(&state.spool(), |r| records.push(r))?;
    let slide = status.slide;
    let name = |addr: u64| match map.containing(addr.wrapping_sub(slide)) {
        Some((sym, _)) => sym.to_string(),
        None => format!("{addr:#x}"),
    };
    let notes = vec![
        format!("guest {} ({})", status.target, status.banner),
        format!("functions {}", status.functions.join(" ")),
        format!(
            "{n} records, {} lost in the rings, {} dropped by the guest, {} failed integrity checks, {} keys",
            status.rings.lost,
            status.guest_dropped,
            status.rings.integrity_failures(),
            status.key_rotations
        ),
    ];
    let text = render::render(&records, status.nr_cpus.max(1), &name, &notes);
    render::write_atomically(output, &text)?;
    let klog = output.with_extension("klog");
    if let Ok(k) = std::fs::read(state.klog()) {
        let mut f = state::create_private(&klog)?;
        f.write_all(&k)
            .map_err(|e| Error::io(format!("cannot write {}", klog.display()), e))?;
    }
    Ok(n)
}

/// `xftrace status`
pub fn status(target: &Target, root: &Path) -> Result<()> {
    let state = target.state(root)?;
    println!("guest:      {}", target.describe());
    match target.open() {
        Ok(g) => {
            let gs = trace_switch::read_status(&g.ram, &g.kernel)?;
            let alive = trace_switch::guest_alive(&g.ram, &g.kernel, Duration::from_secs(1))?;
            println!("kernel:     {}", g.kernel.banner);
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
        }
        Err(e) => println!("guest:      unavailable: {e}"),
    }
    let running = state.collector_running()?;
    match state.read_status() {
        Some(s) => {
            println!(
                "collector:  {} (pid {}), {}{}",
                if running { "running" } else { "not running" },
                s.pid,
                s.state,
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.message)
                }
            );
            println!("functions:  {}", s.functions.join(" "));
            println!(
                "records:    {} collected, {} lost, {} dropped by the guest, {} failed integrity checks",
                s.rings.records,
                s.rings.lost,
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
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// `xftrace collect` (started by `on`): collect until SIGTERM, the guest's
/// RAM file disappears, or an error.
pub fn collect(
    target: &Target,
    root: &Path,
    lock: File,
    functions: &[String],
    opts: CollectOptions,
) -> Result<()> {
    let state = target.state(root)?;
    let mut status = Status {
        state: "starting".into(),
        pid: std::process::id(),
        target: target.describe(),
        functions: functions.to_vec(),
        started: now_unix(),
        updated: now_unix(),
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
    status.banner = g.kernel.banner.clone();
    status.system_map = g.system_map.display().to_string();

    let mut keys = KeyController::new(&g.ram, &g.kernel, &state.klog())?;
    let mut reader = RingReader::start(&g.ram, &g.kernel)?;
    keys.rotate(&g.ram, &g.kernel)?;
    status.key_rotations = 1;
    let mut spool = Spool::create(&state.spool())?;
    let mut anomalies = state::create_private(&state.anomalies())?;
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
        reader.poll(
            &g.ram,
            &g.kernel,
            keys.klog(),
            |r| {
                if let Err(e) = spool.push(&r) {
                    write_err.get_or_insert(e);
                }
            },
            |a| {
                // Every anomaly goes to anomalies.log; the log gets the first few.
                logged += 1;
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
        if gone {
            status.state = "guest-gone".into();
            status.message =
                "the guest's RAM file was removed (the VM stopped); trace kept up to that point"
                    .into();
            warn!("{}", status.message);
        }
        if stopping || gone || last_report.elapsed() >= Duration::from_millis(500) {
            let gs = trace_switch::read_status(&g.ram, &g.kernel)?;
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
            status.rings = reader.stats.clone();
            status.guest_dropped = gs.dropped.saturating_add(gs.unringed);
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
            keys.rotate(&g.ram, &g.kernel)?;
            status.key_rotations += 1;
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
        reader.stats.lost,
        reader.stats.integrity_failures()
    );
    Ok(())
}
