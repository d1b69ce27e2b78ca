//! The kernel's objects that hold pointers the kernel calls through, walked
//! from the host: each object's operation-table pointers (`i_fop`, `s_op`,
//! `sk_prot`, `netdev_ops`, ...) and callbacks (`sk_data_ready`, a timer's
//! function, a kernel thread's start function, ...). The walks only collect
//! ([`Census`]); judging what a pointer may point at is the checks' work.
//!
//! Two families: [`KernelView::object_operations`] (super blocks and their
//! roots, the dentry trees of pseudo file systems, the proc entry tree,
//! every task's open files and their sockets, network devices, protocol
//! handlers, TTY drivers and line disciplines, executable formats,
//! consoles, character and misc devices) and
//! [`KernelView::deferred_callbacks`] (kernel threads, timers, hrtimers,
//! work items and workers, tasklets, IRQ handlers). Layouts come from the
//! build's BTF; an object class whose layout the build does not describe is
//! named in [`Census::cut`], never skipped silently. The guest writes all
//! of it and may build lists that loop or grow: every walk is bounded, and
//! what a bound cut off is named in [`Census::cut`] too.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashSet;

use crate::kernel::guest::KernelView;
use crate::kernel::walk::{Chain, End, RbTree};

/// Links followed in one census, at most, over all its walks: lists built
/// to loop, or to be long, cannot make it read without end.
pub const MAX_LINKS: usize = 1 << 22;
/// Objects visited in one census, at most.
pub const MAX_OBJECTS: usize = 1 << 18;
/// Pointers collected in one census, at most.
pub const MAX_POINTERS: usize = 1 << 18;
/// Reasons kept in [`Census::cut`], at most: a guest that claims 8192 CPUs
/// whose per-CPU data is unreadable gives one per CPU and walk, which
/// would take a quadratic search to keep unique and fill the log.
pub const MAX_CUT: usize = 64;
/// Dentries read per pseudo file system, at most, and how deep.
const MAX_DENTRIES_PER_SB: usize = 4096;
const MAX_DEPTH: u32 = 4;
/// Open files read per task, at most, and fd slots read in all: a guest
/// that claims huge fd tables for many tasks cannot make the census read
/// without bound.
const MAX_FDS: u64 = 65_536;
const MAX_FD_SLOTS: usize = 1 << 20;
/// Network namespaces followed, at most.
const MAX_NAMESPACES: usize = 1024;
/// `PF_KTHREAD` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;
/// `HRTIMER_MAX_CLOCK_BASES`.
const HRTIMER_BASES: u64 = 8;
/// File systems whose dentry trees are walked beyond their root: those that
/// keep their whole tree in memory, where rootkits hide by swapping the
/// operations of one directory or file.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "debugfs",
    "tracefs",
    "securityfs",
    "devtmpfs",
    "tmpfs",
    "ramfs",
    "rootfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "devpts",
    "configfs",
];

/// What a pointer must lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Points {
    /// An operation table: data defined by the image or a module.
    Table,
    /// Code: a function's entry.
    Code,
    /// A union of either (a proc entry's `seq_ops`/`single_show`).
    TableOrCode,
}

/// One pointer the kernel calls through (or through whose table it calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpPointer {
    /// The object, for people: "the root inode 1 of proc", "socket fd 3 of
    /// pid 1 (init)", "timer on CPU 0". Guest strings escaped.
    pub object: String,
    /// The object's class and the member, stable across boots (no
    /// addresses, PIDs or inode numbers): what a baseline records.
    pub class: String,
    /// The member: "i_fop", "sk_data_ready", "function".
    pub member: &'static str,
    /// Where the pointer is, and what it holds.
    pub at: u64,
    pub value: u64,
    pub points: Points,
}

/// Sockets a census keeps at most (beyond: not kept, the census is full).
pub const MAX_SOCKETS: usize = 1 << 16;

/// A socket the open-files walk met: whose it is, what it is, and the
/// filter attached to it (`SO_ATTACH_FILTER`, `SO_ATTACH_BPF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSeen {
    /// "socket fd 3 of pid 1 (init)" (guest strings escaped).
    pub object: String,
    pub pid: u32,
    /// The owning process's command (escaped).
    pub comm: String,
    /// `sk_family` (`AF_PACKET` 17, `AF_INET` 2, ...), `sk_type`
    /// (`SOCK_RAW` 3, ...), `sk_protocol`.
    pub family: u16,
    pub kind: u16,
    pub protocol: u16,
    pub filter: Option<SocketFilter>,
}

/// A socket's filter: its `bpf_prog`, and what it was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFilter {
    pub prog: u64,
    /// Instructions of the classic BPF program it was attached as (None:
    /// an eBPF program, attached by its file descriptor).
    pub classic: Option<u16>,
    /// Its (translated) eBPF instructions.
    pub len: u32,
    /// The eBPF program's ID (`bpftool prog` shows it; 0 for classic).
    pub id: u32,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_PACKET: u16 = 17;
pub const SOCK_RAW: u16 = 3;
pub const SOCK_PACKET: u16 = 10;

impl SocketSeen {
    /// A socket that sees packets before the protocols do (a raw IP
    /// socket, or any packet socket): where a passive backdoor listens for
    /// its magic packet. A netlink socket is raw too, but carries the
    /// kernel's messages, not the network's (systemd filters several).
    pub fn sees_raw_packets(&self) -> bool {
        self.family == AF_PACKET
            || ((self.family == AF_INET || self.family == AF_INET6)
                && (self.kind == SOCK_RAW || self.kind == SOCK_PACKET))
    }

    /// `packet/raw`, `inet/raw`, `inet6/dgram`, or the numbers.
    pub fn describe(&self) -> String {
        let family = match self.family {
            AF_INET => "inet".to_string(),
            AF_INET6 => "inet6".into(),
            AF_PACKET => "packet".into(),
            1 => "unix".into(),
            16 => "netlink".into(),
            f => format!("family {f}"),
        };
        let kind = match self.kind {
            1 => "stream".to_string(),
            2 => "dgram".into(),
            SOCK_RAW => "raw".into(),
            5 => "seqpacket".into(),
            SOCK_PACKET => "packet".into(),
            k => format!("type {k}"),
        };
        format!("{family}/{kind}")
    }
}

/// What a walk collected, how much it visited, and what it could not see.
#[derive(Debug, Default)]
pub struct Census {
    pub pointers: Vec<OpPointer>,
    /// Every task's sockets (object census only).
    pub sockets: Vec<SocketSeen>,
    /// Where BPF programs the object census met are attached, by program
    /// (`struct bpf_prog` address): the point ("kprobe do_sys_openat2",
    /// "XDP (driver) on device eth0"), and what holds it there ("perf
    /// event fd 4 of pid 90 (x)", "netns 1").
    pub attached: Vec<(u64, String, String)>,
    /// Network devices in promiscuous mode ("eth0 of netns 1").
    pub promiscuous: Vec<String>,
    pub objects: usize,
    /// Object classes not walked, or walked in part, and why (at most
    /// [`MAX_CUT`] reasons and a line saying there were more).
    pub cut: Vec<String>,
    /// The census reached one of its bounds ([`MAX_OBJECTS`],
    /// [`MAX_POINTERS`], [`MAX_LINKS`]): what the guest holds beyond was
    /// not seen.
    pub full: bool,
}

struct Walker<'v, 'a> {
    v: &'v KernelView<'a>,
    out: Census,
    links: usize,
    fd_slots: usize,
}

/// A bounded walk that says why it stopped.
trait Walk: Iterator<Item = u64> {
    fn why(&self) -> End;
}

impl Walk for Chain<'_, '_> {
    fn why(&self) -> End {
        self.end()
    }
}

impl Walk for RbTree<'_, '_> {
    fn why(&self) -> End {
        self.end()
    }
}

impl Walker<'_, '_> {
    fn field(&self, ty: &str, path: &[&str]) -> Option<u64> {
        self.v.field(ty, path)
    }

