//! The tracer's own integrity: a rootkit that knows about xftrace will try to
//! blind it. Each of these is a finding, never a silent failure.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::abi::{self, GateState};
use crate::detect::{Finding, FindingKind};
use crate::guest::memory::GuestRam;
use crate::host::statedir::GuestDir;
use crate::kernel::locate::Control;
use crate::trace::keys::Klog;
use crate::trace::probe::Tally;
use crate::trace::status::{CollectorState, CollectorStatus};
use crate::trace::switch::{self, TracerStatus};

use super::{Check, Context, Report};

/// Longer than `on` waits for its collector (20 s) and then for the
/// guest's acknowledgement (20 s).
const SWITCH_ON_WITHIN: Duration = Duration::from_secs(60);

/// What every finding of this check is: it also runs outside the checks
/// ([`check`], for `status`).
const KIND: FindingKind = FindingKind::TracerIntegrity;

pub struct TracerIntegrity;

impl Check for TracerIntegrity {
    fn kind(&self) -> FindingKind {
        KIND
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        // A stock kernel has no tracer to check (it runs no such check:
        // `detect::checks::for_kernel`).
        let Some(k) = cx.view.kernel.tracer.as_ref() else {
            return;
        };
        out.extend(check(cx.view.ram, k, cx.dir, cx.heartbeat));
        let nr_cpu_ids = cx.sym("nr_cpu_ids").and_then(|a| cx.view.read_u32(a));
        out.extend(rings(k, nr_cpu_ids, cx.view.max_vcpus));
    }
}

fn check(
    ram: &GuestRam,
    k: &Control,
    dir: &GuestDir,
    heartbeat: Option<(u64, Instant)>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let gs = match switch::read_status(ram, k) {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                format!("cannot read the control block: {e}"),
                k.ctl.0,
                "",
            ));
            return out;
        }
    };
    reported_by_the_guest(k, &gs, &mut out);
    liveness(ram, k, &gs, heartbeat, &mut out);
    session(ram, k, &gs, dir, &mut out);
    out
}

/// The rings the guest says it has must be one per possible CPU (up to
/// 256, docs/abi.md §2), and its CPUs as many as the kernel counts
/// (`nr_cpu_ids`) and as its manager gave it (`max_vcpus`, where known):
/// a guest that claims fewer has the host read fewer rings, and the
/// events of the other CPUs vanish unseen.
fn rings(k: &Control, nr_cpu_ids: Option<u32>, max_vcpus: Option<u32>) -> Vec<Finding> {
    let h = &k.header;
    let at = k.field(abi::off::NR_RINGS).0;
    let mut out = Vec::new();
    let want = h.nr_cpus.min(abi::MAX_RINGS);
    if h.nr_rings != want {
        out.push(finding(
            format!(
                "the guest claims {} rings for {} CPUs, where it has one per CPU ({want}): the host would read only those",
                h.nr_rings, h.nr_cpus
            ),
            at,
            "control block written by someone other than the guest's xftrace code",
        ));
    }
    // 0: not set (a kernel without the variable's value); a kernel whose
    // nr_cpu_ids really were 0 would not run.
    if let Some(n) = nr_cpu_ids.filter(|&n| n != 0 && n != h.nr_cpus) {
        out.push(finding(
            format!(
                "the control block says the guest has {} CPUs, its kernel counts {n} (nr_cpu_ids)",
                h.nr_cpus
            ),
            at,
            "control block written by someone other than the guest's xftrace code",
        ));
    }
    if let Some(v) = max_vcpus.filter(|&v| h.nr_cpus < v) {
        out.push(finding(
            format!(
                "the guest claims {} CPUs but its domain has up to {v} vCPUs: the events of the others would not be read",
                h.nr_cpus
            ),
            at,
            "unless the guest was booted with nr_cpus= or possible_cpus= below its vCPUs",
        ));
    }
    out
}

/// What the guest's CPUs did in a capture window, for [`probed`].
pub struct Window<'a> {
    /// How long the tracer was on.
    pub length: Duration,
    /// Probe entries and records per ring; None if the build has no probe.
    pub tally: Option<&'a Tally>,
    /// The CPUs with a ring that the guest said were online when the
    /// window opened and when it closed (None: its mask could not be read).
    pub online: Option<BTreeSet<u32>>,
    /// Rings the host read: min(`nr_rings`, `nr_cpus`).
    pub rings: u32,
    /// The control block's address, for the findings.
    pub ctl: u64,
}

/// Shortest window in which every online CPU must have probed: five of
/// the guest's 200 ms probe rounds.
pub const PROBED_WITHIN: Duration = Duration::from_secs(1);

