//! Running the xftrace binary, with private state, and echoing what it did.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::kernel::system_map;

/// Run the xftrace binary against a guest.
pub struct Xftrace {
    pub state: tempfile::TempDir,
    pub mem_file: PathBuf,
    pub system_map: PathBuf,
    /// The build's modules (`--modules`), where a test names some.
    pub modules: Option<PathBuf>,
    /// The QMP socket of the guest's QEMU (`--qmp`), where a test gives it.
    pub qmp: Option<PathBuf>,
}

impl Xftrace {
    pub fn new(mem_file: &Path) -> Self {
        Xftrace {
            state: state_dir(),
            mem_file: mem_file.to_path_buf(),
            system_map: system_map(),
            modules: None,
            qmp: None,
        }
    }

    /// The arguments that name the guest and its build.
    fn guest_args(&self) -> Vec<&std::ffi::OsStr> {
        let mut a = vec![
            "--mem-file".as_ref(),
            self.mem_file.as_os_str(),
            "--system-map".as_ref(),
            self.system_map.as_os_str(),
        ];
        if let Some(m) = &self.modules {
            a.extend(["--modules".as_ref(), m.as_os_str()]);
        }
        if let Some(q) = &self.qmp {
            a.extend(["--qmp".as_ref(), q.as_os_str()]);
        }
        a
    }

    /// The xftrace command for this guest, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xftrace"));
        c.args(self.guest_args())
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self
            .guest_args()
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect();
        all.extend_from_slice(args);
        xftrace(self.state.path(), &all)
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
        modules: None,
        qmp: None,
    };
    y.run(args)
}

/// Run the xftrace binary with state in `state`, logging at `info`
/// (`XFTRACE_TEST_RUST_LOG` overrides it, to debug a test).
pub fn xftrace(state: &Path, args: &[&str]) -> Output {
    let log = std::env::var("XFTRACE_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
    let out = Command::new(env!("CARGO_BIN_EXE_xftrace"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_LOG", log)
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

/// The traces `on` wrote aside in a guest's state directory `dir` (the
/// records of a session that ended without `off`), sorted.
pub fn recovered_traces(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("recovered-")
                && p.extension().is_some_and(|x| x == "txt")
        })
        .collect();
    v.sort();
    v
}
