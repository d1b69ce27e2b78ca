//! libvirt: domains and their RAM (`connection`), the domain XML edits of
//! enrollment (`domain_xml`), domain lifecycle events (`events`), libvirt's domains as the kernel layer opens
//! them (`guests`), and what the `virsh start` hook records (`hook`).

pub mod connection;
pub mod domain_xml;
pub mod events;
pub mod guests;
pub mod hook;
