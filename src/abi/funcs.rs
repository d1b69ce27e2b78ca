//! The function list of an "on" command: names and globs as the guest's
//! ftrace matches them, written into the control block's `funcs` field.
#![deny(clippy::arithmetic_side_effects)]

use super::FUNCS_SIZE;

/// Longest function name or glob accepted from a user or a domain definition.
pub const MAX_PATTERN: usize = 128;

/// A function name or glob as the guest's ftrace accepts it, from a strict
/// character set: letters, digits, `_` and `.` (`foo.isra.0`), and the glob
/// characters `*?[]`. Anything else (spaces, `-`, `=`, `/`) never reaches a
/// command line or the guest.
pub fn check_pattern(p: &str) -> std::result::Result<(), String> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?' | '[' | ']');
    if p.is_empty() || p.len() > MAX_PATTERN {
        return Err(format!(
            "a function name must be 1 to {MAX_PATTERN} characters long"
        ));
    }
    match p.chars().find(|&c| !ok_char(c)) {
        Some(c) => Err(format!(
            "'{}' is not a function name or glob (character {:?}); names use letters, digits, '_' and '.', globs also '*?[]'",
            crate::base::escape::escape(p),
            c
        )),
        None => Ok(()),
    }
}

/// The guest's probe (docs/abi.md §3.1): every online CPU calls it while a
/// session captures, and the host adds it to every filter it sends, so that
/// each ring's probe records show that CPU's tracer works.
pub const PROBE: &str = "xftrace_probe";

/// `patterns` with the probe added (once), as an `on` command sends them.
pub fn with_probe(patterns: &[String]) -> Vec<String> {
    let mut v = patterns.to_vec();
    if !v.iter().any(|p| p == PROBE) {
        v.push(PROBE.to_string());
    }
    v
}

/// A filter as the host sent it, without the probe it added.
pub fn without_probe(patterns: Vec<String>) -> Vec<String> {
    patterns.into_iter().filter(|p| p != PROBE).collect()
}

/// The `funcs` field for `patterns`: space-separated, zero-padded to the
/// field's size; and the length used. Err if it does not fit.
pub fn encode(patterns: &[String]) -> Result<(Vec<u8>, u64), String> {
    let list = patterns.join(" ");
    if list.len() >= FUNCS_SIZE {
        return Err(format!(
            "the function list is {} bytes; the guest accepts at most {}",
            list.len(),
            FUNCS_SIZE.saturating_sub(1)
        ));
    }
    let len = list.len() as u64;
    let mut bytes = list.into_bytes();
    bytes.resize(FUNCS_SIZE, 0);
    Ok((bytes, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_added_once_and_taken_off_again() {
        let user = vec!["sys_read".to_string()];
        let sent = with_probe(&user);
        assert_eq!(sent, ["sys_read", PROBE]);
        assert_eq!(with_probe(&sent), sent);
        assert_eq!(without_probe(sent), user);
    }

    #[test]
    fn patterns_are_names_or_globs_only() {
        for ok in [
            "sys_read",
            "__x64_sys_*",
            "vfs_rea?",
            "do_sys_open[at]*",
            "foo.isra.0",
        ] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sys_read --connect=qemu+ext:///system?command=/tmp/x",
            "--state-dir=/x",
            "a b",
            "-x",
            "do_[a-z]",
            "x\n",
            "!sys_read",
            &"a".repeat(129),
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_fit_the_field_or_are_refused() {
        let (b, n) = encode(&["__x64_sys_read".into(), "vfs_*".into()]).unwrap();
        assert_eq!((b.len(), n), (FUNCS_SIZE, 20));
        assert_eq!(&b[..20], b"__x64_sys_read vfs_*");
        assert!(encode(&["a".repeat(1024)]).is_err());
    }
}
