//! The guest↔host contract: control block and record layout, ABI version 2.
//!
//! `docs/abi.md` is the specification; this module and
//! `guest-kernel/patches/*xftrace*` implement it, and the test vector in
//! both this file's tests, the document and the guest's boot-time self-test
//! keep them honest. Every offset into the control block, the ring heads
//! and the rings is computed here and nowhere else.
#![deny(clippy::arithmetic_side_effects)]

/// `"XFTRACE1"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"XFTRACE1");
/// `"XFTRCHK1"`: seed of the record check value.
pub const CHECK_SEED: u64 = u64::from_le_bytes(*b"XFTRCHK1");
pub const ABI_VERSION: u32 = 2;
pub const CTL_SIZE: u64 = 4096;
pub const SLOT_SIZE: u64 = 64;
pub const KEY_SLOTS: u64 = 16;
/// Entries of `ring_pa[]` and of the ring heads: rings the ABI can describe.
pub const MAX_RINGS: u32 = 256;
pub const FUNCS_SIZE: usize = 1024;
/// A key slot whose epoch word holds this is being rewritten (or wiped).
pub const EPOCH_INVALID: u64 = u64::MAX;
/// Largest ring the host accepts (the guest's Kconfig range).
pub const MAX_RING_SLOTS: u32 = 65536;
/// Bytes per ring head line (`xftrace_heads[]`).
pub const HEAD_LINE: u64 = 64;
/// Linux's `FTRACE_RETFUNC_DEPTH` (6.1): no traced call is deeper than this.
pub const FTRACE_RETFUNC_DEPTH: u32 = 50;

/// Byte offsets inside the control block.
pub mod off {
    pub const MAGIC: u64 = 0x000;
    pub const ABI_VERSION: u64 = 0x008;
    pub const CTL_SIZE: u64 = 0x00c;
    pub const CTL_VA: u64 = 0x010;
    pub const HEADS_VA: u64 = 0x018;
    pub const TEXT_VA: u64 = 0x020;
    pub const NR_RINGS: u64 = 0x028;
    pub const RING_SLOTS: u64 = 0x02c;
    pub const SLOT_SIZE: u64 = 0x030;
    pub const NR_CPUS: u64 = 0x034;
    pub const FUNCS_SIZE: u64 = 0x038;
    pub const NR_KEY_SLOTS: u64 = 0x03c;
    pub const HEARTBEAT: u64 = 0x040;
    pub const ACK_SEQ: u64 = 0x048;
    /// `ack_result` (s32) at 0x050 and `tracing` (u32) at 0x054, read as one word.
    pub const ACK_RESULT_TRACING: u64 = 0x050;
    pub const UNRINGED: u64 = 0x058;
    pub const NESTED: u64 = 0x060;
    /// `state` (u32) at 0x068 and `narrowed` (u32) at 0x06c, read as one word.
    pub const STATE_NARROWED: u64 = 0x068;
    pub const SESSION_START: u64 = 0x070;
    pub const SESSION: u64 = 0x078;
    /// `filter_count` (u32) at 0x080.
    pub const FILTER_COUNT: u64 = 0x080;
    pub const CUR_EPOCH: u64 = 0x100;
    pub const KEYS: u64 = 0x110;
    pub const CMD_SEQ: u64 = 0x300;
    /// `cmd_op` (u32) at 0x308 and `funcs_len` (u32) at 0x30c, written as one word.
    pub const CMD_OP_FUNCS_LEN: u64 = 0x308;
    pub const CMD_FLAGS: u64 = 0x310;
    pub const FUNCS: u64 = 0x400;
    pub const RING_PA: u64 = 0x800;
}

/// Offset of key slot `epoch % 16`'s epoch word (its key follows at +8).
pub fn key_slot(epoch: u64) -> u64 {
    // At most 0x110 + 15 * 16: cannot overflow.
    off::KEYS.wrapping_add((epoch % KEY_SLOTS) << 4)
}

/// Offset of `ring_pa[ring]` (ring < MAX_RINGS).
pub fn ring_pa(ring: u32) -> u64 {
    off::RING_PA | (u64::from(ring % MAX_RINGS) << 3)
}

/// Offset of ring `ring`'s head line in `xftrace_heads[]`: `head` at +0,
/// `dropped` (events without a valid key) at +8.
pub fn head_line(ring: u32) -> u64 {
    u64::from(ring % MAX_RINGS) << 6
}

/// Offset of slot `index` in a ring (index < ring_slots ≤ 65536).
pub fn slot(index: u64) -> u64 {
    const MASK: u64 = MAX_RING_SLOTS as u64 - 1;
    (index & MASK).wrapping_mul(SLOT_SIZE)
}

/// `cmd_flags` bit: also record functions run in interrupt context.
pub const FLAG_IRQS: u64 = 1;

/// Commands in `cmd_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    On = 1,
    Off = 2,
}

/// The guest's capture gate (`state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateState {
    Off,
    Armed,
    Capturing,
    Draining,
    /// A value the ABI does not define.
    Invalid,
}

impl GateState {
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => GateState::Off,
            1 => GateState::Armed,
            2 => GateState::Capturing,
            3 => GateState::Draining,
            _ => GateState::Invalid,
        }
    }
}

/// Bits of `narrowed`: what keeps the guest's graph callbacks from seeing
/// functions the host asked for, each with what an operator should know.
pub const NARROWED: &[(u32, &str)] = &[
    (
        1 << 0,
        "ftrace is disabled in the guest (sysctl kernel.ftrace_enabled=0, or after an ftrace bug)",
    ),
    (
        1 << 1,
        "set_ftrace_filter is set in the guest: only the functions it lists are seen",
    ),
    (
        1 << 2,
        "set_ftrace_notrace is set in the guest: the functions it lists are not seen",
    ),
    (
        1 << 3,
        "ftrace_graph_stop() was called in the guest: graph tracing is dead until reboot",
    ),
    (
        1 << 8,
        "the guest's graph callbacks are no longer xftrace's (replaced behind the host's back)",
    ),
];

