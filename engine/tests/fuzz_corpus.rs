//! Replays the `engine` fuzz target's corpus (fuzz/corpus/engine) through
//! the same harness, plus random scripts, so CI exercises the whole engine
//! against scripted peers on every run.

mod support;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use rotary::fuzzing::run_script;
use support::*;

/// What every script shares. No file lives here: a static is never dropped,
/// so a CA file it held would outlast the test process.
struct Setup {
    server: Arc<rustls::ServerConfig>,
    ca_pem: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (ca, leaf) = ca_and_leaf();
        let provider = Arc::new(rotary::crypto_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain_der(), leaf.key_der())
            .expect("server config");
        Setup {
            server: Arc::new(server),
            ca_pem: ca.root_pem(),
        }
    })
}

/// Runs one script trusting the CA through a PEM file, as the fuzz target
/// does; the file lives for this run only.
fn run(data: &[u8]) -> rotary::fuzzing::Report {
    let s = setup();
    let ca_file = TempFile::new("ca.pem", s.ca_pem.as_bytes());
    run_script(
        data,
        Some(s.server.clone()),
        rotary::Trust::pem_file(ca_file.path()),
    )
}

#[test]
fn engine_fuzz_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/engine");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        run(&data);
        files += 1;
    }
    assert!(files >= 10, "corpus has only {files} files");
}

#[test]
fn scripted_exchanges_reach_the_expected_outcomes() {
    // Plain GET answered: one response.
    let r = run(&[0, 0, 0, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // The same over TLS (the peer answers after the handshake).
    let r = run(&[1, 0, 0, 6, 1, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // Garbage instead of a status line: the request fails.
    let r = run(&[0, 0, 0, 3, 5, b'x', b'y', b'z', b'\r', b'\n']);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 0, 1));
    // A request left waiting ends at shutdown.
    let r = run(&[0, 0, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 0, 1));
}

#[test]
fn scripted_streamed_bodies_reach_the_expected_outcomes() {
    // A fed, chunked PUT: "abc", ended; answered.
    let r = run(&[0, 12, 0, 13, 3, b'a', b'b', b'c', 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // Declared 10 bytes, fed 3 and ended: the request fails.
    let r = run(&[0, 12, 1 | 10 << 1, 13, 3, b'a', b'b', b'c', 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 0, 1));
    // A fed body never ended, answered early: the response ends it.
    let r = run(&[0, 12, 0, 13, 1, b'a', 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // Fed, then nothing: the send stall (20 ms) fails it.
    let r = run(&[0, 12, 0, 13, 1, b'a', 6, 50]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 0, 1));
    // Expect: 100-continue with a bytes body, the peer says 100 then 200.
    let mut script = vec![0, 15, 0x80, 3, 25];
    script.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    script.extend_from_slice(&[9, 0]);
    let r = run(&script);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // A streamed GET consumed by hand through a one-byte window: the body
    // arrives as it is consumed, and the request ends.
    let r = run(&[0, 15, 0x40, 9, 0, 14, 0x80, 14, 0x80, 14, 0x80]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
    // Paused at once, never resumed: it ends only at shutdown.
    let r = run(&[0, 15, 0, 14, 0, 9, 0, 6, 100]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 0, 1));
    // Paused, then resumed: the response arrives (its end once the host
    // has taken the body and the engine had a turn, here a clock tick).
    let r = run(&[0, 15, 0, 14, 0, 9, 0, 14, 0x40, 6, 1]);
    assert_eq!((r.submitted, r.ok, r.failed), (1, 1, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_scripts_keep_the_engine_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let r = run(&data);
        prop_assert_eq!(r.ok + r.failed, r.submitted);
    }
}
