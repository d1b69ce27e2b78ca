//! The `xftrace` command line: what it accepts (`Cli`), what each command
//! does ([`run`]), and the one mapping from outcome to exit code
//! ([`exit_code`]).

mod domains;
mod logging;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_verbosity_flag::{Verbosity, WarnLevel};

use crate::base::error::Error;
use crate::detect;
use crate::guest::memory::Machine;
use crate::host::statedir;
use crate::kernel::target::{MemFile, Source, Target};
use crate::libvirt::connection::DEFAULT_URI;
use crate::libvirt::guests::LibvirtDomains;
use crate::lifecycle::hook;
use crate::trace::session::{self, CollectOptions};
use crate::trace::{collector, spool};

/// Rootkit detection for KVM guests, from the host: trace a guest kernel's
/// calls and check what it will jump through, by reading the file that
/// backs its RAM, without pausing it or installing an agent in it.
#[derive(Parser, Debug)]
#[command(name = "xftrace", version, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub guest: GuestArgs,

    #[command(flatten)]
    pub verbosity: Verbosity<WarnLevel>,

    /// JSON output, one object per line (`check`, `watch`, `list`); an
    /// error as {"error": MESSAGE, "exit": CODE} on stdout (docs/json.md).
    #[arg(long, global = true)]
    pub json: bool,

    /// Where xftrace keeps per-guest state (0700).
    #[arg(long, global = true, env = "XFTRACE_STATE_DIR", default_value = statedir::DEFAULT_ROOT)]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Debug)]
pub struct GuestArgs {
    /// The libvirt domain to trace.
    #[arg(
        long,
        short = 'd',
        global = true,
        value_name = "NAME",
        conflicts_with = "mem_file"
    )]
    pub domain: Option<String>,

    /// libvirt connection URI.
    #[arg(long, short = 'c', global = true, value_name = "URI", env = "XFTRACE_CONNECT", default_value = DEFAULT_URI)]
    pub connect: String,

    /// File backing the guest's RAM (QEMU memory-backend-file, share=on), for guests outside libvirt.
    #[arg(long, global = true, value_name = "PATH")]
    pub mem_file: Option<PathBuf>,

    /// System.map of the kernel the guest runs (from guest-kernel/build.sh)
    /// [default for domains: the one recorded at enrollment].
    #[arg(long, global = true, value_name = "PATH")]
    pub system_map: Option<PathBuf>,

    /// vmlinux of that kernel, to match its banner exactly
    /// [default: vmlinux beside System.map, if present].
    #[arg(long, global = true, value_name = "PATH")]
    pub vmlinux: Option<PathBuf>,

    /// The kernel's modules (a tree of .ko files, e.g. /lib/modules/VERSION
    /// from its package), to tell its modules from impostors by content
    /// [default: modules.d beside System.map, if present].
    #[arg(long, global = true, value_name = "DIR")]
    pub modules: Option<PathBuf>,

    /// QMP socket of the QEMU running the guest (--mem-file only), to read its
    /// vCPUs' registers (libvirt domains: through libvirt).
    #[arg(long, global = true, value_name = "PATH")]
    pub qmp: Option<PathBuf>,

    /// QEMU machine type (--mem-file only); needed for guests with 2.75 GiB of RAM or more.
    #[arg(long, global = true, value_enum)]
    pub machine: Option<MachineArg>,

    /// QEMU's max-ram-below-4g, if the guest was started with it (--mem-file only; bytes).
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_ram_below_4g: Option<u64>,
}

/// `--machine`: the command line's names for [`Machine`] (the memory
/// layer knows nothing of the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MachineArg {
    /// i440fx (`pc-*`): up to 3 GiB below 4 GiB once RAM reaches 3.5 GiB.
    Pc,
    /// Q35 (`pc-q35-*`): up to 2 GiB below 4 GiB once RAM reaches 2.75 GiB.
    Q35,
}

