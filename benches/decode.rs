//! Host hot paths on one core, per record: decode (check verified, XOR
//! removed), decode + symbolize against a real System.map, and streaming
//! render to function_graph text; records carry the function-address mix of
//! a real trace (`benches/data/call-mix.txt`: how often each function
//! appeared in a trace of every system call of the test guest).
//!
//!   cargo bench --bench decode [-- SYSTEM.MAP] [--records N] [--phase P]
//!   benches/callgrind.sh [SYSTEM.MAP]     # instructions per record
//!
//! Without SYSTEM.MAP, XFTRACE_KERNEL_DIR/System.map is used if set, else a
//! synthetic map of 60 000 symbols (the mix's names then resolve to none,
//! and addresses are spread over the image instead). `--phase` runs one of
//! `decode`, `symbolize`, `render` (or `none`, setup only: callgrind's
//! baseline); by default all, each timed.

use std::time::Instant;

use xftrace::abi::{self, Kind, Record};
use xftrace::kernel::symbols::SystemMap;
use xftrace::trace::render::{self, NameCache};

const KEY: u64 = 0x5a5a_1234_dead_beef;

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

/// Function addresses in the proportions of the recorded mix: a table of
/// 65 536 entries to draw from.
fn address_mix(map: &SystemMap) -> Vec<u64> {
    let text = include_str!("data/call-mix.txt");
    let mut weighted: Vec<(u64, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (n, name) = l.trim().split_once(' ')?;
            Some((n.parse().ok()?, map.addr(name.trim())?))
        })
        .collect();
    if weighted.is_empty() {
        // A map the mix does not name (the synthetic one): spread.
        let (start, end) = map.image();
        weighted = (0..512u64)
            .filter_map(|i| {
                let a = start + (i * 0x9e37_79b9) % (end - start);
                map.containing(a)
                    .map(|(_, off)| (1 + 1000 / (i + 1), a - off))
            })
            .collect();
    }
    let total: u64 = weighted.iter().map(|(n, _)| n).sum();
    let mut table = Vec::with_capacity(65_536);
    for (n, a) in &weighted {
        let k = (n * 65_536).div_ceil(total);
        table.extend(std::iter::repeat_n(*a, k as usize));
    }
    table
}

/// Entry/return pairs, nested a few deep, as one CPU's ring holds them.
fn records(n: u64, mix: &[u64]) -> Vec<abi::RawSlot> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut stack: Vec<(u64, u64)> = Vec::new();
    let mut out = Vec::with_capacity(n as usize);
    let mut time = 1_000_000u64;
    for seq in 0..n {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        time += 50 + rng % 200;
        let enter = stack.is_empty() || (stack.len() < 12 && rng % 5 < 3);
        let r = if enter {
            let func = mix[(rng >> 16) as usize % mix.len()];
            stack.push((func, time));
            Record {
                cpu: 0,
                seq,
                epoch: 1 + seq / 100_000,
                kind: Kind::Entry,
                func,
                time,
                calltime: 0,
                depth: stack.len() as u32 - 1,
                pid: 100 + (seq / 10_000) as u32,
                overrun: 0,
                comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            }
        } else {
            let (func, calltime) = stack.pop().unwrap();
            Record {
                cpu: 0,
                seq,
                epoch: 1 + seq / 100_000,
                kind: Kind::Return,
                func,
                time,
                calltime,
                depth: stack.len() as u32,
                pid: 100 + (seq / 10_000) as u32,
                overrun: 0,
                comm: [0; 16],
            }
        };
        out.push(abi::encode(&r, KEY));
    }
    out
}

fn decode_all(slots: &[abi::RawSlot]) -> Vec<Record> {
    slots
        .iter()
        .enumerate()
        .map(|(seq, s)| abi::decode(0, seq as u64, s, KEY).expect("decodes"))
        .collect()
}

/// A sink that only counts bytes.
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: u64 = opt("--records").map_or(2_000_000, |v| v.parse().expect("--records N"));
    let phase = opt("--phase").unwrap_or_else(|| "all".into());
    let mut path = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--records" | "--phase" => i += 1,
            a if !a.starts_with('-') => path = Some(a.to_string()),
            _ => {}
        }
        i += 1;
    }
    let path = path.or_else(|| {
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
    let mix = address_mix(&map);
    let slots = records(n, &mix);
    let lookup = |a: u64| {
        map.containing(a)
            .map_or_else(|| format!("{a:#x}"), |(n, _)| n.to_string())
    };
    let all = phase == "all";
    if all {
        println!(
            "{n} records, {} distinct functions in the mix, map {what}",
            {
                let mut d = mix.clone();
                d.dedup();
                d.len()
            }
        );
    }

    if all || phase == "decode" {
        let t = Instant::now();
        let mut sum = 0u64;
        for (seq, s) in slots.iter().enumerate() {
            let r = abi::decode(0, seq as u64, s, KEY).expect("decodes");
            sum = sum.wrapping_add(r.func ^ r.time);
        }
        std::hint::black_box(sum);
        let dt = t.elapsed().as_secs_f64();
        if all {
            println!("decode: {:.1} M records/s", n as f64 / dt / 1e6);
        }
    }
    if all || phase == "symbolize" {
        let t = Instant::now();
        let mut names = NameCache::new(&lookup);
        let mut bytes = 0usize;
        for (seq, s) in slots.iter().enumerate() {
            let r = abi::decode(0, seq as u64, s, KEY).expect("decodes");
            bytes += names.get(r.func).len();
        }
        std::hint::black_box(bytes);
        let dt = t.elapsed().as_secs_f64();
        if all {
            println!(
                "decode+symbolize: {:.1} M records/s ({bytes} name bytes)",
                n as f64 / dt / 1e6
            );
        }
    }
    if all || phase == "render" {
        let records = decode_all(&slots);
        let t = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, Count(0));
        render::render(&mut out, vec![(0, records.into_iter())], 1, &lookup, &[]).expect("renders");
        let dt = t.elapsed().as_secs_f64();
        let bytes = out.into_inner().map_or(0, |c| c.0);
        if all {
            println!(
                "render: {:.2} M records/s ({} MiB of text, streamed)",
                n as f64 / dt / 1e6,
                bytes >> 20
            );
        }
    }
}
