//! The guest's tasks, counted in several of the kernel's own structures at
//! once (a cross-view, as Volatility's `pslist`/`pidhashtable` and LKRG's
//! process checks do): a rootkit that hides a task unlinks it from the
//! structure the tools it fears read, and the others still hold it.
//!
//! | view | structure |
//! |---|---|
//! | [`View::List`] | `init_task.tasks` (process leaders), then each leader's threads (`signal->thread_head`) |
//! | [`View::Tree`] | the process tree from `init_task` (`children`/`sibling`), then each process's threads |
//! | [`View::Pid`] | the PID allocator: every PID namespace's IDR, `struct pid` to its task (`tasks[PIDTYPE_PID]`) |
//! | [`View::RunQueue`] | every CPU's run queue: its current task and the CFS entities queued on it |
//!
//! The first three hold every live task (the kernel links and unlinks a
//! task in all of them under one lock, `tasklist_lock`); a run queue holds
//! only the tasks that run or wait to, and is a witness. A task counts in
//! [`View::Pid`] only if every namespace its `struct pid` names has it.
//!
//! Every walk is bounded (tasks, nodes, namespaces, group nesting) and
//! what cannot be read is said in [`Census::cut`]. Idle tasks (PID 0, one
//! per CPU) are in none of the enumerations by design and are marked.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::kernel::guest::KernelView;
use crate::kernel::walk::End;

/// A structure a task was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    List,
    Tree,
    Pid,
    RunQueue,
}

impl View {
    /// How a finding names it.
    pub fn describe(self) -> &'static str {
        match self {
            View::List => "the task list",
            View::Tree => "the process tree",
            View::Pid => "the PID allocator",
            View::RunQueue => "a run queue",
        }
    }
}

/// The views every live task is in.
pub const ENUMERATIONS: [View; 3] = [View::List, View::Tree, View::Pid];

/// Tasks a census reads at most. `PID_MAX_LIMIT` allows 4 M; a guest with
/// more tasks than this is reported, not walked to the end.
pub const MAX_TASKS: usize = 1 << 17;
/// List and tree nodes a census visits at most, over all its walks (a
/// hostile guest can point every thread list into one long list).
pub const MAX_NODES: usize = 1 << 19;
/// PID namespaces walked at most.
pub const MAX_NAMESPACES: usize = 1 << 10;
/// `MAX_PID_NS_LEVEL`: a `struct pid`'s deepest namespace level.
const MAX_PID_LEVEL: u32 = 32;
/// CFS group nesting followed at most (the cgroup hierarchy's depth).
const MAX_GROUP_DEPTH: usize = 16;
/// `PF_KTHREAD` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// One task, as the census read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its `task_struct`.
    pub addr: u64,
    pub pid: u32,
    pub tgid: u32,
    /// Its command (escaped).
    pub comm: String,
    pub kthread: bool,
    /// Its `cred` (subjective) and `real_cred` (objective) pointers, 0
    /// where the build does not describe them or they cannot be read.
    pub cred: u64,
    pub real_cred: u64,
    /// A CPU's idle task or `init_task` (PID 0): in no enumeration.
    pub idle: bool,
    pub views: BTreeSet<View>,
}

impl Task {
    /// The enumerations it is missing from.
    pub fn missing(&self) -> Vec<View> {
        ENUMERATIONS
            .into_iter()
            .filter(|v| !self.views.contains(v))
            .collect()
    }

    /// `pid 123 (comm)`, or a thread's `pid 124 (comm, thread of 123)`,
    /// marked as a kernel thread where it is one.
    pub fn describe(&self) -> String {
        let mut s = format!("task {} ({}", self.pid, self.comm);
        if self.tgid != self.pid {
            s.push_str(&format!(", thread of {}", self.tgid));
        }
        if self.kthread {
            s.push_str(", kernel thread");
        }
        s.push(')');
        s
    }
}

/// The tasks found, by `task_struct` address, and what could not be read.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub tasks: BTreeMap<u64, Task>,
    /// Walks that stopped before their end, or views the build does not
    /// describe: why.
    pub cut: Vec<String>,
    /// Nodes visited, over all walks.
    pub nodes: usize,
}

