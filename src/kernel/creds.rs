//! Credentials (`struct cred`), read from the host: who a task acts as,
//! and what the kernel's own bookkeeping says of the object. A committed
//! credential object is never written again (`commit_creds` swaps in a
//! fresh copy from `prepare_creds`), each process has its own, and its
//! `user` pointer is the `user_struct` of its real UID (`set_user`): what a
//! rootkit that writes IDs in place or swaps in another task's object
//! breaks.
#![deny(clippy::arithmetic_side_effects)]

use crate::kernel::guest::KernelView;

/// What a credential object says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub fsuid: u32,
    pub gid: u32,
    pub egid: u32,
    pub cap_inheritable: u64,
    pub cap_effective: u64,
    pub cap_bset: u64,
    /// The real UID of its `user_struct`, where it can be read.
    pub user_uid: Option<u32>,
}

/// Read the credential object at `at`; None where the build does not
/// describe `struct cred` or the object cannot be read.
pub fn read(v: &KernelView, at: u64) -> Option<Cred> {
    let f = |m: &str| v.field("cred", &[m]).and_then(|o| at.checked_add(o));
    let u32_of = |m: &str| f(m).and_then(|a| v.read_u32(a));
    // kernel_cap_t is two 32-bit words in 6.1, one 64-bit word later:
    // either way 64 bits little-endian.
    let cap = |m: &str| f(m).and_then(|a| v.read_word(a));
    let user_uid = f("user")
        .and_then(|a| v.read_word(a))
        .zip(v.field("user_struct", &["uid"]))
        .and_then(|(u, o)| u.checked_add(o))
        .and_then(|a| v.read_u32(a));
    Some(Cred {
        uid: u32_of("uid")?,
        euid: u32_of("euid")?,
        suid: u32_of("suid")?,
        fsuid: u32_of("fsuid")?,
        gid: u32_of("gid")?,
        egid: u32_of("egid")?,
        cap_inheritable: cap("cap_inheritable")?,
        cap_effective: cap("cap_effective")?,
        cap_bset: cap("cap_bset")?,
        user_uid,
    })
}

/// Where a credential object lives, as far as the slab allocator says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// A slab of the credential cache (`cred_jar`, or a cache merged
    /// with it).
    CredJar,
    /// A slab page of another cache (its `kmem_cache`).
    OtherCache(u64),
    /// Not in the direct map: the kernel image, a module, vmalloc space.
    NotDirectMap,
    /// What the build or the guest does not let the host tell, and why.
    Unknown(&'static str),
}

/// Which slab cache holds `at`: its page's `struct slab` (the compound
/// head of its `struct page` in `vmemmap`) names the cache.
pub fn home(v: &KernelView, at: u64) -> Home {
    let word = |name: &str| v.sym(name).and_then(|a| v.read_word(a));
    let (Some(base), Some(vmemmap), Some(jar)) = (
        word("page_offset_base"),
        word("vmemmap_base"),
        word("cred_jar"),
    ) else {
        return Home::Unknown("no page_offset_base, vmemmap_base or cred_jar");
    };
    let (Some(page_size), Some(cache_off)) = (
        v.btf.and_then(|b| b.size_of("page")),
        v.field("slab", &["slab_cache"]),
    ) else {
        return Home::Unknown("the build does not describe struct page and struct slab");
    };
    let Some(off) = at.checked_sub(base) else {
        return Home::NotDirectMap;
    };
    // The direct map spans at most 64 TiB (4-level paging's), beyond it is
    // vmalloc space and the rest.
    if off >= 1 << 46 {
        return Home::NotDirectMap;
    }
    let Some(page) = (off >> 12)
        .checked_mul(page_size)
        .and_then(|o| vmemmap.checked_add(o))
    else {
        return Home::Unknown("its struct page is out of range");
    };
    // A tail page's compound_head (the word after flags) has bit 0 set
    // and leads to the head.
    let head = match page.checked_add(8).and_then(|a| v.read_word(a)) {
        Some(h) if h & 1 == 1 => h & !1,
        Some(_) => page,
        None => return Home::Unknown("its struct page cannot be read"),
    };
    match head.checked_add(cache_off).and_then(|a| v.read_word(a)) {
        Some(c) if c == jar => Home::CredJar,
        Some(c) => Home::OtherCache(c),
        None => Home::Unknown("its struct slab cannot be read"),
    }
}
