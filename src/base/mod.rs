//! The foundation every layer uses: errors with their exit codes and the
//! one read error (`error`), guest-derived text made safe to print
//! (`escape`), sets of address ranges in linear time (`ranges`), and the
//! one wait for guest state caught mid-change (`settle`).

pub mod error;
pub mod escape;
pub mod ranges;
pub mod settle;
