//! The collector's read path on one core: rings read out of a guest RAM
//! file (volatile copies, commit words checked before and after) and every
//! record verified under its epoch's key, as `xftrace collect` does.
//!
//!   cargo bench --bench collect [-- --laps N] [-- --slots N]
//!   benches/callgrind.sh                  # instructions per record
//!
//! A synthetic guest (the fuzzers' kernel, with two rings of `--slots`
//! slots) in a RAM file: each lap, both rings are filled with one ring's
//! worth of records (not timed), then drained by `RingReader::poll` (timed).

use std::time::Instant;

use xftrace::abi::{self, Kind, Record};
use xftrace::trace::keys::Klog;
use xftrace::trace::rings::RingReader;

use xftrace::testkit::synthetic::Synthetic;

const KEY: u64 = 0x0123_4567_89ab_cdef;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let laps = opt("--laps", 100);
    let slots = opt("--slots", 16_384);
    // Fill the rings but do not read them: callgrind's baseline.
    let no_poll = args.iter().any(|a| a == "--no-poll");

    let dir = tempfile::Builder::new()
        .prefix("xftrace-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let g = Synthetic::create(&dir.path().join("ram"), 256 << 20, 2, slots);
    let (ram, k) = (&g.ram, g.kernel.control().unwrap());

    let mut klog = Klog::default();
    klog.insert(1, KEY);
    let mut reader = RingReader::start(ram, k).unwrap();
    reader.note_rotation(ram, k, 1).unwrap();
    let mut lap_bytes = vec![0u8; (slots * abi::SLOT_SIZE) as usize];
    let mut read = 0u64;
    let mut secs = 0f64;
    for lap in 0..laps {
        for ring in 0..2u32 {
            for i in 0..slots {
                let seq = lap * slots + i;
                let r = Record {
                    cpu: ring,
                    seq,
                    epoch: 1,
                    kind: if seq % 2 == 0 {
                        Kind::Entry
                    } else {
                        Kind::Return
                    },
                    func: 0xffff_ffff_a100_0000 + (seq % 512) * 0x40,
                    time: seq * 100,
                    calltime: seq * 100 - (seq % 2) * 100,
                    depth: (seq % 7) as u32,
                    pid: 42,
                    overrun: 0,
                    comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
                };
                let words = abi::encode(&r, KEY);
                let at = (i * abi::SLOT_SIZE) as usize;
                for (j, w) in words.iter().enumerate() {
                    lap_bytes[at + 8 * j..at + 8 * j + 8].copy_from_slice(&w.to_le_bytes());
                }
            }
            g.put(g.ring_pa(ring), &lap_bytes);
            g.put(k.head(ring).0, &((lap + 1) * slots).to_le_bytes());
        }
        if no_poll {
            continue;
        }
        let t = Instant::now();
        let n = reader
            .poll(
                ram,
                k,
                &klog,
                |r| {
                    std::hint::black_box(r);
                },
                |a| panic!("{a}"),
            )
            .unwrap();
        secs += t.elapsed().as_secs_f64();
        read += n;
    }
    if no_poll {
        return;
    }
    assert_eq!(read, laps * slots * 2);
    assert_eq!(reader.stats.integrity_failures(), 0);
    println!(
        "ring read + verify: {read} records from 2 rings of {slots} slots in {secs:.3} s = {:.1} M records/s",
        read as f64 / secs / 1e6
    );
}
