//! The guest's loaded modules, three ways: the `modules` list (what
//! `lsmod` shows), `mod_tree` (the latched tree of module addresses the
//! kernel keeps for exceptions, kallsyms and stack traces) and
//! `module_kset` (`/sys/module`). A rootkit that hides itself leaves them
//! disagreeing. Layouts come from the build's BTF where it has one.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use crate::base::escape::escape_bytes;
use crate::kernel::btf::ModuleLayout;
use crate::kernel::guest::KernelView;
use crate::kernel::walk::End;

/// Modules read from the guest's list, at most.
const MAX_MODULES: usize = 4096;
/// `MODULE_NAME_LEN`: `struct module`'s `name[]`.
const MODULE_NAME_LEN: usize = 56;
/// Tree nodes and sysfs kobjects followed at most (a module has one or two
/// tree nodes: core and init).
pub const MAX_NODES: usize = 8192;

/// A loaded module as the guest's module list has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Address of its `struct module`.
    pub addr: u64,
    /// Its name, escaped (it comes from guest memory).
    pub name: String,
    /// `[start, end)` of its core code, where the layout is known.
    pub text: Option<(u64, u64)>,
    /// `[start, end)` of its core memory (code, read-only data, data),
    /// where the layout is known.
    pub memory: Option<(u64, u64)>,
}

