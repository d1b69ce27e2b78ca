//! The guest kernel, read from the host.
//!
//! | module | what |
//! |---|---|
//! | [`symbols`], [`vmlinux`], [`btf`], [`builds`] | the trusted build: System.map, the image's sections and relocations, struct layouts, stored builds |
//! | [`bzimage`], [`kallsyms`] | a stock build without its debug package: the vmlinux and KASLR relocations inside a bzImage, and a System.map from the kernel's own symbol table |
//! | [`debian`] | Debian's kernel image packages as the trusted build of a stock guest kernel: the package a banner names, fetched by apt and made into a build |
//! | [`callgraph`] | the calls the build's code can make |
//! | [`dkms`] | the tracer of the `xftrace-dkms` module on a stock kernel: its control block in the module's memory |
//! | [`locate`], [`stale`] | finding the kernel (control block, slide; a stock kernel by its banner and page tables) in guest RAM; kernels of earlier boots |
//! | [`guest`] | an opened guest and the view of one kernel's virtual memory |
//! | [`modules`] | the loaded modules: their list, address tree and sysfs kobjects; who owns an address |
//! | [`modcode`] | a loaded module against the build's `.ko` of its name: the same code, or an impostor |
//! | [`code`] | the code the kernel knows it runs: its text, modules, BPF images, trampolines, kprobe slots |
//! | [`objects`] | the kernel's objects that hold pointers it calls through (inodes, files, sockets, devices, protocols, timers, work, threads), collected by bounded walks |
//! | [`walk`] | bounded walks of the kernel's lists, chains, trees, XArrays and per-CPU variables |
//! | [`patching`], [`text`] | the integrity engine: where the kernel patches its own code, and the guest's code against the build |
//! | [`printk`] | the guest kernel's log (printk's ring buffer) |
//! | [`taint`] | the kernel's and its modules' taint flags |
//! | [`creds`] | credential objects: their IDs, capabilities, user_struct, and the slab cache they come from |
//! | [`tasks`] | the guest's tasks, counted in the task list, the process tree, the PID allocator and the run queues |
//! | [`target`] | which guest to open and opening it: a RAM file, or a domain of a manager reached through `target::Domains`, which a higher layer implements (nothing here knows libvirt) |

pub mod btf;
pub mod builds;
pub mod bzimage;
pub mod callgraph;
pub mod code;
pub mod creds;
pub mod debian;
pub mod dkms;
pub mod guest;
pub mod kallsyms;
pub mod locate;
pub mod modcode;
pub mod modules;
pub mod objects;
pub mod patching;
pub mod printk;
pub mod stale;
pub mod symbols;
pub mod taint;
pub mod target;
pub mod tasks;
pub mod text;
pub mod vmlinux;
pub mod walk;
