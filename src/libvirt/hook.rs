//! What the libvirt qemu hook knows of libvirt and of a domain's state
//! files: its arguments ([`HookEvent`]), the domain XML on its stdin
//! ([`read_xml`]), the domain's life as the hook last recorded it
//! ([`record`], [`recorded`]), the marks a restore or an incoming migration
//! leaves for the start that follows ([`Arrival`]), and the `xftrace on`
//! arguments of always-on monitoring ([`monitor_args`]). What the hook
//! does on each event is `lifecycle::hook`'s.
//!
//! The domain XML is written by whoever may define domains, which is not
//! necessarily whoever may run commands as root. Nothing from it reaches a
//! command line but function names that pass [`crate::abi::funcs::check_pattern`],
//! after a `--`; paths in it are checked where they are used
//! (`kernel::builds::check_recorded`).

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use log::warn;

use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::host::files;
use crate::host::statedir::{now_unix, GuestDir};
use crate::libvirt::domain_xml::{self, DomainFacts};

/// Functions always-on monitoring may name.
const MAX_MONITOR: usize = 64;

/// Where a domain is in its life, as the hook last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainLife {
    Running,
    Stopped,
}

/// What the hook records about a domain's life, beside xftrace's state.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LibvirtState {
    pub state: DomainLife,
    pub since: f64,
}

/// Record that domain `name` is now `state` (creating its state directory).
pub fn record(root: &Path, name: &str, state: DomainLife) -> Result<GuestDir> {
    let st = GuestDir::for_domain(root, name)?;
    let text = serde_json::to_string(&LibvirtState {
        state,
        since: now_unix(),
    })
    .expect("serializes");
    files::write_atomically(&st.path().join("libvirt.json"), text.as_bytes())?;
    Ok(st)
}

/// The arguments of the `xftrace on` that always-on monitoring runs, or
/// why the domain definition's request is refused.
pub fn monitor_args(
    root: &Path,
    name: &str,
    facts: &DomainFacts,
    arrival: Option<Arrival>,
) -> std::result::Result<Vec<OsString>, String> {
    on_args(root, name, Some(&facts.monitor), arrival)
}

/// `xftrace --domain NAME on --wait=300 -- FUNCTIONS`, each function
/// checked (they come from a domain definition or a state file), or with
/// no functions `on --adopt`, which traces what the guest traces.
pub fn on_args(
    root: &Path,
    name: &str,
    functions: Option<&[String]>,
    arrival: Option<Arrival>,
) -> std::result::Result<Vec<OsString>, String> {
    let functions = functions.unwrap_or_default();
    if functions.len() > MAX_MONITOR {
        return Err(format!(
            "it names {} functions; at most {MAX_MONITOR}",
            functions.len()
        ));
    }
    for f in functions {
        crate::abi::funcs::check_pattern(f)?;
    }
    let mut state_dir = OsString::from("--state-dir=");
    state_dir.push(root.as_os_str());
    let mut args = vec![
        state_dir,
        OsString::from(format!("--domain={name}")),
        "on".into(),
        "--wait=300".into(),
    ];
    if let Some(a) = arrival {
        args.push(format!("--gap={}", a.gap()).into());
    }
    if functions.is_empty() {
        args.push("--adopt".into());
    } else {
        args.push("--".into());
        args.extend(functions.iter().map(OsString::from));
    }
    Ok(args)
}

/// How a starting domain's guest came here, when it may already be
/// tracing: its RAM is a saved image's or another host's, tracer included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// `virsh restore`, or `virsh start` of a managed-saved domain.
    Restore,
    /// An incoming live migration.
    Migration,
}

impl Arrival {
    /// The mark the hook leaves between `restore`/`migrate begin` and
    /// `started begin`.
    pub fn mark(self, st: &GuestDir) -> std::path::PathBuf {
        st.path().join(match self {
            Arrival::Restore => "restoring",
            Arrival::Migration => "migrating-in",
        })
    }

    /// The note for the header of the trace that continues here.
    pub fn gap(self) -> String {
        match self {
            Arrival::Restore => format!("the domain was restored (unix time {})", now_unix() as u64),
            Arrival::Migration => format!(
                "the domain arrived by live migration from another host (unix time {}): what it recorded there is in that host's trace",
                now_unix() as u64
            ),
        }
    }
}

/// How this start's guest arrived, if a restore or migration brought it.
/// (The marks are used up.)
pub fn take_arrival(st: &GuestDir) -> Option<Arrival> {
    let mut found = None;
    for a in [Arrival::Restore, Arrival::Migration] {
        let p = a.mark(st);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            found = Some(a);
        }
        let _ = files::remove_if_present(&p);
    }
    found
}

/// Mark that a restore or a migration brings the domain's next start.
pub fn leave_mark(st: &GuestDir, name: &str, arrival: Arrival) {
    if let Err(e) = files::write_atomically(&arrival.mark(st), b"") {
        warn!(
            "xftrace hook: cannot note the arrival of {}: {e}",
            escape(name)
        );
    }
}

