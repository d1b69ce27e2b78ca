//! The record spool: decoded records on disk, one file per ring, so that a
//! long trace never has to fit in memory and nothing is lost if the
//! collector dies.
//!
//! Each ring's records are in the order the guest wrote them, which is time
//! order on that CPU; readers merge the rings by time while streaming. The
//! spool has a size limit: records past it are counted, not kept, and the
//! trace says so.
#![deny(clippy::arithmetic_side_effects)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use log::warn;

use crate::abi::{self, le, Kind, Record};
use crate::base::error::{Error, Result};
use crate::host::files;

/// Size of one record in a spool file.
pub const RECORD_BYTES: u64 = 64;
/// Default limit of a session's spool.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

fn file_name(cpu: u32) -> String {
    format!("records.{cpu}.bin")
}

/// The spool files in `dir`, by ring.
pub fn files(dir: &Path) -> Vec<(u32, PathBuf)> {
    (0..abi::MAX_RINGS)
        .map(|cpu| (cpu, dir.join(file_name(cpu))))
        .filter(|(_, p)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// Remove a session's spool.
pub fn remove(dir: &Path) -> Result<()> {
    for (_, p) in files(dir) {
        files::remove_if_present(&p)?;
    }
    Ok(())
}

/// Appends records to per-ring files, up to a limit.
pub struct SpoolWriter {
    dir: PathBuf,
    out: Vec<Option<BufWriter<File>>>,
    written: u64,
    limit: u64,
}

impl SpoolWriter {
    /// Start a new spool for `rings` rings in `dir` (replacing an old
    /// one), keeping at most `limit` bytes. Every ring's file exists from
    /// the start, so a session without records still has a (empty) spool.
    pub fn create(dir: &Path, rings: u32, limit: u64) -> Result<Self> {
        remove(dir)?;
        let out = (0..rings.min(abi::MAX_RINGS))
            .map(|cpu| {
                let f = files::create_new_private(&dir.join(file_name(cpu)))?;
                Ok(Some(BufWriter::with_capacity(1 << 16, f)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            out,
            written: 0,
            limit,
        })
    }

    /// Keep `r`; false if the spool is full (the caller counts it).
    pub fn push(&mut self, r: &Record) -> Result<bool> {
        if self.written.saturating_add(RECORD_BYTES) > self.limit {
            return Ok(false);
        }
        let i = r.cpu as usize;
        if r.cpu >= abi::MAX_RINGS {
            return Err(Error::Guest(format!(
                "record from ring {} beyond the ABI",
                r.cpu
            )));
        }
        if self.out.len() <= i {
            self.out.resize_with(i.saturating_add(1), || None);
        }
        let w = match &mut self.out[i] {
            Some(w) => w,
            slot => {
                let f = files::replace_private(&self.dir.join(file_name(r.cpu)))?;
                slot.insert(BufWriter::with_capacity(1 << 16, f))
            }
        };
        w.write_all(&encode(r))
            .map_err(|e| Error::io("cannot write the record spool", e))?;
        self.written = self.written.saturating_add(RECORD_BYTES);
        Ok(true)
    }

    /// Hand what is buffered to the kernel: a collector that dies after
    /// this loses none of it (the host's page cache keeps it).
    pub fn flush(&mut self) -> Result<()> {
        for w in self.out.iter_mut().flatten() {
            w.flush()
                .map_err(|e| Error::io("cannot flush the record spool", e))?;
        }
        Ok(())
    }

    /// Flush, then wait until the disk has it, as at the end of a session.
    /// Never while rings are filling: waiting for the disk there (behind the
    /// host's other writeback) let the guest lap its rings; the workloads
    /// bench lost 1–2 % of a busy session's records to a sync every 500 ms.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        for w in self.out.iter_mut().flatten() {
            w.get_ref()
                .sync_data()
                .map_err(|e| Error::io("cannot sync the record spool", e))?;
        }
        Ok(())
    }
}

fn encode(r: &Record) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..4].copy_from_slice(&r.cpu.to_le_bytes());
    b[4..8].copy_from_slice(&r.depth.to_le_bytes());
    b[8..12].copy_from_slice(&r.pid.to_le_bytes());
    b[12] = match r.kind {
        Kind::Entry => 1,
        Kind::Return => 2,
    };
    // As in the ring: an entry's last two words hold its task's name.
    let p = abi::payload(r);
    for (chunk, v) in b[16..64]
        .chunks_exact_mut(8)
        .zip([r.seq, r.epoch, r.func, r.time, p[2], p[4]])
    {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode(b: &[u8; 64]) -> Option<Record> {
    let word = |i: usize| le::u64_at(b, i.checked_mul(8)?.checked_add(16)?);
    let kind = match b[12] {
        1 => Kind::Entry,
        2 => Kind::Return,
        _ => return None,
    };
    let depth = le::u32_at(b, 4)?;
    if depth > abi::FTRACE_RETFUNC_DEPTH {
        return None;
    }
    let (calltime, overrun, comm) = match kind {
        Kind::Entry => (0, 0, abi::comm_from_words(word(4)?, word(5)?)),
        Kind::Return => (word(4)?, word(5)?, [0; 16]),
    };
    Some(Record {
        cpu: le::u32_at(b, 0)?,
        depth,
        pid: le::u32_at(b, 8)?,
        kind,
        seq: word(0)?,
        epoch: word(1)?,
        func: word(2)?,
        time: word(3)?,
        calltime,
        overrun,
        comm,
    })
}

/// One ring's records, streamed from its spool file.
pub struct RingStream {
    cpu: u32,
    path: PathBuf,
    rd: BufReader<File>,
}

impl RingStream {
    pub fn open(cpu: u32, path: &Path) -> Result<Self> {
        let f = files::open_regular(path, "record spool")?;
        Ok(RingStream {
            cpu,
            path: path.to_path_buf(),
            rd: BufReader::with_capacity(1 << 16, f),
        })
    }

    pub fn cpu(&self) -> u32 {
        self.cpu
    }
}

impl Iterator for RingStream {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        let mut b = [0u8; 64];
        loop {
            match self.rd.read_exact(&mut b) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) => {
                    warn!(
                        "record spool {}: {e}; the rest is not rendered",
                        self.path.display()
                    );
                    return None;
                }
            }
            match decode(&b) {
                Some(r) if r.cpu == self.cpu => return Some(r),
                _ => warn!(
                    "record spool {}: a malformed record, skipped",
                    self.path.display()
                ),
            }
        }
    }
}

