//! Where everything is: offsets inside the control block, the ring head
//! lines and the rings. The only place that computes them.
#![deny(clippy::arithmetic_side_effects)]

use super::{KEY_SLOTS, MAX_RINGS, MAX_RING_SLOTS, SLOT_SIZE};

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
    /// `boot_id`: written and read by the host only (the guest zeroes it
    /// with the block at every boot).
    pub const BOOT_ID: u64 = 0x108;
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

/// Offset of ring `ring`'s head line in `xftrace_heads[]`.
pub fn head_line(ring: u32) -> u64 {
    u64::from(ring % MAX_RINGS) << 6
}

/// Byte offsets inside a ring's head line.
pub mod head {
    /// Records ever written to the ring.
    pub const HEAD: u64 = 0;
    /// Events not recorded for want of a valid key.
    pub const DROPPED: u64 = 8;
}

/// Offset of word `i` of the `funcs` field (i < 128).
pub fn funcs_word(i: usize) -> u64 {
    off::FUNCS | (((i % 128) as u64) << 3)
}

/// Offset of slot `index` in a ring (index < ring_slots ≤ 65536).
pub fn slot(index: u64) -> u64 {
    const MASK: u64 = MAX_RING_SLOTS as u64 - 1;
    (index & MASK).wrapping_mul(SLOT_SIZE)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::abi::record::{commit_seq, committed};
    use crate::abi::CTL_SIZE;

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
}
