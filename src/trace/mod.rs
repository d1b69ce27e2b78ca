//! Tracing: keys (`keys`), on/off (`switch`), reading the rings (`rings`),
//! the record spool (`spool`), function_graph text (`render`), and the
//! sessions that tie them together (`session`).

pub mod keys;
pub mod render;
pub mod rings;
pub mod session;
pub mod spool;
pub mod switch;