/// A capture in which a CPU that was online throughout recorded no call of
/// the guest's probe (docs/abi.md §3.1) was blinded on that CPU: an idle
/// CPU still probes every 200 ms, so a thin or empty capture of an idle
/// guest is told from one of a tracer that no longer records. And a CPU
/// the guest says was offline throughout yet recorded calls makes its
/// online mask a lie that would excuse it.
pub fn probed(w: &Window) -> Vec<Finding> {
    let mut out = Vec::new();
    if w.length < PROBED_WITHIN {
        return out;
    }
    let Some(tally) = w.tally else {
        out.push(finding(
            format!(
                "the build's System.map has no {}: whether every CPU's tracer recorded cannot be told",
                abi::funcs::PROBE
            ),
            w.ctl,
            "ABI 4 guests call it on every CPU while they capture",
        ));
        return out;
    };
    let online = match &w.online {
        Some(o) => o.clone(),
        None => {
            out.push(finding(
                "the guest's online CPU mask (__cpu_online_mask) cannot be read: every ring is expected to hold probe records",
                w.ctl,
                "",
            ));
            (0..w.rings).collect()
        }
    };
    let silent: Vec<u32> = online
        .iter()
        .copied()
        .filter(|c| *c < w.rings && !tally.probes.contains_key(c))
        .collect();
    if !silent.is_empty() {
        out.push(finding(
            format!(
                "CPU {} recorded no call of {} in {:.1} s of tracing, though online: the tracer is blinded there (every online CPU calls it every 200 ms while the guest captures)",
                list(&silent),
                abi::funcs::PROBE,
                w.length.as_secs_f64()
            ),
            w.ctl,
            format!("probe calls by CPU: {}", tally.summary()),
        ));
    }
    let offline_busy: Vec<u32> = tally
        .records
        .keys()
        .copied()
        .filter(|c| w.online.is_some() && !online.contains(c))
        .collect();
    if !offline_busy.is_empty() {
        out.push(finding(
            format!(
                "CPU {} recorded calls while the guest's online mask said it was offline from the start to the end of the window: the mask lies",
                list(&offline_busy)
            ),
            w.ctl,
            format!("online: {}", list(&online.iter().copied().collect::<Vec<_>>())),
        ));
    }
    out
}

/// `0, 2, 5` (at most 32 named).
fn list(cpus: &[u32]) -> String {
    let mut s = cpus
        .iter()
        .take(32)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if cpus.len() > 32 {
        s.push_str(&format!(" and {} more", cpus.len().saturating_sub(32)));
    }
    s
}

fn finding(detail: impl Into<String>, at: u64, evidence: impl Into<String>) -> Finding {
    Finding::new(KIND, detail, &[at], evidence)
}

/// What the guest itself says thins or corrupts its capture.
fn reported_by_the_guest(k: &Control, gs: &TracerStatus, out: &mut Vec<Finding>) {
    let gate = k.field(abi::off::STATE_NARROWED).0;
    for why in gs.narrowed_reasons() {
        out.push(finding(
            format!("the guest's capture is narrowed: {why}"),
            gate,
            "traced functions may be missing from call-flow checks",
        ));
    }
    if gs.gate == GateState::Invalid {
        out.push(finding(
            "the guest's capture gate holds a value the tracer never writes",
            gate,
            "control block written by someone other than the xftrace thread",
        ));
    }
    if gs.unringed > 0 {
        out.push(finding(
            format!(
                "{} events happened on CPUs that have no ring: those CPUs are not traced",
                gs.unringed
            ),
            k.field(abi::off::UNRINGED).0,
            format!("{} rings for {} CPUs", k.header.nr_rings, k.header.nr_cpus),
        ));
    }
}

/// How long the guest's thread has to beat, from the heartbeat's reading
/// (it beats every 100 ms to 1 s)...
const FIRST_LOOK: Duration = Duration::from_secs(2);
/// ...and, if it did not, how long it is watched before that counts.
const STARVED: Duration = Duration::from_secs(10);

