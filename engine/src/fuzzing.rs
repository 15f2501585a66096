//! In-memory peers for fuzzing the whole engine: connections, TLS, codec,
//! pool and timers, fed bytes through in-memory pipes instead of sockets.
//!
//! Not part of the stable API. The cargo-fuzz target `engine` and the test
//! that replays its corpus both call [`run_script`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::{ServerConfig, ServerConnection};

use crate::{Body, Config, Engine, Event, RequestId, RequestOptions, Trust};

#[derive(Default)]
struct Pipe {
    to_client: VecDeque<u8>,
    from_client: Vec<u8>,
    peer_eof: bool,
    reset: bool,
    client_shut: bool,
}

fn lock(p: &Mutex<Pipe>) -> MutexGuard<'_, Pipe> {
    // A poisoned pipe only means a panicking fuzz run; keep its data.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's end of an in-memory pipe.
pub struct MemConn(Arc<Mutex<Pipe>>);

impl crate::sock::Pipe for MemConn {
    fn shutdown_write(&mut self) {
        lock(&self.0).client_shut = true;
    }
}

impl Read for MemConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = lock(&self.0);
        if p.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if p.to_client.is_empty() {
            return if p.peer_eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(p.to_client.len());
        for (dst, src) in buf.iter_mut().zip(p.to_client.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl Write for MemConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = lock(&self.0);
        if p.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if p.client_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        p.from_client.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The peer's end of an in-memory pipe.
#[derive(Clone)]
pub struct MemPipe(Arc<Mutex<Pipe>>);

impl MemPipe {
    /// Bytes the engine wrote since the last call.
    pub fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut lock(&self.0).from_client)
    }

    /// Make `data` readable by the engine.
    pub fn push(&self, data: &[u8]) {
        lock(&self.0).to_client.extend(data);
    }

    /// The peer closes its side (the engine reads EOF after the data).
    pub fn close(&self) {
        lock(&self.0).peer_eof = true;
    }

    /// The peer resets the connection.
    pub fn reset(&self) {
        lock(&self.0).reset = true;
    }

    /// The engine shut its side down.
    pub fn client_closed(&self) -> bool {
        lock(&self.0).client_shut
    }
}

/// A network of in-memory pipes: set it as `Config::network` and every
/// connection the engine opens becomes a [`MemPipe`] for the caller to serve.
#[derive(Clone, Default)]
pub struct MemNet(Arc<Mutex<Vec<MemPipe>>>);

impl std::fmt::Debug for MemNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemNet")
    }
}

impl crate::sock::Network for MemNet {
    fn connect(&self, _addr: SocketAddr) -> io::Result<Box<dyn crate::sock::Pipe>> {
        let pipe = Arc::new(Mutex::new(Pipe::default()));
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(MemPipe(pipe.clone()));
        Ok(Box::new(MemConn(pipe)))
    }
}

impl MemNet {
    /// An empty network.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// Pipes opened since the last call.
    pub fn take_new(&self) -> Vec<MemPipe> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One scripted peer connection: the pipe and, for TLS, a rustls server.
struct Peer {
    pipe: MemPipe,
    tls: Option<ServerConnection>,
}

impl Peer {
    /// Consume what the engine wrote; answer TLS handshake records.
    fn service(&mut self) {
        let written = self.pipe.take_written();
        let Some(tls) = self.tls.as_mut() else { return };
        let mut rd = &written[..];
        while !rd.is_empty() {
            match tls.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tls.process_new_packets().is_err() {
                        flush_tls(tls, &self.pipe);
                        self.pipe.close();
                        return;
                    }
                }
            }
        }
        let mut sink = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        flush_tls(tls, &self.pipe);
    }

    /// Send application bytes (through TLS once its handshake is done).
    fn send(&mut self, data: &[u8]) {
        match self.tls.as_mut() {
            None => self.pipe.push(data),
            Some(tls) => {
                if !tls.is_handshaking() {
                    let _ = tls.writer().write_all(data);
                    flush_tls(tls, &self.pipe);
                }
            }
        }
    }

    fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            flush_tls(tls, &self.pipe);
        }
        self.pipe.close();
    }
}

fn flush_tls(tls: &mut ServerConnection, pipe: &MemPipe) {
    let mut out = Vec::new();
    while tls.wants_write() {
        if tls.write_tls(&mut out).is_err() {
            break;
        }
    }
    pipe.push(&out);
}

/// What a script run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Requests submitted.
    pub submitted: usize,
    /// Requests that ended with a response.
    pub ok: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Connections whose credentials stopped holding
    /// ([`Event::CredentialsInvalid`]).
    pub invalidated: usize,
}

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const CHUNKED_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n";
const CLOSE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close";

/// What the script knows of one request, to check what its events say.
#[derive(Default)]
struct Seen {
    /// Body bytes handed to a fed request body.
    fed: u64,
    /// Streamed response body bytes delivered as `Event::Body`.
    delivered: u64,
}

