//! What xftrace reads from the real guest kernel build (no guest needed):
//! its call graph (`kernel::callgraph`): the calls the kernel makes are
//! allowed, a jump the build does not contain is not; its BTF
//! (`kernel::btf`): the layout of `struct module`; and its own symbol
//! table (`kernel::kallsyms`, what a stock kernel's System.map is made of)
//! against the System.map the build wrote.

mod common;

use xftrace::kernel::btf::ModuleLayout;
use xftrace::kernel::callgraph::CallGraph;
use xftrace::kernel::symbols::SystemMap;
use xftrace::kernel::vmlinux::Vmlinux;

/// The build's System.map and vmlinux.
fn build() -> (SystemMap, Vmlinux) {
    let k = common::kernel_dir();
    (
        SystemMap::load(&k.join("System.map")).unwrap(),
        Vmlinux::load(&k.join("vmlinux")).unwrap(),
    )
}

#[test]
fn allows_the_kernels_own_calls_and_nothing_else() {
    let _t = common::timed();
    let (map, v) = build();
    let t = std::time::Instant::now();
    let g = CallGraph::new(&v, &map).unwrap();
    eprintln!(
        "call graph of the build: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Direct calls, on an error path too.
    assert!(g.allows("__x64_sys_openat", "do_sys_openat2"));
    assert!(g.allows("do_sys_openat2", "put_unused_fd"));
    assert!(g.allows("ksys_read", "vfs_read"));
    // Indirect calls through operation tables.
    assert!(g.allows("vfs_read", "ext4_file_read_iter"));
    assert!(g.allows("iterate_dir", "dcache_readdir"));
    // What an interrupt's exit or an exception runs in task context lands
    // under whatever it hit (seen on a clean Debian guest).
    assert!(g.allows("do_sys_openat2", "idle_cpu"));
    assert!(g.allows("do_sys_openat2", "__kthread_should_park"));
    assert!(g.allows("_copy_to_user", "do_user_addr_fault"));
    // What the build does not contain.
    assert!(!g.allows("do_sys_openat2", "vfs_read"));
    assert!(!g.allows("ksys_read", "do_sys_openat2"));
    assert!(!g.allows("iterate_dir", "0xffffffffc0b37000"));
    // Code outside the image is judged elsewhere (unknown code).
    assert!(g.allows("0xffffffffc0b37000", "iterate_dir"));
}

#[test]
fn btf_gives_the_layout_of_struct_module() {
    let _t = common::timed();
    let k = common::kernel_dir();
    let v = Vmlinux::load(&k.join("vmlinux")).unwrap();
    let btf = v.btf().expect("the build has BTF (CONFIG_DEBUG_INFO_BTF)");
    let l = ModuleLayout::from_btf(btf).expect("struct module with core_layout");
    eprintln!("struct module: {l:?}");
    // 6.1: `enum module_state state; struct list_head list; char name[56];`
    assert_eq!((l.list, l.name), (8, 24));
    assert_eq!(
        l.text_size,
        l.text_base + 12,
        "core_layout: base, size, text_size"
    );
    assert!(l.text_base > l.name + 56);
    assert_eq!(btf.offset_of("list_head", &["next"]), Some(0));
}

/// The symbol table xftrace rebuilds from a stripped kernel's kallsyms
/// tables (for a distribution's kernel, whose System.map is not shipped) is
/// the build's System.map: every decoded symbol at its address, and every
/// line of the map decoded but those kallsyms leaves out by design (its own
/// tables, two absolute symbols, the `init_per_cpu__` aliases).
#[test]
fn kallsyms_of_the_build_is_its_system_map() {
    let _t = common::timed();
    let k = common::kernel_dir();
    let v = std::fs::read(k.join("vmlinux")).unwrap();
    let truth = std::fs::read_to_string(k.join("System.map")).unwrap();
    let got = xftrace::kernel::kallsyms::symbols(&v).unwrap();
    // System.map as a multiset of (address, name): it repeats a few.
    let mut left: std::collections::HashMap<(u64, &str), usize> = Default::default();
    for l in truth.lines() {
        let mut it = l.split_whitespace();
        let (Some(a), Some(_), Some(n)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        *left
            .entry((u64::from_str_radix(a, 16).unwrap(), n))
            .or_default() += 1;
    }
    for s in &got {
        let n = left
            .get_mut(&(s.addr, s.name.as_str()))
            .filter(|n| **n > 0)
            .unwrap_or_else(|| panic!("decoded {:#x} {}, not in System.map", s.addr, s.name));
        *n -= 1;
    }
    let missing: Vec<&str> = left
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((_, name), _)| *name)
        .collect();
    let by_design = |n: &str| {
        n.starts_with("kallsyms_")
            || n.starts_with("init_per_cpu__")
            || n == "text_size"
            || n == "phys_startup_64"
    };
    assert!(
        missing.iter().all(|n| by_design(n)),
        "System.map lines not decoded: {missing:?}"
    );
    assert!(got.len() > 50_000, "{} symbols", got.len());
    eprintln!(
        "kallsyms: {} symbols decoded, all in System.map; {} of its lines left out by design",
        got.len(),
        missing.len()
    );
}

/// What enabling ftrace only on the functions a traced system call can
/// reach would leave off (issue 27): a call of `sys_read` reaches the
/// functions of file operations through an indirect call, which the
/// direct calls alone do not show; counted with them, its reach is most of
/// what ftrace can trace. The figures are printed for the README.
#[test]
fn a_traced_calls_reach_holds_its_indirect_targets() {
    let _t = common::timed();
    let (map, v) = build();
    let g = CallGraph::new(&v, &map).unwrap();
    let a = |n: &str| map.addr(n).unwrap_or_else(|| panic!("{n} in System.map"));
    let read = [a("__x64_sys_read")];
    let direct = g.reach(&read, false);
    let sound = g.reach(&read, true);
    assert!(direct.contains(&a("vfs_read")));
    // pipe_read is reached only through pipefifo_fops.read_iter.
    assert!(!direct.contains(&a("pipe_read")));
    assert!(sound.contains(&a("pipe_read")));
    // Interrupts and exceptions land inside a traced call.
    assert!(sound.contains(&a("handle_mm_fault")));
    // The syscall table takes every entry point's address: a sound reach
    // of one system call holds the others.
    assert!(sound.contains(&a("__x64_sys_getppid")));
    assert!(direct.is_subset(&sound));
    // getppid calls nothing indirectly; its direct reach is a few functions.
    let getppid = g.reach(&[a("__x64_sys_getppid")], false);
    assert!(getppid.contains(&a("__task_pid_nr_ns")), "{getppid:?}");
    assert!(getppid.len() < 50, "{}", getppid.len());
    let total = g.traceable_count();
    let ten: Vec<u64> = [
        "__x64_sys_read",
        "__x64_sys_write",
        "__x64_sys_openat",
        "__x64_sys_close",
        "__x64_sys_newfstat",
        "__x64_sys_mmap",
        "__x64_sys_execve",
        "__x64_sys_clone",
        "__x64_sys_sendto",
        "__x64_sys_recvfrom",
    ]
    .iter()
    .map(|n| a(n))
    .collect();
    let ten_direct = g.traceable_among(&g.reach(&ten, false));
    let ten_sound = g.traceable_among(&g.reach(&ten, true));
    let (d, s) = (g.traceable_among(&direct), g.traceable_among(&sound));
    eprintln!(
        "call sites ftrace can patch: {total}; reached by sys_read: {d} by direct calls, {s} ({:.1} %) with indirect targets and interrupts; by ten system calls: {ten_direct} and {ten_sound}; by getppid directly: {}",
        100.0 * s as f64 / total as f64,
        g.traceable_among(&getppid)
    );
    assert!(s <= total && d < s);
}

/// The kernel build reports its progress (issue 28): it keeps how many
/// units it compiled, the next build's total, and `progress.sh` turns a
/// growing log into units done of that total and time left.
#[test]
fn the_kernel_build_reports_units_done_and_time_left() {
    use std::io::Write;
    let _t = common::timed();
    let units: u64 = std::fs::read_to_string(common::kernel_dir().join("units"))
        .expect("the build keeps its unit count (guest-kernel/build.sh)")
        .trim()
        .parse()
        .unwrap();
    assert!(units > 1_000, "{units} units");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("build.log");
    let lines = |n: usize, f: &mut std::fs::File| {
        for i in 0..n {
            writeln!(
                f,
                "  CC      kernel/u{i}.o\n  LD      x.o\n  CC [M]  fs/m{i}.o"
            )
            .unwrap();
        }
    };
    let mut f = std::fs::File::create(&log).unwrap();
    lines(50, &mut f); // 100 units from an earlier run of the build
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kernel/progress.sh");
    // progress.sh LOG TOTAL PROFILE 1: a line a second; its lines, as they
    // come.
    let run = |total: &str, profile: &str| {
        let mut c = std::process::Command::new(&script)
            .args([log.to_str().unwrap(), total, profile, "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(c.stderr.take().unwrap()));
        (c, lines.map(Result::unwrap))
    };
    let (mut known, mut known_says) = run("400", "small");
    let (mut unknown, mut unknown_says) = run("0", "cloud");
    // The first line of each: both counted the earlier run's units.
    let first = known_says.next().unwrap();
    assert!(
        first.starts_with("guest-kernel: 100/400 units compiled (25 %), "),
        "{first}"
    );
    assert!(
        !first.contains("left"),
        "nothing compiled in this run yet: {first}"
    );
    unknown_says.next().unwrap();
    lines(50, &mut f); // 100 units in this run
                       // 200 of 400 done, 100 of them in this run's time: about as long again.
    let next = known_says.next().unwrap();
    assert!(
        next.starts_with("guest-kernel: 200/400 units compiled (50 %), ")
            && next.ends_with(" s left"),
        "{next}"
    );
    let next = unknown_says.next().unwrap();
    assert!(
        next.starts_with("guest-kernel: 200 units compiled, ")
            && next.ends_with("(no earlier build of this profile to estimate the total)"),
        "{next}"
    );
    // Past the total: what is left is linking and packaging.
    let (mut past, mut past_says) = run("150", "small");
    let next = past_says.next().unwrap();
    assert!(
        next.starts_with("guest-kernel: 200 units compiled, ")
            && next.ends_with(" in: linking and packaging"),
        "{next}"
    );
    for c in [&mut known, &mut unknown, &mut past] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
