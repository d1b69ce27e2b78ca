//! The libvirt qemu hook (`/etc/libvirt/hooks/qemu.d/xftrace` runs
//! `xftrace hook qemu DOMAIN OP SUBOP EXTRA` with the domain XML on stdin).
//!
//! libvirt waits for hooks while holding its locks, so this code never calls
//! back into libvirt and never blocks a start for anything but the one check
//! that matters: an enrolled domain must keep its shared, preallocated,
//! file-backed RAM, or xftrace would silently lose it.

use std::path::Path;

use log::warn;

use crate::domain_xml::{self, HookDecision};
use crate::error::{Error, Result};
use crate::state::{now_unix, GuestState};

/// What the hook records about a domain's life, beside xftrace's state.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LibvirtState {
    pub state: String,
    pub since: f64,
}

fn record(root: &Path, name: &str, state: &str) -> Result<GuestState> {
    let st = GuestState::for_domain(root, name)?;
    let text = serde_json::to_string(&LibvirtState {
        state: state.into(),
        since: now_unix(),
    })
    .expect("serializes");
    crate::render::write_atomically(&st.dir().join("libvirt.json"), &text)?;
    Ok(st)
}

/// Always-on monitoring: start `xftrace --domain NAME on FUNCTIONS` in the
/// background and return at once. That process talks to libvirt only after
/// this hook has exited (libvirt finishes the start first), waits for the
/// guest kernel to boot, and holds none of the hook's pipes, so libvirt never
/// waits for it.
fn start_monitoring(root: &Path, st: &GuestState, name: &str, functions: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = crate::state::create_private(&st.dir().join("monitor.log"))?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the xftrace binary", e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir")
        .arg(root)
        .args(["--domain", name, "on", "--wait", "300"])
        .args(functions)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Error::io("cannot dup log", e))?,
        )
        .stderr(log);
    // In the child, before exec: leave libvirt's process group and session.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map_err(|e| Error::io("cannot start monitoring", e))?;
    Ok(())
}

/// Read what the hook last recorded for domain `name`.
pub fn recorded(root: &Path, name: &str) -> Option<LibvirtState> {
    let p = root.join("domains").join(name).join("libvirt.json");
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// Run the hook. `args` are libvirt's: domain, operation, sub-operation,
/// extra. An `Err` refuses the operation (libvirt shows the message).
pub fn qemu(root: &Path, args: &[String], stdin: &mut dyn std::io::Read) -> Result<()> {
    let (Some(name), Some(op)) = (args.first(), args.get(1)) else {
        return Err(Error::Input(
            "usage: xftrace hook qemu DOMAIN OPERATION SUB-OPERATION [EXTRA]".into(),
        ));
    };
    let sub = args.get(2).map_or("-", String::as_str);
    match (op.as_str(), sub) {
        ("prepare", "begin") => {
            let mut xml = String::new();
            stdin
                .read_to_string(&mut xml)
                .map_err(|e| Error::io("cannot read the domain XML from stdin", e))?;
            match domain_xml::prepare_decision(&xml) {
                HookDecision::Allow => Ok(()),
                HookDecision::Refuse(why) => Err(Error::State(why)),
            }
        }
        ("started", "begin") => {
            let mut xml = String::new();
            let _ = stdin.read_to_string(&mut xml);
            let Ok(f) = domain_xml::facts(&xml) else {
                return Ok(());
            };
            if f.enrolled {
                match record(root, name, "running") {
                    Ok(st) if !f.monitor.is_empty() => {
                        if let Err(e) = start_monitoring(root, &st, name, &f.monitor) {
                            warn!("xftrace hook: cannot start monitoring {name}: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!("xftrace hook: cannot record that {name} started: {e}"),
                }
            }
            Ok(())
        }
        ("stopped", "end") | ("release", "end") => {
            // Only domains xftrace has state for; nothing to do for others.
            if root.join("domains").join(name).is_dir() {
                match record(root, name, "stopped") {
                    // The collector notices the RAM file going away by itself;
                    // a SIGTERM makes it write out what it has at once.
                    Ok(st) => {
                        if st.collector_running().unwrap_or(false) {
                            if let Some(pid) = st.read_status().map(|s| s.pid).filter(|&p| p > 0) {
                                let _ = nix::sys::signal::kill(
                                    nix::unistd::Pid::from_raw(pid as i32),
                                    nix::sys::signal::Signal::SIGTERM,
                                );
                            }
                        }
                    }
                    Err(e) => warn!("xftrace hook: cannot record that {name} stopped: {e}"),
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

    const ENROLLED: &str = "<domain type='qemu'><name>t1</name><metadata><xftrace:enrollment xmlns:xftrace=\"http://xftrace.invalid/ns/enrollment/1\"><xftrace:system-map path=\"/k/System.map\"/><xftrace:previous-memory-backing absent='yes'/><xftrace:previous-memballoon absent='yes'/></xftrace:enrollment></metadata><memoryBacking><source type='file'/><access mode='shared'/><allocation mode='immediate'/></memoryBacking><devices><memballoon model='none'/></devices></domain>";

    fn run(root: &Path, args: &[&str], xml: &str) -> Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        qemu(root, &args, &mut xml.as_bytes())
    }

    #[test]
    fn prepare_refuses_only_broken_enrolled_domains() {
        let root = tempfile::tempdir().unwrap();
        let plain = "<domain type='qemu'><name>p</name></domain>";
        assert!(run(root.path(), &["p", "prepare", "begin", "-"], plain).is_ok());
        assert!(run(root.path(), &["t1", "prepare", "begin", "-"], ENROLLED).is_ok());
        let broken = ENROLLED.replace("<allocation mode='immediate'/>", "");
        let e = run(root.path(), &["t1", "prepare", "begin", "-"], &broken).unwrap_err();
        assert!(e.to_string().contains("xftrace enroll t1"), "{e}");
        // Plain domains leave no trace in xftrace's state.
        assert!(run(root.path(), &["p", "started", "begin", "-"], plain).is_ok());
        assert!(!root.path().join("domains/p").exists());
    }

    #[test]
    fn lifecycle_is_recorded_for_enrolled_domains() {
        let root = tempfile::tempdir().unwrap();
        run(root.path(), &["t1", "started", "begin", "-"], ENROLLED).unwrap();
        assert_eq!(recorded(root.path(), "t1").unwrap().state, "running");
        run(root.path(), &["t1", "stopped", "end", "-"], "").unwrap();
        assert_eq!(recorded(root.path(), "t1").unwrap().state, "stopped");
        // Unknown operations and domains are no-ops.
        run(root.path(), &["zz", "migrate", "begin", "-"], "").unwrap();
        run(root.path(), &["zz", "stopped", "end", "-"], "").unwrap();
        assert!(!root.path().join("domains/zz").exists());
    }
}
