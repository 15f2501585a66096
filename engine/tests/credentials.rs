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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use driver::*;
use rotary::{
    ClientIdentity, CloseReason, Config, ConnId, CredentialReason, Engine, Error, Event,
    OnRevocation, Phase, RequestOptions, Trust,
};
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
    trust_errors_in(&out.events)
}

fn trust_errors_in(events: &[Event]) -> Vec<(std::path::PathBuf, String)> {
    events
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

// ------------------------------------------------ live connections (epochs)

/// How often the engines below look at their credential files.
const CHECK: Duration = Duration::from_millis(20);

/// The `CredentialsInvalid` events among `events`: (connection, reason, detail).
fn invalid(events: &[Event]) -> Vec<(ConnId, CredentialReason, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CredentialsInvalid {
                conn,
                reason,
                detail,
                ..
            } => Some((*conn, *reason, detail.clone())),
            _ => None,
        })
        .collect()
}

/// Why connection `conn` closed, if it did among `events`.
fn closed(events: &[Event], conn: ConnId) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed {
            conn: c, reason, ..
        } if *c == conn => Some(*reason),
        _ => None,
    })
}

fn served_by(out: &Outcome, id: rotary::RequestId) -> rotary::ServedBy {
    match out.event(id) {
        Event::Response { served_by, .. } => served_by.clone(),
        other => panic!("not a response: {other:?}"),
    }
}

/// The root a chain's verified path ends at.
fn anchor_of(chain: &rotary::PeerChain) -> rustls::pki_types::CertificateDer<'static> {
    chain
        .verified_path()
        .and_then(|p| p.anchor().certificate())
        .expect("a verified path to a certificate anchor")
        .clone()
}

/// The terminal event of `id`, waited for (it may be among `seen` already).
fn end_of(engine: &mut Engine, seen: &mut Vec<Event>, id: rotary::RequestId) -> Event {
    until_seen(engine, seen, T, |e| {
        e.is_terminal() && e.request_id() == Some(id)
    });
    let at = seen
        .iter()
        .position(|e| e.is_terminal() && e.request_id() == Some(id))
        .expect("waited for it");
    seen.remove(at)
}

/// The body and server of a response event.
fn answered(e: &Event) -> (String, rotary::ServedBy) {
    match e {
        Event::Response {
            response,
            served_by,
            ..
        } => (
            String::from_utf8_lossy(response.body()).into_owned(),
            served_by.clone(),
        ),
        other => panic!("not a response: {other:?}"),
    }
}

/// Keep polling until `pred` matches an event, collecting into `seen`.
fn wait_event(engine: &mut Engine, seen: &mut Vec<Event>, pred: impl Fn(&Event) -> bool) {
    until_seen(engine, seen, T, pred);
}

/// The client certificate (leaf) each request the server saw came with,
/// with the server's connection id, in order.
fn client_leaves(server: &TestServer) -> Vec<(u64, Vec<u8>)> {
    server
        .requests()
        .iter()
        .map(|r| {
            let leaf = server
                .connection(r.conn_id)
                .and_then(|c| c.tls)
                .and_then(|t| t.client_chain)
                .and_then(|c| c.first().map(|d| d.to_vec()))
                .unwrap_or_default();
            (r.conn_id, leaf)
        })
        .collect()
}

/// A client identity in `dir` (tls.crt, tls.key) as one renewal tool or
/// another writes it.
#[derive(Clone, Copy, Debug)]
enum Renewal {
    /// Each file renamed over the old one, the certificate first.
    Rename,
    /// A Kubernetes secret volume: `tls.crt -> ..data/tls.crt`, and the
    /// `..data` link swapped to a new directory in one rename.
    SymlinkSwap,
}

struct IdentityDir {
    dir: tempfile::TempDir,
    how: Renewal,
    version: u32,
}

impl IdentityDir {
    fn new(how: Renewal, first: &Issued) -> IdentityDir {
        let mut d = IdentityDir {
            dir: tempfile::tempdir().expect("temp dir"),
            how,
            version: 0,
        };
        d.install(first);
        d
    }