/// Where the kernel keeps what a census reads (from the build's BTF).
struct Layout {
    tasks: u64,
    pid: u64,
    tgid: u64,
    comm: u64,
    flags: u64,
    signal: u64,
    thread_node: u64,
    thread_head: u64,
    children: u64,
    sibling: u64,
    pid_links: Option<u64>,
    thread_pid: Option<u64>,
    pid_tasks: Option<u64>,
    pid_level: Option<u64>,
    pid_numbers: Option<u64>,
    upid_size: Option<u64>,
    upid_ns: Option<u64>,
    ns_xa_head: Option<u64>,
    cred: Option<u64>,
    real_cred: Option<u64>,
}

impl Layout {
    fn read(v: &KernelView) -> Option<Layout> {
        let t = |m: &str| v.field("task_struct", &[m]);
        Some(Layout {
            tasks: t("tasks")?,
            pid: t("pid")?,
            tgid: t("tgid")?,
            comm: t("comm")?,
            flags: t("flags")?,
            signal: t("signal")?,
            thread_node: t("thread_node")?,
            thread_head: v.field("signal_struct", &["thread_head"])?,
            children: t("children")?,
            sibling: t("sibling")?,
            pid_links: t("pid_links"),
            thread_pid: t("thread_pid"),
            pid_tasks: v.field("pid", &["tasks"]),
            pid_level: v.field("pid", &["level"]),
            pid_numbers: v.field("pid", &["numbers"]),
            upid_size: v.btf.and_then(|b| b.size_of("upid")),
            upid_ns: v.field("upid", &["ns"]),
            ns_xa_head: v.field("pid_namespace", &["idr", "idr_rt", "xa_head"]),
            cred: t("cred"),
            real_cred: t("real_cred"),
        })
    }
}

/// A census under way.
struct Walk<'v, 'a> {
    v: &'v KernelView<'a>,
    l: Layout,
    c: Census,
    /// Each process's threads, walked once (leader to threads).
    threads: HashMap<u64, Vec<u64>>,
}

impl Walk<'_, '_> {
    fn nodes_left(&self) -> usize {
        MAX_NODES.saturating_sub(self.c.nodes)
    }

    fn cut(&mut self, what: String) {
        if self.c.cut.len() < 64 && !self.c.cut.contains(&what) {
            self.c.cut.push(what);
        }
    }

    /// Note how a walk of `what` ended, and count its nodes.
    fn ended(&mut self, what: &str, end: End, nodes: usize) {
        self.c.nodes = self.c.nodes.saturating_add(nodes);
        match end {
            End::Truncated => self.cut(format!(
                "{what}: more than the census reads ({MAX_NODES} nodes in all), or a loop"
            )),
            End::Unreadable(a) => self.cut(format!("{what}: a link at {a:#x} cannot be read")),
            End::Complete | End::Running => {}
        }
    }

    /// Count `task` as seen in `view`; false once the census is full.
    fn see(&mut self, task: u64, view: View) -> bool {
        if let Some(t) = self.c.tasks.get_mut(&task) {
            t.views.insert(view);
            return true;
        }
        if self.c.tasks.len() >= MAX_TASKS {
            self.cut(format!("more than {MAX_TASKS} tasks"));
            return false;
        }
        let v = self.v;
        let u32_at = |off: u64| task.checked_add(off).and_then(|a| v.read_u32(a));
        let word_at = |off: Option<u64>| {
            off.and_then(|o| task.checked_add(o))
                .and_then(|a| v.read_word(a))
                .unwrap_or(0)
        };
        let comm = task
            .checked_add(self.l.comm)
            .and_then(|a| v.read_cstr(a, 16).ok())
            .unwrap_or_else(|| "?".into());
        self.c.tasks.insert(
            task,
            Task {
                addr: task,
                pid: u32_at(self.l.pid).unwrap_or(0),
                tgid: u32_at(self.l.tgid).unwrap_or(0),
                comm,
                kthread: u32_at(self.l.flags).is_some_and(|f| f & PF_KTHREAD != 0),
                cred: word_at(self.l.cred),
                real_cred: word_at(self.l.real_cred),
                idle: false,
                views: BTreeSet::from([view]),
            },
        );
        true
    }

