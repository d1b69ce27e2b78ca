//! The guest kernel's log, read from the host: the printk ring buffer of
//! Linux 6.1 (`kernel/printk/printk_ringbuffer.c`), found through `prb` and
//! laid out by the build's BTF. No login, no agent, no pause: the buffers
//! are copied out once and parsed, and a record a writer is still filling
//! is skipped like the kernel's own readers skip it.
//!
//! Every number in it comes from the guest: the ring sizes are bounded
//! (at most 2^18 records, 32 MiB of text), the walk from the oldest record
//! to the newest is at most one lap of the descriptor ring, and a record
//! whose descriptor, sequence or text block does not hold together is
//! counted as unreadable, never followed.
#![deny(clippy::arithmetic_side_effects)]

use super::guest::KernelView;

/// Most descriptors (records) a log may have: 2^18 (the kernel's
/// default for a 128 KiB log is 2^12).
const MAX_COUNT_BITS: u64 = 18;
/// Most text a log may have: 32 MiB (`log_buf_len`'s largest is 32 MiB on
/// most configurations).
const MAX_SIZE_BITS: u64 = 25;
/// A descriptor's state word: the top two bits are its state.
const STATE_SHIFT: u32 = 62;
const ID_MASK: u64 = !(3 << STATE_SHIFT);
const COMMITTED: u64 = 1;
const FINALIZED: u64 = 2;

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    /// Nanoseconds since boot (`local_clock`).
    pub ts_nsec: u64,
    /// Syslog level, 0 (emergency) to 7 (debug).
    pub level: u8,
    /// Guest-written bytes: escape them before printing.
    pub text: Vec<u8>,
}

impl LogRecord {
    /// `[   12.345678] text`, as `dmesg` prints it, escaped.
    pub fn line(&self) -> String {
        let secs = self.ts_nsec / 1_000_000_000;
        let micros = self.ts_nsec % 1_000_000_000 / 1000;
        format!(
            "[{secs:5}.{micros:06}] {}",
            crate::base::escape::escape_bytes(&self.text)
        )
    }
}

/// The log as it stood when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// Oldest first.
    pub records: Vec<LogRecord>,
    /// Records between the oldest and the newest that could not be read
    /// (being written, or not holding together).
    pub unreadable: u64,
}

/// Offsets of what the walk reads, from the build's BTF.
struct Layout {
    desc_ring: u64,
    data_ring: u64,
    count_bits: u64,
    descs: u64,
    infos: u64,
    head_id: u64,
    tail_id: u64,
    size_bits: u64,
    data: u64,
    rec: RecordLayout,
}

/// Offsets within a descriptor and a record's information.
#[derive(Clone, Copy, Debug)]
pub struct RecordLayout {
    desc_size: u64,
    state_var: u64,
    lpos_begin: u64,
    lpos_next: u64,
    info_size: u64,
    seq: u64,
    ts_nsec: u64,
    text_len: u64,
    facility: u64,
}

impl RecordLayout {
    /// Linux 6.1 on x86_64 (for fuzzing the parser; the walk takes its
    /// offsets from the build's BTF).
    pub const LINUX_6_1: RecordLayout = RecordLayout {
        desc_size: 24,
        state_var: 0,
        lpos_begin: 8,
        lpos_next: 16,
        info_size: 88,
        seq: 0,
        ts_nsec: 8,
        text_len: 16,
        facility: 18,
    };
}

/// The log's three arrays, copied out of the guest, and where its oldest
/// and newest records are: all guest-written.
pub struct Copied<'a> {
    pub descs: &'a [u8],
    pub infos: &'a [u8],
    pub text: &'a [u8],
    pub tail: u64,
    pub head: u64,
    /// Descriptors (a power of two) and bytes of text (one too).
    pub count: u64,
    pub size: u64,
}

impl Layout {
    fn of(v: &KernelView) -> Option<Layout> {
        let btf = v.btf?;
        let f = |t: &str, p: &[&str]| v.field(t, p);
        Some(Layout {
            desc_ring: f("printk_ringbuffer", &["desc_ring"])?,
            data_ring: f("printk_ringbuffer", &["text_data_ring"])?,
            count_bits: f("prb_desc_ring", &["count_bits"])?,
            descs: f("prb_desc_ring", &["descs"])?,
            infos: f("prb_desc_ring", &["infos"])?,
            head_id: f("prb_desc_ring", &["head_id"])?,
            tail_id: f("prb_desc_ring", &["tail_id"])?,
            size_bits: f("prb_data_ring", &["size_bits"])?,
            data: f("prb_data_ring", &["data"])?,
            rec: RecordLayout {
                desc_size: btf.size_of("prb_desc")?,
                state_var: f("prb_desc", &["state_var"])?,
                lpos_begin: f("prb_desc", &["text_blk_lpos", "begin"])?,
                lpos_next: f("prb_desc", &["text_blk_lpos", "next"])?,
                info_size: btf.size_of("printk_info")?,
                seq: f("printk_info", &["seq"])?,
                ts_nsec: f("printk_info", &["ts_nsec"])?,
                text_len: f("printk_info", &["text_len"])?,
                facility: f("printk_info", &["facility"])?,
            },
        })
    }
}

