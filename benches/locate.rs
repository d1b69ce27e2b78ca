//! Locating the guest kernel in a 4 GiB guest: `cargo bench --bench locate`.
//!
//! A sparse 4 GiB RAM file laid out as QEMU's q35 does (2 GiB below the PCI
//! hole, 2 GiB from 4 GiB up), with a kernel loaded at the top of high
//! memory. Side by side in the same run: today's locator (one read per
//! 2 MiB-aligned candidate, confirmed through the guest's page tables) and
//! the one it replaced (a word read from every 4 KiB page).

use std::os::unix::fs::FileExt;
use std::time::Instant;

use xftrace::abi;
use xftrace::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use xftrace::kernel::locate::locate;
use xftrace::kernel::symbols::SystemMap;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("xftrace-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let path = dir.path().join("ram");
    let size = 4u64 << 30;
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    let layout = MemoryLayout::x86(size, Machine::Q35, None);
    // The kernel near the top of RAM: the last candidates a scan reaches.
    let text_gpa = (4u64 << 30) + (2u64 << 30) - (16 << 20);
    xftrace::testkit::synthetic::synthetic_kernel(text_gpa, &mut |gpa, b| {
        let off = layout
            .to_file_offset(GuestAddress(gpa), b.len() as u64)
            .expect("in RAM");
        file.write_all_at(b, off).unwrap();
    });
    let ram = GuestRam::open(&path, layout).unwrap();
    let map = SystemMap::parse(xftrace::testkit::synthetic::MAP).unwrap();

    let rounds = 9;
    let mut now = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let k = locate(&ram, &map, None).expect("located");
        now.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(k.text_pa.0, text_gpa);
    }
    let mut before = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut found = 0;
        ram.scan_page_words(|_, w| found += usize::from(w == abi::MAGIC))
            .unwrap();
        before.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(found, 1);
    }
    println!(
        "locate, 4 GiB q35 guest, kernel at {text_gpa:#x}: first (fresh mapping) {:.2} ms, then {:.3} ms median of {}; \
         the page-by-page scan it replaced: {:.0} ms median of 3",
        now[0],
        median(now[1..].to_vec()),
        rounds - 1,
        median(before)
    );

    // The same kernel as a stock kernel (no control block): found by its
    // banner and its page tables; and the scan of all RAM for banners
    // that names the package to fetch when no stored build matches.
    let k = locate(&ram, &map, None).expect("located");
    let banner = k.banner.clone();
    let ctl = k.tracer.as_ref().expect("a control block").ctl;
    ram.write_u64(ctl, 0).unwrap();
    let mut stock = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let found = xftrace::kernel::locate::locate_stock_all(&ram, &map, &banner).unwrap();
        stock.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(found.kernels.len(), 1);
        assert_eq!(found.kernels[0].text_pa.0, text_gpa);
    }
    let mut scans = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let b = xftrace::kernel::locate::banners_in(&ram, 4);
        scans.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(b.contains(&banner), "{b:?}");
    }
    println!(
        "locate a stock kernel (no control block), same guest: {:.3} ms median of {rounds}; \
         scan of all 4 GiB for kernel banners (a kernel version met for the first time): {:.0} ms median of 3",
        median(stock),
        median(scans)
    );
}
