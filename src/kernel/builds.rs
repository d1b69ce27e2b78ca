//! The trusted guest-kernel builds xftrace compares guests with, kept in
//! the private state directory as `kernels/<sha256 of System.map>/` with
//! `System.map` and (when there is one) `vmlinux`.
//!
//! `enroll` copies the operator's files there and records that path in the
//! domain's definition. Anyone who can edit a domain definition can put any
//! path in it, so a path read back from a definition is used only if it is
//! exactly such a file: under `kernels/`, not reached through a link, a
//! regular file owned by root and writable by nobody else.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::base::error::{Error, Result};
use crate::host::files;
use crate::kernel::modcode::{ModuleFiles, MAX_KO};
use crate::kernel::symbols::{SystemMap, MAX_SYSTEM_MAP};

/// A vmlinux with full debug info is a few hundred megabytes.
const MAX_VMLINUX: u64 = 2 << 30;

/// Where a System.map with these bytes is kept.
fn dir_for(root: &Path, system_map: &[u8]) -> PathBuf {
    let digest = Sha256::digest(system_map);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    root.join("kernels").join(hex)
}

/// Copy a kernel build's System.map (and vmlinux) into the state directory;
/// returns the path of the stored System.map. With `dry_run`, only says
/// where it would go.
pub fn store(
    root: &Path,
    system_map: &Path,
    vmlinux: Option<&Path>,
    modules: Option<&Path>,
    dry_run: bool,
) -> Result<PathBuf> {
    let map_bytes = files::read_bounded(system_map, MAX_SYSTEM_MAP, "System.map")?;
    let text = std::str::from_utf8(&map_bytes)
        .map_err(|_| Error::Input(format!("System.map {} is not text", system_map.display())))?;
    let map = SystemMap::parse(text)
        .map_err(|m| Error::Input(format!("{}: {m}", system_map.display())))?;
    let dir = dir_for(root, &map_bytes);
    let stored = dir.join("System.map");
    if let Some(v) = vmlinux {
        check_vmlinux_matches(v, &map)?;
    }
    let module_files = modules.map(|d| ModuleFiles::scan(d, false)).transpose()?;
    if dry_run {
        return Ok(stored);
    }
    crate::host::statedir::open_root(root)?;
    files::trusted_dir(&root.join("kernels"))?;
    files::trusted_dir(&dir)?;
    if check_recorded(root, &stored).is_err() {
        files::write_atomically(&stored, &map_bytes)?;
    }
    if let Some(v) = vmlinux {
        let dest = dir.join("vmlinux");
        if !same_size(v, &dest) {
            copy_bounded(v, &dest, MAX_VMLINUX)?;
        }
    }
    // The names of the modules the build ships, if its output lists them.
    let list = system_map.with_file_name("modules");
    if list.is_file() {
        let names = read_module_list(&list)?;
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        files::write_atomically(&dir.join("modules"), text.as_bytes())?;
    }
    if let Some(f) = module_files {
        store_module_files(&dir.join("modules.d"), &f)?;
    }
    Ok(stored)
}

/// Copy the build's `.ko` files, flat, into a stored build's `modules.d`
/// (a file already there with the same size is kept: builds are stored by
/// their System.map's digest, and a module's file does not change within
/// one build).
fn store_module_files(dir: &Path, f: &ModuleFiles) -> Result<()> {
    files::trusted_dir(dir)?;
    for name in f.names() {
        let Some(from) = f.path(name) else { continue };
        let to = dir.join(format!("{name}.ko"));
        if !same_size(from, &to) {
            let bytes = files::read_bounded(from, MAX_KO, "module file")?;
            files::write_atomically(&to, &bytes)?;
        }
    }
    Ok(())
}

/// Module list files are small: a cloud kernel ships about 1 100.
const MAX_MODULE_LIST: u64 = 1 << 20;

/// A build's `modules` file: one module name per line (as in
/// `modules.order`, `-` and `_` alike), normalized to `_`.
fn read_module_list(path: &Path) -> Result<BTreeSet<String>> {
    let text = files::read_text_bounded(path, MAX_MODULE_LIST, "module list")?;
    let mut out = BTreeSet::new();
    for (i, l) in text.lines().enumerate() {
        let ok = !l.is_empty()
            && l.len() < 56
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Error::Input(format!(
                "{} line {}: not a module name",
                path.display(),
                i.saturating_add(1)
            )));
        }
        out.insert(l.replace('-', "_"));
    }
    Ok(out)
}

