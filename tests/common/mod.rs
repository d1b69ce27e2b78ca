//! Test harness: the patched guest kernel and test rootkits (`kernel`),
//! real QEMU guests (`vm`) with a serial shell (`console`) and QMP (`qmp`),
//! the xftrace binary (`cli`), and a real libvirtd (`libvirtd`).
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod console;
pub mod debian;
pub mod detection;
pub mod kernel;
pub mod libvirtd;
pub mod qmp;
pub mod soak;
pub mod vm;

use std::path::PathBuf;

pub use cli::{
    hook_state, logged, recovered_traces, state_dir, xftrace, xftrace_with_map, Xftrace,
};
pub use console::Console;
pub use kernel::{
    headers_dir, initramfs, kernel_dir, rootkit_initramfs, rootkit_modules, system_map,
};
pub use qmp::{qmp, qmp_status_at};
pub use vm::{accel, serial, Boot, Vm};

/// A free TCP port of 127.0.0.1 (for a guest's console or forwarded ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
