//! The kernel's own symbol table (kallsyms) out of a vmlinux without
//! symbols, such as the one in a stock bzImage ([`super::bzimage`]): a
//! System.map for builds whose distribution ships no debug package.
//!
//! scripts/kallsyms.c (6.1, x86_64: CONFIG_KALLSYMS_BASE_RELATIVE and
//! CONFIG_KALLSYMS_ABSOLUTE_PERCPU) puts these tables in `.rodata`, in this
//! order, each 8-byte aligned:
//!
//! | table | what |
//! |---|---|
//! | `kallsyms_offsets` | a 32-bit word per symbol: `>= 0` an absolute (per-CPU) address, else `relative_base - 1 - word` |
//! | `kallsyms_relative_base` | 64 bits: the lowest address of a symbol that is not absolute |
//! | `kallsyms_num_syms` | 32 bits |
//! | `kallsyms_names` | per symbol its compressed length (ULEB128, 1 or 2 bytes) and that many token numbers; the first character expanded is the type letter |
//! | `kallsyms_markers` | 32 bits per 256 symbols: where in the names that symbol starts |
//! | `kallsyms_seqs_of_names` | (6.2, and later 6.1 stable releases) 3 bytes big-endian per symbol: the symbols' numbers in name order |
//! | `kallsyms_token_table` | 256 NUL-terminated strings, what each token number stands for |
//! | `kallsyms_token_index` | 256 16-bit offsets into the token table |
//!
//! Nothing labels them in a stripped vmlinux, so they are found as
//! vmlinux-to-elf finds them (the tokens of `0` to `9` are themselves and
//! stand in a row) and each table is checked against the others: the
//! index against the token table, the markers against where the names'
//! entries start, the symbol count against the names decoded, the
//! addresses against the image and their order. Any mismatch is an error.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt::Write;

use crate::abi::le::{u16_at, u32_at, u64_at};
use crate::kernel::bzimage::ElfLayout;
use crate::kernel::symbols::Symbol;

/// Most symbols accepted (a Debian kernel has about 150 000).
pub const MAX_SYMS: usize = 2_000_000;
/// Longest symbol name accepted (6.1's KSYM_NAME_LEN), its type left out.
pub const MAX_NAME: usize = 512;
/// The token table's entries for `0` to `9`.
const DIGITS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
/// Bytes 256 names take in the names table, at least and at most (a
/// length byte or two, and one token per character at most).
const MIN_GROUP: u32 = 256 * 2;
const MAX_GROUP: u32 = 256 * (2 + 1 + MAX_NAME as u32);

/// The kernel's symbols as System.map text (`%016x %c %s`, by address).
pub fn system_map(vmlinux_elf: &[u8]) -> Result<String, String> {
    let mut syms = symbols(vmlinux_elf)?;
    syms.sort_by_key(|s| s.addr);
    let mut out = String::with_capacity(syms.len().saturating_mul(48));
    for s in &syms {
        let _ = writeln!(out, "{:016x} {} {}", s.addr, s.kind, s.name);
    }
    Ok(out)
}

/// The kernel's symbols in kallsyms' order: per-CPU ones (absolute, their
/// offset in the per-CPU area, type `A`) first, then by address.
pub fn symbols(vmlinux_elf: &[u8]) -> Result<Vec<Symbol>, String> {
    let elf = ElfLayout::parse(vmlinux_elf).map_err(|e| format!("vmlinux: {e}"))?;
    let ro = elf
        .section(".rodata")
        .ok_or("the vmlinux has no .rodata section")?;
    let bytes = elf
        .data(vmlinux_elf, ro)
        .ok_or("the vmlinux's .rodata lies past its end")?;
    if ro.addr & 7 != 0 {
        return Err(format!(".rodata at {:#x} is not 8-byte aligned", ro.addr));
    }
    let r = Rodata {
        b: bytes,
        image: elf.image().ok_or("the vmlinux has no allocated sections")?,
        percpu: elf
            .sections
            .iter()
            .find(|s| s.name == ".data..percpu" && s.addr == 0)
            .map(|s| s.size),
    };
    let mut why = Miss(
        0,
        "no token table (the strings \"0\" to \"9\" in a row)".into(),
    );
    let mut at = 0usize;
    while let Some(p) = find(bytes, DIGITS, at) {
        match r
            .token_table(p)
            .map_err(|e| Miss(0, e))
            .and_then(|t| r.tables_before(&t))
        {
            Ok(s) => return Ok(s),
            Err(e) => why.keep(e),
        }
        at = p.saturating_add(1);
    }
    Err(format!("no kallsyms tables in .rodata: {}", why.1))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    loop {
        let rest = hay.get(at..)?;
        let i = at.checked_add(rest.iter().position(|&c| c == first)?)?;
        if hay.get(i..i.checked_add(needle.len())?)? == needle {
            return Some(i);
        }
        at = i.checked_add(1)?;
    }
}

