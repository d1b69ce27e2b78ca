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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
