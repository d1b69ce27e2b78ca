//! The foundation every layer uses: errors with their exit codes and the
//! one read error (`error`), and guest-derived text made safe to print
//! (`escape`).

pub mod error;
pub mod escape;
