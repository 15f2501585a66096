//! Interop against a real server nobody here wrote: hyper's HTTP/1.1 server
//! (on a current-thread tokio runtime in a background thread), over plain TCP
//! and over TLS (tokio-rustls on ring, with a leaf from a run-time `TestCa`).
//!
//! Covers keep-alive reuse (counted on the server side), chunked bodies
//! (hyper chunks any body without a known length), large bodies both ways,
//! server-side close (`keep_alive(false)` and `Connection: close`), and a
//! long poll held by the server.

mod driver;
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use driver::*;
use rotary::{CloseReason, Event, Handshake, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- the peer

/// hyper's HTTP/1 server on 127.0.0.1:0, plain or TLS. Routes:
///
/// * `/hello` — `hello`, with Content-Length.
/// * `/large?bytes=N` — N bytes of [`pattern`], with Content-Length.
/// * `/chunked?chunks=N&size=S&gap_ms=G` — N chunks of S bytes of [`pattern`]
///   without a length (so chunked), G ms apart.
/// * `/echo` — the request body back.
/// * `/close` — `bye` with `Connection: close` (hyper then closes).
/// * `/poll?ms=M` — `polled` after M ms.
///
/// Dropping it stops the accept loop, drops the runtime (and with it every
/// connection task) and joins the thread.
struct HyperPeer {
    addr: SocketAddr,
    tls: bool,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HyperPeer {
    fn plain() -> HyperPeer {
        HyperPeer::start(None, true)
    }

    fn tls(leaf: &Issued) -> HyperPeer {
        HyperPeer::start(Some(leaf), true)
    }

    /// `keep_alive = false`: hyper answers `Connection: close` and closes
    /// after every response.
    fn start(leaf: Option<&Issued>, keep_alive: bool) -> HyperPeer {
        let acceptor = leaf.map(|leaf| {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain_der(), leaf.key_der())
            .expect("leaf and key match");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let tls = acceptor.is_some();
        let (acc, reqs) = (accepted.clone(), requests.clone());
        let thread = std::thread::Builder::new()
            .name(format!("hyper-peer-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("register listener");
                    loop {
                        // Accept, or stop when the test drops the peer.
                        let next = std::future::poll_fn(|cx| {
                            if Pin::new(&mut stop_rx).poll(cx).is_ready() {
                                return Poll::Ready(None);
                            }
                            listener.poll_accept(cx).map(Some)
                        })
                        .await;
                        let stream = match next {
                            None => break,
                            Some(Ok((stream, _))) => stream,
                            Some(Err(_)) => continue,
                        };
                        acc.fetch_add(1, Ordering::SeqCst);
                        let reqs = reqs.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| {
                                reqs.fetch_add(1, Ordering::SeqCst);
                                route(req)
                            });
                            let mut builder = http1::Builder::new();
                            builder.keep_alive(keep_alive).timer(TokioTimer::new());
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(tls) = acceptor.accept(stream).await {
                                        let _ = builder
                                            .serve_connection(TokioIo::new(tls), service)
                                            .await;
                                    }
                                }
                                None => {
                                    let _ = builder
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                        });
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })
            .expect("spawn hyper peer thread");
        HyperPeer {
            addr,
            tls,
            accepted,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path_and_query}", self.addr.port())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HyperPeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the hyper peer thread panicked");
            }
        }
    }
}

type ResBody = BoxBody<Bytes, Infallible>;

/// Byte `i` of every generated body: a period (251) that no power-of-two
/// chunking lines up with, so misplaced or lost bytes show.
fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

fn query(req: &hyper::Request<Incoming>, key: &str, default: usize) -> usize {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.parse().expect("numeric query value"))
        .unwrap_or(default)
}

fn full(body: impl Into<Bytes>) -> ResBody {
    Full::new(body.into()).boxed()
}

async fn route(req: hyper::Request<Incoming>) -> Result<hyper::Response<ResBody>, Infallible> {
    let response = match req.uri().path() {
        "/hello" => hyper::Response::new(full("hello")),
        "/large" => hyper::Response::new(full(pattern(0, query(&req, "bytes", MIB)))),
        "/chunked" => {
            let (n, size) = (query(&req, "chunks", 4), query(&req, "size", 100));
            let gap = Duration::from_millis(query(&req, "gap_ms", 0) as u64);
            let chunks = (0..n).map(|i| pattern(i * size, size)).collect();
            hyper::Response::new(
                Chunked {
                    chunks,
                    gap,
                    sleep: None,
                }
                .boxed(),
            )
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            hyper::Response::new(full(body))
        }
        "/close" => hyper::Response::builder()
            .header("connection", "close")
            .body(full("bye"))
            .expect("valid response"),
        "/poll" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms", 100) as u64)).await;
            hyper::Response::new(full("polled"))
        }
        _ => hyper::Response::builder()
            .status(404)
            .body(full("not found"))
            .expect("valid response"),
    };
    Ok(response)
}

