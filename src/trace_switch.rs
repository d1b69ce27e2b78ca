//! Trace Switch: ask the guest's xftrace thread to turn function_graph on
//! (for given functions) or off, through the control block only.

use std::time::{Duration, Instant};

use crate::abi::{self, Op};
use crate::error::{Error, Result};
use crate::guest_memory::GuestRam;
use crate::kernel::GuestKernel;

/// The guest's view, read from its control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStatus {
    pub heartbeat: u64,
    pub tracing: bool,
    pub cmd_seq: u64,
    pub ack_seq: u64,
    pub ack_result: i32,
    pub key_epoch: u64,
    /// Events dropped for want of a key, summed over rings.
    pub dropped: u64,
    /// Events on CPUs without a ring.
    pub unringed: u64,
}

pub fn read_status(ram: &GuestRam, k: &GuestKernel) -> Result<GuestStatus> {
    let w = |o| ram.read_u64(k.field(o));
    let ack = w(abi::off::ACK_RESULT_TRACING)?;
    let mut dropped = 0u64;
    for cpu in 0..u64::from(k.header.nr_rings) {
        dropped = dropped.saturating_add(w(abi::off::DROPPED + 8 * cpu)?);
    }
    Ok(GuestStatus {
        heartbeat: w(abi::off::HEARTBEAT)?,
        tracing: (ack >> 32) != 0,
        cmd_seq: w(abi::off::CMD_SEQ)?,
        ack_seq: w(abi::off::ACK_SEQ)?,
        ack_result: ack as u32 as i32,
        key_epoch: w(abi::off::CUR_EPOCH)?,
        dropped,
        unringed: w(abi::off::UNRINGED)?,
    })
}

/// Wait up to `within` for the guest's heartbeat to advance.
pub fn guest_alive(ram: &GuestRam, k: &GuestKernel, within: Duration) -> Result<bool> {
    let first = ram.read_u64(k.field(abi::off::HEARTBEAT))?;
    let end = Instant::now() + within;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        if ram.read_u64(k.field(abi::off::HEARTBEAT))? != first {
            return Ok(true);
        }
    }
    Ok(false)
}

fn errno_text(e: i32) -> String {
    let errno = nix::errno::Errno::from_raw(-e);
    format!("{} ({})", errno.desc(), errno)
}

/// Send `op` with `functions` (kernel symbol names) and `flags`
/// (`abi::FLAG_*`), and wait for the guest to acknowledge it.
pub fn send(
    ram: &GuestRam,
    k: &GuestKernel,
    op: Op,
    functions: &[String],
    flags: u64,
    timeout: Duration,
) -> Result<()> {
    let list = functions.join(" ");
    if list.len() >= abi::FUNCS_SIZE {
        return Err(Error::Input(format!(
            "the function list is {} bytes; the guest accepts at most {}",
            list.len(),
            abi::FUNCS_SIZE - 1
        )));
    }
    if !guest_alive(ram, k, Duration::from_secs(3))? {
        return Err(Error::Guest(
            "the guest kernel is not running: its xftrace heartbeat did not advance in 3 s (is the VM paused or stopped?)".into(),
        ));
    }
    let seq = ram
        .read_u64(k.field(abi::off::CMD_SEQ))?
        .max(ram.read_u64(k.field(abi::off::ACK_SEQ))?)
        + 1;
    let len = list.len() as u64;
    let mut bytes = list.into_bytes();
    bytes.resize(bytes.len().div_ceil(8) * 8, 0);
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let w = u64::from_le_bytes(chunk.try_into().unwrap());
        ram.write_u64(k.field(abi::off::FUNCS + 8 * i as u64), w)?;
    }
    ram.write_u64(k.field(abi::off::CMD_OP_FUNCS_LEN), op as u64 | (len << 32))?;
    ram.write_u64(k.field(abi::off::CMD_FLAGS), flags)?;
    ram.write_u64(k.field(abi::off::CMD_SEQ), seq)?;

    let end = Instant::now() + timeout;
    loop {
        if ram.read_u64(k.field(abi::off::ACK_SEQ))? == seq {
            break;
        }
        if Instant::now() >= end {
            return Err(Error::Timeout(format!(
                "the guest did not acknowledge '{}' within {} s (is the VM paused, stopped or its xftrace thread killed?)",
                if op == Op::On { "on" } else { "off" },
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = ram.read_u64(k.field(abi::off::ACK_RESULT_TRACING))? as u32 as i32;
    if result != 0 {
        let what = match op {
            Op::On => format!(
                "the guest could not trace {}: {}; pick functions the guest kernel can trace (not inlined or notrace)",
                functions.join(", "),
                errno_text(result)
            ),
            Op::Off => format!("the guest could not turn tracing off: {}", errno_text(result)),
        };
        return Err(Error::Guest(what));
    }
    Ok(())
}
