//! A synthetic guest for the host-side benches: the fuzzers' kernel
//! (`xftrace::fuzzing::synthetic_kernel`) in a RAM file of a pc machine,
//! its header and ring pointers rewritten for `rings` rings of `slots`
//! slots at [`RINGS_PA`].
// Each bench uses what it needs of this.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xftrace::abi;
use xftrace::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use xftrace::kernel::locate::{locate, GuestKernel};
use xftrace::kernel::symbols::SystemMap;

pub const TEXT_PA: u64 = 16 << 20;
pub const RINGS_PA: u64 = 64 << 20;

pub struct Synthetic {
    pub file: File,
    layout: MemoryLayout,
    pub ram: GuestRam,
    pub kernel: GuestKernel,
}

/// Write `b` at guest physical `gpa` of the RAM file.
fn put(file: &File, layout: &MemoryLayout, gpa: u64, b: &[u8]) {
    let off = layout
        .to_file_offset(GuestAddress(gpa), b.len() as u64)
        .expect("in RAM");
    file.write_all_at(b, off).unwrap();
}

impl Synthetic {
    /// Create the RAM file `path` of `size` bytes (it must not exist).
    pub fn create(path: &Path, size: u64, rings: u32, slots: u64) -> Synthetic {
        assert!(slots.is_power_of_two() && slots <= u64::from(abi::MAX_RING_SLOTS));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        let layout = MemoryLayout::x86(size, Machine::Pc, None);
        xftrace::fuzzing::synthetic_kernel(TEXT_PA, &mut |gpa, b| put(&file, &layout, gpa, b));
        let ram = GuestRam::open(path, layout.clone()).unwrap();
        let map = SystemMap::parse(xftrace::fuzzing::MAP).unwrap();
        // More or bigger rings than the fuzzers': the header and ring
        // pointers say so.
        let k0 = locate(&ram, &map, None).expect("located");
        let header = [
            (abi::off::NR_RINGS, u64::from(rings) | (slots << 32)),
            (
                abi::off::SLOT_SIZE,
                abi::SLOT_SIZE | (u64::from(rings) << 32),
            ),
        ];
        for (off, v) in header {
            put(&file, &layout, k0.field(off).0, &v.to_le_bytes());
        }
        for r in 0..rings {
            let pa = RINGS_PA + u64::from(r) * slots * abi::SLOT_SIZE;
            put(
                &file,
                &layout,
                k0.field(abi::ring_pa(r)).0,
                &pa.to_le_bytes(),
            );
        }
        let kernel = locate(&ram, &map, None).expect("located again");
        assert_eq!(u64::from(kernel.header.ring_slots), slots);
        assert_eq!(kernel.header.nr_rings, rings);
        Synthetic {
            file,
            layout,
            ram,
            kernel,
        }
    }

    /// Write `b` at guest physical `gpa`.
    pub fn put(&self, gpa: u64, b: &[u8]) {
        put(&self.file, &self.layout, gpa, b);
    }

    /// Where ring `ring` starts.
    pub fn ring_pa(&self, ring: u32) -> u64 {
        RINGS_PA + u64::from(ring) * u64::from(self.kernel.header.ring_slots) * abi::SLOT_SIZE
    }
}
