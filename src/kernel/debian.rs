//! Debian's own kernel packages as the trusted build of a stock guest
//! kernel: the guest runs `linux-image-RELEASE` at some version, its banner
//! says which, and the host fetches that exact package with apt (which
//! checks it against the archive's signed index), or takes a `.deb` the
//! operator has, and makes a build of it with no debug package:
//!
//! - `vmlinux` and its KASLR relocations, out of the package's `vmlinuz`
//!   ([`crate::kernel::bzimage`]);
//! - `System.map`, from the kallsyms tables inside that vmlinux
//!   ([`crate::kernel::kallsyms`]): Debian ships a stub `System.map` and
//!   keeps the real one in the `-dbg` package (283 MB to download, 1.7 GB
//!   unpacked, for a file the image itself holds);
//! - the modules (`lib/modules/RELEASE/**.ko`), to tell a loaded module by
//!   its code ([`crate::kernel::modcode`]).
//!
//! The build is then stored like any other ([`crate::kernel::builds`]),
//! by [`fetch_reference`] (apt) or [`store_deb`] (a `.deb` the operator has).
#![deny(clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use log::{info, warn};

use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::host::files;
use crate::kernel::vmlinux::Vmlinux;

/// A `vmlinuz` is at most a few tens of MiB.
const MAX_VMLINUZ: u64 = 128 << 20;
/// A kernel image package is about 27 MB; apt's own limit is the index's.
const MAX_DEB: u64 = 1 << 30;

/// A Debian kernel image package, by its release and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// `uname -r`: `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// The package version: `6.1.192-3`.
    pub version: String,
}

fn release_ok(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".+-".contains(&b))
}

fn version_ok(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-~".contains(&b))
}

impl Package {
    /// The package a Debian kernel's banner names, as Debian's kernels
    /// write it: `Linux version RELEASE (debian-kernel@lists.debian.org)
    /// (COMPILER) #1 SMP … Debian VERSION (DATE)`. None for any other
    /// banner, or names that are not a package's.
    pub fn from_banner(banner: &str) -> Option<Package> {
        let rest = banner.strip_prefix("Linux version ")?;
        let (release, rest) = rest.split_once(' ')?;
        if !rest.starts_with("(debian-kernel@lists.debian.org)") {
            return None;
        }
        let (_, tail) = rest.rsplit_once(" Debian ")?;
        let version = tail.split(' ').next()?;
        let p = Package {
            release: release.to_string(),
            version: version.to_string(),
        };
        p.valid().then_some(p)
    }

    /// `release=version`, as the operator writes it, or `release` alone
    /// for the version apt would install.
    pub fn parse(spec: &str) -> Option<Package> {
        let (release, version) = spec.split_once('=')?;
        let p = Package {
            release: release
                .strip_prefix("linux-image-")
                .unwrap_or(release)
                .to_string(),
            version: version.to_string(),
        };
        p.valid().then_some(p)
    }

    fn valid(&self) -> bool {
        release_ok(&self.release) && version_ok(&self.version)
    }

    /// The image package's name.
    pub fn name(&self) -> String {
        format!("linux-image-{}", self.release)
    }
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name(), self.version)
    }
}

/// Run `cmd`, its output kept for the error; fail with what it said.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("cannot run {what}"), e))?;
    if o.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&o.stderr);
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(Error::Input(format!(
        "{what} failed ({}): {}",
        o.status,
        escape(last.trim())
    )))
}

/// Download `pkg` with apt into the private directory `dir`; the path of
/// the `.deb`. apt checks it against the SHA256 of the archive's signed
/// index before it keeps it; the host's apt sources must offer that
/// version (Debian's security suite for security updates).
pub fn download(pkg: &Package, dir: &Path) -> Result<PathBuf> {
    if !pkg.valid() {
        return Err(Error::Input(format!(
            "not a kernel package: {}",
            escape(&pkg.to_string())
        )));
    }
    info!("fetching {pkg} with apt");
    run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{}={}", pkg.name(), pkg.version))
            .current_dir(dir),
        &format!(
            "apt-get download {}={} (is that version in this host's apt sources? `apt-get update` refreshes them; or fetch the .deb elsewhere and pass it with `xftrace add-kernel --deb FILE`)",
            pkg.name(),
            pkg.version
        ),
    )?;
    let mut debs = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
    {
        let p = e
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .path();
        if p.extension().is_some_and(|x| x == "deb") {
            debs.push(p);
        }
    }
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::Input(format!(
            "apt-get download left {} packages in {}, expected one",
            debs.len(),
            dir.display()
        ))),
    }
}

