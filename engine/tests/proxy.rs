//! Forward proxies against the scripted in-repo proxy (`support::connect_proxy`):
//! tunnels for `https://`, absolute-form for `http://`, Basic credentials,
//! `no_proxy` and the per-origin bypass, pooling by route, and one test per
//! proxy row of `docs/failures.md`. Each test ends with the engine holding
//! nothing.

mod driver;
mod support;

use std::time::{Duration, Instant};

use driver::*;
use rotary::{
    Config, Deadline, Error, NoProxy, Phase, Policy, Proxies, Proxy, ProxyFailure, RequestOptions,
};
use support::*;

const T: Duration = Duration::from_secs(10);

fn through(url: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        let proxy = Proxy::parse(url).expect("proxy url");
        c.proxy = Proxies::all(proxy);
    }
}

/// Prints the text a row of the failures table quotes.
fn row(test: &str, e: &Error) {
    eprintln!("row: {test}: {e} [{e:?}]");
}

fn proxy_failure(e: &Error) -> &ProxyFailure {
    match e {
        Error::Proxy { failure, .. } => failure,
        other => panic!("expected a proxy error, got {other:?}"),
    }
}

#[test]
fn https_goes_through_a_connect_tunnel_and_reports_the_origins_chain() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("inside"));
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: server.addr(),
    });
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, through(&url));
    let first = engine.submit(get(&server.url("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[first], T);
    assert_eq!(out.response(first).body().as_ref(), b"inside");
    let second = engine.submit(get(&server.url("/b")), RequestOptions::default());
    let again = finish(&mut engine, &[second], T);
    assert_eq!(again.response(second).body().as_ref(), b"inside");

    let heads = proxy.heads();
    assert_eq!(
        heads.len(),
        1,
        "one tunnel carries both requests: {heads:?}"
    );
    let connect = format!("CONNECT localhost:{} HTTP/1.1\r\n", server.port());
    assert!(heads[0].starts_with(&connect), "{}", heads[0]);
    assert!(!heads[0]
        .to_ascii_lowercase()
        .contains("proxy-authorization"));
    let opened = out.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].peer_addr, proxy.addr(), "TCP goes to the proxy");
    assert_eq!(opened[0].proxy.as_deref(), Some(url.as_str()));
    let chain = opened[0].chain.as_ref().expect("origin's chain");
    assert_eq!(
        chain.der()[0],
        leaf.cert_der(),
        "the origin's leaf, not a proxy's"
    );
    // The origin saw ordinary origin-form requests.
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("proxy-authorization").is_none()));
    assert_drained(&mut engine);
}

#[test]
fn basic_credentials_from_the_url_are_decoded_and_sent_only_to_the_proxy() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: server.addr(),
    });
    let url = proxy.url(Some("r%40nner:s%3Acret"));
    let (mut engine, _ca) = engine_for(&ca, through(&url));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 200);
    let head = proxy.heads().remove(0).to_ascii_lowercase();
    // base64("r@nner:s:cret")
    assert!(
        head.contains("proxy-authorization: basic ckbubmvyonm6y3jlda=="),
        "{head}"
    );
    assert!(server.requests()[0].header("proxy-authorization").is_none());
    let opened = format!("{:?}", out.opened());
    assert!(
        !opened.contains("cret") && !opened.contains("r@nner"),
        "{opened}"
    );
    assert_drained(&mut engine);
}

#[test]
fn plain_http_goes_to_the_proxy_in_absolute_form_without_resolving_the_origin() {
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: "127.0.0.1:9".parse().expect("addr"),
    });
    let url = proxy.url(Some("u:p"));
    let mut engine = plain_engine(through(&url));
    // `origin.invalid` never resolves: only the proxy's address is looked up.
    let id = engine.submit(
        get("http://origin.invalid:8080/jobs?wait=1"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"via proxy");
    let head = proxy.heads().remove(0);
    assert!(
        head.starts_with("GET http://origin.invalid:8080/jobs?wait=1 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("host: origin.invalid:8080\r\n"), "{head}");
    assert!(
        lower.contains("proxy-authorization: basic dtpw\r\n"),
        "{head}"
    );
    assert_drained(&mut engine);
}

#[test]
fn no_proxy_and_the_origin_policy_send_an_origin_direct() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("direct"));
    let proxy = ConnectProxy::start(ProxyScript::Close);
    let proxies = Proxies::all(Proxy::parse(&proxy.url(None)).expect("url"))
        .no_proxy(NoProxy::parse("example.test, 127.0.0.0/8"));
    let (mut engine, _ca) = engine_for(&ca, |c| c.proxy = proxies);
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"direct");
    assert_eq!(out.opened()[0].proxy, None);
    // `localhost` is not in the list and not special: it would go through
    // the proxy, unless its origin policy says direct.
    let origin = rotary::Origin::parse(&server.url("/")).expect("origin");
    let mut policy = Policy::default();
    policy.direct = true;
    engine
        .set_origin_policy(origin, policy)
        .expect("a policy that can work");
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"direct");
    assert!(proxy.heads().is_empty(), "the proxy saw nothing");
    assert_drained(&mut engine);
}

