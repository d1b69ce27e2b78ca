//! Fuzzing harnesses: the code that parses what a guest, a domain
//! definition or a trusted-but-foreign file hands xftrace, driven by
//! arbitrary bytes. `fuzz/` runs them under cargo-fuzz (libFuzzer);
//! `tests/fuzz_corpus.rs` replays their corpora and every crash input on
//! stable Rust, so what fuzzing found stays fixed.
//!
//! Each harness must return normally for every input: a panic, an abort or
//! an allocation beyond libFuzzer's RSS limit is a defect.
#![doc(hidden)]
#![allow(clippy::arithmetic_side_effects)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::abi::{self, Record};
use crate::detect::checks::{Context, Report, CHECKS};
use crate::detect::FindingKind;
use crate::guest::addr::VirtAddr;
use crate::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use crate::host::statedir::GuestDir;
use crate::kernel::btf::Btf;
use crate::kernel::locate::{self, GuestKernel, LocateOptions};
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::Vmlinux;
use crate::trace::keys::Klog;
use crate::trace::rings::RingReader;

use super::synthetic::{
    census_btf, elf, elf_with_btf, synthetic_kernel, MAP, RAM, RINGS_PA, RING_SLOTS, TEXT_PA,
};

fn pa(map: &SystemMap, sym: &str) -> u64 {
    map.addr(sym).expect("symbol in MAP") - map.addr("_text").unwrap() + TEXT_PA
}

/// A guest RAM file (shared by all harnesses of a process) holding a
/// consistent kernel; [`Guest::reset`] puts it back after each input.
struct Guest {
    file: File,
    ram: GuestRam,
    map: SystemMap,
    baseline: Vec<(u64, Vec<u8>)>,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("ram");
        let file = File::create(&path).expect("create RAM file");
        file.set_len(RAM).expect("size RAM file");
        let ram =
            GuestRam::open(&path, MemoryLayout::x86(RAM, Machine::Pc, None)).expect("map RAM");
        let map = SystemMap::parse(MAP).expect("MAP parses");
        let mut g = Guest {
            file,
            ram,
            map,
            baseline: Vec::new(),
            _dir: dir,
        };
        g.build();
        g
    }

    fn put(&mut self, at: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, at).expect("write RAM file");
        self.baseline.push((at, bytes.to_vec()));
    }

    /// The kernel every input starts from.
    fn build(&mut self) {
        let mut writes = Vec::new();
        synthetic_kernel(TEXT_PA, &mut |gpa, b| writes.push((gpa, b.to_vec())));
        for (gpa, b) in writes {
            self.put(gpa, &b);
        }
    }

    /// Zero what the last input changed and rebuild the kernel.
    fn reset(&mut self, dirty: &[(u64, usize)]) {
        for &(at, len) in dirty {
            self.file
                .write_all_at(&vec![0u8; len], at)
                .expect("reset RAM file");
        }
        let base = std::mem::take(&mut self.baseline);
        for (at, b) in &base {
            self.file.write_all_at(b, *at).expect("reset RAM file");
        }
        self.baseline = base;
    }
}

fn with_guest<R>(f: impl FnOnce(&mut Guest) -> R) -> R {
    static G: OnceLock<Mutex<Guest>> = OnceLock::new();
    let m = G.get_or_init(|| Mutex::new(Guest::new()));
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    // Nothing changes the guest while a check looks twice: no waiting for
    // it to settle (100 ms an input, when every check ran).
    crate::base::settle::without_settling(|| f(&mut g))
}

/// What the checks' harnesses share, built once rather than per input:
/// the trusted build (a vmlinux of zeros), the guest's state directory and
/// the BTF of the census's objects.
struct Fixed {
    vmlinux: Vmlinux,
    state: GuestDir,
    btf: Btf,
    _dir: tempfile::TempDir,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, elf(0xffff_ffff_8100_0000, &[0u8; 0x1000], &[])).expect("vmlinux");
        Fixed {
            vmlinux: Vmlinux::load(&p).expect("vmlinux loads"),
            state: GuestDir::for_domain(&dir.path().join("state"), "fuzz").expect("state dir"),
            btf: Btf::parse(&census_btf()).expect("census BTF"),
            _dir: dir,
        }
    })
}

/// The checks' view of the guest's kernel `k`. The heartbeat the tracer
/// check compares with is 0, read long ago: its liveness test answers at
/// once (alive unless the input zeroed the heartbeat) instead of waiting
/// 2 s for a beat.
fn context<'a>(g: &'a Guest, k: &'a GuestKernel) -> Context<'a> {
    let f = fixed();
    let mut view = crate::kernel::guest::KernelView::new(&g.ram, &g.map, k);
    view.btf = Some(&f.btf);
    view.max_vcpus = Some(2);
    let mut cx = Context::new(view, &f.vmlinux, &f.state);
    let past = std::time::Instant::now();
    cx.heartbeat = Some((
        0,
        past.checked_sub(std::time::Duration::from_secs(3))
            .unwrap_or(past),
    ));
    cx
}

