//! Bad peers, one test per row of `docs/failures.md`: what the caller sees
//! (the terminal event, the error variant and its `Display` text) and whether
//! the request was sent again.
//!
//! Each test asserts exactly one terminal event (`driver::finish`), the retry
//! count, how many times the server saw the request, and that the engine
//! ends holding nothing. Run with `--nocapture` to print every error's text
//! (lines starting `row:`), which is what the table quotes.

mod driver;
mod support;

use std::time::Duration;

use driver::*;
use rotary::{CloseReason, Config, Deadline, Engine, Error, Event, Phase, RequestOptions};
use rustls::CertificateError;
use support::*;

const T: Duration = Duration::from_secs(10);

/// Prints the text a row of the table quotes.
fn row(test: &str, e: &Error) {
    eprintln!("row: {test}: {e} [{e:?}]");
}

/// One GET through a fresh plain-HTTP engine to a server with `handler`.
fn plain_get(
    handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    opts: RequestOptions,
    tweak: impl FnOnce(&mut Config),
) -> (TestServer, Engine, Outcome, rotary::RequestId) {
    let server = TestServer::plain(handler);
    let mut engine = plain_engine(tweak);
    let id = engine.submit(get(&server.url_ip("/")), opts);
    let out = finish(&mut engine, &[id], T);
    (server, engine, out, id)
}

/// The request failed once, was sent `sent` times and not retried.
fn failed_once_not_retried(
    test: &str,
    server: &TestServer,
    engine: &mut Engine,
    out: &Outcome,
    id: rotary::RequestId,
    sent: u64,
) -> Error {
    let err = out.error(id).clone();
    row(test, &err);
    let stats = engine.stats();
    assert_eq!(stats.retries, 0, "{test}: not retried");
    assert_eq!(stats.requests_failed(), 1, "{test}");
    assert_eq!(server.stats().requests, sent, "{test}: sent {sent} time(s)");
    assert_drained(engine);
    err
}

fn protocol_cause(err: &Error) -> &rotary_proto::Error {
    match err {
        Error::Protocol { cause, .. } => cause,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Certificate verification: each fails the handshake with rustls's reason.
// ---------------------------------------------------------------------------

/// A GET to `https://localhost` served with `leaf`, trusting `trusted`;
/// returns rustls's reason after checking what every verification failure
/// shares: one `ConnectFailed` with the same error, the connection closed
/// as `ConnectFailed`, no request reaching the server, no retry.
fn verification_failure(test: &str, leaf: &Issued, trusted: &TestCa) -> rustls::Error {
    let server = TestServer::tls(leaf, |_, _| Reply::ok("must not be reached"));
    let (mut engine, _ca_file) = engine_for(trusted, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row(test, &err);
    let Error::Tls { reason, .. } = &err else {
        panic!("{test}: expected Error::Tls, got {err:?}");
    };
    assert_eq!(err.phase(), Phase::Tls);
    assert!(
        err.to_string()
            .starts_with(&format!("tls handshake failed: {reason}")),
        "{test}: the text names rustls's reason: {err}"
    );
    let connect_failed: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(connect_failed, vec![err.to_string()], "{test}");
    assert!(out.closed().contains(&CloseReason::ConnectFailed), "{test}");
    assert_eq!(server.stats().requests, 0, "{test}: nothing was sent");
    let stats = engine.stats();
    assert_eq!((stats.retries, stats.failed(Phase::Tls)), (0, 1), "{test}");
    assert_drained(&mut engine);
    reason.clone()
}

fn localhost_leaf(ca: &TestCa) -> LeafBuilder<'_> {
    ca.leaf(&["localhost", "127.0.0.1"])
}

#[test]
fn tls_wrong_hostname() {
    let ca = TestCa::new("rotary test CA");
    let leaf = localhost_leaf(&ca).wrong_host().build();
    let reason = verification_failure("tls_wrong_hostname", &leaf, &ca);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{reason:?}"
    );
}

#[test]
fn tls_expired_certificate() {
    let ca = TestCa::new("rotary test CA");
    let leaf = localhost_leaf(&ca).expired().build();
    let reason = verification_failure("tls_expired_certificate", &leaf, &ca);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{reason:?}"
    );
}

