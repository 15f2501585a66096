//! A local CI coordinator over TLS: GitLab's runner API held to GitLab's
//! rules, a private git repository served by `git http-backend`, object
//! storage on an origin of its own, and a certificate that can rotate for
//! new handshakes while live sessions and session tickets stay valid, as a
//! CDN edge does.
//!
//! Blocking std threads, one per connection, and a rustls server; good for
//! demos and tests, not for production.
//!
//! Requests are read as a real server reads them (see `http1`): strict
//! framing, chunked or `Content-Length` bodies streamed, limits on every
//! buffer.
//!
//! Routes (GitLab's job API, in `gitlab`):
//! * `POST /api/v4/jobs/request` (JSON: `token`, `last_update`, `system_id`,
//!   `info.features`): held up to `hold` only when `last_update` is the
//!   token's current queue state, as Workhorse holds it; `201` with a JSON
//!   job (a queued [`JobSpec`], else the demo job every `job_every`), `204`
//!   with `X-GitLab-Last-Update` otherwise. A job that needs a feature the
//!   runner did not announce is dropped (`runner_unsupported`).
//! * `PUT /api/v4/jobs/:id` (`state`, `failure_reason`, `exit_code`),
//!   `PATCH /api/v4/jobs/:id/trace` (`Content-Range` increments; 416 with
//!   `Range` for a wrong start; `Job-Status` and
//!   `X-GitLab-Trace-Update-Interval` in the answer), `POST
//!   /api/v4/jobs/:id/artifacts` (multipart, its `file` part measured,
//!   hashed and stored as it streams in), `GET /api/v4/jobs/:id/artifacts`
//!   (with a dependency's token: a `302` to the object storage origin, a
//!   second listener with its own CA, which refuses requests carrying a
//!   `JOB-TOKEN`).
//! * `/demo/project.git/...`: a private repository, through `git
//!   http-backend`, for a running job's token only.
//! * `GET /bytes/N`: `N` bytes of body (at most 16 MiB).
//! * anything else: `200` with a one-line description of the request.
//!
//! With [`Settings::fault_every`], the API answers some requests `429` or
//! `502` first, so a runner's retry rules are exercised.
//!
//! [`Coordinator::start_with_client_auth`] requires client certificates
//! (mutual TLS) from given roots. Every request to the coordinator is
//! logged ([`Coordinator::requests_seen`]): when it arrived, on which
//! connection, the serial of the client certificate that connection
//! presented and of the server leaf it was given, and the `X-Runner`
//! header, so a demo can tell from the server's side which credentials
//! each request came with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::StreamOwned;

use crate::pki::{Ca, ServerCert};
use crate::TempDir;

mod git;
mod gitlab;
mod http1;
mod multipart;

pub use gitlab::{ArtifactUpload, JobReport, JobSpec, PollSeen, DEMO_ARTIFACT_SIZE_VARIABLE};
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
    /// Largest artifact upload accepted (413 above it). Default 1 GiB.
    pub max_artifact_size: u64,
    /// Hand out the demo job (a one-line script writing an artifact, which
    /// depends on the last finished job that kept one) to each token every
    /// `job_every` when no [`JobSpec`] is queued. Default true.
    pub demo_jobs: bool,
    /// Jobs check out the demo repository (made with `git` when the first
    /// job is handed out; without `git`, jobs say `GIT_STRATEGY=none`),
    /// served for job tokens only. Without it, `GET ....git/info/refs`
    /// answers any request with an empty advertisement (the rotation
    /// demo's `git clone` stand-in checks only the TLS chain). Default true.
    pub repository: bool,
    /// Answer the 1st of every N requests to each API endpoint with `429`
    /// (`RateLimit-ResetTime`, `Retry-After`) and the 2nd with `502`; 0:
    /// never. Default 0.
    pub fault_every: u32,
    /// How far ahead a `429`'s `RateLimit-ResetTime` lies. Default 1 s.
    pub rate_limit_reset: Duration,
    /// Answer the first final `PUT` of each job `202 Accepted` (GitLab
    /// does while it still writes the trace), so the runner sends it again
    /// after the trace interval. Default false.
    pub accept_final_later: bool,
    /// Uploaded archives kept on disk for the jobs that depend on them
    /// (the oldest go first). Default 4.
    pub stored_artifacts: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold: Duration::from_secs(1),
            job_every: Duration::from_millis(500),
            max_requests_per_conn: None,
            trace_update_interval: Duration::from_secs(3),
            max_artifact_size: 1 << 30,
            demo_jobs: true,
            repository: true,
            fault_every: 0,
            rate_limit_reset: Duration::from_secs(1),
            accept_final_later: false,
            stored_artifacts: 4,
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
    /// `POST /api/v4/jobs/request` answered.
    pub polls: u64,
    /// Polls held (their `last_update` was current).
    pub polls_held: u64,
    /// Requests to the git repository answered.
    pub git_requests: u64,
    /// Requests to the git repository refused for want of a job token.
    pub git_refused: u64,
    /// `429`s injected.
    pub injected_429: u64,
    /// `502`s injected.
    pub injected_502: u64,
}

