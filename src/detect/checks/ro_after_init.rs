//! `__ro_after_init` data: written during boot (sorted jump tables, static
//! call sites, variables set once, LSM hook lists), read-only from then on.
//! It cannot be compared with the build, so it is compared with a snapshot
//! taken once the guest has booted (`system_state` is `SYSTEM_RUNNING`),
//! kept per boot in the guest's state directory; the boot is known by an
//! identity the host writes into the control block (docs/abi.md §2.1), not
//! by the guest's clock. Independently of any
//! snapshot, no word there that was a pointer or zero in the build may point
//! into module space: modules load after the data became read-only.
#![deny(clippy::arithmetic_side_effects)]

use log::info;

use super::{data_place, Check, Context, Report};
use crate::abi::le;
use crate::detect::FindingKind;
use crate::kernel::text::{changed_runs, Runs};

pub struct RoAfterInit;

/// The data is tens to hundreds of KiB; a build with more is not trusted
/// to be compared in one read.
const MAX_LEN: u64 = 16 << 20;
/// Where x86_64 maps modules (and BPF JIT images): `MODULES_VADDR` (with
/// or without KASLR's larger image) to `MODULES_END`.
const MODULE_SPACE: (u64, u64) = (0xffff_ffff_a000_0000, 0xffff_ffff_ff00_0000);
const MAGIC: &[u8; 8] = b"XFTROAI2";
/// Magic, slide, `_text`'s physical address, the boot's `boot_id`.
const HEADER: usize = 32;

impl Check for RoAfterInit {
    fn kind(&self) -> FindingKind {
        FindingKind::RoAfterInit
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let map = cx.map();
        let (Some(start), Some(end)) = (
            map.addr("__start_ro_after_init"),
            map.addr("__end_ro_after_init"),
        ) else {
            return; // a kernel without the section
        };
        let len = end.saturating_sub(start);
        if len == 0 || len > MAX_LEN {
            return;
        }
        let runtime = cx.runtime(start);
        let Ok(n) = usize::try_from(len) else {
            return;
        };
        let mut live = vec![0u8; n];
        let (Some(built), Some(())) = (cx.vmlinux.bytes(start, len), cx.read(runtime, &mut live))
        else {
            out.add(
                "cannot read __ro_after_init data from the guest or the build",
                &[runtime],
                "",
            );
            return;
        };
        let mut found = Vec::new();
        let seen = module_pointers(
            cx,
            start,
            &built,
            &live,
            &mut Report::new(out.kind(), &mut found),
        );
        against_snapshot(
            cx,
            start,
            &live,
            &seen,
            &mut Report::new(out.kind(), &mut found),
        );
        out.capped(found, "__ro_after_init data");
    }
}

/// Words the build had as pointers (KASLR moves them) or as zero (set at
/// boot), now aimed into module space. Relative tables (`__jump_table`,
/// `.static_call_sites`) and byte data hold neither.
/// Returns the link-time addresses reported.
fn module_pointers(
    cx: &Context,
    start: u64,
    built: &[u8],
    live: &[u8],
    out: &mut Report,
) -> std::collections::BTreeSet<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let end = start.saturating_add(built.len() as u64);
    let pointers = cx.vmlinux.pointer_words(start, end);
    for (i, (b, l)) in le::words(built).zip(le::words(live)).enumerate() {
        let at = start.saturating_add((i as u64).saturating_mul(8));
        let in_modules = l >= MODULE_SPACE.0 && l < MODULE_SPACE.1 && !cx.in_image(l);
        if in_modules && (b == 0 || pointers.contains(&at)) {
            seen.insert(at);
            out.add(
                format!(
                    "{} points to {}: modules load after __ro_after_init data is sealed",
                    data_place(cx, at),
                    cx.name(l)
                ),
                &[cx.runtime(at), l],
                format!("live {l:#x}, built {b:#x}"),
            );
        }
    }
    seen
}

