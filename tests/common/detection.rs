//! What the detection tests share: findings from `--json` output, the
//! rootkits of tests/rootkits with the finding each must cause, and the
//! cost of one run (wall time, peak memory).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn findings(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// The summary object `check --json` prints after its findings.
pub fn summary(o: &Output) -> Option<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("summary").cloned())
}

/// Is there a finding of `kind` whose detail contains every part?
pub fn has(f: &[serde_json::Value], kind: &str, parts: &[&str]) -> bool {
    f.iter().any(|x| {
        x["kind"] == kind
            && parts
                .iter()
                .all(|p| x["detail"].as_str().unwrap_or("").contains(p))
    })
}

/// Run one integrity-only check (`cmd`) with the checks' debug log and print
/// what the census of control data and kernel objects visited and took.
pub fn census_cost(mut cmd: Command, guest: &str) {
    cmd.env("RUST_LOG", "xftrace::detect::checks=debug");
    let (o, t, rss) = measured(cmd);
    let log = String::from_utf8_lossy(&o.stderr);
    for l in log.lines().filter(|l| {
        l.contains("words read")
            || l.contains(" objects, ")
            || l.contains(" tasks, ")
            || l.contains("took")
    }) {
        let l = l.split_once("] ").map_or(l, |x| x.1);
        eprintln!("census ({guest}): {l}");
    }
    eprintln!(
        "census ({guest}): the whole integrity-only check {:.0} ms, {rss} KiB peak RSS",
        t.as_secs_f64() * 1e3
    );
}

/// What `check` finds now; the closure it returns asserts that a later
/// check finds nothing beyond that (earlier test rootkits may still be
/// loaded: "clean" is nothing beyond what they cause), saying `what`.
pub fn nothing_beyond_now(check: &dyn Fn() -> Output) -> impl Fn(&str) + '_ {
    let key = |x: &serde_json::Value| format!("{} {}", x["kind"], x["detail"]);
    let before: std::collections::BTreeSet<String> = findings(&check()).iter().map(key).collect();
    move |what: &str| {
        let f = findings(&check());
        // Inventory (a module the build does not ship, severity low) is
        // no hook.
        let new: Vec<_> = f
            .iter()
            .filter(|x| !before.contains(&key(x)) && x["severity"] != "low")
            .collect();
        assert!(new.is_empty(), "{what}: {new:#?}");
    }
}

/// Run `cmd` to completion: its output, wall time and peak resident memory
/// (KiB).
pub fn measured(mut cmd: Command) -> (Output, Duration, i64) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let out = {
        let mut child = child;
        let mut stdout = String::new();
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        // wait4 on a pid we spawned and have not waited for, to read its rusage.
        unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        std::mem::forget(child);
        Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(status),
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        }
    };
    (out, t.elapsed(), ru.ru_maxrss)
}

/// A rootkit module, the finding kind it must cause, words of its detail,
/// and words of the call-flow finding where the hook is in a traced path.
pub type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<&'static [&'static str]>,
);

/// The rootkits loaded one after another (each stays loaded), by technique:
/// a syscall table entry, an ftrace hook, an inline patch of the
/// dispatcher, and a file operations table. (rk_idt and rk_blind, which go
/// for the IDT and for xftrace itself, are tested on their own.)
pub const CASES: &[Case] = &[
    (
        "rk_syscall_table",
        "syscall-table",
        &[
            "sys_call_table[217] points to",
            "instead of __x64_sys_getdents64",
        ],
        None,
    ),
    (
        "rk_ftrace_hook",
        "ftrace-hook",
        &["an ftrace hook", "outside the kernel image"],
        Some(&["__x64_sys_getdents64 runs code outside the kernel image"]),
    ),
    (
        "rk_dispatch_patch",
        "syscall-dispatch",
        &["x64_sys_call+", "(the build calls __x64_sys_getdents64)"],
        None,
    ),
    (
        "rk_fops",
        "operation-table",
        &["simple_dir_operations slot", "instead of dcache_readdir"],
        Some(&["called from iterate_dir"]),
    ),
];

/// Hooks on an ordinary function: the module, its arguments besides
/// `target=`, the finding kind and part of its detail (every one must also
/// be found naming the module).
pub const BODY_HOOKS: &[(&str, &str, &str, &str)] = &[
    ("rk_inline", "", "kernel-text", "now jumps to"),
    ("rk_kprobe", "", "kprobe", "int3 breakpoint"),
    (
        "rk_kprobe",
        "at_entry=1",
        "kprobe",
        "has its pre-handler at",
    ),
    ("rk_kprobe", "on_return=1", "kprobe", "a kretprobe on"),
];

/// The /proc show functions those modules may hook, with their file.
const SHOW_TARGETS: &[(&str, &str)] = &[
    ("version_proc_show", "/proc/version"),
    ("loadavg_proc_show", "/proc/loadavg"),
    ("uptime_proc_show", "/proc/uptime"),
    ("cmdline_proc_show", "/proc/cmdline"),
];