#[test]
fn tls_not_yet_valid_certificate() {
    let ca = TestCa::new("rotary test CA");
    let leaf = localhost_leaf(&ca).not_yet_valid().build();
    let reason = verification_failure("tls_not_yet_valid_certificate", &leaf, &ca);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
            )
        ),
        "{reason:?}"
    );
}

#[test]
fn tls_unknown_ca() {
    let (_ca, leaf) = ca_and_leaf();
    let other = TestCa::new("some other CA");
    let reason = verification_failure("tls_unknown_ca", &leaf, &other);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{reason:?}"
    );
}

#[test]
fn tls_self_signed_leaf() {
    let ca = TestCa::new("rotary test CA");
    let leaf = localhost_leaf(&ca).self_signed().build();
    let reason = verification_failure("tls_self_signed_leaf", &leaf, &ca);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{reason:?}"
    );
}

#[test]
fn tls_certificate_without_server_auth_purpose() {
    let ca = TestCa::new("rotary test CA");
    let leaf = localhost_leaf(&ca).without_server_auth().build();
    let reason = verification_failure("tls_certificate_without_server_auth_purpose", &leaf, &ca);
    assert!(
        matches!(
            reason,
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        ),
        "{reason:?}"
    );
}

// ---------------------------------------------------------------------------
// Connecting and the TLS handshake
// ---------------------------------------------------------------------------

