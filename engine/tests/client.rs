//! `rotary::Client`: the engine on a background thread behind blocking
//! calls — streamed bodies both ways, the fresh-chain call, the lifecycle
//! channel, and shutdown or drop with requests in flight.

mod support;

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{
    Body, Client, CloseReason, Config, Error, Event, Origin, RequestOptions, ServedBy, Trust,
    LIFECYCLE_CAPACITY,
};
use support::*;

const T: Duration = Duration::from_secs(10);

fn client_for(ca: &TestCa) -> (Client, TempFile) {
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    (Client::new(config).expect("client starts"), file)
}

fn get(url: &str) -> http::Request<()> {
    http::Request::get(url).body(()).expect("request")
}

/// `n` bytes of a pattern that shows reordering and loss.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The `rotary::Error` an `io::Error` from a body read carries.
fn inner(e: &io::Error) -> &Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("an io::Error carrying a rotary::Error, got {e:?}"))
}

/// A reader that hands out `data` a few bytes at a time, then fails if told to.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    fail_at: Option<usize>,
}

impl Trickle {
    fn new(data: &[u8], fail_at: Option<usize>) -> Trickle {
        Trickle {
            data: data.to_vec(),
            at: 0,
            fail_at,
        }
    }
}

/// A PUT of `data` read from a [`Trickle`], with or without its length.
fn reader_put(url: &str, data: &[u8], length: Option<u64>) -> http::Request<Body> {
    http::Request::put(url)
        .body(Body::reader(Trickle::new(data, None), length))
        .expect("request")
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_at.is_some_and(|f| self.at >= f) {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(7000).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn the_client_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Client>();
    fn send<T: Send>() {}
    send::<rotary::ResponseBody>();
}

#[test]
fn a_response_body_is_read_as_it_arrives_and_names_its_chain() {
    let (ca, leaf) = ca_and_leaf();
    let data = pattern(3 * 1024 * 1024 + 17);
    let served = data.clone();
    let server = TestServer::tls(&leaf, move |_, _| {
        Reply::ok(served.clone()).parts(&[100_000, 500_000, 1_000_000])
    });
    let (client, _f) = client_for(&ca);
    // Far below the body: the engine must hold the server back, not buffer.
    let opts = RequestOptions::default().receive_window(64 * 1024);
    let mut resp = client
        .send_with(get(&server.url("/big")), opts)
        .expect("response");
    assert_eq!(resp.status(), 200);
    let served_by = resp.extensions().get::<ServedBy>().expect("served_by");
    let chain = served_by.chain.clone().expect("a tls chain");
    assert_eq!(chain.der(), &leaf.chain_der()[..]);
    let mut got = Vec::new();
    resp.body_mut().read_to_end(&mut got).expect("whole body");
    assert!(got == data, "{} bytes read, {} sent", got.len(), data.len());
    drop(resp);

    // The connection went back to the pool and serves the next request.
    let again = client.send(get(&server.url("/big"))).expect("again");
    assert!(
        again
            .extensions()
            .get::<ServedBy>()
            .expect("served_by")
            .reused
    );
    assert_eq!(again.into_body().bytes().expect("body").len(), data.len());
    assert_eq!(server.stats().connections_accepted, 1);
    assert_client_drained(&client);
}

#[test]
fn bytes_stops_at_max_body() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok(vec![b'x'; 100_000]));
    let (client, _f) = client_for(&ca);
    let resp = client
        .send_with(
            get(&server.url("/")),
            RequestOptions::default().max_buffered_body(1000),
        )
        .expect("head");
    match resp.into_body().bytes() {
        Err(Error::BodyTooLarge { limit: 1000 }) => {}
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    assert_client_drained(&client);
}

#[test]
fn uploads_from_a_reader_go_chunked_or_with_their_length() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| Reply::ok(format!("{}", req.body.len())));
    let (client, _f) = client_for(&ca);
    let data = pattern(1024 * 1024 + 3);
    for length in [None, Some(data.len() as u64)] {
        let req = reader_put(&server.url("/up"), &data, length);
        let resp = client.send(req).expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().bytes().expect("body");
        assert_eq!(body, Bytes::from(data.len().to_string()));
    }
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].chunked, "no length: chunked");
    assert!(!seen[1].chunked, "a length: Content-Length");
    assert_eq!(
        seen[1].header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert!(seen.iter().all(|r| r.body == data), "bytes intact");
    assert_client_drained(&client);
}

