//! Benchmarks for rotary.

pub mod fleet;