impl From<MachineArg> for Machine {
    fn from(m: MachineArg) -> Machine {
        match m {
            MachineArg::Pc => Machine::Pc,
            MachineArg::Q35 => Machine::Q35,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start tracing FUNCTIONS (e.g. sys_openat sys_read) and collecting in the background.
    On {
        /// Functions as users name them: sys_read, read, __x64_sys_read, vfs_read.
        #[arg(required_unless_present = "adopt", value_name = "FUNCTION")]
        functions: Vec<String>,
        /// Continue a guest found tracing with no collector of this host
        /// (it arrived by live migration, or this host lost the session):
        /// trace what it traces, under this host's keys. A guest not
        /// tracing is left alone.
        #[arg(long, conflicts_with = "functions")]
        adopt: bool,
        /// Interval between key rotations, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
        key_interval_ms: u64,
        /// Also trace interrupt handlers that run inside traced calls.
        #[arg(long)]
        irqs: bool,
        /// Keep trying this many seconds while the guest is not up yet (the
        /// hook's always-on monitoring uses it).
        #[arg(long, default_value_t = 0, hide = true)]
        wait: u64,
        /// A note for the trace's header (the libvirt hook says why it
        /// starts the session).
        #[arg(long, hide = true)]
        gap: Vec<String>,
        /// Most bytes of records to keep for the trace (64 per record);
        /// records past it are counted as lost and the trace says so.
        #[arg(long, env = "XFTRACE_SPOOL_LIMIT", default_value_t = spool::DEFAULT_LIMIT, value_name = "BYTES")]
        spool_limit: u64,
    },
    /// Stop tracing, drain the rings and write the trace.
    Off {
        /// The libvirt domain (as --domain).
        #[arg(value_name = "DOMAIN")]
        name: Option<String>,
        /// Where to write the function_graph trace.
        #[arg(short, long, default_value = "trace_graph.txt")]
        output: PathBuf,
    },
    /// Show the guest's tracer and the collector.
    Status {
        /// The libvirt domain (as --domain).
        #[arg(value_name = "DOMAIN")]
        name: Option<String>,
    },
    /// Print the guest kernel's log (printk's ring buffer), read from the
    /// host as `dmesg` prints it, escaped: no login, no agent, no pause.
    Dmesg {
        /// The libvirt domain (as --domain).
        #[arg(value_name = "DOMAIN")]
        name: Option<String>,
    },
    /// Prepare a libvirt domain for tracing (takes effect at its next start).
    Enroll {
        /// The domain.
        name: String,
        /// Print the change to the domain's definition without making it.
        #[arg(long)]
        dry_run: bool,
        /// Always-on monitoring: trace these functions from every start of
        /// the domain (comma-separated; started by the libvirt hook).
        #[arg(long, value_delimiter = ',', value_name = "FUNCTIONS")]
        monitor: Vec<String>,
    },
    /// Undo `enroll`: restore the domain's previous memory backing.
    Unenroll {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// List libvirt domains: running or not, enrolled or not, tracing or not.
    List,
    /// Store a guest kernel build (--system-map, and the vmlinux beside it)
    /// in the state directory, as `enroll` does, without enrolling a
    /// domain: a domain enrolled with that build on another host can then
    /// arrive here by live migration and be traced. With --debian or
    /// --deb, store Debian's own kernel of that version instead, to check
    /// guests that run it (`check` fetches it itself when it meets one).
    AddKernel {
        /// A Debian kernel image package to fetch with apt:
        /// RELEASE=VERSION (`uname -r` and the package version, as in
        /// `6.1.0-57-cloud-amd64=6.1.192-3`).
        #[arg(long, value_name = "RELEASE=VERSION", conflicts_with = "deb")]
        debian: Option<String>,
        /// A Debian kernel image package (`linux-image-*.deb`) already
        /// downloaded.
        #[arg(long, value_name = "FILE")]
        deb: Option<PathBuf>,
    },
    /// Entry point of the libvirt hook (reads the domain XML on stdin; not
    /// for direct use).
    #[command(hide = true)]
    Hook {
        /// The hook's driver; only `qemu` is handled.
        driver: String,
        /// libvirt's arguments: DOMAIN OPERATION SUB-OPERATION EXTRA.
        args: Vec<String>,
    },
    /// Trace the clean guest and save its call flow as the baseline for `check`.
    Baseline {
        /// Seconds to trace.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Levels below each syscall to record (deeper levels vary more
        /// between runs of a clean guest).
        #[arg(long, default_value_t = 2)]
        depth: u32,
        /// Functions to trace, globs allowed [default: every syscall,
        /// `__x64_sys_*`].
        functions: Vec<String>,
    },
    /// Check the guest once: exit 0 clean, 1 findings, 2 error.
    Check {
        /// The libvirt domain (as --domain).
        #[arg(value_name = "DOMAIN")]
        name: Option<String>,
        /// Check every running enrolled domain of this host, one after the
        /// other; one that cannot be checked does not stop the others.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// Seconds of tracing for the call-flow check against the baseline (0: skip).
        #[arg(long, default_value_t = 3)]
        trace_seconds: u64,
    },
    /// Check continuously, reporting each finding when it appears.
    Watch {
        /// The libvirt domain (as --domain).
        #[arg(value_name = "DOMAIN")]
        name: Option<String>,
        /// The host's watch service: follow every enrolled domain of the
        /// connection as domains start, stop and migrate (libvirt's
        /// events), check each running one every interval, and start the
        /// tracing the hook starts otherwise (unit xftrace-watch.service).
        #[arg(long, conflicts_with_all = ["name", "rounds"])]
        all: bool,
        /// After each round, write `xftrace metrics` to this file
        /// (atomically, readable by all: node_exporter's textfile
        /// collector).
        #[arg(long, value_name = "PATH", env = "XFTRACE_TEXTFILE")]
        textfile: Option<PathBuf>,
        /// Seconds between checks (of each domain, with --all).
        #[arg(long, env = "XFTRACE_WATCH_INTERVAL", default_value_t = 1.0)]
        interval: f64,
        /// Seconds of tracing per call-flow check (0: integrity checks only).
        #[arg(long, env = "XFTRACE_WATCH_TRACE_SECONDS", default_value_t = 0)]
        trace_seconds: u64,
        /// Stop after this many checks.
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Print Prometheus metrics of every guest with state on this host:
    /// collectors, records, keys, and the last check's findings
    /// (docs/metrics.md).
    Metrics {
        /// Write them to this file instead, atomically and readable by all
        /// (node_exporter's textfile collector: a `.prom` file in its
        /// directory).
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
    },
    /// Print a completion script for SHELL (bash: save it as
    /// /usr/share/bash-completion/completions/xftrace).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (xftrace.1, xftrace-COMMAND.1) into DIR (for
    /// the package; not for direct use).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Run the collector (started by `on`; not for direct use).
    #[command(hide = true)]
    Collect {
        #[arg(long)]
        lock_fd: i32,
        #[arg(long, default_value_t = 1000)]
        key_interval_ms: u64,
        #[arg(long, default_value_t = spool::DEFAULT_LIMIT)]
        spool_limit: u64,
        /// Where `on` found the guest kernel's `_text` (guest physical).
        #[arg(long, value_parser = parse_hex)]
        text_pa: Option<u64>,
        /// For the trace's header: what the session lacks (repeatable).
        #[arg(long)]
        gap: Vec<String>,
        functions: Vec<String>,
    },
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

impl Command {
    /// `check` and `watch` exit 0 clean, 1 findings, 2 error.
    fn is_detection(&self) -> bool {
        matches!(self, Command::Check { .. } | Command::Watch { .. })
    }

    /// Commands that can answer in JSON.
    fn speaks_json(&self) -> bool {
        matches!(
            self,
            Command::Check { .. }
                | Command::Watch { .. }
                | Command::List
                | Command::Status { .. }
                | Command::Dmesg { .. }
                | Command::AddKernel { .. }
                | Command::On { .. }
                | Command::Off { .. }
                | Command::Baseline { .. }
                | Command::Enroll { .. }
                | Command::Unenroll { .. }
        )
    }

    /// The domain named as a positional argument, as virsh takes it.
    fn domain(&self) -> Option<&String> {
        match self {
            Command::Off { name, .. }
            | Command::Status { name }
            | Command::Dmesg { name }
            | Command::Check { name, .. }
            | Command::Watch { name, .. } => name.as_ref(),
            _ => None,
        }
    }

    /// Commands that switch the guest's tracer on (and off again, or
    /// leave it to a collector): a stop signal (SIGINT, SIGTERM, SIGHUP)
    /// is caught, the tracer switched off, and the command says it was
    /// interrupted (exit 128 + the signal) without claiming a result. The
    /// collector catches them itself.
    fn switches_tracer_on(&self) -> bool {
        matches!(
            self,
            Command::On { .. }
                | Command::Baseline { .. }
                | Command::Check { .. }
                | Command::Watch { .. }
        )
    }

    /// Commands whose output is a report, and which leave nothing half
    /// done if they end while printing it (a check's trace is over by the
    /// time its findings print).
    fn only_reports(&self) -> bool {
        matches!(
            self,
            Command::Status { .. }
                | Command::Dmesg { .. }
                | Command::List
                | Command::Metrics { .. }
                | Command::Completions { .. }
                | Command::Check { .. }
                | Command::Watch { .. }
        )
    }
}

/// How a command that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A check found nothing.
    Clean,
    /// A check found something.
    Findings,
}

/// The exit code of `command`'s result: 0 success; for `check` and
/// `watch` 0 clean, 1 findings, 2 any error; for the rest the error's own
/// code (see [`crate::base::error::exit`]).
pub fn exit_code(detection: bool, result: &Result<Outcome, Error>) -> u8 {
    match result {
        Ok(Outcome::Done | Outcome::Clean) => 0,
        Ok(Outcome::Findings) => 1,
        Err(e @ Error::Interrupted { .. }) => u8::try_from(e.exit_code()).unwrap_or(1),
        Err(_) if detection => 2,
        Err(e) => u8::try_from(e.exit_code()).unwrap_or(1),
    }
}

/// Parse the command line, run the command, return the exit code (errors
/// are printed as one line).
pub fn main() -> u8 {
    let cli = Cli::parse();
    logging::init(cli.verbosity.log_level_filter());
    let name: String = format!("{:?}", cli.command)
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    log::debug!("xftrace {}: {name}", env!("CARGO_PKG_VERSION"));
    let detection = cli.command.is_detection();
    if cli.command.only_reports() {
        // Printing into a closed pipe (`xftrace status | head`) ends the
        // process quietly, as it does other command-line tools, instead of
        // a panic. Commands that drive the guest or run the collector keep
        // EPIPE as an error they handle.
        // SAFETY: setting a signal's disposition to the default, before
        // any thread starts.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    if cli.command.switches_tracer_on() {
        if let Err(e) = crate::host::signals::catch_stops() {
            eprintln!("xftrace: error: {e}");
            return u8::try_from(e.exit_code()).unwrap_or(1);
        }
    }
    let json = cli.json;
    let result = run(cli);
    let code = exit_code(detection, &result);
    if let Err(e) = &result {
        if json {
            println!(
                "{}",
                serde_json::json!({"error": e.to_string(), "exit": code})
            );
        } else {
            eprintln!("xftrace: error: {e}");
        }
    }
    code
}

fn target(g: &GuestArgs, root: &Path) -> Result<Target, Error> {
    let source = match (&g.domain, &g.mem_file) {
        (Some(name), _) => return Ok(domain_target(g, root, name)),
        (None, Some(path)) => Source::MemFile(MemFile {
            path: path.clone(),
            machine: g.machine.map(Machine::from),
            max_ram_below_4g: g.max_ram_below_4g,
            qmp: g.qmp.clone(),
        }),
        (None, None) => {
            return Err(Error::Input(
                "say which guest: --domain NAME (libvirt) or --mem-file PATH (the file backing its RAM)".into(),
            ))
        }
    };
    Ok(Target {
        source,
        system_map: g.system_map.clone(),
        vmlinux: g.vmlinux.clone(),
        modules: g.modules.clone(),
        state_root: root.to_path_buf(),
    })
}

/// `--domain` and the positional domain, which may both name it, once.
fn guest_args(cli: &Cli) -> Result<GuestArgs, Error> {
    let mut g = cli.guest.clone();
    if let Some(name) = cli.command.domain() {
        match &g.domain {
            Some(d) if d != name => {
                return Err(Error::Input(format!(
                    "two domains given: '{}' and --domain '{}'; name one",
                    crate::base::escape::escape(name),
                    crate::base::escape::escape(d)
                )))
            }
            _ if g.mem_file.is_some() => {
                return Err(Error::Input(
                    "a domain and --mem-file given: name one guest".into(),
                ))
            }
            _ => g.domain = Some(name.clone()),
        }
    }
    Ok(g)
}

/// Run the command `cli` names.
pub fn run(cli: Cli) -> Result<Outcome, Error> {
    let root = &cli.state_dir;
    let guest = guest_args(&cli)?;
    let json = cli.json;
    if json && !cli.command.speaks_json() {
        return Err(Error::Input(
            "--json: this command answers in text only (`metrics` speaks Prometheus's format; `completions` a shell's); every other command speaks JSON"
                .into(),
        ));
    }
    let done = |r: Result<(), Error>| r.map(|()| Outcome::Done);
    match &cli.command {
        Command::On {
            functions,
            adopt,
            key_interval_ms,
            irqs,
            wait,
            gap,
            spool_limit,
        } => {
            let target = target(&guest, root)?;
            let opts = CollectOptions {
                key_interval: Duration::from_millis(*key_interval_ms),
                irqs: *irqs,
                spool_limit: *spool_limit,
                ..Default::default()
            };
            let began = session::waiting(&target, Duration::from_secs(*wait), || match adopt {
                true => session::adopt(&target, opts, gap),
                false => session::on(&target, functions, opts, gap),
            })?;
            if crate::host::signals::caught().is_some() {
                // Stopped while it switched the tracer on: nobody would
                // stop this session, so it does not start.
                session::abandon(&target)?;
                crate::host::signals::check("the guest's tracer is off again")?;
            }
            if json {
                println!("{}", serde_json::json!(began));
            } else {
                println!("{began}");
            }
            Ok(Outcome::Done)
        }
        Command::Off { output, .. } => {
            let off = session::off(&target(&guest, root)?, output);
            if json {
                if let Some(wrote) = &off.wrote {
                    let mut v = serde_json::json!(wrote);
                    v["guest_gone"] = serde_json::json!(off.gone);
                    println!("{v}");
                }
            } else {
                if let Some(note) = &off.gone {
                    eprintln!("{note}");
                }
                if let Some(wrote) = &off.wrote {
                    println!("{wrote}");
                }
            }
            off.result.map(|_| Outcome::Done)
        }
        Command::Status { .. } => {
            let t = target(&guest, root)?;
            let mut status = session::status(&t);
            // The kernel's taint, lockdown and signatures against the
            // baseline's, where one kept them.
            if status.result.is_ok() {
                if let (Ok(g), Ok(dir)) = (t.open(), t.dir()) {
                    if let Some(l) = detect::checks::taint::status_line(&g.view(&g.kernel), &dir) {
                        status.lines.push(l);
                    }
                }
            }
            if json {
                // The data, and the text's lines (escaped) for what it
                // does not break down (taint, lockdown, signatures).
                let mut v = serde_json::to_value(&status.facts)
                    .map_err(|e| Error::State(format!("cannot encode the status: {e}")))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("lines".into(), serde_json::json!(status.lines));
                }
                println!("{v}");
            } else {
                for line in &status.lines {
                    println!("{line}");
                }
            }
            done(status.result)
        }
        Command::Enroll {
            name,
            dry_run,
            monitor,
        } => done(domains::enroll(&guest, root, name, monitor, *dry_run, json)),
        Command::Unenroll { name, dry_run } => {
            done(domains::unenroll(&guest, root, name, *dry_run, json))
        }
        Command::Dmesg { .. } => dmesg(&target(&guest, root)?, json),
        Command::List => done(domains::list(&guest, root, json)),
        Command::AddKernel { debian, deb } => match (debian, deb) {
            (None, None) => done(domains::add_kernel(&guest, root, json)),
            (d, f) => done(domains::add_stock_kernel(
                root,
                d.as_deref(),
                f.as_deref(),
                json,
            )),
        },
        Command::Baseline {
            duration,
            depth,
            functions,
        } => baseline(&target(&guest, root)?, functions, *duration, *depth, json),
        Command::Check {
            all: true,
            trace_seconds,
            ..
        } => check_all(&guest, root, json, *trace_seconds),
        Command::Check { trace_seconds, .. } => check(&target(&guest, root)?, json, *trace_seconds),
        Command::Watch {
            all: true,
            interval,
            trace_seconds,
            textfile,
            ..
        } => watch_all(
            &guest,
            root,
            json,
            Duration::from_secs_f64(interval.max(0.1)),
            *trace_seconds,
            textfile.as_deref(),
        ),
        Command::Watch {
            interval,
            trace_seconds,
            rounds,
            textfile,
            ..
        } => {
            let target = target(&guest, root)?;
            let opts = detect::CheckOptions {
                trace_seconds: *trace_seconds,
            };
            use std::sync::atomic::{AtomicBool, Ordering};
            // Beside the rounds, the guest's kernel log, followed a few
            // times a second: an Oops is reported as it happens.
            let (stop, logged) = (AtomicBool::new(false), AtomicBool::new(false));
            let any = std::thread::scope(|s| {
                s.spawn(|| {
                    detect::follow_log(&target, &stop, &mut |events| {
                        logged.fetch_or(detect::alarming(&events), Ordering::Relaxed);
                        for line in detect::report(&events, json) {
                            println!("{line}");
                        }
                    })
                });
                let rounds = (|| {
                    let mut any = false;
                    for new in detect::watch(
                        &target,
                        &opts,
                        Duration::from_secs_f64(interval.max(0.1)),
                        *rounds,
                    ) {
                        let new = new?;
                        any |= detect::alarming(&new);
                        for line in detect::report(&new, json) {
                            println!("{line}");
                        }
                        if json {
                            summary(&target, Some(new.len()));
                        }
                        write_metrics(root, textfile.as_deref());
                    }
                    Ok::<bool, Error>(any)
                })();
                stop.store(true, Ordering::Relaxed);
                rounds
            })?;
            Ok(if any || logged.load(Ordering::Relaxed) {
                Outcome::Findings
            } else {
                Outcome::Clean
            })
        }
        Command::Metrics { textfile } => {
            let m = crate::report::metrics::render(root)?;
            match textfile {
                Some(p) => crate::host::files::write_atomically_readable(p, m.as_bytes())?,
                None => print!("{m}"),
            }
            Ok(Outcome::Done)
        }
        Command::Manpages { dir } => {
            for p in man_pages(dir)? {
                println!("{}", p.display());
            }
            Ok(Outcome::Done)
        }
        Command::Completions { shell } => {
            let mut cmd = visible(&Cli::command());
            clap_complete::generate(*shell, &mut cmd, "xftrace", &mut std::io::stdout());
            Ok(Outcome::Done)
        }
        Command::Hook { driver, args } => match driver.as_str() {
            "qemu" => done(hook::qemu(root, args, &mut std::io::stdin())),
            _ => Ok(Outcome::Done),
        },
        Command::Collect {
            lock_fd,
            key_interval_ms,
            spool_limit,
            text_pa,
            gap,
            functions,
        } => {
            // The descriptor was left open for us by `on`.
            let target = target(&guest, root)?;
            let lock = target.dir()?.inherited_lock(*lock_fd)?;
            done(collector::run(
                &target,
                lock,
                functions,
                CollectOptions {
                    key_interval: Duration::from_millis(*key_interval_ms),
                    spool_limit: *spool_limit,
                    ..Default::default()
                },
                *text_pa,
                gap,
            ))
        }
    }
}

/// `cmd` without its hidden commands and options: clap_complete's
/// generators would offer them (the libvirt hook's entry point, the
/// collector, the hook's own flags of `on`).
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut c = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        );
    if let Some(v) = cmd.get_version() {
        c = c.version(v.to_string());
    }
    if let Some(a) = cmd.get_about() {
        c = c.about(a.clone());
    }
    c
}

/// `xftrace.1` and `xftrace-COMMAND.1` for every command an operator
/// uses (hidden ones have none), written into `dir`.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let top = Cli::command();
    let version = top.get_version().unwrap_or_default().to_string();
    let mut pages = vec![(PathBuf::from("xftrace.1"), top.clone())];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("xftrace-{}", sub.get_name());
        let mut cmd = sub.clone().name(name.clone()).version(version.clone());
        // The global options, as on the top page.
        for a in top
            .get_arguments()
            .filter(|a| a.is_global_set() && !a.is_hide_set())
        {
            cmd = cmd.arg(a.clone());
        }
        pages.push((PathBuf::from(format!("{name}.1")), cmd));
    }
    let mut written = Vec::new();
    for (file, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| Error::io("cannot render a man page", e))?;
        let path = dir.join(file);
        std::fs::write(&path, out)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