/// Run the checks `which` selects, and print what they found.
fn run_checks(cx: &Context, mut which: impl FnMut(FindingKind) -> bool) {
    let mut out = Vec::new();
    for c in CHECKS.iter().filter(|c| which(c.kind())) {
        c.run(cx, &mut Report::new(c.kind(), &mut out));
    }
    for f in out {
        let _ = f.to_string();
    }
}

/// The checks of the census of kernel objects: the `census` target's.
const CENSUS: [FindingKind; 2] = [FindingKind::ObjectOperations, FindingKind::DeferredCode];

/// Where the harnesses let the input land: (name of the area, guest
/// physical address, length).
fn areas(map: &SystemMap) -> Vec<(u64, usize)> {
    vec![
        (pa(map, "xftrace_control"), 4096),
        (pa(map, "init_top_pgt"), 4096),
        (pa(map, "level3_kernel_pgt"), 4096),
        (pa(map, "level2_kernel_pgt"), 4096),
        (pa(map, "linux_banner"), 512),
        (pa(map, "xftrace_heads"), 256),
        (RINGS_PA, (2 * RING_SLOTS * 64) as usize),
        (pa(map, "modules"), 64),
        (pa(map, "ftrace_ops_list"), 512),
        (13 << 20, 4096),
        // Where the control block of a second, sprayed "kernel" loaded at
        // physical 0 would be.
        (pa(map, "xftrace_control") - TEXT_PA, 4096),
        // The heads of the census of kernel objects (`kernel::objects`).
        (pa(map, "super_blocks"), 4096),
    ]
}

/// Where the `census` target lets the input land.
fn census_areas(map: &SystemMap) -> Vec<(u64, usize)> {
    let heads = pa(map, "super_blocks");
    vec![
        // The census's heads (super_blocks to socket_file_ops, nr_cpu_ids,
        // __per_cpu_offset): the seeds put the objects there too.
        (heads, 4096),
        // The image's unused data after them, mapped: objects anywhere.
        (heads + 4096, 0x4000),
        // The module page (0xffffffffc0000000): callbacks and tables.
        (13 << 20, 4096),
    ]
}

/// Spread `data` over the areas of [`areas`].
fn apply(g: &mut Guest, data: &[u8]) -> Vec<(u64, usize)> {
    let areas = areas(&g.map);
    apply_to(g, data, &areas)
}

/// Spread `data` over `areas`: each chunk is `area index, offset (2
/// bytes), length (2 bytes), bytes`.
fn apply_to(g: &mut Guest, data: &[u8], areas: &[(u64, usize)]) -> Vec<(u64, usize)> {
    let mut dirty = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 {
        let (area, off, len) = (
            rest[0] as usize % areas.len(),
            u16::from_le_bytes([rest[1], rest[2]]) as usize,
            u16::from_le_bytes([rest[3], rest[4]]) as usize,
        );
        rest = &rest[5..];
        let (base, size) = areas[area];
        let off = off % size;
        let len = len.min(size - off).min(rest.len());
        let _ = g.file.write_all_at(&rest[..len], base + off as u64);
        dirty.push((base + off as u64, len));
        rest = &rest[len..];
    }
    dirty
}

/// Locating the kernel, the control block and everything read on the way.
pub fn locate(data: &[u8]) {
    with_guest(|g| {
        let dirty = apply(g, data);
        for confirm in [true, false] {
            let opts = LocateOptions {
                confirm_with_page_tables: confirm,
            };
            if let Ok(found) = locate::locate_all(
                &g.ram,
                &g.map,
                Some("Linux version 6.1.192 (fuzz) #1"),
                opts,
            ) {
                for k in &found.kernels {
                    let _ = locate::max_low_pfn(&g.ram, &g.map, k);
                    if let Some(c) = &k.tracer {
                        let _ = crate::trace::switch::read_status(&g.ram, c);
                        let _ = k.page_tables(&g.ram).translate(VirtAddr(c.header.ctl_va));
                    }
                }
                // The slow path (a scan of all RAM) for one input in eight.
                if found.kernels.is_empty() && data.first().is_some_and(|b| b & 7 == 0) {
                    let _ = locate::not_found(&g.ram, &found).to_string();
                }
            }
            // The same RAM as a stock kernel's (no control block needed):
            // the banner at each base, the slide from the page tables; and
            // the scan for banners (all of the harness's RAM, 20 ms), for
            // one input in 256.
            if let Ok(found) =
                locate::locate_stock_all(&g.ram, &g.map, "Linux version 6.1.192 (fuzz) #1")
            {
                for k in &found.kernels {
                    let _ = locate::max_low_pfn(&g.ram, &g.map, k);
                }
            }
            if data.first() == Some(&0xb5) {
                let _ = locate::banners_in(&g.ram, 4);
            }
        }
        g.reset(&dirty);
    })
}

