//! Who drives a `rotary::Client`'s engine: a caller waiting on its own
//! request drives it on its own thread (the client's thread does no I/O for
//! it), many callers share it, and with no caller at all the client's
//! thread still runs every lifetime rule.
//!
//! The first test reads the I/O counters of the process's `rotary-client`
//! threads, so the tests of this file run one at a time.

mod support;

use std::io::Read;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rotary::{Body, Client, CloseReason, Config, Event, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);

/// Tests of this file run one at a time (see the file's notes).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn client_with(ca: &TestCa, tune: impl FnOnce(&mut Config)) -> (Client, TempFile) {
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    tune(&mut config);
    (Client::new(config).expect("client starts"), file)
}

fn get(url: &str) -> http::Request<()> {
    http::Request::get(url).body(()).expect("request")
}

/// `read(2)` calls made so far by the process's `rotary-client` threads
/// (Linux: `syscr` of `/proc/self/task/*/io`). Sockets are read with
/// `recv`, which it does not count; a [`Body::file`] is read with `read`,
/// on whichever thread drives the engine.
fn client_thread_reads() -> u64 {
    let mut total = 0;
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "rotary-client" {
            continue;
        }
        let io = std::fs::read_to_string(task.path().join("io")).expect("task io");
        total += io
            .lines()
            .find_map(|l| l.strip_prefix("syscr:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("a syscr line");
    }
    total
}

#[test]
fn a_caller_drives_its_own_requests_and_the_clients_thread_reads_nothing() {
    let _serial = one_at_a_time();
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("hello"));
    let (client, _f) = client_with(&ca, |_| {});
    let url = server.url("/");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("body");
    std::fs::write(&path, vec![7u8; 1000]).expect("body file");
    let put = || {
        let body = Body::file(&path).expect("file body");
        http::Request::put(&url).body(body).expect("request")
    };
    // The connection and its handshake first: those may run anywhere.
    let mut warm = client.send(put()).expect("warm-up");
    warm.body_mut().read_to_end(&mut Vec::new()).expect("body");
    drop(warm);
    let before = client_thread_reads();
    const N: u64 = 50;
    for _ in 0..N {
        let mut resp = client.send(put()).expect("response");
        let mut body = String::new();
        resp.body_mut().read_to_string(&mut body).expect("body");
        assert_eq!(body, "hello");
    }
    let reads = client_thread_reads() - before;
    // The engine reads each request's file on the thread that drives it:
    // here the calling thread. The client's thread at most took the lead
    // while this one was descheduled between two calls.
    assert!(
        reads < N / 10,
        "the client's thread read the body file {reads} times for {N} requests"
    );
    assert_eq!(server.connections().len(), 1);
    assert_client_drained(&client);
}

#[test]
fn many_threads_share_one_client_and_every_request_ends_with_its_own_body() {
    let _serial = one_at_a_time();
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |req, _| Reply::ok(req.path().as_bytes().to_vec()));
    let (client, _f) = client_with(&ca, |c| c.policy.max_connections = 4);
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for t in 0..8 {
        let (client, url, tx) = (client.clone(), server.url(""), tx.clone());
        workers.push(thread::spawn(move || {
            for i in 0..25 {
                let path = format!("/t{t}/r{i}");
                let opts = RequestOptions::default().deadline(T);
                let mut resp = client
                    .send_with(get(&format!("{url}{path}")), opts)
                    .expect("response");
                let mut body = String::new();
                resp.body_mut().read_to_string(&mut body).expect("body");
                assert_eq!(body, path, "each caller gets its own answer");
                let _ = tx.send(());
            }
        }));
    }
    drop(tx);
    let until = Instant::now() + T;
    let mut done = 0;
    while done < 8 * 25 {
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .expect("every request ends in time");
        done += 1;
    }
    for w in workers {
        w.join().expect("worker");
    }
    let stats = client.stats().expect("stats");
    assert!(stats.connections_opened <= 4, "{stats:#?}");
    assert_client_drained(&client);
}

/// Waits on the lifecycle channel for a `Closed` event with `reason`,
/// while no caller touches the client.
fn wait_closed(life: &mpsc::Receiver<Event>, reason: CloseReason) -> Duration {
    let start = Instant::now();
    loop {
        let left = (start + T).saturating_duration_since(Instant::now());
        match life.recv_timeout(left) {
            Ok(Event::Closed { reason: r, .. }) if r == reason => return start.elapsed(),
            Ok(_) => {}
            Err(e) => panic!("no Closed({reason:?}) with no caller present: {e}"),
        }
    }
}

#[test]
fn with_no_caller_present_idle_and_aged_connections_still_close_on_time() {
    let _serial = one_at_a_time();
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x"));
    let (client, _f) = client_with(&ca, |c| {
        c.policy.idle_timeout = Some(Duration::from_millis(60));
        c.policy.max_age = None;
    });
    let life = client.lifecycle().expect("channel");
    let mut resp = client.send(get(&server.url("/"))).expect("response");
    resp.body_mut().read_to_end(&mut Vec::new()).expect("body");
    drop(resp);
    // Nobody calls now: the client's thread must fire the idle timer.
    let took = wait_closed(&life, CloseReason::Idle);
    assert!(took < Duration::from_secs(2), "idle close took {took:?}");
    assert!(client.stats().expect("stats").is_idle());

    let (client, _f) = client_with(&ca, |c| {
        c.policy.idle_timeout = None;
        c.policy.max_age = Some(Duration::from_millis(80));
        c.policy.max_age_jitter = None;
        c.policy.prewarm = false;
    });
    let life = client.lifecycle().expect("channel");
    let mut resp = client.send(get(&server.url("/"))).expect("response");
    resp.body_mut().read_to_end(&mut Vec::new()).expect("body");
    drop(resp);
    wait_closed(&life, CloseReason::MaxAge);
    assert!(client.stats().expect("stats").is_idle());
}

#[test]
fn with_no_caller_present_a_connection_the_server_closed_is_closed_at_once() {
    let _serial = one_at_a_time();
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x"));
    let (client, _f) = client_with(&ca, |_| {});
    let life = client.lifecycle().expect("channel");
    let mut resp = client.send(get(&server.url("/"))).expect("response");
    resp.body_mut().read_to_end(&mut Vec::new()).expect("body");
    drop(resp);
    // The server closes the idle connection (close_notify, FIN) while no
    // caller is present: the client's thread reads it and closes its end.
    server.close_idle_gracefully();
    wait_closed(&life, CloseReason::PeerClose);
    assert!(client.stats().expect("stats").is_idle());
}
