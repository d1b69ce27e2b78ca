//! The foundation every layer uses: errors with their exit codes and the
//! one read error (`error`), and guest-derived text made safe to print
//! (`escape`), and sets of address ranges in linear time (`ranges`).

pub mod error;
pub mod escape;
pub mod ranges;
