//! Happy Eyeballs (RFC 8305): the addresses of a host race, a dead one
//! costs one delay rather than one connect timeout, the loser closes
//! without leaking, both families work, and a failure names every address.

mod driver;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use driver::*;
use rotary::{Error, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

/// A port on `ip` where nothing listens (connects are refused).
fn refused(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    l.local_addr().expect("addr")
}

/// A one-shot HTTP server on `ip` (any family) answering `ok` and closing;
/// the thread ends after one exchange or when the test's listener drops.
fn one_shot(ip: &str) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    let thread = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(T));
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    (addr, thread)
}

fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A GET to a name resolving to a black hole first and a live server
/// second; returns the outcome, how long it took and the live address.
fn through_a_black_hole_first(
    connect: Duration,
    delay: Duration,
) -> (rotary::Engine, Outcome, Duration, SocketAddr) {
    let hole = BlackHole::new();
    let server = TestServer::plain(|_, _| Reply::ok("here"));
    let live = server.addr();
    let mut engine = engine_resolving_to(vec![hole.addr(), live], |c| {
        c.timeouts.connect = connect;
        c.timeouts.happy_eyeballs_delay = delay;
    });
    let started = Instant::now();
    let url = format!("http://coordinator.test:{}/", live.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let took = started.elapsed();
    assert_eq!(out.response(id).body().as_ref(), b"here");
    (engine, out, took, live)
}

#[test]
fn a_black_holed_first_address_costs_one_delay_not_one_connect_timeout() {
    let (mut engine, out, took, live) =
        through_a_black_hole_first(Duration::from_secs(30), Duration::from_millis(30));
    // Bounded by the test's own deadline (10 s), far below the 30 s connect
    // timeout a one-after-another dial would wait on the black hole.
    assert!(took < T, "{took:?}");
    let opened = out.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].peer_addr, live, "the live address won");
    let stats = engine.stats();
    assert_eq!(
        stats.connections_attempted, 1,
        "one connection, two attempts"
    );
    assert_eq!(stats.requests_failed(), 0);
    // The black-holed attempt was closed: nothing is left once idle closes.
    assert_drained(&mut engine);
}

#[test]
fn without_racing_the_black_hole_costs_the_connect_timeout() {
    // The same resolver with racing off: the dial waits out the black hole's
    // connect deadline before the live address is tried. Shows that the
    // test above measures the race, not a fast failure.
    let connect = Duration::from_millis(300);
    let (mut engine, _, took, _) = through_a_black_hole_first(connect, Duration::MAX);
    assert!(took >= connect, "{took:?}");
    assert_drained(&mut engine);
}

#[test]
fn a_failed_attempt_starts_the_next_address_at_once() {
    let dead = refused("127.0.0.1");
    let server = TestServer::plain(|_, _| Reply::ok("here"));
    let live = server.addr();
    // A delay longer than the test's deadline: only "at once" can pass.
    let mut engine = engine_resolving_to(vec![dead, live], |c| {
        c.timeouts.happy_eyeballs_delay = Duration::from_secs(60);
    });
    let url = format!("http://coordinator.test:{}/", live.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"here");
    assert_eq!(out.opened()[0].peer_addr, live);
    assert_drained(&mut engine);
}

#[test]
fn a_connect_error_names_every_address_tried() {
    let a = refused("127.0.0.1");
    let b = refused("127.0.0.1");
    let mut engine = engine_resolving_to(vec![a, b], |_| {});
    let id = engine.submit(
        get(&format!("http://coordinator.test:{}/", a.port())),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id).clone();
    let Error::Connect { addr, earlier, .. } = &err else {
        panic!("{err:?}");
    };
    let mut tried: Vec<SocketAddr> = earlier.iter().map(|(a, _)| *a).collect();
    tried.push(*addr);
    tried.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(tried, expected, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&a.to_string()) && text.contains(&b.to_string()),
        "{text}"
    );
    assert!(text.contains("also tried"), "{text}");
    assert_drained(&mut engine);
}

#[test]
fn an_ipv6_literal_connects() {
    if !ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback ([::1]) on this machine");
        return;
    }
    let (addr, thread) = one_shot("::1");
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(
        get(&format!("http://[::1]:{}/", addr.port())),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"ok");
    assert_eq!(out.opened()[0].peer_addr, addr);
    assert_drained(&mut engine);
    let _ = thread.join();
}

#[test]
fn a_name_with_both_families_reaches_whichever_listens() {
    if !ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback ([::1]) on this machine");
        return;
    }
    // `localhost` as many hosts resolve it: ::1 first, then 127.0.0.1; the
    // server listens on one family only, on the same port number.
    for listen_on in ["127.0.0.1", "::1"] {
        let (addr, thread) = one_shot(listen_on);
        let both = vec![
            SocketAddr::new("::1".parse().expect("ip"), addr.port()),
            SocketAddr::new("127.0.0.1".parse().expect("ip"), addr.port()),
        ];
        let mut engine = engine_resolving_to(both, |_| {});
        let id = engine.submit(
            get(&format!("http://localhost:{}/", addr.port())),
            RequestOptions::default(),
        );
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).body().as_ref(), b"ok", "on {listen_on}");
        assert_eq!(out.opened()[0].peer_addr, addr);
        assert_drained(&mut engine);
        let _ = thread.join();
    }
}
