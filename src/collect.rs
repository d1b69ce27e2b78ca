//! Log Maker, first half: read the per-CPU rings while the guest writes them.
//!
//! For each ring the reader remembers the next sequence number it wants and
//! reads up to the guest's published head. A slot holds record `seq` only if
//! its commit word reads `(seq + 1) << 1` both before and after the payload
//! is copied; anything else is accounted for, never skipped silently:
//! overwritten by a later lap of the ring (`lost`), erased or rewritten by
//! something other than the tracer (`erased`), failing its check under the
//! key of the epoch it names (`bad_check`), or naming an epoch the host never
//! issued (`unknown_epoch`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use log::warn;
use serde::{Deserialize, Serialize};

use crate::abi::{self, DecodeError, Kind, RawSlot, Record};
use crate::error::{Error, Result};
use crate::guest_memory::GuestRam;
use crate::kernel::GuestKernel;
use crate::keys::Klog;

/// Counters a collection keeps; saved in the session's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingStats {
    pub records: u64,
    /// Records overwritten by the guest before the host read them.
    pub lost: u64,
    /// Slots holding neither the expected record nor a later lap of it.
    pub erased: u64,
    /// Records that fail their check under their epoch's key.
    pub bad_check: u64,
    /// Records naming an epoch the host never issued.
    pub unknown_epoch: u64,
    /// Times a ring's head went backwards (guest reboot or tampering).
    pub rewound: u64,
}

impl RingStats {
    pub fn integrity_failures(&self) -> u64 {
        self.erased + self.bad_check + self.unknown_epoch + self.rewound
    }
}

/// Something wrong with a slot, reported with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    Erased { cpu: u32, seq: u64, commit: u64 },
    BadCheck { cpu: u32, seq: u64, epoch: u64 },
    UnknownEpoch { cpu: u32, seq: u64, epoch: u64 },
    Rewound { cpu: u32, head: u64, expected: u64 },
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anomaly::Erased { cpu, seq, commit } => write!(
                f,
                "cpu {cpu} record {seq}: slot erased or rewritten (commit word {commit:#x})"
            ),
            Anomaly::BadCheck { cpu, seq, epoch } => write!(
                f,
                "cpu {cpu} record {seq}: fails its check under the key of epoch {epoch} (forged or corrupt)"
            ),
            Anomaly::UnknownEpoch { cpu, seq, epoch } => write!(
                f,
                "cpu {cpu} record {seq}: names key epoch {epoch}, which the host never issued (forged)"
            ),
            Anomaly::Rewound { cpu, head, expected } => write!(
                f,
                "cpu {cpu}: ring head went back from {expected} to {head} (guest rebooted or ring tampered with)"
            ),
        }
    }
}

/// Incremental reader of all rings.
pub struct RingReader {
    next: Vec<u64>,
    slots: u64,
    pub stats: RingStats,
}

impl RingReader {
    /// Start at the rings' current heads: older records belong to earlier
    /// sessions.
    pub fn start(ram: &GuestRam, kernel: &GuestKernel) -> Result<Self> {
        let next = (0..kernel.header.nr_rings)
            .map(|cpu| ram.read_u64(kernel.field(abi::off::HEAD + 8 * u64::from(cpu))))
            .collect::<Result<_>>()?;
        Ok(RingReader {
            next,
            slots: u64::from(kernel.header.ring_slots),
            stats: RingStats::default(),
        })
    }

    /// Read every record committed since the last poll.
    pub fn poll(
        &mut self,
        ram: &GuestRam,
        kernel: &GuestKernel,
        klog: &Klog,
        mut record: impl FnMut(Record),
        mut anomaly: impl FnMut(Anomaly),
    ) -> Result<u64> {
        let mut n = 0;
        for cpu in 0..self.next.len() as u32 {
            let head = ram.read_u64(kernel.field(abi::off::HEAD + 8 * u64::from(cpu)))?;
            let next = &mut self.next[cpu as usize];
            if head < *next {
                self.stats.rewound += 1;
                anomaly(Anomaly::Rewound {
                    cpu,
                    head,
                    expected: *next,
                });
                *next = head;
                continue;
            }
            if head - *next > self.slots {
                self.stats.lost += head - self.slots - *next;
                *next = head - self.slots;
            }
            while *next < head {
                let seq = *next;
                let at = kernel.slot(cpu, seq % self.slots);
                let mut slot: RawSlot = [0; 8];
                ram.read_words(at, &mut slot)?;
                let again = ram.read_u64(at)?;
                *next += 1;
                let want = abi::committed(seq);
                if slot[0] != want || again != want {
                    // The writer lapping the ring is the only legitimate reason.
                    let later_lap = match (slot[0].max(again) >> 1).checked_sub(1) {
                        Some(cseq) => cseq > seq && (cseq - seq) % self.slots == 0,
                        None => false,
                    };
                    if later_lap {
                        self.stats.lost += 1;
                    } else {
                        self.stats.erased += 1;
                        anomaly(Anomaly::Erased {
                            cpu,
                            seq,
                            commit: slot[0],
                        });
                    }
                    continue;
                }
                let epoch = slot[1];
                let Some(key) = klog.key(epoch) else {
                    self.stats.unknown_epoch += 1;
                    anomaly(Anomaly::UnknownEpoch { cpu, seq, epoch });
                    continue;
                };
                match abi::decode(cpu, seq, &slot, key) {
                    Ok(r) => {
                        self.stats.records += 1;
                        n += 1;
                        record(r);
                    }
                    Err(DecodeError::BadCheck) | Err(DecodeError::BadFields) => {
                        self.stats.bad_check += 1;
                        anomaly(Anomaly::BadCheck { cpu, seq, epoch });
                    }
                }
            }
        }
        Ok(n)
    }
}