#[test]
fn connect_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(
        get(&format!("http://127.0.0.1:{port}/")),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("connect_refused", &err);
    match &err {
        Error::Connect { cause, .. } => {
            assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.stats().retries, 0);
    assert_drained(&mut engine);
}

/// A TLS server whose accept hook does `accept` to every connection.
fn tls_accept_failure(
    test: &str,
    accept: Accept,
    tweak: impl FnOnce(&mut Config),
) -> (Error, Outcome) {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .on_accept(move |_| accept.clone())
        .start();
    let (mut engine, _ca_file) = engine_for(&ca, tweak);
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row(test, &err);
    assert!(out.closed().contains(&CloseReason::ConnectFailed), "{test}");
    assert_eq!(server.stats().requests, 0);
    assert_eq!(
        server.stats().connections_accepted,
        1,
        "{test}: one attempt"
    );
    assert_eq!(engine.stats().retries, 0);
    assert_drained(&mut engine);
    (err, out)
}

#[test]
fn tls_fatal_alert_from_server() {
    // A fatal handshake_failure alert record instead of a ServerHello.
    let alert = vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
    let (err, _) = tls_accept_failure(
        "tls_fatal_alert_from_server",
        Accept::SendRawThenClose(alert),
        |_| {},
    );
    assert!(
        matches!(
            err,
            Error::Tls {
                reason: rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tls_port_answering_plain_http() {
    let (err, _) = tls_accept_failure(
        "tls_port_answering_plain_http",
        Accept::SendRawThenClose(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec()),
        |_| {},
    );
    assert!(
        matches!(
            err,
            Error::Tls {
                reason: rustls::Error::InvalidMessage(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn connect_hangs() {
    // SYNs dropped, as by a firewall or a host that is gone.
    let hole = BlackHole::new();
    let limit = Duration::from_millis(100);
    let mut engine = engine_resolving_to(vec![hole.addr()], |c| c.timeouts.connect = limit);
    let started = std::time::Instant::now();
    let url = format!("http://coordinator.test:{}/", hole.addr().port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("connect_hangs", &err);
    assert_eq!(err.deadline(), Some(Deadline::Connect), "{err:?}");
    assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
    assert_drained(&mut engine);
}

#[test]
fn tls_handshake_stall() {
    let (err, _) = tls_accept_failure("tls_handshake_stall", Accept::Stall, |c| {
        c.timeouts.handshake = Duration::from_millis(200)
    });
    assert_eq!(err.deadline(), Some(Deadline::Handshake), "{err:?}");
}

#[test]
fn tls_close_during_handshake() {
    let (err, _) = tls_accept_failure("tls_close_during_handshake", Accept::Close, |_| {});
    assert_eq!(err.phase(), Phase::Tls, "{err:?}");
}

#[test]
fn tls_reset_during_handshake() {
    let (err, _) = tls_accept_failure("tls_reset_during_handshake", Accept::Reset, |_| {});
    // An I/O error during the handshake is reported as a connect error.
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// The response head
// ---------------------------------------------------------------------------

#[test]
fn close_before_any_byte_on_a_fresh_connection() {
    let (server, mut engine, out, id) =
        plain_get(|_, _| Reply::close(), RequestOptions::default(), |_| {});
    let err = failed_once_not_retried(
        "close_before_any_byte_on_a_fresh_connection",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(
        matches!(
            err,
            Error::PeerClosed {
                phase: Phase::ResponseHead,
                reused: false
            }
        ),
        "{err:?}"
    );
}

/// A server that answers the first request on each connection and treats
/// the second with `second`; returns the outcome of a second `request`.
fn on_reused_connection(
    second: Reply,
    request: http::Request<bytes::Bytes>,
    opts: RequestOptions,
) -> (TestServer, Engine, Outcome, rotary::RequestId) {
    let server = TestServer::plain(move |req, _| {
        if req.index_on_conn == 0 {
            Reply::ok("first on its connection")
        } else {
            second.clone()
        }
    });
    let mut engine = plain_engine(|_| {});
    let warm = engine.submit(get(&server.url_ip("/warm")), RequestOptions::default());
    finish(&mut engine, &[warm], T);
    let uri = format!("{}{}", server.url_ip(""), request.uri().path());
    let (mut parts, body) = request.into_parts();
    parts.uri = uri.parse().unwrap();
    let id = engine.submit(http::Request::from_parts(parts, body), opts);
    let out = finish(&mut engine, &[id], T);
    (server, engine, out, id)
}

#[test]
fn close_before_any_byte_on_a_reused_connection_retries_a_get() {
    let (server, mut engine, out, id) = on_reused_connection(
        Reply::close(),
        get("http://x/again"),
        RequestOptions::default(),
    );
    assert_eq!(out.response(id).body(), "first on its connection");
    assert_eq!(engine.stats().retries, 1);
    assert_eq!(server.stats().requests, 3, "warm-up, stale attempt, retry");
    assert_drained(&mut engine);
}

#[test]
fn close_before_any_byte_on_a_reused_connection_fails_a_post() {
    let (server, mut engine, out, id) = on_reused_connection(
        Reply::close(),
        post("http://x/job", b"{}"),
        RequestOptions::default(),
    );
    let err = failed_once_not_retried(
        "close_before_any_byte_on_a_reused_connection_fails_a_post",
        &server,
        &mut engine,
        &out,
        id,
        2,
    );
    assert!(
        matches!(
            err,
            Error::PeerClosed {
                phase: Phase::ResponseHead,
                reused: true
            }
        ),
        "{err:?}"
    );
}

#[test]
fn close_before_any_byte_on_a_reused_connection_retries_a_retry_safe_post() {
    let (server, mut engine, out, id) = on_reused_connection(
        Reply::close(),
        post("http://x/job", b"{}"),
        RequestOptions::default().retry_safe(true),
    );
    assert_eq!(out.response(id).body(), "first on its connection");
    assert_eq!(engine.stats().retries, 1);
    assert_eq!(server.stats().requests, 3);
    assert_drained(&mut engine);
}

#[test]
fn reset_before_any_byte_on_a_reused_connection_retries_a_get() {
    if !reset_supported() {
        return;
    }
    let (server, mut engine, out, id) = on_reused_connection(
        Reply::reset(),
        get("http://x/again"),
        RequestOptions::default(),
    );
    assert_eq!(out.response(id).body(), "first on its connection");
    assert_eq!(engine.stats().retries, 1);
    assert_eq!(server.stats().requests, 3);
    assert_drained(&mut engine);
}

#[test]
fn reset_before_any_byte_on_a_reused_connection_fails_a_post() {
    if !reset_supported() {
        return;
    }
    let (server, mut engine, out, id) = on_reused_connection(
        Reply::reset(),
        post("http://x/job", b"{}"),
        RequestOptions::default(),
    );
    let err = failed_once_not_retried(
        "reset_before_any_byte_on_a_reused_connection_fails_a_post",
        &server,
        &mut engine,
        &out,
        id,
        2,
    );
    assert_eq!(err.phase(), Phase::ResponseHead, "{err:?}");
}

#[test]
fn close_mid_head() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::ok("abc").cut_at(10),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("close_mid_head", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseHead, "{err:?}");
}

#[test]
fn garbage_status_line() {
    let (server, mut engine, out, id) =
        plain_get(|_, _| Reply::garbage(), RequestOptions::default(), |_| {});
    let err = failed_once_not_retried("garbage_status_line", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseHead);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidHead { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_status_code() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::raw(&b"HTTP/1.1 2000 Way Too OK\r\nContent-Length: 0\r\n\r\n"[..]),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("invalid_status_code", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidHead { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn obsolete_line_folding_is_unfolded() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::ok("x").header("X-Folded", "first\r\n\tsecond"),
        RequestOptions::default(),
        |_| {},
    );
    // RFC 9112 §5.2: a user agent replaces each fold with spaces.
    let response = out.response(id);
    assert_eq!(response.body(), "x");
    assert_eq!(response.headers()["x-folded"], "first   second");
    assert_eq!(server.stats().requests, 1);
    assert_drained(&mut engine);
}

#[test]
fn too_many_headers() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| (0..150).fold(Reply::ok("x"), |r, i| r.header(&format!("x-h{i}"), "v")),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("too_many_headers", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::TooManyHeaders { limit: 100 }
        ),
        "{err:?}"
    );
}

#[test]
fn head_too_large() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::ok("x").header("x-big", &"b".repeat(70_000)),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("head_too_large", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::HeadTooLarge { limit: 65536 }
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_content_length() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::ok("hello")
                .verbatim_framing()
                .header("Content-Length", "5abc")
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("invalid_content_length", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidContentLength
        ),
        "{err:?}"
    );
}

#[test]
fn conflicting_content_length() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::ok("hello")
                .verbatim_framing()
                .header("Content-Length", "5")
                .header("Content-Length", "6")
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried(
        "conflicting_content_length",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::ConflictingContentLength { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn content_length_with_chunked_is_read_chunked_and_not_reused() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("chunked wins")
            .chunked()
            .header("Content-Length", "999")
    });
    let mut engine = plain_engine(|_| {});
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(out.response(a).body(), "chunked wins");
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    assert_eq!(out.response(b).body(), "chunked wins");
    let stats = engine.stats();
    assert_eq!(
        stats.connections_opened, 2,
        "the first connection was not reused"
    );
    assert_eq!(stats.connections_reused, 0);
    assert_eq!(stats.closed(CloseReason::ServerClose), 2);
    assert_drained(&mut engine);
}

#[test]
fn transfer_encoding_in_http10() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::raw(
                &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            )
            .close_after()
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried(
        "transfer_encoding_in_http10",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::TransferEncodingInHttp10
        ),
        "{err:?}"
    );
}

#[test]
fn switching_protocols_101() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::status(101)
                .header("Upgrade", "websocket")
                .header("Connection", "upgrade")
                .keep_open()
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("switching_protocols_101", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::UnsupportedUpgrade { status: 101 }
        ),
        "{err:?}"
    );
}

#[test]
fn interim_1xx_responses_are_skipped() {
    let server = TestServer::plain(|_, _| Reply::ok("final").interim(100).interim(103));
    let mut engine = plain_engine(|_| {});
    for _ in 0..2 {
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).status(), 200);
        assert_eq!(out.response(id).body(), "final");
    }
    assert_eq!(engine.stats().connections_reused, 1, "still reusable");
    assert_drained(&mut engine);
}

#[test]
fn stall_before_the_head_hits_the_first_byte_deadline() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::stall(),
        RequestOptions::default().first_byte_timeout(Duration::from_millis(100)),
        |_| {},
    );
    let err = failed_once_not_retried(
        "stall_before_the_head_hits_the_first_byte_deadline",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert_eq!(err.deadline(), Some(Deadline::FirstByte), "{err:?}");
    assert!(out.closed().contains(&CloseReason::Error));
}

// ---------------------------------------------------------------------------
// The response body
// ---------------------------------------------------------------------------

/// The head and 300 body bytes, then (100 ms later, so that the client has
/// read them before a reset could discard them) `end` at the next part.
fn head_then_part(body_len: usize, chunked: bool, end: fn(Reply, usize) -> Reply) -> Reply {
    let mut reply = Reply::ok(vec![b'x'; body_len])
        .parts(&[300, 300])
        .part_delay(Duration::from_millis(100));
    if chunked {
        reply = reply.chunked();
    }
    // Head length: status line, framing header and the blank line.
    let head = if chunked {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len()
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n").len()
    };
    let first = if chunked { 300 + 7 } else { 300 };
    end(reply, head + first)
}

#[test]
fn close_mid_body() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| head_then_part(1000, false, Reply::cut_at),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("close_mid_body", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
}

#[test]
fn truncated_chunked_body() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| head_then_part(1000, true, Reply::cut_at),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("truncated_chunked_body", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
}

#[test]
fn reset_mid_body() {
    if !reset_supported() {
        return;
    }
    let (server, mut engine, out, id) = plain_get(
        |_, _| head_then_part(1000, false, Reply::reset_at),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("reset_mid_body", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
}

#[test]
fn reset_mid_body_of_a_reused_get_is_not_retried() {
    if !reset_supported() {
        return;
    }
    let (server, mut engine, out, id) = on_reused_connection(
        head_then_part(1000, false, Reply::reset_at),
        get("http://x/again"),
        RequestOptions::default(),
    );
    let err = failed_once_not_retried(
        "reset_mid_body_of_a_reused_get_is_not_retried",
        &server,
        &mut engine,
        &out,
        id,
        2,
    );
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
}

fn raw_chunked(body: &'static [u8]) -> Reply {
    let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    bytes.extend_from_slice(body);
    Reply::raw(bytes)
}

#[test]
fn bad_chunk_size() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| raw_chunked(b"zz\r\nhello\r\n0\r\n\r\n"),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("bad_chunk_size", &server, &mut engine, &out, id, 1);
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidChunk { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn chunk_size_overflow() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| raw_chunked(b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("chunk_size_overflow", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(protocol_cause(&err), rotary_proto::Error::ChunkSizeOverflow),
        "{err:?}"
    );
}

#[test]
fn stall_mid_body_hits_the_total_deadline() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| head_then_part(1000, false, Reply::stall_at),
        RequestOptions::default().deadline(Duration::from_millis(400)),
        |_| {},
    );
    let err = failed_once_not_retried(
        "stall_mid_body_hits_the_total_deadline",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert_eq!(err.deadline(), Some(Deadline::Total), "{err:?}");
    assert!(out.closed().contains(&CloseReason::Error));
}

#[test]
fn body_over_max_body() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::ok(vec![b'x'; 10_000]),
        RequestOptions::default().max_buffered_body(1_000),
        |_| {},
    );
    let err = failed_once_not_retried("body_over_max_body", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(err, Error::BodyTooLarge { limit: 1_000 }),
        "{err:?}"
    );
    assert!(out.closed().contains(&CloseReason::Error));
}

#[test]
fn close_delimited_body_is_read_to_the_close() {
    let server = TestServer::plain(|_, _| Reply::ok("until the close").close_delimited());
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "until the close");
    eprintln!(
        "row: close_delimited_body_is_read_to_the_close: closed {:?}",
        out.closed()
    );
    assert_eq!(engine.stats().requests_failed(), 0);
    assert_drained(&mut engine);
}

/// A close-delimited GET over TLS; the server ends the body with
/// close_notify then FIN (`graceful`) or with a bare FIN.
fn close_delimited_over_tls(graceful: bool) -> (Engine, Outcome, rotary::RequestId) {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, move |_, _| {
        let reply = Reply::ok("maybe truncated").close_delimited();
        if graceful {
            reply
        } else {
            // Cut beyond the end of the reply: FIN without close_notify.
            reply.cut_at(100_000)
        }
    });
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_drained(&mut engine);
    (engine, out, id)
}

#[test]
fn close_delimited_body_over_tls_ended_by_close_notify() {
    let (_engine, out, id) = close_delimited_over_tls(true);
    assert_eq!(out.response(id).body(), "maybe truncated");
}

/// RFC 9112 §9.8: a response with neither Content-Length nor chunked framing
/// "is complete only if a valid closure alert has been received".
#[test]
fn close_delimited_body_over_tls_without_close_notify_is_a_truncation() {
    let (_engine, out, id) = close_delimited_over_tls(false);
    let err = out.error(id);
    row(
        "close_delimited_body_over_tls_without_close_notify_is_a_truncation",
        err,
    );
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
}

#[test]
fn bytes_beyond_content_length_retire_the_connection() {
    let server = TestServer::plain(|_, _| Reply::ok("ok").then_send(Duration::ZERO, "EXTRA"));
    let mut engine = plain_engine(|_| {});
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(out.response(a).body(), "ok");
    // Whether the extra bytes came with the response or just after, the
    // connection is not used again.
    pump_until(&mut engine, T, || engine_closed_any(&server));
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    assert_eq!(out.response(b).body(), "ok");
    let stats = engine.stats();
    assert_eq!(stats.connections_reused, 0);
    assert_eq!(stats.requests_failed(), 0);
    assert_drained(&mut engine);
}

/// The server has seen the engine close a connection.
fn engine_closed_any(server: &TestServer) -> bool {
    server.stats().connections_open < server.stats().connections_accepted
}

// ---------------------------------------------------------------------------
// Connection management: nothing fails, the connection is not reused
// ---------------------------------------------------------------------------

/// Two GETs in a row; returns the engine's stats and events after both.
fn two_gets(server: &TestServer, tweak: impl FnOnce(&mut Config)) -> (rotary::Stats, Vec<Event>) {
    let mut engine = plain_engine(tweak);
    let mut events = Vec::new();
    for path in ["/a", "/b"] {
        let id = engine.submit(get(&server.url_ip(path)), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).status(), 200);
        events.extend(out.events);
    }
    let stats = engine.stats();
    assert_eq!(stats.requests_failed(), 0);
    assert_eq!(stats.retries, 0);
    assert_drained(&mut engine);
    (stats, events)
}

