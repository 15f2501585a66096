//! A blocking, thread-per-connection HTTP/1.1 test server, plain or over rustls,
//! whose every reply is scripted by the test: status, headers, body, framing,
//! delays, closes, resets, stalls and garbage. It counts connections, handshakes
//! and requests, records every request, and can rotate its certificate for new
//! handshakes while sessions made under the old one still resume.
//!
//! Independent of the engine's and of rotary-proto's code on purpose.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::lock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ProtocolVersion, SupportedProtocolVersion};

use super::certs::Issued;

/// Largest request head the server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long a graceful close waits for the client's EOF before dropping.
const LINGER: Duration = Duration::from_secs(1);
/// How long `Drop` waits for the server's threads.
const JOIN_BOUND: Duration = Duration::from_secs(5);
/// Stack of the per-connection threads (hundreds may run at once).
const CONN_STACK: usize = 256 * 1024;

/// The handler deciding each reply.
pub type Handler = Arc<dyn Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync>;
/// The hook deciding what happens to each accepted TCP connection.
pub type AcceptHook = Arc<dyn Fn(&ConnInfo) -> Accept + Send + Sync>;

// ---------------------------------------------------------------------------
// Public data types
// ---------------------------------------------------------------------------

/// One request as the server parsed it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Connection id (1, 2, … in accept order).
    pub conn_id: u64,
    /// Index of this request on its connection (0 for the first).
    pub index_on_conn: usize,
    /// Index of this request on the server (0 for the first).
    pub seq: u64,
    /// Request method, as sent.
    pub method: String,
    /// Request target, as sent (path and query).
    pub target: String,
    /// Minor HTTP version (1 for HTTP/1.1, 0 for HTTP/1.0).
    pub minor_version: u8,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// When the head was complete.
    pub received_at: Instant,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether header `name` has the comma-separated token `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// What the server knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Connection id (1, 2, … in accept order).
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// TLS facts, once the handshake is done (`None` for plain HTTP or before).
    pub tls: Option<TlsInfo>,
    /// When the server accepted the TCP connection.
    pub accepted_at: Instant,
    /// When the connection was ready for HTTP (after the TLS handshake if any).
    pub ready_at: Option<Instant>,
}

/// TLS facts of one server-side connection.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// Full or resumed.
    pub handshake_kind: Option<HandshakeKind>,
    /// Negotiated protocol version.
    pub version: Option<ProtocolVersion>,
    /// Server name the client indicated.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// Certificate generation presented (1 = initial, +1 per rotation); `None` when
    /// resumed (no certificate was sent).
    pub cert_generation: Option<u64>,
    /// The client's certificate chain (mTLS).
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
}

/// What to do with a freshly accepted TCP connection, before TLS or HTTP.
#[derive(Clone, Debug, Default)]
pub enum Accept {
    /// Serve it normally.
    #[default]
    Serve,
    /// Wait, then serve it normally (slow TLS handshake / slow server).
    DelayThenServe(Duration),
    /// Close it at once (FIN).
    Close,
    /// Reset it at once (RST, where supported).
    Reset,
    /// Hold it open without reading or writing until shutdown.
    Stall,
    /// Write these bytes raw on TCP (no TLS), then close.
    SendRawThenClose(Vec<u8>),
}

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: <body length>` is added.
    ContentLength,
    /// `Transfer-Encoding: chunked` is added; each part is one chunk.
    Chunked,
    /// No length header; the body ends when the server closes.
    CloseDelimited,
    /// Nothing added: the headers are the test's business (HEAD, 204, 304, lies).
    Verbatim,
}

/// How a cut at a byte offset ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// FIN, without TLS close_notify.
    Close,
    /// RST (SO_LINGER 0), where supported; otherwise like `Close`.
    Reset,
    /// Keep the connection open and silent until shutdown.
    Stall,
}

#[derive(Clone, Debug)]
enum ReplyKind {
    Respond,
    Raw(Vec<u8>),
    Close,
    Reset,
    Stall,
}

/// One scripted reply. Build it with a constructor and chained modifiers:
/// `Reply::text(200, "hi").header("x", "y").chunked().parts(&[1, 1])`.
#[derive(Clone, Debug)]
pub struct Reply {
    kind: ReplyKind,
    status: u16,
    reason: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
    parts: Vec<usize>,
    trailers: Vec<(String, String)>,
    interim: Vec<u16>,
    head_delay: Duration,
    part_delay: Duration,
    cut: Option<(usize, Cut)>,
    close_after: Option<bool>,
    extra: Vec<(Duration, Vec<u8>)>,
}

impl Reply {
    fn with_kind(kind: ReplyKind) -> Reply {
        Reply {
            kind,
            status: 200,
            reason: None,
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::ContentLength,
            parts: Vec::new(),
            trailers: Vec::new(),
            interim: Vec::new(),
            head_delay: Duration::ZERO,
            part_delay: Duration::ZERO,
            cut: None,
            close_after: None,
            extra: Vec::new(),
        }
    }