/// Reading the rings: heads, ring addresses, slots and key slots as the
/// guest left them, polled twice around a rotation.
pub fn rings(data: &[u8]) {
    with_guest(|g| {
        let Some(k) = locate::locate(&g.ram, &g.map, None)
            .ok()
            .and_then(|k| k.tracer)
        else {
            return;
        };
        let Ok(mut rd) = RingReader::start(&g.ram, &k) else {
            return;
        };
        let dirty = apply(g, data);
        let mut klog = Klog::default();
        for e in 1..4u64 {
            klog.insert(e, e.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let mut n = 0u64;
        let _ = rd.note_rotation(&g.ram, &k, 2);
        for _ in 0..2 {
            let _ = rd.poll(
                &g.ram,
                &k,
                &klog,
                |r| n = n.wrapping_add(r.seq),
                |a| {
                    let _ = a.to_string();
                },
            );
            let _ = rd.note_rotation(&g.ram, &k, 3);
        }
        let _ = rd.stats.integrity_failures();
        g.reset(&dirty);
    })
}

/// Records from a hostile spool (or a guest with the key), rendered and
/// analysed for call flow.
pub fn render(data: &[u8]) {
    let mut recs: Vec<Record> = Vec::new();
    for c in data.chunks_exact(24).take(4096) {
        let w = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap());
        let (a, b, info) = (w(0), w(8), w(16));
        recs.push(Record {
            cpu: (info >> 56) as u32 % 4,
            seq: 0,
            epoch: 1,
            kind: if info & 1 == 0 {
                abi::Kind::Entry
            } else {
                abi::Kind::Return
            },
            func: 0xffff_ffff_a000_0000 | (a & 0xfff),
            time: b,
            calltime: b.wrapping_sub(a),
            depth: ((info >> 1) & 0xff_ffff) as u32,
            pid: (info >> 32) as u32 & 7,
            overrun: info >> 40,
            comm: *b"fuzz\0\0\0\0\0\0\0\0\0\0\0\0",
        });
    }
    let name = |a: u64| format!("{a:#x}");
    let text = crate::trace::render::render_to_string(&recs, 4, &name, &["fuzz".into()]);
    // Output grows with the records, never with a field's value.
    assert!(
        text.len() <= 512 + recs.len() * 400,
        "{} bytes for {} records",
        text.len(),
        recs.len()
    );
    let flow = crate::detect::callflow::analyze(recs, &name, &|a| a & 0x800 == 0, 3);
    let b = crate::detect::callflow::Baseline {
        functions: vec![],
        depth: 3,
        edges: flow.edges.clone(),
    };
    let _ = crate::detect::callflow::new_edges(&b, &flow.edges, &|a, b| a.len() < b.len());
}

/// Page-table walks from hostile tables.
pub fn paging(data: &[u8]) {
    with_guest(|g| {
        let dirty = apply(g, data);
        let root = GuestAddress(pa(&g.map, "init_top_pgt"));
        for five in [false, true] {
            let pt = crate::guest::paging::PageTables::new(&g.ram, root, five);
            let _ = pt.executable_ranges(256, 4096);
            for c in data.chunks_exact(8).take(16) {
                let va = u64::from_le_bytes(c.try_into().unwrap());
                let _ = pt.walk(VirtAddr(va));
                let _ = pt.leaf(VirtAddr(va));
                let mut buf = [0u8; 64];
                let _ = pt.read(VirtAddr(va), &mut buf);
            }
        }
        g.reset(&dirty);
    })
}

/// Every check of guest memory over a hostile guest but the census's (the
/// `census` target's), the search for the xftrace-dkms module's control
/// block, and every walk of a kernel structure (lists, chains, trees,
/// XArrays, per-CPU) from heads the input chooses.
pub fn kernel_lists(data: &[u8]) {
    with_guest(|g| {
        let Ok(k) = locate::locate(&g.ram, &g.map, None) else {
            return;
        };
        let dirty = apply(g, data);
        let cx = context(g, &k);
        // A quarter of the checks per input, chosen by the first byte's top
        // bits (its low bits choose the area of the first chunk): every
        // check still meets every kind of input, at four times the rate.
        let quarter = data.first().map_or(0, |b| usize::from(b >> 6));
        let mut i = 0usize;
        run_checks(&cx, |kind| {
            i += 1;
            !CENSUS.contains(&kind) && i % 4 == quarter
        });
        // The xftrace-dkms module's tracer, looked for in the module list.
        let _ = crate::kernel::dkms::find(&cx.view);
        for c in data.chunks_exact(8).take(8) {
            let a = u64::from_le_bytes(c.try_into().unwrap());
            let _ = cx.name(a);
            // Every walk of a kernel structure, from a head anywhere.
            let _ = cx.xarray(a, 4096);
            let _ = cx.list(a, 4096).count();
            let _ = cx.chain_at(a, 8, 0, 4096).count();
            let _ = cx.rb_tree(a, 4096).count();
            let _ = cx.per_cpu(a);
        }
        g.reset(&dirty);
    })
}

/// The census of kernel objects (`kernel::objects`: super blocks, files,
/// sockets, ...; timers, work, threads, IRQ handlers) from hostile objects
/// at the census's heads, and the checks that judge what it finds.
pub fn census(data: &[u8]) {
    with_guest(|g| {
        let Ok(k) = locate::locate(&g.ram, &g.map, None) else {
            return;
        };
        let areas = census_areas(&g.map);
        let dirty = apply_to(g, data, &areas);
        let cx = context(g, &k);
        run_checks(&cx, |kind| CENSUS.contains(&kind));
        g.reset(&dirty);
    })
}

/// A loadable module file (`.ko`, from the build: trusted, but parsed
/// with bounds all the same): laid out, indexed, and compared with loaded
/// code that is all zeros and with code that is its own.
pub fn ko(data: &[u8]) {
    if let Ok(k) = crate::kernel::modcode::KoImage::parse(data) {
        let zeros = vec![0u8; k.text_size() as usize];
        let import = |_: &str, at: u64| -> Result<u64, bool> { Ok(at) };
        let _ = k.compare(&zeros, 0xffff_ffff_c000_0000, &import);
        let _ = k.compare(&zeros[..zeros.len() / 2], 0xffff_ffff_c000_0000, &import);
    }
}

/// Hostile BTF: parsed, and every struct the walks name looked up in it.
pub fn btf(data: &[u8]) {
    if let Ok(b) = Btf::parse(data) {
        btf_lookups(&b);
    }
}

/// The structs whose fields the walks read by name.
const BTF_STRUCTS: &[&str] = &[
    "address_space",
    "cdev",
    "cfs_rq",
    "console",
    "delayed_work",
    "dentry",
    "fdtable",
    "file",
    "file_system_type",
    "files_struct",
    "hrtimer",
    "hrtimer_clock_base",
    "hrtimer_cpu_base",
    "idr",
    "inode",
    "irq_desc",
    "irqaction",
    "kobject",
    "kset",
    "kthread",
    "kthread_delayed_work",
    "linux_binfmt",
    "list_head",
    "miscdevice",
    "mod_tree_node",
    "mod_tree_root",
    "module",
    "module_kobject",
    "module_layout",
    "net",
    "net_device",
    "net_protocol",
    "nf_hook_entries",
    "nf_hook_entry",
    "notifier_block",
    "packet_type",
    "pid",
    "pid_namespace",
    "proc_dir_entry",
    "proto",
    "qstr",
    "rb_node",
    "rq",
    "sched_entity",
    "security_hook_heads",
    "security_hook_list",
    "signal_struct",
    "sock",
    "sock_common",
    "socket",
    "super_block",
    "super_operations",
    "task_struct",
    "tasklet_struct",
    "timer_base",
    "timer_list",
    "timerqueue_node",
    "tracepoint",
    "tracepoint_func",
    "tty_driver",
    "upid",
    "work_struct",
    "worker",
    "worker_pool",
    "xa_node",
    "xarray",
];

/// Look up every member of every struct of [`BTF_STRUCTS`], alone and
/// followed by a few names (nested paths such as `core_layout.base`).
fn btf_lookups(b: &Btf) {
    let _ = crate::kernel::btf::ModuleLayout::from_btf(b);
    for ty in BTF_STRUCTS {
        let _ = b.size_of(ty);
        for (m, _) in b.members(ty).iter().take(64) {
            let _ = b.offset_of(ty, &[m]);
            for inner in ["base", "name", "next", "size", "list"] {
                let _ = b.offset_of(ty, &[m, inner]);
            }
        }
    }
}

/// Parsing a System.map and resolving names and globs against it.
pub fn system_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = SystemMap::parse(&text) {
        for n in ["sys_read", "read", "__x64_sys_*", "do_[a-z]*", "x"] {
            let _ = m.resolve_function(n);
        }
        let _ = m.containing(0xffff_ffff_8100_0000);
        let _ = m.extent("_text");
    }
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (pat, name) = text.split_at(mid);
    let _ = crate::abi::funcs::check_pattern(pat);
    let _ = crate::kernel::symbols::glob_match(pat, name);
}