/// Serves the current certificate (with its leaf's serial) to every full
/// handshake.
#[derive(Debug)]
struct Rotating(RwLock<(Arc<CertifiedKey>, String)>);

impl Rotating {
    fn current(&self) -> (Arc<CertifiedKey>, String) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().0)
    }
}

/// One connection's view of [`Rotating`]: it remembers the serial of the
/// leaf it handed this connection's handshake.
#[derive(Debug)]
struct Presented {
    certs: Arc<Rotating>,
    serial: Mutex<Option<String>>,
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (key, serial) = self.certs.current();
        *self.serial.lock().unwrap_or_else(|p| p.into_inner()) = Some(serial);
        Some(key)
    }
}

/// One request as the coordinator saw it (see [`Coordinator::requests_seen`]).
#[derive(Debug, Clone)]
pub struct RequestSeen {
    /// When its head arrived.
    pub at: Instant,
    /// The connection it came on (1, 2, ... in accept order).
    pub conn: u64,
    /// The `X-Runner` header, if any.
    pub runner: Option<String>,
    /// The serial (uppercase hex) of the client certificate the connection
    /// presented, if any.
    pub client_serial: Option<String>,
    /// The serial of the leaf the server presented to the connection
    /// (`None` for a resumed session, which presents none).
    pub server_serial: Option<String>,
}

/// Requests kept in the log; older ones go first.
const REQUESTS_KEPT: usize = 1 << 16;

