//! The guest kernel (built and cached by guest-kernel/build.sh), the
//! busybox initramfs, and the test rootkits built against the kernel's
//! headers package.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::repo;

/// The guest kernel build (guest-kernel/build.sh; cached, so cheap when
/// nothing changed). XFTRACE_KERNEL_DIR overrides.
pub fn kernel_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("XFTRACE_KERNEL_DIR") {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(repo().join("guest-kernel/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run guest-kernel/build.sh");
        assert!(out.status.success(), "guest-kernel/build.sh failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(
            text.lines()
                .last()
                .expect("build.sh printed its output dir"),
        )
    })
}

pub fn system_map() -> PathBuf {
    kernel_dir().join("System.map")
}

/// Where this test binary builds what it needs under target/: a folder of
/// its own, so that binaries running at once (tests/run.sh's lanes) never
/// rebuild one another's files under them.
pub(crate) fn scratch() -> PathBuf {
    let name = super::binary_name().unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let dir = repo().join("target").join("xftrace-test").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn initramfs() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = scratch().join("xftrace-test-initramfs.cpio.gz");
        let st = Command::new("bash")
            .arg(repo().join("tests/guest/make-initramfs.sh"))
            .arg(&out)
            .status()
            .expect("run make-initramfs.sh");
        assert!(st.success(), "make-initramfs.sh failed");
        out
    })
}

/// The kernel build's package `linux-{what}-RELEASE`, unpacked under
/// target/; returns the root it was unpacked in and the release.
fn unpack_package(what: &str) -> (PathBuf, String) {
    let release = std::fs::read_to_string(kernel_dir().join("kernelversion"))
        .expect("kernelversion in the kernel build")
        .trim()
        .to_string();
    let deb = std::fs::read_dir(kernel_dir().join("debs"))
        .expect("debs/ in the kernel build")
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("linux-{what}-{release}_")))
        })
        .unwrap_or_else(|| panic!("a linux-{what} package in the kernel build"));
    let root = scratch().join(format!("xftrace-{what}")).join(&release);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .expect("run dpkg-deb");
    assert!(st.success(), "unpack {deb:?}");
    (root, release)
}

/// The guest kernel's headers package (as a guest would install it),
/// unpacked once under target/: the tree external modules build against.
pub fn headers_dir() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let (root, release) = unpack_package("headers");
        let tree = root.join(format!("usr/src/linux-headers-{release}"));
        assert!(
            tree.join("Makefile").is_file(),
            "no headers tree in {root:?}"
        );
        tree
    })
}

/// A build's modules for `--modules`: the modules of the kernel's image
/// package (/lib/modules/RELEASE), and rk_benign, which the test build
/// thereby ships. Made once.
pub fn build_modules_dir() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let (root, release) = unpack_package("image");
        let dir = root.join(format!("lib/modules/{release}"));
        let benign = rootkit_modules()
            .iter()
            .find(|p| p.ends_with("rk_benign.ko"))
            .expect("rk_benign.ko built");
        std::fs::copy(benign, dir.join("rk_benign.ko")).unwrap();
        dir
    })
}

/// The test rootkits (tests/rootkits): the modules, built against the guest
/// kernel's headers package and sorted by name, then the BPF loader.
pub fn rootkit_modules() -> &'static [PathBuf] {
    static P: OnceLock<Vec<PathBuf>> = OnceLock::new();
    P.get_or_init(|| build_rootkits(headers_dir(), &scratch().join("xftrace-rootkits")))
}

/// The test rootkits built for Debian's stock kernel `release` (`uname
/// -r` of the Debian image's first kernel), against Debian's own headers
/// package of it, installed on this machine with apt as a guest would
/// install it (linux-headers-RELEASE, with its -common and linux-kbuild
/// packages).
pub fn stock_rootkit_modules(release: &str) -> &'static [PathBuf] {
    static P: OnceLock<Vec<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        build_rootkits(
            &stock_headers(release),
            &scratch().join(format!("xftrace-rootkits-{release}")),
        )
    })
}

