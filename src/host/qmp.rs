//! A QEMU monitor reached through its QMP socket (`-qmp unix:PATH,server=on`),
//! for guests outside libvirt (`--mem-file … --qmp PATH`): one human
//! monitor command, its text answer. libvirt domains go through libvirt's
//! own monitor passthrough instead.
#![deny(clippy::arithmetic_side_effects)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::base::error::{Error, Result};

/// Longest answer read (a 256-vCPU register dump is about 1 MiB).
const MAX_ANSWER: u64 = 16 << 20;
/// How long QEMU may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Run HMP `command` through the QMP socket at `socket` (not reached
/// through a link) and return its output.
pub fn human_monitor_command(socket: &Path, command: &str) -> Result<String> {
    let what = || format!("QEMU monitor socket {}", socket.display());
    let meta = std::fs::symlink_metadata(socket).map_err(|e| Error::io(what(), e))?;
    if !meta.file_type().is_socket() {
        return Err(Error::Input(format!("{} is not a socket", what())));
    }
    let stream = UnixStream::connect(socket).map_err(|e| Error::io(what(), e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| Error::io(what(), e))?;
    let mut w = stream.try_clone().map_err(|e| Error::io(what(), e))?;
    let mut r = BufReader::new(stream.take(MAX_ANSWER));
    // The greeting, then capabilities negotiation, then the command.
    let greeting = line(&mut r, &what)?;
    if greeting.get("QMP").is_none() {
        return Err(Error::Guest(format!("{} did not greet as QMP", what())));
    }
    for cmd in [
        json!({"execute": "qmp_capabilities"}),
        json!({"execute": "human-monitor-command", "arguments": {"command-line": command}}),
    ] {
        writeln!(w, "{cmd}").map_err(|e| Error::io(what(), e))?;
        let answer = loop {
            let v = line(&mut r, &what)?;
            // Events may come between a command and its answer.
            if v.get("event").is_none() {
                break v;
            }
        };
        if let Some(e) = answer.get("error") {
            return Err(Error::Guest(format!("{} refused {cmd}: {e}", what())));
        }
        if cmd["execute"] == "human-monitor-command" {
            return answer["return"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Guest(format!("{} answered without text", what())));
        }
    }
    unreachable!("the loop returns at its last command")
}

/// One JSON line from QEMU.
fn line(r: &mut impl BufRead, what: &dyn Fn() -> String) -> Result<Value> {
    let mut s = String::new();
    let n = r.read_line(&mut s).map_err(|e| Error::io(what(), e))?;
    if n == 0 {
        return Err(Error::Guest(format!("{} closed the connection", what())));
    }
    serde_json::from_str(&s).map_err(|e| Error::Guest(format!("{} sent non-JSON: {e}", what())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A QMP server that greets, accepts capabilities, sends an event and
    /// answers one human command with `answer`.
    fn fake_qemu(dir: &Path, answer: Value) -> std::path::PathBuf {
        let p = dir.join("qmp.sock");
        let l = UnixListener::bind(&p).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
            l.clear();
            r.read_line(&mut l).unwrap();
            assert!(l.contains("info registers"), "{l}");
            writeln!(w, r#"{{"event": "RTC_CHANGE", "data": {{}}}}"#).unwrap();
            writeln!(w, "{answer}").unwrap();
        });
        p
    }

    #[test]
    fn asks_qemu_and_returns_its_text() {
        let d = tempfile::tempdir().unwrap();
        let p = fake_qemu(d.path(), json!({"return": "CPU#0\r\nIDT= 0 0\r\n"}));
        assert_eq!(
            human_monitor_command(&p, "info registers -a").unwrap(),
            "CPU#0\r\nIDT= 0 0\r\n"
        );
    }

    #[test]
    fn a_refusal_or_a_file_that_is_no_socket_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = fake_qemu(d.path(), json!({"error": {"class": "GenericError"}}));
        assert!(human_monitor_command(&p, "info registers -a").is_err());
        let f = d.path().join("plain");
        std::fs::write(&f, b"").unwrap();
        assert!(human_monitor_command(&f, "info registers -a").is_err());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(human_monitor_command(&link, "info registers -a").is_err());
    }
}
