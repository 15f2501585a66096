//! Connection lifetimes: max age, drain, prewarm, fresh chains after a
//! certificate rotation, server hints, resumption policy.

mod driver;
mod support;

use std::time::{Duration, Instant};

use driver::*;
use rotary::{CloseReason, Config, Deadline, Error, Event, Handshake, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

fn aging(c: &mut Config, age_ms: u64) {
    c.policy.max_age = Some(Duration::from_millis(age_ms));
    c.policy.max_age_jitter = Some(Duration::ZERO);
}

#[test]
fn long_poll_in_flight_at_max_age_completes_then_next_poll_uses_a_fresh_full_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| {
        Reply::status(204).delay(Duration::from_millis(200))
    });
    let (mut engine, _f) = engine_for(&ca, |c| {
        aging(c, 60);
        c.policy.prewarm = false;
    });
    let first = engine.submit(
        post(&server.url("/api/v4/jobs/request"), b"{}"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[first], T);
    assert_eq!(
        out.response(first).status(),
        204,
        "the poll outlives max age and completes"
    );
    // Its connection retires right after the response.
    let mut events = out.events;
    if !events.iter().any(|e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::MaxAge,
                ..
            }
        )
    }) {
        events.extend(run_until(&mut engine, T, |evs| {
            evs.iter().any(|e| {
                matches!(
                    e,
                    Event::Closed {
                        reason: CloseReason::MaxAge,
                        ..
                    }
                )
            })
        }));
    }
    let second = engine.submit(
        post(&server.url("/api/v4/jobs/request"), b"{}"),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[second], T);
    assert_eq!(out.response(second).status(), 204);
    let opened = out.opened();
    assert_eq!(opened.len(), 1, "the second poll needed a new connection");
    assert_eq!(opened[0].handshake, Some(Handshake::Full));
    assert_eq!(server.stats().handshakes_full, 2);
    assert_eq!(server.stats().handshakes_resumed, 0);
    assert_drained(&mut engine);
}

#[test]
fn prewarm_opens_the_replacement_before_expiry() {
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|c| aging(c, 120));
    let first = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[first], T);
    let first_conn = out.opened()[0].conn;
    // Wait for the replacement to open and the old connection to expire.
    let mut events: Vec<Event> = out
        .events
        .into_iter()
        .filter(|e| !matches!(e, Event::Opened(i) if i.conn == first_conn))
        .collect();
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(e, Event::Opened(_))
    });
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::MaxAge,
                ..
            }
        )
    });
    let opened_at = events
        .iter()
        .position(|e| matches!(e, Event::Opened(_)))
        .unwrap();
    let expired_at = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::MaxAge,
                    ..
                }
            )
        })
        .unwrap();
    assert!(opened_at < expired_at, "make before break: {events:#?}");
    // The next request does not wait for a handshake: no new connection opens.
    let next = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[next], T);
    assert!(out.opened().is_empty());
    match out.event(next) {
        Event::Response { served_by, .. } => assert_ne!(served_by.conn, first_conn),
        e => panic!("{e:?}"),
    }
    assert_drained(&mut engine);
}

