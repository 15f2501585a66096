//! Requests end to end against the test server: plain and TLS, reuse,
//! framing, deadlines, cancellation, failures, pooling and driving modes.

mod driver;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use driver::*;
use rotary::{CloseReason, Deadline, Error, Event, Handshake, Phase, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn plain_get_reuses_one_keep_alive_connection() {
    let server = TestServer::plain(|req, _| Reply::ok(format!("hello {}", req.path())));
    let mut engine = plain_engine(|_| {});
    for i in 0..3 {
        let id = engine.submit(
            get(&server.url_ip(&format!("/r{i}"))),
            RequestOptions::default(),
        );
        let out = finish(&mut engine, &[id], T);
        let resp = out.response(id);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), &format!("hello /r{i}")[..]);
    }
    assert_eq!(server.stats().connections_accepted, 1);
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.connections_reused, 2);
    assert_eq!(stats.requests_ok, 3);
    assert_drained(&mut engine);
}

#[test]
fn https_get_reports_full_handshake_version_alpn_and_chain() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .alpn(&[b"http/1.1"])
        .start();
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "ok");
    let opened = out.opened();
    assert_eq!(opened.len(), 1);
    let info = opened[0];
    assert_eq!(info.handshake, Some(Handshake::Full));
    assert_eq!(info.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));
    // rotary offers AES-128-GCM first (the test server follows the client).
    assert_eq!(
        info.cipher_suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let chain = info.chain.as_ref().expect("tls connections carry a chain");
    assert_eq!(chain.der(), &leaf.chain_der()[..]);
    match out.event(id) {
        Event::Response { served_by, .. } => {
            assert_eq!(served_by.conn, info.conn);
            assert_eq!(served_by.chain.as_deref(), Some(&**chain));
        }
        _ => unreachable!(),
    }
    let origin = rotary::Origin::parse(&server.url("/")).unwrap();
    assert_eq!(engine.peer_chain(&origin).as_deref(), Some(&**chain));
    assert_drained(&mut engine);
}

#[test]
fn chunked_body_and_trailers_are_delivered() {
    let server = TestServer::plain(|_, _| {
        Reply::ok(vec![b'x'; 10_000])
            .chunked()
            .parts(&[1, 999, 9000])
            .trailer("x-sum", "42")
    });
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let resp = out.response(id);
    assert_eq!(resp.body().len(), 10_000);
    let trailers = resp
        .extensions()
        .get::<rotary::Trailers>()
        .expect("trailers");
    assert_eq!(trailers.0.get("x-sum").unwrap(), "42");
    assert_drained(&mut engine);
}

#[test]
fn large_body_arrives_whole_and_body_limit_is_enforced() {
    let server = TestServer::plain(|_, _| Reply::ok(vec![7u8; 1 << 20]));
    let mut engine = plain_engine(|_| {});
    let ok = engine.submit(get(&server.url_ip("/big")), RequestOptions::default());
    let small = engine.submit(
        get(&server.url_ip("/big")),
        RequestOptions::default().max_buffered_body(1000),
    );
    let out = finish(&mut engine, &[ok, small], T);
    assert_eq!(out.response(ok).body().len(), 1 << 20);
    assert!(out.response(ok).body().iter().all(|&b| b == 7));
    assert!(matches!(
        out.error(small),
        Error::BodyTooLarge { limit: 1000 }
    ));
    assert_drained(&mut engine);
}

#[test]
fn streaming_mode_delivers_head_chunks_and_end() {
    let server =
        TestServer::plain(|_, _| Reply::ok(vec![1u8; 300_000]).chunked().parts(&[100_000; 3]));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(
        get(&server.url_ip("/")),
        RequestOptions::default().streaming(true),
    );
    let out = finish(&mut engine, &[id], T);
    let mut heads = 0;
    let mut body = 0;
    for e in &out.events {
        match e {
            Event::Head { response, .. } => {
                heads += 1;
                assert_eq!(response.status(), 200);
            }
            Event::Body { data, .. } => body += data.len(),
            _ => {}
        }
    }
    assert_eq!((heads, body), (1, 300_000));
    assert!(matches!(out.event(id), Event::End { .. }));
    assert_drained(&mut engine);
}

