//! Request bodies from files and host-fed streams, streamed responses under
//! flow control, `Expect: 100-continue`, early responses and stall deadlines,
//! against a raw HTTP/1.1 peer scripted per test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{Body, Config, Deadline, Engine, Error, Event, RequestId, RequestOptions};

const WAIT: Duration = Duration::from_secs(10);

/// A peer that runs `script` on its first connection; the script's result
/// comes back through the join handle.
fn peer<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (String, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = thread::spawn(move || {
        let (sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        script(sock)
    });
    (format!("http://{addr}"), handle)
}

/// Read a request head; its lines, lowercased names.
fn read_head(r: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("head line") == 0 {
            return lines;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return lines;
        }
        lines.push(line.to_ascii_lowercase());
    }
}

fn header(head: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}: ");
    head.iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// Read a chunked body; its bytes and trailer lines.
fn read_chunked(r: &mut BufReader<TcpStream>) -> (Vec<u8>, Vec<String>) {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("chunk line");
        let size = usize::from_str_radix(line.trim_end(), 16).expect("chunk size");
        if size == 0 {
            return (body, read_head(r));
        }
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).expect("chunk");
        body.extend_from_slice(&chunk[..size]);
    }
}

fn ok(sock: &mut TcpStream, body: &[u8]) {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
    sock.write_all(head.as_bytes()).expect("write head");
    sock.write_all(body).expect("write body");
}

/// Run the engine until `id` ends, answering `BodyWanted` with `feed`;
/// every event of `id` in order.
fn run(engine: &mut Engine, id: RequestId, mut feed: impl FnMut(&mut Engine, usize)) -> Vec<Event> {
    let until = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < until {
        engine.poll(Some(Duration::from_millis(20))).expect("poll");
        while let Some(ev) = engine.next_event() {
            if ev.request_id() != Some(id) {
                continue;
            }
            if let Event::BodyWanted { room, .. } = ev {
                feed(engine, room);
                continue;
            }
            let end = ev.is_terminal();
            seen.push(ev);
            if end {
                return seen;
            }
        }
    }
    panic!("request {id:?} did not end within {WAIT:?}: {seen:?}");
}

/// A peer script: read the request head, answer `size` bytes of `byte`
/// (`size` a multiple of 64 KiB), written 64 KiB at a time.
fn answer_with_bytes(mut sock: TcpStream, size: usize, byte: u8) {
    let mut r = BufReader::new(sock.try_clone().expect("clone"));
    read_head(&mut r);
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
    sock.write_all(head.as_bytes()).expect("head");
    let chunk = vec![byte; 64 * 1024];
    for _ in 0..size / chunk.len() {
        sock.write_all(&chunk).expect("body");
    }
}

