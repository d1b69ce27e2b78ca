//! The collector's sustainable rate, against a synthetic guest: one writer
//! thread follows docs/abi.md (fetch the current epoch's key from the
//! control block, mark the slot busy, write the keyed payload and check,
//! commit, advance the head) into several rings of a RAM file at a chosen
//! rate, while the real collector (`xftrace collect`, the process `on`
//! starts) reads them into its spool. For each ring size, rates go up until
//! records are lost; the collector's own rate draining rings filled while
//! it was stopped, and the spool's write rate to disk, are measured apart.
//!
//!   cargo bench --bench sustain [-- --rings N] [--slots A,B,..] [--rates M,..] [--seconds S]
//!
//! The RAM file and the collector's state directory are on /dev/shm (a
//! tmpfs, as libvirt's memory_backing_dir is), so the spool does not
//! measure the disk; `--spool-dir DIR` times the spool's writes to DIR.
//! These machines have 2 cores: the writer takes one, the collector the
//! other.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xftrace::abi::{self, Kind, Record};
use xftrace::guest::memory::GuestAddress;
use xftrace::host::statedir::GuestDir;
use xftrace::kernel::locate::Control;
use xftrace::trace::spool::{SpoolWriter, RECORD_BYTES};
use xftrace::trace::status::{CollectorState, CollectorStatus};

use xftrace::testkit::synthetic::{self, Synthetic};

const RAM_SIZE: u64 = 1 << 30;
/// Records one run writes at most: the spool must stay in tmpfs.
const RUN_RECORDS: u64 = 40_000_000;

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn list(s: &str) -> Vec<f64> {
    s.split(',').map(|x| x.parse().expect("a number")).collect()
}

/// The synthetic guest: its RAM file mapped, and where things are in it.
struct Guest {
    dir: tempfile::TempDir,
    ram_path: PathBuf,
    map_path: PathBuf,
    k: Control,
    /// The mapping the writer writes through, as the guest's CPUs would.
    base: *mut u8,
    len: usize,
}

impl Guest {
    fn new(rings: u32, slots: u64) -> Guest {
        let dir = tempfile::Builder::new()
            .prefix("xftrace-sustain-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let ram_path = dir.path().join("ram");
        let map_path = dir.path().join("System.map");
        std::fs::write(&map_path, xftrace::testkit::synthetic::MAP).unwrap();
        let g = Synthetic::create(&ram_path, RAM_SIZE, rings, slots);
        // pc: guest physical below 3 GiB is the file offset.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                g.file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Guest {
            dir,
            ram_path,
            map_path,
            k: g.kernel
                .tracer
                .expect("a synthetic guest has a control block"),
            base: base as *mut u8,
            len: RAM_SIZE as usize,
        }
    }

    fn word(&self, gpa: GuestAddress) -> &AtomicU64 {
        assert!(gpa.0.is_multiple_of(8) && gpa.0 + 8 <= self.len as u64);
        // Aligned, in the mapping, which lives as long as self.
        unsafe { AtomicU64::from_ptr(self.base.add(gpa.0 as usize) as *mut u64) }
    }

