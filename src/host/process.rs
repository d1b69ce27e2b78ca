//! xftrace's own background processes (the collector, always-on
//! monitoring): started detached from the caller, and signalled only when
//! provably themselves.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::host::files;

/// Start this binary with `args` in a session of its own (no terminal, no
/// process group of the caller's), output to `log`, logging at `info`
/// unless RUST_LOG says otherwise. `keep_fd` stays open across exec (the
/// collector's lock).
pub fn spawn_detached(args: &[OsString], log: File, keep_fd: Option<i32>) -> Result<Child> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the xftrace binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Error::io("cannot dup log", e))?,
        )
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // In the child, before exec: leave the caller's session and keep the
    // lock descriptor open across exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(fd) = keep_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::io("cannot start a background xftrace", e))
}

/// This host's boot id (changes at every boot).
pub fn boot_id() -> String {
    files::read_text_bounded(Path::new("/proc/sys/kernel/random/boot_id"), 64, "boot id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time of process `pid` in clock ticks since boot (/proc/PID/stat
/// field 22; the command name before it may hold anything, even ')').
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat =
        files::read_text_bounded(Path::new(&format!("/proc/{pid}/stat")), 4096, "stat").ok()?;
    let after = &stat[stat.rfind(')')?.checked_add(1)?..];
    // Fields from 3 (state) on; starttime is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Which process: its pid, its start time (clock ticks since boot, from
/// /proc/PID/stat) and the host's boot id. A pid alone may be recycled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessId {
    pub pid: u32,
    pub pid_start: u64,
    pub boot_id: String,
}

impl ProcessId {
    /// This process.
    pub fn own() -> Self {
        let pid = std::process::id();
        let pid_start = i32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .unwrap_or(0);
        ProcessId {
            pid,
            pid_start,
            boot_id: boot_id(),
        }
    }

    /// Send SIGTERM, if and only if this process still runs and is provably
    /// the one named. Returns whether it was signalled.
    pub fn terminate(&self) -> bool {
        terminate(self)
    }
}

fn terminate(id: &ProcessId) -> bool {
    let Some(pid) = i32::try_from(id.pid).ok().filter(|&p| p > 1) else {
        return false;
    };
    if id.pid_start == 0 || id.boot_id.is_empty() || id.boot_id != boot_id() {
        return false;
    }
    // SAFETY: plain syscalls; the returned descriptor is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: pidfd_open returned a new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // With the pidfd held, the pid names this process until it is reaped:
    // check it is the one we mean, then signal through the pidfd.
    if process_start_time(pid) != Some(id.pid_start) {
        return false;
    }
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGTERM,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_collector_itself_is_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = process_start_time(pid as i32).unwrap();
        let mut s = ProcessId {
            pid,
            pid_start: start + 1, // a recycled pid: another process
            boot_id: boot_id(),
        };
        assert!(!s.terminate());
        s.pid = u32::MAX; // i32 -1: kill(-1) would hit every process
        s.pid_start = start;
        assert!(!s.terminate());
        s.pid = 1;
        assert!(!s.terminate());
        s.pid = pid;
        s.boot_id = "another boot".into();
        assert!(!s.terminate());
        assert!(child.try_wait().unwrap().is_none(), "sleep was signalled");
        s.boot_id = boot_id();
        assert!(s.terminate());
        let st = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGTERM)
        );
    }
}
