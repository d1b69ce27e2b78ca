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
use crate::guest::addr::VirtAddr;
use crate::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use crate::kernel::locate::{self, LocateOptions};
use crate::kernel::symbols::SystemMap;
use crate::trace::keys::Klog;
use crate::trace::rings::RingReader;

use super::synthetic::{elf, synthetic_kernel, MAP, RAM, RINGS_PA, RING_SLOTS, TEXT_PA};

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
        // The heads of the census of kernel objects (`kernel::objects`).
        (pa(map, "super_blocks"), 4096),
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
                    let _ = k.page_tables(&g.ram).translate(VirtAddr(k.header.ctl_va));
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
            let _ = pt.executable_ranges(256, 4096);
            for c in data.chunks_exact(8).take(16) {
                let va = u64::from_le_bytes(c.try_into().unwrap());
                let _ = pt.walk(VirtAddr(va));
                let mut buf = [0u8; 64];
                let _ = pt.read(VirtAddr(va), &mut buf);
            }
        }
        g.reset(&dirty);
    })
}

/// Every check of guest memory over a hostile guest, and every walk of a
/// kernel structure (lists, chains, trees, XArrays, per-CPU) from heads
/// the input chooses.
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
        static BTF: OnceLock<crate::kernel::btf::Btf> = OnceLock::new();
        let btf = BTF.get_or_init(|| {
            crate::kernel::btf::Btf::parse(&super::synthetic::census_btf()).expect("census BTF")
        });
        let mut view = crate::kernel::guest::KernelView::new(&g.ram, &g.map, &k);
        view.btf = Some(btf);
        let cx = crate::detect::checks::Context::new(view, &v, dir);
        // Every check of guest memory (not the tracer's: it waits for a
        // heartbeat).
        let mut out = Vec::new();
        for c in crate::detect::checks::CHECKS {
            if c.kind() != crate::detect::FindingKind::TracerIntegrity {
                c.run(
                    &cx,
                    &mut crate::detect::checks::Report::new(c.kind(), &mut out),
                );
            }
        }
        for f in out {
            let _ = f.to_string();
        }
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
    // The same bytes as a BTF blob: the field offsets every walk names.
    if let Ok(btf) = crate::kernel::btf::Btf::parse(data) {
        for ty in ["module", "rb_node", "xa_node", "list_head"] {
            let _ = btf.offset_of(ty, &["list"]);
            let _ = btf.offset_of(ty, &["core_layout", "base"]);
            let _ = btf.members(ty);
            let _ = btf.size_of(ty);
        }
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

/// An input chunk: area, offset, bytes.
type Chunk = dyn Fn(u8, u16, &[u8]) -> Vec<u8>;

/// A census input: a super block that loops to itself with a root dentry,
/// a task list, one CPU whose per-CPU area is in the census page (a timer
/// wheel whose chain loops), all in the area of the census heads (11).
fn census_seed(chunk: &Chunk) -> Vec<u8> {
    let map = SystemMap::parse(MAP).expect("MAP parses");
    let rt = |sym: &str| map.addr(sym).expect("in MAP") + super::synthetic::SLIDE;
    let census = rt("super_blocks");
    let w = |off: u16, v: u64| chunk(11, off, &v.to_le_bytes());
    let mut seed = Vec::new();
    seed.extend(w(0, census + 0x800)); // super_blocks -> sb
    seed.extend(w(0x800, census + 0x800)); // sb -> itself
    seed.extend(w(0x820, census + 0x900)); // s_root
    seed.extend(w(0x908, census + 0xa00)); // d_inode
    seed.extend(w(0xa08, 0xffff_ffff_c000_0000)); // i_fop
    seed.extend(w(0x10, census + 0x10)); // init_task.tasks: empty
    seed.extend(chunk(11, 0x5f0, &1u32.to_le_bytes())); // nr_cpu_ids
    seed.extend(w(0x600, census + 0xc00 - 0x1000)); // __per_cpu_offset[0]
    seed.extend(w(0xc40, census + 0xd00)); // timer_bases.vectors[0]
    seed.extend(w(0xd00, census + 0xd00)); // a timer that loops
    seed
}

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
        ("kernel_lists", census_seed(&chunk)),
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
        ("domain_xml", deep.into_bytes()),
        ("domain_xml", deeper.into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::SLIDE;
    use super::*;

    #[test]
    fn the_census_seed_reaches_the_walks_of_kernel_objects() {
        let seed = seeds()
            .into_iter()
            .find(|(t, b)| *t == "kernel_lists" && b.len() > 100)
            .unwrap()
            .1;
        with_guest(|g| {
            let k = locate::locate(&g.ram, &g.map, None).unwrap();
            let dirty = apply(g, &seed);
            let btf =
                crate::kernel::btf::Btf::parse(&super::super::synthetic::census_btf()).unwrap();
            let mut v = crate::kernel::guest::KernelView::new(&g.ram, &g.map, &k);
            v.btf = Some(&btf);
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