/// The modules of the build whose System.map is `system_map`, from the
/// `modules` file beside it (a stored one must be trusted like the map).
pub fn build_modules(system_map: &Path, recorded: bool) -> Option<BTreeSet<String>> {
    let list = system_map.with_file_name("modules");
    if recorded {
        let meta = std::fs::symlink_metadata(&list).ok()?;
        files::check_trusted(&meta, &list, "module list").ok()?;
    }
    read_module_list(&list).ok()
}

fn same_size(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => y.is_file() && x.len() == y.len(),
        _ => false,
    }
}

/// The vmlinux must be of the same build as the System.map: its `.text`
/// starts at `_text` and it holds `linux_banner` where the map says.
fn check_vmlinux_matches(vmlinux: &Path, map: &SystemMap) -> Result<()> {
    let v = crate::kernel::vmlinux::Vmlinux::load(vmlinux)?;
    let ok = map
        .addr("linux_banner")
        .and_then(|a| v.cstring(a))
        .is_some_and(|b| b.starts_with("Linux version "));
    if !ok {
        return Err(Error::Input(format!(
            "{} is not the vmlinux of this System.map (no linux_banner where the map puts it)",
            vmlinux.display()
        )));
    }
    Ok(())
}

fn copy_bounded(from: &Path, to: &Path, max: u64) -> Result<()> {
    let f = files::open_regular(from, "vmlinux")?;
    let mut out = files::AtomicFile::create(to)?;
    let copied = std::io::copy(&mut f.take(max.saturating_add(1)), out.writer()).map_err(|e| {
        Error::io(
            format!("cannot copy {} to {}", from.display(), to.display()),
            e,
        )
    })?;
    if copied > max {
        return Err(Error::Input(format!(
            "{} is larger than {max} bytes; it cannot be a vmlinux",
            from.display()
        )));
    }
    out.commit()
}

/// Accept a System.map path recorded in a domain definition only if it is
/// a stored build: `<root>/kernels/<64 hex digits>/System.map`, every part
/// of it a real directory or file, owned by root, written by nobody else.
pub fn check_recorded(root: &Path, recorded: &Path) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Error::Input(format!(
            "the System.map path recorded for this domain ({}) {why}; re-enroll it: `xftrace enroll DOMAIN --system-map PATH` copies the build into {}",
            crate::base::escape::escape(&recorded.display().to_string()),
            root.join("kernels").display()
        ))
    };
    let rel = recorded
        .strip_prefix(root.join("kernels"))
        .map_err(|_| refuse("is not in xftrace's state directory"))?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str().unwrap_or(""))
        .collect();
    let ok_shape = matches!(parts.as_slice(), [hex, "System.map"]
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok_shape {
        return Err(refuse("is not a stored kernel build's System.map"));
    }
    let dir = root.join("kernels").join(parts[0]);
    for (p, what) in [
        (root.join("kernels"), "directory"),
        (dir.clone(), "directory"),
        (recorded.to_path_buf(), "System.map"),
    ] {
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| Error::io(format!("cannot use {what} {}", p.display()), e))?;
        files::check_trusted(&meta, &p, what)?;
    }
    Ok(recorded.to_path_buf())
}

/// The vmlinux stored beside a checked System.map, if trustworthy.
pub fn recorded_vmlinux(system_map: &Path) -> Option<PathBuf> {
    let v = system_map.with_file_name("vmlinux");
    let meta = std::fs::symlink_metadata(&v).ok()?;
    files::check_trusted(&meta, &v, "vmlinux").ok()?;
    meta.is_file().then_some(v)
}

/// The relocation table stored beside a checked System.map (a stock
/// kernel's build), if there is a trustworthy one.
pub fn recorded_relocs(system_map: &Path) -> Option<PathBuf> {
    let v = system_map.with_file_name("vmlinux.relocs");
    let meta = std::fs::symlink_metadata(&v).ok()?;
    files::check_trusted(&meta, &v, "relocation table").ok()?;
    meta.is_file().then_some(v)
}