/// A body of known chunks but no size hint, so hyper frames it chunked;
/// `gap` apart, so the engine sees them arrive across several reads.
struct Chunked {
    chunks: std::collections::VecDeque<Bytes>,
    gap: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        match this.chunks.pop_front() {
            None => Poll::Ready(None),
            Some(chunk) => {
                if !this.gap.is_zero() && !this.chunks.is_empty() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.gap)));
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

fn served_by(out: &Outcome, id: rotary::RequestId) -> &rotary::ServedBy {
    match out.event(id) {
        Event::Response { served_by, .. } => served_by,
        other => panic!("request {id:?} did not succeed: {other:#?}"),
    }
}

/// `n` sequential GETs of `path`, each awaited before the next is submitted;
/// asserts every one succeeds with `expect` and returns the outcomes.
fn sequential(
    engine: &mut rotary::Engine,
    peer: &HyperPeer,
    path: &str,
    n: usize,
    expect: &[u8],
) -> Vec<(rotary::RequestId, Outcome)> {
    (0..n)
        .map(|_| {
            let id = engine.submit(get(&peer.url(path)), RequestOptions::default());
            let out = finish(engine, &[id], T);
            assert_eq!(out.response(id).status(), 200);
            assert_eq!(&out.response(id).body()[..], expect);
            (id, out)
        })
        .collect()
}

fn assert_chunked(response: &http::Response<Bytes>) {
    let te = response
        .headers()
        .get(http::header::TRANSFER_ENCODING)
        .expect("hyper framed the body chunked");
    assert_eq!(te, "chunked");
    assert!(
        response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_none(),
        "a chunked response carries no Content-Length"
    );
}

// ---------------------------------------------------------------- tests

#[test]
fn keep_alive_reuses_one_connection_over_plain_http() {
    let peer = HyperPeer::plain();
    let mut engine = plain_engine(|_| {});
    let outs = sequential(&mut engine, &peer, "/hello", 5, b"hello");
    for (i, (id, out)) in outs.iter().enumerate() {
        assert_eq!(served_by(out, *id).reused, i > 0, "request {i}");
    }
    assert_eq!(peer.accepted(), 1, "hyper accepted one connection");
    assert_eq!(peer.requests(), 5);
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.connections_reused, 4);
    assert_drained(&mut engine);
}

#[test]
fn keep_alive_reuses_one_connection_over_tls() {
    let (ca, leaf) = ca_and_leaf();
    let peer = HyperPeer::tls(&leaf);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let outs = sequential(&mut engine, &peer, "/hello", 5, b"hello");
    let opened = outs[0].1.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].handshake, Some(Handshake::Full));
    let chain = opened[0]
        .chain
        .as_ref()
        .expect("a TLS connection has a chain");
    assert_eq!(chain.der(), &leaf.chain_der()[..]);
    let conn = opened[0].conn;
    for (id, out) in &outs {
        assert_eq!(
            served_by(out, *id).conn,
            conn,
            "every request on one connection"
        );
    }
    assert_eq!(peer.accepted(), 1, "hyper accepted one connection");
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.handshakes_full, 1);
    assert_eq!(stats.connections_reused, 4);
    assert_drained(&mut engine);
}

