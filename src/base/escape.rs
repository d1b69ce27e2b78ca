//! Strings from the guest (module names, the banner) or from domain
//! definitions (domain names) made safe for a terminal, a log line or a
//! text file: nothing they contain can move the cursor, erase a line, start
//! a new line or reorder text.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Printable ASCII passes; a backslash becomes `\\`; every other character
/// becomes `\xNN` (ASCII controls) or `\u{N}` (anything non-ASCII, such as
/// bidirectional overrides).
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().saturating_add(8));
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// Bytes from guest memory (a C string, say) as escaped text; invalid UTF-8
/// shows as `\xNN` too.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(escape("rk_idt"), Cow::Borrowed("rk_idt")));
        assert_eq!(
            escape("Linux version 6.1.192 (x@y) #1"),
            "Linux version 6.1.192 (x@y) #1"
        );
    }

    #[test]
    fn controls_and_tricks_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\nb".replace("\\n", "\\x0a"));
        assert_eq!(escape("\x1b[2K\rfake"), "\\x1b[2K\\x0dfake");
        assert_eq!(escape("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes(b"mod\xff\x07"), "mod\\xff\\x07");
    }
}
