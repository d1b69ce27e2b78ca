//! The Debian bookworm VM (tests/guest/make-debian-image.sh) as a libvirt
//! domain, as an operator's would be: q35, one vCPU, a virtio disk it boots
//! from through its own GRUB, virtio network (user-mode, with SSH and HTTP
//! forwarded to ports of 127.0.0.1 through libvirt's QEMU command-line
//! namespace; its device sits in a slot of its own on the root bus, since
//! QEMU sees it before libvirt's devices), and a serial console written to
//! a file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::libvirtd::{virsh, Libvirtd, URI};
use super::{free_port, repo};

/// The image's cache directory: debian.img, id_ed25519, stock-kernel
/// (built once, then reused). XFTRACE_DEBIAN_IMAGE
/// overrides.
pub fn image_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("XFTRACE_DEBIAN_IMAGE") {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(repo().join("tests/guest/make-debian-image.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run make-debian-image.sh");
        assert!(out.status.success(), "make-debian-image.sh failed");
        PathBuf::from(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .expect("the image directory"),
        )
    })
}

/// A defined (not yet started) Debian domain.
pub struct Debian {
    pub name: String,
    pub ssh_port: u16,
    pub http_port: u16,
    /// The serial console's output.
    pub console: PathBuf,
    pub key: PathBuf,
}

impl Libvirtd {
    /// Define a Debian domain on a private copy of the image.
    pub fn define_debian(&mut self, name: &str, mem_mb: u64) -> Debian {
        let img = image_dir();
        let disk = self.images.join(format!("{name}.img"));
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(img.join("debian.img"))
            .arg(&disk)
            .status()
            .unwrap();
        assert!(st.success(), "copy the Debian image");
        let (ssh_port, http_port) = (free_port(), free_port());
        let console = self.images.join(format!("{name}.console.log"));
        let ty = if super::accel() == "kvm" {
            "kvm"
        } else {
            "qemu"
        };
        let xml = format!(
            "<domain type='{ty}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{mem_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='unsafe'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='virtio'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=xftnet0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{http_port}-:80'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=xftnet0,id=xftnic0,bus=pcie.0,addr=0x18'/>
  </qemu:commandline>
</domain>
",
            disk = disk.display(),
            console = console.display(),
        );
        let f = self.images.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        let o = virsh(&["define", f.to_str().unwrap()]);
        assert!(o.status.success(), "define {name}");
        self.domains.push(name.to_string());
        Debian {
            name: name.to_string(),
            ssh_port,
            http_port,
            console,
            key: img.join("id_ed25519"),
        }
    }
}

/// ssh and scp options for a throwaway test guest.
const SSH_OPTIONS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
];

impl Debian {
    fn ssh_command(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(SSH_OPTIONS)
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg("root@127.0.0.1");
        c
    }

    /// Run a shell command in the guest.
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_command()
            .arg("--")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Run a shell command in the guest that must succeed; its stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let o = self.ssh(cmd);
        assert!(
            o.status.success(),
            "guest command `{cmd}` failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Copy host files into a guest directory.
    pub fn copy_in(&self, files: &[PathBuf], dir: &str) {
        self.sh(&format!("mkdir -p {dir}"));
        let st = Command::new("scp")
            .arg("-q")
            .arg("-i")
            .arg(&self.key)
            .args(SSH_OPTIONS)
            .arg("-P")
            .arg(self.ssh_port.to_string())
            .args(files)
            .arg(format!("root@127.0.0.1:{dir}/"))
            .status()
            .unwrap();
        assert!(st.success(), "scp into the guest");
    }

    /// Reboot the guest and wait until it is back at multi-user.target
    /// with a new boot ID.
    pub fn reboot(&self, timeout: Duration) {
        let boot_id = "cat /proc/sys/kernel/random/boot_id";
        let before = self.sh(boot_id).trim().to_string();
        let _ = self.ssh("systemctl reboot");
        let end = Instant::now() + timeout;
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let o = self.ssh(&format!(
                "systemctl is-active multi-user.target && {boot_id}"
            ));
            if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains(&before) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} did not come back from reboot in {timeout:?}; console:\n{}",
                self.name,
                self.console_tail()
            );
        }
    }

    /// Wait until systemd has reached multi-user.target (over SSH).
    pub fn wait_multi_user(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let o = self.ssh("systemctl is-active multi-user.target");
            if o.status.success() {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} did not reach multi-user.target in {timeout:?}; console:\n{}",
                self.name,
                self.console_tail()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One HTTP request to the guest's web server: its status code.
    pub fn http_get(&self, path: &str) -> Option<u16> {
        http_get(self.http_port, path)
    }

    /// Keep HTTP requests going at the guest until the returned load is
    /// stopped.
    pub fn http_load(&self) -> HttpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (port, s, n) = (self.http_port, stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let path = if i.is_multiple_of(3) { "/missing" } else { "/" };
                if http_get(port, path).is_some() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        HttpLoad {
            stop,
            ok,
            thread: Some(thread),
        }
    }
}

fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Requests kept going at a guest's web server.
pub struct HttpLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpLoad {
    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for HttpLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// libvirt's lifecycle events of a domain (`virsh event --loop`), to prove
/// it was never paused.
pub struct Lifecycle {
    child: Child,
    out: PathBuf,
}

impl Lifecycle {
    pub fn watch(name: &str, dir: &Path) -> Lifecycle {
        let out = dir.join(format!("{name}.events"));
        let child = Command::new("virsh")
            .args(["-c", URI, "event", "--domain", name])
            .args(["--event", "lifecycle", "--loop", "--timestamp"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("run virsh event");
        Lifecycle { child, out }
    }

    /// The events seen so far.
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("lifecycle"))
            .map(String::from)
            .collect()
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Debian image booted by QEMU itself (no libvirt) on one of our kernel
/// builds (`-kernel`; the small profile has virtio and ext4 built in), for
/// benches that want `-icount` so that guest time repeats. Disk writes go to
/// a throwaway overlay (`snapshot=on`), the RAM to a shared file in a private
/// directory on tmpfs (`ram`) for the host tool, where the Ansible role puts
/// libvirt's `memory_backing_dir` (on a disk file system, the guest's every
/// write to its memory would become the host's writeback); QEMU is killed on
/// drop.
pub struct DirectDebian {
    pub guest: Debian,
    pub ram: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DirectDebian {
    pub fn boot(kernel_dir: &Path, mem_mb: u64, icount: bool) -> DirectDebian {
        use std::os::unix::fs::PermissionsExt;
        let img = image_dir();
        let dir = tempfile::Builder::new()
            .prefix("xftrace-debian-")
            .tempdir_in("/dev/shm")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ram = dir.path().join("pc.ram");
        let console = dir.path().join("console.log");
        let (ssh_port, http_port) = (free_port(), free_port());
        let accel = super::accel();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-cpu", "max", "-accel", accel])
            .args(
                (icount && accel == "tcg")
                    .then_some(["-icount", "shift=1,sleep=on"])
                    .into_iter()
                    .flatten(),
            )
            .args(["-m", &format!("{mem_mb}M"), "-smp", "1"])
            .args([
                "-object",
                &format!(
                    "memory-backend-file,id=pc.ram,size={mem_mb}M,mem-path={},share=on,prealloc=on",
                    ram.display()
                ),
                "-machine",
                "memory-backend=pc.ram",
            ])
            .arg("-kernel")
            .arg(kernel_dir.join("bzImage"))
            .args(["-append", "root=/dev/vda1 ro console=ttyS0 quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                img.join("debian.img").display()
            ))
            .args([
                "-netdev",
                &format!(
                    "user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{http_port}-:80"
                ),
                "-device",
                "virtio-net-pci,netdev=n0",
                "-device",
                "virtio-rng-pci",
            ])
            .args(["-display", "none", "-nodefaults", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.err")).unwrap())
            .spawn()
            .expect("run qemu-system-x86_64");
        let mut d = DirectDebian {
            guest: Debian {
                name: "debian-direct".to_string(),
                ssh_port,
                http_port,
                console,
                key: img.join("id_ed25519"),
            },
            ram,
            child,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if d.guest
                .ssh("systemctl is-active multi-user.target")
                .status
                .success()
            {
                break;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!(
                    "qemu exited ({st}) before the Debian guest came up: {}\nconsole:\n{}",
                    std::fs::read_to_string(d._dir.path().join("qemu.err")).unwrap_or_default(),
                    d.guest.console_tail()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(900),
                "the Debian guest did not reach multi-user.target in 900 s; console:\n{}",
                d.guest.console_tail()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        eprintln!(
            "harness: Debian guest ({accel}) at multi-user.target in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        d
    }
}

impl Drop for DirectDebian {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
