//! Commands about libvirt domains: enroll, unenroll, list.

use std::path::Path;

use crate::base::error::Error;
use crate::base::escape::escape;
use crate::detect::last_check::LastCheck;
use crate::host::statedir::{self, GuestDir};
use crate::kernel::builds;
use crate::libvirt::connection::{Libvirt, LiveEnrollment};
use crate::trace::status::{CollectorState, CollectorStatus};

use super::GuestArgs;

/// `--dry-run`: the change to a domain's definition as a unified diff
/// (3 lines of context), each line escaped (a definition may hold any
/// text); the diff gives up refining after a second on a pathological
/// definition, and is then coarser, never wrong.
fn change(name: &str, old: &str, new: &str) -> String {
    if old == new {
        return "(no change)\n".into();
    }
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(1))
        .diff_lines(old, new);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .missing_newline_hint(false)
        .header(&format!("{name} (now)"), &format!("{name} (after)"))
        .to_string();
    text.lines().fold(String::new(), |mut out, l| {
        out.push_str(&escape(l));
        out.push('\n');
        out
    })
}

/// The build `enroll` records: --system-map, with --vmlinux or the vmlinux
/// beside it.
fn build_args(
    g: &GuestArgs,
    what: &str,
) -> Result<
    (
        std::path::PathBuf,
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
    ),
    Error,
> {
    let map = g.system_map.clone().ok_or_else(|| {
        Error::Input(format!(
            "{what} needs the guest kernel's System.map: --system-map PATH"
        ))
    })?;
    let vmlinux = g.vmlinux.clone().or_else(|| {
        let v = map.with_file_name("vmlinux");
        v.is_file().then_some(v)
    });
    let modules = g.modules.clone().or_else(|| {
        let d = map.with_file_name("modules.d");
        std::fs::symlink_metadata(&d)
            .is_ok_and(|m| m.is_dir())
            .then_some(d)
    });
    Ok((map, vmlinux, modules))
}

/// `xftrace add-kernel --system-map PATH`: store a build.
pub fn add_kernel(g: &GuestArgs, root: &Path, json: bool) -> Result<(), Error> {
    let (map, vmlinux, modules) = build_args(g, "add-kernel")?;
    let (v, m) = (vmlinux.as_deref(), modules.as_deref());
    let stored = builds::store(root, &map, v, m, true)?;
    let had = builds::check_recorded(root, &stored).is_ok();
    builds::store(root, &map, v, m, false)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"system_map": stored, "changed": !had})
        );
    } else {
        let how = if had { "already stored" } else { "stored" };
        println!("{how}: {}", stored.display());
    }
    Ok(())
}

/// `xftrace add-kernel --debian RELEASE=VERSION | --deb FILE`: store
/// Debian's build of a stock kernel.
pub fn add_stock_kernel(
    root: &Path,
    debian: Option<&str>,
    deb: Option<&Path>,
    json: bool,
) -> Result<(), Error> {
    use crate::kernel::debian::Package;
    let r = match (debian, deb) {
        (Some(spec), _) => {
            let pkg = Package::parse(spec).ok_or_else(|| {
                Error::Input(format!(
                    "--debian takes RELEASE=VERSION, as in 6.1.0-57-cloud-amd64=6.1.192-3, not {}",
                    escape(spec)
                ))
            })?;
            crate::kernel::debian::fetch_reference(root, &pkg)?
        }
        (None, Some(f)) => crate::kernel::debian::store_deb(root, f)?,
        (None, None) => unreachable!("clap asks for one"),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "package": r.package.to_string(),
                "sha256": r.sha256,
                "system_map": r.system_map,
            })
        );
    } else {
        println!(
            "stored {} (sha256 {}): {}",
            r.package,
            r.sha256,
            r.system_map.display()
        );
    }
    Ok(())
}