/// A different target for each of [`BODY_HOOKS`], drawn at random per run
/// so that no check can be written for one fixed target.
pub fn body_hook_targets() -> Vec<(&'static str, &'static str)> {
    let mut pool = SHOW_TARGETS.to_vec();
    let mut out = Vec::new();
    for _ in BODY_HOOKS {
        let mut b = [0u8; 1];
        getrandom::getrandom(&mut b).unwrap();
        out.push(pool.remove(usize::from(b[0]) % pool.len()));
    }
    eprintln!("body hook targets this run: {out:?}");
    out
}

/// Load each of [`BODY_HOOKS`] at a target drawn for this run, and show
/// that it fires (the /proc file reads empty), is found at its target
/// naming its module, and leaves no finding once unloaded. `sh` runs a
/// guest shell command, `check` one integrity-only `check --json`; the
/// modules are in the guest's `dir`.
pub fn body_hooks(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    for ((module, args, kind, part), (target, file)) in BODY_HOOKS.iter().zip(body_hook_targets()) {
        blank_show(sh, dir, module, &format!("target={target} {args}"), file);
        let o = check();
        let f = findings(&o);
        assert_eq!(o.status.code(), Some(1), "{module} not reported: {f:#?}");
        assert!(
            has(&f, kind, &[target, part])
                && has(&f, kind, &[target, &format!("in module {module}")]),
            "{module} on {target}: no {kind} finding in {f:#?}"
        );
        sh(&format!("rmmod {module}"));
        assert_ne!(size(sh, file), "0", "{module} did not unload");
        let f = findings(&check());
        assert!(
            !f.iter()
                .any(|x| x["detail"].as_str().unwrap_or("").contains(target)),
            "{module} unloaded, still reported: {f:#?}"
        );
    }
}

/// A shadow page (`rk_shadow`): the kernel's page tables point the page of
/// a /proc show function drawn for this run at a patched copy, splitting a
/// 2 MiB page where it must, while the image stays as built. It fires (the
/// file reads empty), is found by `kernel-mapping` at that page and by no
/// check that reads the image (the copy is all the CPU sees), and leaves
/// no finding once unloaded. `sh`, `check` and `dir` as for [`body_hooks`].
pub fn shadow_page(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let (target, file) = pick("rk_shadow target", SHOW_TARGETS);
    let addr = last_line(&sh(&format!(
        "awk '$3==\"{target}\" {{print $1; exit}}' /proc/kallsyms"
    )));
    let addr = u64::from_str_radix(&addr, 16)
        .unwrap_or_else(|_| panic!("{target} not in the guest's /proc/kallsyms: {addr:?}"));
    assert_ne!(addr, 0, "the guest hides kernel addresses");
    let page = format!("{:#x}", addr & !0xfff);
    blank_show(sh, dir, "rk_shadow", &format!("target={target}"), file);
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "rk_shadow not reported: {f:#?}");
    assert!(
        has(
            &f,
            "kernel-mapping",
            &[&format!("map {page} "), "not to the image's own page"]
        ),
        "rk_shadow on {target}: no kernel-mapping finding at its page {page} in {f:#?}"
    );
    sh("rmmod rk_shadow");
    assert_ne!(size(sh, file), "0", "rk_shadow did not unload");
    let f = findings(&check());
    assert!(
        !f.iter()
            .any(|x| x["detail"].as_str().unwrap_or("").contains(&page)),
        "rk_shadow unloaded, still reported: {f:#?}"
    );
}

/// The last line of a guest command's output: kernel messages may share a
/// console.
fn last_line(o: &str) -> String {
    o.lines().last().unwrap_or("").trim().to_string()
}

/// The bytes a guest file reads.
fn size(sh: &mut dyn FnMut(&str) -> String, file: &str) -> String {
    last_line(&sh(&format!("cat {file} | wc -c")))
}

/// Load `module` with `args`, which blanks the /proc `file` a show
/// function writes: it must read something before and nothing after.
fn blank_show(sh: &mut dyn FnMut(&str) -> String, dir: &str, module: &str, args: &str, file: &str) {
    assert_ne!(size(sh, file), "0", "{file} is empty before {module}");
    let out = sh(&format!("insmod {dir}/{module}.ko {args}"));
    assert!(!out.contains("rror"), "{module}: {out}");
    assert_eq!(size(sh, file), "0", "{module} {args} did not fire");
}

/// One of `pool`, drawn at random; or, to replay a run, the one whose
/// printed form `XFTRACE_TEST_DRAW` gives for `what` (`what=value`, pairs
/// separated by `;`, e.g. `rk_hidetask hides from="all"`).
pub fn pick<T: Copy + std::fmt::Debug>(what: &str, pool: &[T]) -> T {
    let forced = std::env::var("XFTRACE_TEST_DRAW").ok().and_then(|d| {
        d.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == what)
            .and_then(|(_, v)| pool.iter().copied().find(|p| format!("{p:?}") == v.trim()))
    });
    let mut b = [0u8; 1];
    getrandom::getrandom(&mut b).unwrap();
    let p = forced.unwrap_or(pool[usize::from(b[0]) % pool.len()]);
    eprintln!("{what} this run: {p:?}");
    p
}

