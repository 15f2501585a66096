//! Examples for rotary live in `examples/`.
