//! Taint flags cleared to hide a module: a module that taints the kernel
//! (out of tree, unsigned, forced) sets its flag in its own `taints` and
//! in the kernel's `tainted_mask`, and the kernel never clears either. A
//! flag a loaded module still carries that the kernel's mask no longer
//! has was cleared by someone who did not want the kernel to look tainted
//! (rootkits do, so that `/proc/sys/kernel/tainted` and Oops reports read
//! clean).
//!
//! Against the baseline (its inventory keeps the kernel's state when it
//! was taken: taint flags, lockdown level, module signature enforcement,
//! and where and how long the kernel had run): flags set since are
//! reported as inventory (severity low: `D` an Oops, `W` a warning, `O`/`E`
//! a module from outside the tree or unsigned); in the same boot, a flag
//! the mask lost, a lower lockdown level or signatures no longer enforced
//! are findings, since the kernel never lowers any of them. The same boot
//! is the kernel at the same KASLR slide and physical place with a clock
//! (`jiffies_64`) that did not go back.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::detect::Severity;
use crate::host::statedir::GuestDir;
use crate::kernel::guest::KernelView;
use crate::kernel::taint;

pub struct Taint;

impl Check for Taint {
    fn kind(&self) -> FindingKind {
        FindingKind::Taint
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        State::read(&cx.view)
            .map(|s| s.line())
            .into_iter()
            .collect()
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        if let (Some(base), Some(now)) = (
            crate::detect::inventory::load(cx.dir)
                .and_then(|k| k.iter().find_map(|l| State::parse(l))),
            State::read(&cx.view),
        ) {
            since_baseline(cx, &base, &now, out);
        }
        let Some(at) = cx.sym("tainted_mask") else {
            return;
        };
        let Some(mask) = taint::mask(cx) else {
            out.add(
                "the kernel's tainted_mask cannot be read",
                &[at],
                "taint flags not checked",
            );
            return;
        };
        let mut modules: Vec<(u64, String)> = cx
            .modules()
            .iter()
            .map(|m| (m.addr, m.name.clone()))
            .collect();
        if let Some((tree, _)) = cx.tree_modules() {
            for m in tree {
                if !modules.iter().any(|(a, _)| *a == m) {
                    modules.push((m, cx.module_name(m).unwrap_or_else(|| "?".into())));
                }
            }
        }
        for (addr, name) in modules {
            let Some(t) = taint::of_module(cx, addr) else {
                continue;
            };
            let cleared = t & !mask;
            if cleared != 0 {
                let f = out
                    .finding(
                        format!(
                            "module {name} tainted the kernel with {}, which the kernel's tainted_mask ({}) no longer has: someone cleared it",
                            taint::describe(cleared),
                            taint::describe(mask)
                        ),
                        &[at, addr],
                        format!("the module's taints {}", taint::describe(t)),
                    )
                    .owned_by(name);
                out.push(f);
            }
        }
    }
}

/// The kernel's self-protection state, as a baseline keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    slide: u64,
    text_pa: u64,
    jiffies: u64,
    taint: u64,
    lockdown: Option<u32>,
    sig_enforce: Option<bool>,
}

const PREFIX: &str = "kernel-state ";

impl State {
    /// Now (None if the mask or the clock cannot be read: the check then
    /// compares nothing, and the mask is reported unreadable above).
    fn read(v: &KernelView) -> Option<State> {
        let k = v.kernel;
        Some(State {
            slide: k.slide.0,
            text_pa: k.text_pa.0,
            jiffies: v.read_word(v.sym("jiffies_64")?)?,
            taint: taint::mask(v)?,
            lockdown: taint::lockdown(v).ok().flatten(),
            sig_enforce: taint::sig_enforce(v).ok().flatten(),
        })
    }

    fn line(&self) -> String {
        format!(
            "{PREFIX}slide={:#x} text_pa={:#x} jiffies={} taint={:#x} lockdown={} sig_enforce={}",
            self.slide,
            self.text_pa,
            self.jiffies,
            self.taint,
            self.lockdown.map_or("-".into(), |l| l.to_string()),
            self.sig_enforce.map_or("-", |e| if e { "1" } else { "0" }),
        )
    }

    /// A baseline's line (it lies in the state directory: parsed, never
    /// trusted to hold together).
    fn parse(line: &str) -> Option<State> {
        let rest = line.strip_prefix(PREFIX)?;
        let mut kv = std::collections::BTreeMap::new();
        for w in rest.split(' ') {
            let (k, v) = w.split_once('=')?;
            kv.insert(k, v);
        }
        let hex = |k: &str| u64::from_str_radix(kv.get(k)?.strip_prefix("0x")?, 16).ok();
        Some(State {
            slide: hex("slide")?,
            text_pa: hex("text_pa")?,
            jiffies: kv.get("jiffies")?.parse().ok()?,
            taint: hex("taint")?,
            lockdown: match *kv.get("lockdown")? {
                "-" => None,
                l => Some(l.parse().ok()?),
            },
            sig_enforce: match *kv.get("sig_enforce")? {
                "-" => None,
                e => Some(e == "1"),
            },
        })
    }

