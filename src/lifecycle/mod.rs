//! A domain's life as xftrace follows it: the libvirt hook (`hook`), which
//! records it, guards an enrolled domain's start and migration, starts
//! always-on monitoring and resumes interrupted sessions.

pub mod hook;
