//! The Ansible role, for real, against this machine (ansible_connection:
//! local) with a real libvirtd: install, prove it works, run again (nothing
//! changes), check mode, then remove. The machine's files are restored.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::libvirtd::{libvirtd_command, virsh, Libvirtd};

const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
const HOOK: &str = "/etc/libvirt/hooks/qemu.d/xftrace";

fn ansible_bin(tool: &str) -> PathBuf {
    match std::env::var_os("XFTRACE_ANSIBLE_BIN") {
        Some(d) => PathBuf::from(d).join(tool),
        None => PathBuf::from(tool),
    }
}

fn run(tool: &str, args: &[&str], dir: &Path) -> Output {
    let o = Command::new(ansible_bin(tool))
        .args(args)
        .current_dir(dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} (tests/run.sh installs it; or set XFTRACE_ANSIBLE_BIN): {e}")
        });
    eprintln!(
        "$ {tool} {}\n  exit {:?}\n{}{}",
        args.join(" "),
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `changed=N` of the recap line for localhost.
fn changed(o: &Output) -> u32 {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("localhost") && l.contains("changed="))
        .unwrap_or_else(|| panic!("no PLAY RECAP in {out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("changed="))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn role_passes_syntax_check_and_lint() {
    let _t = common::timed();
    let dir = common::repo().join("ansible");
    let o = run(
        "ansible-playbook",
        &["--syntax-check", "-i", "inventory.example.yml", "site.yml"],
        &dir,
    );
    assert!(o.status.success());
    let o = run(
        "ansible-playbook",
        &[
            "--syntax-check",
            "-i",
            "inventory.example.yml",
            "report.yml",
        ],
        &dir,
    );
    assert!(o.status.success());
    let o = run("ansible-lint", &["--profile", "production"], &dir);
    assert!(o.status.success(), "ansible-lint failed");
    // The fleet report's filters on crafted answers.
    let o = run(
        "python3",
        &["-m", "unittest", "discover", "-v", "-s", "tests"],
        &dir,
    );
    assert!(o.status.success(), "the fleet report's filter tests failed");
}

/// Removes a directory when dropped.
struct RmDir(String);

impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts a file back as it was when dropped.
struct Restore(&'static str, Option<Vec<u8>>);

impl Drop for Restore {
    fn drop(&mut self) {
        match &self.1 {
            Some(b) => std::fs::write(self.0, b).unwrap(),
            None => {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
}

#[test]
fn playbook_installs_idempotently_and_removes_cleanly() {
    let _one = common::serial();
    let _conf = Restore(QEMU_CONF, std::fs::read(QEMU_CONF).ok());
    let _hook = Restore(HOOK, std::fs::read(HOOK).ok());
    let tmp = tempfile::Builder::new()
        .prefix("xftrace-ansible-")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    let state = t.join("state");
    let bin = t.join("bin/xftrace");
    let ram_dir = format!("/dev/shm/xftrace-test-ram-{}", std::process::id());
    let _ram = RmDir(ram_dir.clone());

    let mut lv = Libvirtd::start_with_hook(None);
    let dom = format!("xft-ans-{}", std::process::id());
    let plain = format!("xft-ans-plain-{}", std::process::id());
    lv.define(&dom, 128);
    lv.define(&plain, 128);

    let inventory = format!(
        r#"all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  children:
    libvirt_hosts:
      hosts:
        localhost:
      vars:
        xftrace_binary_src: {src}
        xftrace_binary_dest: {bin}
        xftrace_state_dir: {state}
        xftrace_memory_backing_dir: {ram_dir}
        xftrace_libvirtd_start_command: "{start}"
        xftrace_kernels:
          - name: test-kernel
            system_map: {map}
        xftrace_domains:
          - name: {dom}
            kernel: test-kernel
"#,
        src = env!("CARGO_BIN_EXE_xftrace"),
        bin = bin.display(),
        state = state.display(),
        start = libvirtd_command().replace('"', "\\\""),
        map = common::system_map().display(),
    );
    let inv = t.join("inventory.yml");
    std::fs::write(&inv, inventory).unwrap();
    let site = common::repo().join("ansible/site.yml");
    let (inv, site) = (inv.to_str().unwrap(), site.to_str().unwrap());

    let start = Instant::now();
    let first = run("ansible-playbook", &["-i", inv, site], t);
    let first_time = start.elapsed();
    assert!(first.status.success(), "first run failed");
    assert!(changed(&first) > 0);

    // It worked: binary, private state, qemu.conf, hook, enrollment.
    assert!(bin.is_file());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let conf = std::fs::read_to_string(QEMU_CONF).unwrap();
    assert!(
        conf.contains(&format!("memory_backing_dir = \"{ram_dir}\"")),
        "qemu.conf not set"
    );
    let hook = std::fs::read_to_string(HOOK).unwrap();
    assert!(
        hook.contains(&bin.display().to_string()) && hook.contains(&state.display().to_string())
    );
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &dom]).stdout).into_owned();
    // Enrollment records the build as stored in the state directory, by
    // content, whatever name the role gave it.
    let kernels = format!("{}/kernels/", state.display());
    let recorded = xml
        .split("system-map path=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    let hex = recorded
        .strip_prefix(&kernels)
        .and_then(|r| r.strip_suffix("/System.map"))
        .unwrap_or_default();
    assert!(
        xml.contains("xftrace:enrollment") && hex.len() == 64,
        "{xml}"
    );

    // The restarted libvirtd uses the hook and the tmpfs directory: the
    // enrolled domain's RAM file appears there, a plain domain still starts.
    assert!(virsh(&["start", &dom]).status.success());
    let files: Vec<_> = walk(Path::new(&ram_dir));
    assert!(
        files.iter().any(|f| f.ends_with("pc.ram")),
        "no RAM file under {ram_dir}: {files:?}"
    );
    assert_eq!(common::hook_state(&state, &dom).as_deref(), Some("running"));
    fleet_report(t, inv, &dom, &plain);
    virsh(&["destroy", &dom]);
    assert!(virsh(&["start", &plain]).status.success());
    virsh(&["destroy", &plain]);

    // Idempotent, and check mode agrees.
    let start = Instant::now();
    let second = run("ansible-playbook", &["-i", inv, site], t);
    let second_time = start.elapsed();
    assert!(second.status.success());
    assert_eq!(changed(&second), 0, "second run changed something");
    let check = run(
        "ansible-playbook",
        &["-i", inv, site, "--check", "--diff"],
        t,
    );
    assert!(check.status.success());
    assert_eq!(changed(&check), 0);
    eprintln!(
        "ansible: first run {:.1} s, second run {:.1} s",
        first_time.as_secs_f64(),
        second_time.as_secs_f64()
    );

    // The hook refuses an enrolled domain whose backing was edited away.
    let broken = xml.replace("<access mode='shared'/>", "");
    let f = t.join("broken.xml");
    std::fs::write(&f, broken).unwrap();
    assert!(virsh(&["define", f.to_str().unwrap()]).status.success());
    let o = virsh(&["start", &dom]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("xftrace enroll"));
    // Check mode reports that it would repair it, without doing so.
    let check = run(
        "ansible-playbook",
        &["-i", inv, site, "--check", "--diff"],
        t,
    );
    assert!(check.status.success());
    assert!(changed(&check) > 0);
    assert!(
        !String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &dom]).stdout)
            .contains("<access mode='shared'/>")
    );

    // Removal.
    let gone = run(
        "ansible-playbook",
        &["-i", inv, site, "-e", "xftrace_state=absent"],
        t,
    );
    assert!(gone.status.success());
    assert!(!Path::new(HOOK).exists());
    assert!(!bin.exists());
    assert!(!std::fs::read_to_string(QEMU_CONF)
        .unwrap()
        .contains(&ram_dir));
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &dom]).stdout).into_owned();
    assert!(!xml.contains("xftrace:enrollment"), "{xml}");
    let again = run(
        "ansible-playbook",
        &["-i", inv, site, "-e", "xftrace_state=absent"],
        t,
    );
    assert_eq!(changed(&again), 0);
    drop(lv);
}

