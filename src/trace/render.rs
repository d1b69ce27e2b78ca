//! Log Maker, second half: records to `trace_graph.txt` in the layout of
//! ftrace's function_graph tracer (kernel/trace/trace_functions_graph.c with
//! its default options: CPU, overhead marks, duration), streamed from the
//! spool so that memory does not grow with the trace.
#![deny(clippy::arithmetic_side_effects)]

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::io::Write;
use std::iter::Peekable;

use crate::abi::{self, Kind, Record};
use crate::base::error::{Error, Result};
use crate::base::escape::{escape, escape_bytes};

const INDENT: usize = 2;
/// Tasks whose names the renderer remembers (ftrace keeps 128 by default).
const MAX_COMMS: usize = 1 << 16;

/// Task names by pid, from the entries rendered so far, shared by the CPUs
/// (a task migrates).
#[derive(Default)]
struct Comms(
    RefCell<BTreeMap<u32, [u8; 16]>>,
    /// The last task noted: most entries repeat it.
    std::cell::Cell<Option<(u32, [u8; 16])>>,
);

impl Comms {
    fn note(&self, r: &Record) {
        if r.kind != Kind::Entry || self.1.get() == Some((r.pid, r.comm)) {
            return;
        }
        self.1.set(Some((r.pid, r.comm)));
        let mut m = self.0.borrow_mut();
        if m.len() < MAX_COMMS || m.contains_key(&r.pid) {
            m.insert(r.pid, r.comm);
        }
    }

    /// ftrace's print_graph_proc(): `comm-pid` (the name cut to 7
    /// characters, `<...>` when unknown) centred in 14 columns.
    fn proc(&self, pid: u32) -> String {
        let comm = match self.0.borrow().get(&pid) {
            Some(c) => {
                let n = c
                    .iter()
                    .take(7)
                    .position(|&b| b == 0)
                    .unwrap_or(7.min(c.len()));
                escape_bytes(&c[..n])
            }
            None => "<...>".to_string(),
        };
        let text = format!("{comm}-{pid}");
        let spaces = 14usize.saturating_sub(text.chars().count());
        format!(
            "{}{text}{}",
            " ".repeat(spaces / 2),
            " ".repeat(spaces.saturating_sub(spaces / 2))
        )
    }
}

/// ftrace's overhead mark for a duration in ns.
fn mark(ns: u64) -> char {
    const MARKS: [(u64, char); 6] = [
        (1_000_000_000, '$'),
        (100_000_000, '@'),
        (10_000_000, '*'),
        (1_000_000, '#'),
        (100_000, '!'),
        (10_000, '+'),
    ];
    MARKS.iter().find(|(v, _)| ns > *v).map_or(' ', |(_, c)| *c)
}

/// `v` in decimal, into the end of `buf`; returns where it starts.
fn decimal(buf: &mut [u8; 20], mut v: u64) -> usize {
    let mut at = buf.len();
    loop {
        at = at.saturating_sub(1);
        buf[at] = b'0'.saturating_add((v % 10) as u8);
        v /= 10;
        if v == 0 || at == 0 {
            return at;
        }
    }
}

/// The DURATION column, `trace_print_graph_duration()` byte for byte,
/// built on the stack and appended at once.
fn duration(out: &mut String, ns: u64) {
    let mut line = [b' '; 40];
    let mut n = 0usize;
    let mut put = |bytes: &[u8]| {
        let end = n.saturating_add(bytes.len()).min(line.len());
        if let Some(dst) = line.get_mut(n..end) {
            dst.copy_from_slice(&bytes[..dst.len()]);
        }
        n = end;
    };
    let mut buf = [0u8; 20];
    let at = decimal(&mut buf, ns / 1000);
    let usecs = &buf[at..];
    let mut len = usecs.len();
    // The marks are ASCII.
    put(&[mark(ns) as u8, b' ']);
    put(usecs);
    if len < 7 {
        let frac = ns % 1000;
        let nsecs = [
            b'.',
            b'0'.saturating_add((frac / 100) as u8),
            b'0'.saturating_add((frac / 10 % 10) as u8),
            b'0'.saturating_add((frac % 10) as u8),
        ];
        // len < 7: 8 - len - 1 ≥ 1.
        let keep = 7usize.saturating_sub(len).min(3);
        put(&nsecs[..keep.saturating_add(1)]);
        len = len.saturating_add(keep).saturating_add(1);
    }
    put(b" us ");
    put(&[b' '; 8][..8usize.saturating_sub(len)]);
    put(b"|  ");
    out.push_str(std::str::from_utf8(&line[..n]).unwrap_or("?"));
}

