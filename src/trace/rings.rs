//! Log Maker, first half: read the per-CPU rings while the guest writes them.
//!
//! For each ring the reader remembers the next sequence number it wants and
//! reads up to the guest's published head. A slot holds record `seq` only if
//! its commit word reads `(seq + 1) << 1` both before and after the payload
//! is copied; anything else is accounted for, never skipped silently:
//! overwritten by a later lap of the ring (`lost`), erased or rewritten by
//! something other than the tracer (`erased`), failing its check under the
//! key of the epoch it names (`bad_check`), naming an epoch the host never
//! issued (`unknown_epoch`), naming an epoch two or more rotations old after
//! the ring has moved past the point where a newer one was installed
//! (`stale_epoch`: someone kept an old key), going back to an older epoch
//! than the ring already used (`epoch_backwards`), or carrying impossible
//! fields under a valid check (`bad_record`).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::abi::{self, DecodeError, RawSlot, Record};
use crate::base::error::Result;
use crate::guest::memory::{GuestAddress, GuestRam};
use crate::kernel::locate::Control;
use crate::trace::keys::Klog;

/// Counters a collection keeps; saved in the session's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RingStats {
    pub records: u64,
    /// Records overwritten by the guest before the host read them.
    pub lost: u64,
    /// Records read but not kept: the spool reached its size limit.
    pub over_limit: u64,
    /// Slots holding neither the expected record nor a later lap of it.
    pub erased: u64,
    /// Records that fail their check under their epoch's key.
    pub bad_check: u64,
    /// Records naming an epoch the host never issued.
    pub unknown_epoch: u64,
    /// Records under a key the guest should no longer have had.
    pub stale_epoch: u64,
    /// Records whose epoch is older than one the ring already used.
    pub epoch_backwards: u64,
    /// Records that pass their check but cannot be (depth, type).
    pub bad_record: u64,
    /// Times a ring's head went backwards (guest reboot or tampering).
    pub rewound: u64,
    /// Times the guest moved a ring after the host started reading it.
    pub ring_moved: u64,
}

impl RingStats {
    pub fn integrity_failures(&self) -> u64 {
        [
            self.erased,
            self.bad_check,
            self.unknown_epoch,
            self.stale_epoch,
            self.epoch_backwards,
            self.bad_record,
            self.rewound,
            self.ring_moved,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Records the trace does not have, for any reason other than integrity.
    pub fn missing(&self) -> u64 {
        self.lost.saturating_add(self.over_limit)
    }
}

/// Something wrong with a slot, reported with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    Erased {
        cpu: u32,
        seq: u64,
        commit: u64,
    },
    BadCheck {
        cpu: u32,
        seq: u64,
        epoch: u64,
    },
    UnknownEpoch {
        cpu: u32,
        seq: u64,
        epoch: u64,
    },
    StaleEpoch {
        cpu: u32,
        seq: u64,
        epoch: u64,
        newer: u64,
    },
    EpochBackwards {
        cpu: u32,
        seq: u64,
        epoch: u64,
        before: u64,
    },
    BadRecord {
        cpu: u32,
        seq: u64,
    },
    Rewound {
        cpu: u32,
        head: u64,
        expected: u64,
    },
    RingMoved {
        cpu: u32,
        from: u64,
        to: u64,
    },
}

impl Anomaly {
    /// A short name of what went wrong, without the ring and record.
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::Erased { .. } => "erased",
            Anomaly::BadCheck { .. } => "bad check",
            Anomaly::UnknownEpoch { .. } => "unknown epoch",
            Anomaly::StaleEpoch { .. } => "stale epoch",
            Anomaly::EpochBackwards { .. } => "epoch backwards",
            Anomaly::BadRecord { .. } => "bad record",
            Anomaly::Rewound { .. } => "rewound",
            Anomaly::RingMoved { .. } => "ring moved",
        }
    }
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
            Anomaly::StaleEpoch { cpu, seq, epoch, newer } => write!(
                f,
                "cpu {cpu} record {seq}: written under key epoch {epoch} after epoch {newer} was installed (forged with a kept key)"
            ),
            Anomaly::EpochBackwards { cpu, seq, epoch, before } => write!(
                f,
                "cpu {cpu} record {seq}: key epoch {epoch} after the ring already used epoch {before} (forged or replayed)"
            ),
            Anomaly::BadRecord { cpu, seq } => write!(
                f,
                "cpu {cpu} record {seq}: passes its check but its fields are impossible (forged by someone with the key)"
            ),
            Anomaly::Rewound { cpu, head, expected } => write!(
                f,
                "cpu {cpu}: ring head went back from {expected} to {head} (guest rebooted or ring tampered with)"
            ),
            Anomaly::RingMoved { cpu, from, to } => write!(
                f,
                "cpu {cpu}: the guest moved its ring from {from:#x} to {to:#x} while the host read it"
            ),
        }
    }
}