    /// The offsets of `members` of struct `ty`, with what each must lead to.
    fn members(
        &self,
        ty: &str,
        members: &[(&'static str, Points)],
    ) -> Vec<(Option<u64>, &'static str, Points)> {
        members
            .iter()
            .map(|&(m, p)| (self.field(ty, &[m]), m, p))
            .collect()
    }

    /// Room for `n` more objects (and count them); false once the census
    /// is full, which is noted once.
    fn visit(&mut self) -> bool {
        if self.out.objects >= MAX_OBJECTS || self.out.pointers.len() >= MAX_POINTERS {
            self.out.full = true;
            self.cut_once(format!(
                "the census stopped at {MAX_OBJECTS} objects or {MAX_POINTERS} pointers"
            ));
            return false;
        }
        self.out.objects = self.out.objects.saturating_add(1);
        true
    }

    fn left(&self) -> usize {
        MAX_OBJECTS.saturating_sub(self.out.objects)
    }

    /// The nodes of `walk` up to its end, its first repeated node (a
    /// loop) or the census' budget of links, each noted in `cut`.
    fn collect(&mut self, what: &str, mut walk: impl Walk) -> Vec<u64> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for n in walk.by_ref() {
            self.links = self.links.saturating_add(1);
            if self.links > MAX_LINKS {
                self.out.full = true;
                self.cut_once(format!("the census stopped at {MAX_LINKS} links"));
                return out;
            }
            if !seen.insert(n) {
                self.cut_once(format!("{what}: a loop"));
                return out;
            }
            out.push(n);
        }
        let end = walk.why();
        self.ended(what, end);
        out
    }

    fn cut_once(&mut self, why: String) {
        // One past the bound: the line that says the rest went unsaid.
        let Some(room) = MAX_CUT.checked_sub(self.out.cut.len()) else {
            return;
        };
        if self.out.cut.contains(&why) {
            return;
        }
        self.out.cut.push(if room == 0 {
            format!("more than {MAX_CUT} reasons; the rest are not listed")
        } else {
            why
        });
    }

    /// Note how a walk of `what` ended, if not completely.
    fn ended(&mut self, what: &str, end: End) {
        match end {
            End::Truncated => self.cut_once(format!("{what}: walk stopped at its bound")),
            End::Unreadable(a) => self.cut_once(format!("{what}: a link at {a:#x} unreadable")),
            End::Complete | End::Running => {}
        }
    }

    /// Record the pointer at `obj + off` (when `off` is known and the word
    /// is non-zero).
    fn pointer(
        &mut self,
        object: &dyn Fn() -> String,
        class: &dyn Fn() -> String,
        obj: u64,
        off: Option<u64>,
        member: &'static str,
        points: Points,
    ) -> Option<u64> {
        let at = obj.checked_add(off?)?;
        let value = self.v.read_word(at)?;
        if value != 0 {
            self.out.pointers.push(OpPointer {
                object: object(),
                class: class(),
                member,
                at,
                value,
                points,
            });
        }
        Some(value)
    }

    /// A class whose layout the build lacks.
    fn missing(&mut self, what: &str) {
        self.cut_once(format!("{what}: the build's BTF lacks its layout"));
    }

    fn cstr_at(&self, ptr_at: u64, max: usize) -> String {
        self.v
            .read_word(ptr_at)
            .filter(|&p| p != 0)
            .and_then(|p| self.v.read_cstr(p, max).ok())
            .unwrap_or_else(|| "?".into())
    }

    fn inline_str(&self, at: Option<u64>, max: usize) -> String {
        at.and_then(|a| self.v.read_cstr(a, max).ok())
            .unwrap_or_else(|| "?".into())
    }
}

impl KernelView<'_> {
    /// Operation pointers of the kernel's objects: super blocks, mount
    /// roots, pseudo file systems' dentries and inodes, proc entries, open
    /// files, sockets, network devices, protocol handlers, TTY drivers and
    /// line disciplines, executable formats, consoles, character and misc
    /// devices.
    pub fn object_operations(&self) -> Census {
        let mut w = Walker {
            v: self,
            out: Census::default(),
            links: 0,
            fd_slots: 0,
        };
        super_blocks(&mut w);
        proc_tree(&mut w);
        tasks_files(&mut w);
        net_devices(&mut w);
        protocols(&mut w);
        ttys(&mut w);
        binfmts_consoles(&mut w);
        char_devices(&mut w);
        w.out
    }

    /// Code the kernel runs later on someone's behalf: kernel threads'
    /// start functions, pending timers and hrtimers of every CPU, queued
    /// work items and what each worker runs, tasklets, IRQ handlers.
    pub fn deferred_callbacks(&self) -> Census {
        let mut w = Walker {
            v: self,
            out: Census::default(),
            links: 0,
            fd_slots: 0,
        };
        kthreads(&mut w);
        timers(&mut w);
        hrtimers(&mut w);
        workqueues(&mut w);
        tasklets(&mut w);
        irq_actions(&mut w);
        w.out
    }

    /// The network namespaces: `(struct net, name)`, `init` first where
    /// the list has it.
    pub fn net_namespaces(&self) -> Vec<(u64, String)> {
        let (Some(head), Some(init), Some(l)) = (
            self.sym("net_namespace_list"),
            self.sym("init_net"),
            self.field("net", &["list"]),
        ) else {
            return Vec::new();
        };
        self.list(head, MAX_NAMESPACES)
            .map(|p| {
                let net = p.wrapping_sub(l);
                let name = if net == init {
                    "init".to_string()
                } else {
                    format!("{net:#x}")
                };
                (net, name)
            })
            .collect()
    }
}

/// Every super block (`super_blocks`): its `s_op` and `s_d_op`, its root
/// dentry and inode, and for pseudo file systems their dentry trees.
fn super_blocks(w: &mut Walker) {
    let (Some(head), Some(s_list), Some(s_root), Some(s_type), Some(fs_name)) = (
        w.v.sym("super_blocks"),
        w.field("super_block", &["s_list"]),
        w.field("super_block", &["s_root"]),
        w.field("super_block", &["s_type"]),
        w.field("file_system_type", &["name"]),
    ) else {
        w.missing("super blocks");
        return;
    };
    let (s_op, s_d_op) = (
        w.field("super_block", &["s_op"]),
        w.field("super_block", &["s_d_op"]),
    );
    let list: Vec<u64> = w.collect("super blocks", w.v.list(head, w.left()));
    let mut dentries = 0usize;
    for node in list {
        if !w.visit() {
            return;
        }
        let sb = node.wrapping_sub(s_list);
        let fstype =
            w.v.read_word(sb.wrapping_add(s_type))
                .map(|t| w.cstr_at(t.wrapping_add(fs_name), 32))
                .unwrap_or_else(|| "?".into());
        let obj = || format!("the super block of {fstype} at {sb:#x}");
        let class = || format!("super block of {fstype}");
        w.pointer(&obj, &class, sb, s_op, "s_op", Points::Table);
        w.pointer(&obj, &class, sb, s_d_op, "s_d_op", Points::Table);
        let Some(root) = w.v.read_word(sb.wrapping_add(s_root)).filter(|&r| r != 0) else {
            continue;
        };
        dentry(w, root, &format!("root of {fstype}"), &fstype);
        if PSEUDO.contains(&fstype.as_str()) {
            dentry_tree(w, root, &fstype, &mut dentries);
        }
    }
}

