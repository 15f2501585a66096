//! Benchmarks for rotary.
