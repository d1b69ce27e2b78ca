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

/// The kernel's lockdown level (`kernel_locked_down`, an `enum
/// lockdown_reason`): `Ok(None)` where the build has no lockdown LSM,
/// `Err` where it cannot be read.
pub fn lockdown(v: &KernelView) -> Result<Option<u32>, String> {
    let Some(at) = v.sym("kernel_locked_down") else {
        return Ok(None);
    };
    v.read_u32(at)
        .map(Some)
        .ok_or_else(|| format!("cannot read kernel_locked_down at {at:#x}"))
}

/// A lockdown level as the kernel names it: `none`, `integrity`,
/// `confidentiality`, or the number (the enum's values come from the
/// build's BTF: they differ between 6.1 releases).
pub fn describe_lockdown(v: &KernelView, level: u32) -> String {
    let e = |n: &str| v.btf.and_then(|b| b.enumerator(n));
    match i64::from(level) {
        0 => "none".into(),
        l if Some(l) == e("LOCKDOWN_INTEGRITY_MAX") => "integrity".into(),
        l if Some(l) == e("LOCKDOWN_CONFIDENTIALITY_MAX") => "confidentiality".into(),
        l => format!("level {l}"),
    }
}

/// Whether the kernel enforces module signatures (`sig_enforce`, set by
/// `module.sig_enforce=1` or Secure Boot, never cleared): `Ok(None)` where
/// the build has no module signing.
pub fn sig_enforce(v: &KernelView) -> Result<Option<bool>, String> {
    let Some(at) = v.sym("sig_enforce") else {
        return Ok(None);
    };
    let mut b = [0u8; 1];
    v.read_bytes(at, &mut b)
        .map(|()| Some(b[0] != 0))
        .map_err(|e| format!("cannot read sig_enforce at {at:#x}: {e}"))
}

/// What `status` says of the kernel's self-protection state: its taint
/// flags, lockdown level and module signature enforcement.
pub fn status_lines(v: &KernelView) -> Vec<String> {
    let mut out = Vec::new();
    match mask(v) {
        Some(t) => out.push(format!("tainted:    {}", describe(t))),
        None if v.sym("tainted_mask").is_some() => {
            out.push("tainted:    unreadable (tainted_mask)".into())
        }
        None => {}
    }
    out.push(format!(
        "lockdown:   {}",
        match lockdown(v) {
            Ok(Some(l)) => describe_lockdown(v, l),
            Ok(None) => "not in this build (no lockdown LSM)".into(),
            Err(e) => format!("unreadable: {e}"),
        }
    ));
    out.push(format!(
        "module signatures: {}",
        match sig_enforce(v) {
            Ok(Some(true)) => "enforced".to_string(),
            Ok(Some(false)) => "not enforced".into(),
            Ok(None) => "not in this build (no module signing)".into(),
            Err(e) => format!("unreadable: {e}"),
        }
    ));
    out
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