    fn same_boot(&self, now: &State) -> bool {
        self.slide == now.slide && self.text_pa == now.text_pa && now.jiffies >= self.jiffies
    }
}

/// What `status` says of the kernel's state against the baseline's
/// (None without a baseline that kept it, or a mask that cannot be read).
pub fn status_line(v: &KernelView, dir: &GuestDir) -> Option<String> {
    let base = crate::detect::inventory::load(dir)?
        .iter()
        .find_map(|l| State::parse(l))?;
    let now = State::read(v)?;
    let (set, cleared) = (now.taint & !base.taint, base.taint & !now.taint);
    let mut parts = Vec::new();
    if set != 0 {
        parts.push(format!("tainted with {} since", taint::describe(set)));
    }
    let same = base.same_boot(&now);
    if cleared != 0 {
        parts.push(format!(
            "{} cleared{}",
            taint::describe(cleared),
            if same {
                " in the same boot (a finding)"
            } else {
                " (another boot)"
            }
        ));
    }
    if base.lockdown != now.lockdown {
        parts.push(format!(
            "lockdown {} -> {}",
            base.lockdown
                .map_or("-".into(), |l| taint::describe_lockdown(v, l)),
            now.lockdown
                .map_or("-".into(), |l| taint::describe_lockdown(v, l))
        ));
    }
    if base.sig_enforce != now.sig_enforce {
        parts.push("module signature enforcement changed".into());
    }
    Some(format!(
        "baseline:   {} ({})",
        if parts.is_empty() {
            "taint, lockdown and signatures as they were".to_string()
        } else {
            parts.join("; ")
        },
        if same {
            "same boot"
        } else {
            "taken in another boot"
        }
    ))
}

/// Compare the kernel's state now with the baseline's.
fn since_baseline(cx: &Context, base: &State, now: &State, out: &mut Report) {
    let at: Vec<u64> = cx.sym("tainted_mask").into_iter().collect();
    let set = now.taint & !base.taint;
    if set != 0 {
        let mut f = out.finding(
            format!(
                "the kernel was tainted with {} since the baseline (its mask now {})",
                taint::describe(set),
                taint::describe(now.taint)
            ),
            &at,
            "D: an Oops, W: a warning, O/E: a module from outside the tree or unsigned (the kernel's log and the modules say which)",
        );
        f.severity = Severity::Low;
        out.push(f);
    }
    if !base.same_boot(now) {
        return;
    }
    let cleared = base.taint & !now.taint;
    if cleared != 0 {
        out.add(
            format!(
                "the kernel's tainted_mask lost {} since the baseline, in the same boot (now {}): the kernel never clears a flag",
                taint::describe(cleared),
                taint::describe(now.taint)
            ),
            &at,
            format!("at the baseline {}", taint::describe(base.taint)),
        );
    }
    if let (Some(b), Some(n)) = (base.lockdown, now.lockdown) {
        if n < b {
            out.add(
                format!(
                    "the kernel's lockdown level went down since the baseline, in the same boot: {} -> {} (the kernel only raises it)",
                    taint::describe_lockdown(cx, b),
                    taint::describe_lockdown(cx, n)
                ),
                &cx.sym("kernel_locked_down").into_iter().collect::<Vec<_>>(),
                "kernel_locked_down",
            );
        }
    }
    if base.sig_enforce == Some(true) && now.sig_enforce == Some(false) {
        out.add(
            "the kernel stopped enforcing module signatures since the baseline, in the same boot (sig_enforce is never cleared)",
            &cx.sym("sig_enforce").into_iter().collect::<Vec<_>>(),
            "sig_enforce",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baselines_state_reads_back_and_a_forged_one_is_refused() {
        let s = State {
            slide: 0x2c00000,
            text_pa: 0x10c00000,
            jiffies: 4294967296,
            taint: 0x3000,
            lockdown: Some(21),
            sig_enforce: Some(true),
        };
        assert_eq!(State::parse(&s.line()), Some(s.clone()));
        let none = State {
            lockdown: None,
            sig_enforce: None,
            ..s.clone()
        };
        assert_eq!(State::parse(&none.line()), Some(none));
        for bad in [
            "kernel-state slide=1",
            "kernel-state slide=0x1 text_pa=0x2 jiffies=x taint=0x0 lockdown=- sig_enforce=-",
            "module rk",
            "kernel-state slide=0x1 text_pa=0x2 jiffies=3 taint=0x0 lockdown=99999999999 sig_enforce=-",
        ] {
            assert_eq!(State::parse(bad), None, "{bad}");
        }
        // The same boot: same place, a clock that did not go back.
        let later = State {
            jiffies: s.jiffies + 100,
            ..s.clone()
        };
        assert!(s.same_boot(&later));
        assert!(!later.same_boot(&s));
        assert!(!s.same_boot(&State {
            slide: 0,
            ..later.clone()
        }));
    }
}