const NO_DURATION: &str = "              |  ";

/// Indentation for any depth up to `FTRACE_RETFUNC_DEPTH` (≤ 100 columns).
const SPACES: &str = "                                                                                                                                ";

/// Function names by runtime address, each looked up once: a trace calls
/// the same few hundred functions millions of times. A direct-mapped table
/// of recent addresses answers most lookups; a hash table the rest.
/// Bounded (a forged trace can name any address): past `MAX_NAMES` names,
/// new ones are looked up again each time.
pub struct NameCache<'a> {
    lookup: &'a dyn Fn(u64) -> String,
    names: Vec<Box<str>>,
    /// Keyed at random (std's SipHash): addresses come from records that a
    /// forger writes, and an unkeyed hash lets it pick thousands that fall
    /// into one bucket. The `recent` table answers most lookups anyway.
    index: std::collections::HashMap<u64, u32>,
    /// (address, index into `names`) by `slot(address)`; address 0 with
    /// index `u32::MAX` is empty.
    recent: Vec<(u64, u32)>,
    scratch: String,
}

const MAX_NAMES: usize = 1 << 16;
const RECENT: usize = 4096;

fn slot(addr: u64) -> usize {
    ((addr ^ (addr >> 12)) as usize) & (RECENT - 1)
}

impl<'a> NameCache<'a> {
    pub fn new(lookup: &'a dyn Fn(u64) -> String) -> Self {
        NameCache {
            lookup,
            names: Vec::new(),
            index: Default::default(),
            recent: vec![(0, u32::MAX); RECENT],
            scratch: String::new(),
        }
    }

    /// The name of the function at runtime address `addr`.
    pub fn get(&mut self, addr: u64) -> &str {
        let s = slot(addr);
        let (a, i) = self.recent[s];
        if a == addr && i != u32::MAX {
            return self.names.get(i as usize).map_or("", |n| n);
        }
        let i = match self.index.get(&addr) {
            Some(&i) => i,
            None if self.names.len() < MAX_NAMES => {
                let i = self.names.len() as u32;
                self.names.push((self.lookup)(addr).into_boxed_str());
                self.index.insert(addr, i);
                i
            }
            None => {
                self.scratch = (self.lookup)(addr);
                return &self.scratch;
            }
        };
        self.recent[s] = (addr, i);
        self.names.get(i as usize).map_or("", |n| n)
    }
}

/// Header lines for `trace_graph.txt`; `notes` become `# xftrace:` comments
/// (escaped: a note that holds guest text cannot start a line of its own).
pub fn header(notes: &[String]) -> String {
    let mut s = String::from("# tracer: function_graph\n#\n");
    for n in notes {
        let _ = writeln!(s, "# xftrace: {}", escape(n));
    }
    if !notes.is_empty() {
        s.push_str("#\n");
    }
    s.push_str("# CPU  DURATION                  FUNCTION CALLS\n");
    s.push_str("# |     |   |                     |   |   |   |\n");
    s
}

/// One CPU's records turned into output lines, one at a time, each with
/// the time that orders it among CPUs. Memory: one record of look-ahead
/// and one open function per depth.
struct CpuLines<'a, I: Iterator<Item = Record>> {
    recs: Peekable<I>,
    prefix: String,
    entered: [Option<u64>; abi::FTRACE_RETFUNC_DEPTH as usize + 1],
    last_pid: Option<u32>,
    last_seq: Option<u64>,
    cpu: u32,
    comms: &'a Comms,
}

