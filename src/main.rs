//! The `xftrace` command: everything it does is in the library (`cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    ExitCode::from(xftrace::cli::main())
}