#[test]
fn connections_through_a_proxy_are_never_handed_a_direct_request() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: server.addr(),
    });
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, through(&url));
    let origin = rotary::Origin::parse(&server.url("/")).expect("origin");
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let tunnelled = finish(&mut engine, &[id], T);
    assert_eq!(tunnelled.response(id).status(), 200);
    // The tunnelled connection is idle in its pool; the origin now goes direct.
    let mut policy = Policy::default();
    policy.direct = true;
    engine
        .set_origin_policy(origin.clone(), policy)
        .expect("a policy that can work");
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let direct = finish(&mut engine, &[id], T);
    assert_eq!(direct.response(id).status(), 200);
    let opened = direct.opened();
    assert_eq!(opened.len(), 1, "a new connection, not the tunnelled one");
    assert_eq!(opened[0].proxy, None);
    assert_ne!(opened[0].peer_addr, proxy.addr());
    assert_eq!(proxy.heads().len(), 1);
    assert_eq!(server.stats().connections_accepted, 2);
    // And back: the tunnelled connection is still the proxy route's.
    engine
        .set_origin_policy(origin, Policy::default())
        .expect("a policy that can work");
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let back = finish(&mut engine, &[id], T);
    assert_eq!(back.response(id).status(), 200);
    assert!(back.opened().is_empty(), "reused the tunnel");
    assert_eq!(proxy.heads().len(), 1);
    // Two routes, one origin: its counters are reported once, summed.
    let stats = engine.stats();
    assert_eq!(stats.origins.len(), 1, "{:#?}", stats.origins);
    assert_eq!(stats.origins[0].connections_opened, 2);
    assert_drained(&mut engine);
}

#[test]
fn max_age_counts_from_the_tcp_connect_and_a_replacement_re_tunnels() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: server.addr(),
    });
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url)(c);
        c.policy.max_age = Some(Duration::from_millis(150));
        c.policy.max_age_jitter = Some(Duration::ZERO);
        c.policy.prewarm = false;
    });
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 200);
    let start = Instant::now();
    let mut seen = Vec::new();
    until_seen(&mut engine, &mut seen, T, |e| {
        matches!(
            e,
            rotary::Event::Closed {
                reason: rotary::CloseReason::MaxAge,
                ..
            }
        )
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 200);
    assert_eq!(out.opened().len(), 1);
    assert_eq!(
        proxy.heads().len(),
        2,
        "the replacement sent its own CONNECT"
    );
    assert_eq!(server.stats().handshakes_full, 2, "and a full handshake");
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------------------
// Failures: one per proxy row of docs/failures.md.
// ---------------------------------------------------------------------------

/// One GET to `https://localhost:9/` through a proxy following `script`;
/// the error, after checking what every proxy failure shares: one failure,
/// no retry, the engine drained, no credential in its text.
fn failing_tunnel(test: &str, script: ProxyScript, userinfo: Option<&str>) -> (Error, Vec<String>) {
    // A long CONNECT deadline: a loaded machine must not turn a row into a timeout.
    failing_tunnel_within(test, script, userinfo, T)
}

/// As [`failing_tunnel`], with this CONNECT deadline.
fn failing_tunnel_within(
    test: &str,
    script: ProxyScript,
    userinfo: Option<&str>,
    proxy_connect: Duration,
) -> (Error, Vec<String>) {
    let (ca, _) = ca_and_leaf();
    let proxy = ConnectProxy::start(script);
    let url = proxy.url(userinfo);
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url)(c);
        c.timeouts.proxy_connect = proxy_connect;
    });
    let id = engine.submit(get("https://localhost:9/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row(test, &err);
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("hunter2"),
        "{test}: credentials shown: {shown}"
    );
    let stats = engine.stats();
    assert_eq!(stats.retries, 0, "{test}");
    assert_eq!(stats.requests_failed(), 1, "{test}");
    assert_drained(&mut engine);
    (err, proxy.heads())
}

