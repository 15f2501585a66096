//! Bugs found where features meet, one test per row of `docs/failures.md`'s
//! section "Where features meet": the resolver and shutdown, early answers
//! and failed writes, transfer codings, bad redirect targets, the embedding
//! API and the engine's configuration.
//!
//! Each test fails without the fix its row names, and ends with the engine
//! holding nothing.

mod driver;
mod support;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use driver::*;
use rotary::{Client, CloseReason, Config, Engine, Error, Event, RequestOptions, Resolver};
use support::*;

const T: Duration = Duration::from_secs(10);

/// Prints the text a row of the table quotes.
fn row(test: &str, e: &Error) {
    eprintln!("row: {test}: {e} [{e:?}]");
}

// ---------------------------------------------------------------- resolver

/// A resolver that answers every name with `addr`, after `delay` for names
/// starting with `slow`, and after the gate opens for names starting with
/// `gated`; it records every name it was asked for.
struct TestResolver {
    addr: SocketAddr,
    delay: Duration,
    asked: Mutex<Vec<String>>,
    gate: Mutex<bool>,
    opened: Condvar,
}

impl TestResolver {
    fn new(addr: SocketAddr, delay: Duration) -> Arc<TestResolver> {
        Arc::new(TestResolver {
            addr,
            delay,
            asked: Mutex::new(Vec::new()),
            gate: Mutex::new(false),
            opened: Condvar::new(),
        })
    }

    fn open_gate(&self) {
        *self.gate.lock().expect("gate") = true;
        self.opened.notify_all();
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("asked").clone()
    }
}

impl Resolver for TestResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        self.asked.lock().expect("asked").push(host.to_owned());
        if host.starts_with("slow") {
            std::thread::sleep(self.delay);
        }
        if host.starts_with("gated") {
            // Bounded: a test that goes wrong fails instead of hanging.
            let gate = self.gate.lock().expect("gate");
            let (open, _) = self
                .opened
                .wait_timeout_while(gate, T, |open| !*open)
                .expect("gate");
            if !*open {
                return Err(std::io::Error::other("the gate never opened"));
            }
        }
        Ok(vec![SocketAddr::new(self.addr.ip(), port)])
    }
}

fn engine_with(resolver: &Arc<TestResolver>, tweak: impl FnOnce(&mut Config)) -> Engine {
    plain_engine(|c| {
        c.resolver = Some(resolver.clone());
        tweak(c);
    })
}

/// Wait (bounded) until `cond` holds, polling the engine meanwhile.
fn wait_for(engine: &mut Engine, what: &str, mut cond: impl FnMut(&mut Engine) -> bool) {
    let until = Instant::now() + T;
    while !cond(engine) {
        assert!(Instant::now() < until, "{what}: not within {T:?}");
        engine
            .poll(Some(Duration::from_millis(5)))
            .expect("poll does not fail");
        while engine.next_event().is_some() {}
    }
}

#[test]
fn shutdown_does_not_wait_for_abandoned_slow_lookups() {
    let server = TestServer::plain(|_, _| Reply::ok("never asked"));
    let resolver = TestResolver::new(server.addr(), Duration::from_millis(500));
    let mut engine = engine_with(&resolver, |_| {});
    // Eight origins whose names take 500 ms each, their requests abandoned.
    let ids: Vec<_> = (0..8)
        .map(|i| {
            let url = format!("http://slow{i}.test:{}/", server.addr().port());
            engine.submit(get(&url), RequestOptions::default())
        })
        .collect();
    wait_for(&mut engine, "both lookup threads busy", |_| {
        resolver.asked().len() >= 2
    });
    for &id in &ids {
        engine.cancel(id);
    }
    let started = Instant::now();
    engine.shutdown();
    let took = started.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "shutdown took {took:?} with 8 slow lookups queued"
    );
    let out = run_until(&mut engine, T, |_| true);
    assert!(engine.stats().is_idle(), "{:?}", out.len());
    // The two lookups under way finish on their own; the others never ran.
    let until = Instant::now() + T;
    while engine.resolver_threads() > 0 {
        assert!(Instant::now() < until, "resolver threads did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(resolver.asked().len() <= 2, "{:?}", resolver.asked());
}

#[test]
fn dropping_the_last_client_does_not_wait_for_slow_lookups() {
    let server = TestServer::plain(|_, _| Reply::ok("never asked"));
    let resolver = TestResolver::new(server.addr(), Duration::from_millis(500));
    let mut config = Config::default();
    config.resolver = Some(resolver.clone());
    let client = Client::new(config).expect("client builds");
    let port = server.addr().port();
    let pending: Vec<_> = (0..8)
        .map(|i| {
            let req = http::Request::get(format!("http://slow{i}.test:{port}/"))
                .body(())
                .expect("request");
            client
                .start(req, RequestOptions::default())
                .expect("started")
        })
        .collect();
    let until = Instant::now() + T;
    while resolver.asked().len() < 2 {
        assert!(Instant::now() < until, "no lookup started");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(pending);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        drop(client);
        let _ = tx.send(started.elapsed());
    });
    let took = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("the last Client dropped within 1 s");
    eprintln!("dropping the client took {took:?}");
}