/// Parsing a vmlinux: sections, strings, relocations, mcount tables.
pub fn vmlinux(data: &[u8]) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let p = dir
        .path()
        .join(format!("vmlinux-{:?}", std::thread::current().id()));
    if std::fs::write(&p, data).is_err() {
        return;
    }
    if let Ok(v) = crate::kernel::vmlinux::Vmlinux::load(&p) {
        let base = 0xffff_ffff_8100_0000u64;
        let _ = v.bytes(base, 64);
        let _ = v.cstring(base);
        let _ = v.kaslr_relocations(base, base + 0x1000);
        let _ = v.mcount_sites((base, base + 0x100), base, base + 0x1000);
        let _ = v.u64_at(base + 8);
        // Its .BTF section: the field offsets every walk names.
        if let Some(b) = v.btf() {
            btf_lookups(b);
        }
    }
}

/// QEMU's memory map (`info mtree -f`) as a RAM layout.
pub fn mtree(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let backends = ["pc.ram".to_string(), "ram-below-4g".into()];
    let l = MemoryLayout::from_regions(crate::libvirt::connection::parse_mtree(&text, &backends));
    for gpa in [0, 0xfff, 0x10_0000, 0xffff_f000, u64::MAX - 7] {
        let _ = l.locate(GuestAddress(gpa), 8);
        let _ = l.to_file_offset(GuestAddress(gpa), 4096);
    }
    for f in 0..l.nr_files() {
        let _ = l.file_len(f);
        let _ = l.to_gpa(f, 0x1000);
    }
}

