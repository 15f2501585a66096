//! The runner's HTTP calls, blocking, on one `rotary::Client`: the engine
//! runs on the client's thread with every lifetime rule in force, and this
//! thread logs its lifecycle events between calls. The long poll waits in
//! slices so a signal can cut it short. The rest of the runner sees only
//! these calls.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use std::time::SystemTime;

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use rotary::{Client, Config, Event, Handshake, Origin, PeerChain, RequestOptions, ServedBy};

use super::backoff::Backoff;
use super::retry;
use crate::coordinator::hex;

/// Why a call did not produce an answer.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The engine ended the request with this error.
    Request(rotary::Error),
    /// A signal arrived (its number) and the call was interruptible.
    Stopped(usize),
    /// Writing a downloaded body failed.
    Write(io::Error),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Request(e) => write!(f, "{e}"),
            ApiError::Stopped(sig) => write!(f, "interrupted by {}", signal_name(*sig)),
            ApiError::Write(e) => write!(f, "writing the download: {e}"),
        }
    }
}

/// `SIGINT`, `SIGTERM` or the number.
pub(crate) fn signal_name(sig: usize) -> String {
    match sig {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// A buffered answer and the connection that carried it.
pub(crate) struct Answer {
    pub(crate) response: http::Response<Bytes>,
    pub(crate) served_by: ServedBy,
}

/// A streamed download's outcome.
pub(crate) struct Download {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) served_by: ServedBy,
    /// Body bytes written (for a 2xx) or seen (otherwise).
    pub(crate) bytes: u64,
    /// SHA-256 of what was written, lowercase hex.
    pub(crate) sha256: String,
}

/// How often a long poll looks at the signal flag.
const SLICE: Duration = Duration::from_millis(100);

/// The client and the runner's log.
pub(crate) struct Api {
    client: Client,
    life: mpsc::Receiver<Event>,
    stop: Arc<AtomicUsize>,
    log: Box<dyn Fn(String)>,
    /// The first wait of a retried call.
    retry_base: Duration,
}

impl Api {
    /// A client with `config`; `stop` turns non-zero when a signal arrives.
    pub(crate) fn new(
        config: Config,
        stop: Arc<AtomicUsize>,
        log: Box<dyn Fn(String)>,
        retry_base: Duration,
    ) -> Result<Api, rotary::BuildError> {
        let client = Client::new(config)?;
        let life = client
            .lifecycle()
            .ok_or_else(|| std::io::Error::other("the client's lifecycle channel was taken"))?;
        Ok(Api {
            client,
            life,
            stop,
            log,
            retry_base,
        })
    }

    /// A backoff for one call's retries.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.retry_base, Duration::from_secs(60))
    }

    /// Send the request `make` builds, by GitLab Runner's rules: an answer
    /// of 408, 429 or 5xx, or a failure to get one, is tried again (a
    /// fresh request from `make`) after the wait the server asked for
    /// (`RateLimit-ResetTime`, `Retry-After`), else after an exponential
    /// backoff with jitter, up to `attempts` times in all. The last answer
    /// is returned whatever its status; a stop signal ends the waiting.
    ///
    /// # Errors
    /// The request could not be built, or no answer came (the last error).
    pub(crate) fn call(
        &mut self,
        what: &str,
        opts: RequestOptions,
        attempts: u32,
        make: &mut dyn FnMut() -> Result<http::Request<rotary::Body>, String>,
    ) -> Result<Answer, String> {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (why, wait) = match self.send(make()?, opts) {
                Ok(a) if !retry::retryable(a.response.status()) => return Ok(a),
                Ok(a) => {
                    let wait = retry::server_wait(a.response.headers(), SystemTime::now())
                        .unwrap_or_else(|| backoff.next());
                    if attempt >= attempts || self.stopped().is_some() {
                        return Ok(a);
                    }
                    (format!("answered {}", a.response.status()), wait)
                }
                Err(e) => {
                    if attempt >= attempts || self.stopped().is_some() {
                        return Err(e.to_string());
                    }
                    (e.to_string(), backoff.next())
                }
            };
            (self.log)(format!(
                "{what} {why}; try {} of {attempts} in {}",
                attempt + 1,
                crate::args::show(wait)
            ));
            self.idle(wait);
        }
    }

    /// Wait `d`, or at most a second once a signal came (the runner is
    /// ending; what it still sends should not keep it long).
    pub(crate) fn pause(&mut self, d: Duration) {
        if self.stopped().is_some() {
            std::thread::sleep(d.min(Duration::from_secs(1)));
        } else {
            self.idle(d);
        }
    }

    /// The signal that arrived, if one did.
    pub(crate) fn stopped(&self) -> Option<usize> {
        match self.stop.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// Send `req` and wait for its answer (bounded by `opts`' deadline).
    pub(crate) fn send(
        &mut self,
        req: http::Request<impl Into<rotary::Body>>,
        opts: RequestOptions,
    ) -> Result<Answer, ApiError> {
        let answer = self.client.send_with(req, opts).and_then(buffer);
        self.log_lifecycle();
        answer.map_err(ApiError::Request)
    }

    /// Send `req` with a body read from `parts` in order (bytes, a file,
    /// bytes: a multipart form around an artifact), streamed a send window
    /// at a time, so the file is never held in memory.
    pub(crate) fn upload(
        &mut self,
        req: http::Request<()>,
        parts: Vec<Part>,
        opts: RequestOptions,
    ) -> Result<Answer, ApiError> {
        let mut len = 0u64;
        let mut body: Box<dyn Read + Send> = Box::new(io::empty());
        for p in parts {
            body = match p {
                Part::Bytes(b) => {
                    len += b.len() as u64;
                    Box::new(body.chain(io::Cursor::new(b)))
                }
                Part::File(f) => {
                    len += f.metadata().map_err(ApiError::Write)?.len();
                    Box::new(body.chain(f))
                }
            };
        }
        self.send(req.map(|()| rotary::Body::reader(body, Some(len))), opts)
    }

    /// As [`Api::send`], but a signal cancels the request and returns
    /// [`ApiError::Stopped`] (for the long poll).
    pub(crate) fn send_interruptible(
        &mut self,
        req: http::Request<Bytes>,
        opts: RequestOptions,
    ) -> Result<Answer, ApiError> {
        let mut pending = self.client.start(req, opts).map_err(ApiError::Request)?;
        loop {
            if let Some(sig) = self.stopped() {
                // Dropping the pending request cancels it.
                return Err(ApiError::Stopped(sig));
            }
            let answer = pending.wait_timeout(SLICE);
            self.log_lifecycle();
            if let Some(answer) = answer {
                return answer.and_then(buffer).map_err(ApiError::Request);
            }
        }
    }

    /// Send `req` and stream a 2xx body into `out`, hashing it; a non-2xx
    /// body is read and dropped.
    pub(crate) fn download(
        &mut self,
        req: http::Request<Bytes>,
        opts: RequestOptions,
        out: &mut dyn Write,
    ) -> Result<Download, ApiError> {
        let result = self.client.send_with(req, opts);
        self.log_lifecycle();
        let (parts, mut body) = result.map_err(ApiError::Request)?.into_parts();
        let served_by = served_by(&parts).map_err(ApiError::Request)?;
        let ok = parts.status.is_success();
        let mut hash = Context::new(&SHA256);
        let mut bytes = 0u64;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(request_error(e)),
            };
            let data = buf.get(..n).unwrap_or_default();
            bytes += n as u64;
            if ok {
                hash.update(data);
                out.write_all(data).map_err(ApiError::Write)?;
            }
        }
        self.log_lifecycle();
        Ok(Download {
            status: parts.status,
            headers: parts.headers,
            served_by,
            bytes,
            sha256: hex(hash.finish().as_ref()),
        })
    }

    /// The origin's chain from a full handshake no older than `freshness`
    /// (a job's CA file comes from it, not from the long poll's connection).
    pub(crate) fn fresh_chain(
        &mut self,
        origin: &Origin,
        freshness: Duration,
    ) -> Result<Arc<PeerChain>, ApiError> {
        let chain = self.client.fresh_chain(origin, freshness);
        self.log_lifecycle();
        chain.map_err(ApiError::Request)
    }

    /// Wait up to `d` logging lifecycle events, or until a signal.
    pub(crate) fn idle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while self.stopped().is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.life.recv_timeout(left.min(SLICE)) {
                Ok(ev) => self.lifecycle(&ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Shut the client down (what is in flight fails with `Shutdown`).
    pub(crate) fn shutdown(self) {
        self.client.shutdown();
        self.log_lifecycle();
    }

    fn log_lifecycle(&self) {
        while let Ok(ev) = self.life.try_recv() {
            self.lifecycle(&ev);
        }
    }

    /// One log line per lifecycle event worth one.
    fn lifecycle(&self, event: &Event) {
        let line = match event {
            Event::Opened(info) => format!(
                "connection #{} opened to {} ({}), chain {}",
                info.conn.get(),
                info.peer_addr,
                match info.handshake {
                    Some(Handshake::Full) => "full handshake",
                    Some(Handshake::Resumed) => "resumed session",
                    None => "plain http",
                },
                fingerprint(info.chain.as_deref())
            ),
            Event::Closed { conn, reason, .. } => {
                format!("connection #{} closed: {}", conn.get(), reason.name())
            }
            Event::ChainChanged {
                previous, current, ..
            } => format!(
                "chain changed: {} -> {}",
                fingerprint(Some(previous)),
                fingerprint(Some(current))
            ),
            Event::ConnectFailed { error, .. } => format!("connect failed: {error}"),
            Event::TrustError { path, reason } => {
                format!("CA file {} unusable: {reason}", path.display())
            }
            _ => return,
        };
        (self.log)(line);
    }
}

/// A piece of an uploaded body.
pub(crate) enum Part {
    Bytes(Bytes),
    /// Read from its current position to its end.
    File(std::fs::File),
}

/// The connection that carried a response (the client always records it).
fn served_by(parts: &http::response::Parts) -> Result<ServedBy, rotary::Error> {
    parts
        .extensions
        .get::<ServedBy>()
        .cloned()
        .ok_or_else(|| rotary::Error::Unsupported("a response without its connection".into()))
}

/// A client response read whole, with its connection.
fn buffer(resp: http::Response<rotary::ResponseBody>) -> Result<Answer, rotary::Error> {
    let (parts, body) = resp.into_parts();
    let served_by = served_by(&parts)?;
    let body = body.bytes()?;
    Ok(Answer {
        response: http::Response::from_parts(parts, body),
        served_by,
    })
}

/// A body read's error: the request's own when it carries one.
fn request_error(e: io::Error) -> ApiError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rotary::Error>()) {
        Some(inner) => ApiError::Request(inner.clone()),
        None => ApiError::Write(e),
    }
}

/// `sha256 ab:cd:…` (the first bytes), or `-`.
pub(crate) fn fingerprint(chain: Option<&PeerChain>) -> String {
    match chain {
        Some(c) => {
            let hex = c.fingerprint_hex();
            format!("sha256 {}", hex.get(..23).unwrap_or(&hex))
        }
        None => "-".into(),
    }
}
