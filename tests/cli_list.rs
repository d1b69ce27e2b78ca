//! `xftrace list` through libvirt's own test driver (`test:///FILE`: a
//! node described by a file, read in process, no daemon): a domain whose
//! definition is beyond what xftrace reads (more elements than
//! `domain_xml::MAX_ELEMENTS`) does not hide the other domains, and the
//! command says which one it could not read and fails.

use std::process::Command;

fn domain(name: &str, metadata: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory>65536</memory>\
         <os><type>hvm</type></os><metadata>{metadata}</metadata></domain>"
    )
}

#[test]
fn an_unreadable_definition_does_not_hide_the_other_domains() {
    let dir = tempfile::tempdir().unwrap();
    let many = format!(
        "<x:m xmlns:x='urn:xftrace-test'>{}</x:m>",
        "<x:e/>".repeat(xftrace::libvirt::domain_xml::MAX_ELEMENTS + 1)
    );
    let node = format!(
        "<node>{}{}</node>",
        domain("plain01", ""),
        domain("huge01", &many)
    );
    let path = dir.path().join("node.xml");
    std::fs::write(&path, node).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_xftrace"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--connect")
        .arg(format!("test://{}", path.display()))
        .arg("list")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    let row = |name: &str| out.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    assert!(
        row("plain01").is_some_and(|l| l.contains(" no ")),
        "{out}\n{err}"
    );
    assert!(
        row("huge01").is_some_and(|l| l.contains("unknown")),
        "{out}\n{err}"
    );
    assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("could not be read") && err.contains("huge01"),
        "{err}"
    );
}
