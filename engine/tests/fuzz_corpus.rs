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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_scripts_keep_the_engine_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let r = run(&data);
        prop_assert_eq!(r.ok + r.failed, r.submitted);
    }
}
