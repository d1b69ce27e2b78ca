//! Test harness: the patched guest kernel, a busybox initramfs, and real
//! QEMU guests with file-backed shared RAM, a serial shell on a unix socket
//! and QMP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

pub fn initramfs() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = repo().join("target").join("xftrace-test-initramfs.cpio.gz");
        let st = Command::new("bash")
            .arg(repo().join("tests/guest/make-initramfs.sh"))
            .arg(&out)
            .status()
            .expect("run make-initramfs.sh");
        assert!(st.success(), "make-initramfs.sh failed");
        out
    })
}

/// One guest at a time: TCG guests on two cores are slow enough already.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kvm` if a probe guest boots under KVM here, else `tcg` (XFTRACE_ACCEL overrides).
pub fn accel() -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        match std::env::var("XFTRACE_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        if !Path::new("/dev/kvm").exists() {
            eprintln!("harness: no /dev/kvm, using TCG");
            return "tcg";
        }
        match Vm::try_boot("kvm", 256, 1, Duration::from_secs(20), &Boot::default()) {
            Ok(_) => {
                eprintln!("harness: KVM probe guest booted, using KVM");
                "kvm"
            }
            Err(e) => {
                eprintln!("harness: KVM probe guest did not boot ({e}), using TCG");
                "tcg"
            }
        }
    })
}

pub mod libvirtd;

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A shell on the guest's serial console.
pub struct Console {
    stream: Box<dyn Stream>,
    pending: String,
    marker: u32,
}

impl Console {
    pub fn unix(s: UnixStream) -> Console {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Console {
            stream: Box::new(s),
            pending: String::new(),
            marker: 0,
        }
    }

    /// Connect to a console on a TCP port (libvirt's `<serial type='tcp'>`).
    pub fn tcp(addr: &str, timeout: Duration) -> Result<Console, String> {
        let end = Instant::now() + timeout;
        loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    return Ok(Console {
                        stream: Box::new(s),
                        pending: String::new(),
                        marker: 0,
                    });
                }
                Err(e) if Instant::now() >= end => {
                    return Err(format!(
                        "cannot connect to the guest console at {addr}: {e}"
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Read until `needle`; return what came before it. `alive` reports a
    /// dead guest early.
    pub fn wait_for(
        &mut self,
        needle: &str,
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<String, String> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.pending.find(needle) {
                let out = self.pending[..i].to_string();
                self.pending.drain(..i + needle.len());
                return Ok(out);
            }
            if Instant::now() >= end {
                return Err(format!(
                    "timed out waiting for {needle:?}; console so far: {:?}",
                    self.pending
                ));
            }
            alive()?;
            match self.stream.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Run a shell command in the guest and return what it printed.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.marker += 1;
        let m = format!("XFT-DONE-{}", self.marker);
        // The marker is split in the command line so only the echo matches.
        let line = format!("{cmd}; echo XFT-DONE-\"{}\"\n", self.marker);
        self.stream.write_all(line.as_bytes()).unwrap();
        self.wait_for(&m, Duration::from_secs(120), &mut || Ok(()))
            .unwrap_or_else(|e| panic!("guest command {cmd:?}: {e}"))
    }
}

/// Non-default boot settings.
#[derive(Default)]
pub struct Boot {
    pub initramfs: Option<PathBuf>,
    /// Appended to the kernel command line (e.g. `xftrace_demo`).
    pub cmdline: String,
}

/// The test rootkits (tests/rootkits), built against the guest kernel's
/// prepared tree, and an initramfs that carries them in /lib/xftrace-test/.
pub fn rootkit_initramfs() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let build = repo().join("target").join("xftrace-rootkits");
        let _ = std::fs::remove_dir_all(&build);
        std::fs::create_dir_all(&build).unwrap();
        for e in std::fs::read_dir(repo().join("tests/rootkits")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), build.join(e.file_name())).unwrap();
        }
        let st = Command::new("make")
            .arg("-C")
            .arg(kernel_dir().join("build"))
            .arg(format!("M={}", build.display()))
            .arg("modules")
            .stdout(Stdio::null())
            .status()
            .expect("run make");
        assert!(st.success(), "building the test rootkits failed");
        let mut kos: Vec<PathBuf> = std::fs::read_dir(&build)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "ko"))
            .collect();
        kos.sort();
        assert_eq!(kos.len(), 6, "{kos:?}");
        let out = repo()
            .join("target")
            .join("xftrace-test-initramfs-rootkits.cpio.gz");
        let st = Command::new("bash")
            .arg(repo().join("tests/guest/make-initramfs.sh"))
            .arg(&out)
            .args(&kos)
            .status()
            .unwrap();
        assert!(st.success());
        out
    })
}

pub struct Vm {
    pub dir: tempfile::TempDir,
    pub ram: PathBuf,
    child: Child,
    console: Console,
}

impl Vm {
    pub fn boot(mem_mb: u64, smp: u32) -> Vm {
        Vm::boot_with(mem_mb, smp, &Boot::default())
    }

    pub fn boot_with(mem_mb: u64, smp: u32, how: &Boot) -> Vm {
        let accel = accel();
        let timeout = Duration::from_secs(if accel == "kvm" { 60 } else { 180 });
        Vm::try_boot(accel, mem_mb, smp, timeout, how).expect("boot the test guest")
    }

