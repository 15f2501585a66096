//! Where two features meet: closing idle connections while one is still
//! opening, a redirect of a file upload, a pause before the request has a
//! connection, `execute` with a body nobody feeds, a post/redirect/get, and
//! what the log says when a request is retried. Each test failed before its
//! fix (docs/failures.md, "Where features meet").

mod support;

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rotary::{Body, Config, Engine, Error, Event, RequestId, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);

/// Poll until `done` holds, collecting every event; panics after [`T`].
fn run_until(
    engine: &mut Engine,
    seen: &mut Vec<Event>,
    what: &str,
    mut done: impl FnMut(&[Event]) -> bool,
) {
    let until = Instant::now() + T;
    while !done(seen) {
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {seen:?}"
        );
        engine.poll(Some(Duration::from_millis(10))).expect("poll");
        seen.extend(std::iter::from_fn(|| engine.next_event()));
    }
}

fn ended(id: RequestId) -> impl FnMut(&[Event]) -> bool {
    move |seen| {
        seen.iter()
            .any(|e| e.is_terminal() && e.request_id() == Some(id))
    }
}

fn terminal(seen: &[Event], id: RequestId) -> &Event {
    let mut ends = seen
        .iter()
        .filter(|e| e.is_terminal() && e.request_id() == Some(id));
    let first = ends.next().expect("a terminal event");
    assert!(ends.next().is_none(), "one terminal event: {seen:?}");
    first
}

fn assert_drained(engine: &mut Engine) {
    engine.close_idle();
    let s = engine.stats();
    assert_eq!(
        (s.connections, s.timers, s.queued, s.in_flight),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

fn tls_engine(ca: &TestCa) -> (Engine, TempFile) {
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    (Engine::new(config).expect("engine"), file)
}

#[test]
fn close_idle_while_a_connection_opens_leaves_its_request_to_a_new_one() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .handler(|_, _| Reply::ok("served"))
        // Every handshake waits: the first connection is still opening
        // when the host closes what carries no exchange.
        .on_accept(|_| Accept::DelayThenServe(Duration::from_millis(200)))
        .start();
    let (mut engine, _f) = tls_engine(&ca);
    let id = engine.submit(
        http::Request::get(server.url("/"))
            .body(())
            .expect("request"),
        RequestOptions::default(),
    );
    let mut seen = Vec::new();
    run_until(&mut engine, &mut seen, "the first connect", |_| {
        server.stats().connections_accepted >= 1
    });
    engine.close_idle();
    run_until(&mut engine, &mut seen, "the request's end", ended(id));
    match terminal(&seen, id) {
        Event::Response { response, .. } => assert_eq!(response.body(), "served"),
        other => panic!("expected the response, got {other:?}"),
    }
    assert!(
        server.stats().connections_accepted >= 2,
        "a new connection carried it"
    );
    assert_drained(&mut engine);
}

#[test]
fn a_307_of_a_file_upload_sends_the_whole_file_again() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| match req.path() {
        "/upload" => Reply::status(307).header("location", "/elsewhere"),
        _ => Reply::ok(hex(&sha256(&req.body))),
    });
    let (mut engine, _f) = tls_engine(&ca);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&data).expect("write");
    let put = http::Request::put(server.url("/upload"))
        .body(Body::file(file.path()).expect("open"))
        .expect("request");
    let resp = engine
        .execute(
            put,
            RequestOptions::default()
                .follow_redirects(3)
                .send_window(64 * 1024),
        )
        .expect("the redirected upload succeeds");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.body(),
        hex(&sha256(&data)).as_bytes(),
        "the whole file, twice"
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.body == data),
        "both hops carried every byte"
    );
    assert_drained(&mut engine);
}