fn engine() -> Engine {
    Engine::new(Config::default()).expect("engine")
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

fn failed(events: &[Event]) -> &Error {
    match events.last() {
        Some(Event::Failed { error, .. }) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn status(events: &[Event]) -> u16 {
    match events.last() {
        Some(Event::Response { response, .. }) => response.status().as_u16(),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn temp_file(len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = std::env::temp_dir().join(format!(
        "rotary-body-{}-{len}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    std::fs::write(&path, &data).expect("write temp file");
    (path, data)
}

#[test]
fn a_file_body_goes_out_whole_with_its_length_in_window_sized_pieces() {
    let (path, data) = temp_file(3 * 1024 * 1024 + 17);
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        let head = read_head(&mut r);
        let len: usize = header(&head, "content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        let mut got = vec![0; len];
        r.read_exact(&mut got).expect("body");
        let mut sock = sock;
        ok(&mut sock, b"stored");
        got
    });
    let mut engine = engine();
    let body = Body::file(&path).expect("open");
    assert_eq!(body.len(), Some(data.len() as u64));
    let req = http::Request::put(format!("{url}/up"))
        .body(body)
        .expect("request");
    let id = engine.submit(req, RequestOptions::default().send_window(64 * 1024));
    let events = run(&mut engine, id, |_, _| {});
    assert_eq!(status(&events), 200);
    assert_eq!(server.join().expect("server"), data);
    assert_drained(&mut engine);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_fed_stream_is_chunked_asked_for_by_window_and_ends_with_its_trailers() {
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        let head = read_head(&mut r);
        assert_eq!(
            header(&head, "transfer-encoding").as_deref(),
            Some("chunked")
        );
        let got = read_chunked(&mut r);
        let mut sock = sock;
        ok(&mut sock, b"");
        got
    });
    let mut engine = engine();
    let req = http::Request::post(format!("{url}/trace"))
        .body(Body::stream(None))
        .expect("request");
    let window = 4096;
    let id = engine.submit(req, RequestOptions::default().send_window(window));
    let total = 100_000usize;
    let mut fed = 0usize;
    let mut asks = 0;
    let events = run(&mut engine, id, |engine, room| {
        if fed == total {
            // An ask queued before the body ended.
            return;
        }
        asks += 1;
        assert!(room <= window, "room {room} beyond the window");
        // More than the window is refused, and not taken.
        let too_big = Bytes::from(vec![b'x'; window + 1]);
        assert!(matches!(
            engine.send_body(id, too_big),
            Err(Error::WindowFull { .. })
        ));
        let n = room.min(total - fed);
        if n > 0 {
            let chunk: Vec<u8> = (fed..fed + n).map(|i| (i % 256) as u8).collect();
            engine
                .send_body(id, Bytes::from(chunk))
                .expect("chunk fits");
            fed += n;
        }
        if fed == total {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-sum", http::HeaderValue::from_static("42"));
            engine.end_body(id, Some(trailers)).expect("end");
        }
    });
    assert_eq!(status(&events), 200);
    let (body, trailers) = server.join().expect("server");
    let want: Vec<u8> = (0..total).map(|i| (i % 256) as u8).collect();
    assert_eq!(body, want);
    assert_eq!(trailers, vec!["x-sum: 42".to_string()]);
    assert!(asks >= total / window, "asked {asks} times");
    assert_drained(&mut engine);
}

#[test]
fn a_stream_that_ends_short_of_its_length_fails_named_and_closes_the_connection() {
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock);
        read_head(&mut r);
        // The connection ends without the rest of the body.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("until close");
        rest
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .body(Body::stream(Some(10)))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default());
    let mut once = false;
    let events = run(&mut engine, id, |engine, _| {
        if std::mem::replace(&mut once, true) {
            // An ask queued before the body failed.
            return;
        }
        engine
            .send_body(id, Bytes::from_static(b"hello"))
            .expect("chunk");
        let err = engine.end_body(id, None).expect_err("short body");
        assert!(matches!(err, Error::BodySource { .. }), "{err}");
    });
    let err = failed(&events);
    assert!(matches!(err, Error::BodySource { .. }), "{err}");
    assert!(err.to_string().contains("5 of its declared 10"), "{err}");
    assert!(server.join().expect("server").len() <= 5);
    assert_drained(&mut engine);
}

#[test]
fn an_early_413_stops_the_upload_and_is_the_response() {
    let (path, _) = temp_file(32 * 1024 * 1024);
    let (url, server) = peer(|mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        sock.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
        )
        .expect("413");
        // Read what keeps coming, until the client gives up: it must stop.
        let mut n = 0u64;
        let mut buf = [0; 65536];
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .body(Body::file(&path).expect("open"))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default());
    let events = run(&mut engine, id, |_, _| {});
    assert_eq!(status(&events), 413);
    assert_drained(&mut engine);
    let read = server.join().expect("server");
    assert!(read < 32 * 1024 * 1024, "the whole body was sent: {read}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn expect_continue_waits_for_the_100_and_a_final_status_sends_no_body() {
    // A server that answers 100: the body follows.
    let (url, server) = peer(|mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        let head = read_head(&mut r);
        assert_eq!(header(&head, "expect").as_deref(), Some("100-continue"));
        sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .expect("100");
        let mut body = [0; 4];
        r.read_exact(&mut body).expect("body");
        ok(&mut sock, &body);
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .header("expect", "100-continue")
        .body(Bytes::from_static(b"data"))
        .expect("request");
    // A long continue wait: only the 100 can start the body in time.
    let opts = RequestOptions::default().continue_timeout(Duration::from_secs(30));
    let id = engine.submit(req, opts);
    let events = run(&mut engine, id, |_, _| {});
    match events.last() {
        Some(Event::Response { response, .. }) => assert_eq!(&response.body()[..], b"data"),
        other => panic!("{other:?}"),
    }
    server.join().expect("server");

    // A server that refuses at once: no body byte goes out.
    let (url, server) = peer(|mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        sock.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
            .expect("401");
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        rest
    });
    let req = http::Request::put(format!("{url}/up"))
        .header("expect", "100-continue")
        .body(Bytes::from_static(b"secret body"))
        .expect("request");
    let id = engine.submit(req, opts);
    let events = run(&mut engine, id, |_, _| {});
    assert_eq!(status(&events), 401);
    assert_drained(&mut engine);
    assert!(server.join().expect("server").is_empty(), "body was sent");
}

#[test]
fn a_consumer_that_does_not_consume_holds_the_server_back_then_gets_every_byte() {
    const SIZE: usize = 16 * 1024 * 1024;
    let (url, server) = peer(|sock| answer_with_bytes(sock, SIZE, 7));
    let mut engine = engine();
    let window = 128 * 1024;
    let opts = RequestOptions::default()
        .streaming(true)
        .manual_consume(true)
        .receive_window(window);
    let id = engine.submit(
        http::Request::get(format!("{url}/big"))
            .body(())
            .expect("req"),
        opts,
    );
    // Poll without consuming: delivery stops near the window.
    let mut delivered = 0usize;
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        engine.poll(Some(Duration::from_millis(20))).expect("poll");
        while let Some(ev) = engine.next_event() {
            if let Event::Body { data, .. } = ev {
                delivered += data.len();
            }
        }
    }
    // The window, plus at most one read pass (256 KiB) and a record.
    assert!(delivered >= window / 2, "nothing delivered: {delivered}");
    assert!(
        delivered < window + 512 * 1024,
        "not held back: {delivered}"
    );
    let progress = engine.progress(id).expect("live");
    assert_eq!(progress.receive_total, Some(SIZE as u64));
    // Consume what arrived, and then each piece as it comes.
    engine.consume(id, delivered);
    let until = Instant::now() + WAIT;
    let mut ended = false;
    while !ended && Instant::now() < until {
        engine.poll(Some(Duration::from_millis(20))).expect("poll");
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Body { data, .. } => {
                    delivered += data.len();
                    engine.consume(id, data.len());
                }
                Event::End { .. } => ended = true,
                Event::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }
    assert!(ended);
    assert_eq!(delivered, SIZE);
    server.join().expect("server");
    assert_drained(&mut engine);
}

#[test]
fn a_streamed_body_is_read_up_to_its_window_not_up_to_the_read_budget() {
    // A pass used to read up to the 256 KiB read budget whatever the
    // window, so a small window held a quarter MiB anyway (and the read
    // buffer grew to hold it). The whole response waits in the socket
    // before the engine reads any of it.
    const SIZE: usize = 1024 * 1024;
    let (got_tx, got_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (url, server) = peer(move |mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        let _ = got_tx.send(());
        go_rx.recv_timeout(WAIT).expect("go");
        let mut all = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
        all.resize(all.len() + SIZE, 5);
        // Loopback takes a few MiB unread: this returns before any is read.
        sock.write_all(&all).expect("response");
        let _ = sent_tx.send(());
        // Held open until the engine has read it all and closed.
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    });
    let mut engine = engine();
    let window = 16 * 1024;
    let opts = RequestOptions::default()
        .streaming(true)
        .manual_consume(true)
        .receive_window(window);
    let id = engine.submit(
        http::Request::get(format!("{url}/big"))
            .body(())
            .expect("req"),
        opts,
    );
    let until = Instant::now() + WAIT;
    while got_rx.try_recv().is_err() {
        assert!(Instant::now() < until, "the request never reached the peer");
        engine.poll(Some(Duration::from_millis(5))).expect("poll");
    }
    go_tx.send(()).expect("go");
    sent_rx
        .recv_timeout(WAIT)
        .expect("the peer wrote the response");
    let mut delivered = 0usize;
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        engine.poll(Some(Duration::from_millis(20))).expect("poll");
        while let Some(ev) = engine.next_event() {
            if let Event::Body { data, .. } = ev {
                delivered += data.len();
            }
        }
    }
    // The window, and at most one socket read (the 64 KiB scratch) past it.
    assert!(delivered >= window, "nothing delivered: {delivered}");
    assert!(
        delivered <= window + 64 * 1024,
        "read past the window: {delivered}"
    );
    engine.consume(id, delivered);
    let until = Instant::now() + WAIT;
    let mut ended = false;
    while !ended && Instant::now() < until {
        engine.poll(Some(Duration::from_millis(20))).expect("poll");
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Body { data, .. } => {
                    delivered += data.len();
                    engine.consume(id, data.len());
                }
                Event::End { .. } => ended = true,
                Event::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }
    assert!(ended);
    assert_eq!(delivered, SIZE);
    assert_drained(&mut engine);
    server.join().expect("server");
}

#[test]
fn a_peer_that_stops_reading_is_cut_at_the_send_stall_timeout() {
    let (tx, rx) = mpsc::channel::<()>();
    let (url, server) = peer(move |sock| {
        let mut r = BufReader::new(sock);
        read_head(&mut r);
        // Never read the body; hold the connection until the client is done.
        let _ = rx.recv_timeout(WAIT);
    });
    let mut engine = engine();
    let body = Bytes::from(vec![1u8; 64 * 1024 * 1024]);
    let req = http::Request::put(format!("{url}/up"))
        .body(body)
        .expect("request");
    let opts = RequestOptions::default().stall_timeouts(Some(Duration::from_millis(100)), None);
    let id = engine.submit(req, opts);
    let events = run(&mut engine, id, |_, _| {});
    assert_eq!(failed(&events).deadline(), Some(Deadline::SendStall));
    let _ = tx.send(());
    server.join().expect("server");
    assert_drained(&mut engine);
}

#[test]
fn a_peer_that_stops_mid_body_is_cut_at_the_receive_stall_timeout() {
    let (tx, rx) = mpsc::channel::<()>();
    let (url, server) = peer(move |mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .expect("partial");
        // Hold the connection open until the client is done.
        let _ = rx.recv_timeout(WAIT);
    });
    let mut engine = engine();
    let req = http::Request::get(format!("{url}/slow"))
        .body(())
        .expect("request");
    let opts = RequestOptions::default().stall_timeouts(None, Some(Duration::from_millis(100)));
    let id = engine.submit(req, opts);
    let events = run(&mut engine, id, |_, _| {});
    assert_eq!(failed(&events).deadline(), Some(Deadline::ReceiveStall));
    let _ = tx.send(());
    server.join().expect("server");
    assert_drained(&mut engine);
}