    fn try_boot(
        accel: &str,
        mem_mb: u64,
        smp: u32,
        timeout: Duration,
        how: &Boot,
    ) -> Result<Vm, String> {
        let dir = tempfile::Builder::new()
            .prefix("xftrace-vm-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ram = dir.path().join("pc.ram");
        let p = |n: &str| dir.path().join(n).display().to_string();
        let child = Command::new("qemu-system-x86_64")
            // Multi-threaded TCG (QEMU 7.2) sometimes hangs an SMP guest while
            // ftrace patches kernel text; one TCG thread for all vCPUs does not.
            .args(["-machine", "pc", "-cpu", "max", "-accel"])
            .arg(if accel == "tcg" && smp > 1 {
                "tcg,thread=single"
            } else {
                accel
            })
            .args(["-m", &format!("{mem_mb}M"), "-smp", &smp.to_string()])
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
            .arg(kernel_dir().join("bzImage"))
            .arg("-initrd")
            .arg(how.initramfs.as_deref().unwrap_or(initramfs()))
            .args([
                "-append",
                &format!("console=ttyS0 panic=-1 quiet {}", how.cmdline),
            ])
            .args(["-display", "none", "-no-reboot", "-nodefaults"])
            .args([
                "-chardev",
                &format!(
                    "socket,id=con,path={},server=on,wait=off,logfile={}",
                    p("console.sock"),
                    p("console.log")
                ),
                "-serial",
                "chardev:con",
                "-serial",
                &format!("file:{}", p("ticks.log")),
                "-qmp",
                &format!("unix:{},server=on,wait=off", p("qmp.sock")),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(p("qemu.out")).unwrap())
            .stderr(std::fs::File::create(p("qemu.err")).unwrap())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let start = Instant::now();
        let console = loop {
            if let Ok(s) = UnixStream::connect(dir.path().join("console.sock")) {
                break s;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "no console socket: {}",
                    std::fs::read_to_string(p("qemu.err")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut vm = Vm {
            dir,
            ram,
            child,
            console: Console::unix(console),
        };
        vm.wait_for("XFTRACE-GUEST-READY", timeout)?;
        eprintln!(
            "harness: {accel} guest booted in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        // Let the shell print its prompt before we type.
        std::thread::sleep(Duration::from_millis(500));
        Ok(vm)
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let child = &mut self.child;
        self.console
            .wait_for(needle, timeout, &mut || match child.try_wait() {
                Ok(Some(st)) => Err(format!("qemu exited ({st}) waiting for {needle:?}")),
                _ => Ok(()),
            })
    }

    /// Run a shell command in the guest and return what it printed.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.console.sh(cmd)
    }

    /// QMP query-status, e.g. "running".
    pub fn qmp_status(&self) -> String {
        qmp_status_at(self.dir.path())
    }

    /// The last number the guest's tick loop printed on its second serial port.
    pub fn ticks(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("ticks.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stop QEMU the way a crash or `virsh destroy` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run the xftrace binary against a guest.
pub struct Xftrace {
    pub state: tempfile::TempDir,
    pub mem_file: PathBuf,
    pub system_map: PathBuf,
}

impl Xftrace {
    pub fn new(mem_file: &Path) -> Self {
        Xftrace {
            state: state_dir(),
            mem_file: mem_file.to_path_buf(),
            system_map: system_map(),
        }
    }

    /// The xftrace command for this guest, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        c.arg("--mem-file")
            .arg(&self.mem_file)
            .arg("--system-map")
            .arg(&self.system_map)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--mem-file",
            self.mem_file.to_str().unwrap(),
            "--system-map",
            self.system_map.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        xftrace(self.state.path(), &all)
    }
}

/// QMP query-status of the guest whose files are in `dir`.
pub fn qmp_status_at(dir: &Path) -> String {
    let v = qmp(dir, "query-status");
    v["return"]["status"].as_str().unwrap_or("?").to_string()
}

/// Run one QMP command on the guest whose files are in `dir`.
pub fn qmp(dir: &Path, command: &str) -> serde_json::Value {
    let s = UnixStream::connect(dir.join("qmp.sock")).expect("connect QMP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.contains("\"return\"") {
            break;
        }
    }
    w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .unwrap();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return serde_json::Value::Null;
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v.get("return").is_some() || v.get("error").is_some() {
            return v;
        }
    }
}

/// A private state directory (xftrace refuses one others can enter).
pub fn state_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("xftrace-state-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// Run xftrace against `x`'s guest with another System.map.
pub fn xftrace_with_map(x: &Xftrace, map: &Path, args: &[&str]) -> Output {
    let y = Xftrace {
        state: state_dir(),
        mem_file: x.mem_file.clone(),
        system_map: map.to_path_buf(),
    };
    y.run(args)
}

/// Run the xftrace binary with state in `state`.
pub fn xftrace(state: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xftrace"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run xftrace");
    logged("xftrace", args, out)
}

/// Echo a command and what it did to the test log; hand its output on.
pub fn logged(tool: &str, args: &[&str], out: Output) -> Output {
    eprintln!(
        "$ {tool} {}\n  exit {:?}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// What the libvirt hook recorded for domain `name` in `state`.
pub fn hook_state(state: &Path, name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(state.join("domains").join(name).join("libvirt.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["state"].as_str().map(str::to_string)
}