/// A stored build of a distribution's stock kernel: where its System.map
/// is, and what finds it in guest RAM without a control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub system_map: PathBuf,
    /// `linux-image-RELEASE VERSION`.
    pub package: String,
    pub banner: String,
    /// `linux_banner − _text`.
    pub banner_offset: u64,
    /// The image package's SHA-256.
    pub sha256: String,
}

/// The file that makes a stored build a stock kernel's reference.
const REFERENCE: &str = "reference";
/// Stored references looked at, at most.
const MAX_REFERENCES: usize = 256;

impl Reference {
    fn text(&self) -> String {
        format!(
            "package={}\nsha256={}\nbanner-offset={:#x}\nbanner={}\n",
            self.package, self.sha256, self.banner_offset, self.banner
        )
    }

    fn parse(system_map: PathBuf, text: &str) -> Option<Reference> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let off = field("banner-offset")?;
        Some(Reference {
            system_map,
            package: field("package")?,
            sha256: field("sha256")?,
            banner_offset: u64::from_str_radix(off.strip_prefix("0x")?, 16).ok()?,
            banner: field("banner").filter(|b| b.starts_with("Linux version "))?,
        })
    }
}

/// Store a stock kernel's build made of its image package
/// ([`crate::kernel::debian::make`]): System.map, vmlinux, its relocation
/// table, its modules, and the `reference` that finds it in guest RAM.
/// Returns what was stored.
pub fn store_reference(root: &Path, made: &crate::kernel::debian::Made) -> Result<Reference> {
    let stored = store(
        root,
        &made.system_map,
        Some(&made.vmlinux),
        Some(&made.modules),
        false,
    )?;
    let dir = stored
        .parent()
        .ok_or_else(|| Error::Input("a stored build has no directory".into()))?;
    let relocs = files::read_bounded(&made.relocs, 256 << 20, "relocation table")?;
    files::write_atomically(&dir.join("vmlinux.relocs"), &relocs)?;
    let r = Reference {
        system_map: stored.clone(),
        package: made.package.to_string(),
        banner: made.banner.clone(),
        banner_offset: made.banner_offset,
        sha256: made.sha256.clone(),
    };
    // Written last: a build without it is not taken for a reference.
    files::write_atomically(&dir.join(REFERENCE), r.text().as_bytes())?;
    Ok(r)
}

