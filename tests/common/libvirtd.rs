//! A real libvirtd for the tests, with xftrace's hook installed, started by
//! the test and stopped (with the machine's files restored) when it ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{initramfs, kernel_dir, repo};

const HOOK: &str = "/etc/libvirt/hooks/qemu.d/xftrace";
pub const URI: &str = "qemu:///system";

fn pid_alive(pidfile: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

pub struct Libvirtd {
    /// Daemons this harness started, by pid file: the Ansible role restarts
    /// libvirtd, so the pid is read again when stopping.
    started: Vec<(&'static str, &'static str)>,
    hook_backup: Option<Vec<u8>>,
    pub domains: Vec<String>,
    pub images: PathBuf,
}

pub fn virsh(args: &[&str]) -> Output {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("run virsh");
    super::logged("virsh", args, out)
}

/// How the harness starts libvirtd. This machine's /dev/kvm hangs guests
/// (see the KVM probe), and libvirt's capability probe would wait 30 s on it
/// at every define: under TCG, hide it from libvirtd alone, in a mount
/// namespace.
pub fn libvirtd_command() -> String {
    if super::accel() == "tcg" && Path::new("/dev/kvm").exists() {
        "unshare -m --propagation private sh -c 'mount --bind /dev/null /dev/kvm && exec libvirtd -d'"
            .into()
    } else {
        "libvirtd -d".into()
    }
}

impl Libvirtd {
    /// Install the hook (pointing at this build and `state`), then start
    /// virtlogd and libvirtd: libvirtd only finds hooks when it starts.
    pub fn start(state: &Path) -> Libvirtd {
        Self::start_with_hook(Some(state))
    }

    /// Start the daemons; with `Some(state)`, install the hook first.
    pub fn start_with_hook(state: Option<&Path>) -> Libvirtd {
        assert!(
            pid_alive("/run/libvirtd.pid").is_none(),
            "a libvirtd is already running; stop it first (the hook must be in place when libvirtd starts)"
        );
        let hook_backup = std::fs::read(HOOK).ok();
        if let Some(state) = state {
            let st = Command::new("bash")
                .arg(repo().join("libvirt-hooks/install.sh"))
                .args(["--bin", env!("CARGO_BIN_EXE_xftrace")])
                .arg("--state-dir")
                .arg(state)
                .status()
                .unwrap();
            assert!(st.success(), "install the hook");
        }
        let mut d = Libvirtd {
            started: Vec::new(),
            hook_backup,
            domains: Vec::new(),
            images: PathBuf::from(format!(
                "/var/lib/libvirt/images/xftrace-test-{}",
                std::process::id()
            )),
        };
        for (daemon, pidfile) in [
            ("virtlogd", "/run/virtlogd.pid"),
            ("libvirtd", "/run/libvirtd.pid"),
        ] {
            if pid_alive(pidfile).is_some() {
                continue;
            }
            let cmd = if daemon == "libvirtd" {
                libvirtd_command()
            } else {
                "virtlogd -d".to_string()
            };
            let st = Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .expect("start daemon");
            assert!(st.success(), "{daemon} -d failed");
            let end = Instant::now() + Duration::from_secs(20);
            while pid_alive(pidfile).is_none() {
                assert!(Instant::now() < end, "{daemon} did not write {pidfile}");
                std::thread::sleep(Duration::from_millis(100));
            }
            d.started.push((pidfile, daemon));
        }
        let end = Instant::now() + Duration::from_secs(30);
        while !Command::new("virsh")
            .args(["-c", URI, "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < end, "libvirtd did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Kernel and initramfs where libvirt's QEMU user can read them.
        std::fs::create_dir_all(&d.images).unwrap();
        std::fs::copy(kernel_dir().join("bzImage"), d.images.join("bzImage")).unwrap();
        std::fs::copy(initramfs(), d.images.join("initrd.gz")).unwrap();
        d
    }

    /// Kill libvirtd as a crash would (SIGKILL) and start it again; the
    /// domains keep running.
    pub fn crash_and_restart_libvirtd(&self) {
        let pid = pid_alive("/run/libvirtd.pid").expect("libvirtd runs");
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let end = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < end, "libvirtd did not die");
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file("/run/libvirtd.pid");
        let st = Command::new("sh")
            .arg("-c")
            .arg(libvirtd_command())
            .status()
            .expect("start libvirtd");
        assert!(st.success(), "libvirtd -d failed");
        let end = Instant::now() + Duration::from_secs(30);
        while !Command::new("virsh")
            .args(["-c", URI, "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < end,
                "libvirtd did not answer after its restart"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("harness: libvirtd killed and started again");
    }

    /// Define a TCG/KVM domain booting the test guest, its console on a TCP
    /// port of 127.0.0.1. Returns the console address.
    pub fn define(&mut self, name: &str, mem_mb: u64) -> String {
        let port = super::free_port();
        let ty = if super::accel() == "kvm" {
            "kvm"
        } else {
            "qemu"
        };
        let xml = format!(
            "<domain type='{ty}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{img}/bzImage</kernel>
    <initrd>{img}/initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='tcp'>
      <source mode='bind' host='127.0.0.1' service='{port}'/>
      <protocol type='raw'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'/>
  </devices>
</domain>
",
            img = self.images.display()
        );
        let f = self.images.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        let o = virsh(&["define", f.to_str().unwrap()]);
        assert!(o.status.success(), "define {name}");
        self.domains.push(name.to_string());
        format!("127.0.0.1:{port}")
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = Command::new("virsh")
                .args(["-c", URI, "destroy", d])
                .output();
            let _ = Command::new("virsh")
                .args(["-c", URI, "undefine", "--managed-save", d])
                .output();
        }
        for (pidfile, daemon) in self.started.iter().rev() {
            let Some(pid) = pid_alive(pidfile) else {
                continue;
            };
            let _ = nix_kill(pid);
            let end = Instant::now() + Duration::from_secs(15);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("harness: stopped {daemon} (pid {pid})");
        }
        match &self.hook_backup {
            Some(b) => {
                let _ = std::fs::write(HOOK, b);
            }
            None => {
                let _ = std::fs::remove_file(HOOK);
            }
        }
        let _ = std::fs::remove_dir_all(&self.images);
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    let st = Command::new("kill").arg(pid.to_string()).status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// A second libvirtd on this machine standing in for another host, the
/// destination of live migrations. It has its own host UUID, configuration,
/// run and QEMU state directories (bind-mounted in a mount namespace of its
/// own), no virtlogd (its QEMU logs to files), the xftrace hook, and its own
/// xftrace state directory mounted at the first host's state path: every
/// host of a fleet keeps its state at the same path (/var/lib/xftrace).
pub struct OtherHost {
    root: PathBuf,
    pid: i32,
    pub uri: String,
    state: PathBuf,
}

impl OtherHost {
    /// Start it, with its own empty state mounted at `state`.
    pub fn start(state: &Path) -> OtherHost {
        use std::os::unix::fs::PermissionsExt;
        let root = PathBuf::from(format!(
            "/var/lib/xftrace-test-host2-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["etc/hooks", "run", "lib", "log/qemu", "state"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let st = Command::new("chown")
            .arg("libvirt-qemu:libvirt-qemu")
            .arg(root.join("lib"))
            .status()
            .unwrap();
        assert!(st.success());
        for (d, mode) in [("lib", 0o750), ("state", 0o700), ("", 0o755)] {
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(
            root.join("etc/libvirtd.conf"),
            format!(
                "host_uuid = \"6c1e3a0f-5b8e-4f7a-9d2c-{:012x}\"\n",
                std::process::id()
            ),
        )
        .unwrap();
        std::fs::write(root.join("etc/qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
        let st = Command::new("bash")
            .arg(repo().join("libvirt-hooks/install.sh"))
            .args(["--bin", env!("CARGO_BIN_EXE_xftrace")])
            .arg("--state-dir")
            .arg(state)
            .arg("--hooks-dir")
            .arg(root.join("etc/hooks"))
            .status()
            .unwrap();
        assert!(st.success(), "install the second host's hook");
        let hide_kvm = super::accel() == "tcg" && Path::new("/dev/kvm").exists();
        let script = format!(
            "set -e
{}mount --bind \"$1/etc\" /etc/libvirt
mount --bind \"$1/run\" /run/libvirt
mount --bind \"$1/lib\" /var/lib/libvirt/qemu
mount --bind \"$1/log\" /var/log/libvirt
mount --bind \"$1/state\" \"$2\"
exec libvirtd -d -p \"$1/libvirtd.pid\"",
            if hide_kvm {
                "mount --bind /dev/null /dev/kvm\n"
            } else {
                ""
            }
        );
        let st = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(&root)
            .arg(state)
            .status()
            .expect("start the second libvirtd");
        assert!(st.success(), "the second libvirtd did not start");
        let pidfile = root.join("libvirtd.pid");
        let end = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            if let Some(pid) = pid_alive(pidfile.to_str().unwrap()) {
                break pid;
            }
            assert!(
                Instant::now() < end,
                "the second libvirtd wrote no pid file"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let h = OtherHost {
            uri: format!(
                "qemu+unix:///system?socket={}",
                root.join("run/libvirt-sock").display()
            ),
            root,
            pid,
            state: state.to_path_buf(),
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !h.virsh(&["version"]).status.success() {
            assert!(Instant::now() < end, "the second libvirtd did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("harness: second host's libvirtd (pid {pid}) at {}", h.uri);
        h
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        let out = Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .output()
            .expect("run virsh");
        super::logged("virsh (second host)", args, out)
    }

    /// Run xftrace as on the second host: in its mount namespace, with its
    /// state.
    pub fn xftrace(&self, args: &[&str]) -> Output {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "--"])
            .arg(env!("CARGO_BIN_EXE_xftrace"))
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("run xftrace in the second host's namespace");
        super::logged("xftrace (second host)", args, out)
    }

    /// `virsh migrate --live` domain `name` (its console on 127.0.0.1:`from`)
    /// from the first host to this one, where its console listens on
    /// `to`. Returns how long the migration took.
    pub fn migrate_here(&self, name: &str, from: u16, to: u16) -> Duration {
        let (o, took) = self.try_migrate_here(name, from, to);
        assert!(
            o.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        took
    }

    /// [`OtherHost::migrate_here`], returning virsh's output however it ends.
    pub fn try_migrate_here(&self, name: &str, from: u16, to: u16) -> (Output, Duration) {
        let xml = virsh(&["dumpxml", "--migratable", name]);
        assert!(xml.status.success());
        let xml = String::from_utf8(xml.stdout)
            .unwrap()
            .replace(&format!("service='{from}'"), &format!("service='{to}'"));
        let f = self.root.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        let t = Instant::now();
        let o = virsh(&[
            "migrate",
            "--live",
            "--xml",
            f.to_str().unwrap(),
            name,
            &self.uri,
            "tcp://127.0.0.1",
        ]);
        (o, t.elapsed())
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let names = self.virsh(&["list", "--name"]);
        for n in String::from_utf8_lossy(&names.stdout).split_whitespace() {
            self.virsh(&["destroy", n]);
        }
        let _ = nix_kill(self.pid);
        let end = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "harness: stopped the second host's libvirtd (pid {})",
            self.pid
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