    /// A response with `status` and an empty body (`Content-Length: 0`).
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::with_kind(ReplyKind::Respond)
        }
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200).body(body)
    }

    /// `status` with `body`.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(status).body(body)
    }

    /// Writes `bytes` verbatim (inside TLS when TLS), then keeps serving unless
    /// `.close_after()`.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::with_kind(ReplyKind::Raw(bytes.into()))
    }

    /// Bytes that are not HTTP, then close.
    pub fn garbage() -> Reply {
        Reply::raw(
            b"\x00\xff\xfe SSH-2.0 this is not HTTP \x1b[31m\r\n\x7f\x80\x81\r\n\r\n".to_vec(),
        )
        .close_after()
    }

    /// Close without answering (graceful: TLS close_notify, then FIN).
    pub fn close() -> Reply {
        Reply::with_kind(ReplyKind::Close)
    }

    /// Reset without answering (RST where supported, see [`reset_supported`]).
    pub fn reset() -> Reply {
        Reply::with_kind(ReplyKind::Reset)
    }

    /// Never answer; the connection stays open and silent until server shutdown.
    pub fn stall() -> Reply {
        Reply::with_kind(ReplyKind::Stall)
    }

    /// Sets the status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Sets the reason phrase (default: a standard one or "Status").
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }

    /// Adds a header field (sent as given, in order). A `Connection: close`
    /// header also closes the connection after the response unless `.keep_open()`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Frames the body chunked (`Transfer-Encoding: chunked` added).
    pub fn chunked(mut self) -> Self {
        self.framing = Framing::Chunked;
        self
    }

    /// Splits the body into writes of these sizes (chunks when chunked); the
    /// remainder, if any, is one more part. The part delay applies before each.
    pub fn parts(mut self, sizes: &[usize]) -> Self {
        self.parts = sizes.to_vec();
        self
    }

    /// Adds a trailer field to a chunked body.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// No length header; the body ends with the close that follows.
    pub fn close_delimited(mut self) -> Self {
        self.framing = Framing::CloseDelimited;
        self
    }

    /// Adds no framing header at all (for HEAD, 204, 304, or a lying header).
    pub fn verbatim_framing(mut self) -> Self {
        self.framing = Framing::Verbatim;
        self
    }

    /// Sends an interim (1xx) response before the final one.
    pub fn interim(mut self, status: u16) -> Self {
        self.interim.push(status);
        self
    }

    /// Waits this long before writing anything (a long poll).
    pub fn delay(mut self, d: Duration) -> Self {
        self.head_delay = d;
        self
    }

    /// Waits this long before each body part (including the first).
    pub fn part_delay(mut self, d: Duration) -> Self {
        self.part_delay = d;
        self
    }

    /// After the response, waits `delay` and writes `bytes` unasked (an idle
    /// connection that turns readable; a server that sends more than it framed).
    pub fn then_send(mut self, delay: Duration, bytes: impl Into<Vec<u8>>) -> Self {
        self.extra.push((delay, bytes.into()));
        self
    }

    /// Closes the connection after the response.
    pub fn close_after(mut self) -> Self {
        self.close_after = Some(true);
        self
    }

    /// Keeps the connection open after the response, even with a
    /// `Connection: close` header (a misbehaving server).
    pub fn keep_open(mut self) -> Self {
        self.close_after = Some(false);
        self
    }

    /// Closes (FIN, no close_notify) once `offset` bytes of the serialized reply
    /// have been written.
    pub fn cut_at(mut self, offset: usize) -> Self {
        self.cut = Some((offset, Cut::Close));
        self
    }

    /// Resets once `offset` bytes of the serialized reply have been written.
    pub fn reset_at(mut self, offset: usize) -> Self {
        self.cut = Some((offset, Cut::Reset));
        self
    }

    /// Stalls forever once `offset` bytes of the serialized reply have been written.
    pub fn stall_at(mut self, offset: usize) -> Self {
        self.cut = Some((offset, Cut::Stall));
        self
    }

    /// The serialized reply as (delay before, bytes) segments. A response to
    /// HEAD keeps its framing header but has no body; a 1xx, 204 or 304 with an
    /// empty body gets no `Content-Length` (RFC 9110 §8.6).
    fn segments(&self, head_request: bool) -> Vec<(Duration, Vec<u8>)> {
        let mut out = Vec::new();
        match &self.kind {
            ReplyKind::Raw(bytes) => {
                out.push((self.head_delay, bytes.clone()));
                return out;
            }
            ReplyKind::Respond => {}
            _ => return out,
        }
        let mut head = Vec::new();
        for code in &self.interim {
            head.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n\r\n", reason(*code)).as_bytes());
        }
        let phrase = self
            .reason
            .clone()
            .unwrap_or_else(|| reason(self.status).to_owned());
        head.extend_from_slice(format!("HTTP/1.1 {} {phrase}\r\n", self.status).as_bytes());
        for (n, v) in &self.headers {
            head.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        let bodiless_status =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        match self.framing {
            Framing::ContentLength if bodiless_status && self.body.is_empty() => {}
            Framing::ContentLength => head
                .extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes()),
            Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::CloseDelimited | Framing::Verbatim => {}
        }
        head.extend_from_slice(b"\r\n");
        out.push((self.head_delay, head));
        if head_request {
            out.extend(self.extra.iter().cloned());
            return out;
        }

        let mut parts = Vec::new();
        let mut rest = &self.body[..];
        for &size in &self.parts {
            let n = size.min(rest.len());
            parts.push(&rest[..n]);
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            parts.push(rest);
        }
        for part in parts {
            let bytes = if self.framing == Framing::Chunked {
                if part.is_empty() {
                    continue; // an empty chunk would end the body
                }
                let mut c = format!("{:x}\r\n", part.len()).into_bytes();
                c.extend_from_slice(part);
                c.extend_from_slice(b"\r\n");
                c
            } else {
                part.to_vec()
            };
            out.push((self.part_delay, bytes));
        }
        if self.framing == Framing::Chunked {
            let mut end = b"0\r\n".to_vec();
            for (n, v) in &self.trailers {
                end.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            end.extend_from_slice(b"\r\n");
            out.push((Duration::ZERO, end));
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    fn wants_close(&self, req: &RecordedRequest) -> bool {
        if self.framing == Framing::CloseDelimited && matches!(self.kind, ReplyKind::Respond) {
            return true;
        }
        let client_close = req.has_token("connection", "close")
            || (req.minor_version == 0 && !req.has_token("connection", "keep-alive"));
        if client_close {
            return true;
        }
        match self.close_after {
            Some(c) => c,
            None => self.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection")
                    && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
            }),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Counters of one server, a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Connections whose thread is still running.
    pub connections_open: u64,
    /// Completed full TLS handshakes (including HelloRetryRequest ones).
    pub handshakes_full: u64,
    /// Completed resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// TLS handshakes that failed (see [`TestServer::tls_errors`]).
    pub handshakes_failed: u64,
    /// Requests parsed completely (head and body).
    pub requests: u64,
    /// Replies written to the end (not cut, not stalled).
    pub replies_completed: u64,
    /// Connections the server closed for idleness.
    pub idle_closed: u64,
    /// Requests rejected as malformed (answered 400, then closed).
    pub bad_requests: u64,
}

impl ServerStats {
    /// Full plus resumed handshakes.
    pub fn handshakes(&self) -> u64 {
        self.handshakes_full + self.handshakes_resumed
    }
}

/// Whether `Cut::Reset` / `Reply::reset()` really send an RST on this platform.
pub fn reset_supported() -> bool {
    cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "x86",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "riscv64"
    )
))]
pub(super) fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open fd, a pointer to a live `struct linger` and its size.
    unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &linger,
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
pub(super) fn set_linger_zero(_s: &TcpStream) {}

