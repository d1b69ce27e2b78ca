//! Events from the guest kernel's own log: an Oops, a BUG, a warning, a
//! lockup, a stall or a panic, as `watch` reports them while it follows
//! the log ([`crate::kernel::printk`]) a few times a second.
//!
//! A rootkit that gets something wrong crashes a kernel thread or warns
//! before it is found any other way, and an exploit that fails leaves an
//! Oops: either is worth a look by the operator, with the lines the
//! kernel wrote about it. The log is the guest's to write (a guest can
//! print a fake Oops, or flood its log), so what is reported is bounded
//! (lines per event, events per minute) and escaped, and is evidence of
//! what the kernel said, nothing more.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::kernel::printk::LogRecord;

use super::{Finding, FindingKind};

/// Lines of the log before the first line of an event that it carries.
const BEFORE: usize = 2;
/// Lines an event carries at most.
const MAX_LINES: usize = 40;
/// Bytes of one line an event carries at most (escaped).
const MAX_LINE: usize = 300;
/// How long an event waits for the kernel to finish writing it (its
/// `---[ end trace` line) before it is reported as far as it goes.
pub const SETTLE: Duration = Duration::from_millis(400);
/// Events reported per minute at most; the rest are counted.
const PER_MINUTE: u32 = 20;

/// What the kernel's line says happened, by the words it starts with
/// (Linux 6.1: `die()`, `__warn()`, `panic()`, `BUG()`, the lockup and
/// hung-task detectors, RCU's stall warnings).
pub fn classify(text: &[u8]) -> Option<&'static str> {
    let t = String::from_utf8_lossy(text);
    let t = t.trim_start();
    let has = |w: &str| t.contains(w);
    if t.starts_with("Kernel panic - not syncing") {
        Some("panic")
    } else if t.starts_with("Oops") || t.starts_with("general protection fault") {
        Some("Oops")
    } else if t.starts_with("kernel BUG at") || t.starts_with("BUG: ") {
        Some("BUG")
    } else if has("BUG: soft lockup") || t.starts_with("Watchdog detected hard LOCKUP") {
        Some("lockup")
    } else if t.starts_with("WARNING: ") {
        Some("warning")
    } else if t.starts_with("INFO: task ") && has("blocked for more than") {
        Some("hung task")
    } else if has("rcu: INFO:") || t.starts_with("INFO: rcu") {
        Some("RCU stall")
    } else {
        None
    }
}

/// The line the kernel ends an Oops or a warning with.
fn ends(text: &[u8]) -> bool {
    let t = String::from_utf8_lossy(text);
    t.starts_with("---[ end ")
}

/// An event being written.
#[derive(Debug)]
struct Open {
    what: &'static str,
    headline: String,
    lines: Vec<String>,
    first_seen: Instant,
    ended: bool,
}

/// One event of the guest kernel's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `Oops`, `BUG`, `warning`, `panic`, `lockup`, `hung task`, `RCU stall`.
    pub what: &'static str,
    /// Its first line (escaped).
    pub headline: String,
    /// The lines about it, from a little before (escaped, as `dmesg` prints them).
    pub lines: Vec<String>,
    /// Events not reported before this one (over the rate limit).
    pub suppressed: u64,
}

impl Event {
    pub fn finding(&self) -> Finding {
        let mut evidence = self.lines.join("\n");
        if self.suppressed > 0 {
            evidence.push_str(&format!(
                "\n({} earlier events not reported: more than {PER_MINUTE} a minute)",
                self.suppressed
            ));
        }
        Finding::new(
            FindingKind::KernelLog,
            format!(
                "the guest kernel logged {}: {}",
                match self.what {
                    "Oops" => "an Oops",
                    "BUG" => "a BUG",
                    "warning" => "a warning",
                    "panic" => "a panic",
                    "lockup" => "a lockup",
                    "hung task" => "a hung task",
                    _ => "an RCU stall",
                },
                self.headline
            ),
            &[],
            evidence,
        )
    }
}

/// Follows one guest's log across reads (and its reboots).
#[derive(Debug, Default)]
pub struct Follower {
    /// The newest record read, and the boot it was read in.
    last: Option<(u64, u64)>,
    /// The last lines read, for an event's context.
    recent: VecDeque<String>,
    open: Option<Open>,
    /// Rate limit: the minute's start, events reported in it, and events
    /// not reported since the last one that was.
    minute: Option<Instant>,
    in_minute: u32,
    suppressed: u64,
}

