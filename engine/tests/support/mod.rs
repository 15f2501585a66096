//! Test support for rotary's integration tests, independent of the engine's code:
//! a run-time PKI (`certs`), a scriptable HTTP/1.1 test server over TCP or rustls
//! (`server`), a seeded fault-injecting TCP proxy (`proxy`), a scripted
//! forward proxy answering CONNECT (`connect_proxy`), a tiny
//! blocking client for cross-checks (`client`), an address where
//! connects hang (`blackhole`), OpenSSL as a real peer (`openssl`: a CA
//! run by `openssl ca` that issues, revokes and publishes CRLs, and `openssl
//! s_server` requiring client certificates), seeded bodies of any size that
//! are never held in memory (`pattern`) and the process's resident memory
//! (`rss`). What they share lives in private modules:
//! `stream` (a plain-or-TLS blocking stream, line splitting), `sync` (locks
//! and state that tests wait on), `threads` (joining worker threads within a
//! bound) and `sockopt` (RST on close, a deeper listen backlog).
//!
//! This file owns only the re-exported surface and three helpers (`wait_for`,
//! `ca_and_leaf`, `assert_client_drained`); it changes no state.
//!
//! Use from a test file as `mod support;` then `use support::*;`:
//!
//! ```text
//! let (ca, leaf) = ca_and_leaf();                       // CA + leaf for localhost, 127.0.0.1
//! let server = TestServer::tls(&leaf, |req, conn| match req.path() {
//!     "/poll" => Reply::ok("event").delay(Duration::from_millis(50)),   // long poll
//!     "/cut" => Reply::ok(vec![b'x'; 1000]).cut_at(200),                // FIN mid-body
//!     _ => Reply::ok("hi").chunked().parts(&[1, 1]).trailer("x-t", "1"),
//! });
//! // point the engine at server.url("/poll") trusting ca.cert_pem() / ca.write_pem_file()
//! server.expect_until(T, "one full handshake", |s| s.handshakes_full == 1);
//! server.rotate_to(&ca.issue(&["localhost"]));           // new handshakes see the new chain
//! let proxy = FaultProxy::builder(server.addr()).seed(7).random_faults(0.05, 4096).start();
//! ```
//!
//! Behaviour that a real server has and a test may not expect: a reply with a
//! `Connection: close` header also closes the connection (use `.keep_open()` to
//! misbehave); a graceful close lingers up to 1 s reading until the client's EOF,
//! so that the kernel never turns it into an RST.
#![allow(dead_code, unused_imports)]

pub mod blackhole;
pub mod certs;
pub mod client;
pub mod connect_proxy;
pub mod openssl;
pub mod pattern;
pub mod proxy;
pub mod rss;
pub mod server;
mod sockopt;
mod stream;
mod sync;
mod threads;

pub use blackhole::BlackHole;
pub use certs::{hex, sha256, Issued, LeafBuilder, TempFile, TestCa};
pub use client::{Client, Response};
pub use connect_proxy::{ConnectProxy, ProxyScript};
pub use openssl::{openssl, OpensslCa, OpensslCert, SServer};
pub use pattern::{Pattern, PatternCheck, PatternReader};
pub use proxy::{Dir, Fault, FaultProxy, ProxiedConn, ProxyBuilder, ProxyStats};
pub use rss::{rss_kib, RssWatch};
pub use server::{
    reset_supported, Accept, BodyPlan, ConnInfo, Cut, Fill, Framing, RecordedRequest, Reply,
    Resumption, ServerBuilder, ServerStats, TestServer, TlsInfo,
};
pub use sockopt::unacknowledged;
pub(crate) use sync::{lock, Watched};

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

/// Close a `rotary::Client`'s idle connections and wait (up to 10 s) until
/// its engine holds nothing: no connection, timer or request.
pub fn assert_client_drained(client: &rotary::Client) {
    client.close_idle().expect("client running");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = client.stats().expect("client running");
        if stats.is_idle() {
            return;
        }
        assert!(Instant::now() < until, "client not idle: {stats:#?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