fn align_up(v: usize, a: usize) -> Option<usize> {
    v.checked_next_multiple_of(a)
}

fn align_down8(v: usize) -> usize {
    v & !7
}

/// Why a candidate was not the tables, and how far it got: the furthest
/// is the one reported.
struct Miss(u8, String);

impl Miss {
    fn keep(&mut self, other: Miss) {
        if other.0 >= self.0 {
            *self = other;
        }
    }
}

struct Tokens {
    /// Offset of the token table in .rodata.
    start: usize,
    table: Vec<Vec<u8>>,
}

/// A vmlinux's `.rodata`, and what its symbols' addresses must fit.
struct Rodata<'a> {
    b: &'a [u8],
    /// `[lo, hi]` of the image's allocated sections.
    image: (u64, u64),
    /// Size of the per-CPU section linked at 0, if there is one.
    percpu: Option<u64>,
}

impl Rodata<'_> {
    fn zeros(&self, from: usize, to: usize) -> bool {
        self.b
            .get(from..to)
            .is_some_and(|z| z.iter().all(|&c| c == 0))
    }

    /// Just past the NUL that ends the string at `at` (a token: at most
    /// a name long).
    fn string_end(&self, at: usize) -> Option<usize> {
        let rest = self.b.get(at..)?;
        let n = rest
            .iter()
            .take(MAX_NAME.saturating_add(2))
            .position(|&c| c == 0)?;
        at.checked_add(n)?.checked_add(1)
    }

    /// The token table whose entry for `0` is at `p`, and its index right
    /// after it, which must match it entry for entry.
    fn token_table(&self, p: usize) -> Result<Tokens, String> {
        let mut end = p;
        for _ in 0x30..=0xff {
            end = self
                .string_end(end)
                .ok_or("the token table runs off .rodata")?;
        }
        let mut tried = Vec::new();
        for a in [8usize, 4, 2, 1] {
            let Some(idx) = align_up(end, a) else {
                continue;
            };
            if !tried.contains(&idx) {
                tried.push(idx);
                if let Some(t) = self.check_index(p, end, idx) {
                    return Ok(t);
                }
            }
        }
        Err(format!(
            "no kallsyms_token_index after the token-table candidate at .rodata+{p:#x} matches it"
        ))
    }

    fn check_index(&self, p: usize, end: usize, idx: usize) -> Option<Tokens> {
        let index = (0..256usize)
            .map(|i| u16_at(self.b, idx.checked_add(i.checked_mul(2)?)?).map(usize::from))
            .collect::<Option<Vec<usize>>>()?;
        let start = p.checked_sub(*index.get(0x30)?)?;
        let mut at = start;
        let mut table = Vec::with_capacity(256);
        for &off in &index {
            if at.checked_sub(start)? != off {
                return None;
            }
            let e = self.string_end(at)?;
            let tok = self.b.get(at..e.checked_sub(1)?)?;
            if !tok.iter().all(|c| c.is_ascii_graphic()) {
                return None;
            }
            table.push(tok.to_vec());
            at = e;
        }
        (at == end).then_some(Tokens { start, table })
    }

    /// The tables before the token table: markers (and the names' order),
    /// names, count, base and offsets.
    fn tables_before(&self, t: &Tokens) -> Result<Vec<Symbol>, Miss> {
        let tt = t.start;
        if tt & 7 != 0 {
            return Err(Miss(
                1,
                format!("the token table at .rodata+{tt:#x} is not 8-byte aligned"),
            ));
        }
        // Markers, then at most one 3-byte entry per symbol, lie between.
        let span = MAX_SYMS
            .saturating_mul(3)
            .saturating_add(MAX_SYMS.div_ceil(256).saturating_mul(4))
            .saturating_add(64);
        let lowest = tt.saturating_sub(span);
        let mut why = Miss(1, "no kallsyms_markers before the token table".into());
        let Some(mut m) = tt.checked_sub(8) else {
            return Err(why);
        };
        loop {
            if u32_at(self.b, m) == Some(0) {
                match self.try_markers(m, t) {
                    Some(Ok(s)) => return Ok(s),
                    Some(Err(e)) => why.keep(e),
                    None => {}
                }
            }
            match m.checked_sub(8) {
                Some(next) if next >= lowest => m = next,
                _ => return Err(why),
            }
        }
    }

    /// Markers starting at `m`: the longest run of words that could be
    /// markers, then each length of it that ends where the token table (or
    /// the names' order before it) starts.
    fn try_markers(&self, m: usize, t: &Tokens) -> Option<Result<Vec<Symbol>, Miss>> {
        let tt = t.start;
        let mut markers = vec![0u32];
        let mut at = m.checked_add(4)?;
        while markers.len() < MAX_SYMS.div_ceil(256) && at.checked_add(4)? <= tt {
            let (Some(v), Some(&prev)) = (u32_at(self.b, at), markers.last()) else {
                break;
            };
            if !v
                .checked_sub(prev)
                .is_some_and(|d| (MIN_GROUP..=MAX_GROUP).contains(&d))
            {
                break;
            }
            markers.push(v);
            at = at.checked_add(4)?;
        }
        let mut why: Option<Miss> = None;
        let mut keep = |e: Miss| match why.as_mut() {
            Some(w) => w.keep(e),
            None => why = Some(e),
        };
        for n in 1..=markers.len() {
            let end = m.checked_add(n.checked_mul(4)?)?;
            let aligned = align_up(end, 8)?;
            if !self.zeros(end, aligned) {
                continue;
            }
            let group = markers.get(..n)?;
            if aligned == tt {
                match self.try_names(m, group, None, t) {
                    Ok(s) => return Some(Ok(s)),
                    Err(e) => keep(e),
                }
                continue;
            }
            // kallsyms_seqs_of_names: 3 bytes a symbol, padded to 8.
            let Some(room) = tt.checked_sub(aligned) else {
                continue;
            };
            let lo = room.saturating_sub(7).div_ceil(3);
            let hi = room.checked_div(3)?;
            for count in lo.max(1)..=hi {
                let bytes = count.checked_mul(3)?;
                if count.div_ceil(256) != n
                    || align_up(bytes, 8) != Some(room)
                    || !self.zeros(aligned.checked_add(bytes)?, tt)
                {
                    continue;
                }
                match self.try_names(m, group, Some((count, aligned)), t) {
                    Ok(s) => return Some(Ok(s)),
                    Err(e) => keep(e),
                }
            }
        }
        why.map(Err)
    }

    /// The names table that ends (padded to 8) at `m`, where these
    /// markers start: its start `s` follows the symbol count (and 4 bytes
    /// of padding), and its last group of names ends at `m`.
    fn try_names(
        &self,
        m: usize,
        markers: &[u32],
        seqs: Option<(usize, usize)>,
        t: &Tokens,
    ) -> Result<Vec<Symbol>, Miss> {
        let n = markers.len();
        let last = markers.last().map_or(0, |&v| v as usize);
        let mut why = Miss(
            2,
            format!("no kallsyms_num_syms fits the {n} kallsyms_markers at .rodata+{m:#x}"),
        );
        let Some(top) = m.checked_sub(last) else {
            return Err(why);
        };
        let bottom = top.saturating_sub(MAX_GROUP as usize);
        let mut s = align_down8(top);
        while s >= bottom && s >= 16 {
            let before = s.saturating_sub(8);
            if let (Some(count), Some(0)) =
                (u32_at(self.b, before), u32_at(self.b, s.saturating_sub(4)))
            {
                let count = count as usize;
                let fits = count > 0
                    && count <= MAX_SYMS
                    && count.div_ceil(256) == n
                    && seqs.is_none_or(|(c, _)| c == count);
                let tail = count.saturating_sub(n.saturating_sub(1).saturating_mul(256));
                if fits && self.last_group_ends(s.saturating_add(last), tail, m) {
                    match self.decode(s, count, markers, m, seqs, t) {
                        Ok(syms) => return Ok(syms),
                        Err(e) => why.keep(Miss(3, e)),
                    }
                }
            }
            s = before;
        }
        Err(why)
    }

    /// The compressed length of the name entry at `at` and the bytes
    /// that length takes (ULEB128, one or two bytes).
    fn entry_len(&self, at: usize) -> Option<(usize, usize)> {
        let b0 = *self.b.get(at)?;
        let (len, hdr) = if b0 & 0x80 == 0 {
            (usize::from(b0), 1)
        } else {
            let b1 = *self.b.get(at.checked_add(1)?)?;
            if b1 & 0x80 != 0 || b1 == 0 {
                return None;
            }
            (usize::from(b0 & 0x7f) | (usize::from(b1) << 7), 2)
        };
        (1..=MAX_NAME.saturating_add(1))
            .contains(&len)
            .then_some((len, hdr))
    }

    /// Whether `count` name entries from `at` end (padded to 8) at `m`.
    fn last_group_ends(&self, mut at: usize, count: usize, m: usize) -> bool {
        for _ in 0..count {
            let Some(next) = self
                .entry_len(at)
                .and_then(|(len, hdr)| at.checked_add(len)?.checked_add(hdr))
            else {
                return false;
            };
            if next > m {
                return false;
            }
            at = next;
        }
        align_up(at, 8) == Some(m) && self.zeros(at, m)
    }

    fn decode(
        &self,
        s: usize,
        count: usize,
        markers: &[u32],
        m: usize,
        seqs: Option<(usize, usize)>,
        t: &Tokens,
    ) -> Result<Vec<Symbol>, String> {
        let mut names = Vec::with_capacity(count);
        let mut at = s;
        for i in 0..count {
            if i & 0xff == 0 {
                let want = markers.get(i >> 8).map(|&v| v as usize);
                let got = at.saturating_sub(s);
                if want != Some(got) {
                    return Err(format!(
                        "kallsyms_markers[{}] is {want:?} but symbol {i} starts at {got}",
                        i >> 8
                    ));
                }
            }
            let (len, hdr) = self
                .entry_len(at)
                .ok_or_else(|| format!("symbol {i}: a bad name length"))?;
            let data_at = at.saturating_add(hdr);
            let data_end = data_at.saturating_add(len);
            let data = self
                .b
                .get(data_at..data_end)
                .ok_or("the names run off .rodata")?;
            names.push(expand(data, &t.table).map_err(|e| format!("symbol {i}: {e}"))?);
            at = data_end;
        }
        if align_up(at, 8) != Some(m) || !self.zeros(at, m) {
            return Err("the names do not end where kallsyms_markers start".into());
        }
        let base_at = s
            .checked_sub(16)
            .ok_or("no room for kallsyms_relative_base")?;
        let base = u64_at(self.b, base_at).ok_or("no kallsyms_relative_base")?;
        let table_len = count.checked_mul(4).ok_or("too many symbols")?;
        let off_at = align_up(table_len, 8)
            .and_then(|l| base_at.checked_sub(l))
            .ok_or("kallsyms_offsets would start before .rodata")?;
        let off_end = off_at.saturating_add(table_len);
        if !self.zeros(off_end, base_at) {
            return Err("no padding between kallsyms_offsets and kallsyms_relative_base".into());
        }
        let offsets: Vec<u32> = self
            .b
            .get(off_at..off_end)
            .ok_or("kallsyms_offsets run off .rodata")?
            .chunks_exact(4)
            .filter_map(|c| u32_at(c, 0))
            .collect();
        let addrs = self
            .absolute_percpu(&offsets, base)
            .or_else(|e| self.base_relative(&offsets, base).map_err(|_| e))?;
        if let Some((c, at)) = seqs {
            check_seqs(self.b.get(at..at.saturating_add(c.saturating_mul(3))), c)?;
        }
        Ok(addrs
            .into_iter()
            .zip(names)
            .map(|(addr, (kind, name))| Symbol { addr, kind, name })
            .collect())
    }

    fn in_image(&self, a: u64) -> bool {
        self.image.0 <= a && a <= self.image.1
    }

    /// CONFIG_KALLSYMS_ABSOLUTE_PERCPU: a word `>= 0` is an absolute
    /// per-CPU address, else `base - 1 - word`. The relative ones must lie
    /// in the image, ascending, the first at `base`.
    fn absolute_percpu(&self, offsets: &[u32], base: u64) -> Result<Vec<u64>, String> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut prev: Option<u64> = None;
        for (i, &w) in offsets.iter().enumerate() {
            if (w as i32) >= 0 {
                let a = u64::from(w);
                if self.percpu.is_none_or(|size| a > size) {
                    return Err(format!(
                        "symbol {i}: absolute address {a:#x} outside the per-CPU section"
                    ));
                }
                out.push(a);
                continue;
            }
            // base - 1 - (w as i32), and -1 - w is !w.
            let a = base.saturating_add(u64::from(!w));
            self.check_relative(i, a, base, &mut prev)?;
            out.push(a);
        }
        prev.map(|_| out)
            .ok_or_else(|| "no symbol relative to kallsyms_relative_base".to_string())
    }

    /// Without CONFIG_KALLSYMS_ABSOLUTE_PERCPU: every address is `base +
    /// word`.
    fn base_relative(&self, offsets: &[u32], base: u64) -> Result<Vec<u64>, String> {
        let mut prev = None;
        let mut out = Vec::with_capacity(offsets.len());
        for (i, &w) in offsets.iter().enumerate() {
            let a = base.saturating_add(u64::from(w));
            self.check_relative(i, a, base, &mut prev)?;
            out.push(a);
        }
        Ok(out)
    }

    fn check_relative(
        &self,
        i: usize,
        a: u64,
        base: u64,
        prev: &mut Option<u64>,
    ) -> Result<(), String> {
        if !self.in_image(a) {
            return Err(format!(
                "symbol {i}: address {a:#x} outside the image [{:#x}, {:#x}]",
                self.image.0, self.image.1
            ));
        }
        match *prev {
            None if a != base => {
                return Err(format!(
                    "the lowest relative symbol is at {a:#x}, not kallsyms_relative_base {base:#x}"
                ))
            }
            Some(p) if a < p => {
                return Err(format!(
                    "symbol {i}: address {a:#x} below the one before ({p:#x}): not sorted"
                ))
            }
            _ => {}
        }
        *prev = Some(a);
        Ok(())
    }
}