/// `xftrace enroll NAME`: store the build, edit the definition.
pub fn enroll(
    g: &GuestArgs,
    root: &Path,
    name: &str,
    monitor: &[String],
    dry_run: bool,
    json: bool,
) -> Result<(), Error> {
    let lv = Libvirt::connect(&g.connect)?;
    // The domain must exist before anything is copied.
    lv.domain(name)?;
    // Without --system-map: a stock kernel (a distribution's), whose build
    // is found by its banner when the domain is checked.
    let stored = match g.system_map {
        None => {
            if !monitor.is_empty() {
                return Err(Error::Input(format!(
                    "--monitor traces from the domain's start, and a domain enrolled without --system-map runs a stock kernel, whose tracer (the xftrace-dkms module) comes later if at all: enroll {} with the System.map of an xftrace kernel to monitor it, or trace it with `xftrace on` once the module is loaded",
                    escape(name)
                )));
            }
            None
        }
        Some(_) => {
            let (map, vmlinux, modules) =
                build_args(g, &format!("`xftrace enroll {}`", escape(name)))?;
            let map = &map;
            let stored = builds::store(root, map, vmlinux.as_deref(), modules.as_deref(), dry_run)?;
            if crate::kernel::symbols::SystemMap::load(&stored)
                .or_else(|_| crate::kernel::symbols::SystemMap::load(map))
                .is_ok_and(|m| m.addr("xftrace_control").is_none())
            {
                eprintln!(
                    "note: {} is not of an xftrace kernel: the domain's RAM can be traced once it runs one (guest-kernel/build.sh), enrolled with that kernel's System.map",
                    map.display()
                );
            }
            Some(stored)
        }
    };
    let (old, new, live) = lv.enroll(name, stored.as_deref(), monitor, dry_run)?;
    if json {
        let changed = old != new || (!dry_run && live == LiveEnrollment::Updated);
        println!(
            "{}",
            serde_json::json!({
                "domain": name,
                "changed": changed,
                "dry_run": dry_run,
                "stock_kernel": stored.is_none(),
                "live": match (dry_run, live) {
                    (true, _) => None,
                    (false, LiveEnrollment::Updated) => Some("updated"),
                    (false, LiveEnrollment::NeedsRestart) if changed => Some("needs-restart"),
                    (false, _) if changed => Some("next-start"),
                    (false, _) => Some("unchanged"),
                },
                "diff": dry_run.then(|| change(name, &old, &new)),
            })
        );
        return Ok(());
    }
    if stored.is_none() && !dry_run {
        println!(
            "{} is enrolled for a stock kernel: checks find its kernel by its banner and fetch the build of a Debian kernel with apt the first time they meet it (`xftrace add-kernel --debian RELEASE=VERSION` stores one ahead); it is traced once the guest loads the xftrace-dkms module",
            escape(name)
        );
    }
    if dry_run {
        print!("{}", change(name, &old, &new));
        return Ok(());
    }
    let name = escape(name);
    if live == LiveEnrollment::Updated {
        println!("enrolled {name}: the running domain uses this kernel build now");
    } else if old == new {
        println!("{name} is already enrolled");
    } else if live == LiveEnrollment::NeedsRestart {
        println!(
            "enrolled {name}: it runs without a shared RAM file; xftrace can trace it after a cold restart (`virsh shutdown {name}`, then `virsh start {name}`)"
        );
    } else {
        println!(
            "enrolled {name}: its RAM will be a shared, preallocated file from its next start"
        );
    }
    Ok(())
}

/// `xftrace unenroll NAME`: put the definition back.
pub fn unenroll(
    g: &GuestArgs,
    root: &Path,
    name: &str,
    dry_run: bool,
    json: bool,
) -> Result<(), Error> {
    let lv = Libvirt::connect(&g.connect)?;
    if let Some(st) = GuestDir::existing_domain(root, name) {
        if !dry_run && st.collector_running()? {
            let name = escape(name);
            return Err(Error::State(format!(
                "{name} is being traced; run `xftrace --domain {name} off` first"
            )));
        }
    }
    let (old, new) = lv.unenroll(name, dry_run)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "domain": name,
                "changed": old != new,
                "dry_run": dry_run,
                "diff": dry_run.then(|| change(name, &old, &new)),
            })
        );
    } else if dry_run {
        print!("{}", change(name, &old, &new));
    } else {
        println!(
            "unenrolled {}: its previous memory backing applies from its next start",
            escape(name)
        );
    }
    Ok(())
}

