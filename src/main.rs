//! The `xftrace` command: everything it does is in the library (`cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(xftrace::cli::main())
}
