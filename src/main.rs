//! The `xftrace` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use xftrace::error::{exit, Error};
use xftrace::guest_memory::Machine;
use xftrace::session::{self, CollectOptions, Target};
use xftrace::state;

/// Trace a KVM guest's kernel from the host, through the file that backs its
/// RAM, without pausing it.
#[derive(Parser, Debug)]
#[command(name = "xftrace", version, about, long_about = None)]
struct Cli {
    /// File backing the guest's RAM (QEMU memory-backend-file, share=on).
    #[arg(long, global = true, value_name = "PATH")]
    mem_file: Option<PathBuf>,

    /// System.map of the kernel the guest runs (from guest-kernel/build.sh).
    #[arg(long, global = true, value_name = "PATH")]
    system_map: Option<PathBuf>,

    /// vmlinux of that kernel, to match its banner exactly
    /// [default: vmlinux beside System.map, if present].
    #[arg(long, global = true, value_name = "PATH")]
    vmlinux: Option<PathBuf>,

    /// QEMU machine type; needed only for guests with 2.75 GiB of RAM or more.
    #[arg(long, global = true, value_enum)]
    machine: Option<Machine>,

    /// QEMU's max-ram-below-4g, if the guest was started with it (bytes).
    #[arg(long, global = true, value_name = "BYTES")]
    max_ram_below_4g: Option<u64>,

    /// Where xftrace keeps per-guest state (0700).
    #[arg(long, global = true, env = "XFTRACE_STATE_DIR", default_value = state::DEFAULT_ROOT)]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
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
    },
    /// Stop tracing, drain the rings and write the trace.
    Off {
        /// Where to write the function_graph trace.
        #[arg(short, long, default_value = "trace_graph.txt")]
        output: PathBuf,
    },
    /// Show the guest's tracer and the collector.
    Status,
    /// Run the collector (started by `on`; not for direct use).
    #[command(hide = true)]
    Collect {
        #[arg(long)]
        lock_fd: i32,
        #[arg(long, default_value_t = 1000)]
        key_interval_ms: u64,
        functions: Vec<String>,
    },
}

fn target(cli: &Cli) -> Result<Target, Error> {
    let mem_file = cli.mem_file.clone().ok_or_else(|| {
        Error::Input("say which guest: --mem-file PATH (the file backing its RAM)".into())
    })?;
    let system_map = cli.system_map.clone().ok_or_else(|| {
        Error::Input(
            "--system-map PATH is required: the System.map of the kernel the guest runs".into(),
        )
    })?;
    Ok(Target {
        mem_file,
        system_map,
        vmlinux: cli.vmlinux.clone(),
        machine: cli.machine,
        max_ram_below_4g: cli.max_ram_below_4g,
    })
}

fn run(cli: Cli) -> Result<(), Error> {
    let t = target(&cli)?;
    match &cli.command {
        Command::On {
            functions,
            key_interval_ms,
            irqs,
        } => session::on(
            &t,
            &cli.state_dir,
            functions,
            CollectOptions {
                key_interval: Duration::from_millis(*key_interval_ms),
                irqs: *irqs,
                ..Default::default()
            },
        ),
        Command::Off { output } => session::off(&t, &cli.state_dir, output).map(|_| ()),
        Command::Status => session::status(&t, &cli.state_dir),
        Command::Collect {
            lock_fd,
            key_interval_ms,
            functions,
        } => {
            // The descriptor was left open for us by `on`.
            let lock = unsafe { state::inherited_lock(*lock_fd) };
            session::collect(
                &t,
                &cli.state_dir,
                lock,
                functions,
                CollectOptions {
                    key_interval: Duration::from_millis(*key_interval_ms),
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xftrace: error: {e}");
            let code = e.exit_code();
            debug_assert_ne!(code, exit::USAGE);
            ExitCode::from(code as u8)
        }
    }
}
