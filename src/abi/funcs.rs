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