/// Size of one record in a spool file.
const SPOOL_RECORD: usize = 64;

/// Append-only file of decoded records, so a long trace never has to fit in
/// memory and nothing is lost if the collector dies.
pub struct Spool {
    out: BufWriter<File>,
}

impl Spool {
    pub fn create(path: &Path) -> Result<Self> {
        let f = crate::state::create_private(path)?;
        Ok(Spool {
            out: BufWriter::new(f),
        })
    }

    pub fn push(&mut self, r: &Record) -> Result<()> {
        let mut b = [0u8; SPOOL_RECORD];
        b[0..4].copy_from_slice(&r.cpu.to_le_bytes());
        b[4..8].copy_from_slice(&r.depth.to_le_bytes());
        b[8..12].copy_from_slice(&r.pid.to_le_bytes());
        b[12] = match r.kind {
            Kind::Entry => 1,
            Kind::Return => 2,
        };
        for (i, v) in [r.seq, r.epoch, r.func, r.time, r.calltime, r.overrun]
            .iter()
            .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        self.out
            .write_all(&b)
            .map_err(|e| Error::io("cannot write the record spool", e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .map_err(|e| Error::io("cannot flush the record spool", e))
    }
}

/// Read a spool back, calling `f` for each record in file order.
pub fn read_spool(path: &Path, mut f: impl FnMut(Record)) -> Result<u64> {
    let file = File::open(path)
        .map_err(|e| Error::io(format!("cannot open record spool {}", path.display()), e))?;
    let mut rd = BufReader::new(file);
    let mut b = [0u8; SPOOL_RECORD];
    let mut n = 0;
    loop {
        match rd.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::io("cannot read the record spool", e)),
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[16 + 8 * i..24 + 8 * i].try_into().unwrap());
        let kind = match b[12] {
            1 => Kind::Entry,
            2 => Kind::Return,
            k => {
                warn!(
                    "record spool {}: bad record kind {k}, skipped",
                    path.display()
                );
                continue;
            }
        };
        f(Record {
            cpu: u32_at(0),
            depth: u32_at(4),
            pid: u32_at(8),
            kind,
            seq: u64_at(0),
            epoch: u64_at(1),
            func: u64_at(2),
            time: u64_at(3),
            calltime: u64_at(4),
            overrun: u64_at(5),
        });
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::guest_memory::GuestAddress;
    use crate::kernel::{locate, tests::synthetic_guest};

    /// Write record `seq` into ring `cpu` as the guest would, and publish it.
    pub(crate) fn guest_push(ram: &GuestRam, k: &GuestKernel, r: &Record, key: u64) {
        let slots = u64::from(k.header.ring_slots);
        let at = k.slot(r.cpu, r.seq % slots);
        let words = abi::encode(r, key);
        ram.write_u64(at, words[0] | 1).unwrap();
        for (i, w) in words.iter().enumerate().skip(1) {
            ram.write_u64(GuestAddress(at.0 + 8 * i as u64), *w)
                .unwrap();
        }
        ram.write_u64(at, words[0]).unwrap();
        ram.write_u64(k.field(abi::off::HEAD + 8 * u64::from(r.cpu)), r.seq + 1)
            .unwrap();
    }

    pub(crate) fn rec(cpu: u32, seq: u64, epoch: u64) -> Record {
        Record {
            cpu,
            seq,
            epoch,
            kind: if seq % 2 == 0 {
                Kind::Entry
            } else {
                Kind::Return
            },
            func: 0xffff_ffff_9f20_0100,
            time: 1000 + seq * 10,
            calltime: if seq % 2 == 0 {
                0
            } else {
                1000 + (seq - 1) * 10
            },
            depth: 0,
            pid: 42,
            overrun: 0,
        }
    }

    fn setup() -> (tempfile::TempDir, GuestRam, GuestKernel) {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        (dir, ram, k)
    }

    fn poll_all(
        rd: &mut RingReader,
        ram: &GuestRam,
        k: &GuestKernel,
        klog: &Klog,
    ) -> (Vec<Record>, Vec<Anomaly>) {
        let (mut recs, mut anoms) = (Vec::new(), Vec::new());
        rd.poll(ram, k, klog, |r| recs.push(r), |a| anoms.push(a))
            .unwrap();
        (recs, anoms)
    }

    #[test]
    fn reads_records_across_a_key_rotation() {
        let (_d, ram, k) = setup();
        let mut klog = Klog::default();
        klog.insert(1, 0xaaaa);
        klog.insert(2, 0xbbbb);
        let mut rd = RingReader::start(&ram, &k).unwrap();
        for seq in 0..10 {
            let epoch = if seq < 5 { 1 } else { 2 };
            guest_push(&ram, &k, &rec(1, seq, epoch), klog.key(epoch).unwrap());
        }
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert!(anoms.is_empty(), "{anoms:?}");
        assert_eq!(recs.len(), 10);
        assert_eq!(recs[7], rec(1, 7, 2));
        assert_eq!(rd.stats.records, 10);
    }

    #[test]
    fn wrong_key_is_reported_not_dropped_or_misdecoded() {
        let (_d, ram, k) = setup();
        let mut klog = Klog::default();
        klog.insert(1, 0xaaaa);
        let mut rd = RingReader::start(&ram, &k).unwrap();
        guest_push(&ram, &k, &rec(0, 0, 1), 0xaaaa);
        // Labelled epoch 1 but encoded with another key (a stale or guessed one).
        guest_push(&ram, &k, &rec(0, 1, 1), 0x5555);
        // An epoch the host never issued.
        guest_push(&ram, &k, &rec(0, 2, 9), 0x9999);
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert_eq!(recs, vec![rec(0, 0, 1)]);
        assert_eq!(
            anoms,
            vec![
                Anomaly::BadCheck {
                    cpu: 0,
                    seq: 1,
                    epoch: 1
                },
                Anomaly::UnknownEpoch {
                    cpu: 0,
                    seq: 2,
                    epoch: 9
                }
            ]
        );
        assert_eq!(rd.stats.integrity_failures(), 2);
    }

    #[test]
    fn torn_and_erased_slots_are_counted() {
        let (_d, ram, k) = setup();
        let mut klog = Klog::default();
        klog.insert(1, 7);
        let mut rd = RingReader::start(&ram, &k).unwrap();
        for seq in 0..4 {
            guest_push(&ram, &k, &rec(0, seq, 1), 7);
        }
        // Record 1: caught mid-write (commit word odd).
        let at = k.slot(0, 1);
        ram.write_u64(at, abi::committed(1) | 1).unwrap();
        // Record 2: zeroed by someone.
        ram.write_u64(k.slot(0, 2), 0).unwrap();
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(rd.stats.erased, 2);
        assert_eq!(anoms.len(), 2);
    }

    #[test]
    fn overrun_shows_as_lost_records() {
        let (_d, ram, k) = setup();
        let mut klog = Klog::default();
        klog.insert(1, 7);
        let mut rd = RingReader::start(&ram, &k).unwrap();
        let slots = u64::from(k.header.ring_slots);
        for seq in 0..slots + 10 {
            guest_push(&ram, &k, &rec(0, seq, 1), 7);
        }
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert!(anoms.is_empty());
        assert_eq!(rd.stats.lost, 10);
        assert_eq!(recs.len() as u64, slots);
        assert_eq!(recs[0].seq, 10);
    }

    #[test]
    fn head_going_backwards_is_an_anomaly() {
        let (_d, ram, k) = setup();
        let klog = Klog::default();
        ram.write_u64(k.field(abi::off::HEAD), 100).unwrap();
        let mut rd = RingReader::start(&ram, &k).unwrap();
        ram.write_u64(k.field(abi::off::HEAD), 3).unwrap();
        let (_, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert_eq!(
            anoms,
            vec![Anomaly::Rewound {
                cpu: 0,
                head: 3,
                expected: 100
            }]
        );
    }

    #[test]
    fn spool_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("records.bin");
        let mut s = Spool::create(&p).unwrap();
        let rs: Vec<Record> = (0..5).map(|i| rec(i % 2, u64::from(i), 3)).collect();
        for r in &rs {
            s.push(r).unwrap();
        }
        s.flush().unwrap();
        let mut back = Vec::new();
        assert_eq!(read_spool(&p, |r| back.push(r)).unwrap(), 5);
        assert_eq!(back, rs);
    }
}
