//! One way to walk the kernel's linked structures from the host: bounded
//! iterators over a [`KernelView`] for `list_head` lists, NULL-terminated
//! chains (`hlist`, `llist`, notifier chains, `ftrace_ops`), red-black
//! trees, XArrays (IDRs) and per-CPU variables. The guest writes these
//! structures and may build them to loop or to grow without end: every
//! walk stops after `max` nodes and says why it stopped ([`End`]), so a
//! check can report a truncated or unreadable walk instead of taking it
//! for the whole structure.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use crate::kernel::guest::KernelView;

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It has not stopped yet.
    Running,
    /// It reached the end of the structure.
    Complete,
    /// It stopped at its bound with more to go: a huge structure or a loop.
    Truncated,
    /// A link could not be read at this address.
    Unreadable(u64),
}

/// A walk along links: each node's successor is the word at `node + next`.
/// Yields node addresses (for a `list_head` list, the addresses of the
/// `list_head`s in the entries).
pub struct Chain<'v, 'a> {
    view: &'v KernelView<'a>,
    at: u64,
    next: u64,
    stop: u64,
    left: usize,
    end: End,
}

impl Chain<'_, '_> {
    /// Why the walk stopped ([`End::Running`] while it goes on).
    pub fn end(&self) -> End {
        self.end
    }

    /// True if the walk stopped at its bound.
    pub fn truncated(&self) -> bool {
        self.end == End::Truncated
    }
}

impl Iterator for Chain<'_, '_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.end != End::Running {
            return None;
        }
        let p = self.at;
        if p == self.stop || p == 0 {
            self.end = End::Complete;
            return None;
        }
        if self.left == 0 {
            self.end = End::Truncated;
            return None;
        }
        self.left = self.left.saturating_sub(1);
        match p
            .checked_add(self.next)
            .map(|a| (a, self.view.read_word(a)))
        {
            Some((_, Some(n))) => self.at = n,
            Some((a, None)) => self.end = End::Unreadable(a),
            None => self.end = End::Unreadable(p),
        }
        Some(p)
    }
}

/// A preorder walk of a red-black tree: yields the addresses of its
/// `struct rb_node`s whose child links could be read.
pub struct RbTree<'v, 'a> {
    view: &'v KernelView<'a>,
    stack: Vec<u64>,
    left_off: u64,
    right_off: u64,
    left: usize,
    end: End,
}

impl RbTree<'_, '_> {
    /// Why the walk stopped ([`End::Running`] while it goes on); a node
    /// whose links cannot be read is left out and noted here, the walk
    /// goes on with the rest.
    pub fn end(&self) -> End {
        self.end
    }
}

impl Iterator for RbTree<'_, '_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if matches!(self.end, End::Complete | End::Truncated) {
                return None;
            }
            let Some(n) = self.stack.pop() else {
                if self.end == End::Running {
                    self.end = End::Complete;
                }
                return None;
            };
            if n == 0 {
                continue;
            }
            if self.left == 0 {
                self.end = End::Truncated;
                return None;
            }
            self.left = self.left.saturating_sub(1);
            let word = |off: u64| n.checked_add(off).and_then(|a| self.view.read_word(a));
            let (Some(r), Some(l)) = (word(self.right_off), word(self.left_off)) else {
                self.end = End::Unreadable(n);
                continue;
            };
            self.stack.push(r);
            self.stack.push(l);
            return Some(n);
        }
    }
}

/// Offsets of `struct rb_node`'s children when the build has no BTF
/// (`{ unsigned long __rb_parent_color; rb_right; rb_left; }`).
const RB_RIGHT: u64 = 8;
const RB_LEFT: u64 = 16;

/// The most levels an XArray has (64-bit indices, 6 bits a level).
const XA_MAX_LEVELS: usize = 11;
/// Slots of an XArray node.
const XA_CHUNK: usize = 64;
/// `struct xa_node`'s `slots` when the build has no BTF (6.1).
const XA_SLOTS: u64 = 40;

/// The most CPUs a per-CPU walk visits (the kernel's `NR_CPUS` limit).
const MAX_CPUS: u32 = 8192;

