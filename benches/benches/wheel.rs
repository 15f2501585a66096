//! Timer wheel micro-benchmarks (filled in with the engine issue).
fn main() {}