#[test]
fn post_body_reaches_the_server_with_content_length() {
    let server = TestServer::plain(|req, _| Reply::ok(req.body.clone()));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(
        post(&server.url_ip("/echo"), b"payload"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "payload");
    let reqs = server.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].header("content-length"), Some("7"));
    assert_drained(&mut engine);
}

#[test]
fn long_poll_without_deadline_waits_for_the_answer() {
    let server = TestServer::plain(|_, _| Reply::status(204).delay(Duration::from_millis(150)));
    let mut engine = plain_engine(|_| {});
    let started = Instant::now();
    let id = engine.submit(
        post(&server.url_ip("/api/v4/jobs/request"), b"{}"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_drained(&mut engine);
}

#[test]
fn first_byte_deadline_fails_the_request_and_closes_its_connection() {
    let server = TestServer::plain(|_, _| Reply::ok("late").delay(Duration::from_secs(5)));
    let mut engine = plain_engine(|_| {});
    let started = Instant::now();
    let opts = RequestOptions::default().first_byte_timeout(Duration::from_millis(40));
    let id = engine.submit(get(&server.url_ip("/")), opts);
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.error(id).deadline(), Some(Deadline::FirstByte));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(out.closed().contains(&CloseReason::Error));
    assert_drained(&mut engine);
}

#[test]
fn total_deadline_ends_a_request_in_flight_and_one_still_queued() {
    let server = TestServer::plain(|_, _| Reply::ok("late").delay(Duration::from_secs(5)));
    let mut engine = plain_engine(|c| c.policy.max_connections = 1);
    let opts = RequestOptions::default().deadline(Duration::from_millis(50));
    let a = engine.submit(get(&server.url_ip("/a")), opts);
    let b = engine.submit(get(&server.url_ip("/b")), opts);
    let started = Instant::now();
    let out = finish(&mut engine, &[a, b], T);
    assert_eq!(out.error(a).deadline(), Some(Deadline::Total));
    assert_eq!(out.error(b).deadline(), Some(Deadline::Total));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_drained(&mut engine);
}

#[test]
fn cancel_ends_queued_and_in_flight_requests_once() {
    let server = TestServer::plain(|_, _| Reply::ok("x").delay(Duration::from_secs(5)));
    let mut engine = plain_engine(|c| c.policy.max_connections = 1);
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    pump_until(&mut engine, T, || server.stats().requests >= 1);
    engine.cancel(b);
    engine.cancel(a);
    engine.cancel(a); // unknown by now: ignored
    let out = finish(&mut engine, &[a, b], T);
    assert!(matches!(out.error(a), Error::Cancelled));
    assert!(matches!(out.error(b), Error::Cancelled));
    assert!(out.closed().contains(&CloseReason::Cancelled));
    assert_drained(&mut engine);
}

#[test]
fn refused_connection_is_a_connect_error() {
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
    assert_eq!(out.error(id).phase(), Phase::Connect);
    assert_eq!(engine.stats().failed(Phase::Connect), 1);
    assert_drained(&mut engine);
}

#[test]
fn the_connect_deadline_is_per_address_and_the_next_one_is_tried() {
    let hole = BlackHole::new();
    let server = TestServer::plain(|_, _| Reply::ok("second address"));
    let limit = Duration::from_millis(100);
    let addrs = vec![hole.addr(), hole.addr(), server.addr()];
    let mut engine = engine_resolving_to(addrs, |c| c.timeouts.connect = limit);
    let started = Instant::now();
    let url = format!("http://coordinator.test:{}/", server.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "second address");
    // Two hung addresses, each with a deadline of its own.
    assert!(started.elapsed() >= limit * 2, "{:?}", started.elapsed());
    assert_eq!(engine.stats().connections_opened, 1);
    assert_drained(&mut engine);
}

struct NoSuchHost;
impl rotary::Resolver for NoSuchHost {
    fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host}: no such host"),
        ))
    }
}

