//! The `xftrace` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use xftrace::error::Error;
use xftrace::escape::escape;
use xftrace::guest::memory::Machine;
use xftrace::host::statedir::{self, GuestState};
use xftrace::kernel::target::{Source, Target};
use xftrace::libvirt::connection::{Libvirt, DEFAULT_URI};
use xftrace::trace::session::{self, CollectOptions};
use xftrace::{detect, kernel::builds, libvirt::hook, trace::spool};

/// Trace a KVM guest's kernel from the host, through the file that backs its
/// RAM, without pausing it.
#[derive(Parser, Debug)]
#[command(name = "xftrace", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    guest: GuestArgs,

    /// Where xftrace keeps per-guest state (0700).
    #[arg(long, global = true, env = "XFTRACE_STATE_DIR", default_value = statedir::DEFAULT_ROOT)]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GuestArgs {
    /// The libvirt domain to trace.
    #[arg(
        long,
        short = 'd',
        global = true,
        value_name = "NAME",
        conflicts_with = "mem_file"
    )]
    domain: Option<String>,

    /// libvirt connection URI.
    #[arg(long, short = 'c', global = true, value_name = "URI", default_value = DEFAULT_URI)]
    connect: String,

    /// File backing the guest's RAM (QEMU memory-backend-file, share=on), for guests outside libvirt.
    #[arg(long, global = true, value_name = "PATH")]
    mem_file: Option<PathBuf>,

    /// System.map of the kernel the guest runs (from guest-kernel/build.sh)
    /// [default for domains: the one recorded at enrollment].
    #[arg(long, global = true, value_name = "PATH")]
    system_map: Option<PathBuf>,

    /// vmlinux of that kernel, to match its banner exactly
    /// [default: vmlinux beside System.map, if present].
    #[arg(long, global = true, value_name = "PATH")]
    vmlinux: Option<PathBuf>,

    /// QEMU machine type (--mem-file only); needed for guests with 2.75 GiB of RAM or more.
    #[arg(long, global = true, value_enum)]
    machine: Option<Machine>,

    /// QEMU's max-ram-below-4g, if the guest was started with it (--mem-file only; bytes).
    #[arg(long, global = true, value_name = "BYTES")]
    max_ram_below_4g: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start tracing FUNCTIONS (e.g. sys_openat sys_read) and collecting in the background.
    On {
        /// Functions as users name them: sys_read, read, __x64_sys_read, vfs_read.
        #[arg(required = true, value_name = "FUNCTION")]
        functions: Vec<String>,
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
        /// Most bytes of records to keep for the trace (64 per record);
        /// records past it are counted as lost and the trace says so.
        #[arg(long, env = "XFTRACE_SPOOL_LIMIT", default_value_t = spool::DEFAULT_LIMIT, value_name = "BYTES")]
        spool_limit: u64,
    },
    /// Stop tracing, drain the rings and write the trace.
    Off {
        /// Where to write the function_graph trace.
        #[arg(short, long, default_value = "trace_graph.txt")]
        output: PathBuf,
    },
    /// Show the guest's tracer and the collector.
    Status,
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
    /// Entry point of the libvirt hook (reads the domain XML on stdin).
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
        /// Functions to trace [default: sys_openat sys_read sys_getdents64].
        functions: Vec<String>,
    },
    /// Check the guest once: exit 0 clean, 1 findings, 2 error.
    Check {
        /// One JSON object per finding.
        #[arg(long)]
        json: bool,
        /// Seconds of tracing for the call-flow check against the baseline (0: skip).
        #[arg(long, default_value_t = 3)]
        trace_seconds: u64,
    },
    /// Check continuously, reporting each finding when it appears.
    Watch {
        #[arg(long)]
        json: bool,
        /// Seconds between checks.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Seconds of tracing per call-flow check (0: integrity checks only).
        #[arg(long, default_value_t = 0)]
        trace_seconds: u64,
        /// Stop after this many checks.
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Run the collector (started by `on`; not for direct use).
    #[command(hide = true)]
    Collect {
        #[arg(long)]
        lock_fd: i32,
        #[arg(long, default_value_t = 1000)]
        key_interval_ms: u64,
        #[arg(long, default_value_t = spool::DEFAULT_LIMIT)]
        spool_limit: u64,
        functions: Vec<String>,
    },
}

fn target(g: &GuestArgs, root: &std::path::Path) -> Result<Target, Error> {
    let source = match (&g.domain, &g.mem_file) {
        (Some(name), _) => Source::Domain {
            name: name.clone(),
            uri: g.connect.clone(),
        },
        (None, Some(path)) => Source::MemFile {
            path: path.clone(),
            machine: g.machine,
            max_ram_below_4g: g.max_ram_below_4g,
        },
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
        state_root: root.to_path_buf(),
    })
}

