//! Typed addresses, in the spirit of rust-vmm `vm-memory`'s `GuestAddress`
//! and memflow's `Address`: a guest-physical address, a guest-virtual
//! (runtime) address and a kernel link-time address are different types,
//! so that one is never used where another is meant; their checked
//! arithmetic is written here once. [`Slide`] is the one conversion
//! between link-time and runtime kernel addresses (KASLR).
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! address {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// `self + off`, if that does not overflow.
            pub fn checked_add(self, off: u64) -> Option<Self> {
                self.0.checked_add(off).map(Self)
            }

            /// `self - off`, if that does not underflow.
            pub fn checked_sub(self, off: u64) -> Option<Self> {
                self.0.checked_sub(off).map(Self)
            }

            /// How far `self` lies above `base`; None below it.
            pub fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// True if `self` is in `[start, start + len)`.
            pub fn within(self, start: Self, len: u64) -> bool {
                self.offset_from(start).is_some_and(|o| o < len)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address!(
    /// A guest physical address.
    GuestAddress
);

address!(
    /// A guest virtual address as the guest's CPU uses it at run time
    /// (a kernel address after KASLR, a module's, a heap object's).
    VirtAddr
);

address!(
    /// A kernel address at link time: what the build's System.map and
    /// vmlinux say, before KASLR moved the image.
    LinkAddr
);

/// The KASLR slide of a running kernel: runtime minus link-time
/// addresses of its image, modulo 2^64 as the kernel computes it (a slide
/// "below" the link address is a huge number). The one conversion between
/// [`LinkAddr`] and [`VirtAddr`], and how relocated values move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slide(pub u64);

impl Slide {
    /// The slide that puts link-time `link` at runtime `va`.
    pub fn between(link: LinkAddr, va: VirtAddr) -> Slide {
        Slide(va.0.wrapping_sub(link.0))
    }

    /// Where link-time `link` is at run time.
    pub fn runtime(self, link: LinkAddr) -> VirtAddr {
        VirtAddr(link.0.wrapping_add(self.0))
    }

    /// The link-time address of runtime `va` (meaningful in the image).
    pub fn link(self, va: VirtAddr) -> LinkAddr {
        LinkAddr(va.0.wrapping_sub(self.0))
    }

    /// A 64-bit absolute address the decompressor relocates (`R_X86_64_64`).
    pub fn relocate64(self, v: u64) -> u64 {
        v.wrapping_add(self.0)
    }

    /// A 32-bit absolute address the decompressor relocates
    /// (`R_X86_64_32S`): the low half of the slide, added.
    pub fn relocate32(self, v: u32) -> u32 {
        v.wrapping_add(self.0 as u32)
    }

    /// A 32-bit value the decompressor relocates the other way (the
    /// inverse relocations of per-CPU references): the slide subtracted.
    pub fn relocate32_inverse(self, v: u32) -> u32 {
        v.wrapping_sub(self.0 as u32)
    }
}

impl fmt::Display for Slide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Slide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slide_converts_both_ways_modulo_two_to_the_64() {
        let s = Slide(0x1e00_0000);
        let l = LinkAddr(0xffff_ffff_8100_0000);
        assert_eq!(s.runtime(l), VirtAddr(0xffff_ffff_9f00_0000));
        assert_eq!(s.link(s.runtime(l)), l);
        // A kernel loaded below its link address: the slide wraps.
        let down = Slide(0u64.wrapping_sub(0x100_0000));
        assert_eq!(down.runtime(l), VirtAddr(0xffff_ffff_8000_0000));
        assert_eq!(down.link(VirtAddr(0xffff_ffff_8000_0000)), l);
        assert_eq!(s.relocate32(0x8100_0000), 0x9f00_0000);
        assert_eq!(s.relocate32_inverse(0x9f00_0000), 0x8100_0000);
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = VirtAddr(u64::MAX - 1);
        assert_eq!(a.checked_add(1), Some(VirtAddr(u64::MAX)));
        assert_eq!(a.checked_add(2), None);
        assert_eq!(GuestAddress(0).checked_sub(1), None);
        assert_eq!(
            GuestAddress(0x2000).offset_from(GuestAddress(0x1000)),
            Some(0x1000)
        );
        assert_eq!(GuestAddress(0x1000).offset_from(GuestAddress(0x2000)), None);
        assert!(GuestAddress(0x1fff).within(GuestAddress(0x1000), 0x1000));
        assert!(!GuestAddress(0x2000).within(GuestAddress(0x1000), 0x1000));
        assert_eq!(LinkAddr(0x10).to_string(), "0x10");
    }
}