#[test]
fn unresolvable_host_is_a_resolve_error_naming_the_host() {
    let mut engine = plain_engine(|c| c.resolver = Some(std::sync::Arc::new(NoSuchHost)));
    let id = engine.submit(get("http://nowhere.invalid/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    assert_eq!(err.phase(), Phase::Resolve);
    assert!(err.to_string().contains("nowhere.invalid"), "{err}");
    assert_drained(&mut engine);
}

#[test]
fn host_names_resolve_off_the_loop() {
    let server = TestServer::plain(|_, _| Reply::ok("named"));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "named");
    assert!(engine.resolver_threads() >= 1);
    engine.shutdown();
    assert_eq!(engine.resolver_threads(), 0);
    assert!(engine.stats().is_idle());
}

#[test]
fn unknown_ca_fails_the_handshake_with_rustls_reason() {
    let (_ca, leaf) = ca_and_leaf();
    let other = TestCa::new("some other CA");
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("no"));
    let (mut engine, _f) = engine_for(&other, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("issuer"), "{err}");
    assert!(out.closed().contains(&CloseReason::ConnectFailed));
    assert_drained(&mut engine);
}

#[test]
fn wrong_host_name_fails_the_handshake() {
    let ca = TestCa::new("rotary test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]).wrong_host().build();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("no"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(
        matches!(out.error(id), Error::Tls { .. }),
        "{:?}",
        out.error(id)
    );
    assert_drained(&mut engine);
}

#[test]
fn expired_certificate_fails_the_handshake() {
    let ca = TestCa::new("rotary test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]).expired().build();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("no"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    assert_drained(&mut engine);
}

#[test]
fn garbage_response_is_a_response_head_error_and_others_still_work() {
    let server = TestServer::plain(|req, _| {
        if req.path() == "/bad" {
            Reply::garbage()
        } else {
            Reply::ok("fine")
        }
    });
    let mut engine = plain_engine(|_| {});
    let bad = engine.submit(get(&server.url_ip("/bad")), RequestOptions::default());
    let good = engine.submit(get(&server.url_ip("/good")), RequestOptions::default());
    let out = finish(&mut engine, &[bad, good], T);
    assert_eq!(out.error(bad).phase(), Phase::ResponseHead);
    assert_eq!(out.response(good).body(), "fine");
    assert_drained(&mut engine);
}

#[test]
fn close_mid_body_is_a_truncated_body_error() {
    let server = TestServer::plain(|_, _| Reply::ok(vec![b'a'; 1000]).cut_at(200));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    assert_eq!(err.phase(), Phase::ResponseBody, "{err:?}");
    assert_drained(&mut engine);
}

#[test]
fn close_mid_head_is_a_response_head_error() {
    let server = TestServer::plain(|_, _| Reply::ok("abc").cut_at(10));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(
        out.error(id).phase(),
        Phase::ResponseHead,
        "{:?}",
        out.error(id)
    );
    assert_drained(&mut engine);
}

#[test]
fn stale_reused_connection_retries_get_but_not_post() {
    // The server drops every connection on its second request without answering.
    let server = TestServer::plain(|req, _| {
        if req.index_on_conn >= 1 {
            Reply::close()
        } else {
            Reply::ok("first")
        }
    });
    let mut engine = plain_engine(|_| {});
    let warm = engine.submit(get(&server.url_ip("/warm")), RequestOptions::default());
    finish(&mut engine, &[warm], T);
    let retried = engine.submit(get(&server.url_ip("/again")), RequestOptions::default());
    let out = finish(&mut engine, &[retried], T);
    assert_eq!(out.response(retried).body(), "first");
    assert_eq!(engine.stats().retries, 1);

    let post_id = engine.submit(
        post(&server.url_ip("/once"), b"x"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[post_id], T);
    match out.event(post_id) {
        Event::Failed { error, reused, .. } => {
            assert!(*reused);
            assert!(
                matches!(error, Error::PeerClosed { reused: true, .. }),
                "{error:?}"
            );
            assert!(
                error
                    .to_string()
                    .contains("reused connection closed by peer"),
                "{error}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let posts = server
        .requests()
        .iter()
        .filter(|r| r.path() == "/once")
        .count();
    assert_eq!(posts, 1, "a non-retry-safe POST is never sent twice");
    assert_eq!(engine.stats().retries, 1);
    assert_drained(&mut engine);
}

#[test]
fn retry_safe_post_is_retried_once_on_a_fresh_connection() {
    let server = TestServer::plain(|req, _| {
        if req.index_on_conn >= 1 {
            Reply::close()
        } else {
            Reply::ok("done")
        }
    });
    let mut engine = plain_engine(|_| {});
    let warm = engine.submit(get(&server.url_ip("/warm")), RequestOptions::default());
    finish(&mut engine, &[warm], T);
    let id = engine.submit(
        post(&server.url_ip("/p"), b"x"),
        RequestOptions::default().retry_safe(true),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "done");
    match out.event(id) {
        Event::Response { served_by, .. } => assert!(!served_by.reused),
        _ => unreachable!(),
    }
    assert_drained(&mut engine);
}

#[test]
fn idle_connection_closed_by_server_is_dropped_at_once() {
    let server = TestServer::builder()
        .idle_timeout(Duration::from_millis(30))
        .start();
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let mut events = finish(&mut engine, &[id], T).events;
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::PeerClose,
                ..
            }
        )
    });
    assert_eq!(engine.stats().connections, 0);
    assert_drained(&mut engine);
}

#[test]
fn idle_timeout_counts_from_the_last_exchange_not_the_first() {
    // The idle timer is re-armed lazily: one armed before the connection got
    // busy again must not close it, and it still closes once truly idle.
    let idle = Duration::from_millis(150);
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|c| c.policy.idle_timeout = Some(idle));
    let started = Instant::now();
    let (mut served, mut last) = (0, started);
    while started.elapsed() < idle * 4 && served < 10_000 {
        last = Instant::now();
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        finish(&mut engine, &[id], T);
        served += 1;
    }
    assert_eq!(
        engine.stats().connections_opened,
        1,
        "after {served} requests"
    );
    let mut events = Vec::new();
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::Idle,
                ..
            }
        )
    });
    // The last exchange went idle after `last`: the close cannot be earlier.
    assert!(
        last.elapsed() >= idle,
        "closed {:?} after the last submit",
        last.elapsed()
    );
    assert_drained(&mut engine);
}