/// The SHA-256 of a file of at most [`MAX_DEB`] bytes, read in a stream.
fn sha256_of(p: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let f = files::open_regular(p, "kernel package")?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f.take(MAX_DEB.saturating_add(1)), &mut h)
        .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
    if n > MAX_DEB {
        return Err(Error::Input(format!(
            "{} is larger than {MAX_DEB} bytes: not a kernel package",
            p.display()
        )));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A stock kernel's build, made from its image package in a work
/// directory: the files [`crate::kernel::builds::store_reference`] keeps.
pub struct Made {
    pub package: Package,
    /// The `.deb`'s SHA-256, for the record.
    pub sha256: String,
    pub system_map: PathBuf,
    pub vmlinux: PathBuf,
    pub relocs: PathBuf,
    /// `lib/modules/RELEASE` of the package.
    pub modules: PathBuf,
    pub banner: String,
    /// `linux_banner − _text`.
    pub banner_offset: u64,
}

/// Unpack the image package `deb` into the private directory `work` and
/// make its build there. The package must be a Debian kernel image whose
/// banner names it (and `expect`, where given).
pub fn make(deb: &Path, work: &Path, expect: Option<&Package>) -> Result<Made> {
    let sha256 = sha256_of(deb)?;
    let root = work.join("root");
    files::private_dir(&root)?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| {
            Error::io(
                format!("{} has no /boot: not a kernel image package", deb.display()),
                e,
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Error::Input(format!("{} holds no /boot/vmlinuz-*", deb.display())))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .filter(|r| release_ok(r))
        .ok_or_else(|| Error::Input(format!("{}: an odd vmlinuz name", deb.display())))?
        .to_string();
    let image = files::read_bounded(&vmlinuz, MAX_VMLINUZ, "vmlinuz")?;
    let unpacked = crate::kernel::bzimage::unpack(&image)
        .map_err(|m| Error::Input(format!("{}: {m}", vmlinuz.display())))?;
    let map_text = crate::kernel::kallsyms::system_map(&unpacked.vmlinux)
        .map_err(|m| Error::Input(format!("{}: its kallsyms: {m}", vmlinuz.display())))?;
    let made_map = work.join("System.map");
    let made_vmlinux = work.join("vmlinux");
    let made_relocs = work.join("vmlinux.relocs");
    files::write_atomically(&made_map, map_text.as_bytes())?;
    files::write_atomically(&made_vmlinux, &unpacked.vmlinux)?;
    files::write_atomically(
        &made_relocs,
        &crate::kernel::vmlinux::write_relocs(&unpacked.relocs),
    )?;
    let map = crate::kernel::symbols::SystemMap::parse(&map_text).map_err(|m| {
        Error::Input(format!(
            "{}: the System.map made of its kallsyms: {m}",
            vmlinuz.display()
        ))
    })?;
    let v = Vmlinux::load(&made_vmlinux)?;
    let (text, at) = map
        .addr("_text")
        .zip(map.addr("linux_banner"))
        .ok_or_else(|| {
            Error::Input(format!(
                "{}: no _text or linux_banner in its kallsyms",
                vmlinuz.display()
            ))
        })?;
    let banner = v
        .cstring(at)
        .map(|b| b.trim_end().to_string())
        .ok_or_else(|| Error::Input(format!("{}: no banner at linux_banner", vmlinuz.display())))?;
    let package = Package::from_banner(&banner).ok_or_else(|| {
        Error::Input(format!(
            "{}: its banner is not a Debian kernel's: {}",
            deb.display(),
            escape(&banner)
        ))
    })?;
    if package.release != release || expect.is_some_and(|e| *e != package) {
        return Err(Error::Input(format!(
            "{} is {package}, not {}",
            deb.display(),
            expect.map_or(release.clone(), |e| e.to_string())
        )));
    }
    Ok(Made {
        package,
        sha256,
        system_map: made_map,
        vmlinux: made_vmlinux,
        relocs: made_relocs,
        modules: root.join("lib/modules").join(&release),
        banner,
        banner_offset: at.wrapping_sub(text),
    })
}

/// Store the build of the Debian image package in the file `deb` under
/// the state root `root`.
pub fn store_deb(root: &Path, deb: &Path) -> Result<crate::kernel::builds::Reference> {
    let work = WorkDir::new(root)?;
    let made = make(deb, work.path(), None)?;
    crate::kernel::builds::store_reference(root, &made)
}

/// Fetch Debian's image package `pkg` with apt and store its build as a
/// reference under the state root `root` (`xftrace add-kernel --debian`;
/// `check` on a guest that runs a Debian kernel with none stored).
pub fn fetch_reference(root: &Path, pkg: &Package) -> Result<crate::kernel::builds::Reference> {
    let t = std::time::Instant::now();
    let work = WorkDir::new(root)?;
    let deb = download(pkg, work.path())?;
    let made = make(&deb, work.path(), Some(pkg))?;
    let r = crate::kernel::builds::store_reference(root, &made)?;
    info!(
        "stored {} (sha256 {}) as the build of its kernel in {:.1} s: {}",
        r.package,
        r.sha256,
        t.elapsed().as_secs_f64(),
        r.system_map.display()
    );
    Ok(r)
}

/// A private work directory under the state root, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(root: &Path) -> Result<WorkDir> {
        crate::host::statedir::open_root(root)?;
        let kernels = root.join("kernels");
        crate::host::files::trusted_dir(&kernels)?;
        // What a fetch killed midway left (an unpacked package is about
        // 150 MB): gone an hour later.
        if let Ok(rd) = std::fs::read_dir(&kernels) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .is_some_and(|t| {
                        t.elapsed()
                            .is_ok_and(|a| a > std::time::Duration::from_secs(3600))
                    });
                let ours = e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(".fetch-"));
                if ours && old && e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id)
            .map_err(|e| Error::Input(format!("cannot get random bytes: {e}")))?;
        let p = kernels.join(format!(".fetch-{:016x}", u64::from_le_bytes(id)));
        crate::host::files::private_dir(&p)?;
        Ok(WorkDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_banner_names_its_package_and_nothing_else_does() {
        let b = "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)";
        assert_eq!(
            Package::from_banner(b),
            Some(Package {
                release: "6.1.0-57-cloud-amd64".into(),
                version: "6.1.192-3".into()
            })
        );
        assert_eq!(
            Package::from_banner(b).unwrap().to_string(),
            "linux-image-6.1.0-57-cloud-amd64 6.1.192-3"
        );
        // Another builder, no version, or names that are no package's.
        for bad in [
            "Linux version 6.1.192 (root@build) (gcc) #1 SMP PREEMPT_DYNAMIC",
            "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP",
            "Linux version -o/etc (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.192-3 (x)",
            "Linux version 6.1.0-57 (debian-kernel@lists.debian.org) #1 SMP Debian --x=1 (x)",
            "Linux version 6.1.0-57 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1;rm (x)",
        ] {
            assert_eq!(Package::from_banner(bad), None, "{bad}");
        }
        assert_eq!(
            Package::parse("linux-image-6.1.0-47-cloud-amd64=6.1.176-1"),
            Some(Package {
                release: "6.1.0-47-cloud-amd64".into(),
                version: "6.1.176-1".into()
            })
        );
        assert_eq!(Package::parse("6.1.0-47-cloud-amd64"), None);
        assert_eq!(Package::parse("-q=1"), None);
    }
}