#[test]
fn a_reader_that_fails_or_ends_short_fails_the_request_by_name() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("never"));
    let (client, _f) = client_for(&ca);
    let data = pattern(600_000);
    let failing = Trickle::new(&data, Some(300_000));
    let req = http::Request::put(server.url("/up"))
        .body(Body::reader(failing, None))
        .expect("request");
    match client.send(req) {
        Err(Error::BodySource { reason, .. }) => {
            assert!(reason.contains("disk on fire"), "{reason}")
        }
        other => panic!("expected BodySource, got {other:?}"),
    }
    let short = Trickle::new(&data, None);
    let req = http::Request::put(server.url("/up"))
        .body(Body::reader(short, Some(700_000)))
        .expect("request");
    match client.send(req) {
        Err(Error::BodySource { .. }) => {}
        other => panic!("expected BodySource for a short body, got {other:?}"),
    }
    assert_eq!(server.stats().requests, 0, "no request completed");
    assert_client_drained(&client);
}

#[test]
fn a_body_dropped_half_read_closes_its_connection() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| {
        Reply::ok(pattern(4 * 1024 * 1024)).parts(&[65_536; 8])
    });
    let (client, _f) = client_for(&ca);
    let life = client
        .lifecycle()
        .expect("the first call takes the channel");
    assert!(client.lifecycle().is_none(), "only once");
    let mut resp = client.send(get(&server.url("/"))).expect("response");
    let first = resp.extensions().get::<ServedBy>().expect("served_by").conn;
    let mut some = vec![0; 16 * 1024];
    resp.body_mut().read_exact(&mut some).expect("a part");
    assert_eq!(some, pattern(16 * 1024));
    drop(resp);

    let until = Instant::now() + T;
    let reason = loop {
        let left = until.saturating_duration_since(Instant::now());
        match life.recv_timeout(left).expect("a Closed event") {
            Event::Closed { conn, reason, .. } if conn == first => break reason,
            _ => {}
        }
    };
    assert_eq!(reason, CloseReason::Cancelled);
    let next = client.send(get(&server.url("/"))).expect("next");
    let by = next
        .extensions()
        .get::<ServedBy>()
        .expect("served_by")
        .clone();
    assert!(!by.reused && by.conn != first, "a new connection: {by:?}");
    drop(next);
    assert_client_drained(&client);
}

#[test]
fn shutdown_fails_requests_in_flight_with_shutdown() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| match req.target.as_str() {
        "/silent" => Reply::stall(),
        _ => Reply::ok(pattern(1024 * 1024)).stall_at(5000),
    });
    let (client, _f) = client_for(&ca);
    let mut half = client.send(get(&server.url("/half"))).expect("head");
    let waiting = {
        let client = client.clone();
        let url = server.url("/silent");
        thread::spawn(move || client.send(get(&url)).map(|_| ()))
    };
    server.expect_until(T, "both requests", |s| s.requests == 2);

    client.shutdown();
    match waiting.join().expect("sender thread") {
        Err(Error::Shutdown) => {}
        other => panic!("expected Shutdown, got {other:?}"),
    }
    let mut rest = Vec::new();
    let err = half.body_mut().read_to_end(&mut rest).expect_err("cut");
    assert!(matches!(inner(&err), Error::Shutdown), "{err:?}");
    assert!(rest.len() < 5000, "only what came before the stall");
    assert!(matches!(
        client.send(get(&server.url("/"))),
        Err(Error::Shutdown)
    ));
    assert!(matches!(client.stats(), Err(Error::Shutdown)));
    let origin = Origin::parse(&server.url("")).expect("origin");
    assert!(matches!(
        client.fresh_chain(&origin, Duration::ZERO),
        Err(Error::Shutdown)
    ));
    client.shutdown(); // idempotent
}

#[test]
fn dropping_the_last_clone_on_another_thread_stops_the_engine() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok(pattern(1024 * 1024)).stall_at(5000));
    let (client, _f) = client_for(&ca);
    let life = client.lifecycle().expect("channel");
    let mut half = client.send(get(&server.url("/"))).expect("head");
    let (done_tx, done_rx) = mpsc::channel();
    let dropper = thread::spawn(move || {
        drop(client);
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(T)
        .expect("drop returns once the thread stopped");
    dropper.join().expect("dropper");
    let err = half
        .body_mut()
        .read_to_end(&mut Vec::new())
        .expect_err("cut");
    assert!(matches!(inner(&err), Error::Shutdown), "{err:?}");
    // The engine's thread is gone: its lifecycle sender with it.
    let until = Instant::now() + T;
    loop {
        match life.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the engine thread still runs"),
        }
    }
}

