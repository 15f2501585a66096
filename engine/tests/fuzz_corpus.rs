//! Replays the `engine` fuzz target's corpus (fuzz/corpus/engine) through
//! the same harness, plus random scripts, so CI exercises the whole engine
//! against scripted peers on every run.

mod support;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use rotary::fuzzing::{run_script_with, CredentialWrite};
use support::*;

/// What every script shares. No file lives here: a static is never dropped,
/// so a CA file it held would outlast the test process.
struct Setup {
    server: Arc<rustls::ServerConfig>,
    ca_pem: String,
    /// Another root, for anchor changes.
    other_root_pem: String,
    /// A CRL of the CA listing nothing, and one revoking the peer's leaf.
    crl_empty: String,
    crl_revoking: String,
    /// Two client identities (certificate, key).
    identities: [(String, String); 2],
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
        let next_update = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
        let clients = TestCa::new("rotary fuzz client CA");
        let identity = |cn: &str| {
            let c = clients.issue_client(cn);
            (c.chain_pem(), c.key_pem())
        };
        Setup {
            server: Arc::new(server),
            ca_pem: ca.root_pem(),
            other_root_pem: TestCa::new("rotary fuzz other root").root_pem(),
            crl_empty: ca.crl_pem(&[], next_update),
            crl_revoking: ca.crl_pem(&[&leaf], next_update),
            identities: [identity("runner-1"), identity("runner-2")],
        }
    })
}

/// Runs one script trusting the CA through a PEM file, as the fuzz target
/// does, with a CRL file and a client identity whose new versions the
/// script's credential ops install (see [`writes`]); the files live for
/// this run only.
fn run(data: &[u8]) -> rotary::fuzzing::Report {
    let s = setup();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut trust = rotary::Trust::pem_file(file("ca.pem", &s.ca_pem));
    trust.crl_files = vec![file("ca.crl", &s.crl_empty)];
    trust.client_identity = Some(rotary::ClientIdentity {
        cert_chain: file("tls.crt", &s.identities[0].0),
        key: file("tls.key", &s.identities[0].1),
    });
    trust.check_interval = std::time::Duration::from_millis(5);
    run_script_with(data, Some(s.server.clone()), trust, &writes(dir.path()))
}

/// The credential changes op `0xF0 + i` installs (`i` modulo their count):
/// 0 a second root beside the CA (the chain still verifies), 1 the other
/// root alone (it does not), 2 the CA again, 3 a list revoking the peer's
/// leaf, 4 an empty list, 5 a list that does not parse, 6 and 7 a new
/// identity's certificate and key (half a renewal after the first), 8 and
/// 9 the first identity's.
fn writes(dir: &Path) -> Vec<CredentialWrite> {
    let s = setup();
    let w = |name: &str, text: &str| CredentialWrite {
        path: dir.join(name),
        contents: text.as_bytes().to_vec(),
    };
    vec![
        w("ca.pem", &format!("{}{}", s.ca_pem, s.other_root_pem)),
        w("ca.pem", &s.other_root_pem),
        w("ca.pem", &s.ca_pem),
        w("ca.crl", &s.crl_revoking),
        w("ca.crl", &s.crl_empty),
        w(
            "ca.crl",
            "-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n",
        ),
        w("tls.crt", &s.identities[1].0),
        w("tls.key", &s.identities[1].1),
        w("tls.crt", &s.identities[0].0),
        w("tls.key", &s.identities[0].1),
    ]
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

#[test]
fn scripted_credential_changes_reach_the_expected_outcomes() {
    // A revocation of the peer's leaf while a GET waits for its answer:
    // the connection closes at once and the request fails.
    let r = run(&[1, 0, 0, 6, 1, 0xF3, 0, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed, r.invalidated), (1, 0, 1, 1));
    // Answered first, then revoked: the idle connection closes, and the
    // next GET's new connection is refused at its handshake.
    let r = run(&[1, 0, 0, 6, 1, 9, 0, 0xF3, 0, 0, 0, 6, 1, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed, r.invalidated), (2, 1, 1, 1));
    // The CA's root removed while a GET waits: it is answered, and the
    // connection retires.
    let r = run(&[1, 0, 0, 6, 1, 0xF1, 0, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed, r.invalidated), (1, 1, 0, 1));
    // A second root beside the CA, and a list that does not parse: nothing
    // the live connection holds to moves, and it is reused.
    let r = run(&[1, 0, 0, 6, 1, 9, 0, 0xF0, 0, 0xF5, 0, 0, 0, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed, r.invalidated), (2, 2, 0, 0));
    // A new identity, whole: the connection is replaced (the replacement
    // joins, the old one retires).
    let r = run(&[1, 0, 0, 6, 1, 9, 0, 0xF6, 0, 0xF7, 0, 6, 1, 0, 0, 9, 0]);
    assert_eq!((r.submitted, r.ok, r.failed, r.invalidated), (2, 2, 0, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_scripts_keep_the_engine_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let r = run(&data);
        prop_assert_eq!(r.ok + r.failed, r.submitted);
    }
}