/// The guest thread must beat and answer commands.
fn liveness(
    ram: &GuestRam,
    k: &Control,
    gs: &TracerStatus,
    heartbeat: Option<(u64, Instant)>,
    out: &mut Vec<Finding>,
) {
    let look = |within: Duration| {
        match heartbeat {
            Some((beat, at)) => switch::guest_alive_since(ram, k, beat, at, within),
            None => switch::guest_alive(ram, k, within),
        }
        .unwrap_or(false)
    };
    let mut waited = FIRST_LOOK;
    let mut alive = look(FIRST_LOOK);
    if !alive {
        // A guest that got no host CPU for a while (an overloaded host;
        // in CI, a TCG guest beside others: 2 s happened) beats late; a
        // stopped thread never does. Watched longer before it counts.
        let more = crate::base::settle::patience(STARVED);
        if !more.is_zero() {
            waited = more;
            alive = look(more);
        }
    }
    if !alive {
        out.push(finding(
            format!(
                "the xftrace kernel thread's heartbeat did not advance in {} s (thread stopped, or the VM paused)",
                waited.as_secs()
            ),
            k.field(abi::off::HEARTBEAT).0,
            format!("heartbeat {}", gs.heartbeat),
        ));
    } else if gs.cmd_seq != gs.ack_seq {
        // The thread runs but may simply not have polled yet: look again.
        crate::base::settle::settle(Duration::from_millis(300));
        if let Ok(again) = switch::read_status(ram, k) {
            if again.cmd_seq != again.ack_seq && again.cmd_seq == gs.cmd_seq {
                out.push(finding(
                    format!(
                        "command {} was not acknowledged (last acknowledged {})",
                        again.cmd_seq, again.ack_seq
                    ),
                    k.field(abi::off::CMD_SEQ).0,
                    "",
                ));
            }
        }
    }
}

/// A session the host runs: the guest must trace with the host's key, and
/// what the collector read must have passed its checks.
fn session(ram: &GuestRam, k: &Control, gs: &TracerStatus, dir: &GuestDir, out: &mut Vec<Finding>) {
    let running = dir.collector_running().unwrap_or(false);
    let status = CollectorStatus::read(dir);
    if let (true, Some(s)) = (running, &status) {
        // `on` switches the tracer on only once its collector reads: a
        // session whose tracer was never seen on is judged only after `on`
        // would have given up on the guest.
        let age = crate::host::statedir::now_unix() - s.started;
        if s.state == CollectorState::Collecting && !gs.tracing {
            if s.guest_tracing {
                out.push(finding(
                    "the host is collecting but the guest's tracer is off: switched off behind the host's back",
                    k.field(abi::off::ACK_RESULT_TRACING).0,
                    "",
                ));
            } else if age > SWITCH_ON_WITHIN.as_secs_f64() {
                out.push(finding(
                    format!(
                        "the host has been collecting for {age:.0} s but the guest's tracer was never on"
                    ),
                    k.field(abi::off::ACK_RESULT_TRACING).0,
                    "",
                ));
            }
        }
        if let Ok(klog) = Klog::load_tail(&dir.klog()) {
            key_matches(ram, k, &klog, out);
        }
    }
    if !running && gs.tracing {
        // A collector that died, a host reboot, a restore or a migration
        // that brought the tracer along: the guest pays for a trace no one
        // reads, under a key no one rotates.
        out.push(finding(
            match status.as_ref().map(|s| s.state) {
                Some(CollectorState::Collecting | CollectorState::Starting) => {
                    "the guest's tracer is on and its collector died: `xftrace on` adopts it, `xftrace off` writes what was collected"
                }
                _ => "the guest's tracer is on and no collector of this host reads it: `xftrace on` adopts it, `xftrace off` stops it",
            },
            k.field(abi::off::ACK_RESULT_TRACING).0,
            format!("key epoch {}", gs.key_epoch),
        ));
    }
    if let Some(s) = status.filter(|s| s.rings.integrity_failures() > 0) {
        let r = &s.rings;
        out.push(Finding::new(
            KIND,
            format!(
                "records failed integrity checks: {} erased or rewritten, {} failed their check (forged or stale key), {} with an epoch the host never issued, {} under a key the guest should no longer have, {} going back to an older key, {} impossible, {} ring rewinds, {} rings moved",
                r.erased,
                r.bad_check,
                r.unknown_epoch,
                r.stale_epoch,
                r.epoch_backwards,
                r.bad_record,
                r.rewound,
                r.ring_moved
            ),
            &[],
            format!("session {}, see {}", s.state, dir.anomalies().display()),
        ));
    }
}

