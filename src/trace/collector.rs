//! The collector (`xftrace collect`, started by `on`): rotates the key,
//! reads the rings into the spool and keeps the session's status, until
//! SIGTERM (or SIGINT, SIGHUP), the guest's RAM file disappears, or an
//! error.

use std::fs::File;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::base::error::Result;
use crate::base::escape::escape;
use crate::host::process::ProcessId;
use crate::host::signals;
use crate::host::statedir::{now_unix, GuestDir};
use crate::kernel::guest::Guest;
use crate::kernel::locate::Control;
use crate::kernel::target::Target;
use crate::trace::anomalies::AnomalyLog;
use crate::trace::keys::KeyController;
use crate::trace::rings::{Anomaly, RingReader};
use crate::trace::session::CollectOptions;
use crate::trace::spool::SpoolWriter;
use crate::trace::status::{CollectorState, CollectorStatus};
use crate::trace::switch;

/// A heartbeat unchanged this long while the VM should run is reported.
const HEARTBEAT_STALL: Duration = Duration::from_secs(5);
/// How often the status file is brought up to date.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Integrity failures logged one by one before only anomalies.log has them.
const LOGGED_ANOMALIES: u64 = 20;

/// `xftrace collect`: `lock` is the guest's lock, inherited from `on`;
/// `text_pa`, where `on` found the kernel.
pub fn run(
    target: &Target,
    lock: File,
    functions: &[String],
    opts: CollectOptions,
    text_pa: Option<u64>,
    gaps: &[String],
) -> Result<()> {
    let dir = target.dir()?;
    let mut status = CollectorStatus {
        gaps: gaps.to_vec(),
        process: ProcessId::own(),
        target: target.describe(),
        functions: functions.to_vec(),
        started: now_unix(),
        updated: now_unix(),
        spool_limit: opts.spool_limit,
        ..Default::default()
    };
    let result =
        Collector::start(target, &dir, &mut status, opts, text_pa).and_then(|c| c.run(&mut status));
    if let Err(e) = &result {
        error!("collector failed: {e}");
        status.state = CollectorState::Failed;
        status.message = e.to_string();
    }
    status.updated = now_unix();
    status.write(&dir)?;
    drop(lock);
    result
}

struct Collector<'a> {
    g: Guest,
    /// The guest kernel's control block (a collector runs only where there is one).
    ctl: Control,
    dir: &'a GuestDir,
    opts: CollectOptions,
    keys: KeyController,
    reader: RingReader,
    spool: SpoolWriter,
    anomalies: AnomalyLog,
    logged: u64,
    last_rotation: Instant,
    last_report: Instant,
    /// The last heartbeat value and when it changed.
    heartbeat: (u64, Instant),
}

impl<'a> Collector<'a> {
    fn start(
        target: &Target,
        dir: &'a GuestDir,
        status: &mut CollectorStatus,
        opts: CollectOptions,
        text_pa: Option<u64>,
    ) -> Result<Self> {
        signals::catch_stops()?;
        let g = match text_pa {
            Some(pa) => target.open_at(pa)?,
            None => target.open()?,
        };
        let ctl = g.kernel.control()?.clone();
        status.slide = g.kernel.slide;
        status.nr_cpus = ctl.header.nr_cpus;
        status.banner = escape(&g.kernel.banner).into_owned();
        status.system_map = g.system_map.display().to_string();
        status.probe = ctl.module.map(|m| m.probe);

        let mut keys = KeyController::new(&g.ram, &ctl, &dir.klog())?;
        let mut reader = RingReader::start(&g.ram, &ctl)?;
        let first = keys.rotate(&g.ram, &ctl)?;
        reader.note_rotation(&g.ram, &ctl, first)?;
        status.key_rotations = 1;
        let spool = SpoolWriter::create(dir.path(), ctl.header.nr_rings, opts.spool_limit)?;
        let anomalies =
            AnomalyLog::create(dir.anomalies(), dir.anomalies_rotated(), Instant::now())?;
        status.state = CollectorState::Collecting;
        status.key_epoch = keys.epoch();
        status.write(dir)?;
        info!(
            "collecting from {} with key epoch {}",
            target.describe(),
            keys.epoch()
        );
        let heartbeat = (
            g.ram.read_u64(ctl.field(crate::abi::off::HEARTBEAT))?,
            Instant::now(),
        );
        Ok(Collector {
            g,
            ctl,
            dir,
            opts,
            keys,
            reader,
            spool,
            anomalies,
            logged: 0,
            last_rotation: Instant::now(),
            last_report: Instant::now(),
            heartbeat,
        })
    }

