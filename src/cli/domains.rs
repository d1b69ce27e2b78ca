//! Commands about libvirt domains: enroll, unenroll, list.

use std::path::Path;

use crate::base::error::Error;
use crate::base::escape::escape;
use crate::host::statedir::GuestDir;
use crate::kernel::builds;
use crate::libvirt::connection::{Libvirt, LiveEnrollment};
use crate::trace::status::{CollectorState, CollectorStatus};

use super::GuestArgs;

/// The changed lines between two versions of a document.
fn print_change(old: &str, new: &str) {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    if head == a.len() && head == b.len() {
        println!("(no change)");
        return;
    }
    println!("@@ line {} @@", head + 1);
    for l in &a[head..a.len() - tail] {
        println!("-{l}");
    }
    for l in &b[head..b.len() - tail] {
        println!("+{l}");
    }
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
pub fn add_kernel(g: &GuestArgs, root: &Path) -> Result<(), Error> {
    let (map, vmlinux, modules) = build_args(g, "add-kernel")?;
    let (v, m) = (vmlinux.as_deref(), modules.as_deref());
    let stored = builds::store(root, &map, v, m, true)?;
    let had = builds::check_recorded(root, &stored).is_ok();
    builds::store(root, &map, v, m, false)?;
    let how = if had { "already stored" } else { "stored" };
    println!("{how}: {}", stored.display());
    Ok(())
}

/// `xftrace add-kernel --debian RELEASE=VERSION | --deb FILE`: store
/// Debian's build of a stock kernel.
pub fn add_stock_kernel(
    root: &Path,
    debian: Option<&str>,
    deb: Option<&Path>,
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
    println!(
        "stored {} (sha256 {}): {}",
        r.package,
        r.sha256,
        r.system_map.display()
    );
    Ok(())
}

/// `xftrace enroll NAME`: store the build, edit the definition.
pub fn enroll(
    g: &GuestArgs,
    root: &Path,
    name: &str,
    monitor: &[String],
    dry_run: bool,
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
    if stored.is_none() && !dry_run {
        println!(
            "{} is enrolled for a stock kernel: checks find its kernel by its banner and fetch the build of a Debian kernel with apt the first time they meet it (`xftrace add-kernel --debian RELEASE=VERSION` stores one ahead); it is traced once the guest loads the xftrace-dkms module",
            escape(name)
        );
    }
    let name = escape(name);
    if dry_run {
        print_change(&old, &new);
    } else if live == LiveEnrollment::Updated {
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
pub fn unenroll(g: &GuestArgs, root: &Path, name: &str, dry_run: bool) -> Result<(), Error> {
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
    if dry_run {
        print_change(&old, &new);
    } else {
        println!(
            "unenrolled {}: its previous memory backing applies from its next start",
            escape(name)
        );
    }
    Ok(())
}

/// One line of `xftrace list` (`map` already escaped).
fn row(name: &str, state: &str, enrolled: &str, tracing: &str, map: &str) {
    println!(
        "{:<24} {:<8} {:<9} {:<8} {map}",
        escape(name),
        state,
        enrolled,
        tracing
    );
}

/// `xftrace list`: domains, running or not, enrolled or not, tracing or not.
pub fn list(g: &GuestArgs, root: &Path) -> Result<(), Error> {
    let lv = Libvirt::connect(&g.connect)?;
    println!(
        "{:<24} {:<8} {:<9} {:<8} SYSTEM.MAP",
        "DOMAIN", "STATE", "ENROLLED", "TRACING"
    );
    let mut unreadable = Vec::new();
    for d in lv.list()? {
        let state = if d.running { "running" } else { "off" };
        if let Some(why) = &d.problem {
            row(&d.name, state, "unknown", "unknown", "-");
            unreadable.push(format!("{}: {}", escape(&d.name), escape(why)));
            continue;
        }
        // A collector that died leaves its status saying it collects.
        let tracing = match GuestDir::existing_domain(root, &d.name) {
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
            &d.name,
            state,
            if d.enrolled { "yes" } else { "no" },
            tracing,
            &escape(d.system_map.as_deref().unwrap_or("-")),
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