/// A dentry's `d_op` and its inode's operations.
fn dentry(w: &mut Walker, d: u64, name: &str, fstype: &str) {
    let (d_op, d_inode) = (
        w.field("dentry", &["d_op"]),
        w.field("dentry", &["d_inode"]),
    );
    let obj = || format!("the dentry of the {name} at {d:#x}");
    let class = || format!("dentry of {fstype}");
    w.pointer(&obj, &class, d, d_op, "d_op", Points::Table);
    let Some(inode) = d_inode
        .and_then(|o| w.v.read_word(d.wrapping_add(o)))
        .filter(|&i| i != 0)
    else {
        return;
    };
    let ino = w
        .field("inode", &["i_ino"])
        .and_then(|o| w.v.read_word(inode.wrapping_add(o)))
        .unwrap_or(0);
    let obj = || format!("the {name} inode {ino} at {inode:#x}");
    let class = || format!("inode of {fstype}");
    // "the root of proc inode 1" reads badly: say "the root inode 1 of proc".
    let obj_root = || match name.strip_prefix("root of ") {
        Some(fs) => format!("the root inode of {fs} (inode {ino} at {inode:#x})"),
        None => obj(),
    };
    let (i_op, i_fop, i_mapping, a_ops) = (
        w.field("inode", &["i_op"]),
        w.field("inode", &["i_fop"]),
        w.field("inode", &["i_mapping"]),
        w.field("address_space", &["a_ops"]),
    );
    w.pointer(&obj_root, &class, inode, i_op, "i_op", Points::Table);
    let before = w.out.pointers.len();
    let fop = w.pointer(&obj_root, &class, inode, i_fop, "i_fop", Points::Table);
    if fop.is_some_and(|f| f != 0 && free_inode_of(w, inode) == Some(f)) {
        // `i_fop` shares a union with `free_inode`: `destroy_inode` puts
        // the super block's `s_op->free_inode` there until an RCU grace
        // period ends, which on a busy guest outlasts any re-read. No file
        // is opened through a dying inode, and an attacker gains nothing
        // by pointing a live one at a function (an open would jump into
        // its bytes as if they were a table): not a table pointer now.
        log::trace!("{}: being freed", obj());
        w.out.pointers.truncate(before);
    }
    if let Some(mapping) = i_mapping
        .and_then(|o| w.v.read_word(inode.wrapping_add(o)))
        .filter(|&m| m != 0)
    {
        w.pointer(&obj_root, &class, mapping, a_ops, "a_ops", Points::Table);
    }
}

/// `inode->i_sb->s_op->free_inode`: what `i_fop` holds while the inode
/// waits for its RCU grace period to end.
fn free_inode_of(w: &Walker, inode: u64) -> Option<u64> {
    let sb =
        w.v.read_word(inode.checked_add(w.field("inode", &["i_sb"])?)?)?;
    let ops =
        w.v.read_word(sb.checked_add(w.field("super_block", &["s_op"])?)?)?;
    w.v.read_word(ops.checked_add(w.field("super_operations", &["free_inode"])?)?)
        .filter(|&f| f != 0)
}

