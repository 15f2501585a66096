//! `https://` proxies against the in-repo TLS-terminating proxy
//! (`ConnectProxy::start_tls`): TLS to the proxy with its own trust, the
//! `CONNECT` inside it, the origin's TLS inside that (two sessions on one
//! socket); both chains reported, each where it belongs; a rotation at the
//! origin healing within `max_age` through the proxy; and the proxy TLS
//! rows of `docs/failures.md`. Each test ends with the engine holding
//! nothing.

mod driver;
mod support;

use std::time::{Duration, Instant};

use driver::*;
use rotary::{
    CloseReason, Config, Deadline, Error, Event, Handshake, Phase, Proxies, Proxy, ProxyFailure,
    RequestOptions, Trust,
};
use support::*;

const T: Duration = Duration::from_secs(10);

/// Every origin through the proxy at `url`, its certificate checked
/// against `trust` (the engine's when `None`).
fn through(url: &str, trust: Option<Trust>) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        let mut proxy = Proxy::parse(url).expect("proxy url");
        if let Some(trust) = trust {
            proxy = proxy.with_trust(trust);
        }
        c.proxy = Proxies::all(proxy);
    }
}

/// Prints the text a row of the failures table quotes.
fn row(test: &str, e: &Error) {
    eprintln!("row: {test}: {e} [{e:?}]");
}

/// A proxy CA of its own and a proxy leaf for 127.0.0.1, distinct from
/// the origin's, so a test can tell which chain is which.
fn proxy_pki() -> (TestCa, Issued) {
    let ca = TestCa::new("rotary test proxy CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    (ca, leaf)
}

#[test]
fn https_through_an_https_proxy_reports_the_origins_chain_and_the_proxys_apart() {
    let (ca, leaf) = ca_and_leaf();
    let (proxy_ca, proxy_leaf) = proxy_pki();
    let proxy_ca_file = proxy_ca.write_pem_file();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("inside two"));
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &proxy_leaf,
    );
    let url = proxy.url(Some("ops:hunter2"));
    assert!(url.starts_with("https://"), "{url}");
    let trust = Trust::pem_file(proxy_ca_file.path());
    let (mut engine, _ca) = engine_for(&ca, through(&url, Some(trust)));
    let first = engine.submit(get(&server.url("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[first], T);
    assert_eq!(out.response(first).body().as_ref(), b"inside two");
    let second = engine.submit(get(&server.url("/b")), RequestOptions::default());
    let again = finish(&mut engine, &[second], T);
    assert_eq!(again.response(second).body().as_ref(), b"inside two");
    assert!(again.opened().is_empty(), "the tunnel carried both");

    // The proxy: one TLS session, one CONNECT inside it, with credentials.
    assert_eq!(proxy.tls_handshakes(), 1);
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let connect = format!("CONNECT localhost:{} HTTP/1.1\r\n", server.port());
    assert!(heads[0].starts_with(&connect), "{}", heads[0]);
    assert!(heads[0]
        .to_ascii_lowercase()
        .contains("proxy-authorization: basic "));

    // What was reported: the origin's chain where the origin's goes, the
    // proxy's apart.
    let opened = out.opened();
    assert_eq!(opened.len(), 1);
    let info = opened[0];
    assert_eq!(info.peer_addr, proxy.addr(), "TCP goes to the proxy");
    let shown = info.proxy.as_deref().expect("a proxy");
    assert_eq!(shown, format!("https://{}", proxy.addr()));
    assert_eq!(
        info.chain.as_ref().expect("chain").der()[0],
        leaf.cert_der()
    );
    assert_eq!(info.handshake, Some(Handshake::Full));
    let outer = info.proxy_tls.as_ref().expect("the proxy's session");
    assert_eq!(outer.chain.der()[0], proxy_leaf.cert_der());
    assert!(
        outer.chain.verified_path().is_some(),
        "verified against its trust"
    );
    assert!(outer.tls_version.is_some() && outer.cipher_suite.is_some());
    let Event::Response { served_by, .. } = out.event(first) else {
        panic!("not a response");
    };
    assert_eq!(
        served_by.chain.as_ref().expect("chain").der()[0],
        leaf.cert_der()
    );
    assert_eq!(
        engine
            .peer_chain(&rotary::Origin::parse(&server.url("/")).expect("origin"))
            .expect("the origin's chain")
            .der()[0],
        leaf.cert_der(),
    );
    // The origin saw an ordinary request, and no proxy credentials.
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("proxy-authorization").is_none()));
    let debug = format!("{:?} {:?}", out.events, again.events);
    assert!(!debug.contains("hunter2"), "{debug}");
    assert_drained(&mut engine);
}