#[test]
fn idle_timeout_closes_unused_connections() {
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|c| c.policy.idle_timeout = Some(Duration::from_millis(30)));
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let mut events = finish(&mut engine, &[id], T).events;
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::Idle,
                ..
            }
        )
    });
    assert!(engine.stats().is_idle(), "{:?}", engine.stats());
}

#[test]
fn never_more_connections_than_the_per_origin_maximum() {
    let server = TestServer::plain(|_, _| Reply::ok("x").delay(Duration::from_millis(5)));
    let mut engine = plain_engine(|c| c.policy.max_connections = 3);
    let ids: Vec<_> = (0..30)
        .map(|i| {
            engine.submit(
                get(&server.url_ip(&format!("/{i}"))),
                RequestOptions::default(),
            )
        })
        .collect();
    let mut peak = 0;
    let deadline = Instant::now() + T;
    let mut done = 0;
    while done < ids.len() {
        assert!(Instant::now() < deadline, "requests did not finish");
        engine.poll(Some(Duration::from_millis(100))).unwrap();
        peak = peak.max(engine.stats().connections);
        while let Some(e) = engine.next_event() {
            if e.is_terminal() {
                assert!(matches!(e, Event::Response { .. }), "{e:?}");
                done += 1;
            }
        }
    }
    assert!(peak <= 3, "peak {peak}");
    assert_eq!(server.stats().connections_accepted, 3);
    assert_drained(&mut engine);
}

#[test]
fn five_hundred_concurrent_connections() {
    // Every answer waits until all 500 requests are in, so none can share a connection.
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = arrived.clone();
    let server = TestServer::plain(move |_, _| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        wait_for(Duration::from_secs(30), || {
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 500
        });
        Reply::ok("x")
    });
    let mut engine = plain_engine(|c| c.policy.max_connections = 500);
    let ids: Vec<_> = (0..500)
        .map(|i| {
            engine.submit(
                get(&server.url_ip(&format!("/{i}"))),
                RequestOptions::default(),
            )
        })
        .collect();
    let out = finish(&mut engine, &ids, Duration::from_secs(60));
    for id in &ids {
        assert_eq!(out.response(*id).status(), 200);
    }
    assert_eq!(engine.stats().connections_opened, 500);
    assert_eq!(arrived.load(std::sync::atomic::Ordering::SeqCst), 500);
    assert_drained(&mut engine);
}