/// A domain definition: what the hook decides and what enrollment does.
pub fn domain_xml(data: &[u8]) {
    let xml = String::from_utf8_lossy(data);
    let _ = crate::libvirt::domain_xml::prepare_decision(&xml);
    if let Ok(f) = crate::libvirt::domain_xml::facts(&xml) {
        let _ = crate::libvirt::hook::monitor_args(
            std::path::Path::new("/var/lib/xftrace"),
            "fuzz",
            &f,
            None,
        );
        if let Ok(new) = crate::libvirt::domain_xml::enroll(
            &xml,
            // A stock kernel's enrollment (no System.map) for one input in two.
            data.len()
                .is_multiple_of(2)
                .then_some("/var/lib/xftrace/kernels/x/System.map"),
            &["sys_read".into()],
        ) {
            let _ = crate::libvirt::domain_xml::facts(&new);
            let _ = crate::libvirt::domain_xml::unenroll(&new);
        }
    }
}

/// The seed of `bzimage`: a small ELF and its relocation table, in an LZ4
/// legacy payload.
fn stock_vmlinuz(base: u64) -> Vec<u8> {
    use super::synthetic::{bzimage_of, relocs_table};
    let mut full = elf(base, &[0x90u8; 256], &[]);
    full.extend(relocs_table(&[base + 0x10], &[base + 0x20], &[base + 0x8]));
    bzimage_of(&full)
}

/// A harness: any bytes in, a normal return out.
pub type Harness = fn(&[u8]);

/// Every harness, by the name its fuzz target and corpus directory have.
pub const TARGETS: &[(&str, Harness)] = &[
    ("locate", locate),
    ("rings", rings),
    ("render", render),
    ("paging", paging),
    ("kernel_lists", kernel_lists),
    ("census", census),
    ("btf", btf),
    ("mtree", mtree),
    ("system_map", system_map),
    ("vmlinux", vmlinux),
    ("domain_xml", domain_xml),
    ("ko", ko),
    ("printk", printk),
    ("bzimage", bzimage),
    ("kallsyms", kallsyms),
];

/// A stock kernel's `vmlinuz`: its boot header, LZ4 legacy payload, the
/// ELF and relocation table inside (`kernel::bzimage`). The file comes
/// from a Debian package apt checked, or the operator: not the guest's,
/// but parsed with the same care.
pub fn bzimage(data: &[u8]) {
    if let Ok(u) = crate::kernel::bzimage::unpack(data) {
        let _ = crate::kernel::kallsyms::system_map(&u.vmlinux);
    }
}

/// The kallsyms tables of a stripped vmlinux, turned into a System.map
/// (`kernel::kallsyms`).
pub fn kallsyms(data: &[u8]) {
    if let Ok(text) = crate::kernel::kallsyms::system_map(data) {
        let _ = crate::kernel::symbols::SystemMap::parse(&text);
    }
}

