//! Records: the eight words of a ring slot, their encoding, check value
//! and commit word.
#![deny(clippy::arithmetic_side_effects)]

use super::{CHECK_SEED, FTRACE_RETFUNC_DEPTH};

/// Record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Entry,
    Return,
}

/// A decoded function_graph event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub cpu: u32,
    pub seq: u64,
    pub epoch: u64,
    pub kind: Kind,
    pub func: u64,
    /// Entry: when the function was entered. Return: when it returned.
    pub time: u64,
    /// Return only: when the function was entered.
    pub calltime: u64,
    /// 0 ..= [`FTRACE_RETFUNC_DEPTH`].
    pub depth: u32,
    pub pid: u32,
    /// Return only: functions lost to the depth limit (ftrace's overrun).
    pub overrun: u64,
    /// Entry only: the task's name (`comm`, NUL-padded, guest-chosen).
    pub comm: [u8; 16],
}

impl Record {
    /// The task's name as bytes, up to its first NUL (guest-chosen: escape
    /// it before printing).
    pub fn comm(&self) -> &[u8] {
        let n = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        &self.comm[..n]
    }

    /// The two words an entry carries its task's name in.
    fn comm_words(&self) -> [u64; 2] {
        let (lo, hi) = self.comm.split_at(8);
        [
            u64::from_le_bytes(lo.try_into().expect("8 bytes")),
            u64::from_le_bytes(hi.try_into().expect("8 bytes")),
        ]
    }
}

/// A task name from the two words of an entry record.
pub fn comm_from_words(lo: u64, hi: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&lo.to_le_bytes());
    c[8..].copy_from_slice(&hi.to_le_bytes());
    c
}

/// The payload words a record travels in: an entry's `calltime` and `aux`
/// carry its task's name, a return's its entry time and overrun.
pub fn payload(r: &Record) -> [u64; 5] {
    match r.kind {
        Kind::Entry => {
            let [lo, hi] = r.comm_words();
            [r.func, r.time, lo, info_word(r), hi]
        }
        Kind::Return => [r.func, r.time, r.calltime, info_word(r), r.overrun],
    }
}

/// A slot as copied out of the ring: eight little-endian words.
pub type RawSlot = [u64; 8];

/// Commit word of a finished record `seq`; None for a sequence number no
/// ring can reach.
pub fn committed(seq: u64) -> Option<u64> {
    seq.checked_add(1)?.checked_mul(2)
}

/// The record number a commit word names, busy or not.
pub fn commit_seq(commit: u64) -> Option<u64> {
    (commit >> 1).checked_sub(1)
}

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    let h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

/// The keyed check value over a record's plain fields.
#[inline]
pub fn check_value(key: u64, seq: u64, epoch: u64, fields: &[u64; 5]) -> u64 {
    let mut h = mix(key ^ CHECK_SEED, seq);
    h = mix(h, epoch);
    for &f in fields {
        h = mix(h, f);
    }
    h
}

fn info_word(r: &Record) -> u64 {
    let t = match r.kind {
        Kind::Entry => 1,
        Kind::Return => 2,
    };
    t | (u64::from(r.depth & 0xff_ffff) << 8) | (u64::from(r.pid) << 32)
}

/// Encode `r` as the guest would (for tests, benchmarks and the test
/// vector). Panics on a sequence number no ring reaches.
pub fn encode(r: &Record, key: u64) -> RawSlot {
    let plain = payload(r);
    [
        committed(r.seq).expect("a reachable sequence number"),
        r.epoch,
        plain[0] ^ key,
        plain[1] ^ key,
        plain[2] ^ key,
        plain[3] ^ key,
        plain[4] ^ key,
        check_value(key, r.seq, r.epoch, &plain),
    ]
}

/// Why a committed slot did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The check value does not match under the key of the record's epoch:
    /// forged, corrupted, or written with a key other than the one it names.
    BadCheck,
    /// The check matched but the fields are impossible (an unknown type, a
    /// depth beyond ftrace's limit): forged by someone who has the key.
    BadFields,
}

