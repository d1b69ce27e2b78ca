//! Log Maker, second half: records to `trace_graph.txt` in the layout of
//! ftrace's function_graph tracer (kernel/trace/trace_functions_graph.c with
//! its default options: CPU, overhead marks, duration).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use crate::abi::{Kind, Record};
use crate::error::{Error, Result};

const INDENT: usize = 2;

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

/// The DURATION column, `trace_print_graph_duration()` byte for byte.
fn duration(out: &mut String, ns: u64) {
    let usecs = (ns / 1000).to_string();
    let mut len = usecs.len();
    let _ = write!(out, "{} {usecs}", mark(ns));
    if len < 7 {
        let nsecs = format!("{:03}", ns % 1000);
        let keep = (8 - len - 1).min(nsecs.len());
        let _ = write!(out, ".{}", &nsecs[..keep]);
        len += keep + 1;
    }
    out.push_str(" us ");
    for _ in len..8 {
        out.push(' ');
    }
    out.push_str("|  ");
}

const NO_DURATION: &str = "              |  ";

/// Header lines for `trace_graph.txt`; `notes` become `# xftrace:` comments.
pub fn header(notes: &[String]) -> String {
    let mut s = String::from("# tracer: function_graph\n#\n");
    for n in notes {
        let _ = writeln!(s, "# xftrace: {n}");
    }
    if !notes.is_empty() {
        s.push_str("#\n");
    }
    s.push_str("# CPU  DURATION                  FUNCTION CALLS\n");
    s.push_str("# |     |   |                     |   |   |   |\n");
    s
}

/// One output line with the time that orders it among CPUs.
struct Line {
    time: u64,
    text: String,
}

fn cpu_lines(cpu: u32, width: usize, recs: &[Record], name: &dyn Fn(u64) -> String) -> Vec<Line> {
    let mut out = Vec::with_capacity(recs.len());
    let mut entered: HashMap<u32, u64> = HashMap::new();
    let mut last_pid: Option<u32> = None;
    let prefix = format!(" {cpu:>width$}) ");
    let mut i = 0;
    while i < recs.len() {
        let r = &recs[i];
        let mut text = String::new();
        if let Some(prev) = last_pid.filter(|&p| p != r.pid) {
            let _ = write!(
                text,
                " ------------------------------------------\n{prefix}  pid-{prev:<6} =>  pid-{:<6}\n ------------------------------------------\n\n",
                r.pid
            );
        }
        last_pid = Some(r.pid);
        text.push_str(&prefix);
        let indent = " ".repeat(r.depth as usize * INDENT);
        let time;
        match r.kind {
            Kind::Entry => {
                time = r.time;
                let leaf = recs.get(i + 1).filter(|n| {
                    n.kind == Kind::Return
                        && n.func == r.func
                        && n.depth == r.depth
                        && n.pid == r.pid
                });
                if let Some(ret) = leaf {
                    duration(&mut text, ret.time.saturating_sub(ret.calltime));
                    let _ = write!(text, "{indent}{}();", name(r.func));
                    i += 1;
                } else {
                    entered.insert(r.depth, r.func);
                    let _ = write!(text, "{NO_DURATION}{indent}{}() {{", name(r.func));
                }
            }
            Kind::Return => {
                time = r.time;
                duration(&mut text, r.time.saturating_sub(r.calltime));
                text.push_str(&indent);
                if entered.remove(&r.depth) == Some(r.func) {
                    text.push('}');
                } else {
                    let _ = write!(text, "}} /* {} */", name(r.func));
                }
                if r.overrun > 0 {
                    let _ = write!(text, " (Overruns: {})", r.overrun);
                }
            }
        }
        out.push(Line { time, text });
        i += 1;
    }
    out
}

/// Render records (each CPU's in ring order) as function_graph text.
/// `name` symbolizes a runtime function address.
pub fn render(
    records: &[Record],
    nr_cpus: u32,
    name: &dyn Fn(u64) -> String,
    notes: &[String],
) -> String {
    let width = (nr_cpus.max(1) - 1).to_string().len();
    let mut per_cpu: Vec<Vec<Record>> = Vec::new();
    for r in records {
        let c = r.cpu as usize;
        if per_cpu.len() <= c {
            per_cpu.resize_with(c + 1, Vec::new);
        }
        per_cpu[c].push(*r);
    }
    let lines: Vec<Vec<Line>> = per_cpu
        .iter()
        .enumerate()
        .map(|(cpu, rs)| cpu_lines(cpu as u32, width, rs, name))
        .collect();
    // Merge CPUs by time, keeping each CPU's own order.
    let mut heap: BinaryHeap<Reverse<(u64, usize, usize)>> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(c, l)| Reverse((l[0].time, c, 0)))
        .collect();
    let mut s = header(notes);
    while let Some(Reverse((_, c, i))) = heap.pop() {
        s.push_str(&lines[c][i].text);
        s.push('\n');
        if let Some(n) = lines[c].get(i + 1) {
            heap.push(Reverse((n.time, c, i + 1)));
        }
    }
    s
}

/// Write `text` to `path` atomically (temporary file, fsync, rename), mode 0600.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = crate::state::create_private(&tmp)?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("cannot move trace into place at {}", path.display()),
                e,
            )
        })
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = render(&recs, 2, &name, &[]);
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
        let text = render(&recs, 2, &name, &["2 records".into()]);
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
        let text = render(&recs, 2, &name, &[]);
        let body: Vec<&str> = text.lines().skip(4).collect();
        assert!(
            body[0].starts_with(" 0)") && body[1].starts_with(" 1)"),
            "{body:?}"
        );
    }

    #[test]
    fn writes_atomically_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trace_graph.txt");
        write_atomically(&p, "a\n").unwrap();
        write_atomically(&p, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