    fn run(mut self, status: &mut CollectorStatus) -> Result<()> {
        let mut polled = Instant::now();
        loop {
            let stopping = signals::caught().is_some();
            let gone = self.g.ram.unlinked();
            self.drain()?;
            if gone {
                status.state = CollectorState::GuestGone;
                status.message =
                    "the guest's RAM file was removed (the VM stopped); trace kept up to that point"
                        .into();
                warn!("{}", status.message);
            }
            if stopping || gone || self.last_report.elapsed() >= REPORT_EVERY {
                self.report(status)?;
            }
            if stopping || gone {
                break;
            }
            if self.last_rotation.elapsed() >= self.opts.key_interval {
                let e = self.keys.rotate(&self.g.ram, &self.ctl)?;
                self.reader.note_rotation(&self.g.ram, &self.ctl, e)?;
                status.key_rotations = status.key_rotations.saturating_add(1);
                self.last_rotation = Instant::now();
            }
            // Come back before the busiest ring can fill to a quarter at the
            // rate it filled since the last poll (at once if it did), and
            // at least every poll interval.
            let since = polled.elapsed();
            polled = Instant::now();
            let sleep = next_poll(
                self.reader.busiest,
                self.reader.slots(),
                since,
                self.opts.poll_interval,
            );
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
        }
        // The session's records are all read: now wait for the disk.
        self.spool.sync()?;
        if status.state == CollectorState::Collecting {
            status.state = CollectorState::Stopped;
        }
        self.anomalies.summarize(Instant::now(), now_unix());
        let stats = &self.reader.stats;
        info!(
            "collector done: {} records, {} lost, {} integrity failures",
            stats.records,
            stats.missing(),
            stats.integrity_failures()
        );
        Ok(())
    }

    /// Read what the rings hold into the spool; anomalies to their log.
    fn drain(&mut self) -> Result<()> {
        let mut write_err = None;
        let mut over_limit = 0u64;
        let (spool, anomalies, logged, dir) = (
            &mut self.spool,
            &mut self.anomalies,
            &mut self.logged,
            self.dir,
        );
        self.reader.poll(
            &self.g.ram,
            &self.ctl,
            self.keys.klog(),
            |r| match spool.push(&r) {
                Ok(true) => {}
                Ok(false) => over_limit = over_limit.saturating_add(1),
                Err(e) => {
                    write_err.get_or_insert(e);
                }
            },
            |a| note_anomaly(anomalies, logged, dir, &a),
        )?;
        if let Some(e) = write_err {
            return Err(e);
        }
        if over_limit > 0 && self.reader.stats.over_limit == 0 {
            warn!(
                "the record spool reached its limit of {} bytes: further records are counted as lost",
                self.opts.spool_limit
            );
        }
        self.reader.stats.over_limit = self.reader.stats.over_limit.saturating_add(over_limit);
        Ok(())
    }

    /// Bring the status file up to date with the rings and the guest.
    fn report(&mut self, status: &mut CollectorStatus) -> Result<()> {
        let gs = switch::read_status(&self.g.ram, &self.ctl)?;
        if gs.heartbeat != self.heartbeat.0 {
            self.heartbeat = (gs.heartbeat, Instant::now());
            status.heartbeat_stalled = false;
        } else if self.heartbeat.1.elapsed() >= HEARTBEAT_STALL && !status.heartbeat_stalled {
            status.heartbeat_stalled = true;
            warn!(
                "the guest's xftrace heartbeat has not advanced for {} s",
                HEARTBEAT_STALL.as_secs()
            );
        }
        status.guest_tracing |= gs.tracing;
        for why in gs.narrowed_reasons() {
            if !status.narrowed.iter().any(|w| w == why) {
                warn!("the guest narrowed the capture: {why}");
                status.narrowed.push(why.to_string());
            }
        }
        status.rings = self.reader.stats.clone();
        status.guest_dropped = gs
            .dropped
            .saturating_add(gs.unringed)
            .saturating_add(gs.nested);
        status.key_epoch = self.keys.epoch();
        status.updated = now_unix();
        self.spool.flush()?;
        self.anomalies.flush();
        status.write(self.dir)?;
        self.last_report = Instant::now();
        Ok(())
    }
}

/// How long to sleep before the next poll: the time the busiest ring took
/// to bring in `busiest` records since the last poll (`since`), scaled to a
/// quarter of a ring, at most `max`.
fn next_poll(busiest: u64, slots: u64, since: Duration, max: Duration) -> Duration {
    if busiest == 0 {
        return max;
    }
    let quarter = slots / 4;
    if busiest >= quarter {
        return Duration::ZERO;
    }
    // since × quarter / busiest, in nanoseconds (bounded by max anyway).
    let nanos = since.as_nanos().saturating_mul(u128::from(quarter)) / u128::from(busiest);
    max.min(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// Every anomaly goes to anomalies.log (within its bounds); the
/// collector's log gets the first few.
fn note_anomaly(anomalies: &mut AnomalyLog, logged: &mut u64, dir: &GuestDir, a: &Anomaly) {
    *logged = logged.saturating_add(1);
    if *logged <= LOGGED_ANOMALIES {
        warn!("integrity: {a}");
    } else if *logged == LOGGED_ANOMALIES.saturating_add(1) {
        warn!("more integrity failures: see {}", dir.anomalies().display());
    }
    anomalies.note(a, Instant::now(), now_unix());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_come_before_the_busiest_ring_is_a_quarter_full() {
        let ms = Duration::from_millis;
        // Idle rings: the poll interval.
        assert_eq!(next_poll(0, 16384, ms(10), ms(10)), ms(10));
        // 1024 records in 10 ms: a quarter (4096) takes 40 ms; capped.
        assert_eq!(next_poll(1024, 16384, ms(10), ms(10)), ms(10));
        // 2048 in 1 ms: a quarter in 2 ms.
        assert_eq!(next_poll(2048, 16384, ms(1), ms(10)), ms(2));
        // A quarter or more since the last poll: at once.
        assert_eq!(next_poll(4096, 16384, ms(1), ms(10)), Duration::ZERO);
        // Hostile heads cannot overflow it.
        assert_eq!(next_poll(1, u64::MAX, Duration::MAX, ms(10)), ms(10));
    }
}