    fn files(&self) -> ClientIdentity {
        identity_files(self.dir.path())
    }

    fn install(&mut self, id: &Issued) {
        self.version += 1;
        let root = self.dir.path();
        match self.how {
            Renewal::Rename => {
                replace(&root.join("tls.crt"), id.chain_pem().as_bytes());
                replace(&root.join("tls.key"), id.key_pem().as_bytes());
            }
            Renewal::SymlinkSwap => id.install_as_secret(root, &self.version.to_string()),
        }
    }
}

/// An engine with a client identity, looking at its files every [`CHECK`].
fn mtls_engine(
    ca_file: &Path,
    crls: &[&Path],
    id: ClientIdentity,
    tweak: impl FnOnce(&mut Config),
) -> Engine {
    engine_with(ca_file, crls, |c| {
        c.trust.client_identity = Some(id);
        c.trust.check_interval = CHECK;
        tweak(c);
    })
}

/// A server for `leaf` requiring client certificates of `clients`; `/poll`
/// is answered after `hold`.
fn mtls_server(leaf: &Issued, clients: &TestCa, hold: Duration) -> TestServer {
    TestServer::builder()
        .tls(leaf)
        .require_client_cert(clients.root_der())
        .handler(move |req, _| match req.path() {
            "/poll" => Reply::ok("job").delay(hold),
            _ => Reply::ok("served"),
        })
        .start()
}

fn identity_rotation_with_a_long_poll_in_flight(how: Renewal) {
    let (ca, leaf) = ca_and_leaf();
    let clients = TestCa::new("rotary test client CA");
    let (r1, r2) = (
        clients.issue_client("runner-1"),
        clients.issue_client("runner-2"),
    );
    let server = mtls_server(&leaf, &clients, Duration::from_millis(400));
    let ca_file = ca.write_pem_file();
    let mut ids = IdentityDir::new(how, &r1);
    let mut engine = mtls_engine(ca_file.path(), &[], ids.files(), |_| {});
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let old = served_by(&out, first).conn;
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || server.stats().requests >= 2);

    ids.install(&r2);
    let mut seen = Vec::new();
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::CredentialsInvalid { conn, .. } if *conn == old),
    );
    let opened: Vec<ConnId> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Opened(info) => Some(info.conn),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1, "one replacement, made first: {seen:#?}");
    let new = opened[0];
    let (_, reason, detail) = invalid(&seen).remove(0);
    assert_eq!(reason, CredentialReason::IdentityRotated);
    assert!(detail.contains("CN=runner-2"), "{detail}");
    assert_eq!(closed(&seen, old), None, "the long poll still runs on it");

    // The long poll finishes where it was; then the old connection closes.
    let (body, by) = answered(&end_of(&mut engine, &mut seen, poll));
    assert_eq!((body.as_str(), by.conn), ("job", old));
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn, .. } if *conn == old),
    );
    assert_eq!(closed(&seen, old), Some(CloseReason::Credentials));

    // The next request goes to the replacement, which presents runner-2.
    let (next, out) = fetch(&mut engine, &server.url("/"));
    assert_eq!(served_by(&out, next).conn, new);
    let leaves = client_leaves(&server);
    assert_eq!(leaves.len(), 3);
    assert_eq!(leaves[0].1, r1.cert_der().to_vec());
    assert_eq!(leaves[1], leaves[0], "the long poll, on the old connection");
    assert_eq!(leaves[2].1, r2.cert_der().to_vec());
    assert_ne!(leaves[2].0, leaves[0].0);
    let errors = trust_errors_in(&seen);
    // A rename of the certificate before the key may be seen half-way: it
    // is refused (the key is not the certificate's), never presented.
    assert!(
        errors
            .iter()
            .all(|(p, why)| p == &ids.files().key && why.contains("does not belong")),
        "{errors:?}"
    );
    if matches!(how, Renewal::SymlinkSwap) {
        assert!(errors.is_empty(), "a link swap is atomic: {errors:?}");
    }
    let stats = engine.stats();
    assert_eq!(
        stats.credentials_invalid(CredentialReason::IdentityRotated),
        1
    );
    assert_eq!(stats.closed(CloseReason::Credentials), 1);
    assert_drained(&mut engine);
}