/// A guest module parameter's value (the last line: kernel messages may
/// share a console).
fn param(sh: &mut dyn FnMut(&str) -> String, module: &str, name: &str) -> String {
    last_line(&sh(&format!("cat /sys/module/{module}/parameters/{name}")))
}

/// Traffic over loopback, with the busybox guest's tools or Debian's.
const LOOPBACK_TRAFFIC: &str = "ip link set lo up 2>/dev/null; \
     ping -c 2 127.0.0.1 > /dev/null 2>&1 || curl -s -o /dev/null http://127.0.0.1/; true";

/// The classes of hook beyond ftrace, kprobes and code patches, each at a
/// target drawn for this run: code in no module (shellcode in vmalloc space
/// or the direct map), a notifier, a tracepoint probe and a netfilter hook.
/// Each is seen to fire, found with the right kind (naming its module where
/// it has one), and gone once unloaded. A module that hooks nothing causes
/// no finding. `sh`, `check` and `dir` as for [`body_hooks`].
pub fn registry_hooks(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let clean = nothing_beyond_now(check);
    // Benign.
    sh(&format!("insmod {dir}/rk_benign.ko"));
    assert_eq!(
        param(sh, "rk_benign", "loaded"),
        "1",
        "rk_benign did not load"
    );
    clean("a module that hooks nothing was reported");
    sh("rmmod rk_benign");

    // Shellcode: a show function jumps to code the module made executable.
    let (target, file) = pick("rk_shellcode target", SHOW_TARGETS);
    let place = pick("rk_shellcode memory", &["vmalloc", "direct"]);
    blank_show(
        sh,
        dir,
        "rk_shellcode",
        &format!("target={target} where={place}"),
        file,
    );
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(&f, "hidden-code", &["belongs to no code the kernel knows"]),
        "shellcode in {place} memory not found: {f:#?}"
    );
    assert!(has(&f, "kernel-text", &[target]), "{f:#?}");
    sh("rmmod rk_shellcode");
    assert_ne!(size(sh, file), "0", "rk_shellcode did not unload");
    clean("rk_shellcode unloaded, still reported");

    // Registries: module, load it, make it fire, what the finding says.
    let chain = pick("rk_notifier chain", &["module", "netdevice"]);
    let tp = pick(
        "rk_tracepoint tracepoint",
        &[
            "sched_process_fork",
            "sched_process_exec",
            "sched_process_exit",
        ],
    );
    let hook = pick("rk_netfilter hook", &[0u8, 1, 3, 4]);
    let benign = format!("insmod {dir}/rk_benign.ko; rmmod rk_benign");
    let cases: [(&str, String, String, String); 3] = [
        (
            "rk_notifier",
            format!("chain={chain}"),
            benign,
            if chain == "module" {
                "notifier module_notify_list".into()
            } else {
                "notifier netdev_chain".into()
            },
        ),
        (
            "rk_tracepoint",
            format!("tp={tp}"),
            "sh -c 'ls / > /dev/null'".into(),
            format!("tracepoint {tp} "),
        ),
        (
            "rk_netfilter",
            format!("hook={hook}"),
            LOOPBACK_TRAFFIC.into(),
            format!("netfilter ipv4 hook {hook} ("),
        ),
    ];
    for (module, args, trigger, point) in &cases {
        let out = sh(&format!("insmod {dir}/{module}.ko {args}"));
        assert!(!out.contains("rror"), "{module}: {out}");
        sh(trigger);
        let n: u64 = param(sh, module, "fired").parse().unwrap_or(0);
        assert!(n > 0, "{module} {args} did not fire");
        let o = check();
        let f = findings(&o);
        assert_eq!(o.status.code(), Some(1), "{module} not reported: {f:#?}");
        assert!(
            has(
                &f,
                "hook-registry",
                &[point, &format!("in module {module}")]
            ) && f.iter().any(|x| x["owner"] == *module),
            "{module} {args}: no hook-registry finding at {point:?}: {f:#?}"
        );
        sh(&format!("rmmod {module}"));
        clean(&format!("{module} unloaded, still reported"));
    }

    // BPF: a program attached from user space, with no module at all, under
    // a name that looks harmless.
    let (mode, target) = pick(
        "bpf_hook attach point",
        &[
            ("raw_tp", "sys_enter"),
            ("raw_tp", "sched_process_exec"),
            ("raw_tp", "sched_switch"),
            ("kprobe", "do_sys_openat2"),
            ("kprobe", "vfs_open"),
            ("kprobe", "iterate_dir"),
        ],
    );
    let name = pick("bpf_hook program name", &["sd_devices", "kworker_stats"]);
    sh(&format!(
        "rm -f /tmp/bpf_hook.count; {{ setsid {dir}/bpf_hook {mode} {target} {name} < /dev/null > /tmp/bpf_hook.out 2>&1 & }}"
    ));
    let mut n = 0u64;
    for _ in 0..50 {
        sh("sh -c 'ls / > /dev/null; cat /proc/version > /dev/null'; sleep 0.2");
        let o = sh("cat /tmp/bpf_hook.count 2>/dev/null");
        n = o
            .lines()
            .rev()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if n > 0 {
            break;
        }
    }
    assert!(
        n > 0,
        "bpf_hook {mode} {target} did not fire: {}",
        sh("cat /tmp/bpf_hook.out")
    );
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "bpf_hook not reported: {f:#?}");
    let kind = if mode == "raw_tp" {
        "raw_tracepoint"
    } else {
        "kprobe"
    };
    let mut parts = vec![format!("a {kind} BPF program '{name}'")];
    if mode == "raw_tp" {
        parts.push(format!("attached to tracepoint {target}"));
    } else {
        // Attached through a perf event the loader holds open.
        parts.push(format!("attached to kprobe {target} by the perf event fd "));
        parts.push("(bpf_hook)".into());
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    assert!(
        has(&f, "bpf-program", &parts),
        "bpf_hook {mode} {target}: no bpf-program finding: {f:#?}"
    );
    sh("kill $(pidof bpf_hook); sleep 1");
    clean("bpf_hook killed, still reported");
}