/// Where the host stands on one ring.
#[derive(Debug)]
struct Cursor {
    /// The ring's memory, once the guest has published it.
    base: Option<GuestAddress>,
    moved_reported: bool,
    /// The next record to read.
    next: u64,
    /// The newest epoch a record of this ring used.
    last_epoch: u64,
    /// Epochs installed while this ring's head stood at `.1`: records past
    /// that point cannot legitimately use keys older than the epoch before.
    installs: VecDeque<(u64, u64)>,
    /// The newest epoch installed before the record at `next`.
    installed: u64,
}

/// Incremental reader of all rings.
pub struct RingReader {
    rings: Vec<Cursor>,
    slots: u64,
    ring_len: u64,
    pub stats: RingStats,
    /// The most records one ring brought in the last poll.
    pub busiest: u64,
    /// Copies of a run of slots and of their commit words read again.
    words: Vec<u64>,
    again: Vec<u64>,
}

/// Slots copied at a time (16 KiB), and their words.
const RUN: u64 = 256;
const RUN_WORDS: usize = 2048;

/// The ring `ring` as the guest published it, if usable.
fn ring_base(ram: &GuestRam, k: &Control, ring: u32, len: u64) -> Result<Option<GuestAddress>> {
    let pa = ram.read_u64(k.field(abi::ring_pa(ring)))?;
    let ok = pa != 0 && pa % 4096 == 0 && ram.layout().locate(GuestAddress(pa), len).is_some();
    Ok(ok.then_some(GuestAddress(pa)))
}

impl RingReader {
    /// Start at the rings' current heads: older records belong to earlier
    /// sessions. A ring the guest has not allocated yet starts at 0 when it
    /// appears.
    pub fn start(ram: &GuestRam, kernel: &Control) -> Result<Self> {
        let ring_len = kernel.header.ring_len();
        let mut rings = Vec::new();
        for ring in 0..kernel.header.nr_rings {
            let base = ring_base(ram, kernel, ring, ring_len)?;
            let next = match base {
                Some(_) => ram.read_u64(kernel.head(ring))?,
                None => 0,
            };
            rings.push(Cursor {
                base,
                moved_reported: false,
                next,
                last_epoch: 0,
                installs: VecDeque::new(),
                installed: 0,
            });
        }
        Ok(RingReader {
            rings,
            slots: u64::from(kernel.header.ring_slots),
            ring_len,
            stats: RingStats::default(),
            busiest: 0,
            words: vec![0; RUN_WORDS],
            again: vec![0; RUN as usize],
        })
    }

    /// Tell the reader the host just installed `epoch`: from each ring's
    /// current head on, records may use only this epoch or the one before.
    pub fn note_rotation(&mut self, ram: &GuestRam, kernel: &Control, epoch: u64) -> Result<()> {
        for (ring, c) in (0u32..).zip(self.rings.iter_mut()) {
            let head = ram.read_u64(kernel.head(ring))?;
            // Bounded: the reader drains these as it passes them.
            if c.installs.len() >= 1024 {
                c.installs.pop_front();
            }
            c.installs.push_back((epoch, head));
        }
        Ok(())
    }

