//! Trace Switch: ask the guest's xftrace thread to turn tracing on (for
//! given functions) or off, through the control block only, and read back
//! what the guest says about its tracer.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

use crate::abi::{self, GateState, Op};
use crate::base::error::{Error, Result};
use crate::guest::memory::GuestRam;
use crate::kernel::locate::Control;

/// The guest's view, read from its control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracerStatus {
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
    /// Events dropped because the CPU was already inside the tracer (NMI).
    pub nested: u64,
    pub gate: GateState,
    /// `abi::NARROWED` bits: what keeps the guest's callbacks from functions.
    pub narrowed: u32,
    pub session: u64,
    pub session_start: u64,
    pub filter_count: u32,
}

impl TracerStatus {
    /// Why the guest's capture is thinner than the host asked, one line each.
    pub fn narrowed_reasons(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = abi::NARROWED
            .iter()
            .filter(|(bit, _)| self.narrowed & bit != 0)
            .map(|(_, why)| *why)
            .collect();
        let known = abi::NARROWED.iter().fold(0, |a, (b, _)| a | b);
        if self.narrowed & !known != 0 {
            out.push("the guest reports an unknown reason its capture is narrowed");
        }
        out
    }
}

pub fn read_status(ram: &GuestRam, k: &Control) -> Result<TracerStatus> {
    let w = |o| ram.read_u64(k.field(o));
    let ack = w(abi::off::ACK_RESULT_TRACING)?;
    let gate = w(abi::off::STATE_NARROWED)?;
    let mut dropped = 0u64;
    for ring in 0..k.header.nr_rings {
        dropped = dropped.saturating_add(ram.read_u64(k.dropped(ring))?);
    }
    Ok(TracerStatus {
        heartbeat: w(abi::off::HEARTBEAT)?,
        tracing: (ack >> 32) != 0,
        cmd_seq: w(abi::off::CMD_SEQ)?,
        ack_seq: w(abi::off::ACK_SEQ)?,
        ack_result: ack as u32 as i32,
        key_epoch: w(abi::off::CUR_EPOCH)?,
        dropped,
        unringed: w(abi::off::UNRINGED)?,
        nested: w(abi::off::NESTED)?,
        gate: GateState::from_raw(gate as u32),
        narrowed: (gate >> 32) as u32,
        session: w(abi::off::SESSION)?,
        session_start: w(abi::off::SESSION_START)?,
        filter_count: w(abi::off::FILTER_COUNT)? as u32,
    })
}

/// The guest's heartbeat as read at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Beat {
    pub value: u64,
    pub at: Instant,
}

impl Beat {
    pub fn read(ram: &GuestRam, k: &Control) -> Result<Beat> {
        Ok(Beat {
            value: ram.read_u64(k.field(abi::off::HEARTBEAT))?,
            at: Instant::now(),
        })
    }
}

/// How long a guest's heartbeat may stand still before a command is not
/// written to it: its thread beats every 20 ms while tracing, every 100 ms
/// to 1 s when idle. A guest stalled longer than this is paused, or its
/// host so loaded that it gets no CPU; an `off` waits longer
/// ([`OFF_LIVENESS`]), since leaving a tracer on is the worse outcome.
pub const LIVENESS: Duration = Duration::from_secs(3);
pub const OFF_LIVENESS: Duration = Duration::from_secs(10);

/// Wait up to `within` for the guest's heartbeat to advance.
pub fn guest_alive(ram: &GuestRam, k: &Control, within: Duration) -> Result<bool> {
    let first = ram.read_u64(k.field(abi::off::HEARTBEAT))?;
    guest_alive_since(ram, k, first, Instant::now(), within)
}

