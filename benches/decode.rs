//! Host decoder throughput: records decoded (check verified, XOR removed)
//! and symbolized against a System.map, per second on one core; then the
//! same records rendered to function_graph text.
//!
//!   cargo bench --bench decode [-- SYSTEM.MAP]
//!
//! Without an argument, XFTRACE_KERNEL_DIR/System.map is used if set, else a
//! synthetic map of 60 000 symbols (about the size of the guest kernel's).

use std::time::Instant;

use xftrace::abi::{self, Kind, Record};
use xftrace::kernel::symbols::SystemMap;
use xftrace::trace::render;

fn synthetic_map() -> String {
    let mut s = String::from("ffffffff81000000 T _text\n");
    for i in 0..60_000u64 {
        s.push_str(&format!(
            "{:016x} T fn_{i}\n",
            0xffff_ffff_8100_1000u64 + i * 0x140
        ));
    }
    s.push_str("ffffffff83000000 B _end\n");
    s
}

fn main() {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let path = arg.or_else(|| {
        std::env::var("XFTRACE_KERNEL_DIR")
            .ok()
            .map(|d| format!("{d}/System.map"))
    });
    let (map, what) = match path {
        Some(p) => (
            SystemMap::parse(&std::fs::read_to_string(&p).expect("read System.map")).unwrap(),
            p,
        ),
        None => (
            SystemMap::parse(&synthetic_map()).unwrap(),
            "synthetic".to_string(),
        ),
    };
    let (text_start, text_end) = map.image();
    let funcs: Vec<u64> = (0..4096u64)
        .filter_map(|i| {
            let a = text_start + (i * 0x9e37_79b9) % (text_end - text_start);
            map.containing(a).map(|_| a)
        })
        .collect();

    const N: u64 = 2_000_000;
    const KEY: u64 = 0x5a5a_1234_dead_beef;
    let slots: Vec<abi::RawSlot> = (0..N)
        .map(|seq| {
            let r = Record {
                cpu: 0,
                seq,
                epoch: 1 + seq / 100_000,
                kind: if seq % 2 == 0 {
                    Kind::Entry
                } else {
                    Kind::Return
                },
                func: funcs[(seq / 2) as usize % funcs.len()],
                time: seq * 100,
                calltime: seq * 100 - (seq % 2) * 100,
                depth: (seq % 7) as u32,
                pid: 100,
                overrun: 0,
                comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            };
            abi::encode(&r, KEY)
        })
        .collect();

    let t = Instant::now();
    let mut names = 0usize;
    let mut records = Vec::with_capacity(N as usize);
    for (seq, s) in slots.iter().enumerate() {
        let r = abi::decode(0, seq as u64, s, KEY).expect("decodes");
        if let Some((n, _)) = map.containing(r.func) {
            names += n.len();
        }
        records.push(r);
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "decode+symbolize: {N} records in {dt:.3} s = {:.2} M records/s (map: {what}, {names} name bytes)",
        N as f64 / dt / 1e6
    );

    let t = Instant::now();
    let name = |a: u64| {
        map.containing(a)
            .map_or_else(|| format!("{a:#x}"), |(n, _)| n.to_string())
    };
    // Streamed, as `off` does, into a sink that only counts bytes.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Count(0);
    render::render(&mut out, vec![(0, records.into_iter())], 1, &name, &[]).expect("renders");
    let dt = t.elapsed().as_secs_f64();
    println!(
        "render: {N} records in {dt:.3} s = {:.2} M records/s ({} MiB of text)",
        N as f64 / dt / 1e6,
        out.0 >> 20
    );
}