fn word(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let w = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(w.try_into().ok()?))
}

/// Read the guest kernel's log. Err says what could not be read.
pub fn read(v: &KernelView) -> Result<Log, String> {
    let l = Layout::of(v).ok_or(
        "the build's BTF does not describe printk's ring buffer (printk_ringbuffer, prb_desc, printk_info): pass the kernel's vmlinux",
    )?;
    let prb_sym = v
        .sym("prb")
        .ok_or("the build's System.map has no prb (printk's ring buffer)")?;
    let rb = v
        .read_word(prb_sym)
        .ok_or("cannot read prb, the pointer to printk's ring buffer")?;
    let at = |base: u64, off: u64| {
        base.checked_add(off)
            .ok_or_else(|| format!("printk's ring buffer at {base:#x} runs past the address space"))
    };
    let (dr, tr) = (at(rb, l.desc_ring)?, at(rb, l.data_ring)?);
    let read_word = |a: u64, what: &str| {
        v.read_word(a)
            .ok_or_else(|| format!("cannot read printk's {what} at {a:#x}"))
    };
    let count_bits = u64::from(
        v.read_u32(at(dr, l.count_bits)?)
            .ok_or("cannot read printk's descriptor count")?,
    );
    let size_bits = u64::from(
        v.read_u32(at(tr, l.size_bits)?)
            .ok_or("cannot read printk's text size")?,
    );
    if !(1..=MAX_COUNT_BITS).contains(&count_bits) || !(4..=MAX_SIZE_BITS).contains(&size_bits) {
        return Err(format!(
            "printk's ring buffer claims 2^{count_bits} records and 2^{size_bits} bytes of text: beyond what a kernel has (at most 2^{MAX_COUNT_BITS} and 2^{MAX_SIZE_BITS} read)"
        ));
    }
    let count = 1u64 << count_bits;
    let size = 1u64 << size_bits;
    let descs = read_word(at(dr, l.descs)?, "descriptor array pointer")?;
    let infos = read_word(at(dr, l.infos)?, "record information pointer")?;
    let head = read_word(at(dr, l.head_id)?, "head")? & ID_MASK;
    let tail = read_word(at(dr, l.tail_id)?, "tail")? & ID_MASK;
    let data = read_word(at(tr, l.data)?, "text pointer")?;
    // Copy out, then parse: the guest writes on while the host reads.
    let copy = |a: u64, n: u64, what: &str| -> Result<Vec<u8>, String> {
        let len = usize::try_from(n).map_err(|_| format!("printk's {what} is too large"))?;
        let mut b = vec![0u8; len];
        v.read_bytes(a, &mut b)
            .map_err(|e| format!("cannot read printk's {what}: {e}"))?;
        Ok(b)
    };
    let too_big = || "printk's ring buffer sizes overflow".to_string();
    let descs = copy(
        descs,
        count.checked_mul(l.rec.desc_size).ok_or_else(too_big)?,
        "descriptors",
    )?;
    let infos = copy(
        infos,
        count.checked_mul(l.rec.info_size).ok_or_else(too_big)?,
        "record information",
    )?;
    let text = copy(data, size, "text")?;
    parse(
        &l.rec,
        &Copied {
            descs: &descs,
            infos: &infos,
            text: &text,
            tail,
            head,
            count,
            size,
        },
    )
}

/// The records from the oldest to the newest: at most one lap of the
/// descriptor ring, each checked as the kernel's readers check it.
pub fn parse(l: &RecordLayout, c: &Copied) -> Result<Log, String> {
    let (head, tail) = (c.head & ID_MASK, c.tail & ID_MASK);
    if !c.count.is_power_of_two()
        || !c.size.is_power_of_two()
        || c.count > 1 << MAX_COUNT_BITS
        || c.size > 1 << MAX_SIZE_BITS
    {
        return Err("printk's ring sizes are not powers of two within the bounds".into());
    }
    let span = head.wrapping_sub(tail) & ID_MASK;
    if span >= c.count {
        return Err(format!(
            "printk's ring buffer has its oldest record {tail:#x} more than a lap ({} records) behind its newest {head:#x}",
            c.count
        ));
    }
    let mut log = Log::default();
    for i in 0..=span {
        let id = tail.wrapping_add(i) & ID_MASK;
        let idx = id & c.count.wrapping_sub(1);
        match record(l, c, id, idx) {
            Some(r) => log.records.push(r),
            None => log.unreadable = log.unreadable.saturating_add(1),
        }
    }
    Ok(log)
}

