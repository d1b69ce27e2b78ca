//! Guest physical memory: the RAM files and their layout (`memory`), and
//! the guest's page tables (`paging`).

pub mod memory;
pub mod paging;