/// Every stock kernel's reference stored under `root` (at most 256; an
/// entry that is not trusted like a stored build is passed over).
pub fn references(root: &Path) -> Vec<Reference> {
    let kernels = root.join("kernels");
    let Ok(rd) = std::fs::read_dir(&kernels) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten().take(MAX_REFERENCES.saturating_mul(4)) {
        let map = e.path().join("System.map");
        let Ok(map) = check_recorded(root, &map) else {
            continue;
        };
        let p = map.with_file_name(REFERENCE);
        let trusted = std::fs::symlink_metadata(&p)
            .ok()
            .is_some_and(|m| m.is_file() && files::check_trusted(&m, &p, REFERENCE).is_ok());
        if !trusted {
            continue;
        }
        let Ok(text) = files::read_text_bounded(&p, 4096, REFERENCE) else {
            continue;
        };
        if let Some(r) = Reference::parse(map, &text) {
            out.push(r);
        }
        if out.len() >= MAX_REFERENCES {
            break;
        }
    }
    out.sort_by(|a, b| a.package.cmp(&b.package));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::symbols::tests::MAP;
    use std::os::unix::fs::PermissionsExt;

    /// A stock kernel's build is stored like any other, with its
    /// relocation table and the reference that finds it; only a trusted
    /// reference file of a stored build is read back.
    #[test]
    fn a_stock_kernels_reference_is_stored_and_read_back_only_when_trusted() {
        let root = tempfile::tempdir().unwrap();
        let st = root.path().join("state");
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("modules")).unwrap();
        std::fs::write(work.join("System.map"), MAP).unwrap();
        let text = MAP
            .lines()
            .find_map(|l| l.strip_suffix(" T _text"))
            .map(|a| u64::from_str_radix(a, 16).unwrap())
            .unwrap();
        let banner = MAP
            .lines()
            .find_map(|l| l.strip_suffix(" D linux_banner"))
            .map(|a| u64::from_str_radix(a, 16).unwrap())
            .unwrap();
        // A vmlinux with the banner where the map puts it.
        let mut data = vec![0u8; (banner - text + 256) as usize];
        let b = b"Linux version 6.1.0-9-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.9-1 (x)";
        data[(banner - text) as usize..][..b.len()].copy_from_slice(b);
        std::fs::write(
            work.join("vmlinux"),
            crate::testkit::synthetic::elf(text, &data, &[]),
        )
        .unwrap();
        std::fs::write(
            work.join("vmlinux.relocs"),
            crate::kernel::vmlinux::write_relocs(&[]),
        )
        .unwrap();
        let made = crate::kernel::debian::Made {
            package: crate::kernel::debian::Package::from_banner(std::str::from_utf8(b).unwrap())
                .unwrap(),
            sha256: "ab".repeat(32),
            system_map: work.join("System.map"),
            vmlinux: work.join("vmlinux"),
            relocs: work.join("vmlinux.relocs"),
            modules: work.join("modules"),
            banner: String::from_utf8(b.to_vec()).unwrap(),
            banner_offset: banner - text,
        };
        assert!(references(&st).is_empty());
        let r = store_reference(&st, &made).unwrap();
        assert_eq!(r.package, "linux-image-6.1.0-9-cloud-amd64 6.1.9-1");
        assert_eq!(references(&st), vec![r.clone()]);
        assert!(recorded_relocs(&r.system_map).is_some());
        // Made writable by others: passed over.
        let p = r.system_map.with_file_name("reference");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(references(&st).is_empty());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Not a reference.
        std::fs::write(&p, "package=x\n").unwrap();
        assert!(references(&st).is_empty());
    }

    #[test]
    fn stores_by_content_and_accepts_only_stored_paths() {
        let root = tempfile::tempdir().unwrap();
        let st = root.path().join("state");
        let src = root.path().join("System.map");
        std::fs::write(&src, MAP).unwrap();
        let p = store(&st, &src, None, None, false).unwrap();
        assert!(p.starts_with(st.join("kernels")));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), MAP);
        assert_eq!(store(&st, &src, None, None, false).unwrap(), p);
        assert_eq!(check_recorded(&st, &p).unwrap(), p);

        // Paths a domain definition might carry instead.
        for bad in [
            src.clone(),
            PathBuf::from("/dev/zero"),
            st.join("kernels/../kernels")
                .join(p.strip_prefix(st.join("kernels")).unwrap()),
            st.join("kernels/abc/System.map"),
            p.with_file_name("vmlinux"),
        ] {
            assert!(check_recorded(&st, &bad).is_err(), "{}", bad.display());
        }
        // A link planted in place of the stored file.
        let hexdir = p.parent().unwrap();
        let other = st.join("kernels").join("f".repeat(64));
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&src, other.join("System.map")).unwrap();
        assert!(check_recorded(&st, &other.join("System.map")).is_err());
        // A stored file someone made writable.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_recorded(&st, &p).is_err());
        std::fs::set_permissions(hexdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_recorded(&st, &p).is_err());
    }

    #[test]
    fn stores_the_builds_modules_flat_and_reads_back_only_trusted_files() {
        let root = tempfile::tempdir().unwrap();
        let st = root.path().join("state");
        let src = root.path().join("System.map");
        std::fs::write(&src, MAP).unwrap();
        let mods = root.path().join("lib-modules");
        std::fs::create_dir_all(mods.join("kernel/drivers")).unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio-net.ko"), b"net").unwrap();
        std::fs::write(mods.join("a.ko"), b"a").unwrap();
        std::fs::write(mods.join("modules.dep"), b"").unwrap();
        // A link is not a module file.
        std::os::unix::fs::symlink(&src, mods.join("planted.ko")).unwrap();
        let p = store(&st, &src, None, Some(&mods), false).unwrap();
        let stored = p.with_file_name("modules.d");
        let f = ModuleFiles::scan(&stored, true).unwrap();
        assert_eq!(f.names().collect::<Vec<_>>(), ["a", "virtio_net"]);
        assert_eq!(
            std::fs::read(f.path("virtio_net").unwrap()).unwrap(),
            b"net"
        );
        // A stored module file someone made writable is refused.
        let a = stored.join("a.ko");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(ModuleFiles::scan(&stored, true).is_err());
    }
}