#[test]
fn chunked_bodies_arrive_whole_and_the_connection_is_reused_after_them() {
    let (ca, leaf) = ca_and_leaf();
    for peer in [HyperPeer::plain(), HyperPeer::tls(&leaf)] {
        let (mut engine, _ca_file) = engine_for(&ca, |_| {});
        let cases = [
            (1, 1, 0),      // one one-byte chunk
            (50, 1000, 1),  // chunks trickling in 1 ms apart
            (3, 70_000, 0), // chunks larger than one read
        ];
        for (chunks, size, gap) in cases {
            let path = format!("/chunked?chunks={chunks}&size={size}&gap_ms={gap}");
            let id = engine.submit(get(&peer.url(&path)), RequestOptions::default());
            let out = finish(&mut engine, &[id], T);
            let response = out.response(id);
            assert_eq!(response.status(), 200);
            assert_chunked(response);
            assert_eq!(response.body(), &pattern(0, chunks * size), "{path}");
        }
        // The last-chunk marker ended each body cleanly: one connection served all.
        let hello = engine.submit(get(&peer.url("/hello")), RequestOptions::default());
        let out = finish(&mut engine, &[hello], T);
        assert!(served_by(&out, hello).reused);
        assert_eq!(peer.accepted(), 1, "tls={}", peer.tls);
        assert_eq!(engine.stats().connections_opened, 1);
        assert_drained(&mut engine);
    }
}

#[test]
fn a_large_chunked_body_streams_as_body_events() {
    let (ca, leaf) = ca_and_leaf();
    let peer = HyperPeer::tls(&leaf);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let (chunks, size) = (128, 64 * 1024); // 8 MiB
    let id = engine.submit(
        get(&peer.url(&format!("/chunked?chunks={chunks}&size={size}"))),
        RequestOptions::default().streaming(true),
    );
    let out = finish(&mut engine, &[id], T);
    let mut body = Vec::with_capacity(chunks * size);
    let mut heads = 0;
    for e in &out.events {
        match e {
            Event::Head {
                id: h, response, ..
            } if *h == id => {
                heads += 1;
                assert_eq!(response.status(), 200);
                assert_eq!(
                    response
                        .headers()
                        .get(http::header::TRANSFER_ENCODING)
                        .unwrap(),
                    "chunked"
                );
            }
            Event::Body { id: b, data } if *b == id => body.extend_from_slice(data),
            _ => {}
        }
    }
    assert_eq!(heads, 1);
    match out.event(id) {
        Event::End { trailers, .. } => assert!(trailers.is_none()),
        other => panic!("streaming ends with End: {other:#?}"),
    }
    assert_eq!(body.len(), chunks * size);
    assert!(body == pattern(0, chunks * size), "streamed body differs");
    assert_drained(&mut engine);
}

#[test]
fn large_bodies_both_ways_over_tls_on_one_connection() {
    let (ca, leaf) = ca_and_leaf();
    let peer = HyperPeer::tls(&leaf);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let size = 8 * MIB;
    // Download, with Content-Length.
    let down = engine.submit(
        get(&peer.url(&format!("/large?bytes={size}"))),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[down], T);
    let response = out.response(down);
    assert_eq!(
        response.headers()[http::header::CONTENT_LENGTH],
        size.to_string()
    );
    assert_eq!(response.body().len(), size);
    assert!(
        response.body() == &pattern(0, size),
        "downloaded body differs"
    );
    // Upload the same bytes and get them echoed back.
    let upload = pattern(7, size);
    let up = engine.submit(
        http::Request::post(peer.url("/echo"))
            .body(upload.clone())
            .unwrap(),
        RequestOptions::default(),
    );
    let out = finish(&mut engine, &[up], T);
    assert_eq!(out.response(up).status(), 200);
    assert!(out.response(up).body() == &upload, "echoed body differs");
    assert!(served_by(&out, up).reused);
    assert_eq!(peer.accepted(), 1);
    // A body over the buffered limit fails without harming the engine.
    let capped = engine.submit(
        get(&peer.url(&format!("/large?bytes={size}"))),
        RequestOptions::default().max_buffered_body(MIB),
    );
    let out = finish(&mut engine, &[capped], T);
    assert!(
        matches!(out.error(capped), rotary::Error::BodyTooLarge { .. }),
        "{:?}",
        out.error(capped)
    );
    assert_drained(&mut engine);
}

#[test]
fn hyper_without_keep_alive_closes_after_each_response_and_no_request_fails() {
    let (ca, leaf) = ca_and_leaf();
    for tls in [false, true] {
        let peer = HyperPeer::start(tls.then_some(&leaf), false);
        let (mut engine, _ca_file) = engine_for(&ca, |_| {});
        // Each request finds its connection closed by the server.
        let outs = sequential(&mut engine, &peer, "/hello", 5, b"hello");
        for (id, out) in &outs {
            assert!(!served_by(out, *id).reused);
            let response = out.response(*id);
            assert_eq!(response.headers()[http::header::CONNECTION], "close");
        }
        assert_eq!(peer.accepted(), 5, "tls={tls}");
        let stats = engine.stats();
        assert_eq!(stats.connections_opened, 5);
        assert_eq!(stats.connections_reused, 0);
        assert_eq!(stats.requests_failed(), 0);
        assert_eq!(stats.retries, 0, "nothing was sent on a closed connection");
        assert_eq!(stats.closed(CloseReason::ServerClose), 5);
        assert_drained(&mut engine);
    }
}