/// A module that passes for one of the build by its name, for a check
/// given the build's modules (`--modules`, [`crate::common::build_modules_dir`]):
/// rk_notifier hooks the network device chain, then renames itself to a
/// module the build ships, drawn per run (one of the kernel's own, or
/// rk_benign). Found as an impostor (its code is not that module's), and
/// its hook as a hook of that impostor, not of the build. The genuine
/// rk_benign, loaded alone, is clean ([`registry_hooks`]).
pub fn impostor_module(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let clean = nothing_beyond_now(check);
    let name = pick(
        "rk_notifier passes for",
        &["rk_benign", "x86_pkg_temp_thermal"],
    );
    let out = sh(&format!(
        "insmod {dir}/rk_notifier.ko chain=netdevice alias={name}; echo rc=$?"
    ));
    assert!(out.contains("rc=0"), "{out}");
    assert!(
        sh("cat /proc/modules").contains(&format!("{name} ")),
        "rk_notifier did not take the name {name}"
    );
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(
            &f,
            "hidden-module",
            &[
                &format!("module {name} "),
                "bears the name of a module the build ships, but its code is not that module's"
            ]
        ),
        "the impostor was not found: {f:#?}"
    );
    assert!(
        has(
            &f,
            "hook-registry",
            &["notifier netdev_chain", &format!("in module {name}")]
        ),
        "the impostor's hook passed for the build's: {f:#?}"
    );
    sh(&format!("rmmod {name}"));
    clean("the impostor unloaded, still reported");
}

/// Every CPU's IDT register loaded with a copy of the IDT (rk_idtr), the
/// copy in vmalloc space or the direct map, drawn per run: the kernel's own
/// IDT and page tables stay as built, so only the vCPUs' registers, read
/// from QEMU (`--qmp`), show it. Found naming the copy, gone once unloaded.
pub fn idt_register(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let clean = nothing_beyond_now(check);
    let place = pick("rk_idtr copy in", &["vmalloc", "direct"]);
    let out = sh(&format!(
        "insmod {dir}/rk_idtr.ko where={place}; echo rc=$?"
    ));
    assert!(out.contains("rc=0"), "{out}");
    assert_ne!(param(sh, "rk_idtr", "fired"), "0", "rk_idtr loaded no CPU");
    // The guest still takes interrupts and exceptions through the copy.
    sh("ls / > /dev/null; sleep 0.2");
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(&f, "vcpu-state", &["vCPU 0: its IDT register names"]),
        "the IDT register loaded with a copy in {place} memory was not found: {f:#?}"
    );
    sh("rmmod rk_idtr");
    clean("rk_idtr unloaded, still reported");
}

/// A tracer blinded without being stopped (rk_mute, its way drawn per run:
/// graph entries to ftrace's stub, the session's filter emptied, or every
/// CPU made to look busy inside the tracer): its thread beats, its key is
/// good, and the capture of a check with call flow is empty, which the
/// guest's probe tells from an idle guest's. Unloaded, the guest is clean
/// again. `check` runs with call flow.
pub fn muted_tracer(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let clean = nothing_beyond_now(check);
    let how = pick("rk_mute blinds the tracer by", &["entry", "filter", "busy"]);
    let out = sh(&format!("insmod {dir}/rk_mute.ko how={how}; echo rc=$?"));
    assert!(out.contains("rc=0"), "{out}");
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(
            &f,
            "tracer-integrity",
            &["CPU 0 recorded no call of xftrace_probe"]
        ),
        "a tracer blinded by rk_mute ({how}) was not found: {f:#?}"
    );
    assert_ne!(param(sh, "rk_mute", "fired"), "0", "rk_mute never fired");
    sh("rmmod rk_mute");
    clean("rk_mute unloaded, still reported");
}

