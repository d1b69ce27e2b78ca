//! Per-guest state on the host: a private directory holding the collector's
//! lock, its status, the Klog and the record spool of the current session.
//!
//! Everything here holds guest data or keys, so directories are 0700 and
//! files 0600, whatever the umask, and nothing is followed through a link.
//!
//! One collector per guest holds the lock exclusively for as long as it
//! runs. Anyone who only wants to know whether a collector runs probes with
//! a shared lock, which never makes a concurrent `on` believe a collector
//! is there.

use std::fs::{File, OpenOptions};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::base::error::{Error, Result};
use crate::host::files;

/// Default root of xftrace's state (`--state-dir`, `XFTRACE_STATE_DIR`).
pub const DEFAULT_ROOT: &str = "/var/lib/xftrace";
/// A status or hook record is a few hundred bytes.
const MAX_JSON: u64 = 1 << 20;

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The state directory of one guest.
pub struct GuestDir {
    dir: PathBuf,
}

/// A 64-bit FNV-1a hash: stable across Rust versions, for directory names.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Create the state root (its parents as needed) and check it is private.
pub fn open_root(root: &Path) -> Result<()> {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
    }
    files::private_dir(root)
}

/// `watch --all`'s lock in the state root: held (exclusively) for as long
/// as the host's watch service runs. The hook tests it to leave starting
/// collectors to the service.
fn service_lock_file(root: &Path) -> Result<File> {
    open_lock_file(&root.join("watch-all.lock"))
}

/// A lock file (created 0600 if missing; never through a symlink, never
/// inherited across exec).
fn open_lock_file(p: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| Error::io(format!("cannot open {}", p.display()), e))
}

