//! The libvirt qemu hook (`/etc/libvirt/hooks/qemu.d/xftrace` runs
//! `xftrace hook qemu DOMAIN OP SUBOP EXTRA` with the domain XML on stdin):
//! what xftrace does on each event of a domain's life. It records the
//! domain's life and arrivals (`libvirt::hook`), refuses what would lose
//! an enrolled domain's RAM or kernel build, starts always-on monitoring,
//! resumes a session a restore or a migration brings back
//! (`trace::session`), and stops the collector of a domain that stopped.
//!
//! libvirt waits for hooks while holding its locks, so this code never calls
//! back into libvirt and never blocks a start for anything but the one check
//! that matters: an enrolled domain must keep its shared, preallocated,
//! file-backed RAM, or xftrace would silently lose it.
//!
//! Nothing from the domain XML reaches a command line but function names
//! that pass [`crate::abi::funcs::check_pattern`] (see
//! [`crate::libvirt::hook::on_args`]); a recorded System.map is used only
//! if [`builds::check_recorded`] accepts it.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Child;

use log::warn;

use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::host::files;
use crate::host::process::{self, ProcessId};
use crate::host::statedir::{self, GuestDir};
use crate::kernel::builds;
use crate::libvirt::domain_xml::{self, DomainFacts, HookDecision};
use crate::libvirt::hook::{
    leave_mark, monitor_args, on_args, read_xml, record, take_arrival, Arrival, DomainLife,
    HookEvent,
};
use crate::trace::session;

/// Continue tracing a guest that a restore or an incoming migration brought
/// with its tracer on (a fresh boot after a stop is left to the operator:
/// `status` names the unwritten session). After a restore, the session
/// the save interrupted (`functions`) goes on: `on` writes its records
/// aside and adopts the guest. Otherwise (a migration: this host never
/// had the session) `on --adopt` traces what the guest traces, if it
/// traces at all. Either way the guest never traces unread for longer than
/// its kernel takes to be found.
fn resume_session(
    root: &Path,
    st: &GuestDir,
    name: &str,
    functions: Option<&[String]>,
    arrival: Arrival,
) -> Result<Option<Child>> {
    let mut log = files::replace_private(&st.path().join("monitor.log"))?;
    match on_args(root, name, functions, Some(arrival)) {
        Ok(args) => {
            let _ = writeln!(
                log,
                "xftrace hook: {} {}",
                match functions {
                    Some(_) => "resuming the session the stop interrupted of",
                    None => "adopting the tracer, if on, of",
                },
                escape(name)
            );
            Ok(Some(process::spawn_detached(&args, log, None)?))
        }
        Err(why) => {
            warn!(
                "xftrace hook: not resuming the session of {}: {why}",
                escape(name)
            );
            Ok(None)
        }
    }
}

/// Always-on monitoring: start `xftrace --domain NAME on -- FUNCTIONS` in
/// the background and return at once. That process talks to libvirt only
/// after this hook has exited (libvirt finishes the start first), waits for
/// the guest kernel to boot, and holds none of the hook's pipes, so libvirt
/// never waits for it.
fn start_monitoring(
    root: &Path,
    st: &GuestDir,
    name: &str,
    facts: &DomainFacts,
    arrival: Option<Arrival>,
) -> Result<Option<Child>> {
    let mut log = files::replace_private(&st.path().join("monitor.log"))?;
    let args = match monitor_args(root, name, facts, arrival) {
        Ok(a) => a,
        Err(why) => {
            let msg = format!(
                "xftrace hook: not monitoring {}: its definition's <xftrace:monitor functions=...> is refused: {why}",
                escape(name)
            );
            warn!("{msg}");
            let _ = writeln!(log, "{msg}");
            return Ok(None);
        }
    };
    Ok(Some(process::spawn_detached(&args, log, None)?))
}

/// Start what traces an enrolled domain that has just started (or that
/// `watch --all` finds running with no collector): always-on monitoring
/// when its definition asks for it, else the session a restore or an
/// incoming migration brought along, if one did. The `xftrace on` it
/// starts, if any, is returned (it exits once its collector runs).
pub fn begin_tracing(
    root: &Path,
    st: &GuestDir,
    name: &str,
    facts: &DomainFacts,
) -> Result<Option<Child>> {
    if !facts.monitor.is_empty() {
        let arrival = take_arrival(st);
        return start_monitoring(root, st, name, facts, arrival);
    }
    match take_arrival(st) {
        Some(arrival) => {
            let session = match arrival {
                Arrival::Restore => session::interrupted_session(st),
                Arrival::Migration => None,
            };
            resume_session(root, st, name, session.as_deref(), arrival)
        }
        None => Ok(None),
    }
}