/// The kernel's taint flags cleared (rk_untaint; the whole mask or the
/// modules' flags, drawn per run): the guest says it is not tainted by
/// its out-of-tree modules, and the module whose flag is gone is named.
pub fn cleared_taint(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let clean = nothing_beyond_now(check);
    let how = pick("rk_untaint clears", &["all", "modules"]);
    let out = sh(&format!("insmod {dir}/rk_untaint.ko how={how}; echo rc=$?"));
    assert!(out.contains("rc=0"), "{out}");
    let tainted = last_line(&sh("cat /proc/sys/kernel/tainted"));
    assert_eq!(
        tainted.parse::<u64>().map(|t| t & 1 << 12),
        Ok(0),
        "rk_untaint left the out-of-tree flag: {tainted}"
    );
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    assert!(
        has(
            &f,
            "taint",
            &[
                "module rk_untaint tainted the kernel with",
                "(O",
                "no longer has"
            ]
        ),
        "cleared taint flags ({how}) were not found: {f:#?}"
    );
    sh("rmmod rk_untaint");
    clean("rk_untaint unloaded, still reported");
}

/// A running process hidden (rk_hidetask) from the task list, the PID
/// allocator, both, or all three with the process tree, drawn per run: the
/// guest itself no longer sees it where it was unlinked (for_each_process,
/// or /proc and kill). An integrity check (`check`) names its PID, its
/// command and the structures that disagree; hidden from all three, a
/// check with call flow (`traced`) names it from the tracer's records of
/// its reads. Put back and ended, nothing is left.
pub fn hidden_task(
    sh: &mut dyn FnMut(&str) -> String,
    check: &dyn Fn() -> Output,
    traced: &dyn Fn() -> Output,
    dir: &str,
) {
    let clean = nothing_beyond_now(check);
    let how = pick("rk_hidetask hides from", &["list", "pid", "both", "all"]);
    // A process that reads (a traced call) by itself, every second.
    let pid = last_line(&sh(
        "sh -c 'while :; do read -r l < /proc/uptime; sleep 1; done' > /dev/null 2>&1 & echo $!",
    ));
    assert!(pid.parse::<u32>().is_ok(), "no PID: {pid}");
    if how == "all" {
        // ftrace gives a task its return stack when graph tracing starts by
        // walking the task list, or at fork while it runs: a task hidden
        // before the tracer was ever on in its life is never traced (a
        // limit in docs/threat-model.md). Trace once while it is listed.
        let _ = traced();
    }
    let out = sh(&format!(
        "insmod {dir}/rk_hidetask.ko pid={pid} how={how}; echo rc=$?"
    ));
    assert!(out.contains("rc=0"), "{out}");
    let (list, ids) = (how != "pid", how != "list");
    let yn = |hidden: bool| if hidden { "N" } else { "Y" };
    assert_eq!(
        param(sh, "rk_hidetask", "in_list"),
        yn(list),
        "for_each_process"
    );
    assert_eq!(param(sh, "rk_hidetask", "in_pid"), yn(ids), "find_vpid");
    let proc = last_line(&sh(&format!(
        "if [ -e /proc/{pid} ] && kill -0 {pid}; then echo seen; else echo unseen; fi 2>/dev/null"
    )));
    assert_eq!(proc, if ids { "unseen" } else { "seen" }, "/proc/{pid}");
    let o = if how == "all" { traced() } else { check() };
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    let task = format!("task {pid} (sh) ");
    let parts: Vec<&str> = match how {
        "list" => vec![&task, "the process tree", "missing from the task list:"],
        "pid" => vec![&task, "the process tree", "missing from the PID allocator:"],
        "both" => vec![
            &task,
            "is in the process tree",
            "missing from the task list and the PID allocator:",
        ],
        _ => vec![
            &task,
            "made traced calls before and after 2 censuses",
            "found it in none",
        ],
    };
    assert!(
        has(&f, "hidden-task", &parts),
        "a process hidden from {how} was not found: {f:#?}"
    );
    sh("rmmod rk_hidetask");
    sh(&format!("kill {pid}; true"));
    clean("rk_hidetask unloaded, still reported");
}