fn line(r: &LogRecord) -> String {
    let mut l = r.line();
    if l.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !l.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        l.truncate(cut);
        l.push_str("...");
    }
    l
}

impl Follower {
    /// Read the log `records` (oldest first) of boot `boot` (any number
    /// that changes when the guest's kernel does); returns the events
    /// ready by `now`. The first read of a watch takes what is there as
    /// history (the taint flags say whether the guest ever oopsed); a new
    /// boot's log is read from its start.
    pub fn feed(&mut self, boot: u64, records: &[LogRecord], now: Instant) -> Vec<Event> {
        let newest = records.last().map(|r| r.seq);
        let from = match self.last {
            None => {
                self.last = Some((boot, newest.unwrap_or(0)));
                // History: only its last lines, for context.
                for r in records.iter().rev().take(BEFORE).rev() {
                    self.recent.push_back(line(r));
                }
                return Vec::new();
            }
            Some((b, seq)) if b == boot && newest.is_some_and(|n| n >= seq) => Some(seq),
            Some((b, _)) if b == boot && newest.is_none() => return self.due(now),
            // A new boot (or a log that went backwards: the same).
            _ => {
                self.recent.clear();
                self.open = None;
                None
            }
        };
        let mut out = Vec::new();
        for r in records {
            if from.is_some_and(|f| r.seq <= f) {
                continue;
            }
            let l = line(r);
            match (classify(&r.text), &mut self.open) {
                (_, Some(o)) if !o.ended => {
                    if o.lines.len() < MAX_LINES {
                        o.lines.push(l.clone());
                    }
                    if ends(&r.text) {
                        o.ended = true;
                    }
                }
                (Some(what), _) => {
                    if let Some(e) = self.close() {
                        out.extend(e);
                    }
                    let mut lines: Vec<String> = self.recent.iter().cloned().collect();
                    lines.push(l.clone());
                    self.open = Some(Open {
                        what,
                        headline: crate::base::escape::escape_bytes(&r.text)
                            .chars()
                            .take(MAX_LINE)
                            .collect(),
                        lines,
                        first_seen: now,
                        ended: false,
                    });
                }
                (None, _) => {}
            }
            self.recent.push_back(l);
            while self.recent.len() > BEFORE {
                self.recent.pop_front();
            }
        }
        if let Some(n) = newest {
            self.last = Some((boot, n));
        }
        out.extend(self.due(now));
        out
    }

    /// The open event if it is finished (or waited long enough).
    pub fn due(&mut self, now: Instant) -> Vec<Event> {
        let ready = self.open.as_ref().is_some_and(|o| {
            o.ended
                || o.lines.len() >= MAX_LINES
                || now.saturating_duration_since(o.first_seen) >= SETTLE
        });
        if ready {
            self.close().into_iter().flatten().collect()
        } else {
            Vec::new()
        }
    }