/// Run one fuzz script against an engine on in-memory pipes and check the
/// engine's invariants: every request ends with exactly one terminal event,
/// nothing arrives for a request after it ended, a failed request's
/// progress agrees with what was fed and delivered, and after shutdown the
/// engine holds no connection, timer or request. Panics when one breaks.
///
/// Each script is a flags byte (TLS, pool policy, streaming), then
/// operations of two bytes (`op`, `arg`), some followed by `arg & 0x3f`
/// data bytes. `op % 16`: 0–2 submit a GET or POST; 3 and 8 the peer sends
/// data (through TLS, or raw); 4 closes; 5 resets; 6 advances the clock;
/// 7 cancels; 9–11 canned responses; 12 submits a PUT fed by the script
/// (`Body::stream`, declared length or chunked, maybe `Expect:
/// 100-continue`); 13 feeds it a piece, maybe ending it; 14 pauses,
/// resumes or consumes a streamed response; 15 submits a streamed GET
/// consumed by hand through a tiny receive window, or a PUT of bytes with
/// `Expect: 100-continue`.
///
/// `tls` is the peer's server configuration (used when the script asks for
/// TLS) and `trust` the engine's trust settings for it.
pub fn run_script(data: &[u8], tls: Option<Arc<ServerConfig>>, trust: Trust) -> Report {
    run_script_with(data, tls, trust, &[])
}

/// One new version of a credential file a script may install: a CA file,
/// a CRL file or a client certificate or key of the engine's [`Trust`]
/// (written beside it, then renamed over it).
#[derive(Debug, Clone)]
pub struct CredentialWrite {
    /// The file.
    pub path: std::path::PathBuf,
    /// Its new contents (valid or not: a list that does not parse, half a
    /// renewal).
    pub contents: Vec<u8>,
}

