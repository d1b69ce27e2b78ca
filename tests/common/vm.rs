//! Real QEMU guests with file-backed shared RAM, a serial shell and QMP;
//! KVM when a probe guest boots, else TCG.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::console::Console;
use super::kernel::{initramfs, kernel_dir};
use super::qmp::qmp_status_at;

/// One guest at a time: TCG guests on two cores are slow enough already.
/// Held for the whole test, it also times it (see [`super::timed`]).
pub fn serial() -> Serial {
    static M: Mutex<()> = Mutex::new(());
    let lock = M.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _timer: super::timed(),
        _lock: lock,
    }
}

/// The one-guest-at-a-time lock, and the test's timer (dropped first:
/// the time counts from when the test got its turn).
pub struct Serial {
    _timer: super::Timer,
    _lock: MutexGuard<'static, ()>,
}

/// `kvm` if a probe guest boots under KVM here, else `tcg` (XFTRACE_ACCEL
/// overrides). The probe costs up to 20 s where /dev/kvm hangs guests:
/// with `XFTRACE_ACCEL_FILE` (tests/run.sh sets it), its answer is kept
/// there for the other test binaries of the run.
pub fn accel() -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        match std::env::var("XFTRACE_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        let file = std::env::var_os("XFTRACE_ACCEL_FILE").map(PathBuf::from);
        if let Some(f) = &file {
            match std::fs::read_to_string(f).as_deref().map(str::trim) {
                Ok("kvm") => return "kvm",
                Ok("tcg") => return "tcg",
                _ => {}
            }
        }
        let a = probe_accel();
        if let Some(f) = &file {
            let _ = std::fs::write(f, a);
        }
        a
    })
}

fn probe_accel() -> &'static str {
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
}

/// Non-default boot settings.
#[derive(Default)]
pub struct Boot {
    pub initramfs: Option<PathBuf>,
    /// Appended to the kernel command line (e.g. `xftrace_demo`).
    pub cmdline: String,
    /// A reboot in the guest resets the machine (RAM kept) instead of
    /// ending QEMU.
    pub warm_reboot: bool,
    /// `-icount shift=1,sleep=on` (TCG): guest time follows the
    /// instructions it runs, so in-guest timings repeat within 1 %.
    pub icount: bool,
    /// Another kernel build directory than the test kernel's.
    pub kernel: Option<PathBuf>,
    /// Leave the RAM file sparse (no `prealloc=on`), on /dev/shm: for
    /// guests larger than the host wants to fill.
    pub sparse: bool,
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
        // A sparse RAM file goes on tmpfs, as libvirt's memory_backing_dir
        // does in production: on a disk file system, the host's first reads
        // of a file the guest is still filling wait behind its block
        // allocation and writeback (seconds each, for a 16 GiB guest).
        let dir = if how.sparse {
            tempfile::Builder::new()
                .prefix("xftrace-vm-")
                .tempdir_in("/dev/shm")
        } else {
            tempfile::Builder::new().prefix("xftrace-vm-").tempdir()
        }
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
            .args(
                (how.icount && accel == "tcg")
                    .then_some(["-icount", "shift=1,sleep=on"])
                    .into_iter()
                    .flatten(),
            )
            .args(["-m", &format!("{mem_mb}M"), "-smp", &smp.to_string()])
            .args([
                "-object",
                &format!(
                    "memory-backend-file,id=pc.ram,size={mem_mb}M,mem-path={},share=on,prealloc={}",
                    ram.display(),
                    if how.sparse { "off" } else { "on" }
                ),
                "-machine",
                "memory-backend=pc.ram",
            ])
            .arg("-kernel")
            .arg(
                how.kernel
                    .as_deref()
                    .unwrap_or(kernel_dir())
                    .join("bzImage"),
            )
            .arg("-initrd")
            .arg(how.initramfs.as_deref().unwrap_or(initramfs()))
            .args([
                "-append",
                &format!("console=ttyS0 panic=-1 quiet xftrace_ticks {}", how.cmdline),
            ])
            .args(["-display", "none", "-nodefaults"])
            .args((!how.warm_reboot).then_some("-no-reboot"))
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

    /// Reboot the guest from inside (QEMU resets the machine and keeps
    /// its RAM: boot with [`Boot::warm_reboot`]) and wait for the new
    /// kernel's shell.
    pub fn reboot(&mut self) {
        self.console.send("reboot -f\n");
        let timeout = Duration::from_secs(if accel() == "kvm" { 60 } else { 180 });
        self.wait_for("XFTRACE-GUEST-READY", timeout)
            .expect("the guest comes back from its reboot");
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Run a shell command in the guest and return what it printed.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.console.sh(cmd)
    }

    /// What a shell command printed, without the console's echo.
    pub fn output(&mut self, cmd: &str) -> String {
        self.console.output(cmd)
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