/// Record `id` at descriptor `idx`, if it is committed and holds together.
fn record(l: &RecordLayout, c: &Copied, id: u64, idx: u64) -> Option<LogRecord> {
    let (descs, infos) = (c.descs, c.infos);
    let d = idx.checked_mul(l.desc_size)?;
    let sv = word(descs, d.checked_add(l.state_var)?)?;
    let state = sv >> STATE_SHIFT;
    if sv & ID_MASK != id || !(state == COMMITTED || state == FINALIZED) {
        return None;
    }
    let begin = word(descs, d.checked_add(l.lpos_begin)?)?;
    let next = word(descs, d.checked_add(l.lpos_next)?)?;
    let i = idx.checked_mul(l.info_size)?;
    let seq = word(infos, i.checked_add(l.seq)?)?;
    let ts_nsec = word(infos, i.checked_add(l.ts_nsec)?)?;
    let tl = usize::try_from(i.checked_add(l.text_len)?).ok()?;
    let text_len = u16::from_le_bytes(infos.get(tl..tl.checked_add(2)?)?.try_into().ok()?);
    let fac = usize::try_from(i.checked_add(l.facility)?).ok()?;
    // flags:5 then level:3 in the byte after `facility`.
    let level = infos.get(fac.checked_add(1)?)? >> 5;
    // The kernel numbers a descriptor's records its index, plus the ring's
    // size at every lap: anything else was not written by it.
    if seq & c.count.wrapping_sub(1) != idx {
        return None;
    }
    let body = data_block(c.text, begin, next, c.size)?;
    let n = body.len().min(usize::from(text_len));
    Some(LogRecord {
        seq,
        ts_nsec,
        level,
        text: body[..n].to_vec(),
    })
}

