//! The guest↔host contract: control block and record layout, ABI version 4.
//!
//! `docs/abi.md` is the specification; this module and
//! `guest-kernel/patches/*xftrace*` implement it, and the test vector in
//! both this file's tests, the document and the guest's boot-time self-test
//! keep them honest. Every offset into the control block, the ring heads
//! and the rings is computed here and nowhere else.
#![deny(clippy::arithmetic_side_effects)]

pub mod funcs;
pub mod header;
pub mod layout;
pub mod le;
pub mod record;

pub use header::ControlHeader;
pub use layout::{head_line, key_slot, off, ring_pa, slot};
pub use record::{
    check_value, comm_from_words, commit_seq, committed, decode, encode, payload, DecodeError,
    Kind, RawSlot, Record,
};

/// `"XFTRACE1"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"XFTRACE1");
/// `"XFTRCHK1"`: seed of the record check value.
pub const CHECK_SEED: u64 = u64::from_le_bytes(*b"XFTRCHK1");
pub const ABI_VERSION: u32 = 4;
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