#[test]
fn connection_close_header() {
    let server = TestServer::plain(|_, _| Reply::ok("bye").header("Connection", "close"));
    let (stats, _) = two_gets(&server, |_| {});
    assert_eq!(stats.connections_opened, 2);
    assert_eq!(stats.closed(CloseReason::ServerClose), 2);
}

#[test]
fn connection_close_header_but_the_server_keeps_the_connection_open() {
    let server =
        TestServer::plain(|_, _| Reply::ok("bye").header("Connection", "close").keep_open());
    let (stats, _) = two_gets(&server, |_| {});
    assert_eq!(stats.connections_opened, 2, "close means close");
}

#[test]
fn http10_response_without_keep_alive() {
    let server = TestServer::plain(|_, _| {
        Reply::raw(&b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..])
    });
    let (stats, _) = two_gets(&server, |_| {});
    assert_eq!(stats.connections_opened, 2);
    assert_eq!(stats.closed(CloseReason::ServerClose), 2);
}

#[test]
fn keep_alive_nonsense_is_ignored() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("x").header(
            "Keep-Alive",
            "timeout=banana, max=-3, max=99999999999999999999",
        )
    });
    let (stats, _) = two_gets(&server, |_| {});
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.connections_reused, 1);
}

#[test]
fn keep_alive_timeout_within_the_margin_closes_after_the_response() {
    let server = TestServer::plain(|_, _| Reply::ok("x").header("Keep-Alive", "timeout=1"));
    let (stats, _) = two_gets(&server, |_| {});
    assert_eq!(stats.connections_opened, 2);
    assert_eq!(stats.closed(CloseReason::ServerClose), 2);
}

