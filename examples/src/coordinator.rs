//! A local CI coordinator over TLS: a long-poll job endpoint, a fake git
//! repository, and a certificate that can rotate for new handshakes while
//! live sessions and session tickets stay valid, as a CDN edge does.
//!
//! Blocking std threads, one per connection, and a rustls server; good for
//! demos and tests, not for production.
//!
//! Requests are read as a real server reads them (see `http1`): strict
//! framing, chunked or `Content-Length` bodies streamed, limits on every
//! buffer.
//!
//! Routes (GitLab's job API, in `gitlab`):
//! * `POST /api/v4/jobs/request` (JSON body with `"token"`): held up to
//!   `hold`; `201` with a JSON job when one is due for that token (one every
//!   `job_every`), `204` otherwise.
//! * `PUT /api/v4/jobs/:id` (`state` `running`, `success` or `failed`),
//!   `PATCH /api/v4/jobs/:id/trace` (`Content-Range` increments; 416 with
//!   `Range` for a wrong start; `X-GitLab-Trace-Update-Interval` in the
//!   answer), `POST /api/v4/jobs/:id/artifacts` (multipart, its `file` part
//!   measured and hashed as it streams in), `GET /api/v4/jobs/:id/artifacts`
//!   (a `302` to the object storage origin, a second listener with its own
//!   CA, which refuses requests carrying a `JOB-TOKEN`).
//! * `GET /bytes/N`: `N` bytes of body (at most 16 MiB).
//! * `GET <anything>.git/info/refs...`: a `200` a `git clone` would start with.
//! * anything else: `200` with a one-line description of the request.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::StreamOwned;

use crate::pki::{Ca, ServerCert};

mod gitlab;
mod http1;
mod multipart;

pub use gitlab::{dependency_artifact, JobReport};
pub(crate) use multipart::hex;
pub use multipart::FilePart;

use http1::{Body, Conn, Head, Refusal};

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
    /// Sent as `X-GitLab-Trace-Update-Interval` (whole seconds as GitLab
    /// sends them, else decimal seconds): how often a runner should send
    /// trace increments. Default 3 s.
    pub trace_update_interval: Duration,
    /// Size of the dependency artifact object storage serves each job.
    /// Default 256 KiB; at most 16 MiB.
    pub dependency_size: usize,
    /// Largest artifact upload accepted (413 above it). Default 1 GiB.
    pub max_artifact_size: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold: Duration::from_secs(1),
            job_every: Duration::from_millis(500),
            max_requests_per_conn: None,
            trace_update_interval: Duration::from_secs(3),
            dependency_size: 256 * 1024,
            max_artifact_size: 1 << 30,
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
    /// Requests object storage answered.
    pub storage_requests: u64,
    /// Requests object storage refused for carrying a credential
    /// (`JOB-TOKEN`, `Authorization`, `PRIVATE-TOKEN`).
    pub storage_credentials_refused: u64,
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
    storage_config: Arc<ServerConfig>,
    certs: Arc<Rotating>,
    settings: Settings,
    stop: AtomicBool,
    connections: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
    jobs_handed: AtomicU64,
    generation: AtomicU64,
    storage_requests: AtomicU64,
    storage_credentials_refused: AtomicU64,
    live: AtomicUsize,
    last_job: Mutex<HashMap<String, Instant>>,
    jobs: Mutex<gitlab::Jobs>,
    addr: SocketAddr,
    storage_addr: SocketAddr,
    /// Signs object storage URLs and job tokens.
    secret: String,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn count_handshake(&self, resumed: bool) {
        let c = if resumed { &self.resumed } else { &self.full };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Coordinator,
    Storage,
}

/// A running coordinator and its object storage origin; stops when dropped.
pub struct Coordinator {
    shared: Arc<Shared>,
    accept: Vec<JoinHandle<()>>,
    storage_ca: String,
}

fn tls_config(resolver: Arc<dyn ResolvesServerCert>) -> io::Result<ServerConfig> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    // One ticket key and one session cache for the server's whole life:
    // sessions from before a rotation resume after it, with the old chain.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
    Ok(config)
}