#[test]
fn an_identity_renewed_by_rename_replaces_live_connections_make_before_break() {
    identity_rotation_with_a_long_poll_in_flight(Renewal::Rename);
}

#[test]
fn an_identity_renewed_by_a_secret_volume_link_swap_replaces_live_connections() {
    identity_rotation_with_a_long_poll_in_flight(Renewal::SymlinkSwap);
}

#[test]
fn a_revoked_edge_closes_at_once_failing_its_request_and_the_queued_one_gets_a_new_connection() {
    let (ca, l1) = ca_and_leaf();
    let l2 = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&l1, |req, _| match req.path() {
        "/poll" => Reply::ok("job").delay(Duration::from_secs(5)),
        _ => Reply::ok("served"),
    });
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.trust.check_interval = CHECK;
        c.policy.max_connections = 1;
    });
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let old = served_by(&out, first).conn;
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || server.stats().requests >= 2);
    // It waits: the one connection allowed carries the long poll.
    let queued = engine.submit(get(&server.url("/")), RequestOptions::default().deadline(T));
    server.rotate_to(&l2);
    crl.replace(ca.crl_pem(&[&l1], SystemTime::now() + DAY).as_bytes());

    let out = finish(&mut engine, &[poll, queued], T);
    match out.error(poll) {
        Error::Revoked { certificate, phase } => {
            assert_eq!(certificate.serial, l1.serial_hex());
            assert_eq!(certificate.subject, "CN=localhost");
            assert_eq!(*phase, Phase::ResponseHead);
        }
        other => panic!("not Revoked: {other:?}"),
    }
    assert!(out.error(poll).to_string().contains(&l1.serial_hex()));
    let by = served_by(&out, queued);
    assert_ne!(by.conn, old, "a new connection");
    assert_eq!(by.chain.expect("chain").der()[0], l2.cert_der());
    let inv = invalid(&out.events);
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!((inv[0].0, inv[0].1), (old, CredentialReason::Revoked));
    assert!(inv[0].2.contains(&l1.serial_hex()), "{}", inv[0].2);
    assert_eq!(closed(&out.events, old), Some(CloseReason::Credentials));
    // The server never saw another request on the revoked connection.
    assert_eq!(server.requests_on(1).len(), 2);
    let stats = engine.stats();
    assert_eq!(stats.credentials_invalid(CredentialReason::Revoked), 1);
    let text = stats.to_prometheus();
    assert!(
        text.contains("rotary_credentials_invalid_total{reason=\"revoked\"} 1"),
        "{text}"
    );
    assert_drained(&mut engine);
}

#[test]
fn with_on_revocation_retire_a_revoked_edge_finishes_its_exchange_then_closes() {
    let (ca, l1) = ca_and_leaf();
    let server = TestServer::tls(&l1, |req, _| match req.path() {
        "/poll" => Reply::ok("job").delay(Duration::from_millis(300)),
        _ => Reply::ok("served"),
    });
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.trust.check_interval = CHECK;
        c.policy.on_revocation = OnRevocation::Retire;
    });
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let old = served_by(&out, first).conn;
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || server.stats().requests >= 2);
    crl.replace(ca.crl_pem(&[&l1], SystemTime::now() + DAY).as_bytes());
    let mut seen = Vec::new();
    wait_event(&mut engine, &mut seen, |e| {
        matches!(e, Event::CredentialsInvalid { .. })
    });
    assert_eq!(invalid(&seen)[0].1, CredentialReason::Revoked);
    let (body, _) = answered(&end_of(&mut engine, &mut seen, poll));
    assert_eq!(body, "job", "it finished");
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn, .. } if *conn == old),
    );
    assert_eq!(closed(&seen, old), Some(CloseReason::Credentials));
    assert_drained(&mut engine);
}