#[test]
fn idle_connection_closed_by_the_server() {
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|_| {});
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    finish(&mut engine, &[a], T);
    server.close_idle_gracefully();
    let events = run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::PeerClose,
                    ..
                }
            )
        })
    });
    assert!(!events.iter().any(|e| e.request_id().is_some()));
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    assert_eq!(out.response(b).body(), "x");
    let stats = engine.stats();
    assert_eq!((stats.connections_opened, stats.retries), (2, 0));
    assert_drained(&mut engine);
}

#[test]
fn idle_tls_connection_gets_close_notify() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x"));
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    finish(&mut engine, &[a], T);
    server.close_idle_gracefully();
    run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::PeerClose,
                    ..
                }
            )
        })
    });
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    assert_eq!(out.response(b).body(), "x");
    let stats = engine.stats();
    assert_eq!((stats.connections_opened, stats.retries), (2, 0));
    assert_drained(&mut engine);
}

#[test]
fn stray_bytes_on_an_idle_connection() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("x").then_send(Duration::from_millis(20), "HTTP/1.1 200 OK\r\n\r\n")
    });
    let mut engine = plain_engine(|_| {});
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    finish(&mut engine, &[a], T);
    run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::PeerClose,
                    ..
                }
            )
        })
    });
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    assert_eq!(out.response(b).body(), "x");
    let stats = engine.stats();
    assert_eq!((stats.connections_opened, stats.retries), (2, 0));
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------------------
// Through the fault proxy: the TLS byte stream itself misbehaves
// ---------------------------------------------------------------------------

