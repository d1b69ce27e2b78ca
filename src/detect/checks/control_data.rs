//! Control data in the kernel's writable memory: every word of `.data`
//! (with `.data..read_mostly`), `.bss` and every CPU's per-CPU data,
//! against the build. The build says which words are pointers (its KASLR
//! relocations) and what each held (its section contents, zero in
//! `.bss`); the guest says what each holds now. Most of this memory
//! changes as the kernel runs, so a difference alone means nothing; a
//! difference that leads somewhere no function pointer may lead does:
//!
//! - a word that now points into a module the build does not ship, at its
//!   code (a rootkit's function put into an operation table, a sysctl
//!   table, a protocol, a hook variable), unless the baseline's inventory
//!   (`hooks.json`) saw that module there;
//! - a word the build had as a pointer to a function that now points
//!   anywhere but a function's entry in the kernel or the build's modules
//!   (the middle of a function, heap memory, code nobody owns);
//! - a word that now points at executable memory that no code the kernel
//!   knows owns (shellcode), whatever it held in the build.
//!
//! Stacks (`init_stack`, the per-CPU IRQ and exception stacks) hold
//! return addresses, not function pointers, and are left out. A pointer
//! into the kernel's own functions is a registration, never a finding: a
//! rootkit that points a variable at another kernel function (a "reuse"
//! attack) is not found here.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{data_place, settled, Check, Context, Lands, Report};
use crate::abi::le;
use crate::detect::{inventory, Finding, FindingKind};
use crate::kernel::code::Owner as CodeOwner;

pub struct ControlData;

/// The most writable data read from one region (a cloud kernel has a few
/// MiB): the bounds come from the trusted build, this guards a strange one.
const MAX_LEN: u64 = 64 << 20;
/// CPUs whose per-CPU data is compared, at most (each copy is the size of
/// the build's per-CPU section, a few hundred KiB).
const MAX_CPUS: usize = 1024;

/// One word that changed from the build.
struct Changed {
    /// Link-time address (per-CPU: offset in the per-CPU area).
    link: u64,
    /// Runtime address of this copy.
    at: u64,
    /// What the build had there (after KASLR), and whether it was a
    /// relocated pointer.
    built: u64,
    pointer: bool,
    live: u64,
    /// "" for the image, " of CPU n" for per-CPU data.
    whose: String,
}

impl Check for ControlData {
    fn kind(&self) -> FindingKind {
        FindingKind::ControlData
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let t = std::time::Instant::now();
        let (changed, words) = changed_words(cx, out);
        let known = inventory::load(cx.dir);
        let mut exec: Option<Vec<(u64, u64)>> = None;
        let mut found = Vec::new();
        for c in &changed {
            if let Some(f) = judge(cx, c, &known, &mut exec, out) {
                found.push((c.at, c.live, f));
            }
        }
        log::debug!(
            "control data: {words} words read, {} changed from the build, in {:?}",
            changed.len(),
            t.elapsed()
        );
        out.capped(settled(cx, found), "writable kernel data");
    }

    /// Words pointing into modules outside the build.
    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        let (changed, _) = changed_words(cx, &mut Report::discard(self.kind()));
        changed
            .iter()
            .filter_map(|c| match cx.lands(c.live) {
                Lands::Module { name, text: true } => Some(line(cx, c, &name)),
                _ => None,
            })
            .collect()
    }
}

/// How the inventory names a word pointing into a module: where, and the
/// module.
fn line(cx: &Context, c: &Changed, module: &str) -> String {
    format!("data {}{} {module}", data_place(cx, c.link), c.whose)
}

/// Writable objects that hold code addresses that are not function
/// pointers: `mod_tree`'s `addr_min`/`addr_max` (the bounds of all module
/// memory, so the start of some module's code).
const ADDRESSES_ONLY: &[&str] = &["mod_tree"];