#[test]
fn a_removed_root_retires_the_connections_it_anchored_and_moves_the_path_of_the_others() {
    let (root_a, root_b) = (TestCa::new("Root A"), TestCa::new("Root B"));
    // X: a leaf under an intermediate cross-signed by both roots; the
    // server sends both versions of it.
    let mid = root_a.intermediate("Mid");
    let leaf_x = mid.issue(&["localhost", "127.0.0.1"]);
    let mut chain = leaf_x.chain_der();
    chain.push(mid.cross_signed_by(&root_b));
    let x = TestServer::builder()
        .tls_chain(chain, leaf_x.key_der())
        .handler(|_, _| Reply::ok("x"))
        .start();
    // Y: a leaf under root A alone.
    let y = TestServer::tls(
        &root_a.issue(&["localhost", "127.0.0.1"]),
        |req, _| match req.path() {
            "/poll" => Reply::ok("job").delay(Duration::from_millis(400)),
            _ => Reply::ok("y"),
        },
    );
    let ca_file = TempFile::new(
        "ca.pem",
        format!("{}{}", root_a.root_pem(), root_b.root_pem()).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[], |c| c.trust.check_interval = CHECK);
    let (xid, out) = fetch(&mut engine, &x.url("/"));
    let x_by = served_by(&out, xid);
    assert_eq!(
        anchor_of(x_by.chain.as_ref().expect("chain")),
        root_a.root_der()
    );
    let (yid, out) = fetch(&mut engine, &y.url("/"));
    let y_conn = served_by(&out, yid).conn;
    let poll = engine.submit(get(&y.url("/poll")), RequestOptions::default().deadline(T));
    pump_until(&mut engine, T, || y.stats().requests >= 2);

    // Root A is distrusted.
    ca_file.replace(root_b.root_pem().as_bytes());
    let mut seen = Vec::new();
    wait_event(&mut engine, &mut seen, |e| {
        matches!(e, Event::CredentialsInvalid { .. })
    });
    let inv = invalid(&seen);
    assert_eq!(inv.len(), 1, "only Y's connection: {inv:?}");
    assert_eq!(
        (inv[0].0, inv[0].1),
        (y_conn, CredentialReason::AnchorRemoved)
    );
    assert!(inv[0].2.contains("no longer verifies"), "{}", inv[0].2);
    // The long poll on it finishes; then it closes.
    let (body, _) = answered(&end_of(&mut engine, &mut seen, poll));
    assert_eq!(body, "job");
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn, .. } if *conn == y_conn),
    );
    assert_eq!(closed(&seen, y_conn), Some(CloseReason::Credentials));
    assert_eq!(y.requests_on(1).len(), 2, "nothing sent after the change");

    // X's connection still verifies, now through root B: it is reused, and
    // its chain (and the origin's, for a job's CA bundle) ends at B.
    let (again, out) = fetch(&mut engine, &x.url("/"));
    let by = served_by(&out, again);
    assert_eq!((by.conn, by.reused), (x_by.conn, true));
    let moved = by.chain.expect("chain");
    assert_eq!(anchor_of(&moved), root_b.root_der());
    assert!(moved
        .ca_bundle()
        .expect("bundle")
        .contains(&root_b.root_pem().trim().to_owned()));
    let origin = rotary::Origin::parse(&x.url("/")).expect("origin");
    assert_eq!(
        anchor_of(&engine.peer_chain(&origin).expect("chain")),
        root_b.root_der()
    );

    // A new connection to Y does not verify any more.
    let (fail, out) = fetch(&mut engine, &y.url("/"));
    assert!(
        matches!(
            out.error(fail),
            Error::Tls {
                phase: Phase::Tls,
                ..
            }
        ),
        "{:?}",
        out.error(fail)
    );
    assert_eq!(
        engine
            .stats()
            .credentials_invalid(CredentialReason::AnchorRemoved),
        1
    );
    assert_drained(&mut engine);
}

