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
use crate::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use crate::kernel::locate::{self, LocateOptions};
use crate::kernel::symbols::SystemMap;
use crate::trace::keys::Klog;
use crate::trace::rings::RingReader;

/// A small kernel build: an 8 MiB image at `_text`.
pub const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000100 T __x64_sys_read
ffffffff81000200 T __x64_sys_openat
ffffffff81000300 t do_sys_openat2
ffffffff81000400 T x64_sys_call
ffffffff81000500 T __fentry__
ffffffff81000510 T ftrace_caller
ffffffff81000580 T ftrace_caller_op_ptr
ffffffff81000590 T ftrace_call
ffffffff810005c0 T ftrace_caller_end
ffffffff81000600 T idt_stub
ffffffff81300000 D linux_banner
ffffffff81301000 D modules
ffffffff81302000 D ftrace_ops_list
ffffffff81302100 D ftrace_list_end
ffffffff81303000 D idt_table
ffffffff81400000 d xftrace_control
ffffffff81401000 D init_top_pgt
ffffffff81402000 D level3_kernel_pgt
ffffffff81403000 D level2_kernel_pgt
ffffffff81404000 D max_low_pfn
ffffffff81600000 b xftrace_heads
ffffffff81800000 B _end
";

const RAM: u64 = 16 << 20;
const TEXT_PA: u64 = 4 << 20;
/// The KASLR slide of [`synthetic_kernel`].
pub const SLIDE: u64 = 0x2000_0000;
const RINGS_PA: u64 = 14 << 20;
const RING_SLOTS: u64 = 64;

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

/// Write a consistent kernel of [`MAP`] with `_text` at guest physical
/// `text_pa` (2 MiB-aligned), slid by [`SLIDE`]: control block, banner,
/// page tables (4-level, 2 MiB pages, one 4 KiB module page at
/// 0xffffffffc0000000), two rings right above the image, `max_low_pfn`,
/// empty module and ftrace_ops lists. `put(gpa, bytes)` does the writing.
pub fn synthetic_kernel(text_pa: u64, put: &mut dyn FnMut(u64, &[u8])) {
    let map = SystemMap::parse(MAP).expect("MAP parses");
    let at = |s: &str| map.addr(s).unwrap() - map.addr("_text").unwrap() + text_pa;
    let rt = |s: &str| map.addr(s).unwrap() + SLIDE;
    let mut put64 = |gpa: u64, v: u64| put(gpa, &v.to_le_bytes());
    let ctl = at("xftrace_control");
    let rings = text_pa + (10 << 20);
    put64(ctl, abi::MAGIC);
    put64(ctl + 8, u64::from(abi::ABI_VERSION) | (4096 << 32));
    put64(ctl + 0x10, rt("xftrace_control"));
    put64(ctl + 0x18, rt("xftrace_heads"));
    put64(ctl + 0x20, rt("_text"));
    put64(ctl + 0x28, 2 | (RING_SLOTS << 32));
    put64(ctl + 0x30, 64 | (2 << 32));
    put64(ctl + 0x38, 1024 | (16 << 32));
    for r in 0..2u64 {
        put64(ctl + 0x800 + 8 * r, rings + r * RING_SLOTS * 64);
    }
    let text_va = rt("_text");
    let (pgd, l3, l2) = (
        at("init_top_pgt"),
        at("level3_kernel_pgt"),
        at("level2_kernel_pgt"),
    );
    put64(pgd + 8 * ((text_va >> 39) & 511), l3 | 0x63);
    put64(l3 + 8 * ((text_va >> 30) & 511), l2 | 0x63);
    for i in 0..4u64 {
        let va = text_va + (i << 21);
        put64(l2 + 8 * ((va >> 21) & 511), (text_pa + (i << 21)) | 0xe3);
    }
    // Module memory: one 4 KiB page mapped through the same tables.
    let module_va = 0xffff_ffff_c000_0000u64;
    let (l2m, ptm, page) = (l2 + 0x10_0000, l2 + 0x10_1000, text_pa + (9 << 20));
    put64(l3 + 8 * ((module_va >> 30) & 511), l2m | 0x63);
    put64(l2m + 8 * ((module_va >> 21) & 511), ptm | 0x63);
    put64(ptm + 8 * ((module_va >> 12) & 511), page | 0x63);
    put64(at("max_low_pfn"), RAM >> 12);
    put64(at("modules"), rt("modules"));
    put64(at("ftrace_ops_list"), rt("ftrace_list_end"));
    put(at("linux_banner"), b"Linux version 6.1.192 (fuzz) #1\n\0");
}