/// Is this object a stack (return addresses, not function pointers) or
/// one that holds code addresses as bounds?
fn not_control_data(name: &str) -> bool {
    name.contains("stack") || name == "init_thread_union" || ADDRESSES_ONLY.contains(&name)
}

/// The per-CPU stacks (IRQ, exception), link-time ranges in the per-CPU
/// template `[start, end)`: not in the image's objects, so found by name.
/// A stale return address on them (into a trampoline since freed, say) is
/// no control data.
fn per_cpu_stacks(
    map: &crate::kernel::symbols::SystemMap,
    start: u64,
    end: u64,
) -> Vec<(u64, u64)> {
    map.symbols_between(start, end)
        .into_iter()
        .filter(|(_, _, n)| not_control_data(n))
        .map(|(a, len, _)| (a, a.saturating_add(len)))
        .collect()
}

/// The part of a writable region `[start, end)` of the image compared
/// with the build: not `__ro_after_init` data (its own check), nor what the
/// kernel gives back to the page allocator at boot, which then holds
/// whatever the allocator hands out (the unused part of `.bss..decrypted`,
/// freed by mem_encrypt_free_decrypted_mem() on kernels built with
/// CONFIG_AMD_MEM_ENCRYPT, as Debian's are).
fn compared(map: &crate::kernel::symbols::SystemMap, region: (u64, u64)) -> Vec<(u64, u64)> {
    let range = |s: &str, e: &str| (map.addr(s).unwrap_or(0), map.addr(e).unwrap_or(0));
    crate::kernel::text::subtract(
        region,
        &[
            range("__start_ro_after_init", "__end_ro_after_init"),
            range("__start_bss_decrypted_unused", "__end_bss_decrypted"),
        ],
    )
}

/// Every kernel-half word of the writable regions that differs from the
/// build, and how many words were read.
fn changed_words(cx: &Context, out: &mut Report) -> (Vec<Changed>, usize) {
    let map = cx.map();
    let mut changed = Vec::new();
    let mut words = 0usize;
    for (s, e, what) in [
        ("_sdata", "_edata", ".data"),
        ("__bss_start", "__bss_stop", ".bss"),
    ] {
        let (Some(start), Some(end)) = (map.addr(s), map.addr(e)) else {
            out.add(
                format!("the build has no {s}/{e}: {what} not checked"),
                &[],
                "",
            );
            continue;
        };
        for (a, b) in compared(map, (start, end)) {
            region(
                cx,
                (a, b),
                what == ".bss",
                None,
                &mut changed,
                &mut words,
                out,
            );
        }
    }
    if let (Some(start), Some(end)) = (map.addr("__per_cpu_start"), map.addr("__per_cpu_end")) {
        let stacks = per_cpu_stacks(map, start, end);
        match cx.per_cpu(start) {
            Some(cpus) => {
                if cpus.len() > MAX_CPUS {
                    out.add(
                        format!(
                            "the guest claims {} CPUs: the per-CPU data of those beyond {MAX_CPUS} not checked",
                            cpus.len()
                        ),
                        &[],
                        "",
                    );
                }
                for (cpu, base) in cpus.into_iter().take(MAX_CPUS) {
                    region(
                        cx,
                        (start, end),
                        false,
                        Some((cpu, base, &stacks)),
                        &mut changed,
                        &mut words,
                        out,
                    );
                }
            }
            None => out.add(
                "the per-CPU areas cannot be found: per-CPU data not checked",
                &[],
                "",
            ),
        }
    }
    (changed, words)
}

/// A CPU's copy of the per-CPU data: the CPU, its runtime base, and the
/// link-time ranges of its stacks.
type PerCpu<'s> = (u32, u64, &'s [(u64, u64)]);