#[test]
fn a_pause_before_the_request_has_a_connection_holds_from_the_first_byte() {
    let body = vec![b'p'; 300 * 1000];
    let expect = body.clone();
    let server = TestServer::plain(move |_, _| Reply::ok(body.clone()));
    let mut engine = Engine::new(Config::default()).expect("engine");
    let get = http::Request::get(server.url_ip("/big"))
        .body(())
        .expect("request");
    let id = engine.submit(get, RequestOptions::default().streaming(true));
    engine.pause(id, true);
    let mut seen = Vec::new();
    run_until(&mut engine, &mut seen, "the server's whole reply", |_| {
        server.stats().replies_completed == 1
    });
    // The reply sits in the socket; a few more turns read nothing of it.
    for _ in 0..5 {
        engine.poll(Some(Duration::from_millis(5))).expect("poll");
        seen.extend(std::iter::from_fn(|| engine.next_event()));
    }
    let received = engine.progress(id).expect("still live").received;
    assert_eq!(received, 0, "nothing read while paused");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Head { .. } | Event::Body { .. })),
        "no event while paused: {seen:?}"
    );
    engine.pause(id, false);
    run_until(&mut engine, &mut seen, "the body", ended(id));
    let got: Vec<u8> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Body { id: got, data } if *got == id => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(got, expect);
    assert!(matches!(terminal(&seen, id), Event::End { .. }));
    assert_drained(&mut engine);
}

#[test]
fn execute_refuses_a_body_nobody_would_feed_at_once() {
    let mut engine = Engine::new(Config::default()).expect("engine");
    let put = http::Request::put("http://127.0.0.1:9/never")
        .body(Body::stream(None))
        .expect("request");
    // Before, this waited for ever for a feed that could not come.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = engine.execute(put, RequestOptions::default());
        let _ = tx.send((result, engine.stats()));
    });
    let (result, stats) = rx.recv_timeout(T).expect("execute returned");
    assert!(matches!(result, Err(Error::Unsupported(_))), "{result:?}");
    assert_eq!(
        (stats.connections, stats.in_flight, stats.queued),
        (0, 0, 0)
    );
}

#[test]
fn a_post_answered_303_with_its_own_uri_is_followed_not_called_a_loop() {
    let server = TestServer::plain(|req, _| match req.method.as_str() {
        "POST" => Reply::status(303).header("location", "/form"),
        _ => Reply::ok("thanks"),
    });
    let mut engine = Engine::new(Config::default()).expect("engine");
    let post = http::Request::post(server.url_ip("/form"))
        .body("name=x")
        .expect("request");
    let resp = engine
        .execute(post, RequestOptions::default().follow_redirects(5))
        .expect("post/redirect/get is no loop");
    assert_eq!(resp.body(), "thanks");
    let methods: Vec<String> = server.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["POST", "GET"]);
    // The same GET again is a loop.
    let server = TestServer::plain(|_, _| Reply::status(303).header("location", "/form"));
    let get = http::Request::get(server.url_ip("/form"))
        .body(())
        .expect("request");
    let err = engine
        .execute(get, RequestOptions::default().follow_redirects(5))
        .expect_err("a loop");
    assert!(
        matches!(err, Error::Redirect(rotary::RedirectError::Loop { .. })),
        "{err:?}"
    );
    assert_drained(&mut engine);
}

/// The process's log lines, captured for the tests that read them.
struct Capture;