#[test]
fn a_revocation_during_a_handshake_judges_the_connection_as_it_becomes_ready() {
    let (ca, l1) = ca_and_leaf();
    let l2 = ca.issue(&["localhost", "127.0.0.1"]);
    let gates = Arc::new((AtomicBool::new(false), AtomicBool::new(false)));
    let g = gates.clone();
    let server = TestServer::builder()
        .tls(&l1)
        .on_accept(move |info| {
            // The first connection's handshake waits for gate 0, later ones for gate 1.
            let gate = if info.id == 1 { &g.0 } else { &g.1 };
            wait_for(T, || gate.load(Ordering::SeqCst));
            Accept::Serve
        })
        .handler(|_, _| Reply::ok("served"))
        .start();
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.trust.check_interval = CHECK;
    });
    let id = engine.submit(get(&server.url("/")), RequestOptions::default().deadline(T));
    pump_until(&mut engine, T, || server.stats().connections_accepted >= 1);
    // Connected: the engine sends its hello and waits for the server's.
    for _ in 0..3 {
        engine.poll(Some(Duration::from_millis(10))).expect("poll");
    }
    crl.replace(ca.crl_pem(&[&l1], SystemTime::now() + DAY).as_bytes());
    // A few checks see the new list while the handshake waits.
    let settle = std::time::Instant::now() + CHECK * 5;
    let mut seen = pump_until(&mut engine, T, || std::time::Instant::now() >= settle);
    gates.0.store(true, Ordering::SeqCst);
    wait_event(&mut engine, &mut seen, |e| matches!(e, Event::Opened(_)));
    server.rotate_to(&l2);
    gates.1.store(true, Ordering::SeqCst);
    let out = finish(&mut engine, &[id], T);
    let by = match out.event(id) {
        Event::Response { served_by, .. } => served_by.clone(),
        other => panic!("{other:?}"),
    };
    seen.extend(out.events);
    let first = match &seen.iter().find(|e| matches!(e, Event::Opened(_))) {
        Some(Event::Opened(info)) => info.conn,
        _ => unreachable!("waited for it"),
    };
    let inv = invalid(&seen);
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!((inv[0].0, inv[0].1), (first, CredentialReason::Revoked));
    assert_eq!(closed(&seen, first), Some(CloseReason::Credentials));
    // The request was never sent on it: it went to the next connection.
    assert_ne!(by.conn, first);
    assert_eq!(by.chain.expect("chain").der()[0], l2.cert_der());
    assert!(server.requests_on(1).is_empty());
    assert_drained(&mut engine);
}

#[test]
fn two_changes_at_once_a_new_identity_and_a_revocation_close_the_connection_once() {
    let (ca, l1) = ca_and_leaf();
    let l2 = ca.issue(&["localhost", "127.0.0.1"]);
    let clients = TestCa::new("rotary test client CA");
    let (r1, r2) = (
        clients.issue_client("runner-1"),
        clients.issue_client("runner-2"),
    );
    let server = mtls_server(&l1, &clients, Duration::from_secs(5));
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut ids = IdentityDir::new(Renewal::SymlinkSwap, &r1);
    let mut engine = mtls_engine(ca_file.path(), &[crl.path()], ids.files(), |_| {});
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let old = served_by(&out, first).conn;
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || server.stats().requests >= 2);
    server.rotate_to(&l2);
    ids.install(&r2);
    crl.replace(ca.crl_pem(&[&l1], SystemTime::now() + DAY).as_bytes());

    let out = finish(&mut engine, &[poll], T);
    assert_eq!(
        out.error(poll).revoked().map(|c| c.serial.clone()),
        Some(l1.serial_hex())
    );
    let mut seen = out.events;
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn, .. } if *conn == old),
    );
    let inv: Vec<_> = invalid(&seen).into_iter().filter(|i| i.0 == old).collect();
    assert_eq!(inv.len(), 1, "one event for the connection: {inv:?}");
    assert_eq!(inv[0].1, CredentialReason::Revoked);
    let (next, out) = fetch(&mut engine, &server.url("/"));
    let by = served_by(&out, next);
    assert_eq!(by.chain.expect("chain").der()[0], l2.cert_der());
    let leaves = client_leaves(&server);
    assert_eq!(
        leaves.last().map(|l| l.1.clone()),
        Some(r2.cert_der().to_vec())
    );
    assert_drained(&mut engine);
}