/// Raises the listen backlog from std's 128 (tests open hundreds of connections
/// at once; an overflowing backlog drops SYNs and costs a 1 s retransmit).
#[cfg(unix)]
pub(super) fn raise_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn listen(fd: i32, backlog: i32) -> i32;
    }
    // SAFETY: a valid listening fd; listen() again only updates the backlog.
    unsafe {
        listen(listener.as_raw_fd(), 4096);
    }
}

#[cfg(not(unix))]
pub(super) fn raise_backlog(_listener: &TcpListener) {}

// ---------------------------------------------------------------------------
// Certificate rotation
// ---------------------------------------------------------------------------

thread_local! {
    /// Generation the resolver last handed out on this (connection) thread.
    static RESOLVED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Serves the current certificate to every full handshake; swapped by `rotate`.
/// Sessions (tickets and cache) live in the one `ServerConfig`, so they outlive it.
#[derive(Debug)]
struct RotatingResolver {
    current: RwLock<(u64, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for RotatingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (generation, key) = match self.current.read() {
            Ok(g) => (g.0, g.1.clone()),
            Err(poisoned) => (poisoned.get_ref().0, poisoned.get_ref().1.clone()),
        };
        RESOLVED.with(|c| c.set(Some(generation)));
        Some(key)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<CertifiedKey> {
    Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).expect("certificate chain and key match"),
    )
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// How the TLS server lets clients resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    /// Stateless tickets under one ticket key for the server's life (a CDN edge).
    Tickets,
    /// Stateful: session ids / TLS 1.3 tickets pointing into a server-side cache.
    SessionCache,
    /// No resumption at all.
    Off,
}

/// Options for a [`TestServer`].
pub struct ServerBuilder {
    tls: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    handler: Handler,
    accept: Option<AcceptHook>,
    idle_timeout: Option<Duration>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    resumption: Resumption,
    client_ca: Option<CertificateDer<'static>>,
    tls13_tickets: usize,
    keepalive_requests: Option<u64>,
}

impl ServerBuilder {
    /// Serves TLS with this leaf (and its key).
    pub fn tls(self, leaf: &Issued) -> Self {
        self.tls_chain(leaf.chain_der(), leaf.key_der())
    }

    /// Serves TLS with this chain and key.
    pub fn tls_chain(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.tls = Some((chain, key));
        self
    }

    /// The reply handler (default: `200 ok`).
    pub fn handler(
        mut self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.handler = Arc::new(f);
        self
    }

    /// A hook run on each accepted TCP connection, before TLS.
    pub fn on_accept(mut self, f: impl Fn(&ConnInfo) -> Accept + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// Closes server-side connections idle (between requests) for this long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Serves at most `n` requests per connection; the n-th reply carries
    /// `Connection: close` and the server closes (nginx's `keepalive_requests`).
    pub fn keepalive_requests(mut self, n: u64) -> Self {
        self.keepalive_requests = Some(n.max(1));
        self
    }

    /// Only TLS 1.2.
    pub fn tls12_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Only TLS 1.3.
    pub fn tls13_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }

    /// ALPN protocols offered (default none).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Resumption mode (default [`Resumption::Tickets`]).
    pub fn resumption(mut self, r: Resumption) -> Self {
        self.resumption = r;
        self
    }

    /// TLS 1.3 tickets sent per full handshake (default 2, rustls's default).
    pub fn tls13_tickets(mut self, n: usize) -> Self {
        self.tls13_tickets = n;
        self
    }

    /// Requires a client certificate issued by this CA (mTLS).
    pub fn require_client_cert(mut self, ca: CertificateDer<'static>) -> Self {
        self.client_ca = Some(ca);
        self
    }

    /// Binds 127.0.0.1:0 and starts the accept thread.
    pub fn start(self) -> TestServer {
        let (tls, resolver) = match self.tls {
            None => (None, None),
            Some((chain, key)) => {
                let resolver = Arc::new(RotatingResolver {
                    current: RwLock::new((1, certified_key(chain, key))),
                });
                let builder = ServerConfig::builder_with_provider(provider());
                let builder = if self.versions.is_empty() {
                    builder.with_safe_default_protocol_versions()
                } else {
                    builder.with_protocol_versions(&self.versions)
                }
                .expect("ring supports the chosen versions");
                let builder = match self.client_ca {
                    None => builder.with_no_client_auth(),
                    Some(ca) => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add(ca).expect("client CA parses");
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider(),
                        )
                        .build()
                        .expect("client verifier builds");
                        builder.with_client_cert_verifier(verifier)
                    }
                };
                let mut config = builder.with_cert_resolver(resolver.clone());
                config.alpn_protocols = self.alpn;
                config.send_tls13_tickets = self.tls13_tickets;
                match self.resumption {
                    Resumption::Tickets => {
                        config.ticketer =
                            rustls::crypto::ring::Ticketer::new().expect("ring ticketer");
                    }
                    Resumption::SessionCache => {
                        config.session_storage =
                            rustls::server::ServerSessionMemoryCache::new(1024);
                    }
                    Resumption::Off => {
                        config.session_storage =
                            Arc::new(rustls::server::NoServerSessionStorage {});
                        config.send_tls13_tickets = 0;
                    }
                }
                (Some(Arc::new(config)), Some(resolver))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        raise_backlog(&listener);
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            addr,
            tls,
            resolver,
            handler: RwLock::new(self.handler),
            accept: RwLock::new(self.accept),
            idle_ms: AtomicU64::new(self.idle_timeout.map_or(0, |d| d.as_millis().max(1) as u64)),
            keepalive_requests: AtomicU64::new(self.keepalive_requests.unwrap_or(0)),
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop_lock: Mutex::new(()),
            stop_cv: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
        });
        let s = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("test-server-accept-{}", addr.port()))
            .spawn(move || accept_loop(s, listener))
            .expect("spawn accept thread");
        TestServer {
            shared,
            accept_thread: Some(accept_thread),
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

#[derive(Default)]
struct State {
    stats: ServerStats,
    requests: Vec<RecordedRequest>,
    tls_errors: Vec<String>,
    conn_infos: Vec<ConnInfo>,
}

struct Shared {
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    resolver: Option<Arc<RotatingResolver>>,
    handler: RwLock<Handler>,
    accept: RwLock<Option<AcceptHook>>,
    idle_ms: AtomicU64,
    keepalive_requests: AtomicU64,
    stopping: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    stop_lock: Mutex<()>,
    stop_cv: Condvar,
    /// Clones of live connections' sockets, to shut them down on drop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`; false if the server is shutting down.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.stop_lock);
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            g = match self.stop_cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn stall(&self) {
        while self.sleep(Duration::from_secs(3600)) {}
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn untrack(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }
}

/// A running test server; dropping it stops every thread and closes every connection.
pub struct TestServer {
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.shared.addr)
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

impl TestServer {
    /// A builder for a plain-HTTP server answering `200 ok` (add `.tls(..)` for TLS).
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            tls: None,
            handler: Arc::new(|_, _| Reply::ok("ok")),
            accept: None,
            idle_timeout: None,
            versions: Vec::new(),
            alpn: Vec::new(),
            resumption: Resumption::Tickets,
            client_ca: None,
            tls13_tickets: 2,
            keepalive_requests: None,
        }
    }

    /// A plain-HTTP server with this handler.
    pub fn plain(
        handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::builder().handler(handler).start()
    }

    /// A TLS server presenting `leaf`, with this handler.
    pub fn tls(
        leaf: &Issued,
        handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::builder().tls(leaf).handler(handler).start()
    }

    /// The listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// `http(s)://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.port())
    }

    /// `http(s)://127.0.0.1:<port><path>` (certificates from `issue` cover the IP too).
    pub fn url_ip(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port())
    }

    /// Replaces the handler for requests parsed from now on.
    pub fn set_handler(
        &self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) {
        *self
            .shared
            .handler
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(f);
    }

    /// Replaces the accept hook for connections accepted from now on.
    pub fn set_on_accept(&self, f: impl Fn(&ConnInfo) -> Accept + Send + Sync + 'static) {
        *self
            .shared
            .accept
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Sets (or clears) the idle timeout for waits that start from now on.
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        let ms = d.map_or(0, |d| d.as_millis().max(1) as u64);
        self.shared.idle_ms.store(ms, Ordering::SeqCst);
    }

    /// Rotates the certificate: new full handshakes present `chain`; live
    /// connections go on, and sessions issued before still resume (and so still
    /// report the old chain to the client). Returns the new generation (2, 3, …).
    pub fn rotate(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> u64 {
        let resolver = self
            .shared
            .resolver
            .as_ref()
            .expect("rotate needs a TLS server");
        let key = certified_key(chain, key);
        let mut current = resolver.current.write().unwrap_or_else(|p| p.into_inner());
        current.0 += 1;
        current.1 = key;
        current.0
    }

    /// [`TestServer::rotate`] to an issued leaf.
    pub fn rotate_to(&self, leaf: &Issued) -> u64 {
        self.rotate(leaf.chain_der(), leaf.key_der())
    }

    /// The chain new full handshakes present, and its generation.
    pub fn current_chain(&self) -> (u64, Vec<CertificateDer<'static>>) {
        let resolver = self
            .shared
            .resolver
            .as_ref()
            .expect("current_chain needs a TLS server");
        let current = resolver.current.read().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.cert.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        lock(&self.shared.state).stats.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.state).requests.clone()
    }

    /// Connection facts of every connection that finished its (TLS) setup, in order.
    pub fn connections(&self) -> Vec<ConnInfo> {
        lock(&self.shared.state).conn_infos.clone()
    }

    /// The facts of connection `id`, once it finished its (TLS) setup.
    pub fn connection(&self, id: u64) -> Option<ConnInfo> {
        lock(&self.shared.state)
            .conn_infos
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// The requests received on connection `id`, in order.
    pub fn requests_on(&self, id: u64) -> Vec<RecordedRequest> {
        lock(&self.shared.state)
            .requests
            .iter()
            .filter(|r| r.conn_id == id)
            .cloned()
            .collect()
    }

    /// Why TLS handshakes failed, as rustls said it.
    pub fn tls_errors(&self) -> Vec<String> {
        lock(&self.shared.state).tls_errors.clone()
    }

    /// Waits until `pred` holds on the counters; false on timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&ServerStats) -> bool) -> bool {
        super::wait_on(&self.shared.state, &self.shared.changed, timeout, |s| {
            pred(&s.stats)
        })
    }

    /// Waits until `pred` holds, panicking with `what` and the counters on timeout.
    pub fn expect_until(&self, timeout: Duration, what: &str, pred: impl Fn(&ServerStats) -> bool) {
        if !self.wait_until(timeout, pred) {
            panic!(
                "test server: timed out after {timeout:?} waiting for {what}; stats: {:?}",
                self.stats()
            );
        }
    }

    /// Waits for at least `n` requests and returns all of them; panics on timeout.
    pub fn wait_for_requests(&self, n: u64, timeout: Duration) -> Vec<RecordedRequest> {
        self.expect_until(timeout, &format!("{n} requests"), |s| s.requests >= n);
        self.requests()
    }

    /// Waits until no connection thread is running (all closed); false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.connections_open == 0)
    }

    /// Sets (or clears) the per-connection request limit, see
    /// [`ServerBuilder::keepalive_requests`].
    pub fn set_keepalive_requests(&self, n: Option<u64>) {
        let n = n.map_or(0, |n| n.max(1));
        self.shared.keepalive_requests.store(n, Ordering::SeqCst);
    }

    /// Closes every connection that is waiting for a request the way a server
    /// does at its idle timeout: TLS close_notify, then FIN. (Connections in the
    /// middle of reading a request see an abrupt close.)
    pub fn close_idle_gracefully(&self) {
        // A blocked read returns EOF after SHUT_RD; the connection thread then
        // closes gracefully, since its write side is still open.
        for s in lock(&self.shared.conns).values() {
            let _ = s.shutdown(Shutdown::Read);
        }
    }

    /// Shuts down every live connection (FIN both ways, no close_notify),
    /// keeping the listener.
    pub fn close_all_connections(&self) {
        for s in lock(&self.shared.conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Stops the server (same as dropping it).
    pub fn shutdown(self) {}
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let _g = lock(&shared.stop_lock);
            shared.stopping.store(true, Ordering::SeqCst);
            shared.stop_cv.notify_all();
        }
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&shared.addr, Duration::from_secs(1));
        for s in lock(&shared.conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + JOIN_BOUND;
        let mut handles: Vec<JoinHandle<()>> = self.accept_thread.take().into_iter().collect();
        // The accept thread pushes no handles once it has stopped.
        while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        handles.extend(lock(&shared.threads).drain(..));
        loop {
            // Connections accepted during shutdown may still be registering.
            for s in lock(&shared.conns).values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            if handles.iter().all(|h| h.is_finished()) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = 0;
        for h in handles {
            if h.is_finished() {
                let _ = h.join();
            } else {
                stuck += 1;
            }
        }
        if stuck > 0 {
            eprintln!(
                "test server {}: {stuck} thread(s) still running after {JOIN_BOUND:?}; detached",
                shared.addr
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(_) if shared.stopping() => return,
            Err(_) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if !shared.sleep(Duration::from_millis(10)) {
                    return;
                }
                continue;
            }
        };
        let accepted_at = Instant::now();
        if shared.stopping() {
            return;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        {
            let mut conns = lock(&shared.conns);
            if shared.stopping() {
                return;
            }
            conns.insert(id, clone);
        }
        let _ = stream.set_nodelay(true);
        shared.update(|st| {
            st.stats.connections_accepted += 1;
            st.stats.connections_open += 1;
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("test-server-conn-{id}"))
            .stack_size(CONN_STACK)
            .spawn(move || {
                let guard = ConnGuard {
                    shared: s.clone(),
                    id,
                    closed: AtomicBool::new(false),
                };
                serve_conn(&s, stream, &guard, peer, accepted_at);
            });
        match spawned {
            Ok(h) => {
                let mut threads = lock(&shared.threads);
                threads.retain(|h| !h.is_finished());
                threads.push(h);
            }
            Err(_) => {
                shared.untrack(id);
                shared.update(|st| st.stats.connections_open -= 1);
            }
        }
    }
}

/// Untracks the connection and updates the gauge when the server has closed it
/// (before any lingering drain) or its thread ends, even by panic.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    closed: AtomicBool,
}

impl ConnGuard {
    /// Counts the connection as closed (once).
    fn closed(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.shared.update(|st| st.stats.connections_open -= 1);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.untrack(self.id);
        self.closed();
    }
}

/// The connection's byte stream: plain TCP or rustls over TCP.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(t) => &t.sock,
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(t) => {
                t.flush()?;
                while t.conn.wants_write() {
                    t.conn.write_tls(&mut t.sock)?;
                }
                Ok(())
            }
        }
    }
}