/// The text of the data block `[begin, next)`, as the kernel's
/// `get_data()` finds it: after its 8-byte id, in one wrap of the ring, or
/// from the ring's start when it wrapped. None for a data-less record or a
/// block that does not hold together.
fn data_block(text: &[u8], begin: u64, next: u64, size: u64) -> Option<&[u8]> {
    if begin & 7 != 0 || next & 7 != 0 {
        return None;
    }
    let wraps = |lpos: u64| lpos.checked_div(size);
    let index = |lpos: u64| lpos.checked_rem(size);
    let (from, len) = if wraps(begin)? == wraps(next)? && begin < next {
        (index(begin)?, next.checked_sub(begin)?)
    } else if wraps(begin.checked_add(size)?)? == wraps(next)? {
        (0, index(next)?)
    } else {
        return None;
    };
    let from = usize::try_from(from).ok()?;
    let len = usize::try_from(len).ok()?;
    let block = text.get(from..from.checked_add(len)?)?;
    block.get(8..)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{btf, put_link, synthetic_guest, UNIT_MAP, UNIT_SLIDE};

    /// A log of four descriptors and 64 bytes of text in the image: two
    /// committed records, one being written, one whose sequence number the
    /// kernel would never give it; and hostile sizes.
    #[test]
    fn the_log_is_read_and_what_does_not_hold_together_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!("{UNIT_MAP}ffffffff82140000 d prb\n")).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let layouts = crate::kernel::btf::Btf::parse(&btf(&[
            (
                "printk_ringbuffer",
                0x58,
                &[
                    ("desc_ring", 0, "prb_desc_ring"),
                    ("text_data_ring", 0x30, "prb_data_ring"),
                ],
            ),
            (
                "prb_desc_ring",
                0x30,
                &[
                    ("count_bits", 0, ""),
                    ("descs", 8, ""),
                    ("infos", 0x10, ""),
                    ("head_id", 0x18, ""),
                    ("tail_id", 0x20, ""),
                ],
            ),
            (
                "prb_data_ring",
                0x20,
                &[("size_bits", 0, ""), ("data", 8, "")],
            ),
            (
                "prb_desc",
                24,
                &[
                    ("state_var", 0, ""),
                    ("text_blk_lpos", 8, "prb_data_blk_lpos"),
                ],
            ),
            (
                "prb_data_blk_lpos",
                16,
                &[("begin", 0, ""), ("next", 8, "")],
            ),
            (
                "printk_info",
                0x58,
                &[
                    ("seq", 0, ""),
                    ("ts_nsec", 8, ""),
                    ("text_len", 16, ""),
                    ("facility", 18, ""),
                ],
            ),
        ]))
        .unwrap();
        let (rb, descs, infos, text) = (
            0xffff_ffff_8214_0100u64,
            0xffff_ffff_8214_0200u64,
            0xffff_ffff_8214_0400u64,
            0xffff_ffff_8214_0800u64,
        );
        let rt = |link: u64| link + UNIT_SLIDE;
        put_link(&ram, 0xffff_ffff_8214_0000, rt(rb));
        let ring = |count_bits: u64, size_bits: u64, head: u64, tail: u64| {
            put_link(&ram, rb, count_bits);
            put_link(&ram, rb + 8, rt(descs));
            put_link(&ram, rb + 0x10, rt(infos));
            put_link(&ram, rb + 0x18, head);
            put_link(&ram, rb + 0x20, tail);
            put_link(&ram, rb + 0x30, size_bits);
            put_link(&ram, rb + 0x38, rt(text));
        };
        ring(2, 6, 3, 0);
        let desc = |idx: u64, state: u64, id: u64, begin: u64, next: u64| {
            put_link(&ram, descs + idx * 24, state << 62 | id);
            put_link(&ram, descs + idx * 24 + 8, begin);
            put_link(&ram, descs + idx * 24 + 16, next);
        };
        let info = |idx: u64, seq: u64, ts: u64, len: u64, level: u64| {
            put_link(&ram, infos + idx * 0x58, seq);
            put_link(&ram, infos + idx * 0x58 + 8, ts);
            put_link(&ram, infos + idx * 0x58 + 16, len | (level << 5) << 24);
        };
        let words = |at: u64, b: &[u8; 8]| put_link(&ram, text + at, u64::from_le_bytes(*b));
        words(8, b"hello\0\0\0");
        words(24, b"xftrace:");
        words(32, b" 1 rings");
        // 0: finalized, "hello"; 1: committed, "xftrace: 1 rings" (cut
        // to its text_len); 2: being written; 3: a sequence number that
        // is not its index plus laps.
        desc(0, FINALIZED, 0, 0, 16);
        info(0, 0, 1_500_000_000, 5, 6);
        desc(1, COMMITTED, 1, 16, 40);
        info(1, 5, 2_000_000_000, 15, 4);
        desc(2, 0, 2, 40, 48);
        desc(3, FINALIZED, 3, 48, 56);
        info(3, 6, 3, 0, 0);
        let mut v = KernelView::new(&ram, &map, &k);
        v.btf = Some(&layouts);
        let log = read(&v).unwrap();
        assert_eq!(log.unreadable, 2, "{log:?}");
        assert_eq!(log.records.len(), 2, "{log:?}");
        assert_eq!(log.records[0].line(), "[    1.500000] hello");
        assert_eq!(log.records[1].text, b"xftrace: 1 ring");
        assert_eq!((log.records[1].seq, log.records[1].level), (5, 4));
        // Hostile: a ring too large, an oldest record more than a lap old.
        ring(30, 6, 3, 0);
        assert!(read(&v).unwrap_err().contains("claims 2^30 records"));
        ring(2, 6, 9, 0);
        assert!(read(&v).unwrap_err().contains("more than a lap"));
        // No BTF: said.
        v.btf = None;
        assert!(read(&v).unwrap_err().contains("BTF"));
    }

    #[test]
    fn data_blocks_are_found_as_the_kernel_finds_them() {
        let mut text = vec![0u8; 64];
        text[8..13].copy_from_slice(b"hello");
        text[48..56].copy_from_slice(&7u64.to_le_bytes());
        text[0..8].copy_from_slice(&9u64.to_le_bytes());
        // In one wrap.
        assert_eq!(&data_block(&text, 0, 16, 64).unwrap()[..5], b"hello");
        // Wrapped: the block starts at the ring's start.
        assert_eq!(&data_block(&text, 48, 64 + 16, 64).unwrap()[..5], b"hello");
        // Data-less, misaligned, backwards, two laps apart, past the end.
        assert!(data_block(&text, 1, 1, 64).is_none());
        assert!(data_block(&text, 3, 16, 64).is_none());
        assert!(data_block(&text, 4, 16, 64).is_none());
        assert!(data_block(&text, 16, 8, 64).is_none());
        assert!(data_block(&text, 0, 200, 64).is_none());
        assert!(data_block(&text, 0, 8, 64).unwrap().is_empty());
    }

    #[test]
    fn a_line_is_printed_as_dmesg_does_escaped() {
        let r = LogRecord {
            seq: 1,
            ts_nsec: 12_345_678_901,
            level: 6,
            text: b"rk: \x1b[31mred\x07".to_vec(),
        };
        let l = r.line();
        assert!(l.starts_with("[   12.345678] rk: "), "{l}");
        assert!(!l.contains('\x1b') && !l.contains('\x07'), "{l}");
    }
}
