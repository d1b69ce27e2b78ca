//! Test harness: the patched guest kernel and test rootkits (`kernel`),
//! real QEMU guests (`vm`) with a serial shell (`console`) and QMP (`qmp`),
//! the xftrace binary (`cli`), a real libvirtd (`libvirtd`), and
//! Prometheus's promtool (`prometheus`).
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod console;
pub mod debian;
pub mod detection;
pub mod kernel;
pub mod libvirtd;
pub mod prometheus;
pub mod qmp;
pub mod soak;
pub mod vm;

use std::path::PathBuf;

pub use cli::{
    hook_state, logged, recovered_traces, state_dir, xftrace, xftrace_with_map, Xftrace,
};
pub use console::Console;
pub use kernel::{
    build_modules_dir, headers_dir, initramfs, kernel_dir, rootkit_initramfs, rootkit_modules,
    stock_rootkit_modules, stock_xftrace_module, stock_xftrace_module_with, system_map,
    xftrace_dkms_deb,
};
pub use qmp::{qmp, qmp_status_at};
pub use vm::{accel, serial, Boot, Serial, Vm};

/// A free TCP port of 127.0.0.1 (for a guest's console or forwarded ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Time the calling test: when the returned timer drops (at the end of the
/// test, passed or panicking), one line `binary<TAB>test<TAB>seconds<TAB>
/// ok|FAILED` is appended to the file `XFTRACE_TEST_TIMINGS` names, if it
/// names one; `tests/run.sh` prints them as a table. libtest names each
/// test's thread after the test.
pub fn timed() -> Timer {
    Timer {
        start: std::time::Instant::now(),
    }
}

pub struct Timer {
    start: std::time::Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let test = std::thread::current()
            .name()
            .unwrap_or("(unnamed)")
            .to_string();
        let result = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        timing_row(&test, self.start.elapsed().as_secs_f64(), result);
    }
}

/// A phase of a long test, as a row of `tests/run.sh`'s table
/// (`phase: NAME`, result `phase`: not counted in its sum, being part of
/// the test's own row); passing tests' output is not shown, so this is
/// where their phases' times can be read.
pub fn phase_timing(name: &str, secs: f64) {
    timing_row(&format!("  phase: {name}"), secs, "phase");
}

/// One line `binary<TAB>what<TAB>seconds<TAB>result` appended to the file
/// `XFTRACE_TEST_TIMINGS` names, if it names one.
fn timing_row(what: &str, secs: f64, result: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("XFTRACE_TEST_TIMINGS") else {
        return;
    };
    let binary = binary_name().unwrap_or_default();
    let line = format!("{binary}\t{what}\t{secs:.1}\t{result}\n");
    // O_APPEND: one write per line, whole, whatever else appends.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// This test binary's name without cargo's hash (`e2e_qemu`).
pub fn binary_name() -> Option<String> {
    let stem = std::env::current_exe()
        .ok()?
        .file_stem()?
        .to_string_lossy()
        .into_owned();
    Some(
        stem.rsplit_once('-')
            .map_or(stem.clone(), |(b, _)| b.to_string()),
    )
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build the C program `src` statically into `out`, to run in a guest.
pub fn static_program(src: &std::path::Path, out: &std::path::Path) {
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc {}", src.display());
}

/// Debian's package `name`, fetched with apt (not installed: nothing of
/// it runs) and unpacked into `dir`.
pub fn unpack_package(name: &str, dir: &std::path::Path) {
    let dl = dir.join(".download");
    std::fs::create_dir_all(&dl).unwrap();
    let st = std::process::Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", name])
        .current_dir(&dl)
        .status()
        .expect("run apt-get download");
    assert!(st.success(), "apt-get download {name}");
    let deb = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the package");
    let st = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir)
        .status()
        .expect("run dpkg-deb");
    assert!(st.success(), "dpkg-deb -x {}", deb.display());
    let _ = std::fs::remove_dir_all(&dl);
}

/// The median of the benches' samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The host package (packaging/build-deb.sh) of the tested binary, into
/// `dir/revision`.
pub fn host_package(dir: &std::path::Path, revision: &str) -> PathBuf {
    let o = std::process::Command::new(repo().join("packaging/build-deb.sh"))
        .args([
            "--fast",
            "--binary",
            env!("CARGO_BIN_EXE_xftrace"),
            "--revision",
            revision,
        ])
        .arg(dir.join(revision))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}