#[test]
fn megabytes_both_ways_cross_both_sessions_intact() {
    // Larger than every buffer on the way (the engine's 64 KiB scratch and
    // 256 KiB read budget, rustls's 64 KiB limits, TLS's 16 KiB records), so
    // the inner session is pumped whenever the outer yields plaintext and
    // writes are flushed through both, on readiness alone.
    let (ca, leaf) = ca_and_leaf();
    let down: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let up: &'static [u8] = Box::leak(
        (0..1024 * 1024 + 5)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<u8>>()
            .into_boxed_slice(),
    );
    let reply = down.clone();
    let server = TestServer::tls(&leaf, move |_, _| Reply::ok(reply.clone()));
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &ca.issue(&["127.0.0.1"]),
    );
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, through(&url, None));
    let id = engine.submit(get(&server.url("/down0")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(
        out.response(id).body().as_ref() == down.as_slice(),
        "body intact"
    );
    let id = engine.submit(post(&server.url("/up"), up), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(
        out.response(id).body().as_ref() == down.as_slice(),
        "body intact"
    );
    let seen = server.requests();
    let upload = seen.iter().find(|r| r.target == "/up").expect("the upload");
    assert!(upload.body == up, "upload intact");
    let id = engine.submit(get(&server.url("/down")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(
        out.response(id).body().as_ref() == down.as_slice(),
        "body intact"
    );
    assert_eq!(proxy.tls_handshakes(), 1);
    assert_drained(&mut engine);
}

#[test]
fn an_https_proxy_is_checked_against_the_engines_trust_by_default() {
    let (ca, leaf) = ca_and_leaf();
    let proxy_leaf = ca.issue(&["127.0.0.1"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &proxy_leaf,
    );
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, through(&url, None));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 200);
    let info = out.opened()[0];
    assert_eq!(
        info.proxy_tls.as_ref().expect("proxy tls").chain.der()[0],
        proxy_leaf.cert_der()
    );
    assert_eq!(
        info.chain.as_ref().expect("chain").der()[0],
        leaf.cert_der()
    );
    assert_drained(&mut engine);
}

#[test]
fn plain_http_goes_through_an_https_proxy_in_absolute_form_inside_its_tls() {
    let (proxy_ca, proxy_leaf) = proxy_pki();
    let proxy_ca_file = proxy_ca.write_pem_file();
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: "127.0.0.1:9".parse().expect("addr"),
        },
        &proxy_leaf,
    );
    let url = proxy.url(Some("u:p"));
    let trust = Trust::pem_file(proxy_ca_file.path());
    let mut engine = plain_engine(through(&url, Some(trust)));
    let id = engine.submit(
        get("http://origin.invalid:8080/jobs"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"via proxy");
    let head = proxy.heads().remove(0);
    assert!(
        head.starts_with("GET http://origin.invalid:8080/jobs HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head
        .to_ascii_lowercase()
        .contains("proxy-authorization: basic dtpw\r\n"));
    let info = out.opened()[0];
    assert!(info.chain.is_none(), "no origin TLS for http://");
    assert_eq!(
        info.proxy_tls.as_ref().expect("proxy tls").chain.der()[0],
        proxy_leaf.cert_der()
    );
    assert_drained(&mut engine);
}

#[test]
fn a_rotation_at_the_origin_heals_within_max_age_through_an_https_proxy() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let (proxy_ca, proxy_leaf) = proxy_pki();
    let proxy_ca_file = proxy_ca.write_pem_file();
    let server = TestServer::tls(&leaf_a, |_, _| {
        Reply::ok("poll").delay(Duration::from_millis(20))
    });
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &proxy_leaf,
    );
    let url = proxy.url(None);
    let max_age = Duration::from_millis(300);
    let trust = Trust::pem_file(proxy_ca_file.path());
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url, Some(trust))(c);
        c.policy.max_age = Some(max_age);
        c.policy.max_age_jitter = Some(Duration::ZERO);
    });
    let first = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[first], T);
    assert_eq!(
        out.opened()[0].chain.as_ref().expect("chain").der()[0],
        leaf_a.cert_der()
    );
    let rotated = Instant::now();
    server.rotate_to(&leaf_b);
    // Keep polling, as a runner does, until a response comes over the new chain.
    let (healed, events) = poll_until_leaf(
        &mut engine,
        &server.url("/"),
        &leaf_b.cert_der(),
        rotated,
        T,
    );
    assert!(
        healed < max_age + Duration::from_secs(3),
        "healed after {healed:?}"
    );
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 2, "{stats:#?}");
    assert_eq!(stats.chain_changes, 1, "{stats:#?}");
    let new = events
        .iter()
        .filter_map(|e| match e {
            Event::Opened(info) => Some(info),
            _ => None,
        })
        .last()
        .expect("a replacement opened");
    assert_eq!(new.handshake, Some(Handshake::Full));
    assert_eq!(new.peer_addr, proxy.addr(), "the replacement re-tunnelled");
    // The replacement's own session with the proxy, and the proxy's chain
    // still reported apart from the origin's new one.
    assert_eq!(proxy.tls_handshakes(), 2);
    assert_eq!(proxy.heads().len(), 2);
    assert_eq!(
        new.proxy_tls.as_ref().expect("proxy tls").chain.der()[0],
        proxy_leaf.cert_der()
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ChainChanged { .. })));
    // The old tunnel closed as a whole: its age, or the chain change that
    // retires it, whichever came first.
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::MaxAge | CloseReason::ChainChange,
            ..
        }
    )));
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------------------
// Failures: the proxy TLS rows of docs/failures.md.
// ---------------------------------------------------------------------------