#[test]
fn proxy_unreachable_is_a_proxy_error_naming_the_connect_failure() {
    let (ca, _) = ca_and_leaf();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let url = format!("http://ops:hunter2@{addr}");
    let (mut engine, _ca) = engine_for(&ca, through(&url));
    let id = engine.submit(get("https://localhost:9/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    row("proxy_unreachable", &err);
    assert_eq!(err.phase(), Phase::Proxy);
    match proxy_failure(&err) {
        ProxyFailure::Unreachable(inner) => {
            assert!(
                matches!(**inner, Error::Connect { addr: a, .. } if a == addr),
                "{inner:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("proxy http://{addr}: unreachable")),
        "{text}"
    );
    assert!(!format!("{text} {err:?}").contains("hunter2"));
    assert_drained(&mut engine);
}

#[test]
fn connect_407_without_credentials_says_they_are_missing() {
    let answer = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n";
    let (err, _) = failing_tunnel(
        "connect_407_missing",
        ProxyScript::Answer(answer.to_vec()),
        None,
    );
    assert_eq!(err.phase(), Phase::Proxy);
    match proxy_failure(&err) {
        ProxyFailure::Refused {
            status,
            authenticate,
            credentials_sent,
        } => {
            assert_eq!(*status, 407);
            assert_eq!(authenticate, &["Basic realm=\"corp\""]);
            assert!(!credentials_sent);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("wants credentials and none were given"),
        "{err}"
    );
}

#[test]
fn connect_407_with_credentials_says_they_were_rejected_without_showing_them() {
    let answer = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Basic realm=\"corp\"\r\n\r\n";
    let (err, heads) = failing_tunnel(
        "connect_407_rejected",
        ProxyScript::Answer(answer.to_vec()),
        Some("ops:hunter2"),
    );
    assert!(heads[0]
        .to_ascii_lowercase()
        .contains("proxy-authorization: basic "));
    assert!(matches!(
        proxy_failure(&err),
        ProxyFailure::Refused {
            credentials_sent: true,
            ..
        }
    ));
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );
    assert!(err.to_string().contains("Basic realm=\"corp\""), "{err}");
}

#[test]
fn connect_403_is_refused_with_its_status() {
    let answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied";
    let (err, _) = failing_tunnel("connect_403", ProxyScript::Answer(answer.to_vec()), None);
    assert!(matches!(
        proxy_failure(&err),
        ProxyFailure::Refused { status, .. } if *status == 403
    ));
    assert_eq!(err.to_string(), format!("{}", err));
    assert!(
        err.to_string().ends_with("CONNECT answered 403 Forbidden"),
        "{err}"
    );
}

#[test]
fn proxy_closing_during_connect_is_closed() {
    let (err, heads) = failing_tunnel("connect_closed", ProxyScript::Close, None);
    assert_eq!(heads.len(), 1, "the CONNECT was sent");
    assert!(
        matches!(proxy_failure(&err), ProxyFailure::Closed),
        "{err:?}"
    );
    let half = b"HTTP/1.1 200 Connection est".to_vec();
    let (err, _) = failing_tunnel("connect_closed_mid_head", ProxyScript::Answer(half), None);
    assert!(
        matches!(proxy_failure(&err), ProxyFailure::Closed),
        "{err:?}"
    );
}

#[test]
fn a_silent_proxy_hits_the_connect_deadline() {
    let start = Instant::now();
    let short = Duration::from_millis(60);
    let (err, _) = failing_tunnel_within(
        "connect_deadline",
        ProxyScript::AnswerThenHold(Vec::new()),
        None,
        short,
    );
    assert!(
        matches!(err, Error::Timeout(Deadline::ProxyConnect)),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "proxy CONNECT deadline passed");
    assert!(start.elapsed() < Duration::from_secs(5));
    // A partial answer does not extend it.
    let partial = b"HTTP/1.1 200 OK\r\nX-Slow: 1\r\n".to_vec();
    let (err, _) = failing_tunnel_within(
        "connect_deadline_partial",
        ProxyScript::AnswerThenHold(partial),
        None,
        short,
    );
    assert!(
        matches!(err, Error::Timeout(Deadline::ProxyConnect)),
        "{err:?}"
    );
}

#[test]
fn an_oversized_or_malformed_connect_answer_is_a_bad_response() {
    let mut huge = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (err, _) = failing_tunnel("connect_oversized", ProxyScript::AnswerThenHold(huge), None);
    assert!(
        matches!(
            proxy_failure(&err),
            ProxyFailure::BadResponse(rotary_proto::Error::HeadTooLarge { .. })
        ),
        "{err:?}"
    );
    let (err, _) = failing_tunnel(
        "connect_malformed",
        ProxyScript::Answer(b"HTTP/1.1 2x0 Sure\r\n\r\n".to_vec()),
        None,
    );
    assert!(
        matches!(proxy_failure(&err), ProxyFailure::BadResponse(_)),
        "{err:?}"
    );
}

#[test]
fn bytes_after_the_2xx_go_to_tls_not_to_http() {
    // Nothing may come before the server's TLS answer to our ClientHello:
    // these bytes reach the TLS session, which refuses them; they are never
    // read as an HTTP response.
    let answer = b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".to_vec();
    let (err, _) = failing_tunnel(
        "connect_bytes_after_2xx",
        ProxyScript::AnswerThenHold(answer),
        None,
    );
    assert!(
        matches!(
            err,
            Error::Tls {
                phase: Phase::Tls,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn chaos_behind_the_proxy_ends_every_request_once_and_never_blames_the_proxy() {
    let seed = std::env::var("ROTARY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    eprintln!("chaos seed {seed} (ROTARY_CHAOS_SEED replays it)");
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok(vec![b'x'; 2000]));
    let chaos = FaultProxy::builder(server.addr())
        .seed(seed)
        .random_faults(0.3, 4096)
        .start();
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: chaos.addr(),
    });
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url)(c);
        // A tunnel per request: every one meets its own fault, or none.
        c.policy.max_requests = Some(1);
    });
    // Stalls end at the deadline: short, so the run stays short.
    let opts = RequestOptions::default().deadline(Duration::from_millis(600));
    let (mut ok, mut failed) = (0, 0);
    let t0 = Instant::now();
    for _ in 0..8 {
        let ids: Vec<_> = (0..5)
            .map(|_| engine.submit(get(&server.url("/")), opts))
            .collect();
        let out = finish(&mut engine, &ids, T);
        for id in ids {
            match out.event(id) {
                rotary::Event::Response { response, .. } => {
                    assert_eq!(response.body().len(), 2000);
                    ok += 1;
                }
                rotary::Event::Failed { error, .. } => {
                    // The proxy answered every CONNECT: what broke was the
                    // origin's traffic inside the tunnel.
                    assert_ne!(error.phase(), Phase::Proxy, "{error:?}");
                    failed += 1;
                }
                other => panic!("unexpected terminal event {other:?}"),
            }
        }
    }
    eprintln!(
        "{ok} ok, {failed} failed, faults {:?} at {:?}",
        chaos.stats(),
        t0.elapsed()
    );
    assert!(ok > 0, "some requests get through");
    assert!(chaos.stats().fired > 0, "faults fired inside the tunnels");
    assert_drained(&mut engine);
}

#[test]
fn max_age_runs_from_the_tcp_connect_to_the_proxy_not_from_the_tunnel() {
    // The proxy answers CONNECT only after the whole max age has passed
    // since the TCP connect: counted from there, the connection is expired
    // the moment it is ready and carries nothing (counted from the tunnel,
    // it would carry the request).
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("late"));
    let proxy = ConnectProxy::start(ProxyScript::SlowTunnel {
        upstream: server.addr(),
        delay: Duration::from_millis(250),
    });
    let url = proxy.url(None);
    let (mut engine, _ca) = engine_for(&ca, |c| {
        through(&url)(c);
        c.policy.max_age = Some(Duration::from_millis(40));
        c.policy.max_age_jitter = Some(Duration::ZERO);
        c.policy.prewarm = false;
        c.policy.max_connections = 1;
    });
    let opts = RequestOptions::default().deadline(Duration::from_millis(400));
    let id = engine.submit(get(&server.url("/")), opts);
    let out = finish(&mut engine, &[id], T);
    assert!(
        matches!(out.error(id), Error::Timeout(Deadline::Total)),
        "{:?}",
        out.event(id)
    );
    let mut events = out.events;
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            rotary::Event::Closed {
                reason: rotary::CloseReason::MaxAge,
                ..
            }
        )
    });
    let opened = events
        .iter()
        .filter(|e| matches!(e, rotary::Event::Opened(_)))
        .count();
    assert!(opened >= 1, "the tunnel came up: {events:#?}");
    assert_eq!(
        server.stats().requests,
        0,
        "no expired tunnel carried the request"
    );
    assert_drained(&mut engine);
}
