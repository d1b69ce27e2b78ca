//! The build's BTF (`.BTF` of its vmlinux, CONFIG_DEBUG_INFO_BTF): the
//! layout of kernel structures as this very build compiled them, so that
//! the host reads guest structures at their real offsets instead of
//! guessing. Only what xftrace needs: struct and union members by name.
//!
//! The format is include/uapi/linux/btf.h: a header, then type records of
//! twelve bytes plus kind-specific data, then a string table. Input from
//! a trusted build, but parsed with bounds checks all the same.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;

use crate::abi::le::{u16_at, u32_at};

const MAGIC: u16 = 0xeb9f;
/// Types a BTF may hold (a cloud kernel has about 150 000).
const MAX_TYPES: usize = 1 << 21;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// Size (structs, unions) or referenced type (modifiers, typedefs).
    size_or_type: u32,
    /// Struct and union members: (name offset, type, bit offset).
    members: Vec<(u32, u32, u32)>,
}

/// Parsed BTF.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union types by name (the first of a name).
    by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn parse(b: &[u8]) -> Result<Btf, String> {
        if u16_at(b, 0) != Some(MAGIC) {
            return Err("not BTF (bad magic)".into());
        }
        let word = |at: usize| u32_at(b, at).ok_or("truncated BTF header");
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let range = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            b.get(start..start.checked_add(len)?)
        };
        let tbytes = range(type_off, type_len).ok_or("BTF types beyond its end")?;
        let strings = range(str_off, str_len)
            .ok_or("BTF strings beyond its end")?
            .to_vec();
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0usize;
        while at < tbytes.len() {
            if types.len() >= MAX_TYPES {
                return Err("too many BTF types".into());
            }
            let w = |o: usize| at.checked_add(o).and_then(|p| u32_at(tbytes, p));
            let (Some(name_off), Some(info), Some(st)) = (w(0), w(4), w(8)) else {
                return Err("a truncated BTF type".into());
            };
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut t = Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type: st,
                members: Vec::new(),
            };
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = i.checked_mul(12).and_then(|o| o.checked_add(12));
                        let mw = |o: usize| m.and_then(|m| w(m.checked_add(o)?));
                        let (Some(n), Some(ty), Some(off)) = (mw(0), mw(4), mw(8)) else {
                            return Err("a truncated BTF struct".into());
                        };
                        t.members.push((n, ty, off));
                    }
                    vlen.checked_mul(12).ok_or("BTF overflow")?
                }
                KIND_ENUM => {
                    // Enumerators: (name offset, value, 0).
                    for i in 0..vlen {
                        let e = i.checked_mul(8).and_then(|o| o.checked_add(12));
                        let ew = |o: usize| e.and_then(|e| w(e.checked_add(o)?));
                        let (Some(n), Some(v)) = (ew(0), ew(4)) else {
                            return Err("a truncated BTF enum".into());
                        };
                        t.members.push((n, v, 0));
                    }
                    vlen.checked_mul(8).ok_or("BTF overflow")?
                }
                KIND_FUNC_PROTO => vlen.checked_mul(8).ok_or("BTF overflow")?,
                KIND_DATASEC | KIND_ENUM64 => vlen.checked_mul(12).ok_or("BTF overflow")?,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                k => return Err(format!("unknown BTF kind {k}")),
            };
            at = at
                .checked_add(12)
                .and_then(|a| a.checked_add(extra))
                .ok_or("BTF overflow")?;
            types.push(t);
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) {
                if let Some(n) = btf.string(t.name_off) {
                    if !n.is_empty() && !btf.by_name.contains_key(n) {
                        btf.by_name.insert(n.to_string(), id as u32);
                    }
                }
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// The value of enumerator `name` (a C enumerator's name is unique in
    /// the kernel), read as the signed 32-bit value C gives it.
    pub fn enumerator(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM)
            .flat_map(|t| &t.members)
            .find(|(n, _, _)| self.string(*n) == Some(name))
            .map(|&(_, v, _)| i64::from(v as i32))
    }

    /// Through typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `path` (members, outer first) in struct or union
    /// `name`. Members of anonymous structs and unions are found through
    /// them, as C finds them.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Option<u64> {
        let mut t = self.types.get(*self.by_name.get(name)? as usize)?;
        let mut total = 0u64;
        for want in path {
            let (bits, ty) = self.member(t, want, 0)?;
            total = total.checked_add(bits / 8)?;
            t = self.resolve(ty)?;
        }
        Some(total)
    }

    /// The named members of struct or union `name` with their byte offsets.
    pub fn members(&self, name: &str) -> Vec<(String, u64)> {
        let Some(t) = self
            .by_name
            .get(name)
            .and_then(|&id| self.types.get(id as usize))
        else {
            return Vec::new();
        };
        t.members
            .iter()
            .filter_map(|&(n, _, off)| {
                let bits = u64::from(if t.kind_flag { off & 0xff_ffff } else { off });
                let name = self.string(n).filter(|n| !n.is_empty())?;
                Some((name.to_string(), bits / 8))
            })
            .collect()
    }

    /// Size in bytes of struct or union `name`.
    pub fn size_of(&self, name: &str) -> Option<u64> {
        let t = self.types.get(*self.by_name.get(name)? as usize)?;
        Some(u64::from(t.size_or_type))
    }

    /// (bit offset, type) of member `want` of `t`, searching anonymous
    /// members too.
    fn member(&self, t: &Type, want: &str, depth: u32) -> Option<(u64, u32)> {
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for &(n, ty, off) in &t.members {
            let bits = u64::from(if t.kind_flag { off & 0xff_ffff } else { off });
            match self.string(n) {
                Some(s) if s == want => return Some((bits, ty)),
                Some("") => {
                    if let Some((b, ty)) = self
                        .resolve(ty)
                        .and_then(|inner| self.member(inner, want, depth.saturating_add(1)))
                    {
                        return Some((bits.checked_add(b)?, ty));
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Where a 6.1 `struct module` keeps what the host needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleLayout {
    /// `list` (a `struct list_head`, linked from `modules`).
    pub list: u64,
    /// `name[]`.
    pub name: u64,
    /// `core_layout.base` (pointer) and `core_layout.text_size` (u32).
    pub text_base: u64,
    pub text_size: u64,
    /// `core_layout.size` (u32): code, read-only data and data.
    pub core_size: u64,
    /// `percpu` (a per-CPU pointer) and `percpu_size` (u32), where the
    /// build has them (CONFIG_SMP).
    pub percpu: Option<(u64, u64)>,
}

impl ModuleLayout {
    pub fn from_btf(btf: &Btf) -> Option<ModuleLayout> {
        Some(ModuleLayout {
            list: btf.offset_of("module", &["list"])?,
            name: btf.offset_of("module", &["name"])?,
            text_base: btf.offset_of("module", &["core_layout", "base"])?,
            text_size: btf.offset_of("module", &["core_layout", "text_size"])?,
            core_size: btf.offset_of("module", &["core_layout", "size"])?,
            percpu: btf
                .offset_of("module", &["percpu"])
                .zip(btf.offset_of("module", &["percpu_size"])),
        })
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    /// `enum lockdown_reason { LOCKDOWN_NONE, LOCKDOWN_INTEGRITY_MAX = 21,
    /// LOCKDOWN_X = -1 }`: enumerators by name, signed as C has them.
    #[test]
    fn enumerators_are_found_by_name() {
        let strings = b"\0lockdown_reason\0LOCKDOWN_NONE\0LOCKDOWN_INTEGRITY_MAX\0LOCKDOWN_X\0";
        let mut types = Vec::new();
        for v in [1u32, (KIND_ENUM << 24) | 3, 4, 17, 0, 31, 21, 54, u32::MAX] {
            types.extend_from_slice(&v.to_le_bytes());
        }
        let b = crate::testkit::synthetic::btf_blob(&types, strings);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.enumerator("LOCKDOWN_NONE"), Some(0));
        assert_eq!(btf.enumerator("LOCKDOWN_INTEGRITY_MAX"), Some(21));
        assert_eq!(btf.enumerator("LOCKDOWN_X"), Some(-1));
        assert_eq!(btf.enumerator("lockdown_reason"), None);
        // A BTF cut short is refused.
        assert!(Btf::parse(&b[..b.len() - strings.len() - 4]).is_err());
    }

    /// A BTF with `struct module_layout { void *base; unsigned size;
    /// unsigned text_size; }` and `struct module { int state; struct
    /// list_head list; char name[56]; union { int x; struct module_layout
    /// core_layout; }; }` (an anonymous union, as the kernel has them).
    pub(crate) fn sample() -> Vec<u8> {
        let mut strings = b"\0int\0base\0size\0text_size\0module_layout\0list\0name\0module\0state\0core_layout\0x\0".to_vec();
        let s = |w: &str| {
            let hay = String::from_utf8_lossy(&strings).into_owned();
            hay.find(&format!("\0{w}\0")).unwrap() as u32 + 1
        };
        let (int, base, size, tsize, ml, list, name, module, state, core, x) = (
            s("int"),
            s("base"),
            s("size"),
            s("text_size"),
            s("module_layout"),
            s("list"),
            s("name"),
            s("module"),
            s("state"),
            s("core_layout"),
            s("x"),
        );
        strings.push(0);
        let mut t = Vec::new();
        let ty = |t: &mut Vec<u8>, name: u32, kind: u32, vlen: u32, st: u32| {
            t.extend(name.to_le_bytes());
            t.extend(((kind << 24) | vlen).to_le_bytes());
            t.extend(st.to_le_bytes());
        };
        let mem = |t: &mut Vec<u8>, name: u32, ty: u32, bits: u32| {
            t.extend(name.to_le_bytes());
            t.extend(ty.to_le_bytes());
            t.extend(bits.to_le_bytes());
        };
        // 1: int
        ty(&mut t, int, KIND_INT, 0, 4);
        t.extend(32u32.to_le_bytes());
        // 2: void * (pointer to void: type 0)
        ty(&mut t, 0, KIND_PTR, 0, 0);
        // 3: struct module_layout
        ty(&mut t, ml, KIND_STRUCT, 3, 16);
        mem(&mut t, base, 2, 0);
        mem(&mut t, size, 1, 64);
        mem(&mut t, tsize, 1, 96);
        // 4: union { int x; struct module_layout core_layout; }
        ty(&mut t, 0, KIND_UNION, 2, 16);
        mem(&mut t, x, 1, 0);
        mem(&mut t, core, 3, 0);
        // 5: struct module
        ty(&mut t, module, KIND_STRUCT, 4, 96);
        mem(&mut t, state, 1, 0);
        mem(&mut t, list, 2, 64);
        mem(&mut t, name, 1, 192);
        mem(&mut t, 0, 4, 640);
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend([1u8, 0]);
        b.extend(24u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((t.len() as u32).to_le_bytes());
        b.extend((t.len() as u32).to_le_bytes());
        b.extend((strings.len() as u32).to_le_bytes());
        b.extend(t);
        b.extend(strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("module", &["name"]), Some(24));
        assert_eq!(
            btf.offset_of("module", &["core_layout", "text_size"]),
            Some(92)
        );
        assert_eq!(
            ModuleLayout::from_btf(&btf),
            Some(ModuleLayout {
                list: 8,
                name: 24,
                text_base: 80,
                text_size: 92,
                core_size: 88,
                percpu: None
            })
        );
        assert_eq!(btf.offset_of("module", &["nothing"]), None);
        assert_eq!(btf.offset_of("task_struct", &["pid"]), None);
    }

    #[test]
    fn sizes_and_named_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.size_of("module_layout"), Some(16));
        assert_eq!(btf.size_of("module"), Some(96));
        assert_eq!(btf.size_of("nothing"), None);
        assert_eq!(
            btf.members("module_layout"),
            vec![
                ("base".to_string(), 0),
                ("size".to_string(), 8),
                ("text_size".to_string(), 12)
            ]
        );
        // The anonymous union is no named member.
        assert_eq!(btf.members("module").len(), 3);
        assert!(btf.members("nothing").is_empty());
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut b = sample();
        b[12] = 0xff; // type_len beyond the end
        assert!(Btf::parse(&b).is_err());
    }
}