fn with_guest<R>(f: impl FnOnce(&mut Guest) -> R) -> R {
    static G: OnceLock<Mutex<Guest>> = OnceLock::new();
    let m = G.get_or_init(|| Mutex::new(Guest::new()));
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

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
    ]
}

/// Spread `data` over the areas: each chunk is `area index, offset (2
/// bytes), length (2 bytes), bytes`.
fn apply(g: &mut Guest, data: &[u8]) -> Vec<(u64, usize)> {
    let areas = areas(&g.map);
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
                    let _ = crate::trace::switch::read_status(&g.ram, k);
                    let _ = locate::max_low_pfn(&g.ram, &g.map, k);
                    let _ = k.page_tables(&g.ram).translate(k.header.ctl_va);
                }
                // The slow path (a scan of all RAM) for one input in eight.
                if found.kernels.is_empty() && data.first().is_some_and(|b| b & 7 == 0) {
                    let _ = locate::not_found(&g.ram, &found).to_string();
                }
            }
        }
        g.reset(&dirty);
    })
}

/// Reading the rings: heads, ring addresses, slots and key slots as the
/// guest left them, polled twice around a rotation.
pub fn rings(data: &[u8]) {
    with_guest(|g| {
        let Ok(k) = locate::locate(&g.ram, &g.map, None) else {
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
            let _ = pt.executable_ranges(256);
            for c in data.chunks_exact(8).take(16) {
                let va = u64::from_le_bytes(c.try_into().unwrap());
                let _ = pt.walk(va);
                let mut buf = [0u8; 64];
                let _ = pt.read(va, &mut buf);
            }
        }
        g.reset(&dirty);
    })
}

/// Walking the guest's module list, ftrace_ops list and IDT, and naming
/// addresses by module.
pub fn kernel_lists(data: &[u8]) {
    static VMLINUX: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, vpath) = VMLINUX.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmlinux");
        std::fs::write(&p, elf(0xffff_ffff_8100_0000, &[0u8; 0x1000], &[])).unwrap();
        (d, p)
    });
    let Ok(v) = crate::kernel::vmlinux::Vmlinux::load(vpath) else {
        return;
    };
    with_guest(|g| {
        let Ok(k) = locate::locate(&g.ram, &g.map, None) else {
            return;
        };
        let dirty = apply(g, data);
        static DIR: OnceLock<(tempfile::TempDir, crate::host::statedir::GuestDir)> =
            OnceLock::new();
        let (_, dir) = DIR.get_or_init(|| {
            let t = tempfile::tempdir().expect("temp dir");
            let d = crate::host::statedir::GuestDir::for_domain(&t.path().join("state"), "fuzz")
                .expect("state dir");
            (t, d)
        });
        let cx = crate::detect::checks::Context::new(
            crate::kernel::guest::KernelView::new(&g.ram, &g.map, &k),
            &v,
            dir,
        );
        // Every check of guest memory (not the tracer's: it waits for a
        // heartbeat).
        let mut out = Vec::new();
        for c in crate::detect::checks::CHECKS {
            if c.kind() != crate::detect::FindingKind::TracerIntegrity {
                c.run(&cx, &mut out);
            }
        }
        for f in out {
            let _ = f.to_string();
        }
        for c in data.chunks_exact(8).take(8) {
            let a = u64::from_le_bytes(c.try_into().unwrap());
            let _ = cx.name(a);
            // The walk of the BPF id trees, from a head anywhere.
            let _ = cx.view.xarray_entries(a, 40, 4096);
        }
        g.reset(&dirty);
    })
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
            "/var/lib/xftrace/kernels/x/System.map",
            &["sys_read".into()],
        ) {
            let _ = crate::libvirt::domain_xml::facts(&new);
            let _ = crate::libvirt::domain_xml::unenroll(&new);
        }
    }
}