/// [`run_script`], where an op byte of `0xF0` or more installs
/// `writes[op % 16 % writes.len()]` (no op without writes) and moves the
/// clock on by [`Trust::check_interval`], so the engine's credential check
/// sees it: a new root, a removed one, a revocation of the peer's leaf, a
/// list that does not parse, a new client identity, as the caller's writes
/// say. The same invariants hold whatever credentials change under the
/// engine's connections.
pub fn run_script_with(
    data: &[u8],
    tls: Option<Arc<ServerConfig>>,
    trust: Trust,
    writes: &[CredentialWrite],
) -> Report {
    let mut bytes = data.iter().copied();
    let flags = bytes.next().unwrap_or(0);
    let use_tls = flags & 1 != 0 && tls.is_some();
    let net = MemNet::new();
    let check_every = trust.check_interval;
    let mut config = Config {
        network: Some(Arc::new(net.clone())),
        trust,
        ..Config::default()
    };
    config.policy.max_connections = 1 + usize::from(flags >> 1 & 3);
    config.policy.idle_timeout = Some(Duration::from_millis(40));
    config.policy.max_age = (flags & 8 != 0).then_some(Duration::from_millis(30));
    config.policy.drain_grace = (flags & 16 != 0).then_some(Duration::from_millis(10));
    config.policy.max_requests = (flags & 32 != 0).then_some(2);
    config.limits.max_head_bytes = 2048;
    config.limits.max_headers = 16;
    let streaming = flags & 64 != 0;
    let Ok(mut engine) = Engine::new(config) else {
        return Report::default();
    };
    let url = if use_tls {
        "https://localhost:443/"
    } else {
        "http://127.0.0.1:80/"
    };
    let mut peers: Vec<Peer> = Vec::new();
    let mut ids: Vec<RequestId> = Vec::new();
    let mut ended: HashMap<RequestId, usize> = HashMap::new();
    let mut seen: HashMap<RequestId, Seen> = HashMap::new();
    let mut fed_ids: Vec<RequestId> = Vec::new();
    let mut report = Report::default();
    let mut now = Instant::now();
    let step = |engine: &mut Engine, peers: &mut Vec<Peer>, now: Instant| {
        for _ in 0..8 {
            for pipe in net.take_new() {
                let server = if use_tls {
                    tls.clone().and_then(|c| ServerConnection::new(c).ok())
                } else {
                    None
                };
                peers.push(Peer { pipe, tls: server });
            }
            for p in peers.iter_mut() {
                p.service();
            }
            engine.drive_silent(now);
        }
    };
    let mut ops = 0;
    while let Some(op) = bytes.next() {
        ops += 1;
        if ops > 200 {
            break;
        }
        let arg = bytes.next().unwrap_or(0);
        let last = peers
            .len()
            .checked_sub(1 + usize::from(arg >> 6))
            .and_then(|i| peers.get_mut(i));
        if op >= 0xF0 {
            if let Some(w) = writes.get(usize::from(op % 16) % writes.len().max(1)) {
                let tmp = w.path.with_extension("fuzz-new");
                if std::fs::write(&tmp, &w.contents).is_ok() {
                    let _ = std::fs::rename(&tmp, &w.path);
                }
                now += check_every;
                engine.handle_timeouts(now);
            }
            step(&mut engine, &mut peers, now);
            collect(&mut engine, &mut ended, &mut seen, &mut report);
            continue;
        }
        match op % 16 {
            0..=2 => {
                let mut opts = RequestOptions::default()
                    .max_buffered_body(4096)
                    .streaming(streaming);
                if arg & 0x3f != 0 {
                    opts = opts.deadline(Duration::from_millis(u64::from(arg & 0x3f) * 2));
                }
                let req = if op % 12 == 0 {
                    http::Request::get(url).body(Bytes::new())
                } else {
                    opts = opts.retry_safe(op % 12 == 2);
                    http::Request::post(url).body(Bytes::from_static(b"{}"))
                };
                if let Ok(req) = req {
                    ids.push(engine.submit(req, opts));
                    report.submitted += 1;
                }
            }
            3 => {
                let n = usize::from(arg & 0x3f);
                let chunk: Vec<u8> = bytes.by_ref().take(n).collect();
                if let Some(p) = last {
                    p.send(&chunk);
                }
            }
            4 => {
                if let Some(p) = last {
                    p.close();
                }
            }
            5 => {
                if let Some(p) = last {
                    p.pipe.reset();
                }
            }
            6 => {
                now += Duration::from_millis(u64::from(arg));
                engine.handle_timeouts(now);
            }
            7 => {
                if !ids.is_empty() {
                    engine.cancel(ids[usize::from(arg) % ids.len()]);
                }
            }
            8 => {
                let n = usize::from(arg & 0x3f);
                let chunk: Vec<u8> = bytes.by_ref().take(n).collect();
                if let Some(p) = last {
                    p.pipe.push(&chunk);
                }
            }
            9 => {
                if let Some(p) = last {
                    p.send(OK_RESPONSE);
                }
            }
            10 => {
                if let Some(p) = last {
                    p.send(CHUNKED_RESPONSE);
                }
            }
            11 => {
                if let Some(p) = last {
                    p.send(CLOSE_RESPONSE);
                    p.close();
                }
            }
            12 => {
                let declared = (arg & 1 != 0).then_some(u64::from(arg >> 1 & 0x1f));
                let mut opts = RequestOptions::default()
                    .max_buffered_body(4096)
                    .streaming(streaming)
                    .send_window(1 + usize::from(arg >> 6) * 16)
                    .stall_timeouts(
                        Some(Duration::from_millis(20)),
                        Some(Duration::from_millis(20)),
                    )
                    .continue_timeout(Duration::from_millis(15));
                if arg & 0x40 != 0 {
                    opts = opts.deadline(Duration::from_millis(100));
                }
                let mut req = http::Request::put(url);
                if arg & 0x80 != 0 {
                    req = req.header(http::header::EXPECT, "100-continue");
                }
                if let Ok(req) = req.body(Body::stream(declared)) {
                    let id = engine.submit(req, opts);
                    ids.push(id);
                    fed_ids.push(id);
                    report.submitted += 1;
                }
            }
            13 => {
                let n = usize::from(arg & 0x3f);
                let chunk: Vec<u8> = bytes.by_ref().take(n).collect();
                if let Some(&id) = fed_ids.get(usize::from(arg >> 6) % fed_ids.len().max(1)) {
                    let len = chunk.len() as u64;
                    if engine.send_body(id, Bytes::from(chunk)).is_ok() {
                        seen.entry(id).or_default().fed += len;
                    }
                    if n % 3 == 0 {
                        let trailers = (n % 2 == 0).then(|| {
                            let mut t = http::HeaderMap::new();
                            t.insert("x-fuzz", http::HeaderValue::from_static("1"));
                            t
                        });
                        let _ = engine.end_body(id, trailers);
                    }
                }
            }
            14 => {
                if let Some(&id) = ids.get(usize::from(arg & 0x3f) % ids.len().max(1)) {
                    match arg >> 6 {
                        0 => engine.pause(id, true),
                        1 => engine.pause(id, false),
                        _ => engine.consume(id, usize::from(arg) * 8),
                    }
                    if let Some(p) = engine.progress(id) {
                        let s = seen.entry(id).or_default();
                        assert!(
                            p.received >= s.delivered,
                            "{id:?}: {p:?}, delivered {}",
                            s.delivered
                        );
                    }
                }
            }
            _ => {
                let req = if arg & 0x80 == 0 {
                    http::Request::get(url).body(Body::empty())
                } else {
                    http::Request::put(url)
                        .header(http::header::EXPECT, "100-continue")
                        .body(Body::from(&b"expect-continue body"[..]))
                };
                let opts = RequestOptions::default()
                    .max_buffered_body(4096)
                    .streaming(arg & 0x80 == 0 || streaming)
                    .manual_consume(arg & 0x40 != 0)
                    .receive_window(1 + usize::from(arg & 0x3f))
                    .continue_timeout(Duration::from_millis(15))
                    .stall_timeouts(None, Some(Duration::from_millis(30)));
                if let Ok(req) = req {
                    ids.push(engine.submit(req, opts));
                    report.submitted += 1;
                }
            }
        }
        step(&mut engine, &mut peers, now);
        collect(&mut engine, &mut ended, &mut seen, &mut report);
    }
    engine.shutdown();
    collect(&mut engine, &mut ended, &mut seen, &mut report);
    for id in &ids {
        assert_eq!(
            ended.get(id),
            Some(&1),
            "request {id:?} must end exactly once"
        );
    }
    let stats = engine.stats();
    assert!(stats.is_idle(), "engine not idle after shutdown: {stats:?}");
    report
}