    fn slots(&self) -> u64 {
        u64::from(self.k.header.ring_slots)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn guest_dir(&self) -> GuestDir {
        GuestDir::for_mem_file(&self.state_dir(), &self.ram_path).unwrap()
    }

    /// The key of the current epoch as the guest fetches it
    /// (xftrace_get_key: epoch word, key, epoch word again).
    fn key(&self) -> Option<(u64, u64)> {
        let e = self
            .word(self.k.field(abi::off::CUR_EPOCH))
            .load(Ordering::Acquire);
        if e == 0 {
            return None;
        }
        let slot = self.k.field(abi::key_slot(e));
        let e1 = self.word(slot).load(Ordering::Acquire);
        let key = self.word(GuestAddress(slot.0 + 8)).load(Ordering::Acquire);
        let e2 = self.word(slot).load(Ordering::Acquire);
        (e1 == e && e2 == e).then_some((e, key))
    }

    /// Write record `seq` of `ring` as xftrace_push() does.
    fn push(&self, ring: u32, seq: u64, time: u64) -> bool {
        let Some((epoch, key)) = self.key() else {
            return false;
        };
        let r = Record {
            cpu: ring,
            seq,
            epoch,
            kind: if seq.is_multiple_of(2) {
                Kind::Entry
            } else {
                Kind::Return
            },
            func: 0xffff_ffff_a100_0000 + (seq % 509) * 0x40,
            time,
            calltime: if seq.is_multiple_of(2) { 0 } else { time - 100 },
            depth: (seq % 2) as u32,
            pid: 42,
            overrun: 0,
            comm: *b"synthetic\0\0\0\0\0\0\0",
        };
        let words = abi::encode(&r, key);
        let base = synthetic::BENCH_RINGS_PA + u64::from(ring) * self.slots() * abi::SLOT_SIZE;
        let at = base + (seq % self.slots()) * abi::SLOT_SIZE;
        let w = |i: u64| self.word(GuestAddress(at + 8 * i));
        w(0).store(words[0] | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for i in 1..8 {
            w(i).store(words[i as usize], Ordering::Relaxed);
        }
        w(0).store(words[0], Ordering::Release);
        self.word(self.k.head(ring))
            .store(seq + 1, Ordering::Release);
        true
    }

    fn head(&self, ring: u32) -> u64 {
        self.word(self.k.head(ring)).load(Ordering::Acquire)
    }

    /// Start the real collector on this guest, as `on` does.
    fn collector(&self) -> Child {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(self.state_dir())
            .unwrap();
        // `collect` adopts only the guest's own collector.lock (as `on`
        // hands it over), held by the process that starts it.
        let lock = File::create(self.guest_dir().path().join("collector.lock")).unwrap();
        let fd = lock.as_raw_fd();
        let log = File::create(self.dir.path().join("collector.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        cmd.arg(format!("--state-dir={}", self.state_dir().display()))
            .arg(format!("--mem-file={}", self.ram_path.display()))
            .arg(format!("--system-map={}", self.map_path.display()))
            .args([
                "collect".to_string(),
                format!("--lock-fd={fd}"),
                format!("--spool-limit={}", 4u64 << 30),
                format!("--text-pa={:#x}", synthetic::BENCH_TEXT_PA),
                "--".into(),
                "synthetic".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_LOG", "warn");
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start xftrace collect");
        drop(lock);
        let end = Instant::now() + Duration::from_secs(20);
        while self.key().is_none()
            || CollectorStatus::read(&self.guest_dir())
                .is_none_or(|s| s.state != CollectorState::Collecting)
        {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the collector exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < end,
                "the collector did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// Stop the collector once it has seen `written` records (read or
    /// lost), and return its final counters.
    fn finish(&self, mut child: Child, written: u64) -> CollectorStatus {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = CollectorStatus::read(&self.guest_dir()).expect("status");
            let seen = s.rings.records + s.rings.missing() + s.rings.integrity_failures();
            if seen >= written || Instant::now() >= end {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal(&child, libc::SIGTERM);
        let st = child.wait().unwrap();
        assert!(st.success(), "collector: {st}: {}", self.log());
        let s = CollectorStatus::read(&self.guest_dir()).expect("status");
        assert_eq!(s.rings.integrity_failures(), 0, "{:?}", s.rings);
        let _ = std::fs::remove_dir_all(self.state_dir());
        s
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Collector CPU time so far, in seconds (utime + stime).
fn cpu_secs(child: &Child) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One run: `rate` records/s over all rings (0: as fast as the writer
/// can) for `seconds`, or until RUN_RECORDS. Returns (records written,
/// achieved rate, collector status).
fn run(g: &Guest, rate: f64, seconds: f64) -> (u64, f64, CollectorStatus) {
    let child = g.collector();
    let rings = g.k.header.nr_rings;
    let mut seq: Vec<u64> = (0..rings).map(|r| g.head(r)).collect();
    let budget = if rate > 0.0 {
        ((rate * seconds) as u64).min(RUN_RECORDS)
    } else {
        RUN_RECORDS
    };
    let start = Instant::now();
    let mut written = 0u64;
    let mut time = 1_000_000u64;
    while written < budget {
        let due = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate) as u64).min(budget)
        } else {
            (written + 4096).min(budget)
        };
        while written < due {
            let ring = (written % u64::from(rings)) as u32;
            let s = &mut seq[ring as usize];
            time += 50;
            if g.push(ring, *s, time) {
                *s += 1;
                written += 1;
            }
        }
        if rate == 0.0 && start.elapsed().as_secs_f64() >= seconds {
            break;
        }
    }
    let achieved = written as f64 / start.elapsed().as_secs_f64();
    let s = g.finish(child, written);
    (written, achieved, s)
}

/// The collector alone: stopped while the writer fills every ring to the
/// brim, then let go; its CPU time per record drained.
fn drain_alone(g: &Guest, laps: u32) -> f64 {
    let child = g.collector();
    let rings = g.k.header.nr_rings;
    let slots = g.slots();
    let mut seq: Vec<u64> = (0..rings).map(|r| g.head(r)).collect();
    let mut time = 1_000_000u64;
    let mut drained = 0u64;
    let dir = g.guest_dir();
    let cpu_start = cpu_secs(&child);
    for _ in 0..laps {
        signal(&child, libc::SIGSTOP);
        for (ring, s) in (0u32..).zip(seq.iter_mut()) {
            for _ in 0..slots {
                time += 50;
                assert!(g.push(ring, *s, time), "no key");
                *s += 1;
            }
        }
        signal(&child, libc::SIGCONT);
        drained += slots * u64::from(rings);
        let end = Instant::now() + Duration::from_secs(30);
        while CollectorStatus::read(&dir).is_none_or(|s| s.rings.records < drained) {
            assert!(Instant::now() < end, "the collector did not drain");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Stopped, it spent nothing; waiting for the next lap, next to nothing.
    let cpu = cpu_secs(&child) - cpu_start;
    let s = g.finish(child, drained);
    assert_eq!(s.rings.records, drained, "{:?}", s.rings);
    drained as f64 / cpu
}

/// The spool's own write rate to `dir`: records pushed and flushed, then
/// synced to the disk.
fn spool_rate(dir: &Path, records: u64) {
    let dir = tempfile::Builder::new()
        .prefix("xftrace-spool-")
        .tempdir_in(dir)
        .unwrap();
    let mut w = SpoolWriter::create(dir.path(), 4, u64::MAX).unwrap();
    let r = Record {
        cpu: 0,
        seq: 0,
        epoch: 1,
        kind: Kind::Return,
        func: 0xffff_ffff_a100_0000,
        time: 2000,
        calltime: 1000,
        depth: 1,
        pid: 42,
        overrun: 0,
        comm: [0; 16],
    };
    let t = Instant::now();
    for i in 0..records {
        let r = Record {
            cpu: (i % 4) as u32,
            seq: i / 4,
            ..r
        };
        assert!(w.push(&r).unwrap());
    }
    w.flush().unwrap();
    let buffered = t.elapsed().as_secs_f64();
    drop(w);
    let st = Command::new("sync")
        .arg("-f")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let synced = t.elapsed().as_secs_f64();
    let mb = (records * RECORD_BYTES) as f64 / 1e6;
    println!(
        "spool to {}: {records} records ({mb:.0} MB) written in {buffered:.2} s ({:.1} M records/s into the page cache), on disk after {synced:.2} s ({:.1} M records/s, {:.0} MB/s)",
        dir.path().display(),
        records as f64 / buffered / 1e6,
        records as f64 / synced / 1e6,
        mb / synced
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rings: u32 = opt(&args, "--rings").map_or(2, |v| v.parse().unwrap());
    let sizes = opt(&args, "--slots").map_or(vec![4096.0, 16384.0, 65536.0], list);
    let rates = opt(&args, "--rates").map_or(vec![1.0, 2.0, 4.0, 8.0, 16.0, 0.0], list);
    let seconds: f64 = opt(&args, "--seconds").map_or(2.0, |v| v.parse().unwrap());
    if let Some(d) = opt(&args, "--spool-dir") {
        spool_rate(Path::new(d), 20_000_000);
        return;
    }
    println!(
        "collector against a synthetic guest: one writer thread, {rings} rings, {seconds} s a rate (spool on tmpfs); rate 0 = as fast as the writer goes"
    );
    println!("| ring slots (memory a vCPU) | writer rate | records written | lost | lost % |");
    println!("|---|---|---|---|---|");
    for &slots in &sizes {
        let slots = slots as u64;
        let g = Guest::new(rings, slots);
        for &rate in &rates {
            let (written, achieved, s) = run(&g, rate * 1e6, seconds);
            println!(
                "| {slots} ({} KiB) | {} | {written} | {} | {:.3} |",
                slots * abi::SLOT_SIZE / 1024,
                if rate > 0.0 {
                    format!("{rate} M/s (achieved {:.1})", achieved / 1e6)
                } else {
                    format!("max: {:.1} M/s", achieved / 1e6)
                },
                s.rings.lost,
                100.0 * s.rings.lost as f64 / written as f64
            );
        }
    }
    // What a collector costs the host while the guest writes nothing.
    let g = Guest::new(rings, 16384);
    let child = g.collector();
    let c0 = cpu_secs(&child);
    std::thread::sleep(Duration::from_secs(10));
    let idle = cpu_secs(&child) - c0;
    g.finish(child, 0);
    println!(
        "an idle collector ({rings} rings, polling every 2 ms): {:.2} % of a host core",
        idle * 10.0
    );
    // Big laps, so that the CPU clock's ticks and the idle polls between
    // laps do not count.
    let g = Guest::new(8, 65536);
    let alone = drain_alone(&g, 10);
    println!(
        "the collector alone (writer stopped while it drains), 8 full rings of 65536, 10 times: {:.1} M records per CPU second",
        alone / 1e6
    );
}