/// The guest kernel's log (printk's ring buffer, `kernel::printk`), from
/// hostile arrays: the oldest and newest record ids (16 bytes), the ring
/// sizes (one byte: 2^(1..7) records, 2^(4..15) bytes of text), then the
/// descriptors, the records' information and the text, in that order, as
/// far as the input goes.
pub fn printk(data: &[u8]) {
    use crate::kernel::printk::{parse, Copied, RecordLayout};
    let l = RecordLayout::LINUX_6_1;
    let Some((head, rest)) = data.split_first_chunk::<17>() else {
        return;
    };
    let w = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
    let count = 1u64 << (head[16] & 7).max(1);
    let size = 1u64 << ((head[16] >> 3) & 15).max(4);
    let (descs, rest) = rest.split_at(rest.len().min(count as usize * 24));
    let (infos, text) = rest.split_at(rest.len().min(count as usize * 88));
    if let Ok(log) = parse(
        &l,
        &Copied {
            descs,
            infos,
            text,
            tail: w(0),
            head: w(8),
            count,
            size,
        },
    ) {
        for r in &log.records {
            let _ = r.line();
        }
    }
}

/// An input chunk: area, offset, bytes.
type Chunk = dyn Fn(u8, u16, &[u8]) -> Vec<u8>;

/// A census input: a super block that loops to itself with a root dentry,
/// a task list, one CPU whose per-CPU area is in the census page (a timer
/// wheel whose chain loops), all in the area of the census heads (the
/// `census` target's area 0).
fn census_seed(chunk: &Chunk) -> Vec<u8> {
    let map = SystemMap::parse(MAP).expect("MAP parses");
    let rt = |sym: &str| map.addr(sym).expect("in MAP") + super::synthetic::SLIDE;
    let census = rt("super_blocks");
    let w = |off: u16, v: u64| chunk(0, off, &v.to_le_bytes());
    let mut seed = Vec::new();
    seed.extend(w(0, census + 0x800)); // super_blocks -> sb
    seed.extend(w(0x800, census + 0x800)); // sb -> itself
    seed.extend(w(0x820, census + 0x900)); // s_root
    seed.extend(w(0x908, census + 0xa00)); // d_inode
    seed.extend(w(0xa08, 0xffff_ffff_c000_0000)); // i_fop
    seed.extend(w(0x10, census + 0x10)); // init_task.tasks: empty
    seed.extend(chunk(0, 0x5f0, &1u32.to_le_bytes())); // nr_cpu_ids
    seed.extend(w(0x600, census + 0xc00 - 0x1000)); // __per_cpu_offset[0]
    seed.extend(w(0xc40, census + 0xd00)); // timer_bases.vectors[0]
    seed.extend(w(0xd00, census + 0xd00)); // a timer that loops
    seed
}

/// QEMU 7.2 `info mtree -f` of a 512 MiB pc guest.
const MTREE: &str = "FlatView #0
 AS \"memory\", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): pc.ram
  00000000000c3000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c3000
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
";

