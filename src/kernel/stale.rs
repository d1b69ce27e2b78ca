//! Control blocks an earlier boot left in RAM.
//!
//! A guest that reboots without its QEMU process restarting (an in-guest
//! `reboot`, a watchdog, a crash with `panic=N`) keeps its RAM: the old
//! kernel's image, control block included, stays where it was until the
//! new kernel happens to reuse those pages. With KASLR the new kernel is
//! elsewhere, so two control blocks pass validation, which on its own is
//! what a decoy looks like.
//!
//! A kernel that runs advances two counters in its own memory: the
//! heartbeat of the xftrace thread (1 to 50 times a second) and `jiffies_64`
//! (read through the kernel's own page tables, where its timer code writes
//! it). A block whose two counters both stay put for [`WINDOW`] while
//! exactly one other block's counters move belongs to a kernel that no
//! longer runs: it is set aside as stale, and the live one is driven. Any
//! other outcome (two that move, none that moves, a counter that cannot
//! be read) keeps every block, and the caller refuses a decoy as before.
//!
//! Stale values never change, so the ones seen are remembered in the
//! guest's state directory ([`Frozen`]): a later command that finds the
//! same block with the same values does not wait again.
//!
//! What it cannot tell: a guest kernel that stops both its heartbeat and
//! the `jiffies_64` its page tables map while it keeps running (by
//! patching its timer code or remapping that page) and plants a live
//! decoy would be taken for a reboot. Such a guest already controls its
//! kernel; the stale blocks are named in `status` and by `check`, so that
//! an operator sees them.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

use log::{debug, info};
use serde::{Deserialize, Serialize};

use crate::abi;
use crate::guest::addr::{LinkAddr, VirtAddr};
use crate::guest::memory::GuestRam;
use crate::kernel::locate::GuestKernel;
use crate::kernel::symbols::SystemMap;

/// How long a block's counters must stay put to call it stale. The
/// heartbeat alone moves at least once a second in guest time (50 times
/// while tracing), and jiffies with every tick of a CPU that is awake; a
/// TCG guest under load runs several times slower.
pub const WINDOW: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(50);
/// Remembered stale blocks, at most (`locate` keeps at most 8 blocks).
const MAX_REMEMBERED: usize = 16;

/// A stale block as last seen: where, its two counters, and since when
/// (Unix seconds) they have held these values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frozen {
    pub ctl: u64,
    pub heartbeat: u64,
    pub jiffies: u64,
    pub since: f64,
}

/// Blocks sorted into the live kernel (or all of them, undecided) and the
/// stale ones, with what to remember of the latter.
#[derive(Debug)]
pub struct Sorted {
    pub live: Vec<GuestKernel>,
    pub stale: Vec<GuestKernel>,
    pub frozen: Vec<Frozen>,
}

/// The heartbeat and `jiffies_64` of the kernel of `k`.
fn pulse(ram: &GuestRam, map: &SystemMap, k: &GuestKernel) -> Option<(u64, u64)> {
    // A stock kernel has no heartbeat: its jiffies alone say.
    let heartbeat = match &k.tracer {
        Some(c) => ram.read_u64(c.field(abi::off::HEARTBEAT)).ok()?,
        None => 0,
    };
    let va = k.slide.runtime(LinkAddr(map.addr("jiffies_64")?)).0;
    let gpa = k.page_tables(ram).translate(VirtAddr(va))?;
    Some((heartbeat, ram.read_u64(gpa).ok()?))
}

/// Which of `kernels` (each with its build's System.map) runs: the first
/// whose `jiffies_64` (or heartbeat) moves within [`WINDOW`], polled every
/// 50 ms, so a running kernel answers at its next tick. None: none moves
/// (or none can be read). A stock kernel that rebooted into another
/// version leaves its image in RAM as a copy that stands still
/// ([`crate::kernel::target`] then looks for the other).
pub fn first_moving(ram: &GuestRam, kernels: &[(&SystemMap, &GuestKernel)]) -> Option<usize> {
    let first: Vec<Option<(u64, u64)>> = kernels.iter().map(|(m, k)| pulse(ram, m, k)).collect();
    let start = Instant::now();
    loop {
        std::thread::sleep(POLL);
        for (i, (m, k)) in kernels.iter().enumerate() {
            if let (Some(a), Some(b)) = (first[i], pulse(ram, m, k)) {
                if a != b {
                    return Some(i);
                }
            }
        }
        if start.elapsed() >= WINDOW {
            return None;
        }
    }
}