    /// A process's threads (its leader included), from its signal
    /// struct's thread list; walked once per process.
    fn threads_of(&mut self, task: u64) -> Vec<u64> {
        if let Some(t) = self.threads.get(&task) {
            return t.clone();
        }
        let (v, l) = (self.v, &self.l);
        let signal = task.checked_add(l.signal).and_then(|a| v.read_word(a));
        let mut out = Vec::new();
        let mut end = End::Complete;
        match signal.and_then(|s| s.checked_add(l.thread_head)) {
            Some(head) => {
                let mut walk = v.list(head, self.nodes_left());
                out.extend(walk.by_ref().map(|n| n.wrapping_sub(l.thread_node)));
                end = walk.end();
            }
            None => self.cut(format!("the threads of task {task:#x}: no signal struct")),
        }
        let what = format!("the threads of task {task:#x}");
        self.ended(&what, end, out.len());
        self.threads.insert(task, out.clone());
        out
    }

    /// `task` and its threads, seen in `view`.
    fn see_process(&mut self, task: u64, view: View) -> bool {
        if !self.see(task, view) {
            return false;
        }
        for t in self.threads_of(task) {
            if !self.see(t, view) {
                return false;
            }
        }
        true
    }

    /// The task list: `init_task.tasks`, then each leader's threads.
    fn list(&mut self, init: u64) {
        let Some(head) = init.checked_add(self.l.tasks) else {
            return;
        };
        let mut walk = self.v.list(head, self.nodes_left());
        let leaders: Vec<u64> = walk
            .by_ref()
            .map(|n| n.wrapping_sub(self.l.tasks))
            .collect();
        let end = walk.end();
        self.ended("the task list", end, leaders.len());
        for t in leaders {
            if !self.see_process(t, View::List) {
                return;
            }
        }
    }

    /// The process tree from `init_task`, depth first; each task once.
    fn tree(&mut self, init: u64) {
        let mut seen = BTreeSet::from([init]);
        let mut stack = vec![init];
        while let Some(parent) = stack.pop() {
            let Some(head) = parent.checked_add(self.l.children) else {
                continue;
            };
            let mut walk = self.v.list(head, self.nodes_left());
            let kids: Vec<u64> = walk
                .by_ref()
                .map(|n| n.wrapping_sub(self.l.sibling))
                .collect();
            let end = walk.end();
            let what = format!("the children of task {parent:#x}");
            self.ended(&what, end, kids.len());
            for k in kids {
                if !seen.insert(k) {
                    continue;
                }
                if !self.see_process(k, View::Tree) {
                    return;
                }
                stack.push(k);
            }
        }
    }

    /// The namespaces a task's `struct pid` names, level 0 (the initial
    /// namespace) first.
    fn namespaces_of_pid(&self, pid: u64) -> Option<Vec<u64>> {
        let l = &self.l;
        let (level, numbers, size, ns) = (l.pid_level?, l.pid_numbers?, l.upid_size?, l.upid_ns?);
        let level = self.v.read_u32(pid.checked_add(level)?)?.min(MAX_PID_LEVEL);
        (0..=u64::from(level))
            .map(|i| {
                let at = pid
                    .checked_add(numbers)?
                    .checked_add(i.checked_mul(size)?)?
                    .checked_add(ns)?;
                self.v.read_word(at)
            })
            .collect()
    }