/// The key in guest RAM must be the one the host wrote for that epoch.
fn key_matches(ram: &GuestRam, k: &Control, klog: &Klog, out: &mut Vec<Finding>) {
    for _ in 0..5 {
        let Ok(epoch) = ram.read_u64(k.field(abi::off::CUR_EPOCH)) else {
            return;
        };
        let slot = abi::key_slot(epoch);
        let (Ok(e1), Ok(key), Ok(e2)) = (
            ram.read_u64(k.field(slot)),
            ram.read_u64(k.field(slot | 8)),
            ram.read_u64(k.field(slot)),
        ) else {
            return;
        };
        if e1 != epoch || e2 != epoch {
            // The host is rotating right now; look again.
            crate::base::settle::settle(Duration::from_millis(50));
            continue;
        }
        match klog.key(epoch) {
            Some(want) if want == key => {}
            Some(_) => out.push(Finding::new(
                KIND,
                format!("the key of epoch {epoch} in guest memory is not the one the host wrote"),
                &[k.field(slot | 8).0],
                "key rewritten in the guest",
            )),
            None => {
                // Written after we loaded Klog? Then it is a newer epoch.
                if epoch > klog.max_epoch().saturating_add(1) {
                    out.push(Finding::new(
                        KIND,
                        format!("guest key epoch {epoch} was never issued by the host"),
                        &[k.field(abi::off::CUR_EPOCH).0],
                        "",
                    ));
                }
            }
        }
        return;
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::locate::locate;
    use crate::testkit::synthetic::synthetic_guest;

    /// Thin or empty captures: an online CPU without probe records is
    /// blinded whatever the load; an offline one is not asked; one that
    /// says it is offline but records is lying; a short window or a
    /// missing mask are said, not guessed at.
    #[test]
    fn every_online_cpu_must_probe_in_a_window() {
        let tally = |probes: &[(u32, u64)], records: &[(u32, u64)]| Tally {
            probes: probes.iter().copied().collect(),
            records: records.iter().copied().collect(),
        };
        let w = |t: &'static Tally, online: Option<&[u32]>, secs: u64| Window {
            length: Duration::from_secs(secs),
            tally: Some(t),
            online: online.map(|o| o.iter().copied().collect()),
            rings: 4,
            ctl: 0x1000,
        };
        let leak = |t: Tally| -> &'static Tally { Box::leak(Box::new(t)) };
        // An idle guest: nothing but probes, on every online CPU.
        let idle = leak(tally(&[(0, 5), (1, 5)], &[(0, 10), (1, 10)]));
        assert!(probed(&w(idle, Some(&[0, 1]), 1)).is_empty());
        // Empty: the tracer recorded nothing at all.
        let empty = leak(tally(&[], &[]));
        let f = probed(&w(empty, Some(&[0, 1]), 3));
        assert!(
            f.len() == 1
                && f[0]
                    .detail
                    .starts_with("CPU 0, 1 recorded no call of xftrace_probe"),
            "{f:#?}"
        );
        // Thin: CPU 1 blinded, CPU 0 busy; CPU 2 (offline) asked nothing.
        let thin = leak(tally(&[(0, 9)], &[(0, 4000)]));
        let f = probed(&w(thin, Some(&[0, 1]), 3));
        assert!(
            f.len() == 1 && f[0].detail.starts_with("CPU 1 recorded"),
            "{f:#?}"
        );
        // A CPU with records that its mask calls offline.
        let liar = leak(tally(&[(0, 9)], &[(0, 40), (3, 500)]));
        let f = probed(&w(liar, Some(&[0]), 3));
        assert!(
            f.len() == 1 && f[0].detail.contains("CPU 3 recorded calls while"),
            "{f:#?}"
        );
        // Too short a window to judge.
        assert!(probed(&w(empty, Some(&[0, 1]), 0)).is_empty());
        // No mask: every ring is asked, and that is said.
        let f = probed(&w(idle, None, 2));
        assert!(
            f.len() == 2
                && f[0].detail.contains("cannot be read")
                && f[1].detail.starts_with("CPU 2, 3 recorded no call"),
            "{f:#?}"
        );
        // A build without the probe: said.
        let f = probed(&Window {
            tally: None,
            ..w(idle, Some(&[0]), 2)
        });
        assert!(
            f.len() == 1 && f[0].detail.contains("has no xftrace_probe"),
            "{f:#?}"
        );
    }

    /// A guest that lowers its ring count (or its CPU count) to hide the
    /// events of its other CPUs is caught by the ABI's own rule, by the
    /// kernel's `nr_cpu_ids` and by the vCPUs its manager gave it.
    #[test]
    fn fewer_rings_than_cpus_is_a_finding() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let mut k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        k.header.nr_cpus = 4;
        k.header.nr_rings = 4;
        assert!(rings(&k, Some(4), Some(4)).is_empty());
        assert!(rings(&k, None, None).is_empty());
        // 300 CPUs have 256 rings.
        k.header.nr_cpus = 300;
        k.header.nr_rings = 256;
        assert!(rings(&k, Some(300), Some(300)).is_empty());
        // One ring for four CPUs.
        k.header.nr_cpus = 4;
        k.header.nr_rings = 1;
        let f = rings(&k, Some(4), Some(4));
        assert!(
            f.len() == 1 && f[0].detail.contains("claims 1 rings for 4 CPUs"),
            "{f:#?}"
        );
        // Both lowered to one: the kernel and the domain disagree.
        k.header.nr_cpus = 1;
        let f = rings(&k, Some(4), Some(4));
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f[0].detail.contains("its kernel counts 4"));
        assert!(f[1].detail.contains("up to 4 vCPUs"));
    }
}
