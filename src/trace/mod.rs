//! Tracing: keys (`keys`), on/off (`switch`), reading the rings (`rings`),
//! the record spool (`spool`), the guest's liveness probe (`probe`),
//! function_graph text (`render`), the sessions
//! that tie them together (`session`), the background collector
//! (`collector`), what it reports (`status`) and the bounded log of what
//! failed the rings' checks (`anomalies`).

pub mod anomalies;
pub mod collector;
pub mod keys;
pub mod probe;
pub mod render;
pub mod rings;
pub mod session;
pub mod spool;
pub mod status;
pub mod switch;