/// The identity part of a control block, checked before anything trusts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlHeader {
    pub ctl_va: u64,
    pub heads_va: u64,
    pub text_va: u64,
    pub nr_rings: u32,
    pub ring_slots: u32,
    pub nr_cpus: u32,
}

fn le_u32(b: &[u8; 64], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at.saturating_add(4)) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8; 64], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at.saturating_add(8)) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

impl ControlHeader {
    /// Parse and sanity-check the first 64 bytes of a candidate control
    /// block (copied out of guest RAM; hostile until validated).
    pub fn parse(b: &[u8; 64]) -> Result<Self, String> {
        if le_u64(b, 0x00) != MAGIC {
            return Err("no xftrace magic".into());
        }
        let ver = le_u32(b, 0x08);
        if ver != ABI_VERSION {
            return Err(format!(
                "ABI version {ver}, this xftrace speaks {ABI_VERSION}: rebuild the guest kernel from this guest-kernel/ or use the matching xftrace"
            ));
        }
        let h = ControlHeader {
            ctl_va: le_u64(b, 0x10),
            heads_va: le_u64(b, 0x18),
            text_va: le_u64(b, 0x20),
            nr_rings: le_u32(b, 0x28),
            ring_slots: le_u32(b, 0x2c),
            nr_cpus: le_u32(b, 0x34),
        };
        let fixed = [
            (u64::from(le_u32(b, 0x0c)), CTL_SIZE, "control block size"),
            (u64::from(le_u32(b, 0x30)), SLOT_SIZE, "slot size"),
            (
                u64::from(le_u32(b, 0x38)),
                FUNCS_SIZE as u64,
                "function list size",
            ),
            (u64::from(le_u32(b, 0x3c)), KEY_SLOTS, "key slot count"),
        ];
        for (got, want, what) in fixed {
            if got != want {
                return Err(format!("{what} is {got}, expected {want}"));
            }
        }
        if h.nr_rings == 0 || h.nr_rings > MAX_RINGS || h.nr_rings > h.nr_cpus {
            return Err(format!(
                "implausible ring count {} for {} CPUs",
                h.nr_rings, h.nr_cpus
            ));
        }
        if !h.ring_slots.is_power_of_two() || !(64..=MAX_RING_SLOTS).contains(&h.ring_slots) {
            return Err(format!("implausible ring size {}", h.ring_slots));
        }
        if h.ctl_va % CTL_SIZE != 0 || h.heads_va % 4096 != 0 {
            return Err("control block or ring heads not page-aligned".into());
        }
        Ok(h)
    }

    /// Bytes of one ring.
    pub fn ring_len(&self) -> u64 {
        // ≤ 65536 × 64: no overflow.
        u64::from(self.ring_slots) << 6
    }

    /// Bytes of the head lines of all rings.
    pub fn heads_len(&self) -> u64 {
        u64::from(self.nr_rings) << 6
    }
}

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

fn mix(h: u64, v: u64) -> u64 {
    let h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

/// The keyed check value over a record's plain fields.
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
    let plain = [r.func, r.time, r.calltime, info_word(r), r.overrun];
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
    Ok(Record {
        cpu,
        seq,
        epoch,
        kind,
        func: plain[0],
        time: plain[1],
        calltime: plain[2],
        depth,
        pid: (info >> 32) as u32,
        overrun: plain[4],
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

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

    #[test]
    fn offsets_stay_inside_their_areas() {
        assert_eq!(key_slot(7), 0x110 + 7 * 16);
        assert_eq!(key_slot(u64::MAX), 0x110 + 15 * 16);
        assert_eq!(ring_pa(255), 0x800 + 255 * 8);
        assert!(ring_pa(255) + 8 <= CTL_SIZE);
        assert_eq!(head_line(3), 192);
        assert_eq!(committed(u64::MAX), None);
        assert_eq!(commit_seq(0), None);
        assert_eq!(commit_seq(committed(41).unwrap() | 1), Some(41));
    }

    pub(crate) fn header_bytes() -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&4096u32.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&0xffff_ffff_8200_0000u64.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&0xffff_ffff_8300_0000u64.to_le_bytes());
        b[0x28..0x2c].copy_from_slice(&2u32.to_le_bytes());
        b[0x2c..0x30].copy_from_slice(&2048u32.to_le_bytes());
        b[0x30..0x34].copy_from_slice(&64u32.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&2u32.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&1024u32.to_le_bytes());
        b[0x3c..0x40].copy_from_slice(&16u32.to_le_bytes());
        b
    }

    #[test]
    fn header_rejects_nonsense() {
        let mut b = [0u8; 64];
        assert!(ControlHeader::parse(&b).is_err());
        b = header_bytes();
        assert!(ControlHeader::parse(&b).is_ok());
        let mut bad = b;
        bad[0x2c..0x30].copy_from_slice(&3000u32.to_le_bytes());
        assert!(ControlHeader::parse(&bad).is_err());
        let mut bad = b;
        bad[0x28..0x2c].copy_from_slice(&257u32.to_le_bytes());
        bad[0x34..0x38].copy_from_slice(&1000u32.to_le_bytes());
        assert!(ControlHeader::parse(&bad).is_err());
        let mut bad = b;
        bad[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(ControlHeader::parse(&bad)
            .unwrap_err()
            .contains("ABI version 1"));
    }
}
