//! libvirt: domains and their RAM (`connection`), the domain XML edits of
//! enrollment (`domain_xml`), and the `virsh start` hook (`hook`).

pub mod connection;
pub mod domain_xml;
pub mod hook;
