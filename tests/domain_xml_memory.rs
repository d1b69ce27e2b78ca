//! What a hostile domain XML costs the hook, which reads it as root while
//! libvirt waits (issue 24: 1 MiB of nested metadata took 916 MiB): memory
//! in proportion to the document, whatever its shape, counted by this
//! binary's allocator. Its own binary, so that no other test allocates
//! while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use xftrace::libvirt::domain_xml::{enroll, facts, prepare_decision, unenroll, HookDecision};

/// The system allocator, counting the bytes allocated now and at most.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = NOW.fetch_add(by, Relaxed).saturating_add(by);
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        NOW.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            match new_size.checked_sub(layout.size()) {
                Some(more) => grew(more),
                None => {
                    NOW.fetch_sub(layout.size() - new_size, Relaxed);
                }
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most `f` had allocated at once, beyond what was allocated before.
fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = NOW.load(Relaxed);
    PEAK.store(before, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(before))
}

fn domain(metadata: &str) -> String {
    format!(
        "<domain type='kvm'><name>d</name><metadata>{metadata}</metadata>\
         <devices><memballoon model='virtio'/></devices></domain>"
    )
}

/// Peak bytes of the hook's check, `facts` and `enroll` of `xml`.
fn costs(xml: &str) -> [usize; 3] {
    let (d, hook) = peak(|| prepare_decision(xml));
    assert_eq!(d, HookDecision::Allow);
    let (_, facts) = peak(|| facts(xml));
    let (_, enroll) = peak(|| enroll(xml, Some("/k/System.map"), &[]));
    [hook, facts, enroll]
}

#[test]
fn hostile_documents_cost_memory_in_proportion_to_their_size() {
    const MIB: usize = 1 << 20;
    // 1 MiB of nesting, 150 000 levels: refused at level 257, having kept
    // nothing but quick-xml's stack of open names.
    let levels = MIB / 7;
    let deep = domain(&format!(
        "{}{}",
        "<a>".repeat(levels),
        "</a>".repeat(levels)
    ));
    let c = costs(&deep);
    eprintln!("nested, {} bytes: {c:?} bytes at most", deep.len());
    assert!(c.iter().all(|&b| b < 64 << 10), "{c:?}");
    assert!(facts(&deep).unwrap_err().contains("deeper than 256 levels"));

    // The same with long names: 2 500 levels of 200-byte names.
    let name = "a".repeat(200);
    let levels = MIB / 405;
    let deep = domain(&format!(
        "{}{}",
        format!("<{name}>").repeat(levels),
        format!("</{name}>").repeat(levels)
    ));
    let c = costs(&deep);
    eprintln!(
        "nested long names, {} bytes: {c:?} bytes at most",
        deep.len()
    );
    assert!(c.iter().all(|&b| b < 256 << 10), "{c:?}");

    // 1 MiB of nesting within the bound, 254 levels at a time: read whole,
    // nothing below the fourth level kept.
    let saw = domain(&format!("{}{}", "<a>".repeat(254), "</a>".repeat(254)).repeat(600));
    let c = costs(&saw);
    eprintln!(
        "nested within the bound, {} bytes: {c:?} bytes at most",
        saw.len()
    );
    let out = enroll(&saw, Some("/k/System.map"), &[]).unwrap();
    assert!(facts(&out).unwrap().enrolled && unenroll(&out).is_ok());
    // The hook keeps nothing of it, `facts` the 1 200 elements of the
    // fourth level and above, `enroll` those and a copy.
    assert!(c[0] < 64 << 10 && c[1] < 256 << 10, "{c:?}");
    assert!(c[2] < 3 * saw.len(), "{c:?}");

    // 1 MiB of siblings, 262 144 elements: an index entry of 32 bytes
    // each, in a vector that doubles as it grows.
    let wide = domain(&"<a/>".repeat(MIB / 4));
    let c = costs(&wide);
    eprintln!("wide, {} bytes: {c:?} bytes at most", wide.len());
    let index = 64 * (MIB / 4);
    assert!(c[0] < 64 << 10, "{c:?}");
    assert!(c[1] < index + (64 << 10), "{c:?}");
    assert!(c[2] < index + 3 * wide.len(), "{c:?}");

    // 1 MiB of attributes in one element.
    let attrs: String = (0..)
        .map(|i| format!(" a{i}=''"))
        .take_while({
            let mut n = 0usize;
            move |a: &String| {
                n += a.len();
                n < MIB
            }
        })
        .collect();
    let many = domain(&format!("<b{attrs}/>"));
    let c = costs(&many);
    eprintln!("attributes, {} bytes: {c:?} bytes at most", many.len());
    assert!(c[0] < 64 << 10, "{c:?}");
    assert!(c[1] < 8 * many.len() && c[2] < 8 * many.len(), "{c:?}");
}
