//! `Engine::fresh_chain`: the origin's chain as it is now, from a recent full
//! handshake or a TLS-only one started for the call, shared by concurrent
//! calls, within the connection limit, deadlines and shutdown.

mod driver;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use driver::*;
use rotary::{
    ChainRequestId, CloseReason, Deadline, Engine, Error, Event, OnChainChange, Origin, PeerChain,
    RequestOptions,
};
use support::*;

const T: Duration = Duration::from_secs(10);

fn origin_of(url: &str) -> Origin {
    Origin::parse(url).expect("a valid origin")
}

/// The answers to `ids`, waiting for them; asserts each call got exactly one.
fn answers(
    engine: &mut Engine,
    ids: &[ChainRequestId],
) -> (Vec<Result<Arc<PeerChain>, Error>>, Vec<Event>) {
    let is_answer = |e: &Event, id: ChainRequestId| matches!(e, Event::FreshChain { id: got, .. } if *got == id);
    let events = run_until(engine, T, |evs| {
        ids.iter().all(|&id| evs.iter().any(|e| is_answer(e, id)))
    });
    let results = ids
        .iter()
        .map(|&id| {
            let mine: Vec<&Event> = events.iter().filter(|e| is_answer(e, id)).collect();
            assert_eq!(mine.len(), 1, "call {id:?} got {} answers", mine.len());
            match mine[0] {
                Event::FreshChain { result, .. } => result.clone(),
                _ => unreachable!("filtered to FreshChain"),
            }
        })
        .collect();
    (results, events)
}

fn answer(engine: &mut Engine, id: ChainRequestId) -> (Result<Arc<PeerChain>, Error>, Vec<Event>) {
    let (mut results, events) = answers(engine, &[id]);
    (results.remove(0), events)
}

#[test]
fn a_recent_full_handshake_answers_at_once_without_a_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let a = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    let opened = out.opened()[0].chain.clone().expect("a tls chain");

    let id = engine.fresh_chain(&origin_of(&server.url("")), Duration::from_secs(60));
    // Answered before any poll: the event is already queued.
    match engine.next_event() {
        Some(Event::FreshChain {
            id: got,
            result: Ok(chain),
            ..
        }) => {
            assert_eq!(got, id);
            assert!(Arc::ptr_eq(&chain, &opened), "the connection's own chain");
            assert_eq!(chain.der(), &leaf.chain_der()[..]);
        }
        other => panic!("expected the answer at once, got {other:?}"),
    }
    assert_eq!(server.stats().handshakes_full, 1, "no new handshake");
    assert_eq!(engine.stats().fresh_chain_handshakes, 0);
    assert_drained(&mut engine);
}

#[test]
fn a_handshake_older_than_the_freshness_makes_a_new_one_without_a_request() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let a = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    let first = out.opened()[0].conn;
    let done = Instant::now();
    let freshness = Duration::from_millis(30);
    pump_until(&mut engine, T, || done.elapsed() > freshness);

    let id = engine.fresh_chain(&origin_of(&server.url("")), freshness);
    assert!(
        engine.next_event().is_none(),
        "no answer before the handshake"
    );
    assert_eq!(engine.stats().fresh_chains_pending, 1);
    let (result, events) = answer(&mut engine, id);
    let chain = result.expect("the fresh chain");
    assert_eq!(chain.der(), &leaf.chain_der()[..]);
    assert!(chain.ca_bundle().is_ok(), "a bundle a job can trust");
    // The server counts a handshake on its own thread, maybe after ours ended.
    server.expect_until(T, "one more full handshake", |s| s.handshakes_full == 2);
    assert_eq!(server.stats().handshakes_resumed, 0);
    // The fresh-chain connection carried no request and closed as a probe.
    let closed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Closed { conn, reason, .. } => Some((*conn, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_ne!(closed[0].0, first, "the request's connection stays");
    assert_eq!(closed[0].1, CloseReason::Probe);
    assert_eq!(server.stats().requests, 1);
    let stats = engine.stats();
    assert_eq!(stats.fresh_chain_handshakes, 1);
    assert_eq!(stats.connections_opened, 1, "not counted as opened");
    assert_drained(&mut engine);
}

#[test]
fn concurrent_calls_for_one_origin_share_one_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let origin = origin_of(&server.url(""));
    let ids: Vec<ChainRequestId> = (0..5)
        .map(|_| engine.fresh_chain(&origin, Duration::ZERO))
        .collect();
    assert_eq!(engine.stats().fresh_chains_pending, 5);
    assert_eq!(engine.stats().connections, 1, "one connection for all five");
    let (results, _) = answers(&mut engine, &ids);
    let chains: Vec<Arc<PeerChain>> = results.into_iter().map(|r| r.expect("a chain")).collect();
    assert!(chains.iter().all(|c| Arc::ptr_eq(c, &chains[0])));
    assert_eq!(engine.stats().connections_attempted, 1);
    server.expect_until(T, "a full handshake", |s| s.handshakes_full >= 1);
    assert_eq!(server.stats().handshakes_full, 1);
    assert_eq!(engine.stats().fresh_chain_handshakes, 1);
    assert_eq!(engine.stats().fresh_chains_pending, 0);

    // A later call after it finished, with a freshness covering it: no handshake.
    let again = engine.fresh_chain(&origin, Duration::from_secs(60));
    let (result, _) = answer(&mut engine, again);
    assert!(Arc::ptr_eq(&result.expect("a chain"), &chains[0]));
    assert_eq!(server.stats().handshakes_full, 1);
    assert_drained(&mut engine);
}

