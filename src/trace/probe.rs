//! The guest's probe (docs/abi.md §3.1): while a session captures, every
//! online CPU of the guest calls `xftrace_probe` at least every 200 ms, and
//! the host puts that function in every filter it sends. Its records are
//! not the user's trace (they are left out of traces and call flow); they
//! witness, ring by ring, that the path from a function's call site to the
//! ring works. A ring of an online CPU with no probe record in a window of
//! a second or more is a blinded CPU, whatever the load: an idle CPU still
//! probes.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::path::Path;

use crate::abi::{Kind, Record};
use crate::base::error::Result;
use crate::kernel::symbols::Symbolizer;

use super::spool;

/// Where the probe's records point: `[start, end)` of runtime addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    start: u64,
    end: u64,
}

impl Probe {
    /// The session's probe: the one its collector recorded (the
    /// `xftrace-dkms` module's), else the build's.
    pub fn of(recorded: Option<(u64, u64)>, sym: &Symbolizer) -> Option<Probe> {
        match recorded {
            Some((start, end)) if start < end => Some(Probe { start, end }),
            _ => Probe::new(sym),
        }
    }

    /// The probe of the kernel `sym` names, if its build has one. Its
    /// records carry the address of its call site, a few bytes in (after
    /// an `endbr64`), so the whole function counts.
    pub fn new(sym: &Symbolizer) -> Option<Probe> {
        let name = crate::abi::funcs::PROBE;
        let start = sym.addr(name)?;
        // A function of a few instructions; a map that says more is not
        // trusted further than 64 bytes.
        let len = sym.map.extent(name).unwrap_or(16).clamp(1, 64);
        Some(Probe {
            start,
            end: start.checked_add(len)?,
        })
    }

    /// True if `r` is one of the probe's records.
    pub fn is(&self, r: &Record) -> bool {
        (self.start..self.end).contains(&r.func)
    }

    /// The probe's entries per ring in a spool (rings without any are
    /// absent), and every ring's records of any kind.
    pub fn tally(&self, dir: &Path) -> Result<Tally> {
        let mut t = Tally::default();
        for s in spool::open(dir)? {
            let cpu = s.cpu();
            let (mut probes, mut all) = (0u64, 0u64);
            for r in s {
                all = all.saturating_add(1);
                if r.kind == Kind::Entry && self.is(&r) {
                    probes = probes.saturating_add(1);
                }
            }
            if probes > 0 {
                t.probes.insert(cpu, probes);
            }
            if all > 0 {
                t.records.insert(cpu, all);
            }
        }
        Ok(t)
    }
}

/// `records` without the probe's: each ring's later records are numbered
/// down by the probe records taken out before them, so that a reader of
/// sequence numbers (lost records, an entry and its return) sees no gap
/// where a probe call was, and still sees every gap of records lost.
pub fn without(
    records: impl Iterator<Item = Record>,
    probe: Option<Probe>,
) -> impl Iterator<Item = Record> {
    let mut taken: BTreeMap<u32, u64> = BTreeMap::new();
    records.filter_map(move |mut r| {
        let n = taken.entry(r.cpu).or_insert(0);
        if probe.is_some_and(|p| p.is(&r)) {
            *n = n.saturating_add(1);
            return None;
        }
        r.seq = r.seq.saturating_sub(*n);
        Some(r)
    })
}

/// What a capture's rings hold, per CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Entries of the probe, by ring.
    pub probes: BTreeMap<u32, u64>,
    /// Records of any kind, by ring.
    pub records: BTreeMap<u32, u64>,
}

impl Tally {
    /// `cpu0 12, cpu1 11` (for a trace's header).
    pub fn summary(&self) -> String {
        if self.probes.is_empty() {
            return "none".into();
        }
        self.probes
            .iter()
            .map(|(c, n)| format!("cpu{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::symbols::SystemMap;

    #[test]
    fn the_probe_is_its_function_and_nothing_else() {
        let map = SystemMap::parse(
            "ffffffff81000000 T _text\nffffffff81100000 T xftrace_probe\nffffffff81100010 T next_one\nffffffff82000000 B _end\n",
        )
        .unwrap();
        let sym = Symbolizer::new(&map, crate::guest::addr::Slide(0x200000));
        let p = Probe::new(&sym).unwrap();
        let rec = |func| Record {
            cpu: 0,
            seq: 0,
            epoch: 1,
            kind: Kind::Entry,
            func,
            time: 0,
            calltime: 0,
            depth: 0,
            pid: 9,
            overrun: 0,
            comm: [0; 16],
        };
        assert!(p.is(&rec(0xffffffff81300000)));
        assert!(p.is(&rec(0xffffffff81300004)), "after an endbr64");
        assert!(!p.is(&rec(0xffffffff81300010)));
        assert!(!p.is(&rec(0xffffffff81100004)), "the link-time address");
        // Taken out without leaving a gap, on their own ring only; a gap of
        // records lost stays one.
        let at = |cpu, seq, func| Record {
            cpu,
            seq,
            ..rec(func)
        };
        let (probe, other) = (0xffffffff81300000, 0xffffffff81500000);
        let rs = vec![
            at(0, 0, other),
            at(0, 1, probe),
            at(1, 0, other),
            at(0, 2, probe),
            at(0, 3, other),
            at(1, 1, other),
            at(0, 7, other),
        ];
        let seqs: Vec<(u32, u64)> = without(rs.into_iter(), Some(p))
            .map(|r| (r.cpu, r.seq))
            .collect();
        assert_eq!(seqs, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 5)]);
        let none = SystemMap::parse("ffffffff81000000 T _text\nffffffff82000000 B _end\n").unwrap();
        assert_eq!(Probe::new(&Symbolizer::new(&none, sym.slide)), None);
    }
}