/// Compare link-time `[start, end)` (zero in the build if `bss`; per-CPU
/// data at `copy`'s runtime base, less its stacks) with the guest.
fn region(
    cx: &Context,
    (start, end): (u64, u64),
    bss: bool,
    copy: Option<PerCpu>,
    changed: &mut Vec<Changed>,
    words: &mut usize,
    out: &mut Report,
) {
    let len = end.saturating_sub(start) & !7;
    let Ok(n) = usize::try_from(len) else { return };
    if len == 0 || len > MAX_LEN {
        return;
    }
    let built = if bss {
        Some(vec![0u8; n])
    } else if copy.is_some() {
        // Linked at 0: the section holds the template of every CPU's copy.
        cx.vmlinux
            .section(".data..percpu")
            .filter(|b| b.len() >= n)
            .map(|mut b| {
                b.truncate(n);
                b
            })
    } else {
        cx.vmlinux.bytes(start, len)
    };
    let runtime = match copy {
        Some((_, base, _)) => base,
        None => cx.runtime(start),
    };
    let stacks = copy.map_or(&[][..], |(_, _, s)| s);
    let mut live = vec![0u8; n];
    let whose = copy.map_or(String::new(), |(cpu, _, _)| format!(" of CPU {cpu}"));
    let read = cx.read_bytes(runtime, &mut live);
    let (Some(built), Ok(())) = (built, &read) else {
        out.add(
            format!(
                "cannot read writable kernel data {start:#x}..{end:#x}{whose} from the guest or the build"
            ),
            &[runtime],
            match read {
                Err(e) => e.to_string(),
                Ok(()) => "the build has no bytes there".into(),
            },
        );
        return;
    };
    let pointers = if bss {
        BTreeSet::new()
    } else {
        cx.vmlinux.pointer_words(start, end)
    };
    let map = cx.map();
    let mut skip_until = start;
    for (i, (b, l)) in le::words(&built).zip(le::words(&live)).enumerate() {
        *words = words.saturating_add(1);
        let off = (i as u64).wrapping_mul(8);
        let link = start.wrapping_add(off);
        let pointer = pointers.contains(&link);
        let want = if pointer { cx.runtime(b) } else { b };
        if l == want || l >> 47 != 0x1ffff || link < skip_until {
            continue;
        }
        if let Some(&(_, e)) = stacks.iter().find(|(s, e)| (*s..*e).contains(&link)) {
            skip_until = e;
            continue;
        }
        if let Some((name, o)) = map.object_containing(link) {
            if not_control_data(name) {
                let size = map.extent_at(link.wrapping_sub(o)).unwrap_or(8);
                skip_until = link.wrapping_sub(o).saturating_add(size.max(8));
                continue;
            }
        }
        changed.push(Changed {
            link,
            at: runtime.wrapping_add(off),
            built: want,
            pointer,
            live: l,
            whose: whose.clone(),
        });
    }
}