#[test]
fn a_rotation_is_seen_at_once_while_the_long_lived_connection_keeps_the_old_chain() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf_a, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |c| {
        c.policy.on_chain_change = OnChainChange::Keep;
    });
    let origin = origin_of(&server.url(""));
    let a = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    let long_lived = out.opened()[0].conn;

    server.rotate_to(&leaf_b);
    let id = engine.fresh_chain(&origin, Duration::ZERO);
    let (result, events) = answer(&mut engine, id);
    let chain = result.expect("the fresh chain");
    assert_eq!(
        chain.der(),
        &leaf_b.chain_der()[..],
        "the rotated chain, now"
    );
    let changed = events.iter().find_map(|e| match e {
        Event::ChainChanged {
            previous, current, ..
        } => Some((previous.clone(), current.clone())),
        _ => None,
    });
    let (previous, current) = changed.expect("the fresh handshake reports the change");
    assert_eq!(previous.der(), &leaf_a.chain_der()[..]);
    assert!(Arc::ptr_eq(&current, &chain));
    let now = engine.peer_chain(&origin).expect("the origin's chain");
    assert_eq!(now.der(), &leaf_b.chain_der()[..]);

    // The long-lived connection still serves, with the chain it was opened with.
    let b = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[b], T);
    match out.event(b) {
        Event::Response { served_by, .. } => {
            assert_eq!(served_by.conn, long_lived);
            let old = served_by.chain.as_ref().expect("a tls chain");
            assert_eq!(old.der(), &leaf_a.chain_der()[..]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.stats().chain_changes, 1);
    assert_drained(&mut engine);
}

#[test]
fn a_fresh_handshake_that_sees_a_rotation_retires_the_older_connections_by_default() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf_a, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let a = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    let old = out.opened()[0].conn;

    server.rotate_to(&leaf_b);
    let id = engine.fresh_chain(&origin_of(&server.url("")), Duration::ZERO);
    let (result, events) = answer(&mut engine, id);
    assert_eq!(result.expect("a chain").der(), &leaf_b.chain_der()[..]);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Closed { conn, reason: CloseReason::ChainChange, .. } if *conn == old
        )),
        "the idle old connection retires: {events:#?}"
    );
    assert_drained(&mut engine);
}

#[test]
fn a_server_that_is_down_fails_every_waiting_call_with_the_connect_error() {
    let (ca, _leaf) = ca_and_leaf();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let origin = origin_of(&format!("https://127.0.0.1:{port}"));
    let ids = [
        engine.fresh_chain(&origin, Duration::ZERO),
        engine.fresh_chain(&origin, Duration::ZERO),
    ];
    let (results, events) = answers(&mut engine, &ids);
    for r in results {
        match r {
            Err(Error::Connect { addr, .. }) => assert_eq!(addr.port(), port),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ConnectFailed { .. })));
    assert_drained(&mut engine);
}

