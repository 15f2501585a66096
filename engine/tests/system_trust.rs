//! The host's trust store (`Trust::system`, the default): `SSL_CERT_FILE` is
//! honoured, and an internal CA rotated by rewriting that bundle is trusted
//! by the next connection with no restart; a broken rewrite keeps the
//! previous anchors and says so.
//!
//! One test in this file only: it sets process-wide environment variables,
//! which no other test may see change under it.

mod driver;
mod support;

use std::time::Duration;

use driver::*;
use rotary::{Config, Engine, Error, Event, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn an_ssl_cert_file_bundle_is_the_default_trust_and_is_re_read_when_rewritten() {
    assert_eq!(Trust::default(), Trust::system());
    let old_ca = TestCa::new("internal CA 1");
    let new_ca = TestCa::new("internal CA 2");
    let server = TestServer::tls(&old_ca.issue(&["localhost", "127.0.0.1"]), |_, _| {
        Reply::ok("trusted")
    });
    let bundle = TempFile::new("system-bundle.pem", old_ca.cert_pem().as_bytes());
    std::env::set_var("SSL_CERT_FILE", bundle.path());
    std::env::remove_var("SSL_CERT_DIR");

    let mut engine = Engine::new(Config::default()).expect("the bundle has a certificate");
    let get_once = |engine: &mut Engine| {
        let id = engine.submit(get(&server.url("/")), RequestOptions::default());
        let out = finish(engine, &[id], T);
        engine.close_idle();
        out
    };
    let id_out = get_once(&mut engine);
    let ok = id_out
        .events
        .iter()
        .any(|e| matches!(e, Event::Response { .. }));
    assert!(
        ok,
        "the system store (SSL_CERT_FILE) is trusted: {:?}",
        id_out.events
    );

    // The internal CA rotates: the server moves to a leaf of the new CA...
    server.rotate_to(&new_ca.issue(&["localhost", "127.0.0.1"]));
    let out = get_once(&mut engine);
    let failed = out.events.iter().any(|e| {
        matches!(
            e,
            Event::Failed {
                error: Error::Tls { .. },
                ..
            }
        )
    });
    assert!(failed, "the new CA is not trusted yet: {:?}", out.events);

    // ...and the hosts get the new bundle: no restart needed.
    bundle.replace(new_ca.cert_pem().as_bytes());
    let out = get_once(&mut engine);
    let ok = out
        .events
        .iter()
        .any(|e| matches!(e, Event::Response { .. }));
    assert!(ok, "the rewritten bundle is trusted: {:?}", out.events);

    // A broken rewrite keeps the anchors it had and raises one TrustError.
    bundle.replace(b"-----BEGIN CERTIFICATE-----\nhalf a certif");
    let out = get_once(&mut engine);
    let ok = out
        .events
        .iter()
        .any(|e| matches!(e, Event::Response { .. }));
    let errors = out
        .events
        .iter()
        .filter(|e| matches!(e, Event::TrustError { .. }))
        .count();
    assert!(ok, "the previous anchors stay: {:?}", out.events);
    assert_eq!(errors, 1, "{:?}", out.events);
    assert_drained(&mut engine);
    drop(engine);

    // A store the user names but that holds nothing is refused at build.
    let empty = TempFile::new("empty-bundle.pem", b"");
    std::env::set_var("SSL_CERT_FILE", empty.path());
    let err = Engine::new(Config::default()).expect_err("no anchors, no engine");
    assert!(matches!(err, rotary::BuildError::Trust { .. }), "{err:?}");
    assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
    std::env::remove_var("SSL_CERT_FILE");
}