/// Ends the connection: untrack first so that our close is the last reference.
fn finish(shared: &Shared, guard: &ConnGuard, mut io: Io, how: End) {
    let id = guard.id;
    match how {
        End::Graceful => {
            if let Io::Tls(t) = &mut io {
                t.conn.send_close_notify();
            }
            let _ = io.flush();
            let tcp = io.tcp();
            let _ = tcp.shutdown(Shutdown::Write);
            guard.closed();
            // Drain until the client's EOF so that unread bytes do not turn our
            // close into an RST that could destroy the response in flight.
            let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
            let deadline = Instant::now() + LINGER;
            let mut buf = [0u8; 4096];
            let mut raw = tcp;
            while Instant::now() < deadline && !shared.stopping() {
                match raw.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            shared.untrack(id);
        }
        End::Abort(Cut::Close) => {
            let _ = io.tcp().shutdown(Shutdown::Both);
            shared.untrack(id);
        }
        End::Abort(Cut::Reset) => {
            set_linger_zero(io.tcp());
            shared.untrack(id);
        }
        End::Abort(Cut::Stall) => {
            shared.stall();
            let _ = io.tcp().shutdown(Shutdown::Both);
            shared.untrack(id);
        }
    }
    drop(io);
}

enum End {
    Graceful,
    Abort(Cut),
}

fn serve_conn(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    guard: &ConnGuard,
    peer: SocketAddr,
    accepted_at: Instant,
) {
    let id = guard.id;
    let mut info = ConnInfo {
        id,
        peer,
        tls: None,
        accepted_at,
        ready_at: None,
    };
    let hook = shared
        .accept
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let action = hook.map_or(Accept::Serve, |h| h(&info));
    match action {
        Accept::Serve => {}
        Accept::DelayThenServe(d) => {
            if !shared.sleep(d) {
                return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Close));
            }
        }
        Accept::Close => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Close)),
        Accept::Reset => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Reset)),
        Accept::Stall => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Stall)),
        Accept::SendRawThenClose(bytes) => {
            let mut tcp = tcp;
            let _ = tcp.write_all(&bytes);
            return finish(shared, guard, Io::Plain(tcp), End::Graceful);
        }
    }

    let mut io = match &shared.tls {
        None => Io::Plain(tcp),
        Some(config) => match handshake(shared, config, tcp) {
            Ok((io, tls)) => {
                info.tls = Some(tls);
                io
            }
            Err(()) => {
                shared.untrack(id);
                return;
            }
        },
    };
    info.ready_at = Some(Instant::now());
    shared.update(|st| st.conn_infos.push(info.clone()));

    let mut reader = RequestReader::default();
    let mut index_on_conn = 0;
    loop {
        let _ = io.tcp().set_read_timeout(shared.idle_timeout());
        let parsed = reader.read_request(&mut io);
        let _ = io.tcp().set_read_timeout(None);
        let mut req = match parsed {
            Ok(Some(req)) => req,
            Ok(None) => return finish(shared, guard, io, End::Graceful),
            Err(ReadError::Idle) => {
                shared.update(|st| st.stats.idle_closed += 1);
                return finish(shared, guard, io, End::Graceful);
            }
            Err(ReadError::Bad(why)) => {
                shared.update(|st| st.stats.bad_requests += 1);
                let body = format!("bad request: {why}\n");
                let reply = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = io.write_all(reply.as_bytes());
                return finish(shared, guard, io, End::Graceful);
            }
            Err(ReadError::Io) => return finish(shared, guard, io, End::Abort(Cut::Close)),
        };
        req.conn_id = id;
        req.index_on_conn = index_on_conn;
        index_on_conn += 1;
        shared.update(|st| {
            req.seq = st.stats.requests;
            st.stats.requests += 1;
            st.requests.push(req.clone());
        });

        let handler = shared
            .handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut reply = handler(&req, &info);
        let limit = shared.keepalive_requests.load(Ordering::SeqCst);
        if limit != 0 && index_on_conn as u64 >= limit && matches!(reply.kind, ReplyKind::Respond) {
            // Like nginx's keepalive_requests: the last exchange says so and closes.
            reply = reply.header("Connection", "close").close_after();
        }
        match write_reply(
            shared,
            &mut io,
            &reply,
            req.method.eq_ignore_ascii_case("HEAD"),
        ) {
            Written::Complete => {
                shared.update(|st| st.stats.replies_completed += 1);
                if reply.wants_close(&req) {
                    return finish(shared, guard, io, End::Graceful);
                }
            }
            Written::End(end) => return finish(shared, guard, io, end),
        }
    }
}

