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
            || cx.deferred_callbacks(),
            out,
        );
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        pointer_inventory(cx, &cx.deferred_callbacks().pointers)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::btf::Btf;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{
        census_btf, put_link, synthetic_guest, unit_build, UNIT_MAP, UNIT_SLIDE,
    };

    /// A timer whose function leads outside the kernel is reported only if
    /// it is still pending when the check looks again: one that fired and
    /// whose memory was reused while the census read it (its "function" a
    /// word of the new owner, which holds still) is not.
    #[test]
    fn a_timer_is_reported_only_if_a_second_census_still_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff81800000 T _etext\n0000000000001000 D timer_bases\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let layouts = Btf::parse(&census_btf()).unwrap();
        let mut view = KernelView::new(&ram, &map, &k);
        view.btf = Some(&layouts);
        let cx = Context::new(view, &vmlinux, &state);
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let va = |link: u64| link + UNIT_SLIDE;
        // One CPU whose timer_bases (256 bytes, vectors at 64) is at
        // `base`; a timer (entry at 0, function at 24) in its first bucket,
        // and one in the second.
        let (base, t1, t2) = (
            0xffff_ffff_8230_0000u64,
            0xffff_ffff_8230_1000u64,
            0xffff_ffff_8230_2000u64,
        );
        put(0xffff_ffff_8200_5100, 1); // nr_cpu_ids
        put(0xffff_ffff_8200_5140, va(base) - 0x1000); // __per_cpu_offset[0]
        put(base + 64, va(t1));
        put(t1 + 24, 0xffff_8880_2756_cd00);
        put(base + 72, va(t2));
        put(t2 + 24, 0xffff_8880_dead_0000);
        let run = |again: &dyn Fn()| {
            let mut all = Vec::new();
            run_census(
                &cx,
                "timers",
                &cx.deferred_callbacks(),
                || {
                    again();
                    cx.deferred_callbacks()
                },
                &mut Report::new(FindingKind::DeferredCode, &mut all),
            );
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        let both = run(&|| {});
        assert_eq!(both.len(), 2, "{both:#?}");
        assert!(
            both.iter()
                .all(|d| d.starts_with("a timer on CPU 0: function points to")),
            "{both:#?}"
        );
        // t1 fires and its memory goes to another object while the census
        // reads it: gone from the wheel, its old function word unchanged.
        // t2 is re-armed into another bucket: still pending, still found.
        let got = run(&|| {
            put(base + 64, 0);
            put(base + 72, 0);
            put(base + 80, va(t2));
        });
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("0xffff8880dead0000"), "{got:#?}");
        // A hook that swaps its timer between two functions of its own is
        // still reported; one put back to the kernel's is not.
        put(base + 64, va(t1));
        let got = run(&|| put(t1 + 24, 0xffff_8880_0000_1000));
        assert_eq!(got.len(), 2, "{got:#?}");
        let got = run(&|| put(t1 + 24, va(0xffff_ffff_8120_0000)));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("0xffff8880dead0000"), "{got:#?}");
    }
}
