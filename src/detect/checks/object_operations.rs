//! Operation pointers of the kernel's objects (walks in
//! `kernel::objects`): every super block and mount root, the dentries and
//! inodes of pseudo file systems, proc entries, open files, sockets,
//! network devices, protocol handlers, TTY drivers and line disciplines,
//! executable formats, consoles, character and misc devices.
//! An operation-table pointer must lead to a table the kernel image or a
//! module the build ships defines; a callback to a function's entry in
//! that code. A pointer swapped for a copy of its table (in the heap or in
//! a module) or for a rootkit's function is a finding naming the object
//! and the member. A module outside the build is allowed where the
//! baseline's inventory (`hooks.json`) saw it.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{pointer_inventory, run_census, Check, Context, Report};
use crate::detect::FindingKind;

pub struct ObjectOperations;

impl Check for ObjectOperations {
    fn kind(&self) -> FindingKind {
        FindingKind::ObjectOperations
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        run_census(
            cx,
            "kernel objects",
            cx.objects(),
            || cx.object_operations(),
            out,
        );
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        pointer_inventory(cx, &cx.objects().pointers)
    }
}