fn handshake(
    shared: &Shared,
    config: &Arc<ServerConfig>,
    mut tcp: TcpStream,
) -> Result<(Io, TlsInfo), ()> {
    let mut conn = match ServerConnection::new(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            shared.update(|st| {
                st.stats.handshakes_failed += 1;
                st.tls_errors.push(e.to_string());
            });
            return Err(());
        }
    };
    RESOLVED.with(|c| c.set(None));
    let _ = tcp.set_read_timeout(shared.idle_timeout());
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                // EOF before the handshake finished.
                shared.update(|st| {
                    st.stats.handshakes_failed += 1;
                    st.tls_errors
                        .push("peer closed during the handshake".to_owned());
                });
                return Err(());
            }
            Ok(_) => {}
            Err(e) => {
                // Best effort: tell the client why (rustls queued an alert).
                while conn.wants_write() {
                    if conn.write_tls(&mut tcp).is_err() {
                        break;
                    }
                }
                shared.update(|st| {
                    st.stats.handshakes_failed += 1;
                    st.tls_errors.push(e.to_string());
                });
                let _ = tcp.shutdown(Shutdown::Both);
                return Err(());
            }
        }
    }
    let _ = tcp.set_read_timeout(None);
    while conn.wants_write() {
        if conn.write_tls(&mut tcp).is_err() {
            break;
        }
    }
    let kind = conn.handshake_kind();
    let resumed = kind == Some(HandshakeKind::Resumed);
    let tls = TlsInfo {
        handshake_kind: kind,
        version: conn.protocol_version(),
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        cert_generation: if resumed {
            None
        } else {
            RESOLVED.with(|c| c.get())
        },
        client_chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect()),
    };
    shared.update(|st| {
        if resumed {
            st.stats.handshakes_resumed += 1;
        } else {
            st.stats.handshakes_full += 1;
        }
    });
    Ok((Io::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))), tls))
}

