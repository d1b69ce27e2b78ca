//! The guest as memory: typed addresses (`addr`), guest physical memory
//! through the RAM files and their layout (`memory`), and the guest's page
//! tables (`paging`).

pub mod addr;
pub mod memory;
pub mod paging;