#[test]
fn handle_submits_from_another_thread_and_wakes_the_loop() {
    let server = TestServer::plain(|_, _| Reply::ok("from thread"));
    let mut engine = plain_engine(|_| {});
    let handle = engine.handle();
    let url = server.url_ip("/t");
    let id =
        std::thread::spawn(move || handle.submit(get(&url), RequestOptions::default()).unwrap())
            .join()
            .unwrap();
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "from thread");
    assert_drained(&mut engine);
}

#[test]
fn execute_runs_one_request_and_keeps_other_events() {
    let server = TestServer::plain(|_, _| Reply::ok("sync"));
    let mut engine = plain_engine(|_| {});
    let resp = engine
        .execute(get(&server.url_ip("/")), RequestOptions::default())
        .unwrap();
    assert_eq!(resp.body(), "sync");
    // The Opened event was kept for the caller.
    let mut opened = 0;
    while let Some(e) = engine.next_event() {
        assert!(!e.is_terminal());
        opened += matches!(e, Event::Opened(_)) as usize;
    }
    assert_eq!(opened, 1);
    assert_drained(&mut engine);
}

#[test]
fn embedded_engine_runs_in_a_host_mio_loop() {
    let server = TestServer::plain(|_, _| Reply::ok("embedded"));
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(64);
    let mut engine =
        rotary::Engine::embedded(poll.registry(), 1000, 100, rotary::Config::default()).unwrap();
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let deadline = Instant::now() + T;
    let resp = 'outer: loop {
        assert!(Instant::now() < deadline);
        let timeout = engine
            .next_timeout(Instant::now())
            .map_or(Duration::from_millis(100), |t| {
                t.min(Duration::from_millis(100))
            });
        poll.poll(&mut events, Some(timeout)).unwrap();
        for ev in events.iter() {
            assert!(engine.handle_event(ev), "only engine tokens are registered");
        }
        engine.handle_timeouts(Instant::now());
        while let Some(e) = engine.next_event() {
            if let Event::Response {
                id: got, response, ..
            } = e
            {
                assert_eq!(got, id);
                break 'outer response;
            }
        }
    };
    assert_eq!(resp.body(), "embedded");
    assert!(
        engine.poll(None).is_err(),
        "an embedded engine does not poll itself"
    );
    engine.shutdown();
    assert!(engine.stats().is_idle());
}

#[test]
fn a_host_clock_that_goes_back_does_not_stall_the_timers() {
    // The host once passes an instant a minute ahead, then goes back to the
    // real clock. The engine's time never goes back: deadlines are armed
    // from the later instant and judged by it, so none is due at once (and
    // none re-arms itself for ever), and each fires when the host's clock
    // reaches it: here the idle timeout closes the idle connection.
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(64);
    let mut config = rotary::Config::default();
    config.policy.idle_timeout = Some(Duration::from_secs(1));
    let mut engine = rotary::Engine::embedded(poll.registry(), 1000, 100, config).unwrap();
    let ahead = Instant::now() + Duration::from_secs(60);
    engine.handle_timeouts(ahead);
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let deadline = Instant::now() + T;
    // Only readiness events until the response: no timer fires before it.
    'outer: loop {
        assert!(Instant::now() < deadline, "no response");
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            engine.handle_event(ev);
        }
        while let Some(e) = engine.next_event() {
            if matches!(e, Event::Response { id: got, .. } if got == id) {
                break 'outer;
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let closed = |engine: &mut rotary::Engine| {
            std::iter::from_fn(|| engine.next_event()).any(|e| {
                matches!(
                    e,
                    Event::Closed {
                        reason: CloseReason::Idle,
                        ..
                    }
                )
            })
        };
        // The real clock is a minute behind the engine's: not idle yet.
        engine.handle_timeouts(Instant::now());
        let early = closed(&mut engine);
        // The host's clock reaches the idle deadline.
        engine.handle_timeouts(Instant::now() + Duration::from_secs(62));
        let late = closed(&mut engine);
        let _ = tx.send((early, late, engine.stats().connections));
    });
    let (early, late, open) = rx.recv_timeout(T).expect("handle_timeouts returned");
    assert!(
        !early,
        "an idle deadline armed after the jump is not due at once"
    );
    assert!(
        late && open == 0,
        "closed idle: {late}, connections: {open}"
    );
}