enum Written {
    Complete,
    End(End),
}

fn write_reply(shared: &Shared, io: &mut Io, reply: &Reply, head_request: bool) -> Written {
    match reply.kind {
        ReplyKind::Close => return Written::End(End::Graceful),
        ReplyKind::Reset => return Written::End(End::Abort(Cut::Reset)),
        ReplyKind::Stall => return Written::End(End::Abort(Cut::Stall)),
        ReplyKind::Respond | ReplyKind::Raw(_) => {}
    }
    let mut written = 0usize;
    for (delay, bytes) in reply.segments(head_request) {
        if !delay.is_zero() && !shared.sleep(delay) {
            return Written::End(End::Abort(Cut::Close));
        }
        if let Some((at, cut)) = reply.cut {
            if at <= written + bytes.len() {
                let n = at.saturating_sub(written);
                if io.write_all(&bytes[..n]).and_then(|_| io.flush()).is_err() {
                    return Written::End(End::Abort(Cut::Close));
                }
                return Written::End(End::Abort(cut));
            }
        }
        if io.write_all(&bytes).and_then(|_| io.flush()).is_err() {
            return Written::End(End::Abort(Cut::Close));
        }
        written += bytes.len();
    }
    if let Some((_, cut)) = reply.cut {
        // The offset lies beyond the reply: cut right after it.
        return Written::End(End::Abort(cut));
    }
    Written::Complete
}