#[test]
fn no_request_fails_under_load_when_connections_age_out_every_50ms() {
    let server = TestServer::plain(|_, _| Reply::ok("job").delay(Duration::from_millis(2)));
    let mut engine = plain_engine(|c| {
        c.policy.max_age = Some(Duration::from_millis(50));
        c.policy.max_connections = 16;
    });
    let url = server.url_ip("/api/v4/jobs/request");
    let streams = 16;
    let run_for = Duration::from_secs(2);
    let started = Instant::now();
    let mut live = 0;
    for _ in 0..streams {
        engine.submit(
            get(&url),
            RequestOptions::default().deadline(Duration::from_secs(5)),
        );
        live += 1;
    }
    let (mut ok, mut failed) = (0u64, Vec::new());
    let hard_stop = started + Duration::from_secs(30);
    while live > 0 {
        assert!(Instant::now() < hard_stop, "load test did not finish");
        engine.poll(Some(Duration::from_millis(100))).unwrap();
        while let Some(e) = engine.next_event() {
            if !e.is_terminal() {
                continue;
            }
            live -= 1;
            match e {
                Event::Response { .. } => ok += 1,
                other => failed.push(other),
            }
            if started.elapsed() < run_for {
                engine.submit(
                    get(&url),
                    RequestOptions::default().deadline(Duration::from_secs(5)),
                );
                live += 1;
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let expiries = engine.stats().closed(CloseReason::MaxAge);
    assert!(expiries >= 24, "only {expiries} expiries");
    assert!(ok > 100, "only {ok} requests");
    assert_drained(&mut engine);
}

#[test]
fn after_rotation_rotary_sees_the_new_chain_while_a_resuming_client_sees_the_old() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::builder()
        .tls(&leaf_a)
        .resumption(support::Resumption::Tickets)
        .start();
    let (mut engine, _f) = engine_for(&ca, |c| {
        aging(c, 80);
        c.policy.prewarm = false;
    });
    // The plain rustls client with default resumption: connect once, keep tickets.
    let config = ca.client_config();
    let mut plain = Client::tls(server.addr(), "localhost", config.clone(), T).unwrap();
    plain.get("/").unwrap();
    assert_eq!(plain.peer_chain().unwrap(), leaf_a.chain_der());

    let a = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(
        out.opened()[0].chain.as_ref().unwrap().der(),
        &leaf_a.chain_der()[..]
    );

    server.rotate_to(&leaf_b);
    // Wait for rotary's connection to age out.
    let mut events = out.events;
    until_seen(&mut engine, &mut events, T, |e| {
        matches!(
            e,
            Event::Closed {
                reason: CloseReason::MaxAge,
                ..
            }
        )
    });
    let b = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    let opened = out.opened();
    assert_eq!(opened[0].handshake, Some(Handshake::Full));
    assert_eq!(
        opened[0].chain.as_ref().unwrap().der(),
        &leaf_b.chain_der()[..]
    );
    let changed = out.events.iter().find_map(|e| match e {
        Event::ChainChanged {
            previous, current, ..
        } => Some((previous.clone(), current.clone())),
        _ => None,
    });
    let (previous, current) = changed.expect("ChainChanged fires");
    assert_eq!(previous.der(), &leaf_a.chain_der()[..]);
    assert_eq!(current.der(), &leaf_b.chain_der()[..]);

    // The ordinary client resumes and still reports the OLD chain.
    drop(plain);
    let resumed = Client::tls(server.addr(), "localhost", config, T).unwrap();
    assert_eq!(
        resumed.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(
        resumed.peer_chain().unwrap(),
        leaf_a.chain_der(),
        "this is the bug rotary fixes"
    );
    assert_drained(&mut engine);
}

#[test]
fn chain_change_retires_older_connections_after_their_exchange() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf_a, |req, _| {
        if req.path() == "/slow" {
            Reply::ok("slow").delay(Duration::from_millis(300))
        } else {
            Reply::ok("fast")
        }
    });
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let slow = engine.submit(get(&server.url("/slow")), RequestOptions::default());
    pump_until(&mut engine, T, || server.stats().requests >= 1);
    server.rotate_to(&leaf_b);
    let fast = engine.submit(get(&server.url("/fast")), RequestOptions::default());
    let out = finish(&mut engine, &[slow, fast], T);
    assert_eq!(out.response(slow).body(), "slow");
    assert_eq!(out.response(fast).body(), "fast");
    let retired = |evs: &[Event]| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::ChainChange,
                    ..
                }
            )
        })
    };
    let mut events = out.events;
    if !retired(&events) {
        events.extend(run_until(&mut engine, T, retired));
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ChainChanged { .. })));
    assert_eq!(engine.stats().chain_changes, 1);
    assert_drained(&mut engine);
}

#[test]
fn drain_grace_fails_a_stuck_exchange_with_a_drain_timeout() {
    let server = TestServer::plain(|_, _| Reply::ok("late").delay(Duration::from_secs(5)));
    let mut engine = plain_engine(|c| {
        aging(c, 40);
        c.policy.drain_grace = Some(Duration::from_millis(30));
        c.policy.prewarm = false;
    });
    let id = engine.submit(post(&server.url_ip("/"), b"x"), RequestOptions::default());
    let started = Instant::now();
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.error(id).deadline(), Some(Deadline::DrainGrace));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(engine.stats().drains_hit_grace, 1);
    assert!(out.closed().contains(&CloseReason::MaxAge));
    assert_drained(&mut engine);
}

