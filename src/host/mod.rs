//! The host side of xftrace's own files and processes: private, atomic,
//! bounded files (`files`), the per-guest state directory and its lock
//! (`statedir`), background processes (`process`), and stop signals
//! (`signals`).

pub mod files;
pub mod process;
pub mod signals;
pub mod statedir;
