//! Files on the host that hold guest data or keys: created only by xftrace,
//! never through a link someone planted, readable by root alone, replaced
//! atomically, and read with a bound that fits what they are.
//!
//! A directory an output goes to may be writable by others (`/tmp`, a
//! shared work directory). So new files are created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` under unpredictable names and renamed into
//! place: a symlink or a file planted at the final name is replaced, never
//! followed or reused (a reused file would keep its owner, who could then
//! read the keys).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::base::error::{Error, Result};

fn nofollow() -> i32 {
    libc::O_NOFOLLOW | libc::O_CLOEXEC
}

/// Create `path`, which must not exist, as a file only its owner can read.
pub fn create_new_private(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    // Whatever the umask: 0600.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
    Ok(f)
}

/// Remove `path` if it exists (a link is removed, not followed).
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

/// A fresh private file at `path` inside one of xftrace's own directories,
/// replacing what was there.
pub fn replace_private(path: &Path) -> Result<File> {
    remove_if_present(path)?;
    create_new_private(path)
}

/// An unpredictable name for a temporary file beside `dest`.
fn temp_beside(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file name", dest.display())))?;
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(|e| {
        Error::io(
            "cannot get random bytes",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{:016x}.tmp", u64::from_le_bytes(r)));
    Ok(parent_dir(dest).join(tmp))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a directory, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync directory {}", dir.display()), e))
}

/// A file written under a temporary name and renamed into place on
/// [`AtomicFile::commit`]; dropped uncommitted, it leaves nothing behind.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let tmp = temp_beside(dest)?;
        let f = create_new_private(&tmp)?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 16, f)),
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.out
            .as_mut()
            .expect("an uncommitted AtomicFile has a writer")
    }

    /// Write `bytes`, mapping errors to one naming the destination.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let dest = self.dest.display().to_string();
        self.writer()
            .write_all(bytes)
            .map_err(|e| Error::io(format!("cannot write {dest}"), e))
    }

    /// Flush, fsync, rename over the destination, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("committed once");
        let f = out.into_inner().map_err(|e| {
            Error::io(
                format!("cannot write {}", self.dest.display()),
                e.into_error(),
            )
        })?;
        f.sync_all()
            .map_err(|e| Error::io(format!("cannot write {}", self.dest.display()), e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::io(format!("cannot move {} into place", self.dest.display()), e))?;
        // Renamed: nothing to clean up any more.
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.dest))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Replace `path` with `bytes` atomically, mode 0600.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// Replace `path` with `bytes` atomically, mode 0644: for what others
/// must read (a metrics file for node_exporter) and holds no guest data.
pub fn write_atomically_readable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = AtomicFile::create(path)?;
    f.writer()
        .get_ref()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    f.write_all(bytes)?;
    f.commit()
}

/// Open an existing regular file for reading without following a link.
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {what} {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {what} {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::Input(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// Read a whole file of at most `max` bytes (more is an error, never a
/// silent truncation or an unbounded allocation).
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let f = open_regular(path, what)?;
    let mut buf = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("cannot read {what} {}", path.display()), e))?;
    if buf.len() as u64 > max {
        return Err(Error::Input(format!(
            "{what} {} is larger than {} bytes; it cannot be one",
            path.display(),
            max
        )));
    }
    Ok(buf)
}

/// [`read_bounded`] for text.
pub fn read_text_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    String::from_utf8(read_bounded(path, max, what)?)
        .map_err(|_| Error::Input(format!("{what} {} is not UTF-8 text", path.display())))
}

/// The last `max` bytes of a file (a log), as lossy text.
pub fn read_tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = open_regular(path, "log").ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Refuse a file that someone other than root (or this user) could have
/// written: it must be a regular file owned by root or the effective user
/// and not writable by group or others.
pub fn check_trusted(meta: &std::fs::Metadata, path: &Path, what: &str) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let problem = if meta.file_type().is_symlink() {
        Some("is a symbolic link")
    } else if !(meta.is_file() || meta.is_dir()) {
        Some("is not a regular file or directory")
    } else if meta.uid() != 0 && meta.uid() != euid {
        Some("is not owned by root")
    } else if meta.mode() & 0o022 != 0 {
        Some("is writable by group or others")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Input(format!(
            "{what} {} {p}; refusing to use it",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Create the directory `path` (0700) if it is missing; if it exists it must
/// be a directory owned by this user that nobody else can enter. An existing
/// directory's mode is never changed: a mistyped `--state-dir` must not
/// make a shared directory private.
pub fn private_dir(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            return std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::io(
                format!("cannot create state directory {}", path.display()),
                e,
            ))
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot create state directory {}", path.display()),
                e,
            ))
        }
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(Error::Input(format!(
            "{} is not a directory (a symbolic link?); xftrace keeps guest data and keys there",
            path.display()
        )));
    }
    if meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(Error::Input(format!(
            "state directory {} is owned by uid {} with mode {:04o}; it holds guest data and keys, \
             so it must belong to uid {euid} with mode 0700 (chmod 700 it, or pick another --state-dir)",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Create the directory `path` (0700) if it is missing; if it exists it
/// must be a directory owned by root (or this user) that nobody else can
/// write. For directories that hold nothing secret, only things that must
/// not be replaced (trusted kernel builds).
pub fn trusted_dir(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
            if !meta.is_dir() {
                return Err(Error::Input(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            check_trusted(&meta, path, "directory")
        }
        Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
    }
}

/// A path as bytes, for hashing.
pub fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().to_owned().into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_writes_replace_planted_links_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("trace_graph.txt");
        symlink(&victim, &out).unwrap();
        write_atomically(&out, b"trace\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "trace\n");
        assert_eq!(mode(&out), 0o600);
        // A file someone else created there is replaced by a new inode.
        std::fs::write(&out, "theirs").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
        let before = std::fs::metadata(&out).unwrap().ino();
        write_atomically(&out, b"ours\n").unwrap();
        assert_ne!(std::fs::metadata(&out).unwrap().ino(), before);
        assert_eq!(mode(&out), 0o600);
        // Nothing left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn new_files_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = dir.path().join("f");
        symlink(&victim, &p).unwrap();
        assert!(create_new_private(&p).is_err());
        let f = replace_private(&p).unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(read_bounded(&victim, 4, "test file").is_err());
        assert_eq!(read_bounded(&victim, 8, "test file").unwrap(), b"precious");
        symlink(&victim, dir.path().join("l")).unwrap();
        assert!(read_bounded(&dir.path().join("l"), 100, "test file").is_err());
    }

    #[test]
    fn private_dirs_are_created_private_and_never_chmodded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        private_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        private_dir(&p).unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = private_dir(&shared).unwrap_err().to_string();
        assert!(e.contains("mode 1777"), "{e}");
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        let link = dir.path().join("link");
        symlink(&p, &link).unwrap();
        assert!(private_dir(&link).is_err());
    }
}