/// Has the heartbeat moved from `first`, read at `since`? Waits up to
/// `within` from `since` for it to. (An idle guest's thread beats every
/// 100 ms to 1 s.)
pub fn guest_alive_since(
    ram: &GuestRam,
    k: &Control,
    first: u64,
    since: Instant,
    within: Duration,
) -> Result<bool> {
    let end = since.checked_add(within).unwrap_or(since);
    loop {
        if ram.read_u64(k.field(abi::off::HEARTBEAT))? != first {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ack_result` as text ("No such device (ENODEV)"); any value is safe.
pub fn errno_text(e: i32) -> String {
    match e.checked_neg() {
        Some(n) if n > 0 => {
            let errno = nix::errno::Errno::from_raw(n);
            format!("{} ({})", errno.desc(), errno)
        }
        _ => format!("result {e}"),
    }
}

/// The sequence numbers of the next command: odd while it is written, even
/// once complete, above anything in `cmd_seq` and `ack_seq`.
fn next_seq(cmd_seq: u64, ack_seq: u64) -> Result<(u64, u64)> {
    let even = (cmd_seq.max(ack_seq) | 1)
        .checked_add(1)
        .filter(|&s| s < u64::MAX / 2)
        .ok_or_else(|| {
            Error::Guest(format!(
                "the guest's command sequence numbers are implausible ({cmd_seq:#x}, {ack_seq:#x}): someone other than xftrace wrote them"
            ))
        })?;
    // even ≥ 2.
    Ok((even.saturating_sub(1), even))
}

/// The functions and flags of the last command, if it was an `on` that the
/// guest applied (what a guest still tracing traces). Read back from the
/// control block the host wrote: a guest can rewrite it, and gains only
/// that xftrace switches it off and on again.
pub fn applied_on(ram: &GuestRam, k: &Control) -> Result<Option<(Vec<String>, u64)>> {
    let seq = ram.read_u64(k.field(abi::off::CMD_SEQ))?;
    if seq != ram.read_u64(k.field(abi::off::ACK_SEQ))? || seq % 2 == 1 {
        return Ok(None);
    }
    let op_len = ram.read_u64(k.field(abi::off::CMD_OP_FUNCS_LEN))?;
    let len = usize::try_from(op_len >> 32).unwrap_or(usize::MAX);
    if op_len as u32 != Op::On as u32 || len == 0 || len >= abi::FUNCS_SIZE {
        return Ok(None);
    }
    let mut b = vec![0u8; abi::FUNCS_SIZE];
    ram.read_into(k.field(abi::off::FUNCS), &mut b)?;
    let Ok(list) = std::str::from_utf8(&b[..len]) else {
        return Ok(None);
    };
    let functions: Vec<String> = list.split(' ').map(str::to_string).collect();
    if functions
        .iter()
        .any(|f| abi::funcs::check_pattern(f).is_err())
    {
        return Ok(None);
    }
    let functions = abi::funcs::without_probe(functions);
    if functions.is_empty() {
        return Ok(None);
    }
    let flags = ram.read_u64(k.field(abi::off::CMD_FLAGS))?;
    Ok(Some((functions, flags)))
}

/// Send `op` with `functions` (kernel symbol names or globs) and `flags`
/// (`abi::FLAG_*`), and wait for the guest to acknowledge it.
///
/// The command is one consistent unit: `cmd_seq` is odd while the host
/// writes it, so the guest never applies half of one command and half of
/// another.
pub fn send(
    ram: &GuestRam,
    k: &Control,
    op: Op,
    functions: &[String],
    flags: u64,
    timeout: Duration,
    seen_alive: Option<Beat>,
) -> Result<()> {
    // Every filter holds the guest's probe (docs/abi.md §3.1).
    let sent = match op {
        Op::On => abi::funcs::with_probe(functions),
        Op::Off => functions.to_vec(),
    };
    let (funcs, len) = abi::funcs::encode(&sent).map_err(Error::Input)?;
    // A command is written only to a guest that runs (a paused one would
    // apply it whenever it resumes). A caller that read the heartbeat a
    // moment ago passes that reading: any beat since counts, so a slow step
    // in between (spawning a collector on a loaded host) costs no wait.
    let window = if op == Op::Off {
        OFF_LIVENESS
    } else {
        LIVENESS
    };
    let alive = match seen_alive {
        Some(b) => guest_alive_since(ram, k, b.value, b.at, b.at.elapsed().saturating_add(window))?,
        None => guest_alive(ram, k, window)?,
    };
    if !alive {
        return Err(Error::Guest(format!(
            "the guest kernel is not running: its xftrace heartbeat did not advance in {} s (is the VM paused or stopped?)",
            window.as_secs()
        )));
    }
    let (writing, seq) = next_seq(
        ram.read_u64(k.field(abi::off::CMD_SEQ))?,
        ram.read_u64(k.field(abi::off::ACK_SEQ))?,
    )?;
    ram.write_u64(k.field(abi::off::CMD_SEQ), writing)?;
    for (i, w) in abi::le::words(&funcs).enumerate() {
        ram.write_u64(k.field(abi::layout::funcs_word(i)), w)?;
    }
    ram.write_u64(k.field(abi::off::CMD_OP_FUNCS_LEN), op as u64 | (len << 32))?;
    ram.write_u64(k.field(abi::off::CMD_FLAGS), flags)?;
    ram.write_u64(k.field(abi::off::CMD_SEQ), seq)?;

    let written = Instant::now();
    let end = written.checked_add(timeout).unwrap_or(written);
    loop {
        if ram.read_u64(k.field(abi::off::ACK_SEQ))? == seq {
            log::debug!(
                "the guest acknowledged {op:?} after {:?}",
                written.elapsed()
            );
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
            Op::On if result == -libc::EBUSY => format!(
                "the guest could not trace {}: {}; a guest user runs function_graph through tracefs (or xftrace is already on): stop that first",
                functions.join(", "),
                errno_text(result)
            ),
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::locate::{locate, tests::synthetic_guest};

    #[test]
    fn hostile_sequence_numbers_and_results_do_not_panic() {
        assert_eq!(next_seq(4, 4).unwrap(), (5, 6));
        assert_eq!(next_seq(5, 2).unwrap(), (5, 6));
        assert!(next_seq(u64::MAX, 0).is_err());
        assert!(next_seq(0, u64::MAX - 1).is_err());
        assert_eq!(errno_text(i32::MIN), format!("result {}", i32::MIN));
        assert!(errno_text(-19).contains("ENODEV"));
        assert_eq!(errno_text(5), "result 5");
    }

    #[test]
    fn status_of_a_hostile_control_block_reads_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        for off in [
            abi::off::UNRINGED,
            abi::off::NESTED,
            abi::off::STATE_NARROWED,
        ] {
            ram.write_u64(k.field(off), u64::MAX).unwrap();
        }
        for r in 0..k.header.nr_rings {
            ram.write_u64(k.dropped(r), u64::MAX).unwrap();
        }
        ram.write_u64(k.field(abi::off::ACK_RESULT_TRACING), 0x8000_0000)
            .unwrap();
        let s = read_status(&ram, &k).unwrap();
        assert_eq!(s.dropped, u64::MAX);
        assert_eq!(s.ack_result, i32::MIN);
        assert_eq!(s.gate, GateState::Invalid);
        assert!(s.narrowed_reasons().len() > 3);
    }

    #[test]
    fn the_applied_on_command_is_read_back_and_a_hostile_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        let command = |seq: u64, ack: u64, op: u64, list: &[u8], len: u64| {
            let mut b = [0u8; abi::FUNCS_SIZE];
            b[..list.len()].copy_from_slice(list);
            for (i, w) in abi::le::words(&b).enumerate() {
                ram.write_u64(k.field(abi::layout::funcs_word(i)), w)
                    .unwrap();
            }
            ram.write_u64(k.field(abi::off::CMD_OP_FUNCS_LEN), op | (len << 32))
                .unwrap();
            ram.write_u64(k.field(abi::off::CMD_FLAGS), 1).unwrap();
            ram.write_u64(k.field(abi::off::CMD_SEQ), seq).unwrap();
            ram.write_u64(k.field(abi::off::ACK_SEQ), ack).unwrap();
            applied_on(&ram, &k).unwrap()
        };
        let list = b"__x64_sys_openat vfs_rea?";
        assert_eq!(
            command(4, 4, 1, list, list.len() as u64),
            Some((vec!["__x64_sys_openat".into(), "vfs_rea?".into()], 1))
        );
        // The probe the host added is not the user's.
        let list = b"vfs_read xftrace_probe";
        assert_eq!(
            command(4, 4, 1, list, list.len() as u64),
            Some((vec!["vfs_read".into()], 1))
        );
        assert_eq!(command(4, 4, 1, b"xftrace_probe", 13), None);
        let list = b"__x64_sys_openat vfs_rea?";
        // Not yet applied, being written, an off, no list, a length past
        // the field, characters no pattern has.
        assert_eq!(command(6, 4, 1, list, list.len() as u64), None);
        assert_eq!(command(5, 5, 1, list, list.len() as u64), None);
        assert_eq!(command(4, 4, 2, list, list.len() as u64), None);
        assert_eq!(command(4, 4, 1, list, 0), None);
        assert_eq!(command(4, 4, 1, list, u64::from(u32::MAX)), None);
        assert_eq!(command(4, 4, 1, b"a -b", 4), None);
        assert_eq!(command(4, 4, 1, b"a\xffb", 4), None);
    }
}
