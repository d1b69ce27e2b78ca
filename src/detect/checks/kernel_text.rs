//! All of the kernel's text against the trusted build: an inline hook in any
//! function (a jump written over its first bytes, a call re-aimed in its
//! body) changes bytes the kernel itself never changes. Compared byte for
//! byte except where the build's tables, the static call trampolines and
//! ftrace's callers say the kernel patches itself (see
//! [`crate::kernel::text`]). The system call path is the
//! `syscall-dispatch` check's to report.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::kernel::patching;
use crate::kernel::text::{compare_image_code, syscall_path};

pub struct KernelText;

impl Check for KernelText {
    fn kind(&self) -> FindingKind {
        FindingKind::KernelText
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some(range) = text_range(cx) else {
            out.add(
                "the build has no .text between _text and _etext: cannot check the kernel's code",
                &[],
                "",
            );
            return;
        };
        let skip: Vec<(u64, u64)> = syscall_path(cx.map())
            .iter()
            .map(|r| (r.link, r.link.saturating_add(r.len)))
            .collect();
        let extra = patching::symbol_sites(cx.map(), range.0, range.1);
        let mut found = Vec::new();
        compare_image_code(&cx.image(), range, extra, &skip, &mut found);
        out.differences(found);
    }
}

/// Link-time `[_text, _etext)`, within the build's `.text` section (the
/// pages after `_etext` are freed at boot).
fn text_range(cx: &Context) -> Option<(u64, u64)> {
    let (s, e) = cx.vmlinux.section_range(".text")?;
    let start = cx.map().addr("_text")?.max(s);
    let end = cx.map().addr("_etext")?.min(e);
    (start < end).then_some((start, end))
}
