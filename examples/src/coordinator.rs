//! A local CI coordinator over TLS: a long-poll job endpoint, a fake git
//! repository, and a certificate that can rotate for new handshakes while
//! live sessions and session tickets stay valid, as a CDN edge does.
//!
//! Blocking std threads, one per connection, and a rustls server; good for
//! demos and tests, not for production.
//!
//! Routes:
//! * `POST /api/v4/jobs/request` (JSON body with `"token"`): held up to
//!   `hold`; `201` with a small JSON job when one is due for that token
//!   (one every `job_every`), `204` otherwise.
//! * `GET /bytes/N`: `N` bytes of body (at most 16 MiB).
//! * `GET <anything>.git/info/refs...`: a `200` a `git clone` would start with.
//! * anything else: `200` with a one-line description of the request.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, StreamOwned};

use crate::pki::ServerCert;

/// How the coordinator behaves.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a job request is held when no job is due. Default 1 s.
    pub hold: Duration,
    /// A token gets a job at most this often. Default 500 ms.
    pub job_every: Duration,
    /// Close each connection after this many requests (`Connection: close`),
    /// as edges with a keep-alive request limit do. Default `None`.
    pub max_requests_per_conn: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold: Duration::from_secs(1),
            job_every: Duration::from_millis(500),
            max_requests_per_conn: None,
        }
    }
}

/// What the coordinator has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connections accepted.
    pub connections: u64,
    /// Full TLS handshakes completed.
    pub handshakes_full: u64,
    /// Resumed TLS handshakes completed.
    pub handshakes_resumed: u64,
    /// Requests answered.
    pub requests: u64,
    /// Jobs handed out.
    pub jobs: u64,
    /// Certificate generation served to new handshakes (1, +1 per rotation).
    pub generation: u64,
}