/// Compare with this boot's snapshot (words in `seen` are reported
/// already), or take it.
fn against_snapshot(
    cx: &Context,
    start: u64,
    live: &[u8],
    seen: &std::collections::BTreeSet<u64>,
    out: &mut Report,
) {
    let k = cx.view.kernel;
    let running = cx.system_running();
    // The boot is known by the identity the host wrote into the control
    // block (docs/abi.md §2.1), not by the guest's clock.
    // A stock kernel has no control block to hold one: its boot is known
    // by where it lies (slide and physical base) alone.
    let id_at = k.tracer.as_ref().map(|c| c.field(crate::abi::off::BOOT_ID));
    let boot_id = id_at.and_then(|a| cx.view.ram.read_u64(a).ok());
    let path = cx.dir.path().join("ro-after-init.snapshot");
    let saved =
        crate::host::files::read_bounded(&path, MAX_LEN.saturating_add(HEADER as u64), "snapshot")
            .ok();
    // The last snapshot, if it is of a kernel that lies where this one
    // does: its boot's identity and its bytes.
    let last = saved.as_deref().and_then(|s| {
        let (h, body) = (s.get(..HEADER)?, s.get(HEADER..)?);
        let slide = le::u64_at(h, 8)?;
        let text_pa = le::u64_at(h, 16)?;
        let id = le::u64_at(h, 24)?;
        (h.get(..8)? == MAGIC
            && slide == k.slide.0
            && text_pa == k.text_pa.0
            && body.len() == live.len())
        .then_some((id, body))
    });
    match last {
        Some((id, snap)) if id != 0 && boot_id == Some(id) => {
            diff(cx, start, snap, live, seen, "this boot's snapshot", out)
        }
        Some((_, snap)) if id_at.is_none() => diff(
            cx,
            start,
            snap,
            live,
            seen,
            "the snapshot of the kernel that lay where this one lies",
            out,
        ),
        _ if !running => {
            info!("the guest is still booting: no snapshot of __ro_after_init data yet")
        }
        last => {
            // A new boot, or this boot's identity erased: the kernel
            // lying where it lay says which is likelier, and either way
            // what changed is reported before it becomes the snapshot.
            if let Some((_, snap)) = last {
                diff(
                    cx,
                    start,
                    snap,
                    live,
                    seen,
                    "the last snapshot, of a boot whose identity is gone while the kernel lies where it lay (erased from the control block, or a reboot onto the same KASLR slide)",
                    out,
                );
            }
            let id = match (id_at, new_boot_id()) {
                (None, _) => 0,
                (Some(_), None) => {
                    out.add("cannot get random bytes for a boot identity", &[], "");
                    return;
                }
                (Some(at), Some(id)) => {
                    if let Err(e) = cx.view.ram.write_u64(at, id) {
                        out.add(
                            format!("cannot write the boot identity into the control block: {e}"),
                            &[],
                            "",
                        );
                        return;
                    }
                    id
                }
            };
            let mut s = Vec::with_capacity(HEADER.saturating_add(live.len()));
            s.extend_from_slice(MAGIC);
            s.extend_from_slice(&k.slide.0.to_le_bytes());
            s.extend_from_slice(&k.text_pa.0.to_le_bytes());
            s.extend_from_slice(&id.to_le_bytes());
            s.extend_from_slice(live);
            match crate::host::files::write_atomically(&path, &s) {
                Ok(()) => info!(
                    "took this boot's snapshot of __ro_after_init data ({} bytes) in {}",
                    live.len(),
                    path.display()
                ),
                Err(e) => out.add(
                    format!("cannot keep a snapshot of __ro_after_init data: {e}"),
                    &[],
                    "",
                ),
            }
        }
    }
}

/// A random, non-zero boot identity.
fn new_boot_id() -> Option<u64> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).ok()?;
    Some(u64::from_le_bytes(b) | 1)
}

/// Report each run of bytes that differs from the snapshot.
fn diff(
    cx: &Context,
    start: u64,
    snap: &[u8],
    live: &[u8],
    seen: &std::collections::BTreeSet<u64>,
    since: &str,
    out: &mut Report,
) {
    // Word by word: pointers change whole.
    for (w, j) in changed_runs(snap, live, Runs::Words) {
        let at = start.saturating_add(w as u64);
        let now = le::u64_at(live, w).unwrap_or(0);
        let was = le::u64_at(snap, w).unwrap_or(0);
        let last = j.min(w.saturating_add(32));
        if seen.contains(&at) {
            continue;
        }
        out.add(
            format!(
                "{} changed since {since}: {} where it held {}",
                data_place(cx, at),
                describe(cx, now),
                describe(cx, was)
            ),
            &[cx.runtime(at)],
            format!(
                "live {:02x?}, snapshot {:02x?}",
                &live[w..last],
                &snap[w..last]
            ),
        );
    }
}

/// A word as a pointer into code, or as a value.
fn describe(cx: &Context, v: u64) -> String {
    if v >> 47 == 0x1ffff {
        format!("a pointer to {}", cx.name(v))
    } else {
        format!("{v:#x}")
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{put_link, synthetic_guest, unit_build, UNIT_MAP};

    /// A rootkit that changes `__ro_after_init` data and then erases the
    /// boot's identity (or sets the guest's clock back, which no longer
    /// counts) cannot have its change taken into a new snapshot unseen.
    #[test]
    fn an_erased_boot_identity_does_not_rebaseline_a_change_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!(
            "{UNIT_MAP}ffffffff81000800 D __start_ro_after_init\nffffffff81000900 D __end_ro_after_init\nffffffff82100000 D system_state\nffffffff82100008 D jiffies_64\n"
        ))
        .unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let check = || {
            let cx = Context::new(
                crate::kernel::guest::KernelView::new(&ram, &map, &k),
                &vmlinux,
                &state,
            );
            let mut all = Vec::new();
            RoAfterInit.run(&cx, &mut Report::new(FindingKind::RoAfterInit, &mut all));
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        put(
            0xffff_ffff_8210_0000,
            u64::from(super::super::SYSTEM_RUNNING),
        );
        put(0xffff_ffff_8210_0008, 1_000_000);
        // The first check takes the boot's snapshot and marks the boot.
        assert_eq!(check(), Vec::<String>::new());
        let id_at = k.control().unwrap().field(crate::abi::off::BOOT_ID);
        let id = ram.read_u64(id_at).unwrap();
        assert_ne!(id, 0);
        assert_eq!(check(), Vec::<String>::new());
        // A change: reported against this boot's snapshot.
        put(0xffff_ffff_8100_0840, 0x4141_4141);
        let got = check();
        assert!(
            got.len() == 1 && got[0].contains("since this boot's snapshot"),
            "{got:#?}"
        );
        // The clock set back: still the same boot.
        put(0xffff_ffff_8210_0008, 5);
        let got = check();
        assert!(
            got.len() == 1 && got[0].contains("since this boot's snapshot"),
            "{got:#?}"
        );
        // The identity erased: the change is reported once more, against
        // the last snapshot, before a new one is taken with a new identity.
        ram.write_u64(id_at, 0).unwrap();
        let got = check();
        assert!(
            got.len() == 1 && got[0].contains("whose identity is gone"),
            "{got:#?}"
        );
        let new = ram.read_u64(id_at).unwrap();
        assert!(new != 0 && new != id);
        assert_eq!(check(), Vec::<String>::new());
    }
}