/// What `baseline` traces when given no functions.
pub const DEFAULT_CALL_FLOW: &str = "__x64_sys_*";

/// `xftrace baseline [FUNCTIONS]`
/// `dmesg`: the guest kernel's log, oldest first.
fn dmesg(t: &Target, json: bool) -> Result<Outcome, Error> {
    let g = t.open()?;
    let log = crate::kernel::printk::read(&g.view(&g.kernel))
        .map_err(|e| Error::Guest(format!("{}: {e}", t.describe())))?;
    for r in &log.records {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "seq": r.seq,
                    "time": r.ts_nsec as f64 / 1e9,
                    "level": r.level,
                    "text": String::from_utf8_lossy(&r.text),
                })
            );
        } else {
            println!("{}", r.line());
        }
    }
    if log.unreadable > 0 {
        log::warn!(
            "{} records of the guest's log could not be read (being written, or not as its kernel writes them)",
            log.unreadable
        );
    }
    Ok(Outcome::Done)
}

fn baseline(
    t: &Target,
    functions: &[String],
    seconds: u64,
    depth: u32,
    json: bool,
) -> Result<Outcome, Error> {
    // Every syscall: a hook on any of them shows in its call flow. The
    // guest pays for the trace only while it runs (README, "Performance").
    let defaults = [DEFAULT_CALL_FLOW.to_string()];
    let f = if functions.is_empty() {
        &defaults[..]
    } else {
        functions
    };
    // On a terminal, how far the trace has gone (the baseline itself says
    // nothing until it is over); nothing in a log or a pipe.
    let done = std::sync::atomic::AtomicBool::new(false);
    let b = std::thread::scope(|s| {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) && seconds > 0 {
            s.spawn(|| progress(&done, "baseline: tracing", seconds));
        }
        let b = detect::baseline(t, f, Duration::from_secs(seconds), depth);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        b
    })?;
    let n: usize = b.edges.values().map(|e| e.len()).sum();
    if json {
        println!(
            "{}",
            serde_json::json!({"baseline": {"domain": t.describe(), "functions": b.functions, "edges": n}})
        );
    } else if b.functions.is_empty() {
        println!("baseline: hook inventory and kernel state (a stock kernel: no call flow)");
    } else {
        println!("baseline: {n} call edges of {}", b.functions.join(" "));
    }
    Ok(Outcome::Done)
}