#[test]
fn a_half_written_renewal_leaves_live_connections_alone_until_the_key_lands() {
    let (ca, leaf) = ca_and_leaf();
    let clients = TestCa::new("rotary test client CA");
    let (r1, r2) = (
        clients.issue_client("runner-1"),
        clients.issue_client("runner-2"),
    );
    let server = mtls_server(&leaf, &clients, Duration::ZERO);
    let ca_file = ca.write_pem_file();
    let ids = IdentityDir::new(Renewal::Rename, &r1);
    let files = ids.files();
    let mut engine = mtls_engine(ca_file.path(), &[], files.clone(), |_| {});
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let conn = served_by(&out, first).conn;

    // The certificate of the renewal, not yet its key: refused by the check
    // itself (no new connection asked), once.
    replace(&files.cert_chain, r2.chain_pem().as_bytes());
    let mut seen = Vec::new();
    wait_event(&mut engine, &mut seen, |e| {
        matches!(e, Event::TrustError { .. })
    });
    let settle = std::time::Instant::now() + CHECK * 5;
    seen.extend(pump_until(&mut engine, T, || {
        std::time::Instant::now() >= settle
    }));
    let errors = trust_errors_in(&seen);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, files.key);
    assert!(invalid(&seen).is_empty(), "{seen:#?}");
    let (again, out) = fetch(&mut engine, &server.url("/"));
    let by = served_by(&out, again);
    assert_eq!((by.conn, by.reused), (conn, true), "still in use");
    assert_eq!(client_leaves(&server)[1].1, r1.cert_der().to_vec());

    // The key lands: the renewal is whole, and replaces the connection.
    replace(&files.key, r2.key_pem().as_bytes());
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn: c, .. } if *c == conn),
    );
    assert_eq!(closed(&seen, conn), Some(CloseReason::Credentials));
    let (next, out) = fetch(&mut engine, &server.url("/"));
    assert!(!served_by(&out, next).reused || served_by(&out, next).conn != conn);
    assert_eq!(
        client_leaves(&server).last().map(|l| l.1.clone()),
        Some(r2.cert_der().to_vec())
    );
    assert_drained(&mut engine);
}

#[test]
fn a_crl_that_fails_to_parse_leaves_live_connections_alone_and_a_good_one_closes_the_revoked() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("served"));
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut engine = engine_with(ca_file.path(), &[crl.path()], |c| {
        c.trust.check_interval = CHECK;
    });
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let conn = served_by(&out, first).conn;
    crl.replace(b"-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n");
    let mut seen = Vec::new();
    wait_event(&mut engine, &mut seen, |e| {
        matches!(e, Event::TrustError { .. })
    });
    let settle = std::time::Instant::now() + CHECK * 5;
    seen.extend(pump_until(&mut engine, T, || {
        std::time::Instant::now() >= settle
    }));
    let errors = trust_errors_in(&seen);
    assert_eq!(errors.len(), 1, "once per bad version: {errors:?}");
    assert_eq!(errors[0].0, crl.path());
    assert!(invalid(&seen).is_empty());
    let (again, out) = fetch(&mut engine, &server.url("/"));
    assert_eq!(served_by(&out, again).conn, conn, "still in use");

    // A good list revoking the leaf closes the idle connection at once.
    crl.replace(ca.crl_pem(&[&leaf], SystemTime::now() + DAY).as_bytes());
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn: c, .. } if *c == conn),
    );
    assert_eq!(closed(&seen, conn), Some(CloseReason::Credentials));
    assert_eq!(invalid(&seen).len(), 1);
    assert_drained(&mut engine);
}

