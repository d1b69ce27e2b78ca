//! xftrace: host-side tracing of KVM guest kernels, for rootkit detection,
//! without pausing the guest.
//!
//! The guest kernel (patched by `guest-kernel/`) writes each function_graph
//! event, XORed with a key the host rotates, into rings inside its own image.
//! The host maps the file that backs the guest's RAM and does the rest:
//!
//! | module | job |
//! |---|---|
//! | [`guest_memory`] | guest physical addresses → RAM file; volatile/atomic access |
//! | [`escape`] | guest- and definition-derived text made safe for terminals and files |
//! | [`hostfs`] | private, atomic, bounded host files; no link is ever followed |
//! | [`kernels`] | trusted guest-kernel builds kept in the state directory |
//! | [`spool`] | decoded records on disk, per ring, bounded, streamed back |
//! | [`symbols`] | the trusted System.map: lookups, names users type |
//! | [`kernel`] | find and validate the control block despite KASLR |
//! | [`abi`] | the guest↔host contract of `docs/abi.md` |
//! | [`keys`] | Key Controller and Klog |
//! | [`trace_switch`] | on/off commands through the control block |
//! | [`collect`] | read the rings under their commit protocol |
//! | [`render`] | `trace_graph.txt` in ftrace's function_graph layout |
//! | [`state`] | private per-guest state, collector lock, status |
//! | [`target`] | which guest: a RAM file, or a libvirt domain |
//! | [`libvirt`] | domains, enrollment, RAM files and layout via QEMU's monitor |
//! | [`domain_xml`] | byte-preserving domain XML edits, the hook's decision |
//! | [`hook`] | the libvirt qemu hook (never calls libvirt) |
//! | [`session`] | `on` / `off` / `status` and the background collector |
//! | [`detect`] | findings: control-data and tracer integrity, call flow |
//! | [`paging`] | guest page-table walks (4/5-level) for module memory |
//! | [`vmlinux`] | the trusted build's bytes by link-time address |

pub mod abi;
pub mod detect;
pub mod error;
pub mod escape;
pub mod fuzzing;
pub mod guest;
pub mod host;
pub mod kernel;
pub mod libvirt;
pub mod trace;