    /// Records per ring.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Read every record committed since the last poll.
    pub fn poll(
        &mut self,
        ram: &GuestRam,
        kernel: &Control,
        klog: &Klog,
        mut record: impl FnMut(Record),
        mut anomaly: impl FnMut(Anomaly),
    ) -> Result<u64> {
        let mut n_read = 0u64;
        self.busiest = 0;
        let (slots, ring_len) = (self.slots, self.ring_len);
        for (cpu, c) in (0u32..).zip(self.rings.iter_mut()) {
            let published = ring_base(ram, kernel, cpu, ring_len)?;
            let Some(base) = c.follow(cpu, published, &mut self.stats, &mut anomaly) else {
                continue;
            };
            let head = ram.read_u64(kernel.head(cpu))?;
            if head < c.next {
                let a = Anomaly::Rewound {
                    cpu,
                    head,
                    expected: c.next,
                };
                self.stats.count(&a);
                anomaly(a);
                c.rewind(head);
                continue;
            }
            // head ≥ next here.
            let behind = head.saturating_sub(c.next);
            self.busiest = self.busiest.max(behind.min(slots));
            if behind > slots {
                let skipped = behind.saturating_sub(slots);
                self.stats.lost = self.stats.lost.saturating_add(skipped);
                c.next = c.next.saturating_add(skipped);
            }
            // A run of slots at a time (up to the ring's end): one copy of
            // them all, then their commit words once more.
            let mut key = None;
            while c.next < head {
                let first = c.next;
                let idx = first.checked_rem(slots).unwrap_or(0);
                let run = head
                    .saturating_sub(first)
                    .min(slots.saturating_sub(idx))
                    .min(RUN);
                let at = GuestAddress(base.0.saturating_add(abi::slot(idx)));
                let n = run as usize;
                if n == 0 {
                    break; // a ring of no slots: nothing to read
                }
                let words = self
                    .words
                    .get_mut(..n.saturating_mul(8))
                    .unwrap_or_default();
                let again = self.again.get_mut(..n).unwrap_or_default();
                let copied = ram.read_words(at, words).is_ok()
                    && ram.read_strided(at, abi::SLOT_SIZE, again).is_ok();
                c.next = first.saturating_add(run);
                // The common case, checked in a few compares: the record
                // expected, under the epoch whose key is cached, with no
                // rotation to account for before it. Anything else (and a
                // record that fails to decode) goes through `judge`.
                let mut fast = Fast::of(c, key, copied, c.next);
                // At most RUN records: counted here, added once.
                let mut kept = 0u64;
                for (i, (slot, &again)) in words.chunks_exact(8).zip(again.iter()).enumerate() {
                    let seq = first.saturating_add(i as u64);
                    let slot: &RawSlot = slot.try_into().expect("8 words");
                    if let Some(r) = fast.and_then(|f| f.decode(cpu, seq, slot, again)) {
                        kept = kept.wrapping_add(1);
                        record(r);
                        continue;
                    }
                    let judged = if copied {
                        judge(slot, again, seq, slots, cpu, c, klog, &mut key)
                    } else {
                        Err(Rejected::Bad(Anomaly::Erased {
                            cpu,
                            seq,
                            commit: 0,
                        }))
                    };
                    fast = Fast::of(c, key, copied, c.next);
                    match judged {
                        Ok(r) => {
                            kept = kept.wrapping_add(1);
                            record(r);
                        }
                        Err(Rejected::Lost) => self.stats.lost = self.stats.lost.saturating_add(1),
                        Err(Rejected::Bad(a)) => {
                            self.stats.count(&a);
                            anomaly(a);
                        }
                    }
                }
                self.stats.records = self.stats.records.saturating_add(kept);
                n_read = n_read.saturating_add(kept);
            }
        }
        Ok(n_read)
    }
}

impl Cursor {
    /// The ring's memory: taken when the guest first publishes it; a later
    /// move is reported once and not followed.
    fn follow(
        &mut self,
        cpu: u32,
        published: Option<GuestAddress>,
        stats: &mut RingStats,
        anomaly: &mut impl FnMut(Anomaly),
    ) -> Option<GuestAddress> {
        match (self.base, published) {
            (None, Some(b)) => {
                self.base = Some(b);
                Some(b)
            }
            (Some(b), Some(p)) if b != p && !self.moved_reported => {
                self.moved_reported = true;
                let a = Anomaly::RingMoved {
                    cpu,
                    from: b.0,
                    to: p.0,
                };
                stats.count(&a);
                anomaly(a);
                Some(b)
            }
            (b, _) => b,
        }
    }

    /// The guest's head went back: start over from there.
    fn rewind(&mut self, head: u64) {
        self.next = head;
        self.installs.clear();
        self.last_epoch = 0;
    }
}