/// Take the watch service's lock of `root`: None if another holds it. The
/// lock lasts as long as the returned file is open.
pub fn service_lock(root: &Path) -> Result<Option<File>> {
    open_root(root)?;
    let f = service_lock_file(root)?;
    // A hook probing the lock holds it shared for an instant: waited out.
    for _ in 0..50 {
        if GuestDir::flock(&f, true)? {
            return Ok(Some(f));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(None)
}

/// Does a `watch --all` service run for `root`? (Its lock is held.)
pub fn service_running(root: &Path) -> bool {
    if !root.join("watch-all.lock").exists() {
        return false;
    }
    match service_lock_file(root) {
        Ok(f) => matches!(GuestDir::flock(&f, false), Ok(false)),
        Err(_) => false,
    }
}

impl GuestDir {
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
        let id = format!("file-{base}-{:016x}", fnv1a(&files::path_bytes(&canon)));
        Self::open(root, "guests", &id)
    }

    /// State of libvirt domain `name`.
    pub fn for_domain(root: &Path, name: &str) -> Result<Self> {
        if name.is_empty()
            || name.starts_with('.')
            || name.contains('/')
            || name.len() > 255
            || name.chars().any(char::is_control)
        {
            return Err(Error::Input(format!(
                "'{}' is not a usable domain name",
                crate::base::escape::escape(name)
            )));
        }
        Self::open(root, "domains", name)
    }

    fn open(root: &Path, kind: &str, id: &str) -> Result<Self> {
        open_root(root)?;
        let parent = root.join(kind);
        files::private_dir(&parent)?;
        let dir = parent.join(id);
        files::private_dir(&dir)?;
        Ok(GuestDir { dir })
    }

    /// The state of a domain if xftrace has any, without creating it.
    pub fn existing_domain(root: &Path, name: &str) -> Option<Self> {
        let dir = root.join("domains").join(name);
        std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| m.is_dir())
            .then(|| GuestDir::for_domain(root, name).ok())
            .flatten()
    }

    /// Every guest with state under `root`, sorted: libvirt domains by
    /// name, guests given by their RAM file by their directory's name
    /// (`file-…`). Nothing is created, and links are not followed.
    pub fn all(root: &Path) -> Result<Vec<(String, GuestDir)>> {
        let mut out = Vec::new();
        for kind in ["domains", "guests"] {
            let parent = root.join(kind);
            let entries = match std::fs::read_dir(&parent) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot list {}", parent.display()), e)),
            };
            for e in entries {
                let e = e.map_err(|e| Error::io(format!("cannot list {}", parent.display()), e))?;
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if let (true, Some(name)) = (is_dir, e.file_name().to_str()) {
                    out.push((name.to_string(), GuestDir { dir: e.path() }));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn klog(&self) -> PathBuf {
        self.dir.join("klog")
    }
    pub fn anomalies(&self) -> PathBuf {
        self.dir.join("anomalies.log")
    }
    /// The anomalies log before its last rotation.
    pub fn anomalies_rotated(&self) -> PathBuf {
        self.dir.join("anomalies.log.1")
    }
    pub fn collector_log(&self) -> PathBuf {
        self.dir.join("collector.log")
    }
    fn lock_path(&self) -> PathBuf {
        self.dir.join("collector.lock")
    }

    /// The collector's status file.
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Read a small JSON file of this directory (None if missing or bad).
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Option<T> {
        let text = files::read_text_bounded(path, MAX_JSON, "state file").ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replace a JSON file of this directory atomically.
    pub fn write_json<T: serde::Serialize>(&self, path: &Path, v: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(v).expect("state serializes");
        files::write_atomically(path, text.as_bytes())
    }

    /// Remove files of this directory (those that exist).
    pub fn remove(&self, paths: &[PathBuf]) -> Result<()> {
        paths.iter().try_for_each(|p| files::remove_if_present(p))
    }

    fn lock_file(&self) -> Result<File> {
        open_lock_file(&self.lock_path())
    }

    /// flock(2) `f`, exclusive or shared, without waiting: Ok(false) if
    /// someone holds a conflicting lock. The standard library's
    /// `File::try_lock` is flock(2) on Linux and, unlike nix's `Flock`,
    /// does not unlock when dropped: the lock must outlive `on`'s handle,
    /// held by the collector's inherited descriptor.
    fn flock(f: &File, exclusive: bool) -> Result<bool> {
        let r = if exclusive {
            f.try_lock()
        } else {
            f.try_lock_shared()
        };
        match r {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io("cannot lock the collector lock", e))
            }
        }
    }

    /// Take the collector lock, or None if a collector holds it. The lock
    /// lives as long as any descriptor of the returned file, including one
    /// inherited by a child: that is how `on` hands it to the collector.
    /// A concurrent probe (`status`, `list`) holds the lock shared for an
    /// instant: that is waited out, never taken for a collector.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let f = self.lock_file()?;
        for _ in 0..100 {
            if Self::flock(&f, true)? {
                return Ok(Some(f));
            }
            // Held. Exclusively (a collector) or shared (a probe)?
            let probe = self.lock_file()?;
            if !Self::flock(&probe, false)? {
                return Ok(None);
            }
            drop(probe);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }

    /// True while a collector holds the lock. Takes it shared, for an
    /// instant, so that it never gets in the way of a collector starting.
    pub fn collector_running(&self) -> Result<bool> {
        let f = self.lock_file()?;
        Ok(!Self::flock(&f, false)?)
    }

    /// Wait until no collector holds the lock.
    pub fn wait_unlocked(&self, timeout: Duration) -> Result<bool> {
        let end = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(Instant::now);
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

    /// Take the lock, waiting up to `timeout` for a collector to let go.
    pub fn lock_waiting(&self, timeout: Duration) -> Result<Option<File>> {
        let end = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(Instant::now);
        loop {
            if let Some(f) = self.try_lock()? {
                return Ok(Some(f));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl GuestDir {
    /// Adopt the collector lock inherited from `on` as descriptor `fd`:
    /// only if it is open and is this directory's `collector.lock` (the
    /// same file, not reached through a link), so that a wrong `--lock-fd`
    /// can neither close a descriptor someone else owns nor run a
    /// collector that holds no lock.
    pub fn inherited_lock(&self, fd: i32) -> Result<File> {
        let wrong = |why: &str| {
            Error::State(format!(
                "--lock-fd {fd} {why}: `collect` is started by `xftrace on`, not by hand"
            ))
        };
        // F_GETFD only asks whether the descriptor is open.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(wrong("is not an open descriptor"));
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // fstat on an open descriptor into a local struct.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(wrong("cannot be examined"));
        }
        let ours = std::fs::symlink_metadata(self.lock_path())
            .map_err(|e| Error::io(format!("cannot examine {}", self.lock_path().display()), e))?;
        use std::os::unix::fs::MetadataExt;
        if !ours.file_type().is_file() || ours.dev() != st.st_dev || ours.ino() != st.st_ino {
            return Err(wrong(&format!("is not {}", self.lock_path().display())));
        }
        // SAFETY: open (checked above), and inherited for this process
        // alone: `on` starts the collector with it and keeps no use of it.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // Held through `on`'s open file description, this succeeds; held
        // by another collector, it does not.
        if !Self::flock(&f, true)? {
            std::mem::forget(f); // not ours to close after all
            return Err(wrong("is locked by another collector"));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn only_this_guests_lock_is_adopted_as_the_collectors() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let root = tempfile::tempdir().unwrap();
        let ram = root.path().join("ram");
        std::fs::write(&ram, b"x").unwrap();
        let st = GuestDir::for_mem_file(&root.path().join("state"), &ram).unwrap();
        let held = st.try_lock().unwrap().unwrap();
        // What `on` passes: its own locked descriptor.
        let fd = unsafe { libc::dup(held.as_raw_fd()) };
        assert!(st.inherited_lock(fd).is_ok());
        // Another file, a closed descriptor, standard input: refused.
        let other = File::open(&ram).unwrap().into_raw_fd();
        assert!(st.inherited_lock(other).is_err());
        unsafe { libc::close(other) };
        assert!(st.inherited_lock(other).is_err());
        assert!(st.inherited_lock(0).is_err());
        // The right file, opened anew while `held` keeps its lock.
        let fresh = File::open(st.lock_path()).unwrap().into_raw_fd();
        let e = st.inherited_lock(fresh).unwrap_err().to_string();
        assert!(e.contains("locked by another collector"), "{e}");
        unsafe { libc::close(fresh) };
    }

    #[test]
    fn state_is_private_and_locked_once() {
        let root = tempfile::tempdir().unwrap();
        let ram = root.path().join("guest ram");
        std::fs::write(&ram, b"x").unwrap();
        let st = GuestDir::for_mem_file(&root.path().join("state"), &ram).unwrap();
        assert_eq!(mode(st.path()), 0o700);
        assert_eq!(mode(&root.path().join("state")), 0o700);
        assert!(st
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("file-guest_ram-"));
        let held = st.try_lock().unwrap();
        assert!(held.is_some());
        assert!(st.collector_running().unwrap());
        assert!(st.try_lock().unwrap().is_none());
        drop(held);
        assert!(!st.collector_running().unwrap());
        let s = vec!["__x64_sys_read".to_string()];
        st.write_json(&st.status_path(), &s).unwrap();
        assert_eq!(st.read_json::<Vec<String>>(&st.status_path()).unwrap(), s);
        assert_eq!(mode(&st.status_path()), 0o600);
    }

    #[test]
    fn a_probe_never_looks_like_a_collector() {
        let root = tempfile::tempdir().unwrap();
        let st = GuestDir::for_domain(&root.path().join("state"), "web01").unwrap();
        // A `status` probing at the same moment as `on` takes the lock.
        let probe = st.lock_file().unwrap();
        assert!(GuestDir::flock(&probe, false).unwrap());
        assert!(!st.collector_running().unwrap());
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(probe);
        });
        assert!(st.try_lock().unwrap().is_some(), "the probe blocked `on`");
        releaser.join().unwrap();
    }

    #[test]
    fn domain_names_cannot_escape_the_state_directory() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "..", "../x", ".hidden", "a/b", "a\nb", "\x1b[2K"] {
            assert!(
                GuestDir::for_domain(&root.path().join("state"), bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