/// One line of `xftrace list`: a table row, or with `json` an object
/// (docs/json.md).
fn row(
    json: bool,
    name: &str,
    state: &str,
    enrolled: &str,
    tracing: &str,
    checked: Option<&LastCheck>,
    map: Option<&str>,
) {
    let count = |c: &LastCheck, sev: &str| c.count(sev);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "domain": name,
                "state": state,
                "enrolled": enrolled,
                "tracing": tracing,
                "last_check": checked.map(|c| serde_json::json!({
                    "time": c.time,
                    "findings": {
                        "high": count(c, "high"),
                        "medium": count(c, "medium"),
                        "low": count(c, "low"),
                    },
                    "failed": c.error.is_some(),
                    "kernel": c.kernel,
                })),
                "system_map": map,
            })
        );
        return;
    }
    let (when, found) = match checked {
        None => ("-".to_string(), "-".to_string()),
        Some(c) => {
            let ago = (statedir::now_unix() - c.time).max(0.0);
            let when = if ago < 120.0 {
                format!("{ago:.0}s ago")
            } else if ago < 7200.0 {
                format!("{:.0}m ago", ago / 60.0)
            } else {
                format!("{:.0}h ago", ago / 3600.0)
            };
            let (h, m) = (count(c, "high"), count(c, "medium"));
            let found = match (h, m, c.error.is_some()) {
                (0, 0, false) => "clean".to_string(),
                (0, 0, true) => "failed".to_string(),
                (h, 0, _) => format!("{h} high"),
                (0, m, _) => format!("{m} medium"),
                (h, m, _) => format!("{h} high, {m} medium"),
            };
            (when, found)
        }
    };
    println!(
        "{:<24} {:<8} {:<9} {:<8} {:<10} {:<16} {}",
        escape(name),
        state,
        enrolled,
        tracing,
        when,
        found,
        escape(map.unwrap_or("-"))
    );
}

/// `xftrace list`: domains, running or not, enrolled or not, tracing or not.
pub fn list(g: &GuestArgs, root: &Path, json: bool) -> Result<(), Error> {
    let lv = Libvirt::connect(&g.connect)?;
    if !json {
        println!(
            "{:<24} {:<8} {:<9} {:<8} {:<10} {:<16} SYSTEM.MAP",
            "DOMAIN", "STATE", "ENROLLED", "TRACING", "CHECKED", "FINDINGS"
        );
    }
    let mut unreadable = Vec::new();
    for d in lv.list()? {
        let state = if d.running { "running" } else { "off" };
        if let Some(why) = &d.problem {
            row(json, &d.name, state, "unknown", "unknown", None, None);
            unreadable.push(format!("{}: {}", escape(&d.name), escape(why)));
            continue;
        }
        let dir = GuestDir::existing_domain(root, &d.name);
        let checked = dir.as_ref().and_then(LastCheck::read);
        // A collector that died leaves its status saying it collects.
        let tracing = match dir {
            Some(st) if st.collector_running()? => "yes",
            Some(st)
                if CollectorStatus::read(&st).is_some_and(|s| {
                    matches!(
                        s.state,
                        CollectorState::Starting | CollectorState::Collecting
                    )
                }) =>
            {
                "died"
            }
            _ => "no",
        };
        row(
            json,
            &d.name,
            state,
            if d.enrolled { "yes" } else { "no" },
            tracing,
            checked.as_ref(),
            d.system_map.as_deref(),
        );
    }
    // Every readable domain is listed first; then what could not be read
    // fails the command, so that a script does not take the list as whole.
    if !unreadable.is_empty() {
        return Err(Error::Libvirt(format!(
            "{} domain definition(s) could not be read: {}",
            unreadable.len(),
            unreadable.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::change;

    #[test]
    fn a_dry_run_shows_each_change_in_its_own_hunk_escaped() {
        let mut old: Vec<String> = (0..40).map(|i| format!("  <line{i}/>")).collect();
        old[3] = "<domain>\u{1b}[2J".into();
        let mut new = old.clone();
        new[5] = "  <memoryBacking/>".into();
        new[30] = "  <memballoon model='none'/>".into();
        let d = change("web01", &old.join("\n"), &new.join("\n"));
        assert!(d.starts_with("--- web01 (now)\n+++ web01 (after)\n"), "{d}");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("\n-  <line5/>\n+  <memoryBacking/>\n"), "{d}");
        assert!(d.contains("+  <memballoon model='none'/>"), "{d}");
        assert!(
            !d.contains('\u{1b}') && d.contains("<domain>\\x1b[2J"),
            "{d}"
        );
        // Far from the changes: not shown.
        assert!(!d.contains("<line18/>"), "{d}");
        assert_eq!(change("web01", "a\n", "a\n"), "(no change)\n");
    }
}