impl<'a, I: Iterator<Item = Record>> CpuLines<'a, I> {
    fn new(cpu: u32, width: usize, recs: I, comms: &'a Comms) -> Self {
        CpuLines {
            recs: recs.peekable(),
            prefix: format!(" {cpu:>width$}) "),
            entered: [None; abi::FTRACE_RETFUNC_DEPTH as usize + 1],
            last_pid: None,
            last_seq: None,
            cpu,
            comms,
        }
    }

    /// The next line (with what precedes it: lost-record and context-switch
    /// lines) into `text`, cleared first; returns its time.
    fn next_line(&mut self, text: &mut String, names: &mut NameCache) -> Option<u64> {
        let r = self.recs.next()?;
        self.comms.note(&r);
        text.clear();
        // ftrace's mark where a ring overran (or records were refused):
        // what was open before it may never close.
        if let Some(lost) = self
            .last_seq
            .and_then(|p| r.seq.checked_sub(p))
            .and_then(|d| d.checked_sub(1))
            .filter(|&n| n > 0)
        {
            let _ = writeln!(text, "CPU:{} [LOST {lost} EVENTS]", self.cpu);
            self.entered = [None; abi::FTRACE_RETFUNC_DEPTH as usize + 1];
        }
        self.last_seq = Some(r.seq);
        // ftrace's context-switch lines (verif_pid()).
        if let Some(prev) = self.last_pid.filter(|&p| p != r.pid) {
            let _ = write!(
                text,
                " ------------------------------------------\n{}{} => {}\n ------------------------------------------\n\n",
                self.prefix,
                self.comms.proc(prev),
                self.comms.proc(r.pid)
            );
        }
        self.last_pid = Some(r.pid);
        text.push_str(&self.prefix);
        // Depth ≤ FTRACE_RETFUNC_DEPTH: spool and decoder both refuse more.
        let depth = (r.depth as usize).min(abi::FTRACE_RETFUNC_DEPTH as usize);
        let indent = SPACES.get(..depth.saturating_mul(INDENT)).unwrap_or(SPACES);
        match r.kind {
            Kind::Entry => {
                let leaf = self.recs.next_if(|n| {
                    n.kind == Kind::Return
                        && n.func == r.func
                        && n.depth == r.depth
                        && n.pid == r.pid
                        && Some(n.seq) == r.seq.checked_add(1)
                });
                if let Some(ret) = leaf {
                    self.last_seq = Some(ret.seq);
                    duration(text, ret.time.saturating_sub(ret.calltime));
                    text.push_str(indent);
                    text.push_str(names.get(r.func));
                    text.push_str("();");
                } else {
                    self.entered[depth] = Some(r.func);
                    text.push_str(NO_DURATION);
                    text.push_str(indent);
                    text.push_str(names.get(r.func));
                    text.push_str("() {");
                }
            }
            Kind::Return => {
                duration(text, r.time.saturating_sub(r.calltime));
                text.push_str(indent);
                if self.entered[depth].take() == Some(r.func) {
                    text.push('}');
                } else {
                    text.push_str("} /* ");
                    text.push_str(names.get(r.func));
                    text.push_str(" */");
                }
                if r.overrun > 0 {
                    let _ = write!(text, " (Overruns: {})", r.overrun);
                }
            }
        }
        Some(r.time)
    }
}

/// Render each ring's records (in ring order) as function_graph text to
/// `out`, merging CPUs by time. `name` symbolizes a runtime function
/// address. Memory does not grow with the trace. Returns the records
/// rendered.
pub fn render<I: Iterator<Item = Record>>(
    out: &mut dyn Write,
    rings: Vec<(u32, I)>,
    nr_cpus: u32,
    name: &dyn Fn(u64) -> String,
    notes: &[String],
) -> Result<u64> {
    let io = |e| Error::io("cannot write the trace", e);
    let width = nr_cpus.max(1).saturating_sub(1).to_string().len();
    let comms = Comms::default();
    let mut names = NameCache::new(name);
    let mut cpus: Vec<CpuLines<'_, I>> = rings
        .into_iter()
        .map(|(cpu, recs)| CpuLines::new(cpu, width, recs, &comms))
        .collect();
    // Each CPU's next line, in a buffer reused for all its lines.
    let mut pending: Vec<String> = vec![String::new(); cpus.len()];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for (i, c) in cpus.iter_mut().enumerate() {
        if let Some(t) = c.next_line(&mut pending[i], &mut names) {
            heap.push(Reverse((t, i)));
        }
    }
    out.write_all(header(notes).as_bytes()).map_err(io)?;
    let mut lines = 0u64;
    while let Some(Reverse((_, i))) = heap.pop() {
        let text = &mut pending[i];
        text.push('\n');
        out.write_all(text.as_bytes()).map_err(io)?;
        lines = lines.saturating_add(1);
        if let Some(t) = cpus[i].next_line(text, &mut names) {
            heap.push(Reverse((t, i)));
        }
    }
    Ok(lines)
}