/// Starting inputs for each target: valid shapes the fuzzer mutates from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let chunk = |area: u8, off: u16, bytes: &[u8]| {
        let mut c = vec![area];
        c.extend(off.to_le_bytes());
        c.extend((bytes.len() as u16).to_le_bytes());
        c.extend(bytes);
        c
    };
    let key1 = 1u64.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let rec = Record {
        cpu: 0,
        seq: 0,
        epoch: 1,
        kind: abi::Kind::Entry,
        func: 0xffff_ffff_a100_0100,
        time: 1000,
        calltime: 0,
        depth: 0,
        pid: 1,
        overrun: 0,
        comm: *b"init\0\0\0\0\0\0\0\0\0\0\0\0",
    };
    let slot: Vec<u8> = abi::encode(&rec, key1)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut ring = chunk(6, 0, &slot);
    ring.extend(chunk(5, 0, &1u64.to_le_bytes()));
    let xml = "<domain type='kvm'><name>web01</name><memory unit='KiB'>2097152</memory>\
<devices><memballoon model='virtio'/></devices></domain>";
    let enrolled = crate::libvirt::domain_xml::enroll(
        xml,
        Some("/var/lib/xftrace/kernels/x/System.map"),
        &["sys_read".into()],
    )
    .unwrap_or_default();
    // Nesting at the bound (256 levels, the domain's included), enrolled,
    // and far past it (within libFuzzer's -max_len of fuzz/run.sh).
    let nest = |levels: usize| format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels));
    let deep = enrolled.replacen("</metadata>", &format!("{}</metadata>", nest(254)), 1);
    let deeper = xml.replacen(
        "<devices>",
        &format!("<metadata>{}</metadata><devices>", nest(2000)),
        1,
    );
    let mut records = Vec::new();
    for (a, b, info) in [
        (0x100u64, 1000u64, 0u64),
        (0x200, 1100, 2),
        (0x200, 1200, 3),
        (0x100, 1300, 1),
    ] {
        records.extend(a.to_le_bytes());
        records.extend(b.to_le_bytes());
        records.extend(info.to_le_bytes());
    }
    let base = 0xffff_ffff_8100_0000u64;
    let module_btf = super::synthetic::btf(&[
        ("list_head", 16, &[("next", 0, ""), ("prev", 8, "")]),
        (
            "module_layout",
            16,
            &[("base", 0, ""), ("size", 8, ""), ("text_size", 12, "")],
        ),
        (
            "module",
            128,
            &[
                ("list", 8, "list_head"),
                ("name", 24, ""),
                ("core_layout", 80, "module_layout"),
            ],
        ),
    ]);
    // A log of four records and 64 bytes of text: "hello" committed.
    let mut log = Vec::new();
    log.extend(0u64.to_le_bytes());
    log.extend(1u64.to_le_bytes());
    log.push(2 | 6 << 3);
    let mut descs = vec![0u8; 4 * 24];
    descs[0..8].copy_from_slice(&(2u64 << 62).to_le_bytes());
    descs[8..16].copy_from_slice(&0u64.to_le_bytes());
    descs[16..24].copy_from_slice(&16u64.to_le_bytes());
    descs[24..32].copy_from_slice(&(1u64 << 62 | 1).to_le_bytes());
    descs[32..40].copy_from_slice(&16u64.to_le_bytes());
    descs[40..48].copy_from_slice(&(64u64 + 8).to_le_bytes());
    let mut infos = vec![0u8; 4 * 88];
    infos[16] = 5;
    infos[88] = 1;
    infos[88 + 16] = 40;
    let mut text = vec![0u8; 64];
    text[8..13].copy_from_slice(b"hello");
    log.extend(descs);
    log.extend(infos);
    log.extend(text);
    vec![
        ("printk", log),
        ("locate", Vec::new()),
        (
            "locate",
            chunk(0, 0x28, &(300u32 | (64 << 16)).to_le_bytes()),
        ),
        ("locate", chunk(4, 16, b"\n\x1b[2K")),
        ("locate", chunk(3, 0x100, &u64::MAX.to_le_bytes())),
        ("rings", ring),
        ("rings", chunk(0, 0x800, &0x2000u64.to_le_bytes())),
        ("render", records),
        (
            "paging",
            [0xffff_ffff_a100_0000u64, 0xffff_ffff_c000_0010, u64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "kernel_lists",
            chunk(7, 0, &0xffff_ffff_c000_0008u64.to_le_bytes()),
        ),
        (
            "kernel_lists",
            chunk(8, 0, &0xffff_ffff_c000_0000u64.to_le_bytes()),
        ),
        // A heartbeat: the tracer's thread is alive.
        (
            "kernel_lists",
            chunk(0, abi::off::HEARTBEAT as u16, &7u64.to_le_bytes()),
        ),
        ("census", Vec::new()),
        ("census", census_seed(&chunk)),
        ("ko", super::synthetic::synthetic_ko()),
        ("btf", census_btf()),
        ("btf", module_btf.clone()),
        ("mtree", MTREE.as_bytes().to_vec()),
        ("system_map", MAP.as_bytes().to_vec()),
        (
            "vmlinux",
            elf(
                base,
                &[0x90u8; 256],
                &[(base + 4, 11, 1), (base + 16, 2, 3), (base + 24, 1, 2)],
            ),
        ),
        (
            "vmlinux",
            elf_with_btf(base, &[0x90u8; 256], &[], &module_btf),
        ),
        ("bzimage", stock_vmlinuz(base)),
        ("kallsyms", elf(base, &[0x90u8; 256], &[])),
        ("domain_xml", xml.as_bytes().to_vec()),
        ("domain_xml", enrolled.into_bytes()),
        ("domain_xml", deep.into_bytes()),
        ("domain_xml", deeper.into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::SLIDE;
    use super::*;

    /// The stock kernel's seed gets through the boot header, the LZ4
    /// frame and the ELF to its relocation table.
    #[test]
    fn the_bzimage_seed_unpacks_to_its_elf_and_relocations() {
        let seed = seeds()
            .into_iter()
            .find(|(t, _)| *t == "bzimage")
            .unwrap()
            .1;
        let u = crate::kernel::bzimage::unpack(&seed).unwrap();
        assert_eq!(u.relocs.len(), 3, "{:?}", u.relocs);
        assert!(u.vmlinux.starts_with(b"\x7fELF"));
    }

    #[test]
    fn the_census_seed_reaches_the_walks_of_kernel_objects() {
        let seed = seeds()
            .into_iter()
            .find(|(t, b)| *t == "census" && b.len() > 100)
            .unwrap()
            .1;
        with_guest(|g| {
            let k = locate::locate(&g.ram, &g.map, None).unwrap();
            let areas = census_areas(&g.map);
            let dirty = apply_to(g, &seed, &areas);
            let mut v = crate::kernel::guest::KernelView::new(&g.ram, &g.map, &k);
            v.btf = Some(&fixed().btf);
            let o = v.object_operations();
            assert!(
                o.pointers
                    .iter()
                    .any(|p| p.member == "i_fop" && p.value == 0xffff_ffff_c000_0000),
                "{o:#?}"
            );
            assert!(
                o.cut.iter().any(|c| c.contains("super blocks: a loop")),
                "{:?}",
                o.cut
            );
            let d = v.deferred_callbacks();
            assert!(
                d.cut.iter().any(|c| c.contains("timers: a loop")),
                "{:?}",
                d.cut
            );
            g.reset(&dirty);
        });
    }

    /// The checks look twice at what seems wrong, a moment apart: the
    /// harnesses must not wait that moment (100 ms an input held
    /// kernel_lists to 9 inputs a second).
    #[test]
    fn the_check_harnesses_do_not_wait_for_the_guest_to_settle() {
        let seeds = seeds();
        for target in ["kernel_lists", "census"] {
            let inputs: Vec<&[u8]> = seeds
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, b)| b.as_slice())
                .collect();
            let (_, h) = TARGETS.iter().find(|(t, _)| *t == target).unwrap();
            h(inputs[0]);
            let t = std::time::Instant::now();
            for _ in 0..10 {
                for i in &inputs {
                    h(i);
                }
            }
            // Generous for a loaded machine; one wait each would be 1 s.
            let per = t.elapsed() / (10 * inputs.len() as u32);
            assert!(
                per < std::time::Duration::from_millis(40),
                "{target}: {per:?}"
            );
        }
    }

    /// The vmlinux seed with a .BTF section reaches the BTF lookups.
    #[test]
    fn the_vmlinux_seed_has_btf() {
        let d = tempfile::tempdir().unwrap();
        let mut n = 0;
        for (i, (_, b)) in seeds().iter().filter(|(t, _)| *t == "vmlinux").enumerate() {
            let p = d.path().join(i.to_string());
            std::fs::write(&p, b).unwrap();
            let v = Vmlinux::load(&p).unwrap();
            if let Some(btf) = v.btf() {
                let l = crate::kernel::btf::ModuleLayout::from_btf(btf).unwrap();
                assert_eq!((l.list, l.text_base, l.text_size), (8, 80, 92));
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn the_mtree_seed_is_a_layout() {
        let (_, b) = seeds().into_iter().find(|(t, _)| *t == "mtree").unwrap();
        let text = String::from_utf8(b).unwrap();
        let l = MemoryLayout::from_regions(crate::libvirt::connection::parse_mtree(
            &text,
            &["pc.ram".into()],
        ));
        // pc.ram below 1 MiB (its ram and rom merged), and above.
        assert_eq!(l.regions().len(), 2, "{:?}", l.regions());
    }

    #[test]
    fn the_deep_domain_xml_seeds_reach_the_depth_bound() {
        let xml: Vec<String> = seeds()
            .into_iter()
            .filter(|(t, b)| *t == "domain_xml" && b.len() > 1000)
            .map(|(_, b)| String::from_utf8(b).unwrap())
            .collect();
        assert!(xml.iter().all(|x| x.len() <= 16384));
        let f = crate::libvirt::domain_xml::facts(&xml[0]).unwrap();
        assert!(f.enrolled && f.backing_ok());
        let e = crate::libvirt::domain_xml::facts(&xml[1]).unwrap_err();
        assert!(e.contains("deeper than 256 levels"), "{e}");
    }

    #[test]
    fn the_harness_guest_is_a_valid_kernel() {
        with_guest(|g| {
            let k =
                locate::locate(&g.ram, &g.map, Some("Linux version 6.1.192 (fuzz) #1")).unwrap();
            assert_eq!(k.text_pa, GuestAddress(TEXT_PA));
            assert_eq!(k.slide, crate::guest::addr::Slide(SLIDE));
        });
        for (_, f) in TARGETS {
            f(b"");
            f(&[0u8; 100]);
            f(&[0xffu8; 600]);
        }
        // Still valid after inputs were applied and undone.
        with_guest(|g| assert!(locate::locate(&g.ram, &g.map, None).is_ok()));
    }
}
