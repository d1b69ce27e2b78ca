//! xftrace: host-side tracing of KVM guest kernels, for rootkit detection,
//! without pausing the guest.
//!
//! The guest kernel (patched by `guest-kernel/`) writes each function_graph
//! event, XORed with a key the host rotates, into rings the host can find.
//! The host maps the file that backs the guest's RAM and does the rest.
//!
//! Each folder is one layer, listed bottom first; a layer uses only itself
//! and the layers above it in this table (`tests/layers.rs` keeps it so):
//!
//! | layer | modules | job |
//! |---|---|---|
//! | [`base`] | `error`, `escape` | errors with exit codes (and the one read error of guest memory); guest text made safe to print |
//! | [`abi`] | `header`, `record`, `layout`, `funcs`, `le` | the guest↔host contract of `docs/abi.md`; the only place that computes offsets |
//! | [`host`] | `files`, `statedir`, `process` | private, atomic, bounded host files; the per-guest state directory and its lock; background processes |
//! | [`guest`] | `addr`, `memory`, `paging` | typed addresses (physical, virtual, link-time) and the KASLR slide; guest physical memory through the RAM files; the guest's page tables |
//! | [`kernel`] | `symbols`, `vmlinux`, `btf`, `builds`, `callgraph`, `locate`, `stale`, `guest`, `walk`, `modules`, `patching`, `text`, `target` | the trusted build (System.map, vmlinux, its BTF, stored builds, what its code may call); finding the kernel in RAM and setting aside an earlier boot's; an opened guest and its typed reads; bounded walks of kernel structures and fields by name; the loaded modules; the integrity engine (where the kernel patches its own text, and its code against the build, as differences); which guest to open (a RAM file, or a domain through the `target::Domains` trait, implemented above) |
//! | [`libvirt`] | `connection`, `domain_xml`, `guests`, `hook` | domains, their RAM files and layout via QEMU's monitor; enrollment edits; libvirt's domains as `kernel::target` opens them; the hook's arguments and state files |
//! | [`trace`] | `keys`, `switch`, `rings`, `spool`, `render`, `status`, `session`, `collector` | Klog and keys, on/off, reading the rings, the spool, `trace_graph.txt`, sessions and the collector; prints nothing (sessions return what they did) |
//! | [`detect`] | `checks`, `callflow`, `inventory`, `run` | findings: one file per check of guest memory (no check uses another), call flow against a baseline, the baseline's hook inventory, `check`/`watch`/`baseline`; prints nothing |
//! | [`lifecycle`] | `hook` | a domain's life: the `virsh start` hook, which guards starts and migrations, starts always-on monitoring and resumes interrupted sessions |
//! | [`report`] | `metrics` | what xftrace tells other systems: Prometheus metrics from the state directory |
//! | [`cli`] | `domains`, `logging` | the command line (the only user of `clap`), the only place that prints, its log set-up, and its one exit-code mapping |
//!
//! Besides `crate::` paths, `tests/layers.rs` keeps `clap` in `cli` (and
//! main.rs), libvirt's bindings (`virt`) in `libvirt`, and printing in `cli`.
//!
//! [`testkit`] is test support, compiled only for tests and with the
//! `fuzzing` feature (fuzz targets, benches): synthetic guests and the fuzz
//! harnesses. Nothing else uses it.

pub mod abi;
pub mod base;
pub mod cli;
pub mod detect;
pub mod guest;
pub mod host;
pub mod kernel;
pub mod libvirt;
pub mod lifecycle;
pub mod report;
pub mod trace;

#[cfg(any(test, feature = "fuzzing"))]
pub mod testkit;