/// Read what the hook last recorded for domain `name`.
pub fn recorded(root: &Path, name: &str) -> Option<LibvirtState> {
    let st = GuestDir::existing_domain(root, name)?;
    let text =
        files::read_text_bounded(&st.path().join("libvirt.json"), 4096, "hook state").ok()?;
    serde_json::from_str(&text).ok()
}

/// The domain XML libvirt gives the hook on stdin, bounded: one byte more
/// than [`domain_xml::MAX_BYTES`], so that a larger one is refused as too
/// large rather than read cut short.
pub fn read_xml(stdin: &mut dyn Read) -> Result<String> {
    let mut xml = String::new();
    let bound = u64::try_from(domain_xml::MAX_BYTES).unwrap_or(u64::MAX);
    stdin
        .take(bound.saturating_add(1))
        .read_to_string(&mut xml)
        .map_err(|e| Error::io("cannot read the domain XML from stdin", e))?;
    Ok(xml)
}

/// One call of the qemu hook: `xftrace hook qemu DOMAIN OPERATION
/// SUB-OPERATION [EXTRA]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookEvent<'a> {
    pub domain: &'a str,
    pub operation: &'a str,
    /// `-` when libvirt gives none.
    pub sub_operation: &'a str,
}

impl<'a> HookEvent<'a> {
    /// libvirt's arguments: domain, operation, sub-operation, extra.
    pub fn parse(args: &'a [String]) -> Result<Self> {
        let (Some(domain), Some(operation)) = (args.first(), args.get(1)) else {
            return Err(Error::Input(
                "usage: xftrace hook qemu DOMAIN OPERATION SUB-OPERATION [EXTRA]".into(),
            ));
        };
        Ok(HookEvent {
            domain,
            operation,
            sub_operation: args.get(2).map_or("-", String::as_str),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An enrolled domain's XML, as the hook gets it (also the lifecycle
    /// hook's tests').
    pub(crate) const ENROLLED: &str = "<domain type='qemu'><name>t1</name><metadata><xftrace:enrollment xmlns:xftrace=\"http://xftrace.invalid/ns/enrollment/1\"><xftrace:system-map path=\"/k/System.map\"/><xftrace:previous-memory-backing absent='yes'/><xftrace:previous-memballoon absent='yes'/></xftrace:enrollment></metadata><memoryBacking><source type='file'/><access mode='shared'/><allocation mode='immediate'/></memoryBacking><devices><memballoon model='none'/></devices></domain>";

    /// [`ENROLLED`] with always-on monitoring of `functions`.
    pub(crate) fn with_monitor(functions: &str) -> String {
        ENROLLED.replace(
            "<xftrace:previous-memory-backing",
            &format!(
                "<xftrace:monitor functions=\"{functions}\"/><xftrace:previous-memory-backing"
            ),
        )
    }

    #[test]
    fn hook_arguments_name_domain_and_operation() {
        let args: Vec<String> = ["t1", "started", "begin", "-"].map(String::from).into();
        let e = HookEvent::parse(&args).unwrap();
        assert_eq!(
            (e.domain, e.operation, e.sub_operation),
            ("t1", "started", "begin")
        );
        let args: Vec<String> = ["t1", "started"].map(String::from).into();
        assert_eq!(HookEvent::parse(&args).unwrap().sub_operation, "-");
        let e = HookEvent::parse(&args[..1]).unwrap_err();
        assert!(e.to_string().contains("usage: xftrace hook qemu"), "{e}");
    }

    #[test]
    fn arrival_marks_are_used_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = GuestDir::for_domain(&root, "t1").unwrap();
        leave_mark(&st, "t1", Arrival::Restore);
        assert_eq!(take_arrival(&st), Some(Arrival::Restore));
        assert_eq!(take_arrival(&st), None);
        // Functions from a state file are checked like a definition's.
        let evil = ["--output=/etc/passwd".to_string()];
        assert!(on_args(&root, "t1", Some(&evil), None).is_err());
    }

    #[test]
    fn monitoring_takes_function_names_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let root = &root;
        let f = domain_xml::facts(&with_monitor("sys_read __x64_sys_open* vfs_rea?")).unwrap();
        let args = monitor_args(root.as_path(), "t1", &f, None).unwrap();
        let dashdash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dashdash + 1..],
            ["sys_read", "__x64_sys_open*", "vfs_rea?"]
        );
        assert!(args[..dashdash]
            .iter()
            .all(|a| a.to_string_lossy().starts_with("--") || a == "on"));

        // Options and paths smuggled in through the definition.
        for evil in [
            "sys_read --connect=qemu+ext:///system?command=/tmp/x",
            "sys_read --state-dir=/etc",
            "--vmlinux=/dev/zero",
            "sys_read;touch /tmp/x",
            "$(touch /tmp/x)",
        ] {
            let f = domain_xml::facts(&with_monitor(evil)).unwrap();
            let e = monitor_args(root.as_path(), "t1", &f, None).unwrap_err();
            assert!(e.contains("not a function name"), "{evil}: {e}");
        }
    }
}