/// The dentries below `root`, breadth first, to [`MAX_DEPTH`] and
/// [`MAX_DENTRIES_PER_SB`].
fn dentry_tree(w: &mut Walker, root: u64, fstype: &str, total: &mut usize) {
    let (Some(subdirs), Some(child), Some(name)) = (
        w.field("dentry", &["d_subdirs"]),
        w.field("dentry", &["d_child"]),
        w.field("dentry", &["d_name", "name"]),
    ) else {
        w.missing("dentry trees");
        return;
    };
    let mut level = vec![root];
    let mut seen = HashSet::new();
    let mut here = 0usize;
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for d in level {
            let room = MAX_DENTRIES_PER_SB.saturating_sub(here).min(w.left());
            if room == 0 {
                w.cut_once(format!(
                    "dentries of {fstype}: more than {MAX_DENTRIES_PER_SB} read"
                ));
                break;
            }
            let what = format!("dentries of {fstype}");
            let found = w.collect(&what, w.v.list(d.wrapping_add(subdirs), room));
            for c in found {
                let kid = c.wrapping_sub(child);
                if !seen.insert(kid) || !w.visit() {
                    continue;
                }
                here = here.saturating_add(1);
                *total = total.saturating_add(1);
                let n = w.cstr_at(kid.wrapping_add(name), 64);
                dentry(w, kid, &format!("{fstype} entry '{n}'"), fstype);
                next.push(kid);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
}

/// The proc entry trees: `proc_root` and every network namespace's
/// `proc_net` (`/proc/net`), through each entry's `subdir` red-black tree.
fn proc_tree(w: &mut Walker) {
    let (Some(subdir), Some(node), Some(name)) = (
        w.field("proc_dir_entry", &["subdir"]),
        w.field("proc_dir_entry", &["subdir_node"]),
        w.field("proc_dir_entry", &["name"]),
    ) else {
        w.missing("proc entries");
        return;
    };
    let members = w.members(
        "proc_dir_entry",
        &[
            ("proc_iops", Points::Table),
            ("proc_ops", Points::Table),
            ("proc_dops", Points::Table),
            ("seq_ops", Points::TableOrCode),
        ],
    );
    let mut roots = Vec::new();
    if let Some(r) = w.v.sym("proc_root") {
        roots.push((r, "/proc".to_string()));
    }
    if let Some(pn) = w.field("net", &["proc_net"]) {
        for (net, ns) in w.v.net_namespaces() {
            if let Some(p) = w.v.read_word(net.wrapping_add(pn)).filter(|&p| p != 0) {
                roots.push((p, format!("/proc/net of netns {ns}")));
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<(u64, String, u32)> = roots.into_iter().map(|(p, n)| (p, n, 0)).collect();
    while let Some((pde, path, depth)) = stack.pop() {
        if !seen.insert(pde) || !w.visit() {
            continue;
        }
        let obj = || format!("the proc entry {path}");
        let class = || format!("proc entry {path}");
        for &(off, member, points) in &members {
            w.pointer(&obj, &class, pde, off, member, points);
        }
        if depth >= 8 {
            continue;
        }
        let kids: Vec<u64> = w.collect(
            "proc entries",
            w.v.rb_tree(pde.wrapping_add(subdir), w.left()),
        );
        for k in kids {
            let kid = k.wrapping_sub(node);
            let n = w.cstr_at(kid.wrapping_add(name), 64);
            stack.push((kid, format!("{path}/{n}"), depth.saturating_add(1)));
        }
    }
}

/// Every task's open files (`f_op`), and for sockets their operations and
/// callbacks. Threads share their leader's files: each `files_struct` is
/// read once.
fn tasks_files(w: &mut Walker) {
    let (Some(init), Some(tasks), Some(files), Some(fdt), Some(max_fds), Some(fd), Some(f_op)) = (
        w.v.sym("init_task"),
        w.field("task_struct", &["tasks"]),
        w.field("task_struct", &["files"]),
        w.field("files_struct", &["fdt"]),
        w.field("fdtable", &["max_fds"]),
        w.field("fdtable", &["fd"]),
        w.field("file", &["f_op"]),
    ) else {
        w.missing("open files");
        return;
    };
    let socket_fops = w.v.sym("socket_file_ops");
    let perf_fops = w.v.sym("perf_fops");
    let private = w.field("file", &["private_data"]);
    let (pid_off, comm_off) = (
        w.field("task_struct", &["pid"]),
        w.field("task_struct", &["comm"]),
    );
    let mut seen = HashSet::new();
    let all: Vec<u64> = w.collect("tasks", w.v.list(init.wrapping_add(tasks), w.left()));
    for t in all {
        let task = t.wrapping_sub(tasks);
        if !w.visit() {
            return;
        }
        let Some(fs) = w.v.read_word(task.wrapping_add(files)).filter(|&f| f != 0) else {
            continue;
        };
        if !seen.insert(fs) {
            continue;
        }
        let pid = pid_off
            .and_then(|o| w.v.read_u32(task.wrapping_add(o)))
            .unwrap_or(0);
        let comm = w.inline_str(comm_off.map(|o| task.wrapping_add(o)), 16);
        let Some(table) = w.v.read_word(fs.wrapping_add(fdt)) else {
            continue;
        };
        let n =
            w.v.read_u32(table.wrapping_add(max_fds))
                .map_or(0, u64::from)
                .min(MAX_FDS);
        let Some(array) = w.v.read_word(table.wrapping_add(fd)) else {
            continue;
        };
        let Ok(n) = usize::try_from(n) else { continue };
        let n = n.min(MAX_FD_SLOTS.saturating_sub(w.fd_slots));
        w.fd_slots = w.fd_slots.saturating_add(n);
        if n == 0 {
            w.cut_once(format!("open files: more than {MAX_FD_SLOTS} fd slots"));
            return;
        }
        let Some(slots) = w.v.read_words(array, n) else {
            w.cut_once(format!(
                "open files of pid {pid}: the fd array is unreadable"
            ));
            continue;
        };
        for (i, file) in slots.into_iter().enumerate().filter(|(_, f)| *f != 0) {
            if !w.visit() {
                return;
            }
            let obj = || format!("the file fd {i} of pid {pid} ({comm})");
            let class = || "open file".to_string();
            let op = w.pointer(&obj, &class, file, Some(f_op), "f_op", Points::Table);
            if op.is_some() && op == perf_fops {
                if let Some(ev) = private
                    .and_then(|o| w.v.read_word(file.wrapping_add(o)))
                    .filter(|&e| e != 0)
                {
                    perf_event(w, ev, &format!("perf event fd {i} of pid {pid} ({comm})"));
                }
            }
            if op.is_some() && op == socket_fops {
                if let Some(sock) = private
                    .and_then(|o| w.v.read_word(file.wrapping_add(o)))
                    .filter(|&s| s != 0)
                {
                    socket(
                        w,
                        sock,
                        &format!("socket fd {i} of pid {pid} ({comm})"),
                        pid,
                        &comm,
                    );
                }
            }
        }
    }
}

/// A perf event with a BPF program attached (`PERF_EVENT_IOC_SET_BPF`):
/// the kprobe, uprobe or tracepoint it fires on, from its trace event.
fn perf_event(w: &mut Walker, ev: u64, name: &str) {
    let (Some(o_prog), Some(o_tp), Some(o_flags), Some(o_name)) = (
        w.field("perf_event", &["prog"]),
        w.field("perf_event", &["tp_event"]),
        w.field("trace_event_call", &["flags"]),
        w.field("trace_event_call", &["name"]),
    ) else {
        return;
    };
    let Some(prog) = w.v.read_word(ev.wrapping_add(o_prog)).filter(|&p| p != 0) else {
        return;
    };
    if w.out.attached.len() >= MAX_SOCKETS {
        w.out.full = true;
        return;
    }
    let call = w.v.read_word(ev.wrapping_add(o_tp)).filter(|&c| c != 0);
    let flag = |n: &str| {
        w.v.btf
            .and_then(|b| b.enumerator(n))
            .and_then(|v| u32::try_from(v).ok())
    };
    let what = call.and_then(|c| {
        let flags = w.v.read_u32(c.wrapping_add(o_flags))?;
        let is = |n: &str| flag(n).is_some_and(|f| flags & f != 0);
        let ptr = w.v.read_word(c.wrapping_add(o_name))?;
        if is("TRACE_EVENT_FL_TRACEPOINT") {
            // A tracepoint event names its `struct tracepoint`.
            let tp_name = w.field("tracepoint", &["name"])?;
            let s = w.v.read_word(ptr.checked_add(tp_name)?)?;
            return Some(format!("tracepoint {}", w.v.read_cstr(s, 128).ok()?));
        }
        let kind = if is("TRACE_EVENT_FL_KPROBE") {
            "kprobe"
        } else if is("TRACE_EVENT_FL_UPROBE") {
            "uprobe"
        } else {
            "trace event"
        };
        Some(format!("{kind} {}", w.v.read_cstr(ptr, 128).ok()?))
    });
    w.out.attached.push((
        prog,
        what.unwrap_or_else(|| "a perf event".into()),
        name.to_string(),
    ));
}

/// A `struct socket`: its `ops`, its `sock`'s protocol and callbacks,
/// and what it is with its filter (kept in the census's sockets).
fn socket(w: &mut Walker, sock: u64, name: &str, pid: u32, comm: &str) {
    if !w.visit() {
        return;
    }
    let obj = || format!("the {name}");
    let class = || "socket".to_string();
    w.pointer(
        &obj,
        &class,
        sock,
        w.field("socket", &["ops"]),
        "ops",
        Points::Table,
    );
    let Some(sk) = w
        .field("socket", &["sk"])
        .and_then(|o| w.v.read_word(sock.wrapping_add(o)))
        .filter(|&s| s != 0)
    else {
        return;
    };
    let prot = w.field("sock", &["__sk_common", "skc_prot"]);
    w.pointer(&obj, &class, sk, prot, "sk_prot", Points::Table);
    let callbacks = w.members(
        "sock",
        &[
            ("sk_data_ready", Points::Code),
            ("sk_state_change", Points::Code),
            ("sk_write_space", Points::Code),
            ("sk_error_report", Points::Code),
            ("sk_backlog_rcv", Points::Code),
            ("sk_destruct", Points::Code),
        ],
    );
    for (off, member, points) in callbacks {
        w.pointer(&obj, &class, sk, off, member, points);
    }
    if w.out.sockets.len() >= MAX_SOCKETS {
        w.out.full = true;
        return;
    }
    let u16_at = |w: &Walker, ty: &str, path: &[&str], base: u64| {
        let off = w.field(ty, path)?;
        let mut b = [0u8; 2];
        w.v.read_bytes(base.checked_add(off)?, &mut b).ok()?;
        Some(u16::from_le_bytes(b))
    };
    let filter = w
        .field("sock", &["sk_filter"])
        .and_then(|o| w.v.read_word(sk.checked_add(o)?))
        .filter(|&f| f != 0)
        .and_then(|f| {
            let prog =
                w.v.read_word(f.checked_add(w.field("sk_filter", &["prog"])?)?)?;
            let at = |path: &str| prog.checked_add(w.field("bpf_prog", &[path])?);
            let len = w.v.read_u32(at("len")?)?;
            let classic =
                w.v.read_word(at("orig_prog")?)
                    .filter(|&o| o != 0)
                    .and_then(|o| u16_at(w, "sock_fprog_kern", &["len"], o));
            let id =
                w.v.read_word(at("aux")?)
                    .filter(|&a| a != 0)
                    .and_then(|a| {
                        w.v.read_u32(a.checked_add(w.field("bpf_prog_aux", &["id"])?)?)
                    })
                    .unwrap_or(0);
            Some(SocketFilter {
                prog,
                classic,
                len,
                id,
            })
        });
    let seen = SocketSeen {
        object: name.to_string(),
        pid,
        comm: comm.to_string(),
        family: u16_at(w, "sock", &["__sk_common", "skc_family"], sk).unwrap_or(0),
        kind: u16_at(w, "sock", &["sk_type"], sk).unwrap_or(0),
        protocol: u16_at(w, "sock", &["sk_protocol"], sk).unwrap_or(0),
        filter,
    };
    w.out.sockets.push(seen);
}

/// Network devices of every namespace: their operation tables and receive
/// handler.
fn net_devices(w: &mut Walker) {
    let (Some(base), Some(dev_list), Some(name)) = (
        w.field("net", &["dev_base_head"]),
        w.field("net_device", &["dev_list"]),
        w.field("net_device", &["name"]),
    ) else {
        w.missing("network devices");
        return;
    };
    let members = w.members(
        "net_device",
        &[
            ("netdev_ops", Points::Table),
            ("ethtool_ops", Points::Table),
            ("header_ops", Points::Table),
            ("rx_handler", Points::Code),
        ],
    );
    let ptype_all = w.field("net_device", &["ptype_all"]);
    for (net, ns) in w.v.net_namespaces() {
        let devs: Vec<u64> = w.collect(
            "network devices",
            w.v.list(net.wrapping_add(base), w.left()),
        );
        for d in devs {
            if !w.visit() {
                return;
            }
            let dev = d.wrapping_sub(dev_list);
            let n = w.inline_str(Some(dev.wrapping_add(name)), 16);
            let obj = || format!("the network device {n} of netns {ns}");
            let class = || format!("network device {n}");
            for &(off, member, points) in &members {
                w.pointer(&obj, &class, dev, off, member, points);
            }
            if let Some(p) = ptype_all {
                packet_handlers(w, dev.wrapping_add(p), &format!("of device {n}"));
            }
            xdp(w, dev, &n, &format!("netns {ns}"));
        }
    }
}

/// A network device's XDP programs (generic, driver, offloaded) and
/// whether it is in promiscuous mode.
fn xdp(w: &mut Walker, dev: u64, name: &str, ns: &str) {
    if let Some(p) = w.field("net_device", &["promiscuity"]) {
        if w.v.read_u32(dev.wrapping_add(p)).is_some_and(|n| n > 0)
            && w.out.promiscuous.len() < MAX_SOCKETS
        {
            w.out.promiscuous.push(format!("{name} of {ns}"));
        }
    }
    let mut progs = Vec::new();
    if let Some(o) = w.field("net_device", &["xdp_prog"]) {
        progs.push((dev.wrapping_add(o), "generic"));
    }
    if let (Some(o), Some(size), Some(p)) = (
        w.field("net_device", &["xdp_state"]),
        w.v.btf.and_then(|b| b.size_of("bpf_xdp_entity")),
        w.field("bpf_xdp_entity", &["prog"]),
    ) {
        // XDP_MODE_SKB, XDP_MODE_DRV, XDP_MODE_HW (`__MAX_XDP_MODE` 3).
        for (i, mode) in ["generic", "driver", "offloaded"].into_iter().enumerate() {
            let at = (i as u64)
                .checked_mul(size)
                .and_then(|x| x.checked_add(o))
                .and_then(|x| x.checked_add(p));
            if let Some(at) = at {
                progs.push((dev.wrapping_add(at), mode));
            }
        }
    }
    // The generic program is in both places: named once.
    let mut seen = Vec::new();
    for (at, mode) in progs {
        if let Some(prog) = w.v.read_word(at).filter(|&p| p != 0 && !seen.contains(&p)) {
            seen.push(prog);
            if w.out.attached.len() < MAX_SOCKETS {
                w.out.attached.push((
                    prog,
                    format!("XDP ({mode}) on device {name}"),
                    ns.to_string(),
                ));
            }
        }
    }
}

/// `struct packet_type`s on the list at `head`: their `func`.
fn packet_handlers(w: &mut Walker, head: u64, whose: &str) {
    let (Some(list), Some(func), Some(ty)) = (
        w.field("packet_type", &["list"]),
        w.field("packet_type", &["func"]),
        w.field("packet_type", &["type"]),
    ) else {
        w.missing("packet handlers");
        return;
    };
    let all: Vec<u64> = w.collect("packet handlers", w.v.list(head, w.left()));
    for p in all {
        if !w.visit() {
            return;
        }
        let pt = p.wrapping_sub(list);
        let proto =
            w.v.read_u32(pt.wrapping_add(ty))
                .map_or(0, |t| (t as u16).swap_bytes());
        let obj = || format!("the packet handler (type {proto:#06x}) {whose}");
        let class = || format!("packet handler type {proto:#06x}");
        w.pointer(&obj, &class, pt, Some(func), "func", Points::Code);
    }
}

/// Protocol handlers: `inet_protos[]` (and their handlers), `ptype_all`,
/// `ptype_base[]`, and every registered `struct proto` (`proto_list`).
fn protocols(w: &mut Walker) {
    if let (Some(arr), Some(n)) = (
        w.v.sym("inet_protos"),
        w.v.map().extent("inet_protos").map(|e| e / 8),
    ) {
        let handler = w.field("net_protocol", &["handler"]);
        let err = w.field("net_protocol", &["err_handler"]);
        let words = usize::try_from(n.min(256))
            .ok()
            .and_then(|n| w.v.read_words(arr, n));
        match words {
            Some(words) => {
                for (i, p) in words.into_iter().enumerate().filter(|(_, p)| *p != 0) {
                    if !w.visit() {
                        return;
                    }
                    let at = arr.wrapping_add((i as u64).wrapping_mul(8));
                    let obj = || format!("inet_protos[{i}]");
                    let class = || format!("inet_protos[{i}]");
                    w.out.pointers.push(OpPointer {
                        object: obj(),
                        class: class(),
                        member: "entry",
                        at,
                        value: p,
                        points: Points::Table,
                    });
                    w.pointer(&obj, &class, p, handler, "handler", Points::Code);
                    w.pointer(&obj, &class, p, err, "err_handler", Points::Code);
                }
            }
            None => w.cut_once("inet_protos: unreadable".into()),
        }
    }
    if let Some(all) = w.v.sym("ptype_all") {
        packet_handlers(w, all, "for every protocol (ptype_all)");
    }
    if let (Some(base), Some(n)) = (
        w.v.sym("ptype_base"),
        w.v.map().extent("ptype_base").map(|e| e / 16),
    ) {
        for i in 0..n.min(64) {
            packet_handlers(w, base.wrapping_add(i.wrapping_mul(16)), "(ptype_base)");
        }
    }
    if let (Some(head), Some(node), Some(name)) = (
        w.v.sym("proto_list"),
        w.field("proto", &["node"]),
        w.field("proto", &["name"]),
    ) {
        let all: Vec<u64> = w.collect("protocols", w.v.list(head, w.left()));
        for p in all {
            if !w.visit() {
                return;
            }
            let proto = p.wrapping_sub(node);
            let n = w.inline_str(Some(proto.wrapping_add(name)), 32);
            w.out.pointers.push(OpPointer {
                object: format!("the protocol {n} on proto_list"),
                class: format!("protocol {n}"),
                member: "struct proto",
                at: p,
                value: proto,
                points: Points::Table,
            });
        }
    }
}

/// TTY drivers (`tty_drivers`) and line disciplines (`tty_ldiscs[]`).
fn ttys(w: &mut Walker) {
    if let (Some(head), Some(l), Some(ops), Some(name)) = (
        w.v.sym("tty_drivers"),
        w.field("tty_driver", &["tty_drivers"]),
        w.field("tty_driver", &["ops"]),
        w.field("tty_driver", &["name"]),
    ) {
        let all: Vec<u64> = w.collect("tty drivers", w.v.list(head, w.left()));
        for p in all {
            if !w.visit() {
                return;
            }
            let drv = p.wrapping_sub(l);
            let n = w.cstr_at(drv.wrapping_add(name), 32);
            let obj = || format!("the tty driver {n}");
            let class = || format!("tty driver {n}");
            w.pointer(&obj, &class, drv, Some(ops), "ops", Points::Table);
        }
    }
    if let (Some(arr), Some(n)) = (
        w.v.sym("tty_ldiscs"),
        w.v.map().extent("tty_ldiscs").map(|e| e / 8),
    ) {
        let Some(words) = usize::try_from(n.min(64))
            .ok()
            .and_then(|n| w.v.read_words(arr, n))
        else {
            w.cut_once("tty_ldiscs: unreadable".into());
            return;
        };
        for (i, p) in words.into_iter().enumerate().filter(|(_, p)| *p != 0) {
            w.out.pointers.push(OpPointer {
                object: format!("tty_ldiscs[{i}]"),
                class: format!("tty_ldiscs[{i}]"),
                member: "entry",
                at: arr.wrapping_add((i as u64).wrapping_mul(8)),
                value: p,
                points: Points::Table,
            });
        }
    }
}

/// Executable formats (`formats`: `struct linux_binfmt`, each itself a
/// table of loaders) and console drivers (`console_drivers`, each a
/// `struct console` with its functions inline).
fn binfmts_consoles(w: &mut Walker) {
    if let (Some(head), Some(lh)) = (w.v.sym("formats"), w.field("linux_binfmt", &["lh"])) {
        let all = w.collect("executable formats", w.v.list(head, w.left()));
        for (i, p) in all.into_iter().enumerate() {
            if !w.visit() {
                return;
            }
            w.out.pointers.push(OpPointer {
                object: format!("the executable format {i} on formats"),
                class: "executable format".into(),
                member: "struct linux_binfmt",
                at: p,
                value: p.wrapping_sub(lh),
                points: Points::Table,
            });
        }
    }
    if let (Some(head), Some(next), Some(name)) = (
        w.v.sym("console_drivers"),
        w.field("console", &["next"]),
        w.field("console", &["name"]),
    ) {
        let members = w.members(
            "console",
            &[
                ("write", Points::Code),
                ("read", Points::Code),
                ("device", Points::Code),
                ("setup", Points::Code),
            ],
        );
        let all = w.collect("consoles", w.v.chain_at(head, next, 0, w.left()));
        for c in all {
            if !w.visit() {
                return;
            }
            let n = w.inline_str(Some(c.wrapping_add(name)), 16);
            let obj = || format!("the console {n}");
            let class = || format!("console {n}");
            for &(off, member, points) in &members {
                w.pointer(&obj, &class, c, off, member, points);
            }
        }
    }
}

/// Character devices: every region of `cdev_map` (`struct kobj_map`, 255
/// hash chains of `struct probe`) with its `get` callback and, for a
/// `struct cdev`, its `ops`; and every misc device (`misc_list`), `fops`.
fn char_devices(w: &mut Walker) {
    if let Some(map) =
        w.v.sym("cdev_map")
            .and_then(|a| w.v.read_word(a))
            .filter(|&m| m != 0)
    {
        // `struct probe` is local to drivers/base/map.c: its layout from
        // the BTF where the names agree, else 6.1's on x86-64.
        let named = ["next", "dev", "range", "owner", "get", "lock", "data"]
            .iter()
            .all(|m| w.field("probe", &[m]).is_some());
        let at = |m: &str, fallback: u64| {
            if named {
                w.field("probe", &[m]).unwrap_or(fallback)
            } else {
                fallback
            }
        };
        let (next, dev, get, data) = (at("next", 0), at("dev", 8), at("get", 32), at("data", 48));
        let exact = w.v.sym("exact_match");
        let ops = w.field("cdev", &["ops"]);
        match w.v.read_words(map, 255) {
            None => w.cut_once("character devices: cdev_map unreadable".into()),
            Some(heads) => {
                for head in heads.into_iter().filter(|&h| h != 0) {
                    let probes = w.collect("character devices", w.v.chain(head, next, 0, w.left()));
                    for p in probes {
                        if !w.visit() {
                            return;
                        }
                        let d = w.v.read_u32(p.wrapping_add(dev)).unwrap_or(0);
                        let (major, minor) = (d >> 20, d & 0xf_ffff);
                        let obj = || format!("the character device {major}:{minor}");
                        let class = || format!("character device {major}");
                        let g = w.pointer(&obj, &class, p, Some(get), "get", Points::Code);
                        if g.is_some() && g == exact {
                            if let Some(cdev) =
                                w.v.read_word(p.wrapping_add(data)).filter(|&c| c != 0)
                            {
                                w.pointer(&obj, &class, cdev, ops, "ops", Points::Table);
                            }
                        }
                    }
                }
            }
        }
    }
    if let (Some(head), Some(list), Some(fops), Some(minor)) = (
        w.v.sym("misc_list"),
        w.field("miscdevice", &["list"]),
        w.field("miscdevice", &["fops"]),
        w.field("miscdevice", &["minor"]),
    ) {
        let all = w.collect("misc devices", w.v.list(head, w.left()));
        for p in all {
            if !w.visit() {
                return;
            }
            let m = p.wrapping_sub(list);
            let n = w.v.read_u32(m.wrapping_add(minor)).unwrap_or(0);
            let obj = || format!("the misc device (minor {n})");
            let class = || format!("misc device {n}");
            w.pointer(&obj, &class, m, Some(fops), "fops", Points::Table);
        }
    }
}

/// Kernel threads' start functions (`struct kthread`'s `threadfn`, reached
/// through `task_struct.worker_private`).
fn kthreads(w: &mut Walker) {
    let (Some(init), Some(tasks), Some(flags), Some(private), Some(threadfn)) = (
        w.v.sym("init_task"),
        w.field("task_struct", &["tasks"]),
        w.field("task_struct", &["flags"]),
        w.field("task_struct", &["worker_private"]),
        w.field("kthread", &["threadfn"]),
    ) else {
        w.missing("kernel threads");
        return;
    };
    let (pid_off, comm_off) = (
        w.field("task_struct", &["pid"]),
        w.field("task_struct", &["comm"]),
    );
    let all: Vec<u64> = w.collect("tasks", w.v.list(init.wrapping_add(tasks), w.left()));
    for t in all {
        if !w.visit() {
            return;
        }
        let task = t.wrapping_sub(tasks);
        if w.v
            .read_u32(task.wrapping_add(flags))
            .is_none_or(|f| f & PF_KTHREAD == 0)
        {
            continue;
        }
        let Some(k) =
            w.v.read_word(task.wrapping_add(private))
                .filter(|&k| k != 0)
        else {
            continue;
        };
        let pid = pid_off
            .and_then(|o| w.v.read_u32(task.wrapping_add(o)))
            .unwrap_or(0);
        let comm = w.inline_str(comm_off.map(|o| task.wrapping_add(o)), 16);
        let obj = || format!("the kernel thread {pid} ({comm})");
        let class = || format!("kernel thread {comm}");
        w.pointer(&obj, &class, k, Some(threadfn), "threadfn", Points::Code);
    }
}

/// Pending timers of every CPU: each `timer_bases` wheel's `vectors`.
/// A delayed work item's timer is followed to the work's function.
fn timers(w: &mut Walker) {
    let Some(btf) = w.v.btf else {
        w.missing("timers");
        return;
    };
    let (Some(bases), Some(vectors), Some(entry), Some(function), Some(base_size)) = (
        w.v.map().addr("timer_bases"),
        w.field("timer_base", &["vectors"]),
        w.field("timer_list", &["entry"]),
        w.field("timer_list", &["function"]),
        btf.size_of("timer_base").filter(|&s| s > 0),
    ) else {
        w.missing("timers");
        return;
    };
    let nbases =
        w.v.map()
            .extent("timer_bases")
            .and_then(|e| e.checked_div(base_size))
            .unwrap_or(1)
            .clamp(1, 4);
    let heads = base_size.saturating_sub(vectors) / 8;
    let delayed = (
        w.v.sym("delayed_work_timer_fn"),
        w.field("delayed_work", &["timer"]),
        w.field("delayed_work", &["work", "func"]),
    );
    let kdelayed = (
        w.v.sym("kthread_delayed_work_timer_fn"),
        w.field("kthread_delayed_work", &["timer"]),
        w.field("kthread_delayed_work", &["work", "func"]),
    );
    for (cpu, base0) in w.v.per_cpu(bases).unwrap_or_default() {
        for b in 0..nbases {
            let base = base0.wrapping_add(b.wrapping_mul(base_size));
            let Some(first) = usize::try_from(heads)
                .ok()
                .and_then(|n| w.v.read_words(base.wrapping_add(vectors), n))
            else {
                w.cut_once(format!("timers of CPU {cpu}: the wheel is unreadable"));
                continue;
            };
            for head in first.into_iter().filter(|&h| h != 0) {
                let nodes: Vec<u64> = w.collect("timers", w.v.chain(head, 0, 0, w.left()));
                for n in nodes {
                    if !w.visit() {
                        return;
                    }
                    let timer = n.wrapping_sub(entry);
                    let obj = || format!("a timer on CPU {cpu}");
                    let class = || "timer".to_string();
                    let f = w.pointer(
                        &obj,
                        &class,
                        timer,
                        Some(function),
                        "function",
                        Points::Code,
                    );
                    for (fun, t_off, func_off) in [delayed, kdelayed] {
                        if let (Some(fun), Some(t_off), Some(func_off)) = (fun, t_off, func_off) {
                            if f == Some(fun) {
                                let work = timer.wrapping_sub(t_off);
                                let obj = || format!("a delayed work item (timer on CPU {cpu})");
                                let class = || "delayed work".to_string();
                                w.pointer(&obj, &class, work, Some(func_off), "func", Points::Code);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Pending hrtimers of every CPU: each clock base's `active` queue.
fn hrtimers(w: &mut Walker) {
    let Some(btf) = w.v.btf else {
        w.missing("hrtimers");
        return;
    };
    let (Some(bases), Some(clock_base), Some(active), Some(node), Some(function), Some(stride)) = (
        w.v.map().addr("hrtimer_bases"),
        w.field("hrtimer_cpu_base", &["clock_base"]),
        w.field("hrtimer_clock_base", &["active"]),
        w.field("hrtimer", &["node", "node"]),
        w.field("hrtimer", &["function"]),
        btf.size_of("hrtimer_clock_base").filter(|&s| s > 0),
    ) else {
        w.missing("hrtimers");
        return;
    };
    for (cpu, base) in w.v.per_cpu(bases).unwrap_or_default() {
        for i in 0..HRTIMER_BASES {
            let root = base
                .wrapping_add(clock_base)
                .wrapping_add(i.wrapping_mul(stride))
                .wrapping_add(active);
            let nodes: Vec<u64> = w.collect("hrtimers", w.v.rb_tree(root, w.left()));
            for n in nodes {
                if !w.visit() {
                    return;
                }
                let timer = n.wrapping_sub(node);
                let obj = || format!("an hrtimer on CPU {cpu}");
                let class = || "hrtimer".to_string();
                w.pointer(
                    &obj,
                    &class,
                    timer,
                    Some(function),
                    "function",
                    Points::Code,
                );
            }
        }
    }
}

/// Work items queued on every CPU's worker pools and the unbound pools,
/// and the function each of their workers is running now.
fn workqueues(w: &mut Walker) {
    let Some(btf) = w.v.btf else {
        w.missing("work items");
        return;
    };
    let (Some(worklist), Some(entry), Some(func), Some(pool_size)) = (
        w.field("worker_pool", &["worklist"]),
        w.field("work_struct", &["entry"]),
        w.field("work_struct", &["func"]),
        btf.size_of("worker_pool").filter(|&s| s > 0),
    ) else {
        w.missing("work items");
        return;
    };
    let workers = (
        w.field("worker_pool", &["workers"]),
        w.field("worker", &["node"]),
        w.field("worker", &["current_func"]),
    );
    let mut pools = Vec::new();
    if let Some(p) = w.v.map().addr("cpu_worker_pools") {
        let n =
            w.v.map()
                .extent("cpu_worker_pools")
                .and_then(|e| e.checked_div(pool_size))
                .unwrap_or(2)
                .clamp(1, 4);
        for (cpu, base) in w.v.per_cpu(p).unwrap_or_default() {
            for i in 0..n {
                pools.push((
                    base.wrapping_add(i.wrapping_mul(pool_size)),
                    format!("CPU {cpu}"),
                ));
            }
        }
    }
    if let (Some(hash), Some(n), Some(node)) = (
        w.v.sym("unbound_pool_hash"),
        w.v.map().extent("unbound_pool_hash").map(|e| e / 8),
        w.field("worker_pool", &["hash_node"]),
    ) {
        for i in 0..n.min(1024) {
            let head = hash.wrapping_add(i.wrapping_mul(8));
            let found: Vec<u64> = w.collect("unbound worker pools", w.v.chain_at(head, 0, 0, 1024));
            pools.extend(
                found
                    .into_iter()
                    .map(|p| (p.wrapping_sub(node), "unbound".to_string())),
            );
        }
    }
    for (pool, whose) in pools {
        let items: Vec<u64> = w.collect(
            "work items",
            w.v.list(pool.wrapping_add(worklist), w.left()),
        );
        for it in items {
            if !w.visit() {
                return;
            }
            let work = it.wrapping_sub(entry);
            let obj = || format!("a work item queued on a {whose} worker pool");
            let class = || "work item".to_string();
            w.pointer(&obj, &class, work, Some(func), "func", Points::Code);
        }
        if let (Some(ws), Some(node), Some(cur)) = workers {
            let all: Vec<u64> = w.collect("workers", w.v.list(pool.wrapping_add(ws), w.left()));
            for n in all {
                if !w.visit() {
                    return;
                }
                let worker = n.wrapping_sub(node);
                let obj = || format!("a worker of a {whose} pool running a work item");
                let class = || "running work item".to_string();
                w.pointer(
                    &obj,
                    &class,
                    worker,
                    Some(cur),
                    "current_func",
                    Points::Code,
                );
            }
        }
    }
}

/// Tasklets scheduled on every CPU (`tasklet_vec`, `tasklet_hi_vec`).
fn tasklets(w: &mut Walker) {
    let (Some(next), Some(func)) = (
        w.field("tasklet_struct", &["next"]),
        w.field("tasklet_struct", &["func"]),
    ) else {
        w.missing("tasklets");
        return;
    };
    for vec in ["tasklet_vec", "tasklet_hi_vec"] {
        // Per-CPU variables: System.map's value, which KASLR does not move.
        let Some(v) = w.v.map().addr(vec) else {
            continue;
        };
        for (cpu, head) in w.v.per_cpu(v).unwrap_or_default() {
            let all: Vec<u64> = w.collect("tasklets", w.v.chain_at(head, next, 0, w.left()));
            for t in all {
                if !w.visit() {
                    return;
                }
                let obj = || format!("a tasklet on CPU {cpu}");
                let class = || "tasklet".to_string();
                w.pointer(&obj, &class, t, Some(func), "func", Points::Code);
            }
        }
    }
}

/// IRQ handlers: every `irq_desc` of `irq_desc_tree` and its chain of
/// `irqaction`s (`handler`, `thread_fn`).
fn irq_actions(w: &mut Walker) {
    let (Some(tree), Some(action), Some(next), Some(handler), Some(thread_fn), Some(name)) = (
        w.v.sym("irq_desc_tree"),
        w.field("irq_desc", &["action"]),
        w.field("irqaction", &["next"]),
        w.field("irqaction", &["handler"]),
        w.field("irqaction", &["thread_fn"]),
        w.field("irqaction", &["name"]),
    ) else {
        w.missing("IRQ handlers");
        return;
    };
    let irq = w.field("irqaction", &["irq"]);
    // A radix tree is an XArray: its entries hang from `xa_head`.
    let head = tree.wrapping_add(w.field("xarray", &["xa_head"]).unwrap_or(8));
    let (descs, end) = w.v.xarray(head, w.left());
    w.ended("IRQ descriptors", end);
    for d in descs {
        if !w.visit() {
            return;
        }
        let all: Vec<u64> = w.collect(
            "IRQ actions",
            w.v.chain_at(d.wrapping_add(action), next, 0, 64),
        );
        for a in all {
            if !w.visit() {
                return;
            }
            let n = w.cstr_at(a.wrapping_add(name), 32);
            let num = irq
                .and_then(|o| w.v.read_u32(a.wrapping_add(o)))
                .unwrap_or(0);
            let obj = || format!("the handler '{n}' of IRQ {num}");
            let class = || format!("IRQ handler {n}");
            w.pointer(&obj, &class, a, Some(handler), "handler", Points::Code);
            w.pointer(&obj, &class, a, Some(thread_fn), "thread_fn", Points::Code);
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::btf::Btf;
    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{census_btf, put_link, synthetic_guest, UNIT_MAP, UNIT_SLIDE};

    /// Link-time address of "heap" objects: inside the image, which the
    /// synthetic guest maps linearly.
    const HEAP: u64 = 0xffff_ffff_8220_0000;

    /// The fuzzers' layouts, which the objects below follow.
    fn layouts() -> Btf {
        Btf::parse(&census_btf()).unwrap()
    }

    #[test]
    fn a_looping_super_block_list_is_walked_once_and_what_the_objects_hold_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map =
            SystemMap::parse(&format!("{UNIT_MAP}ffffffff82100000 D super_blocks\n")).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let b = layouts();
        let mut v = KernelView::new(&ram, &map, &k);
        v.btf = Some(&b);
        let va = |link: u64| link + UNIT_SLIDE;
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let (sb1, sb2, fst, name) = (HEAP, HEAP + 0x100, HEAP + 0x200, HEAP + 0x300);
        let (root, inode, kid, kid_inode) =
            (HEAP + 0x400, HEAP + 0x500, HEAP + 0x600, HEAP + 0x700);
        // super_blocks -> sb1 -> sb2 -> sb1: a loop that never returns to
        // the head.
        put(0xffff_ffff_8210_0000, va(sb1));
        put(sb1, va(sb2));
        put(sb2, va(sb1));
        for sb in [sb1, sb2] {
            put(sb + 16, 0xffff_8880_dead_0000); // s_op: a "copy" on the heap
            put(sb + 24, va(fst));
        }
        put(fst, va(name));
        put(name, u64::from_le_bytes(*b"proc\0\0\0\0"));
        // sb1's root dentry and inode, and one child in d_subdirs.
        put(sb1 + 32, va(root));
        put(root + 8, va(inode));
        put(inode + 8, 0xffff_ffff_c000_1000); // i_fop
        put(inode + 16, 1);
        put(root + 48, va(kid + 32));
        put(root + 56, va(kid + 32));
        put(kid + 32, va(root + 48));
        put(kid + 8, va(kid_inode));
        put(kid_inode + 8, 0xffff_ffff_c000_2000);
        // A second child whose inode is being freed: its i_fop holds its
        // super block's s_op->free_inode (sb2's operations, a live table).
        let (kid2, kid2_inode, sops) = (HEAP + 0x800, HEAP + 0x900, HEAP + 0xa00);
        put(kid + 32, va(kid2 + 32));
        put(kid2 + 32, va(root + 48));
        put(root + 56, va(kid2 + 32));
        put(kid2 + 8, va(kid2_inode));
        put(kid2_inode + 32, va(sb2));
        put(sb2 + 16, va(sops));
        put(sops + 8, 0xffff_ffff_c000_3000);
        put(kid2_inode + 8, 0xffff_ffff_c000_3000);
        put(kid2_inode + 16, 7);
        put(kid2_inode, 0xffff_ffff_c000_4000); // i_op, still read
        let c = v.object_operations();
        let got: Vec<(String, &str, u64)> = c
            .pointers
            .iter()
            .map(|p| (p.object.clone(), p.member, p.value))
            .collect();
        assert!(
            got.iter().all(|p| p.2 != 0xffff_ffff_c000_3000),
            "a dying inode's free_inode is no table pointer: {got:#?}"
        );
        assert!(
            got.iter()
                .any(|p| p.0.contains("inode 7 at") && p.1 == "i_op"),
            "{got:#?}"
        );
        assert_eq!(
            got.iter().filter(|p| p.1 == "s_op").count(),
            2,
            "each super block once: {got:#?}"
        );
        assert!(
            c.cut.iter().any(|w| w.contains("super blocks: a loop")),
            "{:?}",
            c.cut
        );
        assert!(got.contains(&(
            format!("the root inode of proc (inode 1 at {:#x})", va(inode)),
            "i_fop",
            0xffff_ffff_c000_1000
        )));
        assert!(
            got.iter().any(|p| p.0.starts_with("the proc entry '")
                && p.1 == "i_fop"
                && p.2 == 0xffff_ffff_c000_2000),
            "{got:#?}"
        );
        // Classes the synthetic build does not describe are named, not
        // skipped in silence.
        assert!(c
            .cut
            .iter()
            .any(|w| w.contains("open files: the build's BTF lacks")));
    }

    #[test]
    fn huge_fd_tables_are_read_within_the_census_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!("{UNIT_MAP}ffffffff82100000 D init_task\n")).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let b = layouts();
        let mut v = KernelView::new(&ram, &map, &k);
        v.btf = Some(&b);
        let va = |link: u64| link + UNIT_SLIDE;
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        // 40 tasks, each with a files_struct of its own whose table claims
        // 65 536 descriptors (one shared, empty array of them).
        let (init, array) = (0xffff_ffff_8210_0000u64, HEAP + 0x10_0000);
        let task = |i: u64| HEAP + i * 0x100;
        let files = |i: u64| HEAP + 0x8000 + i * 0x100;
        put(init, va(task(0)));
        for i in 0..40 {
            let next = if i == 39 { init } else { task(i + 1) };
            put(task(i), va(next));
            put(task(i) + 16, va(files(i)));
            put(files(i) + 8, va(files(i) + 0x80));
            put(files(i) + 0x80, 65_536);
            put(files(i) + 0x88, va(array));
        }
        put(array + 8, va(HEAP + 0x20_0000)); // one open file
        let c = v.object_operations();
        assert!(c.cut.iter().any(|w| w.contains("fd slots")), "{:?}", c.cut);
        // 16 tasks' tables fill the budget: the rest are not read.
        let files_seen = c.pointers.iter().filter(|p| p.class == "open file").count();
        assert!(files_seen <= 16, "{files_seen}");
    }

    /// A task's sockets and perf events: a packet socket with a classic
    /// filter, a TCP socket without one, and a perf event holding a BPF
    /// program, each with its owner; a forged filter that does not read
    /// leaves the socket unfiltered, not the walk broken.
    #[test]
    fn sockets_filters_and_perf_events_are_collected_with_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff82100000 D init_task\nffffffff82100100 D socket_file_ops\nffffffff82100200 D perf_fops\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let b = layouts();
        let mut v = KernelView::new(&ram, &map, &k);
        v.btf = Some(&b);
        let va = |link: u64| link + UNIT_SLIDE;
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let (init, task, files, fdt, array) = (
            0xffff_ffff_8210_0000u64,
            HEAP,
            HEAP + 0x200,
            HEAP + 0x300,
            HEAP + 0x400,
        );
        put(init, va(task));
        put(task, va(init));
        put(task + 16, va(files));
        put(task + 24, 90); // pid
        put(task + 32, u64::from_le_bytes(*b"sniff\0\0\0"));
        put(files + 8, va(fdt));
        put(fdt, 4);
        put(fdt + 8, va(array));
        let file = |i: u64| HEAP + 0x1000 + i * 0x100;
        let (sock, sk, filter, prog, orig, aux) = (
            |i: u64| HEAP + 0x2000 + i * 0x100,
            |i: u64| HEAP + 0x3000 + i * 0x100,
            HEAP + 0x4000,
            HEAP + 0x4100,
            HEAP + 0x4200,
            HEAP + 0x4300,
        );
        for i in 0..3 {
            put(array + 8 * i, va(file(i)));
        }
        // fd 0: a packet socket (AF_PACKET 17, SOCK_RAW 3) with a classic
        // filter of 5 instructions; fd 1: TCP, no filter; fd 2: a perf
        // event whose trace event is "do_sys_openat2".
        for i in 0..2 {
            put(file(i) + 8, va(0xffff_ffff_8210_0100));
            put(file(i) + 16, va(sock(i)));
            put(sock(i) + 16, va(sk(i)));
        }
        put(sk(0), 17);
        put(sk(0) + 64, 3);
        put(sk(0) + 80, va(filter));
        put(filter + 16, va(prog));
        put(prog + 8, 12);
        put(prog + 16, va(orig));
        put(orig, 5);
        put(prog + 24, va(aux));
        put(aux, 0);
        put(sk(1), 2);
        put(sk(1) + 64, 1);
        let (ev, call, name, bpf) = (HEAP + 0x5000, HEAP + 0x5100, HEAP + 0x5200, HEAP + 0x5300);
        put(file(2) + 8, va(0xffff_ffff_8210_0200));
        put(file(2) + 16, va(ev));
        put(ev, va(bpf));
        put(ev + 8, va(call));
        put(call, va(name));
        put(name, u64::from_le_bytes(*b"do_sys_o"));
        put(name + 8, u64::from_le_bytes(*b"penat2\0\0"));
        let c = v.object_operations();
        assert_eq!(c.sockets.len(), 2, "{:#?}", c.sockets);
        let s = &c.sockets[0];
        assert_eq!(
            (s.object.as_str(), s.pid, s.comm.as_str(), s.describe()),
            (
                "socket fd 0 of pid 90 (sniff)",
                90,
                "sniff",
                "packet/raw".to_string()
            )
        );
        assert!(s.sees_raw_packets());
        assert_eq!(
            s.filter,
            Some(SocketFilter {
                prog: va(prog),
                classic: Some(5),
                len: 12,
                id: 0
            })
        );
        assert_eq!(
            (c.sockets[1].describe(), c.sockets[1].filter),
            ("inet/stream".to_string(), None)
        );
        assert!(!c.sockets[1].sees_raw_packets());
        assert_eq!(
            c.attached,
            vec![(
                va(bpf),
                "trace event do_sys_openat2".to_string(),
                "perf event fd 2 of pid 90 (sniff)".to_string()
            )]
        );
        // A filter pointer to nowhere: the socket reads as unfiltered.
        put(sk(0) + 80, 0xffff_dead_0000_0000);
        let c = v.object_operations();
        assert_eq!(c.sockets.len(), 2);
        assert_eq!(c.sockets[0].filter, None);
    }
}