// ---------------------------------------------------------------------------
// Request parsing (server side, deliberately small)
// ---------------------------------------------------------------------------

enum ReadError {
    /// The idle timeout passed before a request started.
    Idle,
    /// Malformed request.
    Bad(String),
    /// I/O error or EOF mid-request.
    Io,
}

#[derive(Default)]
struct RequestReader {
    buf: Vec<u8>,
}

impl RequestReader {
    /// Reads more bytes; Ok(false) on EOF.
    fn fill(&mut self, io: &mut Io) -> Result<bool, ReadError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match io.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::Idle)
                }
                // A peer that closes without close_notify ends the connection too.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(_) => return Err(ReadError::Io),
            }
        }
    }

    /// Takes one line (without CRLF/LF), reading as needed.
    fn line(&mut self, io: &mut Io, limit: usize) -> Result<String, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > limit {
                return Err(ReadError::Bad("line too long".into()));
            }
            if !self.fill(io)? {
                return Err(ReadError::Io);
            }
        }
    }

    fn exact(&mut self, io: &mut Io, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if !self.fill(io)? {
                return Err(ReadError::Io);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One request; Ok(None) on a clean EOF before its first byte.
    fn read_request(&mut self, io: &mut Io) -> Result<Option<RecordedRequest>, ReadError> {
        // Wait for the first byte under the idle timeout; after that, block.
        while self.buf.is_empty() {
            if !self.fill(io)? {
                return Ok(None);
            }
        }
        let _ = io.tcp().set_read_timeout(None);
        let mut head_len = 0;
        let mut request_line = self.line(io, MAX_HEAD)?;
        // RFC 9112 §2.2: ignore at least one empty line before the request line.
        if request_line.is_empty() {
            request_line = self.line(io, MAX_HEAD)?;
        }
        head_len += request_line.len();
        let mut it = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(ReadError::Bad(format!("request line {request_line:?}")));
        };
        let minor_version = match version {
            "HTTP/1.1" => 1,
            "HTTP/1.0" => 0,
            _ => return Err(ReadError::Bad(format!("version {version:?}"))),
        };
        if method.is_empty() || target.is_empty() {
            return Err(ReadError::Bad(format!("request line {request_line:?}")));
        }
        let received_at = Instant::now();
        let mut headers = Vec::new();
        loop {
            let line = self.line(io, MAX_HEAD)?;
            head_len += line.len() + 2;
            if head_len > MAX_HEAD {
                return Err(ReadError::Bad("head too large".into()));
            }
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(format!("header line {line:?}")));
            };
            if name.is_empty() || name.ends_with([' ', '\t']) {
                return Err(ReadError::Bad(format!("header name {name:?}")));
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut req = RecordedRequest {
            conn_id: 0,
            index_on_conn: 0,
            seq: 0,
            method: method.to_owned(),
            target: target.to_owned(),
            minor_version,
            headers,
            body: Vec::new(),
            chunked: false,
            trailers: Vec::new(),
            received_at,
        };

        if minor_version == 1
            && req.has_token("expect", "100-continue")
            && io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|_| io.flush())
                .is_err()
        {
            return Err(ReadError::Io);
        }

        let te = req.header_all("transfer-encoding").join(",");
        if !te.trim().is_empty() {
            let last = te.split(',').map(str::trim).rfind(|t| !t.is_empty());
            if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                return Err(ReadError::Bad(format!("transfer-encoding {te:?}")));
            }
            req.chunked = true;
            self.read_chunked(io, &mut req)?;
        } else {
            let lengths = req.header_all("content-length");
            let mut length: Option<usize> = None;
            for v in lengths.iter().flat_map(|v| v.split(',')) {
                let v = v.trim();
                let n: usize = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse().ok())
                    .flatten()
                    .ok_or_else(|| ReadError::Bad(format!("content-length {v:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ReadError::Bad("conflicting content-length".into()));
                }
                length = Some(n);
            }
            let n = length.unwrap_or(0);
            if n > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            req.body = self.exact(io, n)?;
        }
        Ok(Some(req))
    }

    fn read_chunked(&mut self, io: &mut Io, req: &mut RecordedRequest) -> Result<(), ReadError> {
        loop {
            let line = self.line(io, 4096)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Bad(format!("chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            let data = self.exact(io, size)?;
            req.body.extend_from_slice(&data);
            let end = self.line(io, 4096)?;
            if !end.is_empty() {
                return Err(ReadError::Bad("chunk data longer than its size".into()));
            }
        }
        loop {
            let line = self.line(io, MAX_HEAD)?;
            if line.is_empty() {
                return Ok(());
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(format!("trailer line {line:?}")));
            };
            req.trailers
                .push((name.to_owned(), value.trim().to_owned()));
        }
    }
}