/// A process given root behind the kernel's back (rk_cred), drawn per
/// run: its own credentials written, another process's swapped in, or
/// the idle task's. The module loads while a check with call flow
/// (`traced`, a command not yet started) records, after the window's
/// first census: that check names the task by what the tracer saw (root
/// with no execve, set*id or capset call between two looks), the next
/// integrity check by what its credentials now are (shared, not of their
/// user, from outside the cache). Put back and unloaded, nothing is left.
pub fn root_by_credentials(
    sh: &mut dyn FnMut(&str) -> String,
    check: &dyn Fn() -> Output,
    mut traced: Command,
    dir: &str,
) {
    use std::io::{BufRead, BufReader};
    let clean = nothing_beyond_now(check);
    let how = pick("rk_cred makes root by", &["write", "swap", "init"]);
    sh("grep -q '^nobody:' /etc/passwd 2>/dev/null || echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> /etc/passwd");
    let pid = last_line(&sh(
        "su -s /bin/sh nobody -c 'sleep 900 > /dev/null 2>&1 & echo $!'",
    ));
    assert!(pid.parse::<u32>().is_ok(), "no PID: {pid}");
    let uids = |sh: &mut dyn FnMut(&str) -> String| {
        last_line(&sh(&format!("grep '^Uid:' /proc/{pid}/status")))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(uids(sh), vec!["65534"; 4], "the victim is not nobody's");
    // Loaded halfway through the check's call-flow window.
    let mut child = traced
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut s).unwrap();
        s
    });
    // Its log, read to the end (a pipe closed early would kill it).
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = Vec::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l.clone());
            all.push(l);
        }
        all
    });
    let mut err = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(120)) {
        let half = l.contains("censuses of the guest's tasks taken halfway");
        err.push(l);
        if half {
            break;
        }
    }
    let half = Instant::now();
    let out = sh(&format!(
        "insmod {dir}/rk_cred.ko pid={pid} how={how}; echo rc=$?"
    ));
    assert!(out.contains("rc=0"), "{out}\n{err:#?}");
    let loaded = half.elapsed().as_secs_f64();
    eprintln!(
        "root by credentials ({how}): rk_cred loaded {loaded:.2} s after the window's first census"
    );
    assert_eq!(
        uids(sh),
        vec!["0"; 4],
        "rk_cred ({how}) did not make it root"
    );
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    let err = log.join().unwrap();
    let f: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(status.code(), Some(1), "{f:#?}\n{err:#?}");
    let task = format!("task {pid} (sleep)");
    assert!(
        has(
            &f,
            "credentials",
            &[
                &format!("{task} became root (uid 65534 euid 65534 -> uid 0 euid 0)"),
                "its credentials were changed behind the kernel's back"
            ]
        ),
        "root by credentials ({how}) was not seen to come with no credential call (insmod returned {loaded:.2} s after the window's first census: if that is more than half the window, the module loaded after the window closed, and the window is too short for this host's speed): {f:#?}\n{err:#?}"
    );
    for x in f.iter().filter(|x| x["kind"] == "credentials") {
        eprintln!("root by credentials ({how}), traced check: {x}");
    }
    // The check's integrity part ran before the module loaded: the next
    // one sees the credential objects as they are now.
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "{f:#?}");
    let parts: Vec<&str> = match how {
        "write" => vec![
            &task,
            "credentials say uid 0 (euid 0), but their user_struct is uid 65534's",
        ],
        "swap" => vec![&task, "shares its credential object", "task 1 ("],
        _ => vec![&task, "runs on init_cred"],
    };
    assert!(
        has(&f, "credentials", &parts),
        "root by credentials ({how}) was not found: {f:#?}"
    );
    sh("rmmod rk_cred");
    sh(&format!("kill {pid}; true"));
    clean("rk_cred unloaded, still reported");
}

/// A module that hides, drawn per run: from the module list and sysfs
/// (`how=list`; then its code is also code no listed module owns), or from
/// sysfs only (`how=sysfs`). Seen to hide, then found. It cannot be unloaded.
pub fn hidden_module(sh: &mut dyn FnMut(&str) -> String, check: &dyn Fn() -> Output, dir: &str) {
    let how = pick("rk_hide hides from", &["list", "sysfs"]);
    let out = sh(&format!("insmod {dir}/rk_hide.ko how={how}; echo rc=$?"));
    assert!(out.contains("rc=0"), "{out}");
    let listed = sh("cat /proc/modules").contains("rk_hide");
    let in_sysfs = sh("ls /sys/module").contains("rk_hide");
    assert!(
        !in_sysfs && listed == (how == "sysfs"),
        "rk_hide did not hide"
    );
    let o = check();
    assert_eq!(o.status.code(), Some(1));
    let f = findings(&o);
    assert!(
        has(&f, "hidden-module", &["module rk_hide ", "hid itself"]),
        "{f:#?}"
    );
    if how == "list" {
        // ... and, independently, its code as code no listed module owns.
        assert!(
            has(&f, "hidden-code", &["the code of module rk_hide,"]),
            "{f:#?}"
        );
    } else {
        assert!(
            has(
                &f,
                "hidden-module",
                &["in the module list but not in sysfs"]
            ),
            "{f:#?}"
        );
    }
}

/// rk_data_ptr's sysctls (path under /proc/sys) with the .data table each
/// sits in: tables registered as they are (no directories among their
/// entries), so that /proc/sys calls through the entry swapped.
const DATA_PTR_TARGETS: &[(&str, &str)] = &[
    ("kernel/hostname", "uts_kern_table"),
    ("vm/overcommit_memory", "vm_table"),
    ("fs/file-nr", "fs_stat_sysctls"),
    ("fs/inode-nr", "inodes_sysctls"),
    ("fs/dentry-state", "fs_dcache_sysctls"),
    ("fs/epoll/max_user_watches", "epoll_table"),
    ("kernel/pty/nr", "pty_table"),
];

/// A case of [`control_data_hooks`]: the module, its arguments, what makes
/// it fire, the finding's kind and detail words, and whether a finding must
/// be owned by the module.
type ControlCase = (
    &'static str,
    String,
    String,
    &'static str,
    Vec<String>,
    bool,
);