struct Shared {
    config: Arc<ServerConfig>,
    storage_config: Arc<ServerConfig>,
    certs: Arc<Rotating>,
    settings: Settings,
    requests_seen: Mutex<std::collections::VecDeque<RequestSeen>>,
    stop: AtomicBool,
    connections: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
    jobs_handed: AtomicU64,
    generation: AtomicU64,
    storage_requests: AtomicU64,
    storage_credentials_refused: AtomicU64,
    polls: AtomicU64,
    polls_held: AtomicU64,
    git_requests: AtomicU64,
    git_refused: AtomicU64,
    live: AtomicUsize,
    last_job: Mutex<HashMap<String, Instant>>,
    jobs: Mutex<gitlab::Jobs>,
    addr: SocketAddr,
    storage_addr: SocketAddr,
    /// Signs object storage URLs and job tokens.
    secret: String,
    /// Stored artifacts and the demo repository.
    dir: TempDir,
    /// The demo repository, made when the first job is handed out.
    repo: OnceLock<Result<git::Repo, String>>,
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

fn tls_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> io::Result<ServerConfig> {
    let provider = Arc::new(rotary::crypto_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = if client_roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for r in client_roots {
            roots.add(r.clone()).map_err(io::Error::other)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(io::Error::other)?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(resolver);
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
        Coordinator::start_with_client_auth(bind, cert, settings, &[])
    }

    /// As [`Coordinator::start`], requiring of every client of the
    /// coordinator (not of object storage) a certificate issued under one
    /// of `client_roots` (none: no client certificate asked for).
    ///
    /// # Errors
    /// As [`Coordinator::start`]; a root rustls cannot use.
    pub fn start_with_client_auth(
        bind: &str,
        cert: &ServerCert,
        settings: Settings,
        client_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> io::Result<Coordinator> {
        let key = cert.certified_key().map_err(io::Error::other)?;
        let certs = Arc::new(Rotating(RwLock::new((key, cert.serial_hex()))));
        let config = tls_config(certs.clone(), client_roots)?;
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
        let storage_config = tls_config(
            Arc::new(Rotating(RwLock::new((
                storage_key,
                storage_cert.serial_hex(),
            )))),
            &[],
        )?;
        let secret = {
            let mut b = [0u8; 16];
            fastrand::fill(&mut b);
            multipart::hex(&b)
        };
        let dir = TempDir::new("coordinator")?;
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            storage_config: Arc::new(storage_config),
            certs,
            settings,
            requests_seen: Mutex::new(std::collections::VecDeque::new()),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            jobs_handed: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            storage_requests: AtomicU64::new(0),
            storage_credentials_refused: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            polls_held: AtomicU64::new(0),
            git_requests: AtomicU64::new(0),
            git_refused: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            last_job: Mutex::new(HashMap::new()),
            jobs: Mutex::new(gitlab::Jobs::default()),
            addr,
            storage_addr,
            secret,
            dir,
            repo: OnceLock::new(),
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

    /// Reports of the jobs that ended (`success`, `failed`, `canceled`, or
    /// dropped as `failed` with `runner_unsupported`) since the last call,
    /// oldest first (at most 1024 are kept between calls).
    pub fn take_job_reports(&self) -> Vec<JobReport> {
        gitlab::lock(&self.shared).take_reports()
    }

    /// Queue `spec`; it is handed to the next runner that polls (before
    /// any demo job) and announces the features it needs. Returns its id.
    pub fn enqueue(&self, spec: JobSpec) -> u64 {
        gitlab::enqueue(&self.shared, spec)
    }

    /// Cancel running job `id`, as a user would in GitLab: its trace
    /// increments are answered with `Job-Status: canceled`, its state
    /// updates with `403`. False when no such job is running.
    pub fn cancel(&self, id: u64) -> bool {
        gitlab::cancel(&self.shared, id)
    }

    /// The state of job `id` (`pending`, `running`, `success`, `failed`,
    /// `canceled`), if the coordinator still knows it.
    pub fn job_state(&self, id: u64) -> Option<&'static str> {
        gitlab::state(&self.shared, id)
    }

    /// The trace of running job `id` received so far (its first 256 KiB).
    pub fn trace(&self, id: u64) -> Option<Vec<u8>> {
        gitlab::trace(&self.shared, id)
    }

    /// The last polls (at most 256), oldest first.
    pub fn polls(&self) -> Vec<PollSeen> {
        gitlab::lock(&self.shared).polls.iter().cloned().collect()
    }

    /// Injected faults per endpoint: `(429s, 502s)`, by endpoint name
    /// (`request`, `update`, `trace`, `upload`, `download`).
    pub fn faults(&self) -> Vec<(&'static str, u64, u64)> {
        gitlab::lock(&self.shared).faults()
    }

    /// The commit jobs check out (`None` before the first job, or without
    /// `git`).
    pub fn repository_sha(&self) -> Option<String> {
        match self.shared.repo.get() {
            Some(Ok(r)) => Some(r.sha.clone()),
            _ => None,
        }
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
            .unwrap_or_else(|p| p.into_inner()) = (key, cert.serial_hex());
        Ok(self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The requests to the coordinator so far (the last 65,536), oldest
    /// first.
    pub fn requests_seen(&self) -> Vec<RequestSeen> {
        let log = self
            .shared
            .requests_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        // One lock, taken and released before the others are read.
        let faults = gitlab::lock(s).faults();
        Counters {
            connections: s.connections.load(Ordering::Relaxed),
            handshakes_full: s.full.load(Ordering::Relaxed),
            handshakes_resumed: s.resumed.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            jobs: s.jobs_handed.load(Ordering::Relaxed),
            generation: s.generation.load(Ordering::Relaxed),
            storage_requests: s.storage_requests.load(Ordering::Relaxed),
            storage_credentials_refused: s.storage_credentials_refused.load(Ordering::Relaxed),
            polls: s.polls.load(Ordering::Relaxed),
            polls_held: s.polls_held.load(Ordering::Relaxed),
            git_requests: s.git_requests.load(Ordering::Relaxed),
            git_refused: s.git_refused.load(Ordering::Relaxed),
            injected_429: faults.iter().map(|f| f.1).sum(),
            injected_502: faults.iter().map(|f| f.2).sum(),
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
        let conn_no = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        shared.live.fetch_add(1, Ordering::SeqCst);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("coordinator-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve(stream, &s, role, conn_no);
                s.live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A response, framed by `Content-Length` (none for 204 and 304).
struct Reply {
    status: Cow<'static, str>,
    content_type: Cow<'static, str>,
    headers: Vec<(Cow<'static, str>, String)>,
    body: Vec<u8>,
    /// A body streamed from this file (of this length) instead of `body`.
    file: Option<(PathBuf, u64)>,
    /// Close the connection after it (the request body was not read).
    close: bool,
}

impl Reply {
    fn new(
        status: impl Into<Cow<'static, str>>,
        content_type: impl Into<Cow<'static, str>>,
        body: Vec<u8>,
    ) -> Reply {
        Reply {
            status: status.into(),
            content_type: content_type.into(),
            headers: Vec::new(),
            body,
            file: None,
            close: false,
        }
    }

    fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body is `path`'s `len` bytes, streamed.
    fn file(mut self, path: PathBuf, len: u64) -> Reply {
        self.file = Some((path, len));
        self
    }

    fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    fn refusal(r: Refusal) -> Reply {
        Reply::new(r.status, "text/plain", format!("{}\n", r.why).into_bytes()).close()
    }

    /// The bytes on the wire (but a file body); without the body for a
    /// `HEAD`.
    fn encode(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {}\r\n", self.status);
        let bodiless = self.status.starts_with("204") || self.status.starts_with("304");
        if !bodiless {
            if !self.content_type.is_empty() {
                head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
            }
            let len = self.file.as_ref().map_or(self.body.len() as u64, |f| f.1);
            head.push_str(&format!("Content-Length: {len}\r\n"));
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

fn serve(stream: TcpStream, shared: &Shared, role: Role, conn_no: u64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Short read timeouts let the thread notice `stop`.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    // Each coordinator connection remembers the leaf its handshake got.
    let presented = Arc::new(Presented {
        certs: shared.certs.clone(),
        serial: Mutex::new(None),
    });
    let config = match role {
        Role::Coordinator => {
            let mut config = (*shared.config).clone();
            config.cert_resolver = presented.clone();
            Arc::new(config)
        }
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
            let seen = RequestSeen {
                at: Instant::now(),
                conn: conn_no,
                runner: head.header("x-runner").map(str::to_owned),
                client_serial: conn.client_leaf().and_then(|c| der_serial(c.as_ref())),
                server_serial: presented
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            };
            let mut log = shared
                .requests_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if log.len() == REQUESTS_KEPT {
                log.pop_front();
            }
            log.push_back(seen);
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
        if let (Some((path, len)), false) = (&reply.file, head.method == "HEAD") {
            send_file(&mut conn, path, *len)?;
        }
        if close {
            break;
        }
    }
    conn.close();
    Ok(())
}

/// The serial number of a DER certificate in uppercase hex (without a sign
/// byte), read from `tbsCertificate` by hand: `None` for anything that is
/// not a certificate's shape.
fn der_serial(der: &[u8]) -> Option<String> {
    /// The contents of the DER element at the start of `b` with tag `tag`,
    /// and what follows it.
    fn element(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = b.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| a << 8 | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    // An explicit version ([0]) may come first.
    let tbs = element(tbs, 0xa0).map_or(tbs, |(_, rest)| rest);
    let (serial, _) = element(tbs, 0x02)?;
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    Some(match &serial[start..] {
        [] => "00".to_owned(),
        digits => digits.iter().map(|b| format!("{b:02X}")).collect(),
    })
}

/// Stream `len` bytes of `path` as a body; a file that changed size
/// under it ends the connection (its framing would be a lie).
fn send_file(conn: &mut Conn, path: &std::path::Path, len: u64) -> io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended early", path.display()),
            ));
        }
        conn.send(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn route(head: &Head, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let path = head.path();
    if head.method == "POST" && path == "/api/v4/jobs/request" {
        return gitlab::job_request(head, body, shared);
    }
    if let (Some(rest), true) = (path.strip_prefix(git::PREFIX), shared.settings.repository) {
        return Ok(git::serve(head, rest, body, shared));
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
        // Without the repository (the rotation demo), `git clone`'s
        // stand-in only checks the TLS chain and that an answer comes.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_serial_is_read_as_the_issuer_wrote_it() {
        let ca = Ca::new("serial test CA").expect("ca");
        let leaf = ca.issue(&["localhost"]).expect("leaf");
        assert_eq!(der_serial(leaf.chain[0].as_ref()), Some(leaf.serial_hex()));
        assert_eq!(der_serial(b"\x30\x03\x02\x01"), None, "cut short");
        assert_eq!(der_serial(b""), None);
    }
}