/// `what: N/TOTAL s` on one line of the terminal (stderr), every second
/// until `done`, then the line is cleared; past the total (the guest
/// still answering), the time so far.
fn progress(done: &std::sync::atomic::AtomicBool, what: &str, total: u64) {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut err = std::io::stderr();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let n = start.elapsed().as_secs();
        let _ = if n <= total {
            write!(err, "\r{what}: {n}/{total} s ")
        } else {
            write!(err, "\r{what}: {n} s (finishing) ")
        };
        let _ = err.flush();
        for _ in 0..10 {
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

/// With `--json`, after a check or a watch round: what it found in all,
/// from what it kept for `metrics` (docs/json.md). `new`: the findings a
/// watch round reported (those not reported before).
fn summary(t: &Target, new: Option<usize>) {
    let Some(c) = t
        .dir()
        .ok()
        .and_then(|d| detect::last_check::LastCheck::read(&d))
    else {
        return;
    };
    let n = |sev: &str| c.count(sev);
    println!(
        "{}",
        serde_json::json!({"summary": {
            "domain": t.describe(),
            "time": c.time,
            "duration": c.duration,
            "findings": {"high": n("high"), "medium": n("medium"), "low": n("low")},
            "new": new,
            "clean": n("high") == 0 && n("medium") == 0,
            "failed": c.error,
            "kernel": c.kernel,
        }})
    );
}

/// `xftrace watch --all`: the host's watch service
/// ([`crate::lifecycle::service`]) until a stop signal, which ends it
/// normally (exit 0) once the tracing it started is switched off. Its
/// findings, each round's summary (`--json`), and what it does and cannot
/// do, as they happen; metrics to `textfile` after each round.
fn watch_all(
    g: &GuestArgs,
    root: &Path,
    json: bool,
    interval: Duration,
    trace_seconds: u64,
    textfile: Option<&Path>,
) -> Result<Outcome, Error> {
    use crate::base::escape::escape;
    use crate::lifecycle::service::{self, Event, ServiceOptions};
    if g.domain.is_some() || g.mem_file.is_some() {
        return Err(Error::Input(
            "watch --all follows every domain of the connection: no --domain or --mem-file".into(),
        ));
    }
    let opts = ServiceOptions {
        uri: g.connect.clone(),
        interval,
        check: detect::CheckOptions { trace_seconds },
    };
    let make_target = |name: &str| domain_target(g, root, name);
    let metrics = || write_metrics(root, textfile);
    let event = |what: &str, domain: &str, extra: serde_json::Value| {
        if json {
            let mut o = serde_json::json!({"event": what, "domain": domain});
            if let (Some(o), serde_json::Value::Object(x)) = (o.as_object_mut(), extra) {
                o.extend(x);
            }
            println!("{o}");
        }
    };
    metrics();
    service::run(root, &opts, &make_target, &mut |e| match e {
        Event::Following { domain } => {
            log::info!(target: service::LOG_TARGET, "following domain {}", escape(domain));
            event("following", domain, serde_json::Value::Null);
        }
        Event::Left { domain } => {
            log::info!(
                target: service::LOG_TARGET,
                "domain {} no longer runs here",
                escape(domain)
            );
            event("left", domain, serde_json::Value::Null);
            metrics();
        }
        Event::Tracing { domain, pid } => {
            log::info!(
                target: service::LOG_TARGET,
                "domain {}: tracing started (xftrace on, pid {pid})",
                escape(domain)
            );
            event("tracing", domain, serde_json::json!({"pid": pid}));
        }
        Event::Round { target, new, .. } => {
            for line in detect::report(new, json) {
                println!("{line}");
            }
            if json {
                summary(target, Some(new.len()));
            }
            metrics();
        }
        Event::Failed { domain, error } => {
            match domain {
                Some(d) => log::warn!("domain {}: {error}", escape(d)),
                None => log::warn!("{error}"),
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"domain": domain, "error": error.to_string()})
                );
            }
        }
        Event::Stopped { domain, result } => match result {
            Ok(p) => {
                log::info!(
                    target: service::LOG_TARGET,
                    "domain {}: tracing switched off, trace written to {}",
                    escape(domain),
                    p.display()
                );
                event("stopped", domain, serde_json::json!({"trace": p}));
            }
            Err(e) => {
                log::warn!(
                    "domain {}: could not switch its tracing off: {e}",
                    escape(domain)
                );
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"domain": domain, "error": e.to_string()})
                    );
                }
            }
        },
    })?;
    metrics();
    Ok(Outcome::Done)
}

