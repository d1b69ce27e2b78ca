//! `anomalies.log`: the records and ring heads that failed the host's
//! checks, one line each, within a bound on disk whatever the guest does.
//!
//! A guest that bumps its ring heads by a ring's worth every poll makes
//! hundreds of thousands of anomalies a second. The log writes at most
//! [`LINES_PER_SECOND`] of them one by one (a token bucket of one second's
//! worth), counts the rest by kind into one summary line at most every
//! [`SUMMARY_EVERY`], and rotates to `anomalies.log.1` past [`MAX_FILE`]
//! bytes. The counts by kind in the collector's status are exact whatever
//! the log left out.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::base::error::Result;
use crate::host::files;
use crate::trace::rings::Anomaly;

/// Anomalies written one by one per second, at most.
pub const LINES_PER_SECOND: u64 = 20;
/// How often the count of what was not written one by one is written.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Bytes of one file before it rotates; two files at most are kept.
pub const MAX_FILE: u64 = 8 << 20;
/// The longest line (a line is cut there): anomalies print numbers only.
pub const MAX_LINE: usize = 320;

/// Bytes written in an hour, at most: every line one by one the bucket
/// allows (an hour's refill and a full bucket), and a summary per
/// [`SUMMARY_EVERY`] (and one more at the end), each at most [`MAX_LINE`]
/// bytes.
pub const MAX_BYTES_PER_HOUR: u64 = (LINES_PER_SECOND * 3601 + 3600 / 10 + 1) * MAX_LINE as u64;

pub struct AnomalyLog {
    path: PathBuf,
    rotated: PathBuf,
    file: Option<BufWriter<File>>,
    /// Bytes in the current file.
    size: u64,
    /// Bytes written since the log was opened.
    pub written: u64,
    /// Lines the bucket still allows, and when it was last refilled.
    tokens: u64,
    refilled: Instant,
    /// What was not written one by one since the last summary, by kind.
    held_back: BTreeMap<&'static str, u64>,
    summarized: Instant,
    /// A write failed (disk full): said once in the log.
    failed: bool,
}

impl AnomalyLog {
    /// A new, empty log at `path` (a previous one and its rotation are
    /// replaced), private to root.
    pub fn create(path: PathBuf, rotated: PathBuf, now: Instant) -> Result<Self> {
        files::remove_if_present(&rotated)?;
        let file = files::replace_private(&path)?;
        Ok(AnomalyLog {
            path,
            rotated,
            file: Some(BufWriter::new(file)),
            size: 0,
            written: 0,
            tokens: LINES_PER_SECOND,
            refilled: now,
            held_back: BTreeMap::new(),
            summarized: now,
            failed: false,
        })
    }

    /// Note anomaly `a`, seen at `now` (wall time `unix` for the line).
    pub fn note(&mut self, a: &Anomaly, now: Instant, unix: f64) {
        self.refill(now);
        if let Some(left) = self.tokens.checked_sub(1) {
            self.tokens = left;
            self.line(format!("{unix:.3} {a}"));
        } else {
            let n = self.held_back.entry(a.kind()).or_insert(0);
            *n = n.saturating_add(1);
        }
        if now.saturating_duration_since(self.summarized) >= SUMMARY_EVERY {
            self.summarize(now, unix);
        }
    }

    /// Write the count of what was held back, if anything was, and flush.
    pub fn summarize(&mut self, now: Instant, unix: f64) {
        if !self.held_back.is_empty() {
            let total = self
                .held_back
                .values()
                .fold(0u64, |t, &n| t.saturating_add(n));
            let kinds: Vec<String> = self
                .held_back
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let secs = now.saturating_duration_since(self.summarized).as_secs();
            self.line(format!(
                "{unix:.3} {total} more anomalies in the last {secs} s, not written one by one (at most {LINES_PER_SECOND} a second): {}",
                kinds.join(", ")
            ));
            self.held_back.clear();
        }
        self.summarized = now;
        self.flush();
    }

    /// Push buffered lines to the file.
    pub fn flush(&mut self) {
        if let Some(Err(e)) = self.file.as_mut().map(|f| f.flush()) {
            self.failed_once(&e);
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.refilled).as_secs();
        if secs > 0 {
            self.tokens = self
                .tokens
                .saturating_add(secs.saturating_mul(LINES_PER_SECOND))
                .min(LINES_PER_SECOND);
            self.refilled = self
                .refilled
                .checked_add(Duration::from_secs(secs))
                .unwrap_or(now);
        }
    }