    /// The PID allocator: every namespace's IDR from the initial one and
    /// those the `struct pid`s found name; a task counts if every
    /// namespace its own `struct pid` names has it.
    fn pids(&mut self, init_ns: u64) {
        let l = &self.l;
        let (Some(links), Some(tasks), Some(xa_head), Some(thread_pid)) =
            (l.pid_links, l.pid_tasks, l.ns_xa_head, l.thread_pid)
        else {
            self.cut("the PID allocator: the build does not describe struct pid".into());
            return;
        };
        let mut found: HashMap<u64, BTreeSet<u64>> = HashMap::new();
        let mut walked = BTreeSet::new();
        let mut queue = vec![init_ns];
        while let Some(ns) = queue.pop() {
            if walked.contains(&ns) {
                continue;
            }
            if walked.len() >= MAX_NAMESPACES {
                self.cut(format!("more than {MAX_NAMESPACES} PID namespaces"));
                break;
            }
            walked.insert(ns);
            let Some(head) = ns.checked_add(xa_head) else {
                continue;
            };
            let left = self.nodes_left();
            let (pids, end) = self.v.xarray(head, left);
            let what = format!("the PID allocator of namespace {ns:#x}");
            self.ended(&what, end, pids.len());
            for pid in pids {
                // tasks[PIDTYPE_PID] (the first hlist head) holds the task.
                let task = pid
                    .checked_add(tasks)
                    .and_then(|a| self.v.read_word(a))
                    .filter(|&n| n != 0)
                    .map(|n| n.wrapping_sub(links));
                if let Some(t) = task {
                    found.entry(t).or_default().insert(ns);
                }
                for n in self.namespaces_of_pid(pid).unwrap_or_default() {
                    if n != 0 && !walked.contains(&n) && queue.len() < MAX_NAMESPACES {
                        queue.push(n);
                    }
                }
            }
        }
        let all: Vec<u64> = self
            .c
            .tasks
            .keys()
            .copied()
            .chain(found.keys().copied())
            .collect();
        for task in all {
            let Some(in_ns) = found.get(&task) else {
                continue;
            };
            let own = task
                .checked_add(thread_pid)
                .and_then(|a| self.v.read_word(a))
                .and_then(|p| self.namespaces_of_pid(p))
                .unwrap_or_else(|| vec![init_ns]);
            if own.iter().all(|n| in_ns.contains(n) || !walked.contains(n))
                && in_ns.contains(&init_ns)
                && !self.see(task, View::Pid)
            {
                return;
            }
        }
    }