#[test]
fn fresh_chain_returns_the_chain_of_a_new_full_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hi"));
    let (client, _f) = client_for(&ca);
    let origin = Origin::parse(&server.url("")).expect("origin");
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let origin = origin.clone();
            thread::spawn(move || client.fresh_chain(&origin, Duration::from_secs(60)))
        })
        .collect();
    for c in callers {
        let chain = c.join().expect("caller").expect("a chain");
        assert_eq!(chain.der(), &leaf.chain_der()[..]);
        assert!(chain.ca_bundle().is_ok(), "a bundle for a job");
    }
    // Within the freshness, later calls reuse the first handshake. The
    // client's own count is exact; the server counts a handshake only when
    // it has read the client's Finished, which may come after the chain.
    let handshakes = || client.stats().expect("client running").handshakes_full;
    let before = handshakes();
    assert!(
        (1..=3).contains(&before),
        "{before} handshakes for 3 callers"
    );
    client
        .fresh_chain(&origin, Duration::from_secs(60))
        .expect("cached");
    assert_eq!(handshakes(), before, "no new handshake");
    assert_eq!(server.stats().requests, 0, "no request sent");
    assert_client_drained(&client);
}

#[test]
fn lifecycle_events_nobody_reads_are_bounded() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x").close_after());
    let (client, _f) = client_for(&ca);
    // Each request opens and closes a connection: two events apiece.
    let n = LIFECYCLE_CAPACITY / 2 + 20;
    for _ in 0..n {
        let resp = client.send(get(&server.url("/"))).expect("response");
        resp.into_body().bytes().expect("body");
    }
    assert_client_drained(&client);
    let life = client.lifecycle().expect("channel");
    let waiting: Vec<Event> = life.try_iter().collect();
    assert_eq!(waiting.len(), LIFECYCLE_CAPACITY);
    assert!(matches!(waiting[0], Event::Opened(_)), "{:?}", waiting[0]);
    assert!(
        client.lifecycle_dropped() >= (2 * n - LIFECYCLE_CAPACITY) as u64,
        "dropped {}",
        client.lifecycle_dropped()
    );
}

#[test]
fn a_stream_body_is_refused_because_nothing_would_feed_it() {
    let (ca, _leaf) = ca_and_leaf();
    let (client, _f) = client_for(&ca);
    let req = http::Request::put("https://localhost:1/")
        .body(Body::stream(None))
        .expect("request");
    assert!(matches!(client.send(req), Err(Error::Unsupported(_))));
    assert_client_drained(&client);
}

#[test]
fn an_engine_reads_a_reader_body_on_its_own_thread() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| Reply::ok(format!("{}", req.body.len())));
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    let mut engine = rotary::Engine::new(config).expect("engine");
    let data = pattern(700_000);
    for length in [None, Some(data.len() as u64)] {
        let req = reader_put(&server.url("/up"), &data, length);
        let resp = engine
            .execute(req, RequestOptions::default())
            .expect("response");
        assert_eq!(resp.body(), &Bytes::from(data.len().to_string()));
    }
    let seen = server.requests();
    assert!(seen[0].chunked && !seen[1].chunked);
    assert!(seen.iter().all(|r| r.body == data));
    let short = Trickle::new(&data, None);
    let req = http::Request::put(server.url("/up"))
        .body(Body::reader(short, Some(data.len() as u64 + 1)))
        .expect("request");
    match engine.execute(req, RequestOptions::default()) {
        Err(Error::BodySource { reason, .. }) => {
            assert!(reason.contains("ended after"), "{reason}")
        }
        other => panic!("expected BodySource, got {other:?}"),
    }
    engine.close_idle();
    let until = Instant::now() + T;
    while !engine.stats().is_idle() {
        assert!(Instant::now() < until, "{:#?}", engine.stats());
        engine.poll(Some(Duration::from_millis(5))).expect("poll");
        while engine.next_event().is_some() {}
    }
}