/// A TLS server behind a proxy that gives every connection `fault`.
fn through_proxy(
    fault: Fault,
    handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
) -> (TestServer, FaultProxy, Engine, TempFile) {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, handler);
    let proxy = FaultProxy::builder(server.addr()).always(fault).start();
    let (engine, ca_file) = engine_for(&ca, |_| {});
    (server, proxy, engine, ca_file)
}

#[test]
fn garbage_inside_the_tls_stream_mid_response() {
    let fault = Fault::Garbage {
        dir: Dir::ToClient,
        at: 50_000,
        bytes: b"\x17\x03\x03\x00\x10not a record....".to_vec(),
    };
    let (server, proxy, mut engine, _f) =
        through_proxy(fault, |_, _| Reply::ok(vec![b'x'; 100_000]));
    let url = format!("https://127.0.0.1:{}/", proxy.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(proxy.stats().garbage, 1);
    let err = failed_once_not_retried(
        "garbage_inside_the_tls_stream_mid_response",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    // Mid-body, not in the handshake: the error names the exchange's phase.
    assert_eq!(err.phase(), Phase::ResponseBody, "{err}");
    assert!(
        err.to_string()
            .starts_with("tls error during response_body"),
        "{err}"
    );
}

#[test]
fn tls_records_in_one_byte_segments_both_ways() {
    for dir in [Dir::ToClient, Dir::ToServer] {
        let (server, proxy, mut engine, _f) =
            through_proxy(Fault::OneByteSegments { dir }, |req, _| {
                Reply::ok(req.body.clone())
                    .chunked()
                    .parts(&[1, 2, 3])
                    .trailer("x-t", "1")
            });
        let url = format!("https://127.0.0.1:{}/", proxy.port());
        for _ in 0..2 {
            let id = engine.submit(post(&url, b"split me"), RequestOptions::default());
            let out = finish(&mut engine, &[id], T);
            assert_eq!(out.response(id).body(), "split me", "{dir:?}");
        }
        assert_eq!(proxy.stats().splits, 1, "{dir:?}");
        assert_eq!(engine.stats().connections_reused, 1);
        assert_eq!(server.stats().requests, 2);
        assert_drained(&mut engine);
    }
}

#[test]
fn slow_peer_delaying_every_write() {
    let fault = Fault::Delay {
        dir: Dir::ToClient,
        each: Duration::from_millis(5),
    };
    let (_server, proxy, mut engine, _f) = through_proxy(fault, |_, _| {
        Reply::ok(vec![b'y'; 3000])
            .parts(&[1000, 1000])
            .part_delay(Duration::from_millis(5))
    });
    let url = format!("https://127.0.0.1:{}/", proxy.port());
    let id = engine.submit(
        get(&url),
        RequestOptions::default().deadline(Duration::from_secs(5)),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().len(), 3000);
    assert_eq!(proxy.stats().delays, 1);
    assert_drained(&mut engine);
}

/// The chaos run's find, reduced: the network (not the server) cuts a
/// close-delimited body over TLS; the server had meant to end it with
/// close_notify.
#[test]
fn close_delimited_body_over_tls_cut_by_the_network_is_a_truncation() {
    let fault = Fault::Close {
        dir: Dir::ToClient,
        at: 50_000,
    };
    let (_server, proxy, mut engine, _f) = through_proxy(fault, |_, _| {
        Reply::ok(vec![b'z'; 100_000]).close_delimited()
    });
    let url = format!("https://127.0.0.1:{}/", proxy.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(proxy.stats().closes, 1);
    if let Event::Response { response, .. } = out.event(id) {
        panic!(
            "a {}-byte prefix of a 100000-byte body was delivered as complete",
            response.body().len()
        );
    }
    let err = out.error(id);
    row(
        "close_delimited_body_over_tls_cut_by_the_network_is_a_truncation",
        err,
    );
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------------------
// More head and body limits
// ---------------------------------------------------------------------------

#[test]
fn trailers_over_the_limit() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::ok("x")
                .chunked()
                .trailer("x-huge", &"t".repeat(20_000))
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("trailers_over_the_limit", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::TrailersTooLarge { limit: 16384 }
        ),
        "{err:?}"
    );
}

#[test]
fn chunk_line_over_the_limit() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            let mut body = b"5;ext=".to_vec();
            body.extend(std::iter::repeat_n(b'e', 5_000));
            body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(&body);
            Reply::raw(bytes)
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried(
        "chunk_line_over_the_limit",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::ChunkLineTooLong { limit: 4096 }
        ),
        "{err:?}"
    );
}

