//! Codec micro-benchmarks (filled in with the proto issue).
fn main() {}