impl RingStats {
    /// Count an anomaly under its kind.
    fn count(&mut self, a: &Anomaly) {
        let counter = match a {
            Anomaly::Erased { .. } => &mut self.erased,
            Anomaly::BadCheck { .. } => &mut self.bad_check,
            Anomaly::UnknownEpoch { .. } => &mut self.unknown_epoch,
            Anomaly::StaleEpoch { .. } => &mut self.stale_epoch,
            Anomaly::EpochBackwards { .. } => &mut self.epoch_backwards,
            Anomaly::BadRecord { .. } => &mut self.bad_record,
            Anomaly::Rewound { .. } => &mut self.rewound,
            Anomaly::RingMoved { .. } => &mut self.ring_moved,
        };
        *counter = counter.saturating_add(1);
    }
}

/// What `judge` would accept without a second look: a slot whose commit
/// word reads `(seq + 1) << 1` before and after the copy, naming the epoch
/// the ring last used, whose key is cached and not yet too old, at or
/// before the ring's next pending rotation.
#[derive(Clone, Copy)]
struct Fast {
    epoch: u64,
    key: u64,
    /// The last record before the next rotation `judge` must account for.
    until: u64,
}

impl Fast {
    /// `end`: one past the last record of the run (its commit word must
    /// exist, so that every record's before it does).
    fn of(c: &Cursor, key: Option<(u64, u64)>, copied: bool, end: u64) -> Option<Fast> {
        let (epoch, key) = key.filter(|_| copied)?;
        abi::committed(end)?;
        let fresh = epoch == c.last_epoch && epoch.saturating_add(1) >= c.installed;
        fresh.then(|| Fast {
            epoch,
            key,
            until: c.installs.front().map_or(u64::MAX, |&(_, head)| head),
        })
    }

    /// The record, if `slot` is what `judge` would accept as it stands.
    #[inline(always)]
    fn decode(self, cpu: u32, seq: u64, slot: &RawSlot, again: u64) -> Option<Record> {
        // Cannot wrap: `Fast::of` checked the run's last commit word.
        let want = seq.wrapping_add(1).wrapping_mul(2);
        if slot[0] != want || again != want || slot[1] != self.epoch || seq > self.until {
            return None;
        }
        abi::decode(cpu, seq, slot, self.key).ok()
    }
}

/// Why a slot gave no record: overwritten before it was read (lost), or not
/// what the guest should have written (an anomaly).
enum Rejected {
    Lost,
    Bad(Anomaly),
}

