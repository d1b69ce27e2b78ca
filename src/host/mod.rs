//! The host side of xftrace's own files and processes: private, atomic,
//! bounded files (`files`), the per-guest state directory and its lock
//! (`statedir`), and background processes (`process`).

pub mod files;
pub mod process;
pub mod statedir;
