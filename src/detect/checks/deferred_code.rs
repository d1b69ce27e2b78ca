//! Code the kernel runs later on someone's behalf (walks in
//! `kernel::objects`): kernel threads' start functions, pending timers and
//! hrtimers of every CPU (a delayed work item's timer followed to its
//! work), queued work items and what each worker runs now, tasklets and
//! IRQ handlers. Each must be a function of the kernel or of a module the
//! build ships; a module outside the build is allowed where the
//! baseline's inventory (`hooks.json`) saw it.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{pointer_inventory, run_census, Check, Context, Report};
use crate::detect::FindingKind;

pub struct DeferredCode;

impl Check for DeferredCode {
    fn kind(&self) -> FindingKind {
        FindingKind::DeferredCode
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        run_census(
            cx,
            "timers, work items, threads and IRQ handlers",
            &cx.deferred_callbacks(),
            out,
        );
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        pointer_inventory(cx, &cx.deferred_callbacks().pointers)
    }
}