#[test]
fn a_lookup_whose_request_ended_is_not_run() {
    let server = TestServer::plain(|_, _| Reply::ok("ok"));
    let resolver = TestResolver::new(server.addr(), Duration::ZERO);
    let mut engine = engine_with(&resolver, |c| c.dns_threads = 1);
    let port = server.addr().port();
    // The one resolver thread is held by a name whose lookup is gated...
    let first = engine.submit(
        get(&format!("http://gated.test:{port}/")),
        RequestOptions::default(),
    );
    wait_for(&mut engine, "the gated lookup", |_| {
        resolver.asked() == ["gated.test"]
    });
    // ...while two more wait behind it, and their requests end: one
    // cancelled, one at its deadline.
    let cancelled = engine.submit(
        get(&format!("http://a.test:{port}/")),
        RequestOptions::default(),
    );
    let timed_out = engine.submit(
        get(&format!("http://b.test:{port}/")),
        RequestOptions::default().deadline(Duration::from_millis(30)),
    );
    engine.cancel(cancelled);
    let out = finish(&mut engine, &[cancelled, timed_out], T);
    assert!(matches!(out.error(cancelled), Error::Cancelled));
    assert!(matches!(out.error(timed_out), Error::Timeout(_)));
    let shed = out
        .closed()
        .iter()
        .filter(|r| **r == CloseReason::Cancelled)
        .count();
    assert_eq!(shed, 2, "their connections close: {:?}", out.closed());
    resolver.open_gate();
    let out = finish(&mut engine, &[first], T);
    assert_eq!(out.response(first).body(), "ok");
    assert_eq!(
        resolver.asked(),
        ["gated.test"],
        "a.test and b.test never looked up"
    );
    assert_drained(&mut engine);
}

#[test]
fn a_slow_name_does_not_hold_up_lookups_of_other_origins() {
    let server = TestServer::plain(|_, _| Reply::ok("ok"));
    let resolver = TestResolver::new(server.addr(), Duration::ZERO);
    // Default: two resolver threads.
    let mut engine = engine_with(&resolver, |_| {});
    let port = server.addr().port();
    // Four requests to a name whose lookup hangs: four connections open,
    // each needing that name.
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            engine.submit(
                get(&format!("http://gated.test:{port}/")),
                RequestOptions::default(),
            )
        })
        .collect();
    wait_for(&mut engine, "the gated lookup", |e| {
        e.stats().connections == 4 && !resolver.asked().is_empty()
    });
    let other = engine.submit(
        get(&format!("http://other.test:{port}/")),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[other], T);
    assert_eq!(out.response(other).body(), "ok");
    let asked = resolver.asked();
    let gated = asked.iter().filter(|h| *h == "gated.test").count();
    assert_eq!(
        gated, 1,
        "one lookup serves every connection to it: {asked:?}"
    );
    resolver.open_gate();
    let out = finish(&mut engine, &stuck, T);
    for id in stuck {
        assert_eq!(out.response(id).body(), "ok");
    }
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------- embedding

#[test]
fn next_timeout_is_zero_while_events_are_queued() {
    let poll = mio::Poll::new().expect("poll");
    let mut engine =
        Engine::embedded(poll.registry(), 100, 64, Config::default()).expect("engine builds");
    let now = Instant::now();
    assert_eq!(engine.next_timeout(now), None, "nothing scheduled");
    // A request refused at once: its Failed event is queued, nothing else.
    let id = engine.submit(get("ftp://nowhere.test/"), RequestOptions::default());
    assert_eq!(
        engine.next_timeout(now),
        Some(Duration::ZERO),
        "a host that sleeps now would leave the event waiting"
    );
    let event = engine.next_event().expect("the Failed event");
    assert!(event.is_terminal() && event.request_id() == Some(id));
    assert_eq!(engine.next_timeout(now), None, "drained");
    assert!(engine.stats().is_idle());
}

// ---------------------------------------------------------------- early answers