#[test]
fn execute_into_writes_a_body_larger_than_max_body_to_the_sink() {
    const SIZE: usize = 3 * 1024 * 1024;
    let (url, server) = peer(|mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        let body: Vec<u8> = (0..SIZE).map(|i| (i % 199) as u8).collect();
        ok(&mut sock, &body);
        body
    });
    let mut engine = engine();
    let mut sink = Vec::new();
    let req = http::Request::get(format!("{url}/file"))
        .body(())
        .expect("request");
    let head = engine
        .execute_into(
            req,
            RequestOptions::default().max_buffered_body(1024),
            &mut sink,
        )
        .expect("download");
    assert_eq!(head.status(), 200);
    assert_eq!(sink, server.join().expect("server"));
    assert_drained(&mut engine);
}

#[test]
fn no_body_wanted_reaches_the_host_after_its_request_ended() {
    let (url, server) = peer(|mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        sock.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .expect("413");
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .body(Body::stream(Some(1 << 20)))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default());
    // Let the request end with its events still queued: the BodyWanted
    // raised at submission is ahead of the response.
    let until = Instant::now() + WAIT;
    while engine.stats().in_flight + engine.stats().queued > 0 {
        assert!(Instant::now() < until, "the 413 did not end it");
        engine.poll(Some(Duration::from_millis(5))).expect("poll");
    }
    let events: Vec<Event> = std::iter::from_fn(|| engine.next_event()).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::BodyWanted { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.is_terminal() && e.request_id() == Some(id)),
        "{events:?}"
    );
    server.join().expect("server");
    assert_drained(&mut engine);
}

