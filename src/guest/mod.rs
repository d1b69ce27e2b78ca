//! The guest as memory: typed addresses (`addr`), guest physical memory
//! through the RAM files and their layout (`memory`), and the guest's page
//! tables (`paging`); the vCPUs' live registers as QEMU's monitor gives
//! them (`vcpu`).

pub mod addr;
pub mod memory;
pub mod paging;
pub mod vcpu;
