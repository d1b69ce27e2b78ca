//! The trusted build's System.map: symbol lookup and the names users type.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::path::Path;

use crate::base::error::{Error, Result};
use crate::guest::addr::{LinkAddr, Slide, VirtAddr};

/// Base of the x86_64 kernel text mapping (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// A System.map with every symbol of Debian's largest configuration is
/// under 10 MiB.
pub const MAX_SYSTEM_MAP: u64 = 64 << 20;
fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// ftrace-style glob match: `*`, `?` and `[...]` classes with ranges.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi = pi.saturating_add(1);
                continue;
            }
            Some('?') => Some(1),
            Some('[') => class_len(&p[pi..]).filter(|_| class_matches(&p[pi..], n[ni])),
            Some(&c) if c == n[ni] => Some(1),
            _ => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi = pi.saturating_add(len);
                ni = ni.saturating_add(1);
            }
            (None, Some((sp, sn))) => {
                pi = sp.saturating_add(1);
                ni = sn.saturating_add(1);
                star = Some((sp, ni));
            }
            (None, None) => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// Length of the `[...]` class at the start of `p`, if it is closed.
fn class_len(p: &[char]) -> Option<usize> {
    p.iter()
        .skip(1)
        .position(|&c| c == ']')
        .filter(|&i| i > 0)
        .map(|i| i.saturating_add(2))
}

fn class_matches(p: &[char], c: char) -> bool {
    let Some(len) = class_len(p) else {
        return false;
    };
    let set = &p[1..len.saturating_sub(1)];
    let mut i = 0usize;
    while let Some(&a) = set.get(i) {
        if set.get(i.saturating_add(1)) == Some(&'-') {
            if let Some(&b) = set.get(i.saturating_add(2)) {
                if a <= c && c <= b {
                    return true;
                }
                i = i.saturating_add(3);
                continue;
            }
        }
        if a == c {
            return true;
        }
        i = i.saturating_add(1);
    }
    false
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub kind: char,
    pub name: String,
}

impl Symbol {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 't' | 'T' | 'w' | 'W')
    }
}

/// A parsed System.map, addresses as linked (before the KASLR slide).
pub struct SystemMap {
    /// Text symbols sorted by address, for symbolization.
    text: Vec<Symbol>,
    /// Data symbols in the image sorted by address: which object a changed
    /// byte of read-only data belongs to.
    objects: Vec<(u64, String)>,
    by_name: HashMap<String, u64>,
    /// Every distinct symbol address, sorted: where the next object starts.
    starts: Vec<u64>,
    /// `[_text, _end)` as linked.
    image: (u64, u64),
}

impl SystemMap {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::host::files::read_text_bounded(path, MAX_SYSTEM_MAP, "System.map")?;
        Self::parse(&text).map_err(|m| Error::Input(format!("{}: {m}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut syms = Vec::new();
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let mut it = line.split_whitespace();
            let line_no = n.saturating_add(1);
            let (Some(addr), Some(kind), Some(name), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(format!("line {line_no} is not 'ADDRESS TYPE NAME'"));
            };
            let addr = u64::from_str_radix(addr, 16).map_err(|_| {
                format!(
                    "line {line_no}: bad address {:?}",
                    crate::base::escape::escape(addr)
                )
            })?;
            let kind = kind.chars().next().unwrap_or('?');
            by_name.entry(name.to_string()).or_insert(addr);
            syms.push(Symbol {
                addr,
                kind,
                name: name.to_string(),
            });
        }
        let need = |n: &str| {
            by_name
                .get(n)
                .copied()
                .ok_or_else(|| format!("no {n} symbol: not an x86_64 kernel System.map (Debian's linux-image ships a placeholder; use the one from guest-kernel/build.sh)"))
        };
        let image = (need("_text")?, need("_end")?);
        if image.0 < START_KERNEL_MAP || image.1 <= image.0 {
            return Err("_text/_end are not in the x86_64 kernel mapping".into());
        }
        let mut starts: Vec<u64> = syms.iter().map(|s| s.addr).collect();
        starts.sort_unstable();
        starts.dedup();
        let mut objects: Vec<(u64, String)> = syms
            .iter()
            .filter(|s| !s.is_text() && s.addr >= image.0 && s.addr < image.1)
            .map(|s| (s.addr, s.name.clone()))
            .collect();
        objects.sort();
        syms.retain(|s| s.is_text());
        syms.sort_by_key(|s| s.addr);
        Ok(SystemMap {
            text: syms,
            objects,
            by_name,
            starts,
            image,
        })
    }

    /// Link-time address of `name`.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    /// Bytes from `name` to the next symbol: an upper bound of its size.
    pub fn extent(&self, name: &str) -> Option<u64> {
        let a = self.addr(name)?;
        let i = self.starts.partition_point(|&s| s <= a);
        self.starts.get(i).and_then(|&next| next.checked_sub(a))
    }

    /// Every symbol (of any kind) linked in `[start, end)` with the bytes
    /// to the next symbol, sorted: the objects of a section outside the
    /// image, such as the per-CPU template (linked at 0).
    pub fn symbols_between(&self, start: u64, end: u64) -> Vec<(u64, u64, &str)> {
        let mut v: Vec<(u64, u64, &str)> = self
            .by_name
            .iter()
            .filter(|(_, &a)| a >= start && a < end)
            .map(|(n, &a)| (a, self.extent_at(a).unwrap_or(8), n.as_str()))
            .collect();
        v.sort_unstable();
        v
    }

    /// Bytes from link-time `addr` to the next symbol.
    pub fn extent_at(&self, addr: u64) -> Option<u64> {
        let i = self.starts.partition_point(|&s| s <= addr);
        self.starts.get(i).and_then(|&next| next.checked_sub(addr))
    }

    /// Data objects of the image whose name starts with `prefix`: name and
    /// link-time address.
    pub fn objects_with_prefix<'s>(
        &'s self,
        prefix: &'s str,
    ) -> impl Iterator<Item = (&'s str, u64)> + 's {
        self.objects
            .iter()
            .filter(move |(_, n)| n.starts_with(prefix))
            .map(|(a, n)| (n.as_str(), *a))
    }

    /// Text symbols: name and link-time address.
    pub fn functions(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.text.iter().map(|s| (s.name.as_str(), s.addr))
    }

    /// Where text symbols start (link time).
    pub fn function_starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.text.iter().map(|s| s.addr)
    }

