//! Test support for rotary's integration tests, independent of the engine's code:
//! a run-time PKI (`certs`), a scriptable HTTP/1.1 test server over TCP or rustls
//! (`server`), a seeded fault-injecting TCP proxy (`proxy`), and a tiny
//! blocking client for cross-checks (`client`).
//!
//! Use from a test file as `mod support;` then `use support::*;`.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod client;
pub mod proxy;
pub mod server;

pub use certs::{hex, sha256, Issued, LeafBuilder, TempFile, TestCa};
pub use client::{Client, Response};
pub use proxy::{Dir, Fault, FaultProxy, ProxiedConn, ProxyBuilder, ProxyStats};
pub use server::{
    reset_supported, Accept, ConnInfo, Cut, Framing, RecordedRequest, Reply, Resumption,
    ServerBuilder, ServerStats, TestServer, TlsInfo,
};

use std::time::{Duration, Instant};

/// Polls `cond` every millisecond until it holds or `timeout` passes; returns
/// whether it held. For conditions without a notification to wait on.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A CA named "rotary test CA" and a leaf for `localhost` and `127.0.0.1`.
pub fn ca_and_leaf() -> (TestCa, Issued) {
    let ca = TestCa::new("rotary test CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    (ca, leaf)
}
