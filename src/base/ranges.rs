//! Sets of address ranges, `[start, end)`, in one pass each: the guest
//! decides how many ranges there are (one executable page at every other
//! 4 KiB is sixteen million of them), so nothing here compares every range
//! with every other.
#![deny(clippy::arithmetic_side_effects)]

/// `ranges` sorted by start, overlapping or touching ones merged; empty
/// ones dropped.
pub fn normalize(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(s, e)| s < e);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// What of `ranges` (sorted, disjoint) no range of `skip` (sorted,
/// disjoint: [`normalize`]) covers, in order. Linear in both.
pub fn subtract_all(ranges: &[(u64, u64)], skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut first = 0usize;
    for &(s, e) in ranges {
        // Skip ranges that end before this one starts end before every
        // later one starts too.
        while skip.get(first).is_some_and(|&(_, se)| se <= s) {
            first = first.saturating_add(1);
        }
        let mut at = s;
        for &(ss, se) in skip.get(first..).unwrap_or_default() {
            if ss >= e || at >= e {
                break;
            }
            if ss > at {
                out.push((at, ss));
            }
            at = at.max(se);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

/// Where `a` and `b` (each sorted and disjoint) overlap, in order. Linear.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0usize, 0usize);
    let mut out = Vec::new();
    while let (Some(&(as_, ae)), Some(&(bs, be))) = (a.get(i), b.get(j)) {
        let (s, e) = (as_.max(bs), ae.min(be));
        if s < e {
            out.push((s, e));
        }
        if ae <= be {
            i = i.saturating_add(1);
        } else {
            j = j.saturating_add(1);
        }
    }
    out
}

/// `ranges` (sorted, disjoint) in groups: a range starts a new group when
/// it begins more than `gap` bytes after the group's end. Each group is
/// its ranges, in order.
pub fn groups(ranges: &[(u64, u64)], gap: u64) -> Vec<&[(u64, u64)]> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, w) in ranges.windows(2).enumerate() {
        if w[1].0.saturating_sub(w[0].1) > gap {
            let end = i.saturating_add(1);
            out.push(&ranges[start..end]);
            start = end;
        }
    }
    if start < ranges.len() {
        out.push(&ranges[start..]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn set_arithmetic() {
        assert_eq!(
            normalize(vec![(5, 9), (0, 2), (2, 3), (8, 12), (20, 20)]),
            vec![(0, 3), (5, 12)]
        );
        let skip = normalize(vec![(1, 2), (4, 6), (9, 30)]);
        assert_eq!(
            subtract_all(&[(0, 5), (6, 8), (10, 12), (29, 40)], &skip),
            vec![(0, 1), (2, 4), (6, 8), (30, 40)]
        );
        assert_eq!(subtract_all(&[(0, 5)], &[]), vec![(0, 5)]);
        assert_eq!(subtract_all(&[(0, 5)], &[(0, 5)]), vec![]);
        assert_eq!(
            intersect(&[(0, 4), (6, 10), (12, 14)], &[(2, 7), (9, 13)]),
            vec![(2, 4), (6, 7), (9, 10), (12, 13)]
        );
        assert_eq!(intersect(&[(0, 4)], &[]), vec![]);
        let r = [(0, 1), (2, 3), (10, 11), (12, 13), (100, 101)];
        assert_eq!(
            groups(&r, 5),
            vec![&r[0..2], &r[2..4], &r[4..5]] as Vec<&[(u64, u64)]>
        );
        assert!(groups(&[], 5).is_empty());
    }

    /// Four million alternating pages against two million owners: linear
    /// work takes a fraction of a second, pairwise comparison would take
    /// days. The bound only tells the two apart; it is no speed target.
    #[test]
    fn alternating_pages_are_linear() {
        let n = 1u64 << 22;
        let pages: Vec<(u64, u64)> = (0..n).map(|i| (i * 0x2000, i * 0x2000 + 0x1000)).collect();
        let owned: Vec<(u64, u64)> = (0..n / 2)
            .map(|i| (i * 0x4000, i * 0x4000 + 0x1000))
            .collect();
        let t = std::time::Instant::now();
        let left = subtract_all(&pages, &owned);
        assert_eq!(left.len() as u64, n / 2);
        let both = intersect(&left, &pages);
        assert_eq!(both.len() as u64, n / 2);
        assert_eq!(groups(&both, 0x3000).len(), 1);
        assert_eq!(groups(&both, 0x2fff).len() as u64, n / 2);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
    }
}