fn collect(
    engine: &mut Engine,
    ended: &mut HashMap<RequestId, usize>,
    seen: &mut HashMap<RequestId, Seen>,
    report: &mut Report,
) {
    while let Some(ev) = engine.next_event() {
        log::trace!("fuzz event: {ev:?}");
        if matches!(ev, Event::CredentialsInvalid { .. }) {
            report.invalidated += 1;
        }
        let Some(id) = ev.request_id() else { continue };
        assert!(
            !ended.contains_key(&id),
            "event after the end of {id:?}: {ev:?}"
        );
        let s = seen.entry(id).or_default();
        match &ev {
            Event::Body { data, .. } => s.delivered += data.len() as u64,
            Event::BodyWanted { room, .. } => assert!(*room > 0, "{id:?} asked for nothing"),
            _ => {}
        }
        if ev.is_terminal() {
            ended.insert(id, 1);
            match ev {
                Event::Failed {
                    error, progress, ..
                } => {
                    log::debug!("fuzz request {id:?} failed: {error}");
                    // A streamed response is never retried once a byte of
                    // it arrived, so what the failure reports is exactly
                    // what was delivered (nothing, when not streaming).
                    if s.delivered > 0 {
                        assert_eq!(progress.received, s.delivered, "{id:?}: {error}");
                    }
                    assert!(
                        s.fed == 0 || progress.sent <= s.fed,
                        "{id:?} sent {} of {} fed bytes: {error}",
                        progress.sent,
                        s.fed
                    );
                    report.failed += 1
                }
                _ => report.ok += 1,
            }
        }
    }
}

/// The engine's connection-lifetime decisions as pure functions of a
/// [`Policy`](crate::Policy), a time and a random draw: the same code the
/// engine's timers run, for simulations in virtual time (the fleet
/// simulation in `benches/`). Not part of the stable API.
#[doc(hidden)]
pub mod lifetime {
    use std::time::Instant;

    use crate::Policy;

    /// When a connection made at `connected_at` expires for age, given a
    /// random `draw` in `[0, 1)`: `max_age` shortened by `draw × jitter`
    /// ([`Policy::effective_jitter`]). `None` without a `max_age`.
    pub fn expiry_deadline(connected_at: Instant, policy: &Policy, draw: f64) -> Option<Instant> {
        crate::engine::expiry_deadline(connected_at, policy, draw)
    }

    /// When the engine's prewarm timer fires for a connection made at `now`
    /// that expires at `expires_at`; `None` when the policy does not prewarm
    /// or the lead is already past.
    pub fn prewarm_deadline(now: Instant, expires_at: Instant, policy: &Policy) -> Option<Instant> {
        crate::engine::prewarm_deadline(now, expires_at, policy)
    }

    /// Whether that timer, firing at `now`, opens a replacement for an
    /// origin last used at `last_used` with `open` connections (the engine
    /// also needs a free connection token, which this does not model).
    pub fn prewarm_wanted(
        policy: &Policy,
        now: Instant,
        last_used: Option<Instant>,
        open: usize,
    ) -> bool {
        crate::engine::prewarm_wanted(policy, now, last_used, open)
    }

    /// When the origin's next chain probe fires, armed at `now` with a
    /// random `draw` in `[0, 1)`: `first` when a connection is ready and no
    /// probe is armed (drawn over the whole interval), not `first` as each
    /// probe starts and re-arms it (shortened by `draw ×`
    /// [`Policy::effective_probe_jitter`]). `None` without a
    /// `chain_probe_interval`.
    pub fn probe_deadline(
        now: Instant,
        policy: &Policy,
        draw: f64,
        first: bool,
    ) -> Option<Instant> {
        crate::engine::probe_deadline(now, policy, draw, first)
    }
}