#[test]
fn drain_grace_retries_a_retry_safe_request_once_on_a_fresh_connection() {
    let server = TestServer::plain(|req, _| {
        if req.conn_id == 1 {
            Reply::ok("stuck").delay(Duration::from_secs(5))
        } else {
            Reply::ok("fresh")
        }
    });
    let mut engine = plain_engine(|c| {
        aging(c, 40);
        c.policy.drain_grace = Some(Duration::from_millis(20));
        c.policy.prewarm = false;
    });
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "fresh");
    assert_eq!(engine.stats().retries, 1);
    assert_drained(&mut engine);
}

#[test]
fn connection_close_from_the_server_retires_after_the_response() {
    let server =
        TestServer::plain(|_, _| Reply::ok("bye").header("Connection", "close").close_after());
    let mut engine = plain_engine(|_| {});
    let a = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(out.response(a).body(), "bye");
    let mut events = out.events;
    events.extend(run_until(&mut engine, T, |_| true));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::ServerClose,
            ..
        }
    )));
    let b = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    finish(&mut engine, &[b], T);
    assert_eq!(server.stats().connections_accepted, 2);
    assert_drained(&mut engine);
}

#[test]
fn keep_alive_max_hint_caps_the_remaining_exchanges() {
    let server = TestServer::plain(|_, _| Reply::ok("x").header("Keep-Alive", "timeout=30, max=1"));
    let mut engine = plain_engine(|_| {});
    for _ in 0..4 {
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        finish(&mut engine, &[id], T);
    }
    assert_eq!(
        server.stats().connections_accepted,
        2,
        "max=1 allows one more exchange per connection"
    );
    assert_eq!(engine.stats().closed(CloseReason::MaxRequests), 2);
    assert_drained(&mut engine);
}

#[test]
fn max_requests_retires_a_connection_after_n_exchanges() {
    let server = TestServer::plain(|_, _| Reply::ok("x"));
    let mut engine = plain_engine(|c| c.policy.max_requests = Some(2));
    for _ in 0..5 {
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        finish(&mut engine, &[id], T);
    }
    assert_eq!(server.stats().connections_accepted, 3);
    assert_drained(&mut engine);
}

#[test]
fn keep_alive_timeout_hint_shorter_than_the_margin_closes_after_the_response() {
    let server = TestServer::plain(|_, _| Reply::ok("x").header("Keep-Alive", "timeout=1"));
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(out.closed().contains(&CloseReason::ServerClose));
    assert!(engine.stats().is_idle());
}

#[test]
fn nonsense_keep_alive_values_are_ignored() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("x").header("Keep-Alive", "timeout=abc, max=-3, foo, =,")
    });
    let mut engine = plain_engine(|_| {});
    for _ in 0..3 {
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).body(), "x");
    }
    assert_eq!(server.stats().connections_accepted, 1);
    assert_drained(&mut engine);
}

#[test]
fn resumption_within_max_age_resumes_but_never_by_default() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .resumption(support::Resumption::Tickets)
        .start();
    for (policy, expect) in [
        (rotary::Resumption::Never, Handshake::Full),
        (rotary::Resumption::WithinMaxAge, Handshake::Resumed),
    ] {
        let (mut engine, _f) = engine_for(&ca, |c| {
            c.policy.resumption = policy;
            c.policy.max_requests = Some(1);
        });
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let id = engine.submit(get(&server.url("/")), RequestOptions::default());
            let out = finish(&mut engine, &[id], T);
            kinds.extend(out.opened().iter().map(|i| i.handshake.unwrap()));
        }
        assert_eq!(kinds, vec![Handshake::Full, expect], "policy {policy:?}");
        assert_drained(&mut engine);
    }
}

#[test]
fn cancelled_or_failed_requests_are_not_lost_during_expiry() {
    // A server that closes exactly at expiry: every request still ends once.
    let server = TestServer::plain(|_, _| {
        Reply::ok("x")
            .delay(Duration::from_millis(30))
            .close_after()
    });
    let mut engine = plain_engine(|c| aging(c, 30));
    let ids: Vec<_> = (0..20)
        .map(|_| engine.submit(get(&server.url_ip("/")), RequestOptions::default()))
        .collect();
    let out = finish(&mut engine, &ids, T);
    for id in ids {
        assert!(matches!(
            out.event(id),
            Event::Response { .. }
                | Event::Failed {
                    error: Error::PeerClosed { .. },
                    ..
                }
        ));
    }
    assert_drained(&mut engine);
}
