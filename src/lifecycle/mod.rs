//! A domain's life as xftrace follows it: the libvirt hook (`hook`), which
//! records it, guards an enrolled domain's start and migration, starts
//! always-on monitoring and resumes interrupted sessions; and the host's
//! watch service (`service`, `watch --all`), which follows every enrolled
//! domain through libvirt's events, checks each, and starts their tracing
//! itself while it runs.

pub mod hook;
pub mod service;
