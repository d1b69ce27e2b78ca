//! The guest kernel: the trusted build (`symbols`, `vmlinux`, `builds`),
//! finding it in guest RAM (`locate`), and opening a guest (`target`).

pub mod btf;
pub mod builds;
pub mod callgraph;
pub mod guest;
pub mod locate;
pub mod patching;
pub mod stale;
pub mod symbols;
pub mod target;
pub mod vmlinux;