    /// True if link-time `addr` lies in the kernel image.
    pub fn in_image(&self, addr: u64) -> bool {
        addr >= self.image.0 && addr < self.image.1
    }

    /// Link-time `[_text, _end)`.
    pub fn image(&self) -> (u64, u64) {
        self.image
    }

    /// The text symbol that starts exactly at link-time `addr`.
    pub fn function_at(&self, addr: u64) -> Option<&str> {
        let i = self.text.partition_point(|s| s.addr < addr);
        self.text
            .get(i)
            .filter(|s| s.addr == addr)
            .map(|s| s.name.as_str())
    }

    /// The text symbol containing link-time `addr`, with the offset into it.
    pub fn containing(&self, addr: u64) -> Option<(&str, u64)> {
        if addr < self.image.0 || addr >= self.image.1 {
            return None;
        }
        let i = self.text.partition_point(|s| s.addr <= addr);
        let s = self.text.get(i.checked_sub(1)?)?;
        Some((s.name.as_str(), addr.checked_sub(s.addr)?))
    }

    /// The data symbol containing link-time `addr` (the last one starting
    /// at or before it), with the offset into it.
    pub fn object_containing(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.objects.partition_point(|(a, _)| *a <= addr);
        let (a, n) = self.objects.get(i.checked_sub(1)?)?;
        Some((n.as_str(), addr.checked_sub(*a)?))
    }

    /// Map what a user types (`sys_read`, `read`, `__x64_sys_read`,
    /// `vfs_read`, or a glob such as `__x64_sys_*`) to the function symbol
    /// or glob the guest traces.
    pub fn resolve_function(&self, name: &str) -> Result<String> {
        crate::abi::funcs::check_pattern(name).map_err(Error::Input)?;
        if is_glob(name) {
            let with_prefix = format!("__x64_{name}");
            let candidates = [name, with_prefix.as_str()];
            return candidates
                .into_iter()
                .find(|g| self.text.iter().any(|s| glob_match(g, &s.name)))
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "'{name}' matches no function in this guest kernel; check it against the guest's System.map"
                    ))
                });
        }
        let is_fn = |n: &str| self.text.iter().any(|s| s.name == n);
        let bare = name.strip_prefix("sys_").unwrap_or(name);
        let candidates = [
            format!("__x64_sys_{bare}"),
            name.to_string(),
            format!("__x64_{name}"),
        ];
        if let Some(c) = candidates
            .iter()
            .find(|c| self.by_name.contains_key(*c) && is_fn(c))
        {
            return Ok(c.clone());
        }
        // Near misses among the syscalls: a typo or a substring.
        let mut near: Vec<(usize, &str)> = self
            .text
            .iter()
            .map(|s| s.name.as_str())
            .filter_map(|n| {
                let sys = n.strip_prefix("__x64_sys_")?;
                let d = strsim::levenshtein(sys, bare);
                (d <= (bare.len() / 3).max(1) || (bare.len() >= 3 && sys.contains(bare)))
                    .then_some((d, n))
            })
            .collect();
        near.sort();
        near.dedup();
        let near: Vec<&str> = near.into_iter().take(4).map(|(_, n)| n).collect();
        let hint = if near.is_empty() {
            "check the name against the guest's System.map".to_string()
        } else {
            format!("did you mean {}?", near.join(", "))
        };
        Err(Error::Input(format!(
            "unknown function '{name}' in this guest kernel; {hint}"
        )))
    }
}