/// Serves the current certificate to every full handshake.
#[derive(Debug)]
struct Rotating(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

struct Shared {
    config: Arc<ServerConfig>,
    certs: Arc<Rotating>,
    settings: Settings,
    stop: AtomicBool,
    connections: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
    jobs: AtomicU64,
    generation: AtomicU64,
    live: AtomicUsize,
    last_job: Mutex<HashMap<String, Instant>>,
    addr: SocketAddr,
}

/// A running coordinator; stops when dropped.
pub struct Coordinator {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Coordinator {
    /// Listen on `bind` (such as `127.0.0.1:0`) presenting `cert`.
    ///
    /// # Errors
    /// A bind failure, or a certificate rustls cannot use.
    pub fn start(bind: &str, cert: &ServerCert, settings: Settings) -> io::Result<Coordinator> {
        let key = cert.certified_key().map_err(io::Error::other)?;
        let certs = Arc::new(Rotating(RwLock::new(key)));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(certs.clone());
        // One ticket key and one session cache for the server's whole life:
        // sessions from before a rotation resume after it, with the old chain.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            certs,
            settings,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            last_job: Mutex::new(HashMap::new()),
            addr,
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("coordinator-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Coordinator {
            shared,
            accept: Some(accept),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `https://127.0.0.1:<port><path>` (the certificate names `127.0.0.1`
    /// and `localhost`).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.shared.addr)
    }

    /// Present `cert` to every new full handshake from now on. Live
    /// connections keep theirs; resumed sessions keep their original chain.
    ///
    /// # Errors
    /// A certificate rustls cannot use.
    pub fn rotate(&self, cert: &ServerCert) -> Result<u64, String> {
        let key = cert.certified_key()?;
        *self
            .shared
            .certs
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = key;
        Ok(self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            connections: s.connections.load(Ordering::Relaxed),
            handshakes_full: s.full.load(Ordering::Relaxed),
            handshakes_resumed: s.resumed.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            jobs: s.jobs.load(Ordering::Relaxed),
            generation: s.generation.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting, end held polls and close connections (within ~100 ms).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let until = Instant::now() + Duration::from_secs(2);
        while self.shared.live.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and friends: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.live.fetch_add(1, Ordering::SeqCst);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("coordinator-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve(stream, &s);
                s.live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Short read timeouts let the thread notice `stop`.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let conn = ServerConnection::new(shared.config.clone()).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = Vec::with_capacity(4096);
    let mut counted = false;
    let mut served = 0u32;
    while let Some(req) = read_request(&mut tls, &mut buf, shared, &mut counted)? {
        served += 1;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let limit_hit = shared
            .settings
            .max_requests_per_conn
            .is_some_and(|m| served >= m);
        let close = req.close || limit_hit || shared.stop.load(Ordering::SeqCst);
        let (status, ctype, body) = route(&req, shared);
        let mut head = format!("HTTP/1.1 {status}\r\n");
        if !status.starts_with("204") {
            head.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(&body);
        tls.write_all(&msg)?;
        tls.flush()?;
        if close {
            break;
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Both);
    Ok(())
}

/// Read one request; `None` on a clean close or when stopping.
fn read_request(
    tls: &mut Tls,
    buf: &mut Vec<u8>,
    shared: &Shared,
    counted: &mut bool,
) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or_default().split(' ');
            let method = first.next().unwrap_or_default().to_owned();
            let path = first.next().unwrap_or("/").to_owned();
            let version = first.next().unwrap_or_default();
            let mut len = 0usize;
            let mut close = version == "HTTP/1.0";
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.parse().map_err(|_| bad("bad content-length"))?;
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked request bodies are not supported here"));
                }
            }
            if len > 64 * 1024 * 1024 {
                return Err(bad("request body too large"));
            }
            while buf.len() < end + 4 + len {
                if !fill(tls, buf, &mut chunk, shared, counted)? {
                    return Ok(None);
                }
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Ok(Some(Request {
                method,
                path,
                body,
                close,
            }));
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("request head too large"));
        }
        if !fill(tls, buf, &mut chunk, shared, counted)? {
            return Ok(None);
        }
    }
}

/// Read more plaintext; false on EOF or stop.
fn fill(
    tls: &mut Tls,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    shared: &Shared,
    counted: &mut bool,
) -> io::Result<bool> {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let r = tls.read(chunk);
        if !*counted && !tls.conn.is_handshaking() {
            *counted = true;
            match tls.conn.handshake_kind() {
                Some(HandshakeKind::Resumed) => shared.resumed.fetch_add(1, Ordering::Relaxed),
                _ => shared.full.fetch_add(1, Ordering::Relaxed),
            };
        }
        match r {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn route(req: &Request, shared: &Shared) -> (&'static str, &'static str, Vec<u8>) {
    let path = req.path.split('?').next().unwrap_or("/");
    if req.method == "POST" && path == "/api/v4/jobs/request" {
        return job_request(req, shared);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<usize>() {
            Ok(n) if n <= 16 * 1024 * 1024 => ("200 OK", "application/octet-stream", vec![b'x'; n]),
            _ => (
                "400 Bad Request",
                "text/plain",
                b"size must be 0..=16777216\n".to_vec(),
            ),
        };
    }
    if path.ends_with(".git/info/refs") {
        return (
            "200 OK",
            "application/x-git-upload-pack-advertisement",
            b"001e# service=git-upload-pack\n0000".to_vec(),
        );
    }
    let body = format!(
        "rotary demo coordinator: {} {} ({} body bytes)\n",
        req.method,
        req.path,
        req.body.len()
    );
    ("200 OK", "text/plain", body.into_bytes())
}

/// Hold the poll until a job is due for the token or `hold` passes.
fn job_request(req: &Request, shared: &Shared) -> (&'static str, &'static str, Vec<u8>) {
    let token = json_string(&req.body, "token").unwrap_or_default();
    if token.is_empty() {
        return (
            "403 Forbidden",
            "application/json",
            br#"{"message":"403 Forbidden - no runner token"}"#.to_vec(),
        );
    }
    let start = Instant::now();
    let hold_end = start + shared.settings.hold;
    loop {
        let now = Instant::now();
        let mut last = shared.last_job.lock().unwrap_or_else(|p| p.into_inner());
        let next_due = last
            .get(&token)
            .map_or(now, |t| *t + shared.settings.job_every);
        if next_due <= now {
            last.insert(token, now);
            drop(last);
            let id = shared.jobs.fetch_add(1, Ordering::Relaxed) + 1;
            let job = format!(
                concat!(
                    r#"{{"id":{id},"token":"job-token-{id}","#,
                    r#""git_info":{{"repo_url":"https://{addr}/demo/project.git"}}}}"#
                ),
                id = id,
                addr = shared.addr
            );
            return ("201 Created", "application/json", job.into_bytes());
        }
        drop(last);
        if now >= hold_end || shared.stop.load(Ordering::SeqCst) {
            return ("204 No Content", "", Vec::new());
        }
        sleep_unless_stopped(next_due.min(hold_end) - now, shared);
    }
}

fn sleep_unless_stopped(d: Duration, shared: &Shared) {
    let until = Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The string value of `"key"` in a flat JSON object (enough for a token).
pub fn json_string(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_owned())
}

/// The number value of `"key"` in a flat JSON object (enough for a job id).
pub fn json_number(body: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_helpers_find_flat_values() {
        let b = br#"{"id": 42, "token":"abc", "git_info":{"repo_url":"https://x"}}"#;
        assert_eq!(json_number(b, "id"), Some(42));
        assert_eq!(json_string(b, "token").as_deref(), Some("abc"));
        assert_eq!(json_string(b, "nope"), None);
        assert_eq!(json_string(b"not json", "token"), None);
    }
}