#[test]
fn an_identity_near_its_not_after_retires_its_connections_and_warns_once() {
    let (ca, leaf) = ca_and_leaf();
    let clients = TestCa::new("rotary test client CA");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let short = clients
        .leaf(&[])
        .common_name("runner-short")
        .without_server_auth()
        .client_auth()
        .valid_between(now - hour, now + hour)
        .build();
    // The long poll outlasts the retirement time.
    let server = mtls_server(&leaf, &clients, Duration::from_millis(2500));
    let ca_file = ca.write_pem_file();
    let ids = IdentityDir::new(Renewal::Rename, &short);
    // Retire and warn 1.5 s after now: after the first connection is made.
    let lead = hour - Duration::from_millis(1500);
    let mut engine = mtls_engine(ca_file.path(), &[], ids.files(), |c| {
        c.trust.identity_expiry.retire_before = Some(lead);
        c.trust.identity_expiry.warn_before = Some(lead);
    });
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let conn = served_by(&out, first).conn;
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    let mut seen = out.events;
    wait_event(&mut engine, &mut seen, |e| {
        matches!(e, Event::CredentialsInvalid { .. })
    });
    let inv = invalid(&seen);
    assert_eq!(
        (inv[0].0, inv[0].1),
        (conn, CredentialReason::IdentityExpiring)
    );
    assert!(inv[0].2.contains("CN=runner-short"), "{}", inv[0].2);
    let warned: Vec<_> = seen
        .iter()
        .filter(|e| matches!(e, Event::IdentityExpiring { .. }))
        .collect();
    assert_eq!(warned.len(), 1, "{seen:#?}");
    let (body, by) = answered(&end_of(&mut engine, &mut seen, poll));
    assert_eq!((body.as_str(), by.conn), ("job", conn), "it finished");
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn: c, .. } if *c == conn),
    );
    assert_eq!(closed(&seen, conn), Some(CloseReason::Credentials));
    let warned = seen
        .iter()
        .filter(|e| matches!(e, Event::IdentityExpiring { .. }))
        .count();
    assert_eq!(warned, 1, "once");
    assert_eq!(engine.stats().identity_expiry_warnings, 1);
    assert_drained(&mut engine);
}

#[test]
fn a_revoked_proxy_certificate_closes_the_connections_through_it() {
    let (ca, leaf) = ca_and_leaf();
    let proxy_ca = TestCa::new("rotary test proxy CA");
    let proxy_leaf = proxy_ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("inside"));
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &proxy_leaf,
    );
    let proxy_ca_file = proxy_ca.write_pem_file();
    let proxy_crl = TempFile::new(
        "proxy.crl",
        proxy_ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let ca_file = ca.write_pem_file();
    let mut proxy_trust = Trust::pem_file(proxy_ca_file.path());
    proxy_trust.crl_files = vec![proxy_crl.path().to_path_buf()];
    let url = proxy.url(None);
    let mut engine = engine_with(ca_file.path(), &[], |c| {
        c.trust.check_interval = CHECK;
        let p = rotary::Proxy::parse(&url)
            .expect("proxy")
            .with_trust(proxy_trust);
        c.proxy = rotary::Proxies::all(p);
    });
    let (first, out) = fetch(&mut engine, &server.url("/"));
    let conn = served_by(&out, first).conn;
    proxy_crl.replace(
        proxy_ca
            .crl_pem(&[&proxy_leaf], SystemTime::now() + DAY)
            .as_bytes(),
    );
    let mut seen = Vec::new();
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn: c, .. } if *c == conn),
    );
    assert_eq!(closed(&seen, conn), Some(CloseReason::Credentials));
    let inv = invalid(&seen);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].1, CredentialReason::Revoked);
    assert!(inv[0].2.starts_with("proxy "), "{}", inv[0].2);
    assert!(inv[0].2.contains(&proxy_leaf.serial_hex()), "{}", inv[0].2);
    assert_drained(&mut engine);
}

