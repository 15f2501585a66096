//! Credentials that change under a running engine, seen by the next
//! connection: revocation lists (`Trust::crl_files`) applied at every
//! handshake, a list that fails to parse keeping the last good one, a client
//! identity renewed half-way keeping the old one, and no session resumed
//! past a new list. Against the rustls test server, and against OpenSSL,
//! which nobody here wrote: `openssl ca` issues the certificates, revokes
//! them and publishes the lists, and `openssl s_server -Verify` requires the
//! client certificate. The OpenSSL tests need the `openssl` binary: with
//! `CI=true` (set by `.ci/run`, which installs it) a missing one fails them;
//! elsewhere they are skipped with a message on stderr.

mod driver;
mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use driver::*;
use rotary::{ClientIdentity, Config, Engine, Error, Event, Phase, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(86_400);

/// An engine trusting only `ca_file`, with the lists in `crls`.
fn engine_with(ca_file: &Path, crls: &[&Path], tweak: impl FnOnce(&mut Config)) -> Engine {
    let mut config = Config::default();
    config.trust = Trust::pem_file(ca_file);
    config.trust.crl_files = crls.iter().map(|p| p.to_path_buf()).collect();
    tweak(&mut config);
    Engine::new(config).expect("engine builds")
}

/// GET `url` to its end, with the events raised meanwhile.
fn fetch(engine: &mut Engine, url: &str) -> (rotary::RequestId, Outcome) {
    let id = engine.submit(get(url), RequestOptions::default().deadline(T));
    let out = finish(engine, &[id], T);
    (id, out)
}

fn trust_errors(out: &Outcome) -> Vec<(std::path::PathBuf, String)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::TrustError { path, reason } => Some((path.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

/// Replace `path` the way a careful tool does: write a sibling, rename it over.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename over");
}

// ------------------------------------------------------- the test server

#[test]
fn a_revoked_leaf_fails_the_handshake_naming_it_and_a_new_list_is_used_by_the_next_connection() {
    let (ca, leaf) = ca_and_leaf();
    let other = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("served"));
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[&other], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.policy.max_requests = Some(1)
    });
    let (id, out) = fetch(&mut engine, &server.url("/"));
    assert_eq!(
        out.response(id).body(),
        "served",
        "another serial is listed"
    );

    crl.replace(
        ca.crl_pem(&[&other, &leaf], SystemTime::now() + DAY)
            .as_bytes(),
    );
    let (id, out) = fetch(&mut engine, &server.url("/"));
    let err = out.error(id);
    let revoked = err.revoked().unwrap_or_else(|| panic!("named: {err:?}"));
    assert_eq!(revoked.subject, "CN=localhost");
    assert_eq!(revoked.serial, leaf.serial_hex());
    assert_eq!(err.phase(), Phase::Tls);
    let text = err.to_string();
    assert!(text.contains(&leaf.serial_hex()), "{text}");
    let connect_failed = out.events.iter().any(
        |e| matches!(e, Event::ConnectFailed { error, .. } if error.revoked() == Some(revoked)),
    );
    assert!(
        connect_failed,
        "the host hears of it even without a request"
    );
    assert_drained(&mut engine);
}

#[test]
fn a_resumed_session_does_not_carry_a_chain_past_a_new_list() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .resumption(Resumption::Tickets)
        .handler(|_, _| Reply::ok("served"))
        .start();
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.policy.resumption = rotary::Resumption::WithinMaxAge;
        c.policy.max_requests = Some(1);
    });
    for expected in [rotary::Handshake::Full, rotary::Handshake::Resumed] {
        let (id, out) = fetch(&mut engine, &server.url("/"));
        assert_eq!(out.response(id).body(), "served");
        let info = out.opened().pop().expect("a new connection each time");
        assert_eq!(info.handshake, Some(expected));
    }
    // A resumed session would skip the certificate, and so the list.
    crl.replace(ca.crl_pem(&[&leaf], SystemTime::now() + DAY).as_bytes());
    let (id, out) = fetch(&mut engine, &server.url("/"));
    assert_eq!(
        out.error(id).revoked().map(|r| r.serial.clone()),
        Some(leaf.serial_hex())
    );
    assert_drained(&mut engine);
}