impl KernelView<'_> {
    /// `[start, end)` of the core code of the `struct module` at `module`,
    /// where the layout is known.
    pub fn module_text(&self, module: u64) -> Option<(u64, u64)> {
        let l = self.module_layout?;
        let base = self.read_word(module.checked_add(l.text_base)?)?;
        let size = self.read_u32(module.checked_add(l.text_size)?)?;
        Some((base, base.checked_add(u64::from(size))?))
    }

    /// `[start, end)` of the per-CPU variables of the `struct module` at
    /// `module` (per-CPU offsets, as its code and relocations hold them),
    /// where the layout is known and it has any.
    pub fn module_percpu(&self, module: u64) -> Option<(u64, u64)> {
        let (ptr, size) = self.module_layout?.percpu?;
        let base = self.read_word(module.checked_add(ptr)?)?;
        let size = self.read_u32(module.checked_add(size)?)?;
        (size > 0).then_some((base, base.checked_add(u64::from(size))?))
    }

    /// `[start, end)` of the core memory (code, read-only data, data) of
    /// the `struct module` at `module`, where the layout is known.
    pub fn module_memory(&self, module: u64) -> Option<(u64, u64)> {
        let l = self.module_layout?;
        let base = self.read_word(module.checked_add(l.text_base)?)?;
        let size = self.read_u32(module.checked_add(l.core_size)?)?;
        Some((base, base.checked_add(u64::from(size))?))
    }

    /// The guest's module list: `modules` heads a list of `struct module`.
    /// Offsets come from the build's BTF; without it, 6.1's start of the
    /// struct (`{ enum module_state state; struct list_head list; char
    /// name[56]; ... }` whatever the config) and no code ranges.
    pub fn modules(&self) -> &[Module] {
        self.modules.get_or_init(|| self.read_modules())
    }

    /// The module list as it is now (not cached).
    pub fn read_modules(&self) -> Vec<Module> {
        self.module_list().0
    }

    /// The module list as it is now, and why its walk stopped (a list
    /// that loops, or an entry that cannot be read, is not the list).
    pub fn module_list(&self) -> (Vec<Module>, End) {
        let l = self.module_layout.unwrap_or(ModuleLayout {
            list: 8,
            name: 24,
            text_base: 0,
            text_size: 0,
            core_size: 0,
            percpu: None,
        });
        let Some(head) = self.sym.addr("modules") else {
            return (Vec::new(), End::Complete);
        };
        let mut out = Vec::new();
        let name_at = self.module_name_offset();
        let mut walk = self.list(head, MAX_MODULES);
        for p in walk.by_ref() {
            let Some((module, name)) = p
                .checked_sub(l.list)
                .and_then(|m| Some((m, self.module_name_at(m, name_at)?)))
            else {
                return (out, End::Unreadable(p));
            };
            out.push(Module {
                addr: module,
                name,
                text: self.module_text(module),
                memory: self.module_memory(module),
            });
        }
        (out, walk.end())
    }

    /// The escaped name of the `struct module` at `module`; None if it
    /// cannot be read.
    pub fn module_name(&self, module: u64) -> Option<String> {
        self.module_name_at(module, self.module_name_offset())
    }

    /// Where `struct module` keeps `name[]`.
    fn module_name_offset(&self) -> u64 {
        self.field("module", &["name"])
            .or(self.module_layout.map(|l| l.name))
            .unwrap_or(24)
    }

    /// [`Self::module_name`] with the offset of `name[]` looked up once by
    /// the caller (the list walk reads thousands).
    fn module_name_at(&self, module: u64, at: u64) -> Option<String> {
        let mut name = [0u8; MODULE_NAME_LEN];
        self.read(module.checked_add(at)?, &mut name)?;
        let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(escape_bytes(&name[..n]))
    }

    /// The module whose code holds `addr`: exactly, where the layout is
    /// known; else the one whose `struct module` (in its own data, after
    /// its code) is the nearest above `addr`, an attribution by layout,
    /// not proof.
    pub fn module_of(&self, addr: u64) -> Option<&str> {
        let mods = self.modules();
        if self.module_layout.is_some() {
            return self.module_at(addr).map(|m| m.name.as_str());
        }
        mods.iter()
            .filter(|m| m.addr.checked_sub(addr).is_some_and(|d| d < 8 << 20))
            .min_by_key(|m| m.addr)
            .map(|m| m.name.as_str())
    }

    /// The listed module whose core memory (code or data) holds `addr`,
    /// where the layout is known.
    pub fn module_memory_of(&self, addr: u64) -> Option<&str> {
        self.module_memory_at(addr).map(|m| m.name.as_str())
    }

    /// [`Self::module_memory_of`], the module itself.
    pub fn module_memory_at(&self, addr: u64) -> Option<&Module> {
        self.modules()
            .iter()
            .find(|m| m.memory.is_some_and(|(s, e)| s <= addr && addr < e))
    }

    /// Is the `struct module` at `module` the xftrace-dkms module whose
    /// control block is the kernel's tracer ([`crate::kernel::dkms`])?
    pub fn is_tracer_module(&self, module: u64) -> bool {
        self.kernel
            .tracer
            .as_ref()
            .and_then(|c| c.module)
            .is_some_and(|t| t.addr == module)
    }

    /// Is `addr` code of the kernel's build: in its image, or in the code
    /// of a loaded module that is one the build ships (by content where the
    /// build's `.ko` files are known, [`Self::is_build_module`])?
    pub fn is_build_code(&self, addr: u64) -> bool {
        if self.sym.in_image(addr) {
            return true;
        }
        self.module_layout.is_some()
            && self
                .module_at(addr)
                .is_some_and(|m| self.is_build_module(m))
    }

    /// The listed module whose core code holds `addr`, where the layout is
    /// known.
    pub fn module_at(&self, addr: u64) -> Option<&Module> {
        self.modules()
            .iter()
            .find(|m| m.text.is_some_and(|(s, e)| s <= addr && addr < e))
    }

    /// The `struct module`s of the nodes of `mod_tree`'s first tree, and
    /// how the walk ended; None without `mod_tree` (no
    /// MODULES_TREE_LOOKUP) or without the BTF to walk it.
    pub fn tree_modules(&self) -> Option<(BTreeSet<u64>, End)> {
        let root = self.sym("mod_tree")?;
        let (tree, mtn_mod, mtn_node) = self.module_tree_layout()?;
        let mut mods = BTreeSet::new();
        let mut walk = self.rb_tree(root.checked_add(tree)?, MAX_NODES);
        for n in walk.by_ref() {
            let mtn = n.wrapping_sub(mtn_node);
            if let Some(m) = mtn.checked_add(mtn_mod).and_then(|a| self.read_word(a)) {
                mods.insert(m);
            }
        }
        Some((mods, walk.end()))
    }

    /// Where `mod_tree` keeps tree 0 and where a `struct mod_tree_node`
    /// keeps its module and its node (a latch_tree_node whose first
    /// rb_node is tree 0's), from BTF; None without it.
    pub fn module_tree_layout(&self) -> Option<(u64, u64, u64)> {
        Some((
            self.field("mod_tree_root", &["root", "tree"])?,
            self.field("mod_tree_node", &["mod"])?,
            self.field("mod_tree_node", &["node"])?,
        ))
    }

    /// The `struct module`s behind `/sys/module`: the kobjects of
    /// `module_kset` that are a `struct module_kobject` with a module
    /// (built-in modules' parameters have none), and why the walk stopped.
    /// None if the build has no `module_kset` or no layout for it.
    pub fn sysfs_modules(&self) -> Option<(BTreeSet<u64>, End)> {
        let at = self.sym("module_kset")?;
        let list = self.field("kset", &["list"])?;
        let entry = self.field("kobject", &["entry"])?;
        let kobj = self.field("module_kobject", &["kobj"])?;
        let module = self.field("module_kobject", &["mod"])?;
        let Some(kset) = self.read_word(at).filter(|&k| k != 0) else {
            return Some((BTreeSet::new(), End::Unreadable(at)));
        };
        let mut out = BTreeSet::new();
        let mut walk = self.list(kset.wrapping_add(list), MAX_NODES);
        for p in walk.by_ref() {
            let mk = p.wrapping_sub(entry).wrapping_sub(kobj);
            if let Some(m) = self.read_word(mk.wrapping_add(module)).filter(|&m| m != 0) {
                out.insert(m);
            }
        }
        Some((out, walk.end()))
    }

    /// `[start, end)` of the core code of each module in `mod_tree` but not
    /// in the module list, with its name: what hidden code belongs to.
    pub fn unlisted_module_code(&self) -> Vec<(u64, u64, String)> {
        let Some((tree, _)) = self.tree_modules() else {
            return Vec::new();
        };
        let listed: BTreeSet<u64> = self.read_modules().iter().map(|m| m.addr).collect();
        tree.difference(&listed)
            .filter_map(|&m| {
                let (s, e) = self.module_text(m)?;
                Some((s, e, self.module_name(m).unwrap_or_else(|| "?".into())))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    use crate::kernel::locate::locate;
    use crate::kernel::symbols::SystemMap;
    use crate::testkit::synthetic::{put_link, synthetic_guest, UNIT_MAP, UNIT_SLIDE};

    /// A module list whose last link leads nowhere readable is not the
    /// whole list: its walk says so (the hidden-module check reports it).
    #[test]
    fn a_module_list_cut_short_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = SystemMap::parse(&format!("{UNIT_MAP}ffffffff82100000 D modules\n")).unwrap();
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        let put = |link: u64, val: u64| put_link(&ram, link, val);
        let va = |link: u64| link + UNIT_SLIDE;
        let (head, m1, m2) = (
            0xffff_ffff_8210_0000u64,
            0xffff_ffff_8210_1000u64,
            0xffff_ffff_8210_2000u64,
        );
        // Without BTF: the list at +8, the name at +24.
        put(head, va(m1 + 8));
        put(m1 + 8, va(m2 + 8));
        put(m1 + 24, u64::from_le_bytes(*b"one\0\0\0\0\0"));
        put(m2 + 24, u64::from_le_bytes(*b"two\0\0\0\0\0"));
        put(m2 + 8, 0xffff_c900_dead_0000);
        let (list, end) = v.module_list();
        assert_eq!(list.len(), 2);
        assert!(matches!(end, End::Unreadable(_)), "{end:?}");
        put(m2 + 8, va(head));
        let (list, end) = v.module_list();
        assert_eq!(
            list.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(end, End::Complete);
    }
}