/// [`render`] into a string (tests and small traces).
pub fn render_to_string(
    records: &[Record],
    nr_cpus: u32,
    name: &dyn Fn(u64) -> String,
    notes: &[String],
) -> String {
    let mut rings: Vec<(u32, Vec<Record>)> = Vec::new();
    for r in records {
        match rings.iter_mut().find(|(c, _)| *c == r.cpu) {
            Some((_, v)) => v.push(*r),
            None => rings.push((r.cpu, vec![*r])),
        }
    }
    rings.sort_by_key(|(c, _)| *c);
    let mut out = Vec::new();
    let rings = rings.into_iter().map(|(c, v)| (c, v.into_iter())).collect();
    render(&mut out, rings, nr_cpus, name, notes).expect("writing to memory");
    String::from_utf8(out).expect("rendered text is UTF-8")
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// [`render_to_string`] of records as rings hold them: each CPU's
    /// numbered in order.
    fn rendered(
        records: &[Record],
        nr_cpus: u32,
        name: &dyn Fn(u64) -> String,
        notes: &[String],
    ) -> String {
        let mut next = std::collections::BTreeMap::<u32, u64>::new();
        let recs: Vec<Record> = records
            .iter()
            .map(|r| {
                let n = next.entry(r.cpu).or_default();
                *n += 1;
                Record { seq: *n, ..*r }
            })
            .collect();
        render_to_string(&recs, nr_cpus, name, notes)
    }

    fn ev(cpu: u32, kind: Kind, func: u64, depth: u32, time: u64, calltime: u64) -> Record {
        Record {
            cpu,
            seq: 0,
            epoch: 1,
            kind,
            func,
            time,
            calltime,
            depth,
            pid: 7,
            overrun: 0,
            comm: [0; 16],
        }
    }

    fn name(a: u64) -> String {
        match a {
            1 => "__x64_sys_openat".into(),
            2 => "do_sys_openat2".into(),
            3 => "getname".into(),
            _ => format!("{a:#x}"),
        }
    }

    #[test]
    fn durations_match_ftrace() {
        let cases = [
            (622, "  0.622 us    |  "),
            (12_481, "+ 12.481 us   |  "),
            (150_000, "! 150.000 us  |  "),
            (2_345_678, "# 2345.678 us |  "),
            (12_345_678_901, "$ 12345678 us |  "),
        ];
        for (ns, want) in cases {
            let mut s = String::new();
            duration(&mut s, ns);
            assert_eq!(s, want, "{ns} ns");
        }
        assert_eq!(NO_DURATION.len(), "  0.622 us    |  ".len());
    }

    #[test]
    fn nests_and_folds_leaves() {
        use Kind::*;
        let recs = vec![
            ev(0, Entry, 1, 0, 100, 0),
            ev(0, Entry, 2, 1, 110, 0),
            ev(0, Entry, 3, 2, 120, 0),
            ev(0, Return, 3, 2, 742, 120),
            ev(0, Return, 2, 1, 5_340, 110),
            ev(0, Return, 1, 0, 12_581, 100),
        ];
        let text = rendered(&recs, 2, &name, &[]);
        let body: Vec<&str> = text.lines().skip(4).collect();
        assert_eq!(
            body,
            vec![
                " 0)               |  __x64_sys_openat() {",
                " 0)               |    do_sys_openat2() {",
                " 0)   0.622 us    |      getname();",
                " 0)   5.230 us    |    }",
                " 0) + 12.481 us   |  }",
            ]
        );
        assert!(text.starts_with("# tracer: function_graph\n#\n# CPU  DURATION"));
    }

    #[test]
    fn unknown_code_shows_as_hex_and_orphans_are_named() {
        use Kind::*;
        let recs = vec![
            ev(1, Return, 2, 1, 500, 400),
            ev(1, Entry, 0xffff_ffff_c0b3_7000, 1, 600, 0),
            ev(1, Return, 0xffff_ffff_c0b3_7000, 1, 700, 600),
        ];
        let text = rendered(&recs, 2, &name, &["2 records".into()]);
        assert!(text.contains("# xftrace: 2 records\n"));
        assert!(
            text.contains(" 1)   0.100 us    |    } /* do_sys_openat2 */\n"),
            "{text}"
        );
        assert!(text.contains("|    0xffffffffc0b37000();\n"), "{text}");
    }

    #[test]
    fn merges_cpus_by_time() {
        use Kind::*;
        let recs = vec![
            ev(0, Entry, 3, 0, 100, 0),
            ev(0, Return, 3, 0, 300, 100),
            ev(1, Entry, 2, 0, 200, 0),
            ev(1, Return, 2, 0, 250, 200),
        ];
        let text = rendered(&recs, 2, &name, &[]);
        let body: Vec<&str> = text.lines().skip(4).collect();
        assert!(
            body[0].starts_with(" 0)") && body[1].starts_with(" 1)"),
            "{body:?}"
        );
    }

    #[test]
    fn task_switches_name_the_tasks_like_ftrace() {
        let mut a = ev(0, Kind::Entry, 0xffff_ffff_8100_1000, 0, 1000, 0);
        a.comm[..5].copy_from_slice(b"nginx");
        let mut b = ev(0, Kind::Entry, 0xffff_ffff_8100_1000, 0, 3000, 0);
        b.pid = 8;
        // A hostile name: a control character, and longer than ftrace shows.
        b.comm[..12].copy_from_slice(b"ev\nil-name!!");
        let mut rb = ev(0, Kind::Return, 0xffff_ffff_8100_1000, 0, 4000, 3000);
        rb.pid = 8;
        let recs = [
            a,
            ev(0, Kind::Return, 0xffff_ffff_8100_1000, 0, 2000, 1000),
            b,
            rb,
        ];
        let out = rendered(&recs, 1, &name, &[]);
        assert!(
            out.contains(
                " ------------------------------------------\n 0)    nginx-7     =>  ev\\x0ail-n-8 \n ------------------------------------------\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches('\n').count(), out.lines().count());
        assert!(!out.contains("ev\nil"));
    }

    #[test]
    fn lost_records_are_marked_like_ftrace() {
        let mut a = ev(0, Kind::Entry, 0xffff_ffff_8100_1000, 0, 1000, 0);
        a.seq = 10;
        let mut b = ev(0, Kind::Return, 0xffff_ffff_8100_1000, 0, 2000, 1000);
        b.seq = 15;
        let out = render_to_string(&[a, b], 1, &name, &[]);
        assert!(
            out.contains("|  0xffffffff81001000() {\nCPU:0 [LOST 4 EVENTS]\n"),
            "{out}"
        );
        // Not folded into a leaf across the gap, and its close is not
        // matched to an entry from before it.
        assert!(out.contains("} /* 0xffffffff81001000 */"), "{out}");
    }

    #[test]
    fn notes_cannot_inject_lines() {
        let text = rendered(&[], 1, &name, &["banner\n 0)  fake();\x1b[2K".into()]);
        assert!(
            text.contains("# xftrace: banner\\x0a 0)  fake();\\x1b[2K\n"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 0);
    }

    #[test]
    fn a_deep_forged_record_cannot_blow_up_the_output() {
        use Kind::*;
        let mut r = ev(0, Entry, 1, 0, 100, 0);
        r.depth = 0xff_ffff;
        let text = rendered(&[r], 1, &name, &[]);
        assert!(text.len() < 1000, "{} bytes", text.len());
    }
}