/// A compressed name expanded: its type letter and the name.
fn expand(data: &[u8], table: &[Vec<u8>]) -> Result<(char, String), String> {
    let mut out = Vec::with_capacity(32);
    for &c in data {
        let tok = table
            .get(usize::from(c))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("token {c:#x} is not in the token table"))?;
        out.extend_from_slice(tok);
        if out.len() > MAX_NAME.saturating_add(1) {
            return Err(format!("a name longer than {MAX_NAME} bytes"));
        }
    }
    let (&kind, name) = out.split_first().ok_or("an empty name")?;
    // nm's letter, or `?` (section symbols such as __nosave_begin).
    if !kind.is_ascii_graphic() || name.is_empty() {
        return Err(format!(
            "no type letter and name in {:?}",
            out.escape_ascii().to_string()
        ));
    }
    // Tokens are printable ASCII, checked with the token table.
    let name = String::from_utf8(name.to_vec()).map_err(|_| "a name not in ASCII")?;
    Ok((char::from(kind), name))
}

/// kallsyms_seqs_of_names: every symbol number once, 3 bytes big-endian.
fn check_seqs(b: Option<&[u8]>, count: usize) -> Result<(), String> {
    let b = b.ok_or("kallsyms_seqs_of_names run off .rodata")?;
    let mut seen = vec![false; count];
    for c in b.chunks_exact(3) {
        let v = c.iter().fold(0usize, |v, &x| v << 8 | usize::from(x));
        match seen.get_mut(v) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(format!(
                    "kallsyms_seqs_of_names: {v} is not a new symbol number below {count}"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::bzimage::tests::{elf, Sec};

    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const RODATA: u64 = 0xffff_ffff_8200_0000;
    const PERCPU_SIZE: u64 = 0x1000;

    /// A symbol as scripts/kallsyms.c takes it: address, type, name, and
    /// whether it is an absolute (per-CPU) one.
    pub(crate) type In<'a> = (u64, char, &'a str, bool);

    /// What [`kallsyms_tables`] wrote, and where.
    pub(crate) struct Tables {
        pub bytes: Vec<u8>,
        pub base_at: usize,
        pub names_at: usize,
        pub markers_at: usize,
        pub seqs_at: usize,
        pub token_at: usize,
        pub index_at: usize,
        /// The longest compressed name.
        pub longest: usize,
        /// A token number that stands for nothing, if one is left.
        pub unused: Option<u8>,
    }

    /// The tables scripts/kallsyms.c (6.1) writes for `syms` (sorted as it
    /// sorts them), with kallsyms_seqs_of_names if `seqs`, each 8-byte
    /// aligned as its `ALGN` does.
    pub(crate) fn kallsyms_tables(syms: &[In], seqs: bool) -> Tables {
        // Token numbers: the characters used stand for themselves, the
        // others for the most frequent pair, from 255 down.
        let mut table: Vec<Vec<u8>> = vec![Vec::new(); 256];
        let mut names: Vec<Vec<u8>> = syms
            .iter()
            .map(|&(_, k, n, _)| {
                let mut v = vec![k as u8];
                v.extend_from_slice(n.as_bytes());
                v
            })
            .collect();
        for n in &names {
            for &c in n {
                table[c as usize] = vec![c];
            }
        }
        for code in (0..256usize).rev() {
            if !table[code].is_empty() {
                continue;
            }
            let mut counts = std::collections::BTreeMap::new();
            for n in &names {
                for w in n.windows(2) {
                    *counts.entry((w[0], w[1])).or_insert(0usize) += 1;
                }
            }
            let Some((&(a, b), &c)) = counts
                .iter()
                .max_by_key(|(p, &c)| (c, std::cmp::Reverse(**p)))
            else {
                break;
            };
            if c < 2 {
                break;
            }
            table[code] = [table[a as usize].clone(), table[b as usize].clone()].concat();
            for n in &mut names {
                let mut out = Vec::with_capacity(n.len());
                let mut i = 0;
                while i < n.len() {
                    if i + 1 < n.len() && n[i] == a && n[i + 1] == b {
                        out.push(code as u8);
                        i += 2;
                    } else {
                        out.push(n[i]);
                        i += 1;
                    }
                }
                *n = out;
            }
        }
        let align = |v: &mut Vec<u8>| {
            while !v.len().is_multiple_of(8) {
                v.push(0);
            }
        };
        let mut out = Vec::new();
        let base = syms.iter().find(|s| !s.3).unwrap().0;
        for &(addr, _, _, abs) in syms {
            let w = if abs {
                assert!(addr <= i32::MAX as u64);
                addr as u32
            } else {
                (base as i64 - addr as i64 - 1) as i32 as u32
            };
            out.extend_from_slice(&w.to_le_bytes());
        }
        align(&mut out);
        let base_at = out.len();
        out.extend_from_slice(&base.to_le_bytes());
        align(&mut out);
        out.extend_from_slice(&(syms.len() as u32).to_le_bytes());
        align(&mut out);
        let names_at = out.len();
        let mut markers = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i % 256 == 0 {
                markers.push((out.len() - names_at) as u32);
            }
            if n.len() <= 0x7f {
                out.push(n.len() as u8);
            } else {
                out.push((n.len() & 0x7f) as u8 | 0x80);
                out.push((n.len() >> 7) as u8);
            }
            out.extend_from_slice(n);
        }
        align(&mut out);
        let markers_at = out.len();
        for m in markers {
            out.extend_from_slice(&m.to_le_bytes());
        }
        align(&mut out);
        let seqs_at = out.len();
        if seqs {
            let mut order: Vec<usize> = (0..syms.len()).collect();
            order.sort_by_key(|&i| syms[i].2);
            for i in order {
                out.extend_from_slice(&(i as u32).to_be_bytes()[1..]);
            }
            align(&mut out);
        }
        let mut index = Vec::new();
        let token_at = out.len();
        for t in &table {
            index.push((out.len() - token_at) as u16);
            out.extend_from_slice(t);
            out.push(0);
        }
        align(&mut out);
        let index_at = out.len();
        for i in index {
            out.extend_from_slice(&i.to_le_bytes());
        }
        Tables {
            bytes: out,
            base_at,
            names_at,
            markers_at,
            seqs_at,
            token_at,
            index_at,
            longest: names.iter().map(Vec::len).max().unwrap(),
            unused: table.iter().position(Vec::is_empty).map(|c| c as u8),
        }
    }

    /// Filler that holds no zero word and no run of digits.
    fn filler(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8 | 1
            })
            .collect()
    }

    /// A vmlinux whose .rodata holds `tables` after `before` bytes.
    fn vmlinux(tables: &[u8], before: Vec<u8>) -> Vec<u8> {
        assert_eq!(before.len() % 8, 0);
        let mut ro = before;
        ro.extend_from_slice(tables);
        ro.extend(filler(37, 9));
        elf(&[
            Sec {
                name: ".text",
                ty: 1,
                flags: 6,
                addr: TEXT,
                data: vec![0xcc; 0x100],
            },
            Sec {
                name: ".rodata",
                ty: 1,
                flags: 2,
                addr: RODATA,
                data: ro,
            },
            Sec {
                name: ".data..percpu",
                ty: 1,
                flags: 3,
                addr: 0,
                data: vec![0; PERCPU_SIZE as usize],
            },
            Sec {
                name: ".bss",
                ty: 8,
                flags: 3,
                addr: RODATA + 0x10_0000,
                data: vec![0; 0x1000],
            },
        ])
    }

    fn sample_symbols() -> Vec<(u64, char, String, bool)> {
        let mut v = vec![
            (0, 'A', "__per_cpu_start".to_string(), true),
            (0x40, 'A', "fixed_percpu_data".to_string(), true),
            (PERCPU_SIZE, 'A', "__per_cpu_end".to_string(), true),
            (TEXT, 'T', "_text".to_string(), false),
            (TEXT, 'T', "startup_64".to_string(), false),
        ];
        let kinds = ['t', 'T', 'd', 'D', 'r', 'R', 'b', 'B', 'W'];
        for i in 0..700u64 {
            let name = format!(
                "sym_{i}_{}",
                ["foo", "bar", "do_thing", "x86"][i as usize % 4]
            );
            v.push((
                TEXT + 0x10 + i * 0x30,
                kinds[i as usize % kinds.len()],
                name,
                false,
            ));
        }
        // A name too long for a one-byte length, even compressed.
        let mut x = 7u32;
        let long: String = (0..300)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefghijklmnopqrstuvwxyz0123456789_"[(x >> 16) as usize % 37] as char
            })
            .collect();
        v.push((RODATA + 0x8000, 'r', format!("long_{long}"), false));
        v.push((RODATA + 0x10_1000, 'B', "_end".to_string(), false));
        v
    }

    fn as_in(v: &[(u64, char, String, bool)]) -> Vec<In<'_>> {
        v.iter()
            .map(|(a, k, n, abs)| (*a, *k, n.as_str(), *abs))
            .collect()
    }

    #[test]
    fn decodes_what_scripts_kallsyms_writes() {
        let owned = sample_symbols();
        let syms = as_in(&owned);
        for seqs in [false, true] {
            let t = kallsyms_tables(&syms, seqs);
            assert!(t.longest > 127, "{}", t.longest);
            let tables = t.bytes;
            // A decoy run of digits before the tables.
            let mut before = filler(64, 3);
            before.extend_from_slice(DIGITS);
            before.extend(filler(4, 5));
            let v = vmlinux(&tables, before);
            let got = symbols(&v).unwrap();
            assert_eq!(got.len(), syms.len());
            for (g, s) in got.iter().zip(&syms) {
                assert_eq!((g.addr, g.kind, g.name.as_str()), (s.0, s.1, s.2));
            }
            let map = system_map(&v).unwrap();
            let sm = crate::kernel::symbols::SystemMap::parse(&map).unwrap();
            assert_eq!(sm.addr("_text"), Some(TEXT));
            assert_eq!(sm.addr("fixed_percpu_data"), Some(0x40));
            assert_eq!(
                map.lines().nth(3).unwrap(),
                "ffffffff81000000 T _text",
                "{map}"
            );
            let mut lines: Vec<&str> = map.lines().collect();
            let n = lines.len();
            lines.sort_by_key(|l| u64::from_str_radix(&l[..16], 16).unwrap());
            assert_eq!(lines.len(), n);
        }
    }

    #[test]
    fn without_absolute_percpu_every_address_is_relative() {
        // A table from a build without per-CPU absolutes: plain offsets.
        let owned: Vec<_> = sample_symbols().into_iter().filter(|s| !s.3).collect();
        let syms = as_in(&owned);
        let mut tables = kallsyms_tables(&syms, true).bytes;
        for (i, s) in syms.iter().enumerate() {
            tables[i * 4..i * 4 + 4].copy_from_slice(&((s.0 - TEXT) as u32).to_le_bytes());
        }
        let got = symbols(&vmlinux(&tables, Vec::new())).unwrap();
        assert_eq!(got.last().unwrap().name, "_end");
        assert_eq!(got.last().unwrap().addr, RODATA + 0x10_1000);
    }

    #[test]
    fn inconsistent_tables_are_errors() {
        let owned = sample_symbols();
        let syms = as_in(&owned);
        let k = kallsyms_tables(&syms, true);
        let tables = k.bytes.clone();
        assert!(symbols(&vmlinux(&tables, Vec::new())).is_ok());
        let bad = |what: &str, f: &dyn Fn(&mut Vec<u8>)| {
            let mut t = tables.clone();
            f(&mut t);
            let e = symbols(&vmlinux(&t, Vec::new()));
            assert!(e.is_err(), "{what}: {:?}", e.map(|s| s.len()));
        };
        let (base, names, markers, seqs, tt, index) = (
            k.base_at,
            k.names_at,
            k.markers_at,
            k.seqs_at,
            k.token_at,
            k.index_at,
        );
        bad("token index", &|t| t[index + 2 * 0x40] ^= 1);
        bad("num_syms + 1", &|t| t[names - 8] += 1);
        bad("num_syms - 1", &|t| t[names - 8] -= 1);
        bad("a marker", &|t| t[markers + 4] += 1);
        bad("relative base", &|t| t[base] += 8);
        bad("unsorted", &|t| {
            t[4 * 10..4 * 11].copy_from_slice(&(!0x5000u32).to_le_bytes())
        });
        bad("outside", &|t| {
            t[4 * 20..4 * 21].copy_from_slice(&0x8000_0000u32.to_le_bytes())
        });
        bad("percpu", &|t| {
            t[4..8].copy_from_slice(&0x10_0000u32.to_le_bytes())
        });
        bad("seqs", &|t| t.copy_within(seqs + 3..seqs + 6, seqs));
        if let Some(c) = k.unused {
            bad("unused token", &|t| t[names + 1] = c);
        }
        bad("no tables", &|t| t.truncate(tt));
        // Every byte of every table flipped in turn: never a panic.
        for i in 0..tables.len() {
            let mut t = tables.clone();
            t[i] ^= 0x81;
            let _ = symbols(&vmlinux(&t, Vec::new()));
        }
    }

    #[test]
    fn truncated_or_foreign_inputs_are_errors() {
        let owned = sample_symbols();
        let tables = kallsyms_tables(&as_in(&owned), false).bytes;
        let v = vmlinux(&tables, Vec::new());
        assert!(symbols(&v).is_ok());
        // .rodata cut short at every 61st byte of the tables.
        for cut in (0..tables.len()).step_by(61) {
            assert!(
                symbols(&vmlinux(&tables[..cut], Vec::new())).is_err(),
                "{cut}"
            );
        }
        for n in (0..v.len()).step_by(97) {
            assert!(system_map(&v[..n]).is_err());
        }
        assert!(system_map(b"not an elf").is_err());
        let no_rodata = elf(&[Sec {
            name: ".text",
            ty: 1,
            flags: 6,
            addr: TEXT,
            data: tables.clone(),
        }]);
        assert!(system_map(&no_rodata).unwrap_err().contains(".rodata"));
        // Empty or all-zero .rodata.
        assert!(symbols(&vmlinux(&[], Vec::new())).is_err());
        assert!(symbols(&vmlinux(&[0; 4096], Vec::new())).is_err());
    }
}