/// `xftrace metrics` into `textfile`, if one is given: a failure is logged,
/// and the watch goes on.
fn write_metrics(root: &Path, textfile: Option<&Path>) {
    if let Some(p) = textfile {
        let written = crate::report::metrics::render(root)
            .and_then(|m| crate::host::files::write_atomically_readable(p, m.as_bytes()));
        if let Err(e) = written {
            log::warn!("cannot write the metrics to {}: {e}", p.display());
        }
    }
}

/// The target of libvirt domain `name`, with the rest of `g`'s options.
fn domain_target(g: &GuestArgs, root: &Path, name: &str) -> Target {
    Target {
        source: Source::Domain {
            name: name.to_string(),
            uri: g.connect.clone(),
            domains: Arc::new(LibvirtDomains::new(&g.connect)),
        },
        system_map: g.system_map.clone(),
        vmlinux: g.vmlinux.clone(),
        modules: g.modules.clone(),
        state_root: root.to_path_buf(),
    }
}

/// `xftrace check --all`: every running, enrolled domain, in turn. Exit
/// 1 if any has findings; else 2 if any could not be checked (each error
/// said as it happens); else 0.
fn check_all(g: &GuestArgs, root: &Path, json: bool, trace_seconds: u64) -> Result<Outcome, Error> {
    if g.domain.is_some() || g.mem_file.is_some() {
        return Err(Error::Input(
            "check --all checks every domain of the connection: no --domain or --mem-file".into(),
        ));
    }
    let rows = crate::libvirt::connection::Libvirt::connect(&g.connect)?.list()?;
    let chosen: Vec<_> = rows
        .iter()
        .filter(|d| d.running && (d.enrolled || d.problem.is_some()))
        .collect();
    if chosen.is_empty() && !json {
        println!("no running enrolled domain at {}", g.connect);
    }
    let (mut any, mut failed) = (false, Vec::new());
    for d in chosen {
        let name = crate::base::escape::escape(&d.name).into_owned();
        let r = match &d.problem {
            Some(why) => Err(Error::Libvirt(format!(
                "cannot read the definition of {name}: {}",
                crate::base::escape::escape(why)
            ))),
            None => {
                let one = GuestArgs {
                    domain: Some(d.name.clone()),
                    ..g.clone()
                };
                target(&one, root).and_then(|t| check(&t, json, trace_seconds))
            }
        };
        match r {
            Ok(Outcome::Findings) => any = true,
            Ok(_) => {}
            Err(e @ Error::Interrupted { .. }) => return Err(e),
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"domain": d.name, "error": e.to_string(), "exit": 2})
                    );
                } else {
                    eprintln!("xftrace: error: domain {name}: {e}");
                }
                failed.push(name);
            }
        }
    }
    if any {
        return Ok(Outcome::Findings);
    }
    if !failed.is_empty() {
        return Err(Error::Guest(format!(
            "{} domain(s) could not be checked: {}",
            failed.len(),
            failed.join(", ")
        )));
    }
    Ok(Outcome::Clean)
}