// ------------------------------------------------------------- OpenSSL

/// OpenSSL's CA with a server leaf, and `s_server` presenting it and
/// requiring client certificates from the same CA.
struct Peer {
    ca: OpensslCa,
    server_cert: OpensslCert,
    server: SServer,
    dir: tempfile::TempDir,
}

fn peer(openssl: &Path) -> Peer {
    let ca = OpensslCa::new(openssl, "rotary openssl CA");
    let server_cert = ca.issue_server("localhost");
    let server = SServer::start(openssl, &server_cert, Some(&ca.cert_path()));
    let dir = tempfile::tempdir().expect("temp dir");
    Peer {
        ca,
        server_cert,
        server,
        dir,
    }
}

/// Copy `cert`'s certificate and key to `dir`'s `tls.crt` and `tls.key`
/// (each replaced whole), returning the identity that names them.
fn identity_files(dir: &Path) -> ClientIdentity {
    ClientIdentity {
        cert_chain: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

fn install_cert(id: &ClientIdentity, cert: &OpensslCert) {
    replace(
        &id.cert_chain,
        &std::fs::read(&cert.cert).expect("read cert"),
    );
}

fn install_key(id: &ClientIdentity, cert: &OpensslCert) {
    replace(&id.key, &std::fs::read(&cert.key).expect("read key"));
}

/// The client certificate s_server's status page names (its subject line).
fn client_seen(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.contains("no client certificate available") {
        return "none".into();
    }
    text.lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| panic!("no client certificate on the status page:\n{text}"))
}

#[test]
fn openssl_s_server_requiring_client_certificates_gets_ours() {
    let Some(openssl) = openssl() else {
        return;
    };
    let p = peer(&openssl);
    let runner = p.ca.issue_client("runner-1");
    let id = identity_files(p.dir.path());
    install_cert(&id, &runner);
    install_key(&id, &runner);
    let mut engine = engine_with(&p.ca.cert_path(), &[], |c| {
        c.trust.client_identity = Some(id.clone())
    });
    let (rid, out) = fetch(&mut engine, &p.server.url("/"));
    let body = out.response(rid).body();
    assert_eq!(
        client_seen(body),
        "Subject: CN=runner-1",
        "{}",
        p.server.log()
    );
    assert_drained(&mut engine);

    // Without one, s_server ends the handshake.
    let mut anonymous = engine_with(&p.ca.cert_path(), &[], |_| {});
    let (rid, out) = fetch(&mut anonymous, &p.server.url("/"));
    assert!(
        matches!(out.error(rid), Error::Tls { .. } | Error::PeerClosed { .. }),
        "{:?}",
        out.error(rid)
    );
    assert_drained(&mut anonymous);
}

#[test]
fn a_server_leaf_revoked_by_openssl_ca_fails_the_handshake_naming_it() {
    let Some(openssl) = openssl() else {
        return;
    };
    let p = peer(&openssl);
    let runner = p.ca.issue_client("runner-1");
    let id = identity_files(p.dir.path());
    install_cert(&id, &runner);
    install_key(&id, &runner);
    let before = p.dir.path().join("before.crl");
    p.ca.crl_pem(&before);
    p.ca.revoke(&p.server_cert);
    let (pem, der) = (p.dir.path().join("ca.crl.pem"), p.dir.path().join("ca.crl"));
    p.ca.crl_pem(&pem);
    p.ca.crl_der(&der);

    // The list from before the revocation lets the handshake through.
    let mut engine = engine_with(&p.ca.cert_path(), &[&before], |c| {
        c.trust.client_identity = Some(id.clone())
    });
    let (rid, out) = fetch(&mut engine, &p.server.url("/"));
    assert_eq!(out.response(rid).status(), 200);
    assert_drained(&mut engine);

    for list in [&pem, &der] {
        let mut engine = engine_with(&p.ca.cert_path(), &[list], |c| {
            c.trust.client_identity = Some(id.clone())
        });
        let (rid, out) = fetch(&mut engine, &p.server.url("/"));
        let err = out.error(rid);
        let revoked = err
            .revoked()
            .unwrap_or_else(|| panic!("{}: not named: {err:?}", list.display()));
        assert_eq!(revoked.subject, "CN=localhost");
        assert_eq!(
            revoked.serial, p.server_cert.serial,
            "the serial openssl ca gave"
        );
        assert_eq!(err.phase(), Phase::Tls);
        assert_drained(&mut engine);
    }
}

#[test]
fn a_crl_that_fails_to_parse_keeps_the_last_good_one_and_raises_one_trust_error() {
    let Some(openssl) = openssl() else {
        return;
    };
    let p = peer(&openssl);
    let runner = p.ca.issue_client("runner-1");
    let id = identity_files(p.dir.path());
    install_cert(&id, &runner);
    install_key(&id, &runner);
    let unrevoked = p.dir.path().join("unrevoked.crl");
    p.ca.crl_pem(&unrevoked);
    p.ca.revoke(&p.server_cert);
    let list = p.dir.path().join("ca.crl");
    p.ca.crl_pem(&list);
    let mut engine = engine_with(&p.ca.cert_path(), &[&list], |c| {
        c.trust.client_identity = Some(id.clone())
    });
    let revoked = |engine: &mut Engine| {
        let (rid, out) = fetch(engine, &p.server.url("/"));
        let serial = out.error(rid).revoked().map(|r| r.serial.clone());
        assert_eq!(serial.as_deref(), Some(p.server_cert.serial.as_str()));
        trust_errors(&out)
    };
    assert!(revoked(&mut engine).is_empty());

    replace(
        &list,
        b"-----BEGIN X509 CRL-----\nnot a list at all\n-----END X509 CRL-----\n",
    );
    let mut errors = revoked(&mut engine);
    errors.extend(revoked(&mut engine));
    assert_eq!(errors.len(), 1, "one event per bad version: {errors:?}");
    assert_eq!(errors[0].0, list);

    // A good list again is used (this one is from before the revocation).
    replace(&list, &std::fs::read(&unrevoked).expect("read"));
    let (rid, out) = fetch(&mut engine, &p.server.url("/"));
    assert_eq!(out.response(rid).status(), 200);
    assert!(trust_errors(&out).is_empty());
    assert_drained(&mut engine);
}

#[test]
fn a_half_written_identity_renewal_keeps_the_old_identity() {
    let Some(openssl) = openssl() else {
        return;
    };
    let p = peer(&openssl);
    let (old, new) = (
        p.ca.issue_client("runner-old"),
        p.ca.issue_client("runner-new"),
    );
    let id = identity_files(p.dir.path());
    install_cert(&id, &old);
    install_key(&id, &old);
    let mut engine = engine_with(&p.ca.cert_path(), &[], |c| {
        c.trust.client_identity = Some(id.clone())
    });
    let seen = |engine: &mut Engine| {
        let (rid, out) = fetch(engine, &p.server.url("/"));
        let body = out.response(rid).body().clone();
        (client_seen(&body), trust_errors(&out))
    };
    let (subject, errors) = seen(&mut engine);
    assert_eq!(subject, "Subject: CN=runner-old");
    assert!(errors.is_empty());

    // The renewal's certificate is written; its key is not yet.
    install_cert(&id, &new);
    let (subject, errors) = seen(&mut engine);
    assert_eq!(
        subject, "Subject: CN=runner-old",
        "the old identity stays whole"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, id.key);
    assert!(errors[0].1.contains("does not belong"), "{}", errors[0].1);
    let (subject, errors) = seen(&mut engine);
    assert_eq!(subject, "Subject: CN=runner-old");
    assert!(errors.is_empty(), "reported once");

    install_key(&id, &new);
    let (subject, errors) = seen(&mut engine);
    assert_eq!(subject, "Subject: CN=runner-new");
    assert!(errors.is_empty());
    assert_drained(&mut engine);
}