    /// Close the open event: reported, or counted over the rate limit.
    fn close(&mut self) -> Option<Option<Event>> {
        let o = self.open.take()?;
        let now = o.first_seen;
        match self.minute {
            Some(m) if now.saturating_duration_since(m) < Duration::from_secs(60) => {}
            _ => {
                self.minute = Some(now);
                self.in_minute = 0;
            }
        }
        if self.in_minute >= PER_MINUTE {
            self.suppressed = self.suppressed.saturating_add(1);
            return Some(None);
        }
        self.in_minute = self.in_minute.saturating_add(1);
        let e = Event {
            what: o.what,
            headline: o.headline,
            lines: o.lines,
            suppressed: std::mem::take(&mut self.suppressed),
        };
        Some(Some(e))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn rec(seq: u64, text: &str) -> LogRecord {
        LogRecord {
            seq,
            ts_nsec: seq * 1_000_000,
            level: 4,
            text: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_kernels_words_name_what_happened() {
        for (t, want) in [
            ("BUG: kernel NULL pointer dereference, address: 0000000000000000", Some("BUG")),
            ("Oops: 0002 [#1] PREEMPT SMP NOPTI", Some("Oops")),
            ("general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP", Some("Oops")),
            ("kernel BUG at drivers/x.c:12!", Some("BUG")),
            ("WARNING: CPU: 0 PID: 17 at rk.c:30 work+0x5/0x10 [rk_oops]", Some("warning")),
            ("Kernel panic - not syncing: Fatal exception", Some("panic")),
            ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [x:1]", Some("lockup")),
            ("INFO: task sh:88 blocked for more than 120 seconds.", Some("hung task")),
            ("rcu: INFO: rcu_preempt self-detected stall on CPU", Some("RCU stall")),
            ("Bluetooth: BNEP (Ethernet Emulation) ver 1.3", None),
            ("a WARNING: in the middle", None),
        ] {
            assert_eq!(classify(t.as_bytes()), want, "{t}");
        }
    }

    /// An Oops being written is held until its end line, with the lines
    /// before it; the history a watch starts on is not reported; a new
    /// boot's log is read from its start.
    #[test]
    fn an_oops_is_one_event_with_its_lines() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        let mut log = vec![rec(1, "booted"), rec(2, "WARNING: CPU: 0 PID: 1 at old")];
        assert_eq!(f.feed(7, &log, t0), vec![]);
        log.extend([
            rec(3, "rk_oops: loaded"),
            rec(
                4,
                "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            ),
            rec(5, "#PF: supervisor write access in kernel mode"),
            rec(6, "Oops: 0002 [#1] PREEMPT SMP NOPTI"),
        ]);
        assert_eq!(f.feed(7, &log, t0), vec![], "still being written");
        log.extend([
            rec(7, "RIP: 0010:work+0x5/0x10 [rk_oops]"),
            rec(8, "---[ end trace 0000000000000000 ]---"),
            rec(9, "after"),
        ]);
        let e = f.feed(7, &log, t0 + Duration::from_millis(100));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].what, "BUG");
        assert_eq!(e[0].lines.len(), 7, "{:#?}", e[0].lines);
        assert!(e[0].lines[0].ends_with("WARNING: CPU: 0 PID: 1 at old"));
        assert!(e[0].lines[6].ends_with("---[ end trace 0000000000000000 ]---"));
        let fi = e[0].finding();
        assert_eq!(fi.kind, FindingKind::KernelLog);
        assert!(
            fi.detail
                .starts_with("the guest kernel logged a BUG: BUG: kernel NULL pointer"),
            "{}",
            fi.detail
        );
        // Reading the same log again reports nothing.
        assert_eq!(f.feed(7, &log, t0 + Duration::from_secs(1)), vec![]);
        // A warning whose end never comes is reported after SETTLE.
        log.push(rec(10, "WARNING: CPU: 1 PID: 3 at x"));
        assert_eq!(f.feed(7, &log, t0 + Duration::from_secs(2)), vec![]);
        let e = f.due(t0 + Duration::from_secs(2) + SETTLE);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].what, "warning");
        // A new boot: its log from the start.
        let e = f.feed(
            8,
            &[
                rec(0, "Kernel panic - not syncing: x"),
                rec(1, "---[ end Kernel panic - not syncing: x ]---"),
            ],
            t0,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].what, "panic");
    }

    /// A guest that floods its log with warnings gets PER_MINUTE events a
    /// minute reported, the rest counted; lines are bounded and escaped.
    #[test]
    fn a_flood_is_bounded() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.feed(1, &[], t0);
        let long = format!("WARNING: \x1b[31m{}", "x".repeat(1000));
        let log: Vec<LogRecord> = (1..=2000)
            .map(|i| {
                if i % 2 == 1 {
                    rec(i, &long)
                } else {
                    rec(i, "---[ end trace 0 ]---")
                }
            })
            .collect();
        let e = f.feed(1, &log, t0);
        assert_eq!(e.len(), PER_MINUTE as usize);
        assert!(e.iter().all(|e| e
            .lines
            .iter()
            .all(|l| l.len() <= MAX_LINE + 3 && !l.contains('\x1b'))));
        log::trace!("{:?}", e[0].lines);
        let more = vec![
            rec(3000, "WARNING: later"),
            rec(3001, "---[ end trace 0 ]---"),
        ];
        let mut all = log.clone();
        all.extend(more);
        let e = f.feed(1, &all, t0 + Duration::from_secs(61));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].suppressed, 1000 - u64::from(PER_MINUTE));
        assert!(e[0]
            .finding()
            .evidence
            .contains("earlier events not reported"));
    }
}