    fn line(&mut self, mut text: String) {
        if text.len() >= MAX_LINE {
            let mut cut = MAX_LINE.saturating_sub(1);
            while !text.is_char_boundary(cut) {
                cut = cut.saturating_sub(1);
            }
            text.truncate(cut);
        }
        text.push('\n');
        let len = text.len() as u64;
        if self.size.saturating_add(len) > MAX_FILE {
            self.rotate();
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        match f.write_all(text.as_bytes()) {
            Ok(()) => {
                self.size = self.size.saturating_add(len);
                self.written = self.written.saturating_add(len);
            }
            Err(e) => self.failed_once(&e),
        }
    }

    /// The full file becomes `anomalies.log.1` (the one before is dropped)
    /// and a new one starts.
    fn rotate(&mut self) {
        self.flush();
        self.file = None;
        let fresh = std::fs::rename(&self.path, &self.rotated)
            .map_err(|e| crate::base::error::Error::io("cannot rotate the anomalies log", e))
            .and_then(|()| files::create_new_private(&self.path));
        match fresh {
            Ok(f) => {
                self.file = Some(BufWriter::new(f));
                self.size = 0;
            }
            Err(e) => {
                if !self.failed {
                    log::warn!(
                        "{}: {e}; anomalies are only counted now",
                        self.path.display()
                    );
                    self.failed = true;
                }
            }
        }
    }

    fn failed_once(&mut self, e: &std::io::Error) {
        if !self.failed {
            log::warn!(
                "cannot write {}: {e}; anomalies are only counted now",
                self.path.display()
            );
            self.failed = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// What a guest that bumps its heads every poll makes: tens of
    /// thousands of anomalies a second, for an hour (of a made-up clock).
    #[test]
    fn an_hour_of_flooding_writes_within_the_bound_and_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rotated) = (
            dir.path().join("anomalies.log"),
            dir.path().join("anomalies.log.1"),
        );
        let t0 = Instant::now();
        let mut log = AnomalyLog::create(path.clone(), rotated.clone(), t0).unwrap();
        let mut noted = 0u64;
        for step in 0..360_000u64 {
            let now = t0 + Duration::from_millis(step * 10);
            // 20 000 a second for the first minute, then 100 a second.
            let n = if step < 6_000 { 200 } else { 1 };
            for i in 0..n {
                let a = if (i + step) % 2 == 0 {
                    Anomaly::BadCheck {
                        cpu: u32::MAX,
                        seq: u64::MAX,
                        epoch: u64::MAX,
                    }
                } else {
                    Anomaly::Rewound {
                        cpu: 3,
                        head: u64::MAX,
                        expected: u64::MAX,
                    }
                };
                log.note(&a, now, 1.8e9 + step as f64 / 100.0);
                noted += 1;
            }
        }
        let end = t0 + Duration::from_secs(3600);
        log.summarize(end, 1.8e9 + 3600.0);
        assert!(noted > 1_500_000);
        assert!(
            log.written <= MAX_BYTES_PER_HOUR,
            "{} > {MAX_BYTES_PER_HOUR}",
            log.written
        );
        // One line a second per token, and the summaries.
        assert!(log.written >= 20 * 3600 * 60, "{}", log.written);
        let on_disk = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(&rotated).map_or(0, |m| m.len());
        assert!(on_disk <= 2 * MAX_FILE, "{on_disk}");
        assert!(
            rotated.exists(),
            "an hour at the bucket's rate fills a file"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.len() < MAX_LINE), "a line too long");
        // What was held back is counted by kind.
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("more anomalies"))
            .expect("a summary line");
        assert!(
            summary.contains("bad check ") && summary.contains("rewound "),
            "{summary}"
        );
        for p in [&path, &rotated] {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(p) {
                assert_eq!(m.permissions().mode() & 0o077, 0, "{}", p.display());
            }
        }
    }

    /// A quiet guest's few anomalies are all there, one by one.
    #[test]
    fn a_few_anomalies_are_each_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anomalies.log");
        let t0 = Instant::now();
        let mut log = AnomalyLog::create(path.clone(), dir.path().join("x.1"), t0).unwrap();
        for seq in 0..15 {
            log.note(&Anomaly::BadRecord { cpu: 0, seq }, t0, 1.0);
        }
        log.summarize(t0, 1.0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 15, "{text}");
        assert!(!text.contains("more anomalies"));
    }
}