/// ansible/report.yml against this host: it reports the host, both
/// domains, and the running enrolled one checked. That domain runs no
/// kernel (an empty VM), so the report must say it could not be checked,
/// with xftrace's reason, rather than call it clean.
fn fleet_report(t: &Path, inv: &str, dom: &str, plain: &str) {
    let dir = t.join("report");
    let report = common::repo().join("ansible/report.yml");
    let o = run(
        "ansible-playbook",
        &[
            "-i",
            inv,
            report.to_str().unwrap(),
            "-e",
            &format!("xftrace_report_dir={}", dir.display()),
            "-e",
            "xftrace_report_trace_seconds=0",
        ],
        t,
    );
    assert!(o.status.success(), "report.yml failed");
    let json = std::fs::read(dir.join("fleet.json")).unwrap();
    let fleet: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let hosts = fleet["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{fleet:#}");
    let host = &hosts[0];
    let uname = Command::new("uname").arg("-r").output().unwrap();
    assert_eq!(
        host["kernel"].as_str(),
        Some(String::from_utf8_lossy(&uname.stdout).trim()),
        "{host:#}"
    );
    assert!(
        host["xftrace"]
            .as_str()
            .unwrap_or("")
            .starts_with("xftrace "),
        "{host:#}"
    );
    assert_eq!(host["errors"].as_array().map(Vec::len), Some(0), "{host:#}");
    let find = |name: &str| {
        host["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in the report: {host:#}"))
    };
    let d = find(dom);
    assert!(
        d["state"] == "running"
            && d["enrolled"] == "yes"
            && d["checked"].is_null()
            && d["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the empty enrolled domain: {d:#}"
    );
    let p = find(plain);
    assert!(p["state"] == "off" && p["enrolled"] == "no", "{p:#}");
    assert!(
        fleet["totals"]["not_checked"].as_u64() >= Some(1),
        "{fleet:#}"
    );
    let table = std::fs::read_to_string(dir.join("fleet.txt")).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(dom) && l.contains("NOT CHECKED")),
        "{table}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("fleet.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "the report is readable by others");
    eprintln!("fleet.txt:\n{table}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The host package (packaging/build-deb.sh), for real on this machine:
/// built from this build's binary, `lintian`-clean, installed with apt;
/// the installed hook, and `xftrace watch --all` run from the installed
/// binary, follow an enrolled domain's start; upgraded to a rebuilt
/// package while that watch runs, which goes on; purged, it leaves no
/// binary, hook, unit, settings or state behind. (No systemd here: the
/// package's systemd fragments are the generated ones, checked by lintian,
/// and the unit by tests/cli_habits.rs.)
#[test]
fn host_package_installs_upgrades_and_purges_cleanly() {
    use std::io::BufRead;
    let _one = common::serial();
    let installed = package_status;
    nothing_installed();
    let _purge = Purge;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let build = |revision: &str| common::host_package(t, revision);
    let first = build("1");
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&first)
        .output()
        .expect("lintian (tests/guest/install-deps.sh installs it)");
    assert!(
        o.status.success(),
        "lintian: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let apt = |deb: &Path| {
        let o = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(deb)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "apt-get install {}: {}{}",
            deb.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    apt(&first);
    assert!(installed("xftrace").starts_with("install ok installed 0.1.0-1"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata("/var/lib/xftrace")
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    for p in [
        "/usr/share/man/man1/xftrace-watch.1.gz",
        "/usr/share/bash-completion/completions/xftrace",
        "/usr/share/zsh/vendor-completions/_xftrace",
        "/usr/share/fish/vendor_completions.d/xftrace.fish",
    ] {
        assert!(Path::new(p).is_file(), "{p} not installed");
    }
    let hook = std::fs::read_to_string(HOOK).unwrap();
    assert!(hook.contains("XFTRACE=/usr/bin/xftrace"), "{hook}");

    // The installed binary, as an operator runs it: the watch service by
    // hand (no systemd here), then an enrolled domain's start.
    let lv = Libvirtd::start_with_hook(None);
    let xf = |args: &[&str]| {
        Command::new("/usr/bin/xftrace")
            .args(["-c", common::libvirtd::URI])
            .args(args)
            .output()
            .unwrap()
    };
    let mut watch = Command::new("/usr/bin/xftrace")
        .args([
            "-c",
            common::libvirtd::URI,
            "watch",
            "--all",
            "--json",
            "--interval",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let wait_line = |want: &dyn Fn(&serde_json::Value) -> bool, why: &str| {
        let end = Instant::now() + std::time::Duration::from_secs(60);
        while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if serde_json::from_str::<serde_json::Value>(&l).is_ok_and(|v| want(&v)) {
                return;
            }
        }
        panic!("watch --all from the package: {why}");
    };
    let mut lv = lv;
    let dom = format!("xft-pkg-{}", std::process::id());
    lv.define(&dom, 128);
    let o = xf(&["enroll", &dom, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(virsh(&["start", "--paused", &dom]).status.success());
    assert_eq!(
        common::hook_state(Path::new("/var/lib/xftrace"), &dom).as_deref(),
        Some("running"),
        "the installed hook did not record the start"
    );
    wait_line(
        &|v| v["event"] == "following" && v["domain"] == dom.as_str(),
        "the start not followed",
    );

    // Upgraded while the watch runs: it goes on, and so does the hook.
    let second = build("2");
    apt(&second);
    assert!(installed("xftrace").starts_with("install ok installed 0.1.0-2"));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the upgrade stopped the watch"
    );
    assert!(virsh(&["destroy", &dom]).status.success());
    assert_eq!(
        common::hook_state(Path::new("/var/lib/xftrace"), &dom).as_deref(),
        Some("stopped"),
        "the upgraded hook did not record the stop"
    );
    wait_line(
        &|v| v["event"] == "left" && v["domain"] == dom.as_str(),
        "the stop not followed after the upgrade",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(watch.wait().unwrap().code(), Some(0));
    reader.join().unwrap();
    let o = xf(&["unenroll", &dom, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    drop(lv);

    // Purged: nothing of it left.
    let o = Command::new("dpkg")
        .args(["--purge", "xftrace"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for p in PACKAGE_PATHS {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert!(!installed("xftrace").contains("installed"));
}

/// What the package puts on a host (its state directory included).
const PACKAGE_PATHS: [&str; 6] = [
    "/usr/bin/xftrace",
    HOOK,
    "/etc/default/xftrace",
    "/usr/lib/systemd/system/xftrace-watch.service",
    "/lib/systemd/system/xftrace-watch@.service",
    "/var/lib/xftrace",
];

/// dpkg's status and version of package `p` ("" when unknown).
fn package_status(p: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", p])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The package tests install xftrace on this machine: not where it is.
fn nothing_installed() {
    let status = package_status("xftrace");
    let there: Vec<&str> = PACKAGE_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        !status.contains("installed") && there.is_empty(),
        "xftrace is installed on this machine (dpkg: {status:?}; present: {there:?}): the package tests would replace it; remove it first"
    );
}

/// Purges the package however a test ends.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "xftrace"]).status();
    }
}

/// The role with `xftrace_package_src`: it installs the package with apt
/// (the package's binary, hook and units; the role's settings, qemu.conf,
/// enrollment), a second run changes nothing, and `absent` with
/// `xftrace_remove_state` purges it: nothing of it is left.
#[test]
fn playbook_installs_the_host_package_and_purges_it() {
    let _one = common::serial();
    let _conf = Restore(QEMU_CONF, std::fs::read(QEMU_CONF).ok());
    nothing_installed();
    let _purge = Purge;
    let tmp = tempfile::Builder::new()
        .prefix("xftrace-ansible-")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    let deb = common::host_package(t, "1");
    let ram_dir = format!("/dev/shm/xftrace-test-ram-pkg-{}", std::process::id());
    let _ram = RmDir(ram_dir.clone());
    let mut lv = Libvirtd::start_with_hook(None);
    let dom = format!("xft-ans-pkg-{}", std::process::id());
    lv.define(&dom, 128);
    let inventory = format!(
        r#"all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  children:
    libvirt_hosts:
      hosts:
        localhost:
      vars:
        xftrace_package_src: {deb}
        xftrace_memory_backing_dir: {ram_dir}
        xftrace_libvirtd_start_command: "{start}"
        xftrace_domains:
          - name: {dom}
"#,
        deb = deb.display(),
        start = libvirtd_command().replace('"', "\\\""),
    );
    let inv = t.join("inventory.yml");
    std::fs::write(&inv, inventory).unwrap();
    let site = common::repo().join("ansible/site.yml");
    let (inv, site) = (inv.to_str().unwrap(), site.to_str().unwrap());
    let first = run("ansible-playbook", &["-i", inv, site], t);
    assert!(first.status.success(), "first run failed");
    assert!(package_status("xftrace").starts_with("install ok installed 0.1.0-1"));
    let hook = std::fs::read_to_string(HOOK).unwrap();
    assert!(
        hook.contains("XFTRACE=/usr/bin/xftrace"),
        "not the package's hook: {hook}"
    );
    let settings = std::fs::read_to_string("/etc/default/xftrace").unwrap();
    assert!(
        settings.contains("XFTRACE_STATE_DIR=/var/lib/xftrace"),
        "{settings}"
    );
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &dom]).stdout).into_owned();
    assert!(xml.contains("xftrace:enrollment"), "{xml}");
    let second = run("ansible-playbook", &["-i", inv, site], t);
    assert!(second.status.success());
    assert_eq!(changed(&second), 0, "second run changed something");
    let gone = run(
        "ansible-playbook",
        &[
            "-i",
            inv,
            site,
            "-e",
            "xftrace_state=absent",
            "-e",
            "xftrace_remove_state=true",
        ],
        t,
    );
    assert!(gone.status.success());
    assert!(!package_status("xftrace").contains("installed"));
    for p in PACKAGE_PATHS {
        assert!(!Path::new(p).exists(), "{p} left after absent");
    }
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &dom]).stdout).into_owned();
    assert!(!xml.contains("xftrace:enrollment"), "{xml}");
    drop(lv);
}