#[test]
fn the_client_lifecycle_channel_carries_credential_events() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("served"));
    let ca_file = ca.write_pem_file();
    let crl = TempFile::new(
        "ca.crl",
        ca.crl_pem(&[], SystemTime::now() + DAY).as_bytes(),
    );
    let mut config = Config::default();
    config.trust = Trust::pem_file(ca_file.path());
    config.trust.crl_files = vec![crl.path().to_path_buf()];
    config.trust.check_interval = CHECK;
    let client = rotary::Client::new(config).expect("client starts");
    let life = client.lifecycle().expect("channel");
    let response = client
        .send_with(get(&server.url("/")), RequestOptions::default().deadline(T))
        .expect("served");
    assert_eq!(response.status(), 200);
    response.into_body().bytes().expect("body");
    crl.replace(ca.crl_pem(&[&leaf], SystemTime::now() + DAY).as_bytes());
    let deadline = std::time::Instant::now() + T;
    let mut got = None;
    while got.is_none() && std::time::Instant::now() < deadline {
        match life.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::CredentialsInvalid { reason, .. }) => got = Some(reason),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, Some(CredentialReason::Revoked));
    client.shutdown();
}

#[test]
fn openssl_ca_revoking_the_server_leaf_closes_the_live_connection_failing_the_request_in_flight() {
    let Some(openssl) = openssl() else {
        return;
    };
    let ca = OpensslCa::new(&openssl, "rotary openssl CA");
    let server_cert = ca.issue_server("localhost");
    let mut server = SServer::interactive(&openssl, &server_cert, Some(&ca.cert_path()));
    let dir = tempfile::tempdir().expect("temp dir");
    let runner = ca.issue_client("runner-1");
    let id = identity_files(dir.path());
    install_cert(&id, &runner);
    install_key(&id, &runner);
    let list = dir.path().join("ca.crl");
    ca.crl_pem(&list);
    let mut engine = mtls_engine(&ca.cert_path(), &[&list], id.clone(), |_| {});
    let requests = |s: &SServer| s.log().matches(" HTTP/1.1").count();

    let first = engine.submit(
        get(&server.url("/first")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || requests(&server) >= 1);
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let out = finish(&mut engine, &[first], T);
    assert_eq!(out.response(first).body(), "ok");
    let conn = served_by(&out, first).conn;
    // A long poll s_server does not answer.
    let poll = engine.submit(
        get(&server.url("/poll")),
        RequestOptions::default().deadline(T),
    );
    pump_until(&mut engine, T, || requests(&server) >= 2);

    ca.revoke(&server_cert);
    let fresh = dir.path().join("ca.crl.new");
    ca.crl_pem(&fresh);
    std::fs::rename(&fresh, &list).expect("rename over");
    let mut seen = Vec::new();
    let end = end_of(&mut engine, &mut seen, poll);
    let Event::Failed { error, .. } = &end else {
        panic!("{end:?}");
    };
    let revoked = error.revoked().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(
        revoked.serial, server_cert.serial,
        "the serial openssl ca gave"
    );
    assert!(
        matches!(
            error,
            Error::Revoked {
                phase: Phase::ResponseHead,
                ..
            }
        ),
        "{error:?}"
    );
    wait_event(
        &mut engine,
        &mut seen,
        |e| matches!(e, Event::Closed { conn: c, .. } if *c == conn),
    );
    assert_eq!(closed(&seen, conn), Some(CloseReason::Credentials));
    let inv = invalid(&seen);
    assert_eq!((inv.len(), inv[0].1), (1, CredentialReason::Revoked));
    // s_server saw the connection end, and no request after the list.
    assert!(
        wait_for(T, || server.log().contains("DONE")),
        "{}",
        server.log()
    );
    assert_eq!(requests(&server), 2, "{}", server.log());
    assert_drained(&mut engine);
}