/// The changed lines between two versions of a document.
fn print_change(old: &str, new: &str) {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    if head == a.len() && head == b.len() {
        println!("(no change)");
        return;
    }
    println!("@@ line {} @@", head + 1);
    for l in &a[head..a.len() - tail] {
        println!("-{l}");
    }
    for l in &b[head..b.len() - tail] {
        println!("+{l}");
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let root = &cli.state_dir;
    match &cli.command {
        Command::On {
            functions,
            key_interval_ms,
            irqs,
            wait,
            spool_limit,
        } => session::on_waiting(
            Duration::from_secs(*wait),
            &target(&cli.guest, root)?,
            functions,
            CollectOptions {
                key_interval: Duration::from_millis(*key_interval_ms),
                irqs: *irqs,
                spool_limit: *spool_limit,
                ..Default::default()
            },
        ),
        Command::Off { output } => session::off(&target(&cli.guest, root)?, output).map(|_| ()),
        Command::Status => session::status(&target(&cli.guest, root)?),
        Command::Enroll {
            name,
            dry_run,
            monitor,
        } => {
            let map = cli.guest.system_map.as_ref().ok_or_else(|| {
                Error::Input(format!(
                    "enrolling records the guest kernel's System.map: `xftrace enroll {name} --system-map PATH`"
                ))
            })?;
            let vmlinux = cli.guest.vmlinux.clone().or_else(|| {
                let v = map.with_file_name("vmlinux");
                v.is_file().then_some(v)
            });
            let lv = Libvirt::connect(&cli.guest.connect)?;
            // The domain must exist before anything is copied.
            lv.domain(name)?;
            let stored = builds::store(root, map, vmlinux.as_deref(), *dry_run)?;
            let (old, new) = lv.enroll(name, &stored, monitor, *dry_run)?;
            let name = escape(name);
            if *dry_run {
                print_change(&old, &new);
            } else if old == new {
                println!("{name} is already enrolled");
            } else {
                println!("enrolled {name}: its RAM will be a shared, preallocated file from its next start");
            }
            Ok(())
        }
        Command::Unenroll { name, dry_run } => {
            let lv = Libvirt::connect(&cli.guest.connect)?;
            if let Some(st) = GuestState::existing_domain(root, name) {
                if !*dry_run && st.collector_running()? {
                    let name = escape(name);
                    return Err(Error::State(format!(
                        "{name} is being traced; run `xftrace --domain {name} off` first"
                    )));
                }
            }
            let (old, new) = lv.unenroll(name, *dry_run)?;
            if *dry_run {
                print_change(&old, &new);
            } else {
                println!(
                    "unenrolled {}: its previous memory backing applies from its next start",
                    escape(name)
                );
            }
            Ok(())
        }
        Command::List => {
            let lv = Libvirt::connect(&cli.guest.connect)?;
            println!(
                "{:<24} {:<8} {:<9} {:<8} SYSTEM.MAP",
                "DOMAIN", "STATE", "ENROLLED", "TRACING"
            );
            for d in lv.list()? {
                let tracing = match GuestState::existing_domain(root, &d.name) {
                    Some(st) => st.collector_running()?,
                    None => false,
                };
                println!(
                    "{:<24} {:<8} {:<9} {:<8} {}",
                    escape(&d.name),
                    if d.running { "running" } else { "off" },
                    if d.enrolled { "yes" } else { "no" },
                    if tracing { "yes" } else { "no" },
                    escape(d.system_map.as_deref().unwrap_or("-"))
                );
            }
            Ok(())
        }
        Command::Baseline {
            duration,
            depth,
            functions,
        } => {
            let defaults = ["sys_openat", "sys_read", "sys_getdents64"].map(String::from);
            let f = if functions.is_empty() {
                &defaults[..]
            } else {
                &functions[..]
            };
            let b = detect::baseline(
                &target(&cli.guest, root)?,
                f,
                Duration::from_secs(*duration),
                *depth,
            )?;
            let n: usize = b.edges.values().map(|e| e.len()).sum();
            println!("baseline: {n} call edges of {}", b.functions.join(" "));
            Ok(())
        }
        Command::Check { .. } | Command::Watch { .. } => unreachable!("handled in main"),
        Command::Hook { driver, args } => match driver.as_str() {
            "qemu" => hook::qemu(root, args, &mut std::io::stdin()),
            _ => Ok(()),
        },
        Command::Collect {
            lock_fd,
            key_interval_ms,
            spool_limit,
            functions,
        } => {
            // The descriptor was left open for us by `on`.
            let lock = unsafe { statedir::inherited_lock(*lock_fd) };
            session::collect(
                &target(&cli.guest, root)?,
                lock,
                functions,
                CollectOptions {
                    key_interval: Duration::from_millis(*key_interval_ms),
                    spool_limit: *spool_limit,
                    ..Default::default()
                },
            )
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    // check and watch: 0 clean, 1 findings, 2 error (whatever the error).
    let detection = match &cli.command {
        Command::Check {
            json,
            trace_seconds,
        } => Some(target(&cli.guest, &cli.state_dir).and_then(|t| {
            let f = detect::check(
                &t,
                &detect::CheckOptions {
                    trace_seconds: *trace_seconds,
                },
            )?;
            detect::report(&f, *json);
            if f.is_empty() && !*json {
                println!("{}: clean", t.describe());
            }
            Ok(!f.is_empty())
        })),
        Command::Watch {
            json,
            interval,
            trace_seconds,
            rounds,
        } => Some(target(&cli.guest, &cli.state_dir).and_then(|t| {
            detect::watch(
                &t,
                &detect::CheckOptions {
                    trace_seconds: *trace_seconds,
                },
                Duration::from_secs_f64(interval.max(0.1)),
                *json,
                *rounds,
            )
        })),
        _ => None,
    };
    if let Some(r) = detection {
        return match r {
            Ok(false) => ExitCode::SUCCESS,
            Ok(true) => ExitCode::from(1),
            Err(e) => {
                eprintln!("xftrace: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xftrace: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
