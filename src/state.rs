//! Per-guest state on the host: a private directory holding the collector's
//! lock, its status, the Klog and the record spool of the current session.
//!
//! Everything here holds guest data or keys, so directories are 0700 and
//! files 0600, whatever the umask.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::collect::RingStats;
use crate::error::{Error, Result};

/// Default root of xftrace's state (`--state-dir`, `XFTRACE_STATE_DIR`).
pub const DEFAULT_ROOT: &str = "/var/lib/xftrace";

/// Create (or truncate) `path` as a file only its owner can read.
pub fn create_private(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
    Ok(f)
}

/// Create `path` and its parents; make `path` itself 0700.
pub fn private_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| {
        Error::io(
            format!("cannot create state directory {}", path.display()),
            e,
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the collector reports about the current session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// starting, collecting, stopped, guest-gone, failed
    pub state: String,
    pub pid: u32,
    pub target: String,
    pub functions: Vec<String>,
    pub started: f64,
    pub updated: f64,
    pub key_epoch: u64,
    pub key_rotations: u64,
    pub slide: u64,
    pub nr_cpus: u32,
    pub banner: String,
    /// The System.map the collector used (for rendering after the guest is gone).
    #[serde(default)]
    pub system_map: String,
    #[serde(flatten)]
    pub rings: RingStats,
    /// Events the guest could not record: no valid key, or a CPU without a ring.
    pub guest_dropped: u64,
    pub heartbeat_stalled: bool,
    pub message: String,
}

fn remove_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {}", p.display()), e)),
        }
    }
    Ok(())
}

/// The state directory of one guest.
pub struct GuestState {
    dir: PathBuf,
}

/// A 64-bit FNV-1a hash: stable across Rust versions, for directory names.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl GuestState {
    /// State of the guest whose RAM file is `ram` (direct mode).
    pub fn for_mem_file(root: &Path, ram: &Path) -> Result<Self> {
        let canon = ram
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot resolve {}", ram.display()), e))?;
        let base: String = canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let id = format!(
            "file-{base}-{:016x}",
            fnv1a(canon.as_os_str().as_encoded_bytes())
        );
        Self::open(&root.join("guests").join(id))
    }

    /// State of libvirt domain `name`.
    pub fn for_domain(root: &Path, name: &str) -> Result<Self> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(Error::Input(format!(
                "'{name}' is not a usable domain name"
            )));
        }
        Self::open(&root.join("domains").join(name))
    }

    pub fn open(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent() {
            if let Some(root) = parent.parent() {
                private_dir(root)?;
            }
            private_dir(parent)?;
        }
        private_dir(dir)?;
        Ok(GuestState {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn klog(&self) -> PathBuf {
        self.dir.join("klog")
    }
    pub fn spool(&self) -> PathBuf {
        self.dir.join("records.bin")
    }
    pub fn anomalies(&self) -> PathBuf {
        self.dir.join("anomalies.log")
    }
    pub fn collector_log(&self) -> PathBuf {
        self.dir.join("collector.log")
    }
    fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    fn lock_path(&self) -> PathBuf {
        self.dir.join("collector.lock")
    }

    /// Remove the previous session's files.
    pub fn reset_session(&self) -> Result<()> {
        remove_files(&[
            self.klog(),
            self.spool(),
            self.anomalies(),
            self.status_path(),
            self.collector_log(),
        ])
    }

    /// Drop the spool and Klog once a trace (with its Klog) has been written.
    pub fn finish_session(&self) -> Result<()> {
        remove_files(&[self.spool(), self.klog()])
    }

    pub fn read_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(self.status_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_status(&self, s: &Status) -> Result<()> {
        let text = serde_json::to_string_pretty(s).expect("status serializes");
        crate::render::write_atomically(&self.status_path(), &text)
    }

    fn lock_file(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| Error::io(format!("cannot open {}", self.lock_path().display()), e))
    }

    /// Take the collector lock, or None if a collector holds it. The lock
    /// lives as long as any descriptor of the returned file, including one
    /// inherited by a child: that is how `on` hands it to the collector.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let f = self.lock_file()?;
        // flock(2) on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(Error::io("cannot lock the collector lock", e))
        }
    }

    /// True while a collector holds the lock.
    pub fn collector_running(&self) -> Result<bool> {
        Ok(self.try_lock()?.is_none())
    }

    /// Wait until no collector holds the lock.
    pub fn wait_unlocked(&self, timeout: Duration) -> Result<bool> {
        let end = Instant::now() + timeout;
        loop {
            if !self.collector_running()? {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Adopt a lock inherited from the parent as file descriptor `fd`.
///
/// # Safety
/// `fd` must be an open descriptor this process owns and nothing else uses.
pub unsafe fn inherited_lock(fd: i32) -> File {
    File::from(OwnedFd::from_raw_fd(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_private_and_locked_once() {
        let root = tempfile::tempdir().unwrap();
        let ram = root.path().join("guest ram");
        std::fs::write(&ram, b"x").unwrap();
        let st = GuestState::for_mem_file(&root.path().join("state"), &ram).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(st.dir()), 0o700);
        assert_eq!(mode(&root.path().join("state")), 0o700);
        assert!(st
            .dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("file-guest_ram-"));
        let held = st.try_lock().unwrap();
        assert!(held.is_some());
        assert!(st.collector_running().unwrap());
        drop(held);
        assert!(!st.collector_running().unwrap());
        let s = Status {
            state: "collecting".into(),
            functions: vec!["__x64_sys_read".into()],
            ..Default::default()
        };
        st.write_status(&s).unwrap();
        assert_eq!(st.read_status().unwrap(), s);
        assert_eq!(mode(&st.dir().join("status.json")), 0o600);
    }
}