    /// Every CPU's run queue: its current task, its idle task (marked),
    /// and the tasks of its CFS tree, through group entities.
    fn run_queues(&mut self) {
        let v = self.v;
        let f = |ty: &str, path: &[&str]| v.field(ty, path);
        // A per-CPU variable: its System.map value is its offset in each
        // CPU's area, which KASLR does not move.
        let (Some(rq), Some(curr), Some(idle), Some(cfs), Some(timeline), Some(run_node), Some(se)) = (
            v.map().addr("runqueues"),
            f("rq", &["curr"]),
            f("rq", &["idle"]),
            f("rq", &["cfs"]),
            f("cfs_rq", &["tasks_timeline"]),
            f("sched_entity", &["run_node"]),
            f("task_struct", &["se"]),
        ) else {
            self.cut("the run queues: the build does not describe struct rq".into());
            return;
        };
        let my_q = f("sched_entity", &["my_q"]);
        let Some(cpus) = v.per_cpu(rq) else {
            self.cut("the run queues: the per-CPU areas cannot be read".into());
            return;
        };
        for (cpu, rq) in cpus {
            if let Some(t) = rq
                .checked_add(idle)
                .and_then(|a| v.read_word(a))
                .filter(|&t| t != 0)
            {
                if !self.see(t, View::RunQueue) {
                    return;
                }
                if let Some(t) = self.c.tasks.get_mut(&t) {
                    t.idle = true;
                }
            }
            if let Some(t) = rq
                .checked_add(curr)
                .and_then(|a| v.read_word(a))
                .filter(|&t| t != 0)
            {
                if !self.see(t, View::RunQueue) {
                    return;
                }
            }
            let mut queues = vec![(rq.wrapping_add(cfs), 0usize)];
            let mut seen = BTreeSet::new();
            while let Some((q, depth)) = queues.pop() {
                if !seen.insert(q) {
                    continue;
                }
                let Some(root) = q.checked_add(timeline) else {
                    continue;
                };
                let mut walk = v.rb_tree(root, self.nodes_left());
                let entities: Vec<u64> = walk.by_ref().map(|n| n.wrapping_sub(run_node)).collect();
                let end = walk.end();
                let what = format!("CPU {cpu}'s CFS run queue");
                self.ended(&what, end, entities.len());
                for e in entities {
                    let group = my_q
                        .and_then(|o| e.checked_add(o))
                        .and_then(|a| v.read_word(a))
                        .filter(|&g| g != 0);
                    match group {
                        Some(g) if depth < MAX_GROUP_DEPTH => {
                            queues.push((g, depth.saturating_add(1)));
                        }
                        Some(_) => self.cut(format!(
                            "CPU {cpu}'s CFS run queue: groups nested deeper than {MAX_GROUP_DEPTH}"
                        )),
                        None => {
                            if !self.see(e.wrapping_sub(se), View::RunQueue) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Count the guest's tasks in every view. None where the build does not
/// describe tasks (no BTF) or has no `init_task`.
pub fn census(v: &KernelView) -> Option<Census> {
    let init = v.sym("init_task")?;
    let l = Layout::read(v)?;
    let mut w = Walk {
        v,
        l,
        c: Census::default(),
        threads: HashMap::new(),
    };
    w.list(init);
    w.tree(init);
    match v.sym("init_pid_ns") {
        Some(ns) => w.pids(ns),
        None => w.cut("the PID allocator: no init_pid_ns in the build".into()),
    }
    w.run_queues();
    if let Some(t) = w.c.tasks.get_mut(&init) {
        t.idle = true;
    }
    Some(w.c)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::btf::Btf;
    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{btf, put_link, synthetic_guest, UNIT_MAP, UNIT_SLIDE};

    /// Link-time addresses of the fixture's objects, in the image's data.
    pub const INIT: u64 = 0xffff_ffff_8211_0000;
    pub const NS: u64 = 0xffff_ffff_8212_0000;
    pub const RQ: u64 = 0xffff_ffff_8213_0000;
    const XA_NODE: u64 = 0xffff_ffff_8214_0000;
    /// Task `i`'s `task_struct`, its signal struct and its `struct pid`.
    pub fn task(i: u64) -> u64 {
        0xffff_ffff_8220_0000 + i * 0x1000
    }
    fn signal(i: u64) -> u64 {
        task(i) + 0x800
    }
    fn pid(i: u64) -> u64 {
        task(i) + 0xc00
    }
    /// Task `i`'s credential object and its user_struct.
    pub fn cred(i: u64) -> u64 {
        task(i) + 0x400
    }
    pub fn user(i: u64) -> u64 {
        task(i) + 0x500
    }
    /// `struct page`s of the fixture's direct map, which starts at task 0.
    pub const VMEMMAP: u64 = 0xffff_ffff_8250_0000;
    /// The credential cache's `kmem_cache`.
    pub const JAR: u64 = 0xffff_8880_0bad_ca00;
    pub fn rt(link: u64) -> u64 {
        link + UNIT_SLIDE
    }

    /// The fixture's System.map.
    pub fn map() -> SystemMap {
        SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff82110000 D init_task\nffffffff82120000 D init_pid_ns\n0000000000004000 D runqueues\nffffffff82130100 D pid_max\nffffffff82130200 D init_cred\nffffffff82130300 D page_offset_base\nffffffff82130308 D vmemmap_base\nffffffff82130310 D cred_jar\n"
        ))
        .unwrap()
    }

    /// The struct layouts the census reads, as a small BTF.
    pub fn layouts() -> Btf {
        Btf::parse(&btf(&[
            (
                "task_struct",
                0x200,
                &[
                    ("tasks", 0, ""),
                    ("pid", 16, ""),
                    ("tgid", 20, ""),
                    ("comm", 32, ""),
                    ("flags", 48, ""),
                    ("signal", 56, ""),
                    ("thread_node", 64, ""),
                    ("children", 80, ""),
                    ("sibling", 96, ""),
                    ("pid_links", 112, ""),
                    ("thread_pid", 128, ""),
                    ("se", 136, "sched_entity"),
                    ("real_cred", 176, ""),
                    ("cred", 184, ""),
                ],
            ),
            ("signal_struct", 16, &[("thread_head", 0, "")]),
            (
                "pid",
                48,
                &[("level", 0, ""), ("tasks", 8, ""), ("numbers", 16, "upid")],
            ),
            ("upid", 16, &[("nr", 0, ""), ("ns", 8, "")]),
            ("pid_namespace", 64, &[("idr", 0, "idr")]),
            ("idr", 24, &[("idr_rt", 0, "xarray")]),
            ("xarray", 16, &[("xa_head", 8, "")]),
            (
                "rq",
                64,
                &[("curr", 0, ""), ("idle", 8, ""), ("cfs", 16, "cfs_rq")],
            ),
            ("cfs_rq", 16, &[("tasks_timeline", 0, "")]),
            ("sched_entity", 32, &[("run_node", 0, "")]),
            (
                "cred",
                128,
                &[
                    ("uid", 4, ""),
                    ("gid", 8, ""),
                    ("suid", 12, ""),
                    ("sgid", 16, ""),
                    ("euid", 20, ""),
                    ("egid", 24, ""),
                    ("fsuid", 28, ""),
                    ("fsgid", 32, ""),
                    ("cap_inheritable", 40, ""),
                    ("cap_permitted", 48, ""),
                    ("cap_effective", 56, ""),
                    ("cap_bset", 64, ""),
                    ("user", 80, ""),
                ],
            ),
            ("user_struct", 64, &[("uid", 8, "")]),
            ("page", 64, &[("compound_head", 8, "")]),
            ("slab", 64, &[("slab_cache", 24, "")]),
        ]))
        .unwrap()
    }

    /// A guest with `init_task` (PID 0, CPU 0's idle task, on init_cred)
    /// and processes 1..=n (PID 100 + i, uid 1000 + i), each in the task
    /// list, init's children and the PID allocator, one thread each, with
    /// its own credentials from the credential cache; `runqueues` holds
    /// CPU 0's.
    pub fn guest(ram: &crate::guest::memory::GuestRam, n: u64) {
        let put = |l: u64, v: u64| put_link(ram, l, v);
        let ring = |head: u64, nodes: &[u64]| {
            // A circular list_head list through `head` and `nodes`.
            let all: Vec<u64> = std::iter::once(head).chain(nodes.iter().copied()).collect();
            for (k, &node) in all.iter().enumerate() {
                let next = all[(k + 1) % all.len()];
                let prev = all[(k + all.len() - 1) % all.len()];
                put(node, rt(next));
                put(node + 8, rt(prev));
            }
        };
        let ids: Vec<u64> = (1..=n).collect();
        ring(INIT, &ids.iter().map(|&i| task(i)).collect::<Vec<_>>());
        ring(
            INIT + 80,
            &ids.iter().map(|&i| task(i) + 96).collect::<Vec<_>>(),
        );
        put(INIT + 56, rt(signal(0)));
        ring(signal(0), &[INIT + 64]);
        put(INIT + 32, u64::from_le_bytes(*b"swapper/"));
        for &i in &ids {
            let t = task(i);
            put(t + 16, (100 + i) | (100 + i) << 32);
            put(t + 32, u64::from_le_bytes(*b"sleep\0\0\0"));
            put(t + 48, 0);
            put(t + 56, rt(signal(i)));
            ring(signal(i), &[t + 64]);
            ring(t + 80, &[]);
            // struct pid: level 0, tasks[PIDTYPE_PID] -> pid_links[0].
            put(pid(i), 0);
            put(pid(i) + 8, rt(t + 112));
            put(pid(i) + 16, 100 + i);
            put(pid(i) + 24, rt(NS));
            put(t + 128, rt(pid(i)));
            put(XA_NODE + 40 + 8 * (i % 64), rt(pid(i)));
            put(t + 176, rt(cred(i)));
            put(t + 184, rt(cred(i)));
            let uid = 1000 + i;
            put(cred(i), uid << 32);
            put(cred(i) + 8, uid | uid << 32);
            put(cred(i) + 16, uid << 32 | uid);
            put(cred(i) + 24, uid << 32 | uid);
            put(cred(i) + 32, uid);
            put(cred(i) + 56, 0);
            put(cred(i) + 64, (1 << 41) - 1);
            put(cred(i) + 80, rt(user(i)));
            put(user(i) + 8, uid);
            // Its page: a slab of the credential cache.
            put(VMEMMAP + 64 * ((cred(i) - task(0)) / 0x1000) + 8, 0);
            put(VMEMMAP + 64 * ((cred(i) - task(0)) / 0x1000) + 24, JAR);
        }
        put(INIT + 176, rt(0xffff_ffff_8213_0200));
        put(INIT + 184, rt(0xffff_ffff_8213_0200));
        put(0xffff_ffff_8213_0300, rt(task(0)));
        put(0xffff_ffff_8213_0308, rt(VMEMMAP));
        put(0xffff_ffff_8213_0310, JAR);
        put(NS + 8, rt(XA_NODE) | 2);
        put(RQ, rt(INIT));
        put(RQ + 8, rt(INIT));
        put(RQ + 16, 0);
        put(0xffff_ffff_8213_0100, 32768);
        // CPU 0's per-CPU area puts runqueues (offset 0x4000) at RQ.
        put(0xffff_ffff_8200_5140, rt(RQ).wrapping_sub(0x4000));
    }

    fn census_of(ram: &crate::guest::memory::GuestRam, map: &SystemMap) -> Census {
        let k = locate(ram, map, None).unwrap();
        let layouts = layouts();
        let mut v = KernelView::new(ram, map, &k);
        v.btf = Some(&layouts);
        census(&v).unwrap()
    }

    /// What a census finds missing, as `pid: views`.
    fn missing(c: &Census) -> Vec<(u32, Vec<View>)> {
        c.tasks
            .values()
            .filter(|t| !t.idle && !t.missing().is_empty())
            .map(|t| (t.pid, t.missing()))
            .collect()
    }

    #[test]
    fn a_task_unlinked_from_one_view_is_missing_from_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = map();
        guest(&ram, 3);
        let c = census_of(&ram, &map);
        assert_eq!(c.tasks.len(), 4, "{c:#?}");
        assert!(c.cut.is_empty(), "{:?}", c.cut);
        assert_eq!(missing(&c), vec![]);
        assert!(c.tasks[&rt(INIT)].idle);
        assert_eq!(c.tasks[&rt(task(2))].describe(), "task 102 (sleep)");
        let put = |l: u64, v: u64| put_link(&ram, l, v);
        // Task 2 off the task list (list_del: its neighbours skip it).
        put(task(1), rt(task(3)));
        put(task(3) + 8, rt(task(1)));
        assert_eq!(
            missing(&census_of(&ram, &map)),
            vec![(102, vec![View::List])]
        );
        put(task(1), rt(task(2)));
        put(task(3) + 8, rt(task(2)));
        // Task 3 out of the PID allocator (its IDR slot emptied).
        put(XA_NODE + 40 + 24, 0);
        assert_eq!(
            missing(&census_of(&ram, &map)),
            vec![(103, vec![View::Pid])]
        );
        // ... or its struct pid left without a task.
        put(XA_NODE + 40 + 24, rt(pid(3)));
        put(pid(3) + 8, 0);
        assert_eq!(
            missing(&census_of(&ram, &map)),
            vec![(103, vec![View::Pid])]
        );
        put(pid(3) + 8, rt(task(3) + 112));
        // A task in no enumeration, running on CPU 0.
        guest(&ram, 4);
        put(task(3), rt(INIT));
        put(INIT + 8, rt(task(3)));
        put(task(3) + 96, rt(INIT + 80));
        put(INIT + 88, rt(task(3) + 96));
        put(XA_NODE + 40 + 32, 0);
        put(RQ, rt(task(4)));
        let c = census_of(&ram, &map);
        assert_eq!(missing(&c), vec![(104, ENUMERATIONS.to_vec())]);
        assert!(c.tasks[&rt(task(4))].views.contains(&View::RunQueue));
    }

    #[test]
    fn a_walk_that_cannot_go_on_is_said_and_a_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = map();
        guest(&ram, 3);
        // Task 2's task-list link leads into unmapped memory.
        put_link(&ram, task(2), 0xffff_c900_dead_0000);
        let c = census_of(&ram, &map);
        assert!(
            c.cut
                .iter()
                .any(|w| w.starts_with("the task list: a link at")),
            "{:?}",
            c.cut
        );
        // Task 3's thread list loops through itself without its head.
        guest(&ram, 3);
        put_link(&ram, task(3) + 64, rt(task(3) + 64));
        let t = std::time::Instant::now();
        let c = census_of(&ram, &map);
        assert!(c.cut.iter().any(|w| w.contains("or a loop")), "{:?}", c.cut);
        assert!(c.nodes <= MAX_NODES + 16, "{}", c.nodes);
        eprintln!("a looping thread list: {:?}", t.elapsed());
    }
}