/// A minimal x86_64 ELF with `.text` at `text_addr`, a `.rela.text` of
/// `relocs` (offset, type, symbol), and a symbol table whose symbol 1 is in
/// `.text`, symbol 2 absolute and symbol 3 in `.data..percpu`.
pub fn elf(text_addr: u64, text: &[u8], relocs: &[(u64, u32, u64)]) -> Vec<u8> {
    const SHT_RELA: u32 = 4;
    const SHT_SYMTAB: u32 = 2;
    let shstr = b"\0.text\0.rela.text\0.symtab\0.data..percpu\0.shstrtab\0".to_vec();
    let mut symtab = vec![0u8; 24 * 4];
    symtab[24 + 6..24 + 8].copy_from_slice(&1u16.to_le_bytes());
    symtab[48 + 6..48 + 8].copy_from_slice(&0xfff1u16.to_le_bytes());
    symtab[72 + 6..72 + 8].copy_from_slice(&4u16.to_le_bytes());
    let mut rela = Vec::new();
    for &(off, ty, sym) in relocs {
        rela.extend_from_slice(&off.to_le_bytes());
        rela.extend_from_slice(&((sym << 32) | u64::from(ty)).to_le_bytes());
        rela.extend_from_slice(&0u64.to_le_bytes());
    }
    let mut out = vec![0u8; 64];
    let mut place = |data: &[u8]| {
        let o = out.len() as u64;
        out.extend_from_slice(data);
        o
    };
    let text_off = place(text);
    let rela_off = place(&rela);
    let sym_off = place(&symtab);
    let str_off = place(&shstr);
    let shoff = out.len() as u64;
    let sh = |name: u32, ty: u32, addr: u64, off: u64, size: u64, link: u32, info: u32| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
        h[0x2c..0x30].copy_from_slice(&info.to_le_bytes());
        h
    };
    out.extend(sh(0, 0, 0, 0, 0, 0, 0));
    out.extend(sh(1, 1, text_addr, text_off, text.len() as u64, 0, 0));
    out.extend(sh(7, SHT_RELA, 0, rela_off, rela.len() as u64, 3, 1));
    out.extend(sh(18, SHT_SYMTAB, 0, sym_off, symtab.len() as u64, 5, 0));
    out.extend(sh(26, 1, 0, 0, 0, 0, 0));
    out.extend(sh(40, 3, 0, str_off, shstr.len() as u64, 0, 0));
    out[0..6].copy_from_slice(b"\x7fELF\x02\x01");
    out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&6u16.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&5u16.to_le_bytes());
    out
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
    ("system_map", system_map),
    ("vmlinux", vmlinux),
    ("domain_xml", domain_xml),
];

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
        "/var/lib/xftrace/kernels/x/System.map",
        &["sys_read".into()],
    )
    .unwrap_or_default();
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
    vec![
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
        ("system_map", MAP.as_bytes().to_vec()),
        (
            "vmlinux",
            elf(
                base,
                &[0x90u8; 256],
                &[(base + 4, 11, 1), (base + 16, 2, 3), (base + 24, 1, 2)],
            ),
        ),
        ("domain_xml", xml.as_bytes().to_vec()),
        ("domain_xml", enrolled.into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_guest_is_a_valid_kernel() {
        with_guest(|g| {
            let k =
                locate::locate(&g.ram, &g.map, Some("Linux version 6.1.192 (fuzz) #1")).unwrap();
            assert_eq!(k.text_pa, TEXT_PA);
            assert_eq!(k.slide, SLIDE);
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