/// Control data outside the tables the kernel registers hooks in, each at
/// a target drawn for this run: a function pointer in writable kernel data
/// (a sysctl's handler), a heap object's operation table swapped for a copy
/// (a mounted file system's root inode), a network protocol handler, and
/// module code the kernel runs later (a timer, an hrtimer, a delayed work
/// item or a kernel thread). Each is seen to fire, found with the right
/// kind naming its module (where the hooked code is the module's), and gone
/// once unloaded, with what it hooked still working. `sh`, `check` and
/// `dir` as for [`body_hooks`].
pub fn control_data_hooks(
    sh: &mut dyn FnMut(&str) -> String,
    check: &dyn Fn() -> Output,
    dir: &str,
) {
    let clean = nothing_beyond_now(check);
    let last = |o: String| last_line(&o);

    let mut cases: Vec<ControlCase> = Vec::new();

    let (sysctl, table) = pick("rk_data_ptr sysctl", DATA_PTR_TARGETS);
    cases.push((
        "rk_data_ptr",
        format!("target={sysctl}"),
        format!("cat /proc/sys/{sysctl} > /dev/null"),
        "control-data",
        vec![format!("{table}+0x"), "in module rk_data_ptr".into()],
        true,
    ));

    let path = pick("rk_heap_ops mount", &["/", "/proc", "/sys", "/dev"]);
    let copy = pick("rk_heap_ops copy", &["heap", "module"]);
    // The file system type of what is mounted there (the last mount on top).
    let fstype = last(sh(&format!(
        "awk '$2==\"{path}\" {{t=$3}} END {{print t}}' /proc/mounts"
    )));
    assert!(
        !fstype.is_empty() && !fstype.contains(' '),
        "nothing mounted at {path}: {fstype:?}"
    );
    let mut parts = vec!["i_fop".to_string(), format!("root inode of {fstype}")];
    if copy == "module" {
        parts.push("in module rk_heap_ops".into());
    }
    cases.push((
        "rk_heap_ops",
        format!("path={path} copy={copy}"),
        format!("ls {path} > /dev/null"),
        "object-operations",
        parts,
        copy == "module",
    ));

    // Loopback traffic of each kind, with the busybox guest's tools or
    // Debian's (no ping there: a UDP datagram to a closed port draws an
    // ICMP port unreachable; wget or curl to a closed port or to nginx).
    let target = pick("rk_sock target", &["icmp", "tcp", "ptype"]);
    let (trigger, point) = match target {
        "icmp" => (
            "ip link set lo up 2>/dev/null; (ping -c 2 127.0.0.1; \
             bash -c 'echo x > /dev/udp/127.0.0.1/9') > /dev/null 2>&1; true"
                .to_string(),
            "inet_protos[1]",
        ),
        "tcp" => (
            "ip link set lo up 2>/dev/null; (wget -q -O /dev/null http://127.0.0.1:9/; \
             curl -s -o /dev/null http://127.0.0.1/) > /dev/null 2>&1; true"
                .to_string(),
            "inet_protos[6]",
        ),
        _ => (LOOPBACK_TRAFFIC.to_string(), "packet handler"),
    };
    cases.push((
        "rk_sock",
        format!("target={target}"),
        trigger,
        "object-operations",
        vec![point.into(), "in module rk_sock".into()],
        true,
    ));

    let (how, what) = pick(
        "rk_deferred kind",
        &[
            ("timer", "timer"),
            ("hrtimer", "hrtimer"),
            ("work", "delayed work"),
            ("kthread", "kernel thread"),
        ],
    );
    cases.push((
        "rk_deferred",
        format!("how={how}"),
        "sleep 1".into(),
        "deferred-code",
        vec![what.into(), "in module rk_deferred".into()],
        true,
    ));

    for (module, args, trigger, kind, parts, owned) in &cases {
        let out = sh(&format!("insmod {dir}/{module}.ko {args}"));
        assert!(!out.contains("rror"), "{module}: {out}");
        let mut n = 0u64;
        for _ in 0..3 {
            sh(trigger);
            n = param(sh, module, "fired").parse().unwrap_or(0);
            if n > 0 {
                break;
            }
        }
        assert!(n > 0, "{module} {args} did not fire");
        let o = check();
        let f = findings(&o);
        assert_eq!(o.status.code(), Some(1), "{module} not reported: {f:#?}");
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert!(
            has(&f, kind, &parts),
            "{module} {args}: no {kind} finding with {parts:?} in {f:#?}"
        );
        assert!(
            !owned || f.iter().any(|x| x["owner"] == *module),
            "{module} {args}: no finding owned by the module in {f:#?}"
        );
        // ... and the module itself, once, as inventory.
        assert!(
            f.iter().any(|x| x["kind"] == "foreign-module"
                && x["owner"] == *module
                && x["severity"] == "low"),
            "{module}: not listed as a module the build does not ship: {f:#?}"
        );
        // A directory opened through rk_heap_ops's copy holds the module
        // until it is closed: try again a while.
        sh(&format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do rmmod {module} 2>/dev/null && break; sleep 0.5; done"
        ));
        let gone = last(sh(&format!(
            "grep -q '^{module} ' /proc/modules && echo loaded || echo gone"
        )));
        assert_eq!(gone, "gone", "{module} did not unload");
        // What it hooked still works.
        sh(trigger);
        clean(&format!("{module} unloaded, still reported"));
    }
}