#[test]
fn a_pending_request_waits_in_slices_and_dropping_it_cancels() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| match req.target.as_str() {
        "/silent" => Reply::stall(),
        _ => Reply::ok("answer"),
    });
    let (client, _f) = client_for(&ca);
    let life = client.lifecycle().expect("channel");
    let mut poll = client
        .start(get(&server.url("/silent")), RequestOptions::default())
        .expect("started");
    server.expect_until(T, "the long poll", |s| s.requests == 1);
    assert!(
        poll.wait_timeout(Duration::from_millis(20)).is_none(),
        "no answer yet"
    );
    let conn = loop {
        if let Event::Opened(info) = life.recv_timeout(T).expect("opened") {
            break info.conn;
        }
    };
    drop(poll);
    let reason = loop {
        match life.recv_timeout(T).expect("closed") {
            Event::Closed {
                conn: c, reason, ..
            } if c == conn => break reason,
            _ => {}
        }
    };
    assert_eq!(reason, CloseReason::Cancelled);

    let mut quick = client
        .start(get(&server.url("/")), RequestOptions::default())
        .expect("started");
    let until = Instant::now() + T;
    let resp = loop {
        if let Some(r) = quick.wait_timeout(Duration::from_millis(5)) {
            break r.expect("answer");
        }
        assert!(Instant::now() < until, "no answer");
    };
    assert!(matches!(
        quick.wait_timeout(Duration::ZERO),
        Some(Err(Error::Unsupported(_)))
    ));
    assert_eq!(resp.into_body().bytes().expect("body"), "answer");
    assert_client_drained(&client);
}

/// A reader as fast as memory that hands out pieces of changing sizes, from
/// one byte to more than the send window.
struct Pieces {
    data: Bytes,
    at: usize,
    seed: u64,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // xorshift: sizes that do not line up with the window or the engine's pieces.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let piece = 1 + (self.seed % (300 * 1024)) as usize;
        let n = buf.len().min(piece).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_fast_reader_of_64_mib_never_overfills_the_send_window() {
    // Asks for more body overlap with pieces still on their way to the
    // engine's thread; counted from "now", they once added up to more than
    // the window and the upload ended as "request cancelled".
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| Reply::ok(hex(&sha256(&req.body))));
    let (client, _f) = client_for(&ca);
    let data = Bytes::from(pattern(64 * 1024 * 1024));
    let want = hex(&sha256(&data));
    for (length, seed) in [(None, 7), (Some(data.len() as u64), 11)] {
        let reader = Pieces {
            data: data.clone(),
            at: 0,
            seed,
        };
        let req = http::Request::put(server.url("/up"))
            .body(Body::reader(reader, length))
            .expect("request");
        let resp = client.send(req).expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().bytes().expect("body");
        assert_eq!(body, Bytes::from(want.clone()), "the server got every byte");
    }
    assert_client_drained(&client);
}

/// A reader of pieces of up to 4 KiB that counts the reads it was offered
/// less than a kilobyte for while more than that was left.
struct Offered {
    data: Bytes,
    at: usize,
    seed: u64,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    starved: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for Offered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let left = self.data.len() - self.at;
        self.reads.fetch_add(1, Relaxed);
        if buf.len() < 1024 && left > 1024 {
            self.starved.fetch_add(1, Relaxed);
        }
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let piece = 1 + (self.seed % 4096) as usize;
        let n = buf.len().min(piece).min(left);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_reader_is_asked_for_the_window_not_for_the_bytes_each_piece_freed() {
    // Each piece sent frees room and raises an ask; the caller once took
    // those asks one by one, each for about the bytes of one piece, so
    // the reads shrank to tens of bytes (each its own TLS record): 55 MiB
    // took two minutes.
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| Reply::ok(hex(&sha256(&req.body))));
    let (client, _f) = client_for(&ca);
    let data = Bytes::from(pattern(8 * 1024 * 1024));
    let (reads, starved) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = Offered {
        data: data.clone(),
        at: 0,
        seed: 5,
        reads: reads.clone(),
        starved: starved.clone(),
    };
    let req = http::Request::put(server.url("/up"))
        .body(Body::reader(reader, None))
        .expect("request");
    let resp = client.send(req).expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().bytes().expect("body");
    assert_eq!(
        body,
        Bytes::from(hex(&sha256(&data))),
        "the server got every byte"
    );
    let (reads, starved) = (reads.load(Relaxed), starved.load(Relaxed));
    assert!(
        starved * 20 <= reads,
        "{starved} of {reads} reads were offered less than a kilobyte"
    );
    assert_client_drained(&client);
}