/// Sort `kernels` (as `locate_all` found them) given the stale blocks
/// remembered from earlier (`known`) and the time now (Unix seconds).
pub fn sort(
    ram: &GuestRam,
    map: &SystemMap,
    kernels: Vec<GuestKernel>,
    known: &[Frozen],
    now: f64,
) -> Sorted {
    let undecided = |kernels: Vec<GuestKernel>| Sorted {
        live: kernels,
        stale: Vec::new(),
        frozen: Vec::new(),
    };
    if kernels.len() < 2 {
        return undecided(kernels);
    }
    let Some(first) = kernels
        .iter()
        .map(|k| pulse(ram, map, k))
        .collect::<Option<Vec<_>>>()
    else {
        return undecided(kernels);
    };
    let window = WINDOW.as_secs_f64();
    // Already known to be stale: the same values, held long enough.
    let remembered = |i: usize| {
        let (heartbeat, jiffies) = first[i];
        known.iter().find(|f| {
            f.ctl == kernels[i].id()
                && f.heartbeat == heartbeat
                && f.jiffies == jiffies
                && now - f.since >= window
        })
    };
    let mut stale: Vec<bool> = (0..kernels.len())
        .map(|i| remembered(i).is_some())
        .collect();
    let mut moved = vec![false; kernels.len()];
    // One block left: it is the kernel (a paused guest's too, as when
    // there is only one block).
    if stale.iter().filter(|&&s| !s).count() > 1 {
        let start = Instant::now();
        let mut unreadable = false;
        while !unreadable {
            std::thread::sleep(POLL);
            for (i, k) in kernels.iter().enumerate() {
                if stale[i] || moved[i] {
                    continue;
                }
                match pulse(ram, map, k) {
                    Some(p) if p == first[i] => {}
                    Some(_) => moved[i] = true,
                    None => unreadable = true,
                }
            }
            if moved.iter().filter(|&&m| m).count() > 1 || start.elapsed() >= WINDOW {
                break;
            }
        }
        if unreadable {
            return undecided(kernels);
        }
        for (s, m) in stale.iter_mut().zip(&moved) {
            *s = !*m;
        }
    }
    if stale.iter().filter(|&&s| !s).count() != 1 {
        debug!(
            "{} control blocks, {} of them moving: none set aside",
            kernels.len(),
            moved.iter().filter(|&&m| m).count()
        );
        return undecided(kernels);
    }
    let mut out = Sorted {
        live: Vec::new(),
        stale: Vec::new(),
        frozen: Vec::new(),
    };
    for (i, k) in kernels.into_iter().enumerate() {
        if !stale[i] {
            out.live.push(k);
            continue;
        }
        let (heartbeat, jiffies) = first[i];
        let since = known
            .iter()
            .find(|f| f.ctl == k.id() && f.heartbeat == heartbeat && f.jiffies == jiffies)
            .map_or(now, |f| f.since);
        info!(
            "{} is an earlier boot's (its heartbeat and jiffies stand still): ignored",
            k.place()
        );
        if out.frozen.len() < MAX_REMEMBERED {
            out.frozen.push(Frozen {
                ctl: k.id(),
                heartbeat,
                jiffies,
                since,
            });
        }
        out.stale.push(k);
    }
    out
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;
    use crate::kernel::locate::tests::{pa_of, place_kernel, synthetic_guest, SLIDE, TEXT_PA};
    use crate::kernel::locate::{locate_all, LocateOptions};
    use std::sync::atomic::{AtomicBool, Ordering};

    const OLD_PA: u64 = TEXT_PA + (32 << 20);

    /// A guest with a live kernel at TEXT_PA and a copy at OLD_PA; while
    /// `f` runs, a thread advances the counters of the kernels at `moving`.
    fn with_two<T>(
        moving: &[u64],
        f: impl FnOnce(&GuestRam, &SystemMap, Vec<GuestKernel>) -> T,
    ) -> T {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        place_kernel(&ram, &map, OLD_PA, SLIDE);
        let kernels = locate_all(&ram, &map, None, LocateOptions::default())
            .unwrap()
            .kernels;
        assert_eq!(kernels.len(), 2);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    n += 1;
                    for &pa in moving {
                        let ctl = pa_of(&map, pa, "xftrace_control");
                        ram.write_u64(GuestAddress(ctl + abi::off::HEARTBEAT), n)
                            .unwrap();
                        let j = pa_of(&map, pa, "jiffies_64");
                        ram.write_u64(GuestAddress(j), 1000 + n).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let r = f(&ram, &map, kernels);
            done.store(true, Ordering::Relaxed);
            r
        })
    }

    #[test]
    fn the_block_that_stands_still_is_set_aside() {
        with_two(&[TEXT_PA], |ram, map, kernels| {
            let s = sort(ram, map, kernels, &[], 100.0);
            assert_eq!(s.live.len(), 1);
            assert_eq!(s.live[0].text_pa, GuestAddress(TEXT_PA));
            assert_eq!(s.stale.len(), 1);
            assert_eq!(s.stale[0].text_pa, GuestAddress(OLD_PA));
            assert_eq!(s.frozen.len(), 1);
            assert_eq!(s.frozen[0].ctl, s.stale[0].id());
            assert_eq!(s.frozen[0].since, 100.0);
        });
    }

    #[test]
    fn the_kernel_that_runs_is_the_one_whose_counters_move() {
        with_two(&[OLD_PA], |ram, map, kernels| {
            let both: Vec<(&SystemMap, &GuestKernel)> = kernels.iter().map(|k| (map, k)).collect();
            let i = first_moving(ram, &both).expect("one moves");
            assert_eq!(kernels[i].text_pa, GuestAddress(OLD_PA));
        });
        with_two(&[], |ram, map, kernels| {
            let both: Vec<(&SystemMap, &GuestKernel)> = kernels.iter().map(|k| (map, k)).collect();
            let t = Instant::now();
            assert_eq!(first_moving(ram, &both), None);
            assert!(t.elapsed() >= WINDOW);
        });
    }

    #[test]
    fn two_live_blocks_or_none_are_not_sorted() {
        with_two(&[TEXT_PA, OLD_PA], |ram, map, kernels| {
            let s = sort(ram, map, kernels, &[], 0.0);
            assert_eq!((s.live.len(), s.stale.len()), (2, 0));
        });
        with_two(&[], |ram, map, kernels| {
            let s = sort(ram, map, kernels, &[], 0.0);
            assert_eq!((s.live.len(), s.stale.len()), (2, 0));
        });
    }

    #[test]
    fn a_remembered_stale_block_is_not_waited_for_again() {
        let (frozen, _) = with_two(&[TEXT_PA], |ram, map, kernels| {
            let s = sort(ram, map, kernels, &[], 100.0);
            (s.frozen, s.stale)
        });
        // The same values seen a window later: known, no wait.
        with_two(&[], |ram, map, kernels| {
            let mut known = frozen.clone();
            // The copy in this fresh image has never moved: heartbeat 0,
            // jiffies 0.
            known[0].heartbeat = 0;
            known[0].jiffies = 0;
            let t = Instant::now();
            let s = sort(ram, map, kernels.clone(), &known, 100.0 + 2.0);
            assert!(t.elapsed() < WINDOW, "{:?}", t.elapsed());
            assert_eq!(s.live[0].text_pa, GuestAddress(TEXT_PA));
            assert_eq!(s.stale[0].text_pa, GuestAddress(OLD_PA));
            assert_eq!(s.frozen[0].since, 100.0);
            // Seen too recently, or with other values: watched again (and
            // here nothing moves, so nothing is set aside).
            let s = sort(ram, map, kernels.clone(), &known, 100.5);
            assert_eq!(s.stale.len(), 0);
            known[0].jiffies = 7;
            let s = sort(ram, map, kernels, &known, 200.0);
            assert_eq!(s.stale.len(), 0);
        });
    }
}