static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = LINES.get_or_init(Default::default).lock() {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        static CAPTURE: Capture = Capture;
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged(pred: impl Fn(&str) -> bool) -> Vec<String> {
    LINES
        .get_or_init(Default::default)
        .lock()
        .map(|l| l.iter().filter(|s| pred(s)).cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_retried_request_is_logged_as_retried_and_one_that_is_not_says_why() {
    capture_logs();
    let server = TestServer::plain(|req, _| {
        if req.index_on_conn == 0 {
            Reply::ok("first on its connection")
        } else {
            Reply::close()
        }
    });
    let mut engine = Engine::new(Config::default()).expect("engine");
    let url = |p: &str| server.url_ip(p);
    engine
        .execute(
            http::Request::get(url("/warm")).body(()).expect("request"),
            RequestOptions::default(),
        )
        .expect("warm-up");
    let get = http::Request::get(url("/again")).body(()).expect("request");
    let id = engine.submit(get, RequestOptions::default());
    let mut seen = Vec::new();
    run_until(&mut engine, &mut seen, "the retried GET", ended(id));
    assert!(matches!(terminal(&seen, id), Event::Response { .. }));
    let mine = |s: &str| {
        s.contains(&format!("request {} ", id.get()))
            || s.contains(&format!("request {}:", id.get()))
    };
    let lines = logged(mine);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("retrying it once on a fresh connection")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("not retried")),
        "a retried request is not logged as not retried: {lines:?}"
    );
    // A POST on a stale connection is not retried, and the log says why.
    engine
        .execute(
            http::Request::get(url("/warm")).body(()).expect("request"),
            RequestOptions::default(),
        )
        .expect("warm-up");
    let post = http::Request::post(url("/job"))
        .body("{}")
        .expect("request");
    let id = engine.submit(post, RequestOptions::default());
    let mut seen = Vec::new();
    run_until(&mut engine, &mut seen, "the failed POST", ended(id));
    assert!(matches!(terminal(&seen, id), Event::Failed { .. }));
    let mine = |s: &str| s.contains(&format!("request {} ", id.get()));
    let lines = logged(mine);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not retried") && l.contains("not idempotent")),
        "{lines:?}"
    );
    assert_drained(&mut engine);
}

/// Every name resolves to the loopback address.
struct Loopback;

impl rotary::Resolver for Loopback {
    fn resolve(&self, _: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))])
    }
}

#[test]
fn pools_of_origins_out_of_use_are_dropped_over_ten_thousand_origins() {
    // A runner following redirects to object storage meets a new host name
    // per artifact; each origin's pool (its chain, its counters, its name
    // cache) used to stay for the engine's life.
    let server = TestServer::plain(|_, _| Reply::ok("blob").header("connection", "close"));
    let mut config = Config::default();
    config.resolver = Some(std::sync::Arc::new(Loopback));
    let mut engine = Engine::new(config).expect("engine");
    const ORIGINS: usize = 10_000;
    const AT_ONCE: usize = 64;
    let mut most_pools = 0;
    let mut next = 0;
    let mut live: Vec<RequestId> = Vec::new();
    let mut ok = 0;
    let until = Instant::now() + Duration::from_secs(120);
    while ok < ORIGINS {
        assert!(Instant::now() < until, "{ok} of {ORIGINS} done");
        while live.len() < AT_ONCE && next < ORIGINS {
            let url = format!("http://bucket-{next}.storage.test:{}/blob", server.port());
            let get = http::Request::get(url).body(()).expect("request");
            live.push(engine.submit(get, RequestOptions::default()));
            next += 1;
        }
        engine.poll(Some(Duration::from_millis(10))).expect("poll");
        while let Some(e) = engine.next_event() {
            match e {
                Event::Response { id, response, .. } => {
                    assert_eq!(response.body(), "blob");
                    live.retain(|&l| l != id);
                    ok += 1;
                }
                Event::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        most_pools = most_pools.max(engine.stats().pools);
    }
    assert!(
        most_pools <= 2 * AT_ONCE,
        "pools grew to {most_pools} with {AT_ONCE} origins in use at once"
    );
    engine.poll(Some(Duration::ZERO)).expect("poll");
    let stats = engine.stats();
    assert_eq!(stats.requests_ok, ORIGINS as u64);
    assert_eq!(stats.pools, 0, "every pool dropped");
    assert!(
        stats.origins.len() <= 64,
        "only the last origins' counters are kept: {}",
        stats.origins.len()
    );
    assert_drained(&mut engine);
}
