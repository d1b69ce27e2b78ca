//! The hook inventory (`hooks.json` in the guest's state directory): what
//! the clean guest had hooked when its baseline was taken, one line per
//! hook by a module the build does not ship and per BPF program. Checks
//! that judge hooks read it ([`load`]); `baseline` writes it ([`save`])
//! from every check's [`crate::detect::checks::Check::inventory`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::base::error::Result;
use crate::host::statedir::GuestDir;

fn path(dir: &GuestDir) -> PathBuf {
    dir.path().join("hooks.json")
}

/// The baseline's inventory; None without a baseline (or an unreadable
/// one).
pub fn load(dir: &GuestDir) -> Option<BTreeSet<String>> {
    dir.read_json(&path(dir))
}

/// Replace the inventory with `lines`.
pub fn save(dir: &GuestDir, lines: &BTreeSet<String>) -> Result<()> {
    dir.write_json(&path(dir), lines)
}

/// What a finding says of a hook missing from the inventory `known`.
pub fn missing(known: &Option<BTreeSet<String>>) -> &'static str {
    if known.is_some() {
        "not in the baseline's hook inventory"
    } else {
        "no hook inventory: take a baseline of the clean guest"
    }
}