/// A peer that runs `script` on each of its first `n` connections, in turn.
fn peers<T: Send + 'static>(
    n: usize,
    mut script: impl FnMut(usize, TcpStream) -> T + Send + 'static,
) -> (String, thread::JoinHandle<Vec<T>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = thread::spawn(move || {
        (0..n)
            .map(|i| {
                let (sock, _) = listener.accept().expect("accept");
                sock.set_read_timeout(Some(WAIT)).expect("timeout");
                script(i, sock)
            })
            .collect()
    });
    (format!("http://{addr}"), handle)
}

/// The `progress` a failure carries.
fn failed_progress(events: &[Event]) -> rotary::Progress {
    match events.last() {
        Some(Event::Failed { progress, .. }) => *progress,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_server_that_closes_mid_upload_fails_the_request_once_saying_how_much_went_out() {
    const SIZE: usize = 32 * 1024 * 1024;
    let (path, _) = temp_file(SIZE);
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock);
        read_head(&mut r);
        let mut some = vec![0; 256 * 1024];
        r.read_exact(&mut some).expect("the body's start");
        // Gone, with the rest of the body unread.
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .body(Body::file(&path).expect("open"))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default());
    let events = run(&mut engine, id, |_, _| {});
    let err = failed(&events);
    assert!(
        matches!(
            err,
            Error::Io { .. } | Error::PeerClosed { reused: false, .. }
        ),
        "{err:?}"
    );
    let progress = failed_progress(&events);
    assert_eq!(progress.send_total, Some(SIZE as u64));
    assert!(
        progress.sent >= 256 * 1024 && progress.sent < SIZE as u64,
        "{progress:?}"
    );
    server.join().expect("server");
    // A fresh connection: never sent again.
    assert_eq!(engine.stats().retries, 0);
    assert_drained(&mut engine);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_reused_connection_closed_mid_upload_retries_a_file_body_and_never_a_stream() {
    let (path, data) = temp_file(200 * 1024);
    let (url, server) = peers(2, |i, mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        if i == 0 {
            // A first exchange, so the connection is reused; then the
            // upload's head, and the connection closes under it.
            read_head(&mut r);
            ok(&mut sock, b"warm");
            read_head(&mut r);
            return Vec::new();
        }
        // The retry of the file body, whole; then the stream's head, and
        // this connection closes under it too.
        let head = read_head(&mut r);
        let len: usize = header(&head, "content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        let mut got = vec![0; len];
        r.read_exact(&mut got).expect("body");
        ok(&mut sock, b"stored");
        read_head(&mut r);
        got
    });
    let mut engine = engine();
    let warm = http::Request::get(format!("{url}/warm"))
        .body(())
        .expect("request");
    let id = engine.submit(warm, RequestOptions::default());
    assert_eq!(status(&run(&mut engine, id, |_, _| {})), 200);

    let put = http::Request::put(format!("{url}/up"))
        .body(Body::file(&path).expect("open"))
        .expect("request");
    let id = engine.submit(put, RequestOptions::default().send_window(16 * 1024));
    assert_eq!(status(&run(&mut engine, id, |_, _| {})), 200);
    assert_eq!(engine.stats().retries, 1);

    let put = http::Request::put(format!("{url}/stream"))
        .body(Body::stream(Some(1 << 20)))
        .expect("request");
    let id = engine.submit(put, RequestOptions::default());
    // Never past the declared length: loopback's buffers may take the whole
    // MiB before the close is seen, and a host that fed on would fail the
    // request itself (`BodySource`).
    let mut left = 1usize << 20;
    let events = run(&mut engine, id, |engine, room| {
        let n = room.min(4096).min(left);
        if n > 0 && engine.send_body(id, Bytes::from(vec![b's'; n])).is_ok() {
            left -= n;
        }
    });
    let err = failed(&events);
    assert!(
        matches!(
            err,
            Error::Io { .. } | Error::PeerClosed { reused: true, .. }
        ),
        "{err:?}"
    );
    let s = engine.stats();
    assert_eq!((s.retries, s.connections_attempted), (1, 2), "{s:?}");
    let got = server.join().expect("server");
    assert_eq!(got[1], data);
    assert_drained(&mut engine);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_file_that_shrinks_while_sent_fails_named_and_closes_the_connection() {
    let (path, _) = temp_file(1024 * 1024);
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock);
        read_head(&mut r);
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        rest.len()
    });
    let mut engine = engine();
    let body = Body::file(&path).expect("open");
    // Cut to 100,000 bytes after the length was taken.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(100_000))
        .expect("truncate");
    let req = http::Request::put(format!("{url}/up"))
        .body(body)
        .expect("request");
    let id = engine.submit(req, RequestOptions::default().send_window(16 * 1024));
    let events = run(&mut engine, id, |_, _| {});
    let err = failed(&events);
    assert!(matches!(err, Error::BodySource { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the file ended after 100000 of its 1048576 bytes"),
        "{err}"
    );
    // The connection closed short of the declared length: the server
    // cannot take it for a whole body.
    assert!(server.join().expect("server") <= 100_000);
    assert_drained(&mut engine);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_download_cut_mid_body_fails_named_and_reports_the_bytes_that_arrived() {
    const ANNOUNCED: usize = 100_000;
    const SENT: usize = 30_000;
    let script = |sock: TcpStream| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        let mut sock = sock;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {ANNOUNCED}\r\n\r\n");
        sock.write_all(head.as_bytes()).expect("head");
        sock.write_all(&[b'x'; SENT]).expect("part of the body");
        sock.shutdown(std::net::Shutdown::Write).expect("close");
        let _ = r.read_to_end(&mut Vec::new());
    };
    let mut engine = engine();
    for streaming in [true, false] {
        let (url, server) = peer(script);
        let req = http::Request::get(format!("{url}/file"))
            .body(())
            .expect("request");
        let id = engine.submit(req, RequestOptions::default().streaming(streaming));
        let events = run(&mut engine, id, |_, _| {});
        let err = failed(&events);
        assert!(
            matches!(
                err,
                Error::Protocol {
                    phase: rotary::Phase::ResponseBody,
                    cause: rotary_proto::Error::TruncatedBody { .. },
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("{} bytes of the body missing", ANNOUNCED - SENT)),
            "{err}"
        );
        let progress = failed_progress(&events);
        assert_eq!(
            (progress.received, progress.receive_total),
            (SENT as u64, Some(ANNOUNCED as u64)),
            "streaming {streaming}"
        );
        if streaming {
            let delivered: usize = events
                .iter()
                .map(|e| match e {
                    Event::Body { data, .. } => data.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(delivered, SENT);
        }
        server.join().expect("server");
    }
    assert_drained(&mut engine);
}

#[test]
fn a_paused_download_reads_nothing_for_a_second_then_gets_every_byte() {
    const SIZE: usize = 16 * 1024 * 1024;
    let (url, server) = peer(|sock| answer_with_bytes(sock, SIZE, 3));
    let mut engine = engine();
    // A receive-stall deadline far shorter than the pause: time held back
    // by the host must not count as a stall.
    let opts = RequestOptions::default()
        .streaming(true)
        .stall_timeouts(None, Some(Duration::from_millis(100)));
    let id = engine.submit(
        http::Request::get(format!("{url}/big"))
            .body(())
            .expect("request"),
        opts,
    );
    let mut delivered = 0usize;
    let mut pump = |engine: &mut Engine, for_: Duration| {
        let mut ended = false;
        let until = Instant::now() + for_;
        while !ended && Instant::now() < until {
            engine.poll(Some(Duration::from_millis(20))).expect("poll");
            while let Some(ev) = engine.next_event() {
                match ev {
                    Event::Head { .. } => engine.pause(id, true),
                    Event::Body { data, .. } => delivered += data.len(),
                    Event::End { .. } => ended = true,
                    Event::Failed { error, .. } => panic!("{error}"),
                    _ => {}
                }
            }
        }
        ended
    };
    // Paused at the head: what was read with it, then nothing.
    assert!(!pump(&mut engine, Duration::from_millis(200)));
    let before = engine.progress(id).expect("live");
    assert!(!pump(&mut engine, Duration::from_millis(1000)));
    let after = engine.progress(id).expect("live");
    assert_eq!(before.received, after.received, "read while paused");
    assert!(after.received < 1024 * 1024, "{after:?}");
    engine.pause(id, false);
    assert!(pump(&mut engine, WAIT), "did not end");
    assert_eq!(delivered, SIZE);
    server.join().expect("server");
    assert_drained(&mut engine);
}

/// CPU time of the calling thread so far, in clock ticks (Linux).
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[cfg(target_os = "linux")]
#[test]
fn execute_waits_in_the_poll_while_other_events_stay_queued() {
    let (tx, rx) = mpsc::channel::<()>();
    let (url, server) = peer(move |mut sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        read_head(&mut r);
        ok(&mut sock, b"warm");
        read_head(&mut r);
        // Answer the second request only when the test says so, after it
        // has waited a while.
        let _ = rx.recv_timeout(WAIT);
        ok(&mut sock, b"late");
    });
    let mut engine = engine();
    let get = || {
        http::Request::get(format!("{url}/x"))
            .body(())
            .expect("request")
    };
    engine
        .execute(get(), RequestOptions::default())
        .expect("warm-up");
    // `Opened` (and more) stay queued: execute leaves them to the host.
    let answer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        let _ = tx.send(());
    });
    let before = thread_cpu_ticks();
    let resp = engine
        .execute(get(), RequestOptions::default())
        .expect("answered");
    let spent = thread_cpu_ticks() - before;
    assert_eq!(&resp.body()[..], b"late");
    // Waiting 500 ms in epoll costs next to nothing; a loop that returned
    // at once for the queued events would burn most of it.
    assert!(spent < 15, "{spent} ticks of CPU while waiting");
    assert!(engine.next_event().is_some(), "the queued events are kept");
    answer.join().expect("answer");
    server.join().expect("server");
    assert_drained(&mut engine);
}

#[test]
fn a_host_that_feeds_each_asks_room_never_overfills_the_window() {
    const SIZE: usize = 16 * 1024 * 1024;
    let (url, server) = peer(|sock| {
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        let head = read_head(&mut r);
        let len: usize = header(&head, "content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        // A slow start: the socket fills and the window's queue builds.
        thread::sleep(Duration::from_millis(200));
        let mut n = 0;
        let mut buf = vec![0; 64 * 1024];
        while n < len {
            let k = r.read(&mut buf).expect("body");
            assert!(k > 0, "body cut at {n}");
            n += k;
        }
        let mut sock = sock;
        ok(&mut sock, b"stored");
        n
    });
    let mut engine = engine();
    let req = http::Request::put(format!("{url}/up"))
        .body(Body::stream(Some(SIZE as u64)))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default().send_window(64 * 1024));
    let piece = Bytes::from(vec![b'p'; 4096]);
    let mut fed = 0usize;
    let events = run(&mut engine, id, |engine, room| {
        // Take each ask at its word, in pieces: the room it names must fit.
        let mut room = room;
        while room >= piece.len() && fed < SIZE {
            engine.send_body(id, piece.clone()).expect("fits the room");
            room -= piece.len();
            fed += piece.len();
        }
        if fed == SIZE {
            let _ = engine.end_body(id, None);
        }
    });
    assert_eq!(status(&events), 200);
    assert_eq!(server.join().expect("server"), SIZE);
    assert_drained(&mut engine);
}