#[test]
fn a_stalled_handshake_ends_at_the_handshake_deadline() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .on_accept(|_| Accept::Stall)
        .start();
    let (mut engine, _f) = engine_for(&ca, |c| {
        c.timeouts.handshake = Duration::from_millis(50);
    });
    let id = engine.fresh_chain(&origin_of(&server.url_ip("")), Duration::ZERO);
    assert_eq!(
        engine.stats().timers,
        2,
        "the connect deadline is on the wheel, with the credential check"
    );
    pump_until(&mut engine, T, || server.stats().connections_accepted >= 1);
    // Then the handshake deadline alone (and the credential check): no max
    // age for a chain-only connection.
    assert_eq!(engine.stats().timers, 2, "{:#?}", engine.stats());
    let (result, _) = answer(&mut engine, id);
    let err = result.expect_err("the handshake never finished");
    assert_eq!(err.deadline(), Some(Deadline::Handshake), "{err:?}");
    assert_drained(&mut engine);
}

#[test]
fn shutdown_fails_pending_and_later_calls_with_shutdown() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .on_accept(|_| Accept::Stall)
        .start();
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let origin = origin_of(&server.url_ip(""));
    let pending = engine.fresh_chain(&origin, Duration::ZERO);
    pump_until(&mut engine, T, || server.stats().connections_accepted >= 1);
    engine.shutdown();
    let later = engine.fresh_chain(&origin, Duration::ZERO);
    let mut got = Vec::new();
    while let Some(ev) = engine.next_event() {
        if let Event::FreshChain { id, result, .. } = ev {
            got.push((id, result));
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, pending);
    assert_eq!(got[1].0, later);
    for (_, r) in &got {
        assert!(matches!(r, Err(Error::Shutdown)), "{r:?}");
    }
    assert!(engine.stats().is_idle(), "{:#?}", engine.stats());
}

#[test]
fn the_handshake_counts_against_max_connections() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| {
        if req.path() == "/poll" {
            Reply::ok("job").delay(Duration::from_millis(300))
        } else {
            Reply::ok("hi")
        }
    });
    let (mut engine, _f) = engine_for(&ca, |c| c.policy.max_connections = 1);
    let origin = origin_of(&server.url(""));
    // The one connection is busy with a long poll: no room.
    let poll = engine.submit(get(&server.url("/poll")), RequestOptions::default());
    pump_until(&mut engine, T, || server.stats().requests >= 1);
    let refused = engine.fresh_chain(&origin, Duration::ZERO);
    let (result, _) = answer(&mut engine, refused);
    assert!(
        matches!(result, Err(Error::ConnectionLimit { limit: 1 })),
        "{result:?}"
    );
    let out = finish(&mut engine, &[poll], T);
    assert_eq!(out.response(poll).body(), "job");
    // Now it is idle: it closes to make room.
    let id = engine.fresh_chain(&origin, Duration::ZERO);
    let (result, events) = answer(&mut engine, id);
    assert!(result.is_ok(), "{result:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::Idle,
            ..
        }
    )));
    server.expect_until(T, "a second full handshake", |s| s.handshakes_full == 2);
    assert_drained(&mut engine);
}

#[test]
fn an_http_origin_is_refused() {
    let mut engine = plain_engine(|_| {});
    let id = engine.fresh_chain(&origin_of("http://127.0.0.1:9"), Duration::ZERO);
    let (result, _) = answer(&mut engine, id);
    assert!(matches!(result, Err(Error::Unsupported(_))), "{result:?}");
    assert_drained(&mut engine);
}

#[test]
fn a_handle_asks_from_another_thread() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let handle = engine.handle();
    let kept = engine.handle();
    let origin = origin_of(&server.url(""));
    let asked = origin.clone();
    let id = std::thread::spawn(move || handle.fresh_chain(asked, Duration::ZERO))
        .join()
        .expect("the thread ends")
        .expect("the engine is there");
    let (result, _) = answer(&mut engine, id);
    assert_eq!(result.expect("a chain").der(), &leaf.chain_der()[..]);
    assert_eq!(engine.stats().fresh_chain_handshakes, 1);
    assert_drained(&mut engine);

    drop(engine);
    assert!(matches!(
        kept.fresh_chain(origin, Duration::ZERO),
        Err(Error::Shutdown)
    ));
}
