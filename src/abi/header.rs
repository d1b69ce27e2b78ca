//! The identity fields of a control block, parsed and checked before
//! anything trusts them.
#![deny(clippy::arithmetic_side_effects)]

use super::le;
use super::{
    ABI_VERSION, CTL_SIZE, FUNCS_SIZE, KEY_SLOTS, MAGIC, MAX_RINGS, MAX_RING_SLOTS, SLOT_SIZE,
};

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
    le::u32_at(b, at).unwrap_or(0)
}

fn le_u64(b: &[u8; 64], at: usize) -> u64 {
    le::u64_at(b, at).unwrap_or(0)
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
        if !h.ctl_va.is_multiple_of(CTL_SIZE) || !h.heads_va.is_multiple_of(4096) {
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

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