impl<'a> KernelView<'a> {
    /// The `struct list_head` list at `head`: the addresses of the
    /// `list_head`s of its entries, at most `max`.
    pub fn list<'v>(&'v self, head: u64, max: usize) -> Chain<'v, 'a> {
        match self.read_word(head) {
            Some(first) => self.chain(first, 0, head, max),
            None => Chain {
                end: End::Unreadable(head),
                ..self.chain(0, 0, head, max)
            },
        }
    }

    /// The chain from node `first`, each node's successor the word at
    /// `node + next`, until `stop` or NULL: an `hlist` or `llist` (`next`
    /// 0), a notifier chain, `ftrace_ops_list` (ending at
    /// `ftrace_list_end`). At most `max` nodes.
    pub fn chain<'v>(&'v self, first: u64, next: u64, stop: u64, max: usize) -> Chain<'v, 'a> {
        Chain {
            view: self,
            at: first,
            next,
            stop,
            left: max,
            end: End::Running,
        }
    }

    /// [`Self::chain`] from the pointer stored at `head` (an `hlist_head`,
    /// an `llist_head`, a notifier chain's head).
    pub fn chain_at<'v>(&'v self, head: u64, next: u64, stop: u64, max: usize) -> Chain<'v, 'a> {
        match self.read_word(head) {
            Some(first) => self.chain(first, next, stop, max),
            None => Chain {
                end: End::Unreadable(head),
                ..self.chain(0, next, stop, max)
            },
        }
    }

    /// The red-black tree whose root node pointer is the word at `root`
    /// (a `struct rb_root`): its nodes, at most `max`.
    pub fn rb_tree<'v>(&'v self, root: u64, max: usize) -> RbTree<'v, 'a> {
        let (stack, end) = match self.read_word(root) {
            Some(top) => (vec![top], End::Running),
            None => (Vec::new(), End::Unreadable(root)),
        };
        RbTree {
            view: self,
            stack,
            left_off: self.field("rb_node", &["rb_left"]).unwrap_or(RB_LEFT),
            right_off: self.field("rb_node", &["rb_right"]).unwrap_or(RB_RIGHT),
            left: max,
            end,
        }
    }

    /// The pointers stored in the XArray whose `xa_head` is the word at
    /// `head` (an IDR's `idr_rt`), at most `max`. Value and internal
    /// entries are skipped. A node is read at most once and the tree is at
    /// most 11 levels deep, so a hostile tree ends. Truncated when it had
    /// more than `max` entries or nodes.
    pub fn xarray(&self, head: u64, max: usize) -> (Vec<u64>, End) {
        let slots = self.field("xa_node", &["slots"]).unwrap_or(XA_SLOTS);
        let is_node = |e: u64| e & 3 == 2 && e > 4096;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut end = End::Complete;
        let Some(top) = self.read_word(head) else {
            return (out, End::Unreadable(head));
        };
        let mut level = vec![top];
        for _ in 0..=XA_MAX_LEVELS {
            let mut next = Vec::new();
            for e in level {
                if is_node(e) {
                    let node = e & !3;
                    if seen.len() >= max {
                        end = End::Truncated;
                    } else if seen.insert(node) {
                        match node
                            .checked_add(slots)
                            .and_then(|a| self.read_words(a, XA_CHUNK))
                        {
                            Some(w) => next.extend(w.into_iter().filter(|&x| x != 0)),
                            None => end = End::Unreadable(node),
                        }
                    }
                } else if e != 0 && e & 3 == 0 {
                    if out.len() < max {
                        out.push(e);
                    } else {
                        end = End::Truncated;
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        (out, end)
    }

    /// Every possible CPU's instance of the per-CPU variable `var`, its
    /// value in System.map (x86-64 links the per-CPU area at 0, and KASLR
    /// does not move it): `(cpu, address)` from `__per_cpu_offset[cpu]`
    /// for the first `nr_cpu_ids` CPUs, as `per_cpu_ptr()` computes them
    /// (a wrapping sum), and no more than the domain's vCPUs where its
    /// manager says (a guest that raises `nr_cpu_ids` must not multiply
    /// every per-CPU walk; CPUs beyond the vCPUs never run). None where the
    /// build or the guest does not say.
    pub fn per_cpu(&self, var: u64) -> Option<Vec<(u32, u64)>> {
        let most = self.max_vcpus.unwrap_or(MAX_CPUS).clamp(1, MAX_CPUS);
        let n = self.read_u32(self.sym("nr_cpu_ids")?)?.clamp(1, most);
        let offsets = self.read_words(self.sym("__per_cpu_offset")?, n as usize)?;
        Some(
            (0..n)
                .zip(offsets)
                .map(|(cpu, off)| (cpu, var.wrapping_add(off)))
                .collect(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;
    use crate::guest::memory::GuestRam;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::locate;
    use crate::kernel::locate::tests::{pa_of, synthetic_guest, SLIDE, TEXT_PA};

    #[test]
    fn per_cpu_walks_stop_at_the_domains_vcpus_whatever_nr_cpu_ids_says() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let nr = GuestAddress(pa_of(&map, TEXT_PA, "nr_cpu_ids"));
        ram.write_u64(nr, 8192).unwrap();
        let mut v = KernelView::new(&ram, &map, &k);
        let var = 0x1000;
        assert_eq!(v.per_cpu(var).unwrap().len(), 8192);
        v.max_vcpus = Some(2);
        assert_eq!(v.per_cpu(var).unwrap().len(), 2);
        // A guest that counts fewer CPUs than it has is read as it says.
        ram.write_u64(nr, 1).unwrap();
        assert_eq!(v.per_cpu(var).unwrap().len(), 1);
    }

    #[test]
    fn an_xarray_is_walked_once_whatever_its_nodes_say() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        // Link-time 0xffffffff82900000 on: inside the image, read linearly.
        let va = |off: u64| 0xffff_ffff_8290_0000 + SLIDE + off;
        let pa = |off: u64| GuestAddress(TEXT_PA + 0x190_0000 + off);
        let slots = 40;
        let (head, n1, n2) = (0, 0x1000, 0x2000);
        ram.write_u64(pa(head), va(n1) | 2).unwrap();
        let slot = |node: u64, i: u64, e: u64| ram.write_u64(pa(node + slots + 8 * i), e).unwrap();
        slot(n1, 0, 0xffff_8880_0000_1000); // a pointer
        slot(n1, 1, va(n2) | 2); // a node
        slot(n1, 2, (7 << 1) | 1); // a value entry
        slot(n1, 3, va(n1) | 2); // a cycle back to itself
        slot(n1, 4, 0x102); // a retry entry (internal, not a node)
        slot(n2, 63, 0xffff_8880_0000_2000);
        let mut e = v.xarray(va(head), 100).0;
        e.sort();
        assert_eq!(e, vec![0xffff_8880_0000_1000, 0xffff_8880_0000_2000]);
        assert_eq!(v.xarray(va(head), 1).0.len(), 1);
        // A head that points nowhere readable gives nothing.
        ram.write_u64(pa(head), 0xdead_0000_0000_0002).unwrap();
        assert!(v.xarray(va(head), 100).0.is_empty());
    }

    /// A synthetic guest and a view of it; `va(off)`/`pa(off)` are the same
    /// place in the image's data, read linearly.
    fn with_view(f: impl FnOnce(&KernelView, &GuestRam, &dyn Fn(u64) -> u64)) {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        f(&v, &ram, &|off| 0xffff_ffff_8290_0000 + SLIDE + off)
    }

    fn put(ram: &GuestRam, va: u64, v: u64) {
        let pa = va - (0xffff_ffff_8290_0000 + SLIDE) + TEXT_PA + 0x190_0000;
        ram.write_u64(GuestAddress(pa), v).unwrap();
    }

    #[test]
    fn a_list_ends_at_its_head_its_bound_or_what_cannot_be_read() {
        with_view(|v, ram, va| {
            let (head, a, b) = (va(0), va(0x100), va(0x200));
            put(ram, head, a);
            put(ram, a, b);
            put(ram, b, head);
            let mut w = v.list(head, 10);
            assert_eq!(w.by_ref().collect::<Vec<_>>(), [a, b]);
            assert_eq!(w.end(), End::Complete);
            // A cycle that never comes back to the head: cut at the bound.
            put(ram, b, a);
            let mut w = v.list(head, 10);
            assert_eq!(w.by_ref().count(), 10);
            assert!(w.truncated());
            // A link into nothing.
            put(ram, b, 0xdead_0000_0000_0000);
            let mut w = v.list(head, 10);
            assert_eq!(
                w.by_ref().collect::<Vec<_>>(),
                [a, b, 0xdead_0000_0000_0000]
            );
            assert!(matches!(w.end(), End::Unreadable(_)));
            // An empty list, and a head that cannot be read.
            put(ram, head, head);
            assert_eq!(v.list(head, 10).count(), 0);
            let mut w = v.list(0xdead_0000_0000_0000, 10);
            assert_eq!(w.by_ref().count(), 0);
            assert_eq!(w.end(), End::Unreadable(0xdead_0000_0000_0000));
        });
    }

    #[test]
    fn a_chain_follows_its_link_to_null_or_its_stop() {
        with_view(|v, ram, va| {
            // Nodes whose `next` is at +8; the head holds the first.
            let (head, a, b, end) = (va(0), va(0x100), va(0x200), va(0x300));
            put(ram, head, a);
            put(ram, a + 8, b);
            put(ram, b + 8, 0);
            assert_eq!(v.chain_at(head, 8, 0, 10).collect::<Vec<_>>(), [a, b]);
            // ftrace_ops_list style: ends at a sentinel.
            put(ram, b + 8, end);
            let mut w = v.chain_at(head, 8, end, 10);
            assert_eq!(w.by_ref().collect::<Vec<_>>(), [a, b]);
            assert_eq!(w.end(), End::Complete);
            // A node pointing to itself: bounded.
            put(ram, b + 8, b);
            let mut w = v.chain(a, 8, 0, 5);
            assert_eq!(w.by_ref().count(), 5);
            assert!(w.truncated());
        });
    }

    #[test]
    fn an_rb_tree_is_walked_within_its_bound_whatever_its_links() {
        with_view(|v, ram, va| {
            // rb_node without BTF: right at +8, left at +16.
            let (root, n1, n2, n3) = (va(0), va(0x100), va(0x200), va(0x300));
            put(ram, root, n1);
            put(ram, n1 + 8, n3);
            put(ram, n1 + 16, n2);
            let mut w = v.rb_tree(root, 100);
            // Preorder, left first.
            assert_eq!(w.by_ref().collect::<Vec<_>>(), [n1, n2, n3]);
            assert_eq!(w.end(), End::Complete);
            // Children pointing back up: a cycle, cut at the bound.
            put(ram, n2 + 16, n1);
            let mut w = v.rb_tree(root, 50);
            assert_eq!(w.by_ref().count(), 50);
            assert_eq!(w.end(), End::Truncated);
            // A child that cannot be read is left out, the rest walked.
            put(ram, n2 + 16, 0);
            put(ram, n1 + 8, 0xdead_0000_0000_0000);
            let mut w = v.rb_tree(root, 100);
            assert_eq!(w.by_ref().collect::<Vec<_>>(), [n1, n2]);
            assert_eq!(w.end(), End::Unreadable(0xdead_0000_0000_0000));
        });
    }

    #[test]
    fn per_cpu_variables_are_found_through_the_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let v = KernelView::new(&ram, &map, &k);
        let pa = |s: &str| GuestAddress(pa_of(&map, TEXT_PA, s));
        ram.write_u64(pa("nr_cpu_ids"), 3).unwrap();
        let offsets = pa("__per_cpu_offset").0;
        for (cpu, off) in [
            0xffff_8880_3f00_0000u64,
            0xffff_8880_3f20_0000,
            0xffff_8880_3f40_0000,
        ]
        .into_iter()
        .enumerate()
        {
            ram.write_u64(GuestAddress(offsets + 8 * cpu as u64), off)
                .unwrap();
        }
        assert_eq!(
            v.per_cpu(0x1_f700).unwrap(),
            [
                (0, 0xffff_8880_3f01_f700),
                (1, 0xffff_8880_3f21_f700),
                (2, 0xffff_8880_3f41_f700)
            ]
        );
        // A guest that claims a million CPUs is read for NR_CPUS at most
        // (here: not readable that far, so nothing).
        ram.write_u64(pa("nr_cpu_ids"), 1 << 20).unwrap();
        assert!(v.per_cpu(0x1_f700).is_none_or(|c| c.len() <= 8192));
    }
}
