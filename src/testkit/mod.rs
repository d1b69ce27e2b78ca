//! Test support, out of the product: compiled for unit tests and with the
//! `fuzzing` feature (cargo-fuzz targets in `fuzz/`, `tests/fuzz_corpus.rs`,
//! the benches), never in the `xftrace` binary.
//!
//! | module | what |
//! |---|---|
//! | [`synthetic`] | synthetic guests: kernels written into RAM files as a real guest lays them out |
//! | [`fuzz`] | the fuzz harnesses, their seeds, and the targets' names |
#![doc(hidden)]

pub mod fuzz;
pub mod synthetic;
