//! The kernel's read-only data against the trusted build: constant
//! operation tables, dispatch tables and strings a rootkit rewrites to
//! redirect or hide. `.rodata` is compared byte for byte with KASLR's
//! relocations applied, except `__ro_after_init` (written during boot:
//! sorted jump tables, static call sites, variables set once) and the
//! tables other checks report on.
#![deny(clippy::arithmetic_side_effects)]

use super::{data_place, Check, Context, Report, OPERATION_TABLES};
use crate::detect::FindingKind;
use crate::kernel::text::{changed_runs, relocated, subtract, Runs};

pub struct KernelRodata;

/// Bytes compared at once.
const PIECE: u64 = 256 << 10;
/// Changed bytes this close together are one change.
const GAP: usize = 8;

impl Check for KernelRodata {
    fn kind(&self) -> FindingKind {
        FindingKind::KernelRodata
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let Some((start, end)) = cx.vmlinux.section_range(".rodata") else {
            out.add(
                "the build has no .rodata: cannot check the kernel's read-only data",
                &[],
                "",
            );
            return;
        };
        let relocs = match cx.vmlinux.kaslr_relocations(start, end) {
            Ok(mut r) => {
                r.sort_by_key(|x| x.addr);
                r
            }
            Err(e) => {
                out.add(
                    format!("cannot check the kernel's read-only data: {e}"),
                    &[],
                    "",
                );
                return;
            }
        };
        let mut changes = Vec::new();
        for (a, b) in spans(cx, (start, end)) {
            let mut p = a;
            while p < b {
                let q = p.saturating_add(PIECE).min(b);
                let r =
                    relocs.partition_point(|x| x.addr < p)..relocs.partition_point(|x| x.addr < q);
                compare(
                    cx,
                    p,
                    q,
                    &relocs[r],
                    &mut Report::new(out.kind(), &mut changes),
                );
                p = q;
            }
        }
        out.capped(changes, "the kernel's read-only data");
    }
}

/// `.rodata` less `__ro_after_init` and the tables other checks compare.
fn spans(cx: &Context, (start, end): (u64, u64)) -> Vec<(u64, u64)> {
    let map = cx.map();
    let mut skip = Vec::new();
    if let (Some(s), Some(e)) = (
        map.addr("__start_ro_after_init"),
        map.addr("__end_ro_after_init"),
    ) {
        skip.push((s, e));
    }
    let tables = [
        "sys_call_table",
        "ia32_sys_call_table",
        "x32_sys_call_table",
    ];
    for t in tables.iter().chain(OPERATION_TABLES) {
        if let (Some(a), Some(n)) = (map.addr(t), map.extent(t)) {
            skip.push((a, a.saturating_add(n)));
        }
    }
    subtract((start, end), &skip)
}

fn compare(
    cx: &Context,
    link: u64,
    end: u64,
    relocs: &[crate::kernel::vmlinux::Reloc],
    out: &mut Report,
) {
    let len = end.saturating_sub(link);
    let runtime = cx.runtime(link);
    let Ok(n) = usize::try_from(len) else {
        return;
    };
    let mut live = vec![0u8; n];
    let (Some(built), Some(())) = (cx.vmlinux.bytes(link, len), cx.read(runtime, &mut live)) else {
        out.add(
            format!("cannot read the kernel's read-only data at {runtime:#x}"),
            &[runtime],
            "",
        );
        return;
    };
    let want = relocated(&built, link, relocs, cx.slide());
    // One change: differing bytes with gaps under GAP between them.
    for (i, end) in changed_runs(&want, &live, Runs::Bytes { gap: GAP }) {
        let at = link.saturating_add(i as u64);
        let place = data_place(cx, at);
        // A word-aligned pointer that changed: say where it points now.
        let w = i & !7;
        let now = live
            .get(w..w.saturating_add(8))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .filter(|&p| p >> 47 == 0x1ffff);
        let last = end.min(i.saturating_add(32));
        out.add(
            match now {
                Some(p) => format!(
                    "{place} differs from the build: now points to {}",
                    cx.name(p)
                ),
                None => format!("{place} differs from the build"),
            },
            &[runtime.wrapping_add(i as u64)],
            format!(
                "live {:02x?}, built {:02x?}",
                &live[i..last],
                &want[i..last]
            ),
        );
    }
}