/// Decode a committed slot known to hold record `seq` of ring `cpu`, with
/// the key of the epoch the slot names.
#[inline]
pub fn decode(cpu: u32, seq: u64, slot: &RawSlot, key: u64) -> Result<Record, DecodeError> {
    let epoch = slot[1];
    let plain = [
        slot[2] ^ key,
        slot[3] ^ key,
        slot[4] ^ key,
        slot[5] ^ key,
        slot[6] ^ key,
    ];
    if check_value(key, seq, epoch, &plain) != slot[7] {
        return Err(DecodeError::BadCheck);
    }
    let info = plain[3];
    let kind = match info & 0xff {
        1 => Kind::Entry,
        2 => Kind::Return,
        _ => return Err(DecodeError::BadFields),
    };
    let depth = ((info >> 8) & 0xff_ffff) as u32;
    if depth > FTRACE_RETFUNC_DEPTH {
        return Err(DecodeError::BadFields);
    }
    let (calltime, overrun, comm) = match kind {
        Kind::Entry => (0, 0, comm_from_words(plain[2], plain[4])),
        Kind::Return => (plain[2], plain[4], [0; 16]),
    };
    Ok(Record {
        cpu,
        seq,
        epoch,
        kind,
        func: plain[0],
        time: plain[1],
        calltime,
        depth,
        pid: (info >> 32) as u32,
        overrun,
        comm,
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;
    use crate::abi::{CHECK_SEED, MAGIC};

    /// The test vector of docs/abi.md §7. Change both or neither (and the
    /// guest's xftrace_selftest()).
    pub(crate) const VECTOR_KEY: u64 = 0x0123_4567_89ab_cdef;

    pub(crate) fn vector_record() -> Record {
        Record {
            cpu: 1,
            seq: 41,
            epoch: 7,
            kind: Kind::Return,
            func: 0xffff_ffff_8123_4560,
            time: 1_000_250,
            calltime: 1_000_000,
            depth: 2,
            pid: 123,
            overrun: 0,
            comm: [0; 16],
        }
    }

    const VECTOR_SLOT: RawSlot = [
        0x0000_0000_0000_0054,
        0x0000_0000_0000_0007,
        0xfedc_ba98_0888_888f,
        0x0123_4567_89a4_8ed5,
        0x0123_4567_89a4_8faf,
        0x0123_451c_89ab_cfed,
        0x0123_4567_89ab_cdef,
        0x37aa_40b5_3d64_4298,
    ];

    #[test]
    fn magic_spells_its_name() {
        assert_eq!(MAGIC, 0x3145_4341_5254_4658);
        assert_eq!(CHECK_SEED, 0x314b_4843_5254_4658);
    }

    #[test]
    fn test_vector_encodes_and_decodes() {
        let slot = encode(&vector_record(), VECTOR_KEY);
        assert_eq!(
            slot, VECTOR_SLOT,
            "encoding drifted from docs/abi.md: {slot:#018x?}"
        );
        assert_eq!(decode(1, 41, &VECTOR_SLOT, VECTOR_KEY), Ok(vector_record()));
    }

    #[test]
    fn an_entry_carries_its_tasks_name() {
        let mut r = vector_record();
        r.kind = Kind::Entry;
        r.calltime = 0;
        r.comm = *b"nginx: worker\0\0\0";
        let d = decode(1, 41, &encode(&r, VECTOR_KEY), VECTOR_KEY).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.comm(), b"nginx: worker");
        // In the slot, the name is keyed like the rest of the payload.
        let slot = encode(&r, VECTOR_KEY);
        assert_eq!(slot[4] ^ VECTOR_KEY, u64::from_le_bytes(*b"nginx: w"));
    }

    #[test]
    fn wrong_key_or_position_fails_the_check() {
        assert_eq!(
            decode(1, 41, &VECTOR_SLOT, VECTOR_KEY ^ 1),
            Err(DecodeError::BadCheck)
        );
        // The same bytes replayed at another sequence number.
        assert_eq!(
            decode(1, 42, &VECTOR_SLOT, VECTOR_KEY),
            Err(DecodeError::BadCheck)
        );
        // A flipped payload bit.
        let mut s = VECTOR_SLOT;
        s[2] ^= 0x10;
        assert_eq!(decode(1, 41, &s, VECTOR_KEY), Err(DecodeError::BadCheck));
        // A relabelled epoch.
        let mut s = VECTOR_SLOT;
        s[1] = 8;
        assert_eq!(decode(1, 41, &s, VECTOR_KEY), Err(DecodeError::BadCheck));
    }

    #[test]
    fn a_depth_beyond_ftrace_limit_is_a_bad_record() {
        // Correctly keyed (a guest with the key can do this) but deeper
        // than ftrace ever goes: rendering it would indent by 2 × 16 M.
        let mut r = vector_record();
        r.depth = 0xff_ffff;
        assert_eq!(
            decode(1, 41, &encode(&r, VECTOR_KEY), VECTOR_KEY),
            Err(DecodeError::BadFields)
        );
        r.depth = FTRACE_RETFUNC_DEPTH;
        assert!(decode(1, 41, &encode(&r, VECTOR_KEY), VECTOR_KEY).is_ok());
    }
}