/// Debian's headers tree of kernel `release`, its package installed by
/// apt where it is not yet.
fn stock_headers(release: &str) -> PathBuf {
    let tree = PathBuf::from(format!("/usr/src/linux-headers-{release}"));
    if !tree.join("Makefile").is_file() {
        let st = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(format!("linux-headers-{release}"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .expect("run apt-get");
        assert!(st.success(), "cannot install linux-headers-{release}");
    }
    tree
}

/// The xftrace-dkms package, built by `guest-dkms/build-deb.sh` (once per
/// test binary).
pub fn xftrace_dkms_deb() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("guest-dkms/build-deb.sh"))
            .arg(scratch().join("xftrace-dkms-deb"))
            .output()
            .expect("run guest-dkms/build-deb.sh");
        assert!(
            out.status.success(),
            "guest-dkms/build-deb.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .expect("build-deb.sh prints the package's path"),
        )
    })
    .clone()
}

/// `guest-dkms/`'s module built against Debian's headers package of
/// kernel `release`, as DKMS builds it in a guest: `xftrace.ko`.
pub fn stock_xftrace_module(release: &str) -> PathBuf {
    stock_xftrace_module_with(release, &[])
}

/// The same with `make` variables `vars` (`XFTRACE_BENCH_NOWRITE=y`, say),
/// built in a directory of its own.
pub fn stock_xftrace_module_with(release: &str, vars: &[&str]) -> PathBuf {
    let headers = stock_headers(release);
    // kbuild takes no '=' in M=.
    let suffix: String = vars
        .iter()
        .map(|v| format!("-{}", v.replace(|c: char| !c.is_ascii_alphanumeric(), "_")))
        .collect();
    let build = scratch().join(format!("xftrace-dkms-{release}{suffix}"));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).unwrap();
    for e in std::fs::read_dir(repo().join("guest-dkms")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), build.join(e.file_name())).unwrap();
    }
    let st = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .args(vars)
        .arg("modules")
        .stdout(Stdio::null())
        .status()
        .expect("run make");
    assert!(
        st.success(),
        "building guest-dkms against {release}'s headers failed"
    );
    build.join("xftrace.ko")
}

/// Build every test rootkit against the headers tree `headers` in `build`.
fn build_rootkits(headers: &Path, build: &Path) -> Vec<PathBuf> {
    let _ = std::fs::remove_dir_all(build);
    std::fs::create_dir_all(build).unwrap();
    // One module per rk_*.c source, counted as they are copied.
    let mut sources = 0;
    for e in std::fs::read_dir(repo().join("tests/rootkits")).unwrap() {
        let e = e.unwrap();
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("rk_") && n.ends_with(".c") {
            sources += 1;
        }
        std::fs::copy(e.path(), build.join(e.file_name())).unwrap();
    }
    let st = Command::new("make")
        .arg("-C")
        .arg(headers)
        .arg(format!("M={}", build.display()))
        .arg("modules")
        .stdout(Stdio::null())
        .status()
        .expect("run make");
    assert!(st.success(), "building the test rootkits failed");
    let mut kos: Vec<PathBuf> = std::fs::read_dir(build)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ko"))
        .collect();
    kos.sort();
    // None failed to build.
    assert_eq!(kos.len(), sources, "{kos:?}");
    // The BPF loader and the magic-packet listener are static
    // user-space programs (kbuild left their sources alone).
    for program in ["bpf_hook", "magic_sniff"] {
        let out = build.join(program);
        super::static_program(&build.join(format!("{program}.c")), &out);
        kos.push(out);
    }
    kos
}

/// An initramfs that carries the test rootkits in /lib/xftrace-test/.
pub fn rootkit_initramfs() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = scratch().join("xftrace-test-initramfs-rootkits.cpio.gz");
        let st = Command::new("bash")
            .arg(repo().join("tests/guest/make-initramfs.sh"))
            .arg(&out)
            .args(rootkit_modules())
            .status()
            .unwrap();
        assert!(st.success());
        out
    })
}