/// A peer on 127.0.0.1 that reads a request head, answers `answer` at once
/// and closes without reading the body: the unread bytes make its kernel
/// reset the connection, so the client's next write fails. Over TLS with
/// `tls` (a server config). Returns the port and its thread.
fn early_answer_peer(
    answer: &'static [u8],
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(T)).expect("timeout");
        // The answer goes out at once (no Nagle delay behind a TLS ticket
        // not yet acknowledged), and the reset waits until it arrived: a
        // server's close with its own answer still queued discards it.
        sock.set_nodelay(true).expect("nodelay");
        let watch = sock.try_clone().expect("clone");
        let mut stream: Box<dyn ReadWrite> = match tls {
            None => Box::new(sock),
            Some(config) => {
                let conn = rustls::ServerConnection::new(config).expect("tls");
                Box::new(rustls::StreamOwned::new(conn, sock))
            }
        };
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        stream.write_all(answer).expect("answer");
        stream.flush().expect("flush");
        let until = Instant::now() + T;
        while unacknowledged(&watch).is_some_and(|n| n > 0) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Dropped here with the upload unread: the kernel resets.
    });
    (port, handle)
}

trait ReadWrite: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> ReadWrite for T {}

const EARLY_413: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large";

fn big_file() -> (tempfile::NamedTempFile, u64) {
    let len = 20 * 1024 * 1024;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let chunk = vec![0x5a; 1024 * 1024];
    for _ in 0..20 {
        std::io::Write::write_all(&mut file, &chunk).expect("write");
    }
    (file, len)
}

fn upload_gets_the_early_answer(engine: &mut Engine, url: &str, file: &std::path::Path) {
    let req = http::Request::put(url)
        .body(rotary::Body::file(file).expect("open"))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default());
    let out = finish(engine, &[id], T);
    match out.event(id) {
        Event::Response { response, .. } => {
            assert_eq!(response.status(), 413);
            assert_eq!(response.body(), "too large");
        }
        Event::Failed { error, .. } => {
            row(
                "an_early_413_is_the_answer_when_the_write_then_fails",
                error,
            );
            panic!("the early 413 was lost: {error}");
        }
        other => panic!("{other:?}"),
    }
    assert_drained(engine);
}

#[test]
fn an_early_413_is_the_answer_when_the_write_then_fails() {
    let (file, _) = big_file();
    let (port, peer) = early_answer_peer(EARLY_413, None);
    let mut engine = plain_engine(|_| {});
    upload_gets_the_early_answer(
        &mut engine,
        &format!("http://127.0.0.1:{port}/artifact"),
        file.path(),
    );
    peer.join().expect("peer");
}

