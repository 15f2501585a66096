//! rotary: a readiness-driven HTTP/1.1-over-TLS client engine.