/// `xftrace check`
fn check(t: &Target, json: bool, trace_seconds: u64) -> Result<Outcome, Error> {
    let detect::Checked {
        findings: f,
        failed,
        ..
    } = detect::check(t, &detect::CheckOptions { trace_seconds })?;
    for line in detect::report(&f, json) {
        println!("{line}");
    }
    if json {
        summary(t, None);
    }
    // What was found stands; a part that could not run is an error only
    // when nothing else was found (exit 1 outranks exit 2).
    // Low findings (inventory: a module the build does not ship) are shown
    // but leave the check clean.
    let alarming = detect::alarming(&f);
    if let Some(e @ Error::Interrupted { .. }) = failed {
        return Err(e);
    }
    if let Some(e) = failed {
        if !alarming {
            return Err(e);
        }
        eprintln!("xftrace: error: part of the check could not run: {e}");
    }
    if !alarming && !json {
        println!("{}: clean", t.describe());
    }
    Ok(if alarming {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exit_code_policy() {
        let e = || Err(Error::Input("x".into()));
        assert_eq!(exit_code(false, &Ok(Outcome::Done)), 0);
        assert_eq!(exit_code(false, &e()), 3);
        assert_eq!(exit_code(false, &Err(Error::State("x".into()))), 5);
        assert_eq!(exit_code(true, &Ok(Outcome::Clean)), 0);
        assert_eq!(exit_code(true, &Ok(Outcome::Findings)), 1);
        assert_eq!(exit_code(true, &e()), 2);
        let stopped = |signal| {
            Err(Error::Interrupted {
                signal,
                what: "x".into(),
            })
        };
        assert_eq!(exit_code(true, &stopped(libc::SIGINT)), 130);
        assert_eq!(exit_code(false, &stopped(libc::SIGTERM)), 143);
        assert_eq!(exit_code(true, &stopped(libc::SIGHUP)), 129);
    }
}