/// A kernel thread that oopses, hits BUG() or warns in a work item
/// (rk_oops, drawn per run), while `watch` (the command, not started)
/// runs: the event reaches it as a `kernel-log` finding with the kernel's
/// lines about it, naming the module. Returns how long after insmod
/// returned `watch` printed it. The module stays loaded (a work item that
/// oopsed never finishes).
pub fn kernel_oops(sh: &mut dyn FnMut(&str) -> String, mut watch: Command, dir: &str) -> Duration {
    use std::io::{BufRead, BufReader};
    let how = pick("rk_oops how", &["null", "bug", "warn"]);
    let mut w = watch
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for (out, r) in [
        (
            true,
            Box::new(w.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        ),
        (false, Box::new(w.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send((out, Instant::now(), l));
            }
        });
    }
    let mut seen = Vec::new();
    let next = |until: Instant, seen: &mut Vec<String>| {
        let r = rx.recv_timeout(until.saturating_duration_since(Instant::now()));
        let (out, t, l) = r.unwrap_or_else(|_| {
            panic!("watch printed nothing more in time (rk_oops how={how}): {seen:#?}")
        });
        seen.push(l.clone());
        (out, t, l)
    };
    // Once watch follows the log, what the kernel writes is news.
    let until = Instant::now() + Duration::from_secs(60);
    while !next(until, &mut seen)
        .2
        .contains("following the guest kernel's log after its record")
    {}
    let out = sh(&format!("insmod {dir}/rk_oops.ko how={how}; echo rc=$?"));
    let loaded = Instant::now();
    assert!(out.contains("rc=0"), "{out}");
    let until = loaded + Duration::from_secs(20);
    let (t, line) = loop {
        let (out, t, l) = next(until, &mut seen);
        if out && l.contains("\"kernel-log\"") {
            break (t, l);
        }
    };
    let _ = w.kill();
    let _ = w.wait();
    // The guest prints the Oops to its serial console long after its log
    // holds it (seconds under TCG, with the CPU held): a shell command's
    // answer on that console comes after it.
    sh("true");
    let f: serde_json::Value = serde_json::from_str(&line).unwrap();
    let (detail, evidence) = (
        f["detail"].as_str().unwrap_or(""),
        f["evidence"].as_str().unwrap_or(""),
    );
    let want = match how {
        "null" => "the guest kernel logged a BUG: BUG: kernel NULL pointer dereference",
        "bug" => "the guest kernel logged a BUG: kernel BUG at ",
        _ => "the guest kernel logged a warning: WARNING: CPU: ",
    };
    assert!(detail.starts_with(want), "rk_oops how={how}: {f:#}");
    assert!(
        evidence.contains("rk_oops"),
        "the event's lines do not name the module: {f:#}"
    );
    assert_eq!(f["severity"], "medium", "{f:#}");
    let took = t.saturating_duration_since(loaded);
    eprintln!("kernel log: watch printed {line}");
    eprintln!(
        "kernel log: {how} in a work item reported by watch {:.2} s after insmod returned",
        took.as_secs_f64()
    );
    took
}

/// A user-space passive backdoor (magic_sniff): a raw socket or a packet
/// socket, drawn per run, with a classic BPF filter that lets through
/// only its magic packet. Seen to work in the guest, then found as a
/// `socket-filter` finding naming its PID, its command and the filter;
/// killed, nothing is left.
pub fn magic_packet_filter(
    sh: &mut dyn FnMut(&str) -> String,
    check: &dyn Fn() -> Output,
    dir: &str,
) {
    let clean = nothing_beyond_now(check);
    let family = pick("magic_sniff socket", &["inet", "packet"]);
    sh(&format!(
        "ip link set lo up; rm -f /tmp/magic_sniff.out; {{ setsid {dir}/magic_sniff {family} < /dev/null > /dev/null 2>&1 & }}"
    ));
    let until = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let o = sh("cat /tmp/magic_sniff.out 2>/dev/null");
        if let Some(p) = o
            .lines()
            .find_map(|l| l.strip_prefix("filter works: pid "))
            .and_then(|r| r.split(',').next())
        {
            break p.trim().to_string();
        }
        assert!(
            Instant::now() < until && !o.contains("something else"),
            "magic_sniff {family}: the filter was not seen to work: {o}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let o = check();
    let f = findings(&o);
    assert_eq!(o.status.code(), Some(1), "magic_sniff not reported: {f:#?}");
    let kind = if family == "packet" {
        "packet/raw"
    } else {
        "inet/raw"
    };
    assert!(
        has(
            &f,
            "socket-filter",
            &[
                &format!("of pid {pid} (magic_sniff) ({kind}) has a classic BPF filter of 5 instructions attached"),
            ]
        ),
        "magic_sniff {family} (pid {pid}): no socket-filter finding naming it: {f:#?}"
    );
    // A packet socket put loopback in promiscuous mode: inventory.
    assert_eq!(
        f.iter().any(|x| x["kind"] == "socket-filter"
            && x["severity"] == "low"
            && x["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("network device lo of netns ")
                    && d.ends_with("is in promiscuous mode: it receives every frame on its link"))),
        family == "packet",
        "magic_sniff {family}: promiscuous loopback reported wrong: {f:#?}"
    );
    sh("kill $(pidof magic_sniff); sleep 1");
    clean("magic_sniff killed, still reported");
}
