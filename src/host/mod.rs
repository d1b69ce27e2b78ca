//! The host side of xftrace's own files and processes: private, atomic,
//! bounded files (`files`), the per-guest state directory and its lock
//! (`statedir`), background processes (`process`), stop signals
//! (`signals`), and a QEMU monitor reached through its QMP socket (`qmp`).

pub mod files;
pub mod process;
pub mod qmp;
pub mod signals;
pub mod statedir;