/// A finding for a changed word, if where it leads says it is control data
/// hijacked.
fn judge(
    cx: &Context,
    c: &Changed,
    known_lines: &Option<BTreeSet<String>>,
    exec: &mut Option<Vec<(u64, u64)>>,
    out: &Report,
) -> Option<Finding> {
    let was_function = c.pointer && cx.lands(c.built) == Lands::KernelFunction;
    let place = format!("{}{}", data_place(cx, c.link), c.whose);
    let evidence = format!("live {:#x}, built {:#x}", c.live, c.built);
    let finding = |why: &str, evidence: String| {
        out.finding(
            format!(
                "{place} points to {} ({why}) instead of {}",
                cx.name(c.live),
                cx.name(c.built)
            ),
            &[c.at, c.live],
            evidence,
        )
    };
    let wrong = |why: &str| finding(why, evidence.clone());
    match cx.lands(c.live) {
        Lands::KernelFunction | Lands::KernelData | Lands::BuildModule => None,
        Lands::KernelMade(CodeOwner::Bpf | CodeOwner::FtraceTrampoline) => None,
        Lands::Module { name, text: true } => {
            let known = known_lines
                .as_ref()
                .is_some_and(|k| k.contains(&line(cx, c, &name)));
            (!known).then(|| {
                finding(
                    "code of a module the build does not ship",
                    format!("{evidence}; {}", inventory::missing(known_lines)),
                )
                .owned_by(name)
            })
        }
        Lands::Module { .. } | Lands::KernelMade(_) => None,
        Lands::KernelInside(f) if was_function => Some(wrong(&format!(
            "the middle of {f}, where no function starts"
        ))),
        Lands::KernelInside(_) => None,
        Lands::Elsewhere if was_function => Some(wrong(
            "a function pointer of the build now leads to no code the kernel knows",
        )),
        Lands::Elsewhere => {
            let ranges = exec.get_or_insert_with(|| {
                // Past its bounds (hidden-code reports that) nothing here
                // counts as executable.
                cx.executable_ranges().unwrap_or_default()
            });
            let i = ranges.partition_point(|r| r.0 <= c.live);
            let executable = i
                .checked_sub(1)
                .and_then(|i| ranges.get(i))
                .is_some_and(|r| c.live < r.1);
            executable.then(|| wrong("executable memory that no code the kernel knows owns"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::symbols::SystemMap;

    /// 6.1's per-CPU stacks, as a small build's System.map has them: the
    /// IRQ stack and the exception stacks are left out, the TSS and the
    /// rest are compared.
    /// What the kernel frees at boot inside .bss (Debian's unused
    /// `.bss..decrypted`) is heap afterwards, and `__ro_after_init` has a
    /// check of its own: neither is compared with the build.
    #[test]
    fn memory_the_kernel_frees_at_boot_is_not_compared() {
        let map = SystemMap::parse(
            "ffffffff81000000 T _text\nffffffff82000000 D __start_ro_after_init\nffffffff82001000 D __end_ro_after_init\nffffffff83000000 B __bss_start\nffffffff83600000 B __start_bss_decrypted\nffffffff83603000 B __start_bss_decrypted_unused\nffffffff83800000 B __end_bss_decrypted\nffffffff83800000 B __bss_stop\nffffffff83830000 B _end\n",
        )
        .unwrap();
        assert_eq!(
            compared(&map, (0xffff_ffff_8300_0000, 0xffff_ffff_8380_0000)),
            vec![(0xffff_ffff_8300_0000, 0xffff_ffff_8360_3000)]
        );
        assert_eq!(
            compared(&map, (0xffff_ffff_8200_0000, 0xffff_ffff_8210_0000)),
            vec![(0xffff_ffff_8200_1000, 0xffff_ffff_8210_0000)]
        );
        // A build without them (xftrace's small profile): all of it.
        let small = SystemMap::parse(
            "ffffffff81000000 T _text\nffffffff83000000 B __bss_start\nffffffff83800000 B __bss_stop\nffffffff83830000 B _end\n",
        )
        .unwrap();
        assert_eq!(
            compared(&small, (0xffff_ffff_8300_0000, 0xffff_ffff_8380_0000)),
            vec![(0xffff_ffff_8300_0000, 0xffff_ffff_8380_0000)]
        );
    }

    #[test]
    fn the_per_cpu_stacks_are_not_control_data() {
        let map = SystemMap::parse(
            "0000000000000000 D __per_cpu_start\n0000000000000000 D fixed_percpu_data\n0000000000001000 D cpu_debug_store\n0000000000002000 D irq_stack_backing_store\n0000000000006000 D cpu_tss_rw\n000000000000b000 D gdt_page\n000000000000c000 d exception_stacks\n0000000000012000 D cpu_llc_id\n0000000000020000 D __per_cpu_end\nffffffff81000000 T _text\nffffffff82000000 B _end\n",
        )
        .unwrap();
        assert_eq!(
            per_cpu_stacks(&map, 0, 0x20000),
            vec![(0x2000, 0x6000), (0xc000, 0x12000)]
        );
    }
}