#[test]
fn a_proxy_cert_the_proxy_trust_does_not_anchor_is_a_proxy_tls_failure() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("never"));
    // The proxy's certificate is from its own CA; the proxy trust is the
    // origin's CA only, so the handshake with the proxy fails.
    let (_, proxy_leaf) = proxy_pki();
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: server.addr(),
        },
        &proxy_leaf,
    );
    let url = proxy.url(Some("ops:hunter2"));
    let (mut engine, _ca) = engine_for(&ca, through(&url, None));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("proxy tls: untrusted proxy certificate", &err);
    assert_eq!(err.phase(), Phase::Proxy);
    let Error::Proxy {
        proxy: shown,
        failure: ProxyFailure::Tls(reason),
    } = &err
    else {
        panic!("expected a proxy TLS failure, got {err:?}");
    };
    assert_eq!(*shown, format!("https://{}", proxy.addr()));
    assert!(
        matches!(reason, rustls::Error::InvalidCertificate(_)),
        "{reason:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains("tls with the proxy failed"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(proxy.heads().is_empty(), "no CONNECT left the client");
    assert!(server.requests().is_empty());
    assert_eq!(engine.stats().retries, 0);
    assert_drained(&mut engine);
}

#[test]
fn a_proxy_that_never_answers_the_client_hello_hits_the_proxy_handshake_deadline() {
    let (ca, _) = ca_and_leaf();
    // A plain proxy behind an https:// URL: it waits for a request head
    // that a ClientHello never completes.
    let proxy = ConnectProxy::start(ProxyScript::Close);
    let url = format!("https://{}", proxy.addr());
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url, None)(c);
        c.timeouts.handshake = Duration::from_millis(100);
    });
    let id = engine.submit(get("https://localhost:9/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("proxy tls: handshake deadline", &err);
    assert_eq!(err.deadline(), Some(Deadline::ProxyHandshake));
    assert_eq!(err.to_string(), "proxy tls handshake deadline passed");
    assert_drained(&mut engine);
}

#[test]
fn a_plain_http_answer_to_the_client_hello_is_a_proxy_tls_failure() {
    let (ca, _) = ca_and_leaf();
    // An http:// peer named with https://: it answers the ClientHello as
    // squid answers garbage, with a plain 400, and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.set_read_timeout(Some(T));
            let mut hello = [0u8; 512];
            let _ = conn.read(&mut hello);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let url = format!("https://{addr}");
    let (mut engine, _ca) = engine_for(&ca, through(&url, None));
    let id = engine.submit(get("https://localhost:9/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("proxy tls: plain http answer", &err);
    assert!(
        matches!(
            &err,
            Error::Proxy {
                failure: ProxyFailure::Tls(rustls::Error::InvalidMessage(_)),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.phase(), Phase::Proxy);
    peer.join().expect("peer thread");
    assert_drained(&mut engine);
}

/// One GET through an `https://` proxy following `script` inside its TLS;
/// the error, after the checks every proxy failure shares.
fn failing_inside_tls(test: &str, script: ProxyScript, proxy_connect: Duration) -> Error {
    let (ca, _) = ca_and_leaf();
    let proxy = ConnectProxy::start_tls(script, &ca.issue(&["127.0.0.1"]));
    let url = proxy.url(Some("ops:hunter2"));
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url, None)(c);
        c.timeouts.proxy_connect = proxy_connect;
    });
    let id = engine.submit(get("https://localhost:9/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row(test, &err);
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{test}: {shown}");
    assert_eq!(
        proxy.tls_handshakes(),
        1,
        "{test}: the CONNECT went inside TLS"
    );
    assert_eq!(proxy.heads().len(), 1, "{test}");
    assert_eq!(engine.stats().retries, 0, "{test}");
    assert_drained(&mut engine);
    err
}

#[test]
fn connect_failures_inside_an_https_proxys_tls_are_the_same_rows() {
    let answer = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n";
    let err = failing_inside_tls("tls 407", ProxyScript::Answer(answer.to_vec()), T);
    assert!(
        matches!(
            &err,
            Error::Proxy {
                failure: ProxyFailure::Refused {
                    credentials_sent: true,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    let err = failing_inside_tls("tls closed", ProxyScript::Close, T);
    assert!(
        matches!(
            &err,
            Error::Proxy {
                failure: ProxyFailure::Closed,
                ..
            }
        ),
        "{err:?}"
    );
    let err = failing_inside_tls(
        "tls silent",
        ProxyScript::AnswerThenHold(Vec::new()),
        Duration::from_millis(60),
    );
    assert_eq!(err.deadline(), Some(Deadline::ProxyConnect), "{err:?}");
    let err = failing_inside_tls(
        "tls malformed",
        ProxyScript::Answer(b"HTTP/1.1 two hundred\r\n\r\n".to_vec()),
        T,
    );
    assert!(
        matches!(
            &err,
            Error::Proxy {
                failure: ProxyFailure::BadResponse(_),
                ..
            }
        ),
        "{err:?}"
    );
}

/// 40 requests, a tunnel each, through an `https://` proxy, with the seeded
/// chaos proxy placed in front of the https proxy (`outer`: it breaks the
/// proxy's own TLS) or behind it (it breaks the origin's traffic inside).
/// Every request ends once; what broke behind the proxy is never blamed on
/// it; the engine ends drained.
fn chaos_through_an_https_proxy(outer: bool) {
    let seed = std::env::var("ROTARY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    eprintln!("chaos seed {seed} (ROTARY_CHAOS_SEED replays it), outer {outer}");
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok(vec![b'x'; 2000]));
    let behind = FaultProxy::builder(server.addr())
        .seed(seed)
        .random_faults(if outer { 0.0 } else { 0.3 }, 4096)
        .start();
    let proxy = ConnectProxy::start_tls(
        ProxyScript::Tunnel {
            upstream: behind.addr(),
        },
        &ca.issue(&["127.0.0.1"]),
    );
    let front = FaultProxy::builder(proxy.addr())
        .seed(seed)
        .random_faults(if outer { 0.3 } else { 0.0 }, 4096)
        .start();
    let url = format!("https://{}", front.addr());
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url, None)(c);
        c.policy.max_requests = Some(1);
        c.timeouts.handshake = Duration::from_millis(600);
        c.timeouts.proxy_connect = Duration::from_millis(600);
    });
    let opts = RequestOptions::default().deadline(Duration::from_millis(600));
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..8 {
        let ids: Vec<_> = (0..5)
            .map(|_| engine.submit(get(&server.url("/")), opts))
            .collect();
        let out = finish(&mut engine, &ids, T);
        for id in ids {
            match out.event(id) {
                Event::Response { response, .. } => {
                    assert_eq!(response.body().len(), 2000);
                    ok += 1;
                }
                Event::Failed { error, .. } => {
                    if !outer {
                        assert_ne!(error.phase(), Phase::Proxy, "{error:?}");
                    }
                    failed += 1;
                }
                other => panic!("unexpected terminal event {other:?}"),
            }
        }
    }
    let fired = if outer { front.stats() } else { behind.stats() };
    eprintln!("{ok} ok, {failed} failed, faults {fired:?}");
    assert!(ok > 0, "some requests get through");
    assert!(fired.fired > 0, "faults fired");
    assert_drained(&mut engine);
}

#[test]
fn chaos_in_front_of_an_https_proxy_ends_every_request_once() {
    chaos_through_an_https_proxy(true);
}

#[test]
fn chaos_behind_an_https_proxy_is_never_blamed_on_it() {
    chaos_through_an_https_proxy(false);
}
