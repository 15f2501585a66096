//! The key exchange rotary offers, judged by the server that took it: with
//! the `aws-lc-rs` provider the hybrid post-quantum X25519MLKEM768 is
//! negotiated with a server that supports it, and X25519 when
//! `Trust::post_quantum` is off; with *ring* (no ML-KEM) always X25519.
//!
//! The test server runs on `rotary::crypto_provider()`, so it supports
//! X25519MLKEM768 exactly when the engine was built with `aws-lc-rs`:
//! `cargo test -p rotary --no-default-features --features aws-lc-rs --test post_quantum`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rotary::{Config, Engine, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);

/// One request with `post_quantum` as given; the group the server saw.
fn negotiated(post_quantum: bool) -> String {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    config.trust.post_quantum = post_quantum;
    let mut engine = Engine::new(config).expect("engine");
    let req = http::Request::get(server.url("/"))
        .body(Bytes::new())
        .expect("request");
    let resp = engine
        .execute(req, RequestOptions::default().deadline(T))
        .expect("response");
    assert_eq!(resp.body(), &Bytes::from_static(b"hi"));
    let conns = server.connections();
    assert_eq!(conns.len(), 1, "one connection: no retry hid a failure");
    engine.close_idle();
    engine.shutdown();
    assert!(engine.stats().is_idle(), "{:#?}", engine.stats());
    conns[0]
        .tls
        .as_ref()
        .and_then(|t| t.key_exchange.clone())
        .expect("a TLS 1.3 key exchange")
}

#[test]
fn the_hybrid_post_quantum_group_is_negotiated_when_both_sides_have_it() {
    let group = negotiated(true);
    if cfg!(all(feature = "aws-lc-rs", not(feature = "fips"))) {
        assert_eq!(group, "X25519MLKEM768");
    } else {
        assert_eq!(group, "X25519", "ring has no post-quantum group");
    }
}

#[test]
fn with_post_quantum_off_x25519_is_negotiated() {
    assert_eq!(negotiated(false), "X25519");
}

#[test]
fn the_provider_in_use_is_named() {
    let expected = if cfg!(feature = "fips") {
        "aws-lc-rs (FIPS)"
    } else if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs"
    } else {
        "ring"
    };
    assert_eq!(rotary::CRYPTO_PROVIDER, expected);
}
