//! The kernel's taint flags (`tainted_mask`, and each module's `taints`),
//! named as Linux 6.1's `taint_flags` table names them.
#![deny(clippy::arithmetic_side_effects)]

use super::guest::KernelView;

/// Linux 6.1's taint letters, by bit (`include/linux/panic.h`).
const LETTERS: [char; 18] = [
    'P', 'F', 'S', 'R', 'M', 'B', 'U', 'D', 'A', 'W', 'C', 'I', 'O', 'E', 'L', 'K', 'X', 'T',
];

/// `0x3000 (O E)`: the mask and the letters of its known bits.
pub fn describe(mask: u64) -> String {
    let letters: Vec<String> = (0..64u32)
        .filter(|b| mask >> b & 1 == 1)
        .map(|b| {
            usize::try_from(b)
                .ok()
                .and_then(|i| LETTERS.get(i))
                .map_or_else(|| format!("bit{b}"), char::to_string)
        })
        .collect();
    if letters.is_empty() {
        return "0 (not tainted)".into();
    }
    format!("{mask:#x} ({})", letters.join(" "))
}

/// The guest kernel's `tainted_mask` (None where it cannot be read).
pub fn mask(v: &KernelView) -> Option<u64> {
    v.read_word(v.sym("tainted_mask")?)
}

/// A module's `taints` (None without the build's BTF, or unreadable).
pub fn of_module(v: &KernelView, module: u64) -> Option<u64> {
    let off = v.field("module", &["taints"])?;
    v.read_word(module.checked_add(off)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_are_named_as_the_kernel_names_them() {
        assert_eq!(describe(0), "0 (not tainted)");
        assert_eq!(describe(0x3000), "0x3000 (O E)");
        assert_eq!(describe(1 | 1 << 17 | 1 << 40), "0x10000020001 (P T bit40)");
    }
}