#[test]
fn an_early_413_over_tls_is_the_answer_when_the_write_then_fails() {
    let ca = TestCa::new("early answers CA");
    let leaf = ca.issue(&["localhost"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain_der(), leaf.key_der())
        .expect("server config");
    let (file, _) = big_file();
    let (port, peer) = early_answer_peer(EARLY_413, Some(Arc::new(config)));
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    upload_gets_the_early_answer(
        &mut engine,
        &format!("https://localhost:{port}/artifact"),
        file.path(),
    );
    peer.join().expect("peer");
}

// ---------------------------------------------------------------- configuration

#[test]
fn settings_that_cannot_work_are_refused_when_the_engine_is_built() {
    type Tweak = fn(&mut Config);
    let cases: [(&str, Tweak); 11] = [
        ("policy.max_age", |c| {
            c.policy.max_age = Some(Duration::ZERO)
        }),
        ("policy.max_connections", |c| c.policy.max_connections = 0),
        ("policy.max_age_jitter", |c| {
            c.policy.max_age = Some(Duration::from_secs(10));
            c.policy.max_age_jitter = Some(Duration::from_secs(11));
        }),
        ("policy.max_requests", |c| c.policy.max_requests = Some(0)),
        ("policy.chain_probe_interval", |c| {
            c.policy.chain_probe_interval = Some(Duration::ZERO)
        }),
        ("policy.chain_probe_jitter", |c| {
            c.policy.chain_probe_interval = Some(Duration::from_secs(1));
            c.policy.chain_probe_jitter = Some(Duration::from_secs(2));
        }),
        ("timeouts.dns", |c| c.timeouts.dns = Duration::ZERO),
        ("timeouts.connect", |c| c.timeouts.connect = Duration::ZERO),
        ("timeouts.handshake", |c| {
            c.timeouts.handshake = Duration::ZERO
        }),
        ("dns_threads", |c| c.dns_threads = 0),
        ("limits.max_head_bytes", |c| c.limits.max_head_bytes = 0),
    ];
    for (setting, tweak) in cases {
        let mut config = Config::default();
        tweak(&mut config);
        let err = Engine::new(config.clone()).expect_err(setting);
        match &err {
            rotary::BuildError::Config(e) => assert_eq!(e.setting, setting, "{err}"),
            other => panic!("{setting}: {other:?}"),
        }
        assert!(err.to_string().contains(setting), "{err}");
        let err = Client::new(config).expect_err(setting);
        assert!(matches!(err, rotary::BuildError::Config(_)), "{err:?}");
        // Still usable where an io::Error is expected.
        let io: std::io::Error = err.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }
    // The defaults, and the edges that do work, pass.
    assert_eq!(Config::default().check(), Ok(()));
    let mut config = Config::default();
    config.policy.max_age = None;
    config.policy.max_age_jitter = Some(Duration::from_secs(3600));
    assert_eq!(config.check(), Ok(()), "no max age: the jitter is unused");
    let mut config = Config::default();
    config.policy.max_age_jitter = Some(Duration::ZERO);
    config.policy.chain_probe_interval = Some(Duration::from_secs(60));
    config.policy.chain_probe_jitter = Some(Duration::ZERO);
    assert_eq!(config.check(), Ok(()));
}

#[test]
fn a_per_origin_policy_that_cannot_work_is_refused_and_changes_nothing() {
    let mut engine = plain_engine(|_| {});
    let origin = rotary::Origin::parse("http://127.0.0.1:1").expect("origin");
    let mut policy = rotary::Policy::default();
    policy.max_age = Some(Duration::ZERO);
    let err = engine
        .set_origin_policy(origin.clone(), policy)
        .expect_err("max_age zero");
    assert_eq!(err.setting, "policy.max_age");
    assert_eq!(engine.origin_policy(&origin), rotary::Policy::default());
}

#[test]
fn zero_windows_are_refused_when_the_request_is_submitted() {
    let mut engine = plain_engine(|_| {});
    let send = engine.submit(
        get("http://127.0.0.1:1/"),
        RequestOptions::default().send_window(0),
    );
    let receive = engine.submit(
        get("http://127.0.0.1:1/"),
        RequestOptions::default().receive_window(0),
    );
    let out = finish(&mut engine, &[send, receive], T);
    for (id, name) in [(send, "send_window"), (receive, "receive_window")] {
        let err = out.error(id);
        row(
            "zero_windows_are_refused_when_the_request_is_submitted",
            err,
        );
        assert!(
            matches!(&err, Error::InvalidOptions(e) if e.setting == name),
            "{err}"
        );
    }
    assert_drained(&mut engine);
}

// ---------------------------------------------------------------- peers

#[test]
fn transfer_codings_other_than_chunked_fail_named() {
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "gzip, chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
            "gzip",
        ),
        (
            "chunked, gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00",
            "gzip",
        ),
        (
            "an unknown coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x-rot13\r\nContent-Length: 3\r\n\r\nnop",
            "x-rot13",
        ),
    ];
    for (what, answer, coding) in cases {
        let server = TestServer::plain(move |_, _| Reply::raw(answer));
        let mut engine = plain_engine(|_| {});
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        let err = out.error(id);
        row("transfer_codings_other_than_chunked_fail_named", err);
        match err {
            Error::Protocol {
                phase: rotary::Phase::ResponseHead,
                cause: rotary_proto::Error::UnsupportedTransferCoding { coding: got },
            } => assert_eq!(got, coding, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(err.to_string().contains(coding), "{err}");
        assert_eq!(engine.stats().retries, 0);
        assert_drained(&mut engine);
    }
}

#[test]
fn a_location_no_request_can_go_to_is_a_redirect_error() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/port" => Reply::status(302).header("Location", "http://127.0.0.1:99999/x"),
        "/ftp" => Reply::status(302).header("Location", "ftp://files.test/x"),
        "/nohost" => Reply::status(302).header("Location", "http://:80/x"),
        _ => Reply::status(404),
    });
    let mut engine = plain_engine(|_| {});
    let follow = RequestOptions::default().follow_redirects(3);
    for path in ["/port", "/ftp", "/nohost"] {
        let id = engine.submit(get(&server.url_ip(path)), follow);
        let out = finish(&mut engine, &[id], T);
        let err = out.error(id);
        row("a_location_no_request_can_go_to_is_a_redirect_error", err);
        assert!(
            matches!(err, Error::Redirect(rotary::RedirectError::BadLocation(_))),
            "{path}: {err:?}"
        );
    }
    assert_eq!(server.stats().requests, 3, "no hop was sent anywhere");
    assert_drained(&mut engine);
}