#[test]
fn shutdown_fails_everything_once_and_leaves_nothing() {
    let server = TestServer::plain(|_, _| Reply::ok("x").delay(Duration::from_secs(5)));
    let mut engine = plain_engine(|c| c.policy.max_connections = 1);
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    pump_until(&mut engine, T, || server.stats().requests >= 1);
    engine.poll(Some(Duration::ZERO)).unwrap();
    engine.shutdown();
    let late = engine.submit(get(&server.url_ip("/c")), RequestOptions::default());
    let out = finish(&mut engine, &[a, b, late], T);
    for id in [a, b, late] {
        assert!(
            matches!(out.error(id), Error::Shutdown),
            "{:?}",
            out.event(id)
        );
    }
    assert!(engine.stats().is_idle());
    assert_eq!(engine.resolver_threads(), 0);
    assert!(server.wait_until(T, |s| s.connections_open == 0));
}

#[test]
fn invalid_requests_end_at_once_with_one_event() {
    let mut engine = plain_engine(|_| {});
    let relative = engine.submit(get("/just/a/path"), RequestOptions::default());
    let ftp = engine.submit(get("ftp://example.com/"), RequestOptions::default());
    let out = finish(&mut engine, &[relative, ftp], T);
    assert_eq!(out.error(relative).phase(), Phase::Request);
    assert_eq!(out.error(ftp).phase(), Phase::Request);
    assert!(engine.stats().is_idle());
}

#[test]
fn scheme_and_authority_of_each_uri_pick_its_pool() {
    // The engine remembers the last URI's pool; a URI that differs only in
    // scheme must not land on it.
    let server = TestServer::plain(|_, _| Reply::ok("plain"));
    let mut engine = plain_engine(|_| {});
    let plain = server.url_ip("/");
    let ok = engine.submit(get(&plain), RequestOptions::default());
    let out = finish(&mut engine, &[ok], T);
    assert_eq!(out.response(ok).body(), "plain");
    let ftp = engine.submit(
        get(&plain.replace("http:", "ftp:")),
        RequestOptions::default(),
    );
    let tls = engine.submit(
        get(&plain.replace("http:", "https:")),
        RequestOptions::default(),
    );
    let again = engine.submit(
        get(&plain.replace("http:", "HTTP:")),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[ftp, tls, again], T);
    assert!(matches!(out.error(ftp), Error::InvalidUri(_)));
    assert_eq!(out.error(tls).phase(), Phase::Tls);
    assert_eq!(out.response(again).body(), "plain");
    assert_eq!(engine.stats().connections_reused, 1);
    assert_drained(&mut engine);
}

#[test]
fn prometheus_rendering_names_counters() {
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    finish(&mut engine, &[id], T);
    let text = engine.stats().to_prometheus();
    assert!(text.contains("rotary_requests_ok_total 1"), "{text}");
    assert!(text.contains("# TYPE rotary_connections gauge"));
    let _ = Bytes::new();
    assert_drained(&mut engine);
}

#[test]
fn engine_moves_between_threads_and_handles_are_shared() {
    // Compile-time checks: an Engine may be built on one thread and run on
    // another; a Handle may be shared by many.
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<rotary::Engine>();
    send::<rotary::Handle>();
    sync::<rotary::Handle>();
    let mut engine = plain_engine(|_| {});
    let handle = engine.handle();
    let server = TestServer::plain(|_, _| Reply::ok("moved"));
    let url = server.url_ip("/");
    let resp = std::thread::spawn(move || {
        let id = handle.submit(get(&url), RequestOptions::default()).unwrap();
        let out = finish(&mut engine, &[id], T);
        let body = out.response(id).body().clone();
        assert_drained(&mut engine);
        body
    })
    .join()
    .unwrap();
    assert_eq!(resp, "moved");
}