/// Judge record `seq` of ring `cpu` from its copied `slot` and its commit
/// word read again after the copy. `key` keeps the last epoch's key.
#[allow(clippy::too_many_arguments)]
fn judge(
    slot: &RawSlot,
    again: u64,
    seq: u64,
    slots: u64,
    cpu: u32,
    c: &mut Cursor,
    klog: &Klog,
    key: &mut Option<(u64, u64)>,
) -> std::result::Result<Record, Rejected> {
    let erased = |commit| Rejected::Bad(Anomaly::Erased { cpu, seq, commit });
    let want = abi::committed(seq).ok_or_else(|| erased(slot[0]))?;
    if slot[0] != want || again != want {
        // The writer lapping the ring is the only legitimate reason.
        let later_lap = abi::commit_seq(slot[0].max(again))
            .and_then(|cseq| cseq.checked_sub(seq))
            .is_some_and(|d| d > 0 && d.checked_rem(slots) == Some(0));
        return Err(if later_lap {
            Rejected::Lost
        } else {
            erased(slot[0])
        });
    }
    let epoch = slot[1];
    // Records past the point where epoch E was installed may use E or E−1.
    while c.installs.front().is_some_and(|&(_, head)| head < seq) {
        if let Some((e, _)) = c.installs.pop_front() {
            c.installed = c.installed.max(e);
        }
    }
    if epoch < c.last_epoch {
        return Err(Rejected::Bad(Anomaly::EpochBackwards {
            cpu,
            seq,
            epoch,
            before: c.last_epoch,
        }));
    }
    if epoch.saturating_add(1) < c.installed {
        return Err(Rejected::Bad(Anomaly::StaleEpoch {
            cpu,
            seq,
            epoch,
            newer: c.installed,
        }));
    }
    let key = match *key {
        Some((e, k)) if e == epoch => k,
        _ => {
            let Some(k) = klog.key(epoch) else {
                return Err(Rejected::Bad(Anomaly::UnknownEpoch { cpu, seq, epoch }));
            };
            *key = Some((epoch, k));
            k
        }
    };
    match abi::decode(cpu, seq, slot, key) {
        Ok(r) => {
            c.last_epoch = epoch;
            Ok(r)
        }
        Err(DecodeError::BadCheck) => Err(Rejected::Bad(Anomaly::BadCheck { cpu, seq, epoch })),
        Err(DecodeError::BadFields) => Err(Rejected::Bad(Anomaly::BadRecord { cpu, seq })),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;
    use crate::abi::Kind;
    use crate::kernel::locate::{locate, tests::synthetic_guest};
    use crate::trace::keys::KeyController;

    /// Where ring `cpu`'s slot `idx` is.
    pub(crate) fn slot_at(ram: &GuestRam, k: &Control, cpu: u32, idx: u64) -> GuestAddress {
        let base = ram.read_u64(k.field(abi::ring_pa(cpu))).unwrap();
        GuestAddress(base + idx * 64)
    }

    /// Write record `seq` into ring `cpu` as the guest would, and publish it.
    pub(crate) fn guest_push(ram: &GuestRam, k: &Control, r: &Record, key: u64) {
        let slots = u64::from(k.header.ring_slots);
        let at = slot_at(ram, k, r.cpu, r.seq % slots);
        let words = abi::encode(r, key);
        ram.write_u64(at, words[0] | 1).unwrap();
        for (i, w) in words.iter().enumerate().skip(1) {
            ram.write_u64(GuestAddress(at.0 + 8 * i as u64), *w)
                .unwrap();
        }
        ram.write_u64(at, words[0]).unwrap();
        ram.write_u64(k.head(r.cpu), r.seq + 1).unwrap();
    }

    pub(crate) fn rec(cpu: u32, seq: u64, epoch: u64) -> Record {
        Record {
            cpu,
            seq,
            epoch,
            kind: if seq.is_multiple_of(2) {
                Kind::Entry
            } else {
                Kind::Return
            },
            func: 0xffff_ffff_9f20_0100,
            time: 1000 + seq * 10,
            calltime: if seq.is_multiple_of(2) {
                0
            } else {
                1000 + (seq - 1) * 10
            },
            depth: 0,
            pid: 42,
            overrun: 0,
            comm: [0; 16],
        }
    }

    fn setup() -> (tempfile::TempDir, GuestRam, Control) {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        (dir, ram, k)
    }

    fn poll_all(
        rd: &mut RingReader,
        ram: &GuestRam,
        k: &Control,
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
    fn a_key_kept_from_before_rotation_cannot_forge_later_records() {
        let (d, ram, k) = setup();
        let mut keys = KeyController::new(&ram, &k, &d.path().join("klog")).unwrap();
        let mut rd = RingReader::start(&ram, &k).unwrap();
        let e1 = keys.rotate(&ram, &k).unwrap();
        rd.note_rotation(&ram, &k, e1).unwrap();
        // A guest attacker copies the key of epoch 1 out of its memory.
        let stolen = ram.read_u64(k.field(abi::key_slot(e1) + 8)).unwrap();
        guest_push(&ram, &k, &rec(0, 0, e1), stolen);
        // The host rotates twice; epoch 1's key is wiped from the guest.
        for _ in 0..2 {
            let e = keys.rotate(&ram, &k).unwrap();
            guest_push(&ram, &k, &rec(0, e - 1, e), keys.current().unwrap().1);
            rd.note_rotation(&ram, &k, e).unwrap();
        }
        assert_ne!(
            ram.read_u64(k.field(abi::key_slot(e1) + 8)).unwrap(),
            stolen
        );
        // Now a record at the current position, forged with the stolen key.
        guest_push(&ram, &k, &rec(0, 3, e1), stolen);
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, keys.klog());
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(
            matches!(
                anoms[..],
                [Anomaly::EpochBackwards {
                    seq: 3,
                    epoch: 1,
                    ..
                }]
            ),
            "{anoms:?}"
        );
        // Even on a ring that never used a newer epoch, it is stale.
        let (d2, ram2, k2) = setup();
        let mut keys2 = KeyController::new(&ram2, &k2, &d2.path().join("klog")).unwrap();
        let mut rd2 = RingReader::start(&ram2, &k2).unwrap();
        let e1 = keys2.rotate(&ram2, &k2).unwrap();
        rd2.note_rotation(&ram2, &k2, e1).unwrap();
        let stolen = keys2.current().unwrap().1;
        for _ in 0..2 {
            let e = keys2.rotate(&ram2, &k2).unwrap();
            rd2.note_rotation(&ram2, &k2, e).unwrap();
        }
        guest_push(&ram2, &k2, &rec(1, 0, e1), stolen);
        guest_push(&ram2, &k2, &rec(1, 1, e1), stolen);
        let (recs, anoms) = poll_all(&mut rd2, &ram2, &k2, keys2.klog());
        // Record 0 was at the head when epochs 2 and 3 came: it may be a
        // write in flight. Record 1 began after that: forged.
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0]);
        assert!(
            matches!(
                anoms[..],
                [Anomaly::StaleEpoch {
                    seq: 1,
                    epoch: 1,
                    newer: 3,
                    ..
                }]
            ),
            "{anoms:?}"
        );
        assert_eq!(rd2.stats.stale_epoch, 1);
    }

    #[test]
    fn a_stale_key_is_caught_in_the_middle_of_a_run() {
        // The reader's fast path keeps the key of a run's epoch: a rotation
        // noted halfway through the run must still end it.
        let (d, ram, k) = setup();
        let mut keys = KeyController::new(&ram, &k, &d.path().join("klog")).unwrap();
        let mut rd = RingReader::start(&ram, &k).unwrap();
        let e1 = keys.rotate(&ram, &k).unwrap();
        rd.note_rotation(&ram, &k, e1).unwrap();
        let stolen = keys.current().unwrap().1;
        for seq in 0..4 {
            guest_push(&ram, &k, &rec(0, seq, e1), stolen);
        }
        for _ in 0..2 {
            let e = keys.rotate(&ram, &k).unwrap();
            rd.note_rotation(&ram, &k, e).unwrap();
        }
        for seq in 4..8 {
            guest_push(&ram, &k, &rec(0, seq, e1), stolen);
        }
        let (recs, anoms) = poll_all(&mut rd, &ram, &k, keys.klog());
        // Record 4 was at the head when the rotations came (a write in
        // flight may finish under the old key); 5.. began after them.
        assert_eq!(recs.len(), 5);
        assert_eq!(rd.stats.stale_epoch, 3, "{anoms:?}");
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
        ram.write_u64(slot_at(&ram, &k, 0, 1), abi::committed(1).unwrap() | 1)
            .unwrap();
        // Record 2: zeroed by someone.
        ram.write_u64(slot_at(&ram, &k, 0, 2), 0).unwrap();
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
    fn hostile_heads_and_commit_words_do_not_panic() {
        let (_d, ram, k) = setup();
        let mut klog = Klog::default();
        klog.insert(1, 7);
        let mut rd = RingReader::start(&ram, &k).unwrap();
        ram.write_u64(k.head(0), u64::MAX).unwrap();
        ram.write_u64(slot_at(&ram, &k, 0, (u64::MAX - 1) % 256), u64::MAX)
            .unwrap();
        let (recs, _) = poll_all(&mut rd, &ram, &k, &klog);
        assert!(recs.is_empty());
        assert_eq!(rd.stats.lost, u64::MAX - 256);
        assert_eq!(rd.stats.erased, 256);
        // Rewound to 0, then all the way up again: the counters saturate.
        for head in [0, u64::MAX] {
            ram.write_u64(k.head(0), head).unwrap();
            poll_all(&mut rd, &ram, &k, &klog);
        }
        assert_eq!(rd.stats.lost, u64::MAX);
        assert_eq!(rd.stats.rewound, 1);
        // A ring moved to a bogus address is reported once, not followed.
        ram.write_u64(k.field(abi::ring_pa(1)), 0x2000).unwrap();
        let (_, anoms) = poll_all(&mut rd, &ram, &k, &klog);
        assert!(
            matches!(anoms[..], [Anomaly::RingMoved { cpu: 1, .. }]),
            "{anoms:?}"
        );
    }

    #[test]
    fn head_going_backwards_is_an_anomaly() {
        let (_d, ram, k) = setup();
        let klog = Klog::default();
        ram.write_u64(k.head(0), 100).unwrap();
        let mut rd = RingReader::start(&ram, &k).unwrap();
        ram.write_u64(k.head(0), 3).unwrap();
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
}