/// Requests queued behind the one connection allowed, on a server that closes
/// after every response: each closing connection hands the queue to a fresh
/// one. Over TLS, hyper's close_notify arrives in the same read as the
/// response, so the replacement opens (in the closed one's slab slot) while
/// that read is still being handled: the EOF must not be taken for the new
/// connection's (it once failed a queued request with `PeerClosed { phase: Tls }`).
#[test]
fn requests_queued_behind_a_connection_the_server_closes_all_succeed() {
    let (ca, leaf) = ca_and_leaf();
    for tls in [false, true] {
        let peer = HyperPeer::start(tls.then_some(&leaf), false);
        let (mut engine, _ca_file) = engine_for(&ca, |c| c.policy.max_connections = 1);
        let ids: Vec<_> = (0..6)
            .map(|_| engine.submit(get(&peer.url("/hello")), RequestOptions::default()))
            .collect();
        let out = finish(&mut engine, &ids, T);
        let failed: Vec<_> = out
            .events
            .iter()
            .filter(|e| matches!(e, Event::Failed { .. }))
            .collect();
        assert!(failed.is_empty(), "tls={tls}: {:#?}", out.events);
        for id in &ids {
            assert_eq!(out.response(*id).body(), "hello");
        }
        assert_eq!(peer.accepted(), 6, "tls={tls}");
        assert_eq!(peer.requests(), 6);
        let stats = engine.stats();
        assert_eq!(stats.connections_opened, 6);
        assert_eq!(stats.closed(CloseReason::ServerClose), 6);
        assert_drained(&mut engine);
    }
}

#[test]
fn a_connection_close_response_retires_the_connection_and_the_next_request_opens_anew() {
    let peer = HyperPeer::plain();
    let mut engine = plain_engine(|_| {});
    let mut conns = Vec::new();
    for path in [
        "/hello", "/hello", "/close", "/hello", "/close", "/close", "/hello",
    ] {
        let id = engine.submit(get(&peer.url(path)), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).status(), 200, "{path}");
        conns.push(served_by(&out, id).conn);
    }
    conns.dedup();
    assert_eq!(conns.len(), 4, "closes after requests 3, 5 and 6");
    assert_eq!(peer.accepted(), 4);
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 4);
    assert_eq!(stats.closed(CloseReason::ServerClose), 3);
    assert_eq!(stats.requests_failed(), 0);
    assert_drained(&mut engine);
}

#[test]
fn a_long_poll_held_by_hyper_completes_while_other_requests_go_on() {
    let (ca, leaf) = ca_and_leaf();
    let peer = HyperPeer::tls(&leaf);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let started = Instant::now();
    let poll = engine.submit(
        http::Request::post(peer.url("/poll?ms=100"))
            .body(Bytes::from_static(b"{}"))
            .unwrap(),
        RequestOptions::default().deadline(Duration::from_secs(5)),
    );
    // Meanwhile a second connection carries short requests.
    let quick: Vec<_> = (0..3)
        .map(|_| engine.submit(get(&peer.url("/hello")), RequestOptions::default()))
        .collect();
    let out = finish(&mut engine, &quick, T);
    assert!(
        out.events.iter().all(|e| e.request_id() != Some(poll)),
        "the poll is still held"
    );
    let out = finish(&mut engine, &[poll], T);
    let held = started.elapsed();
    assert_eq!(out.response(poll).body(), "polled");
    assert!(held >= Duration::from_millis(100), "held only {held:?}");
    // A held connection goes back to the pool and takes the next request.
    let again = engine.submit(get(&peer.url("/poll?ms=20")), RequestOptions::default());
    let out = finish(&mut engine, &[again], T);
    assert_eq!(out.response(again).body(), "polled");
    assert!(served_by(&out, again).reused);
    assert!(peer.accepted() >= 2, "the poll held its own connection");
    assert_eq!(peer.accepted(), engine.stats().connections_opened as usize);
    assert_drained(&mut engine);
}