/// Runtime addresses of a guest kernel named with its build's System.map:
/// the one place that applies the KASLR slide.
#[derive(Clone, Copy)]
pub struct Symbolizer<'a> {
    pub map: &'a SystemMap,
    /// Runtime minus link-time address.
    pub slide: Slide,
}

impl<'a> Symbolizer<'a> {
    pub fn new(map: &'a SystemMap, slide: Slide) -> Self {
        Symbolizer { map, slide }
    }

    /// Link-time address of runtime `addr`.
    pub fn link(&self, addr: u64) -> u64 {
        self.slide.link(VirtAddr(addr)).0
    }

    /// Runtime address of link-time `addr`.
    pub fn runtime(&self, link: u64) -> u64 {
        self.slide.runtime(LinkAddr(link)).0
    }

    /// Runtime address of symbol `name`.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.map.addr(name).map(|a| self.runtime(a))
    }

    /// True if runtime `addr` lies in the kernel image.
    pub fn in_image(&self, addr: u64) -> bool {
        self.map.in_image(self.link(addr))
    }

    /// The function containing runtime `addr`, with the offset into it.
    pub fn containing(&self, addr: u64) -> Option<(&'a str, u64)> {
        self.map.containing(self.link(addr))
    }

    /// The function containing runtime `addr`, or the address in hex.
    pub fn function(&self, addr: u64) -> String {
        match self.containing(addr) {
            Some((s, _)) => s.to_string(),
            None => format!("{addr:#x}"),
        }
    }

    /// `symbol` or `symbol+0xoff` for runtime `addr` in the image.
    pub fn with_offset(&self, addr: u64) -> Option<String> {
        self.containing(addr).map(|(s, off)| match off {
            0 => s.to_string(),
            off => format!("{s}+{off:#x}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn globs_match_like_ftrace() {
        assert!(glob_match("__x64_sys_*", "__x64_sys_read"));
        assert!(glob_match("*read", "vfs_read"));
        assert!(glob_match("vfs_rea?", "vfs_read"));
        assert!(glob_match("do_[r-t]*", "do_sys_openat2"));
        assert!(glob_match("do_[xs]ys*", "do_sys_openat2"));
        assert!(!glob_match("do_[a-d]*", "do_sys_openat2"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
        assert!(!glob_match("[", "["));
        let m = SystemMap::parse(MAP).unwrap();
        assert_eq!(m.resolve_function("sys_read*").unwrap(), "__x64_sys_read*");
        assert_eq!(m.resolve_function("__x64_sys_*").unwrap(), "__x64_sys_*");
        assert!(m.resolve_function("zz*").is_err());
    }

    pub(crate) use crate::testkit::synthetic::UNIT_MAP as MAP;

    #[test]
    fn resolves_what_users_type() {
        let m = SystemMap::parse(MAP).unwrap();
        for n in ["sys_read", "read", "__x64_sys_read"] {
            assert_eq!(m.resolve_function(n).unwrap(), "__x64_sys_read");
        }
        assert_eq!(m.resolve_function("vfs_read").unwrap(), "vfs_read");
        assert_eq!(m.resolve_function("openat").unwrap(), "__x64_sys_openat");
        let e = m.resolve_function("sys_reed").unwrap_err().to_string();
        assert!(e.contains("unknown function 'sys_reed'"), "{e}");
        // Data symbols are not functions.
        assert!(m.resolve_function("linux_banner").is_err());
    }

    #[test]
    fn suggests_near_names() {
        let m = SystemMap::parse(MAP).unwrap();
        let e = m.resolve_function("sys_rea").unwrap_err().to_string();
        assert!(e.contains("did you mean __x64_sys_read"), "{e}");
    }

    #[test]
    fn symbolizes() {
        let m = SystemMap::parse(MAP).unwrap();
        assert_eq!(m.function_at(0xffffffff81200200), Some("do_sys_openat2"));
        assert_eq!(m.function_at(0xffffffff81200201), None);
        assert_eq!(
            m.containing(0xffffffff81200210),
            Some(("do_sys_openat2", 0x10))
        );
        assert_eq!(m.containing(0xffffffffc0000000), None);
        assert_eq!(m.extent("__x64_sys_read"), Some(0x40));
        assert_eq!(m.extent("_end"), None);
    }

    #[test]
    fn rejects_placeholder_maps() {
        assert!(SystemMap::parse(
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
        )
        .is_err());
        assert!(SystemMap::parse("not a map").is_err());
    }
}
