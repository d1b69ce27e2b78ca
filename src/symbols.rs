//! The trusted build's System.map: symbol lookup and the names users type.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Base of the x86_64 kernel text mapping (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

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
    by_name: HashMap<String, u64>,
    /// Every distinct symbol address, sorted: where the next object starts.
    starts: Vec<u64>,
    /// `[_text, _end)` as linked.
    image: (u64, u64),
}

impl SystemMap {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read System.map {}", path.display()), e))?;
        Self::parse(&text).map_err(|m| Error::Input(format!("{}: {m}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut syms = Vec::new();
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(format!("line {} is not 'ADDRESS TYPE NAME'", n + 1));
            };
            let addr = u64::from_str_radix(addr, 16)
                .map_err(|_| format!("line {}: bad address {addr:?}", n + 1))?;
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
        syms.retain(|s| s.is_text());
        syms.sort_by_key(|s| s.addr);
        Ok(SystemMap {
            text: syms,
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
        self.starts.get(i).map(|&next| next - a)
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
        Some((s.name.as_str(), addr - s.addr))
    }

    /// Map what a user types (`sys_read`, `read`, `__x64_sys_read`,
    /// `vfs_read`) to the function symbol the kernel traces.
    pub fn resolve_function(&self, name: &str) -> Result<String> {
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
                let d = edit_distance(sys, bare);
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

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81200000 T __x64_sys_read
ffffffff81200040 T __x64_sys_readv
ffffffff81200100 T __x64_sys_openat
ffffffff81200200 t do_sys_openat2
ffffffff81200300 T getname
ffffffff81200400 T vfs_read
ffffffff82000000 D linux_banner
ffffffff82001000 d xftrace_control
ffffffff82400000 b xftrace_rings
ffffffff83000000 B _end
";

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