impl Coordinator {
    /// Listen on `bind` (such as `127.0.0.1:0`) presenting `cert`, and
    /// start object storage on another port of the same address, with a
    /// certificate from a CA of its own ([`Coordinator::storage_ca_pem`]).
    ///
    /// # Errors
    /// A bind failure, or a certificate rustls cannot use.
    pub fn start(bind: &str, cert: &ServerCert, settings: Settings) -> io::Result<Coordinator> {
        let key = cert.certified_key().map_err(io::Error::other)?;
        let certs = Arc::new(Rotating(RwLock::new(key)));
        let config = tls_config(certs.clone())?;
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        // Object storage: loopback when the coordinator listens on every
        // address, so the Location it hands out is one a runner can reach.
        let storage_ip = if addr.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            addr.ip()
        };
        let storage_listener = TcpListener::bind(SocketAddr::new(storage_ip, 0))?;
        let storage_addr = storage_listener.local_addr()?;
        let storage_ca = Ca::new("rotary demo object storage root").map_err(io::Error::other)?;
        let ip = storage_ip.to_string();
        let mut names = vec!["localhost", "127.0.0.1"];
        if !names.contains(&ip.as_str()) {
            names.push(&ip);
        }
        let storage_cert = storage_ca.issue(&names).map_err(io::Error::other)?;
        let storage_key = storage_cert.certified_key().map_err(io::Error::other)?;
        let storage_config = tls_config(Arc::new(Rotating(RwLock::new(storage_key))))?;
        let secret = {
            let mut b = [0u8; 16];
            fastrand::fill(&mut b);
            multipart::hex(&b)
        };
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            storage_config: Arc::new(storage_config),
            certs,
            settings,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            jobs_handed: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            storage_requests: AtomicU64::new(0),
            storage_credentials_refused: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            last_job: Mutex::new(HashMap::new()),
            jobs: Mutex::new(gitlab::Jobs::default()),
            addr,
            storage_addr,
            secret,
        });
        let mut accept = Vec::new();
        for (listener, role) in [
            (listener, Role::Coordinator),
            (storage_listener, Role::Storage),
        ] {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{role:?}-accept").to_lowercase())
                .spawn(move || accept_loop(listener, s, role));
            match spawned {
                Ok(h) => accept.push(h),
                Err(e) => {
                    let mut partial = Coordinator {
                        shared,
                        accept,
                        storage_ca: String::new(),
                    };
                    partial.stop();
                    return Err(e);
                }
            }
        }
        Ok(Coordinator {
            shared,
            accept,
            storage_ca: storage_ca.pem().to_owned(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Object storage's address.
    pub fn storage_addr(&self) -> SocketAddr {
        self.shared.storage_addr
    }

    /// The root certificate (PEM) of object storage's CA: a runner that
    /// downloads artifacts must trust it too.
    pub fn storage_ca_pem(&self) -> &str {
        &self.storage_ca
    }

    /// Reports of the jobs that ended (`success` or `failed`) since the
    /// last call, oldest first (at most 1024 are kept between calls).
    pub fn take_job_reports(&self) -> Vec<JobReport> {
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_reports()
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
            jobs: s.jobs_handed.load(Ordering::Relaxed),
            generation: s.generation.load(Ordering::Relaxed),
            storage_requests: s.storage_requests.load(Ordering::Relaxed),
            storage_credentials_refused: s.storage_credentials_refused.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting, end held polls and close connections (within ~100 ms).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops.
        for addr in [self.shared.addr, self.shared.storage_addr] {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for h in self.accept.drain(..) {
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

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, role: Role) {
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
                let _ = serve(stream, &s, role);
                s.live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A response, framed by `Content-Length` (none for 204 and 304).
struct Reply {
    status: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Close the connection after it (the request body was not read).
    close: bool,
}

impl Reply {
    fn new(status: &'static str, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    fn refusal(r: Refusal) -> Reply {
        Reply::new(r.status, "text/plain", format!("{}\n", r.why).into_bytes()).close()
    }

    /// The bytes on the wire; without the body for a `HEAD`.
    fn encode(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {}\r\n", self.status);
        let bodiless = self.status.starts_with("204") || self.status.starts_with("304");
        if !bodiless {
            if !self.content_type.is_empty() {
                head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
            }
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        if !bodiless && !head_only {
            msg.extend_from_slice(&self.body);
        }
        msg
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

fn serve(stream: TcpStream, shared: &Shared, role: Role) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Short read timeouts let the thread notice `stop`.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let config = match role {
        Role::Coordinator => shared.config.clone(),
        Role::Storage => shared.storage_config.clone(),
    };
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let tls: Tls = StreamOwned::new(conn, stream);
    let mut conn = Conn::new(tls);
    let mut served = 0u32;
    loop {
        let head = match conn.read_head(shared)? {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(refusal) => {
                conn.send(&Reply::refusal(refusal).encode(false, true))?;
                break;
            }
        };
        let framing = match http1::framing(&head) {
            Ok(f) => f,
            Err(refusal) => {
                conn.send(&Reply::refusal(refusal).encode(false, true))?;
                break;
            }
        };
        served += 1;
        if role == Role::Coordinator {
            shared.requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut body = Body::new(&mut conn, shared, &head, framing);
        let reply = match role {
            Role::Coordinator => route(&head, &mut body, shared),
            Role::Storage => Ok(gitlab::storage(&head, shared)),
        };
        let reply = match reply {
            Ok(r) => r,
            // A body that broke its framing gets an answer; a socket that
            // failed does not.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Reply::new(
                "400 Bad Request",
                "text/plain",
                format!("{e}\n").into_bytes(),
            )
            .close(),
            Err(e) => return Err(e),
        };
        // What a route left unread is skipped when small; otherwise the
        // connection cannot carry another request.
        let finished = reply.close || body.is_done() || body.discard(64 * 1024);
        let limit_hit = shared
            .settings
            .max_requests_per_conn
            .is_some_and(|m| served >= m);
        let close =
            reply.close || !finished || head.wants_close() || limit_hit || shared.stopping();
        conn.send(&reply.encode(head.method == "HEAD", close))?;
        if close {
            break;
        }
    }
    conn.close();
    Ok(())
}

fn route(head: &Head, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let path = head.path();
    if head.method == "POST" && path == "/api/v4/jobs/request" {
        return gitlab::job_request(body, shared);
    }
    if let Some(reply) = gitlab::route(head, body, shared) {
        return reply;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(match n.parse::<usize>() {
            Ok(n) if n <= 16 * 1024 * 1024 => {
                Reply::new("200 OK", "application/octet-stream", vec![b'x'; n])
            }
            _ => Reply::new(
                "400 Bad Request",
                "text/plain",
                b"size must be 0..=16777216\n".to_vec(),
            ),
        });
    }
    if path.ends_with(".git/info/refs") {
        return Ok(Reply::new(
            "200 OK",
            "application/x-git-upload-pack-advertisement",
            b"001e# service=git-upload-pack\n0000".to_vec(),
        ));
    }
    // Counted as it streams in, never held.
    let mut n = 0u64;
    while body.next(&mut |b| n += b.len() as u64)? {}
    let text = format!(
        "rotary demo coordinator: {} {} ({n} body bytes)\n",
        head.method, head.target
    );
    Ok(Reply::new("200 OK", "text/plain", text.into_bytes()))
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