/// Run the hook. `args` are libvirt's: domain, operation, sub-operation,
/// extra. An `Err` refuses the operation (libvirt shows the message).
pub fn qemu(root: &Path, args: &[String], stdin: &mut dyn Read) -> Result<()> {
    let HookEvent {
        domain: name,
        operation: op,
        sub_operation: sub,
    } = HookEvent::parse(args)?;
    match (op, sub) {
        ("prepare", "begin") => match domain_xml::prepare_decision(&read_xml(stdin)?) {
            HookDecision::Allow => Ok(()),
            HookDecision::Refuse(why) => Err(Error::State(why)),
        },
        ("started", "begin") => {
            let xml = read_xml(stdin).unwrap_or_default();
            // Most domains are not enrolled: nothing to do, and no index.
            if !domain_xml::may_be_enrolled(&xml) {
                return Ok(());
            }
            let Ok(f) = domain_xml::facts(&xml) else {
                return Ok(());
            };
            if f.enrolled {
                match record(root, name, DomainLife::Running) {
                    // The host's watch service (`watch --all`) follows this
                    // start through libvirt's events and starts the
                    // collector itself, as a process of its own service.
                    Ok(st) if statedir::service_running(root) => {
                        if let Ok(mut log) = files::replace_private(&st.path().join("monitor.log"))
                        {
                            let _ = writeln!(
                                log,
                                "xftrace hook: {} started; tracing left to the watch service (xftrace watch --all)",
                                escape(name)
                            );
                        }
                    }
                    Ok(st) => {
                        if let Err(e) = begin_tracing(root, &st, name, &f) {
                            warn!("xftrace hook: cannot start tracing {}: {e}", escape(name));
                        }
                    }
                    Err(e) => warn!(
                        "xftrace hook: cannot record that {} started: {e}",
                        escape(name)
                    ),
                }
            }
            Ok(())
        }
        // A restore (`virsh restore`, or `virsh start` of a managed-saved
        // domain) brings back a guest that may still be tracing. The XML
        // passes unchanged (no output).
        ("restore", "begin") => {
            if let Some(st) = GuestDir::existing_domain(root, name) {
                leave_mark(&st, name, Arrival::Restore);
            }
            Ok(())
        }
        // An incoming live migration (this host is the destination): the
        // guest arrives as it ran on the source, tracer and all. It is
        // refused if this host lacks the domain's kernel build, without
        // which it could be neither monitored nor switched off here. The
        // XML passes unchanged.
        ("migrate", "begin") => {
            let xml = read_xml(stdin)?;
            if !domain_xml::may_be_enrolled(&xml) {
                return Ok(());
            }
            let Ok(f) = domain_xml::facts(&xml) else {
                return Ok(());
            };
            if f.enrolled {
                if let Some(map) = &f.system_map {
                    if let Err(why) = builds::check_recorded(root, Path::new(map)) {
                        return Err(Error::State(format!(
                            "domain {} cannot migrate to this host: {why}; store its kernel build here first (`xftrace add-kernel --system-map PATH`, with the same state directory as on the source)",
                            escape(name)
                        )));
                    }
                }
                match GuestDir::for_domain(root, name) {
                    Ok(st) => leave_mark(&st, name, Arrival::Migration),
                    Err(e) => warn!(
                        "xftrace hook: cannot note the arrival of {}: {e}",
                        escape(name)
                    ),
                }
            }
            Ok(())
        }
        ("stopped", "end") | ("release", "end") => {
            // Only domains xftrace has state for; nothing to do for others.
            if GuestDir::existing_domain(root, name).is_some() {
                match record(root, name, DomainLife::Stopped) {
                    // The collector notices the RAM file going away by itself;
                    // a SIGTERM makes it write out what it has at once.
                    Ok(st) => {
                        if st.collector_running().unwrap_or(false) {
                            if let Some(p) = st.read_json::<ProcessId>(&st.status_path()) {
                                p.terminate();
                            }
                        }
                    }
                    Err(e) => warn!(
                        "xftrace hook: cannot record that {} stopped: {e}",
                        escape(name)
                    ),
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::hook::recorded;
    use crate::libvirt::hook::tests::{with_monitor, ENROLLED};

    fn run(root: &Path, args: &[&str], xml: &str) -> Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        qemu(root, &args, &mut xml.as_bytes())
    }

    #[test]
    fn a_restore_leaves_a_mark_used_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = GuestDir::for_domain(&root, "t1").unwrap();
        run(&root, &["t1", "restore", "begin", "-"], ENROLLED).unwrap();
        assert_eq!(take_arrival(&st), Some(Arrival::Restore));
        assert_eq!(take_arrival(&st), None);
        run(&root, &["zz", "restore", "begin", "-"], "").unwrap();
        assert!(GuestDir::existing_domain(&root, "zz").is_none());
        // Functions from a state file are checked like a definition's.
        let evil = ["--output=/etc/passwd".to_string()];
        assert!(on_args(&root, "t1", Some(&evil), None).is_err());
    }

    #[test]
    fn an_incoming_migration_of_an_enrolled_domain_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        // This host has never seen the domain: `migrate begin` creates its
        // state directory only when the domain is enrolled.
        run(
            &root,
            &["p", "migrate", "begin", "-"],
            "<domain><name>p</name></domain>",
        )
        .unwrap();
        assert!(GuestDir::existing_domain(&root, "p").is_none());
        // A build this host lacks: refused, nothing left behind.
        let elsewhere = ENROLLED.replace("/k/System.map", "/other/System.map");
        let e = run(&root, &["t1", "migrate", "begin", "-"], &elsewhere).unwrap_err();
        assert!(e.to_string().contains("xftrace add-kernel"), "{e}");
        assert!(GuestDir::existing_domain(&root, "t1").is_none());
        // A build stored here (as `add-kernel` stores it): accepted.
        let src = tmp.path().join("System.map");
        std::fs::write(&src, crate::kernel::symbols::tests::MAP).unwrap();
        let stored = builds::store(&root, &src, None, None, false).unwrap();
        let here = ENROLLED.replace("/k/System.map", &stored.display().to_string());
        run(&root, &["t1", "migrate", "begin", "-"], &here).unwrap();
        let st = GuestDir::existing_domain(&root, "t1").unwrap();
        assert!(Arrival::Migration.mark(&st).is_file());
        // Without monitoring, `on --adopt` (never a function list from
        // anywhere but the guest's own control block, checked there).
        let args = on_args(&root, "t1", None, Some(Arrival::Migration)).unwrap();
        assert_eq!(args.last().unwrap(), "--adopt");
        assert!(!args.iter().any(|a| a == "--"));
        let gap = args
            .iter()
            .find(|a| a.to_string_lossy().starts_with("--gap="))
            .unwrap();
        assert!(gap.to_string_lossy().contains("live migration"), "{gap:?}");
        // With monitoring, its functions, after `--`.
        let f = domain_xml::facts(&with_monitor("sys_read")).unwrap();
        let args = monitor_args(&root, "t1", &f, Some(Arrival::Migration)).unwrap();
        assert_eq!(&args[args.len() - 2..], ["--", "sys_read"]);
        // `started begin` uses the mark up (not run here: it would start
        // this test binary as the background xftrace).
        assert_eq!(take_arrival(&st), Some(Arrival::Migration));
        assert!(!Arrival::Migration.mark(&st).exists());
    }

    #[test]
    fn prepare_refuses_only_broken_enrolled_domains() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let root = &root;
        let plain = "<domain type='qemu'><name>p</name></domain>";
        assert!(run(root.as_path(), &["p", "prepare", "begin", "-"], plain).is_ok());
        assert!(run(root.as_path(), &["t1", "prepare", "begin", "-"], ENROLLED).is_ok());
        let broken = ENROLLED.replace("<allocation mode='immediate'/>", "");
        let e = run(root.as_path(), &["t1", "prepare", "begin", "-"], &broken).unwrap_err();
        assert!(e.to_string().contains("xftrace enroll t1"), "{e}");
        // Plain domains leave no trace in xftrace's state.
        assert!(run(root.as_path(), &["p", "started", "begin", "-"], plain).is_ok());
        assert!(!root.as_path().join("domains/p").exists());
    }

    #[test]
    fn lifecycle_is_recorded_for_enrolled_domains() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let root = &root;
        run(root.as_path(), &["t1", "started", "begin", "-"], ENROLLED).unwrap();
        assert_eq!(
            recorded(root.as_path(), "t1").unwrap().state,
            DomainLife::Running
        );
        run(root.as_path(), &["t1", "stopped", "end", "-"], "").unwrap();
        assert_eq!(
            recorded(root.as_path(), "t1").unwrap().state,
            DomainLife::Stopped
        );
        // Unknown operations and domains are no-ops.
        run(root.as_path(), &["zz", "migrate", "begin", "-"], "").unwrap();
        run(root.as_path(), &["zz", "stopped", "end", "-"], "").unwrap();
        assert!(!root.as_path().join("domains/zz").exists());
    }

    #[test]
    fn a_refused_monitor_request_runs_nothing_and_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let root = &root;
        let xml = with_monitor("sys_read --connect=qemu+ext:///system?command=/tmp/x");
        run(root.as_path(), &["t1", "started", "begin", "-"], &xml).unwrap();
        let log = std::fs::read_to_string(root.as_path().join("domains/t1/monitor.log")).unwrap();
        assert!(log.contains("not monitoring t1"), "{log}");
        assert!(log.contains("not a function name"), "{log}");
    }
}