#[test]
fn negative_content_length() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| {
            Reply::ok("x")
                .verbatim_framing()
                .header("Content-Length", "-1")
        },
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried("negative_content_length", &server, &mut engine, &out, id, 1);
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidContentLength
        ),
        "{err:?}"
    );
}

#[test]
fn nul_byte_in_a_header_value() {
    let (server, mut engine, out, id) = plain_get(
        |_, _| Reply::raw(&b"HTTP/1.1 200 OK\r\nX-Bad: a\0b\r\nContent-Length: 0\r\n\r\n"[..]),
        RequestOptions::default(),
        |_| {},
    );
    let err = failed_once_not_retried(
        "nul_byte_in_a_header_value",
        &server,
        &mut engine,
        &out,
        id,
        1,
    );
    assert!(
        matches!(
            protocol_cause(&err),
            rotary_proto::Error::InvalidHead { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn bare_lf_line_endings() {
    let server =
        TestServer::plain(|_, _| Reply::raw(&b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"[..]));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator.
    assert_eq!(out.response(id).body(), "ok");
    assert_drained(&mut engine);
}

#[test]
fn server_demands_a_client_certificate_we_do_not_have() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .require_client_cert(ca.cert_der())
        .start();
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("server_demands_a_client_certificate_we_do_not_have", &err);
    // TLS 1.3: the client finishes first; the server's alert arrives after
    // the request went out.
    assert!(
        matches!(
            err,
            Error::Tls {
                reason: rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.stats().requests, 0);
    assert_eq!(engine.stats().retries, 0);
    assert_drained(&mut engine);
}
