//! QEMU's QMP monitor of a test guest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