/// Every ring of the spool in `dir`.
pub fn open(dir: &Path) -> Result<Vec<RingStream>> {
    files(dir)
        .into_iter()
        .map(|(cpu, p)| RingStream::open(cpu, &p))
        .collect()
}

/// True if `dir` holds a spool.
pub fn exists(dir: &Path) -> bool {
    !files(dir).is_empty()
}

/// Several streams merged by record time (each already in time order);
/// ties keep ring order. Memory: one record per ring.
pub struct Merged<I: Iterator<Item = Record>> {
    streams: Vec<I>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    heads: Vec<Option<Record>>,
}

impl<I: Iterator<Item = Record>> Merged<I> {
    pub fn new(mut streams: Vec<I>) -> Self {
        let mut heap = BinaryHeap::new();
        let mut heads = Vec::with_capacity(streams.len());
        for (i, s) in streams.iter_mut().enumerate() {
            let r = s.next();
            if let Some(r) = &r {
                heap.push(Reverse((r.time, i)));
            }
            heads.push(r);
        }
        Merged {
            streams,
            heap,
            heads,
        }
    }
}

impl<I: Iterator<Item = Record>> Iterator for Merged<I> {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        let Reverse((_, i)) = self.heap.pop()?;
        let r = self.heads[i].take()?;
        if let Some(n) = self.streams[i].next() {
            self.heap.push(Reverse((n.time, i)));
            self.heads[i] = Some(n);
        }
        Some(r)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::trace::rings::tests::rec;

    #[test]
    fn round_trips_per_ring_and_merges_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpoolWriter::create(dir.path(), 2, DEFAULT_LIMIT).unwrap();
        let rs: Vec<Record> = (0..6).map(|i| rec(i % 2, u64::from(i), 3)).collect();
        for r in &rs {
            assert!(s.push(r).unwrap());
        }
        s.flush().unwrap();
        let streams = open(dir.path()).unwrap();
        assert_eq!(streams.len(), 2);
        let back: Vec<Record> = Merged::new(streams).collect();
        assert_eq!(back, rs);
        for (_, p) in files(dir.path()) {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn the_limit_keeps_the_spool_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpoolWriter::create(dir.path(), 1, 3 * RECORD_BYTES).unwrap();
        let kept: Vec<bool> = (0..5).map(|i| s.push(&rec(0, i, 1)).unwrap()).collect();
        assert_eq!(kept, vec![true, true, true, false, false]);
        s.flush().unwrap();
        assert_eq!(open(dir.path()).unwrap().remove(0).count(), 3);
    }

    #[test]
    fn malformed_spool_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = encode(&rec(0, 1, 1));
        bad[4..8].copy_from_slice(&0xff_ffffu32.to_le_bytes());
        let mut data = encode(&rec(0, 0, 1)).to_vec();
        data.extend_from_slice(&bad);
        data.extend_from_slice(&[7u8; 10]);
        std::fs::write(dir.path().join("records.0.bin"), data).unwrap();
        let got: Vec<Record> = open(dir.path()).unwrap().remove(0).collect();
        assert_eq!(got, vec![rec(0, 0, 1)]);
    }
}
