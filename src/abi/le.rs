//! Little-endian integers out of byte buffers copied from the guest or
//! read from a file: `None` past the end, never a panic.
#![deny(clippy::arithmetic_side_effects)]

fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_le_bytes)
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_le_bytes)
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_le_bytes)
}

pub fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    array(b, at).map(i32::from_le_bytes)
}

/// The eight-byte words of `b` (a trailing partial word is left out).
pub fn words(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).filter_map(|c| u64_at(c, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_none() {
        let b = [1u8, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(u64_at(&b, 0), Some(1));
        assert_eq!(u64_at(&b, 2), None);
        assert_eq!(u32_at(&b, usize::MAX), None);
        assert_eq!(words(&b).collect::<Vec<_>>(), vec![1]);
    }
}
