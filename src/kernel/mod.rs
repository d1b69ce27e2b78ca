//! The guest kernel: the trusted build (`symbols`, `vmlinux`, its BTF in
//! `btf`, stored builds in `builds`, what its code may call in `callgraph`,
//! where it patches its own text in `patching`), finding it in guest RAM
//! (`locate`, with an earlier boot's control blocks set aside by `stale`),
//! an opened guest (`guest`), and which guest to open (`target`: a RAM
//! file, or a domain of a manager reached through `target::Domains`, which
//! a higher layer implements; nothing here knows libvirt).

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
