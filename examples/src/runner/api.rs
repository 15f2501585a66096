//! The runner's HTTP calls, blocking, on one engine: each call runs the
//! engine's loop until its request ends, logging connection lifecycle
//! events on the way, and a poll can be cut short by a signal. The rest of
//! the runner sees only `send` and `download`, so moving to a blocking
//! `rotary::Client` is a change here alone.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use rotary::{Config, Engine, Event, Handshake, PeerChain, RequestId, RequestOptions, ServedBy};

use crate::coordinator::hex;

/// Why a call did not produce an answer.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The engine ended the request with this error.
    Request(rotary::Error),
    /// Polling the engine failed.
    Poll(io::Error),
    /// A signal arrived (its number) and the call was interruptible.
    Stopped(usize),
    /// Writing a downloaded body failed.
    Write(io::Error),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Request(e) => write!(f, "{e}"),
            ApiError::Poll(e) => write!(f, "engine poll: {e}"),
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
    pub(crate) served_by: ServedBy,
    /// Body bytes written (for a 2xx) or seen (otherwise).
    pub(crate) bytes: u64,
    /// SHA-256 of what was written, lowercase hex.
    pub(crate) sha256: String,
}

/// One engine and the runner's log.
pub(crate) struct Api {
    engine: Engine,
    stop: Arc<AtomicUsize>,
    log: Box<dyn Fn(String)>,
}

impl Api {
    /// An engine with `config`; `stop` turns non-zero when a signal arrives.
    pub(crate) fn new(
        config: Config,
        stop: Arc<AtomicUsize>,
        log: Box<dyn Fn(String)>,
    ) -> io::Result<Api> {
        Ok(Api {
            engine: Engine::new(config)?,
            stop,
            log,
        })
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
        let id = self.engine.submit(req, opts.streaming(false));
        self.wait(id, false, &mut |_| Ok(()))
    }

    /// Send `req` with a body fed from `parts` in order (bytes, a file,
    /// bytes: a multipart form around an artifact), streamed a send window
    /// at a time, so the file is never held in memory.
    pub(crate) fn upload(
        &mut self,
        req: http::Request<()>,
        parts: Vec<Part>,
        opts: RequestOptions,
    ) -> Result<Answer, ApiError> {
        let mut len = 0u64;
        for p in &parts {
            len += match p {
                Part::Bytes(b) => b.len() as u64,
                Part::File(f) => f.metadata().map_err(ApiError::Write)?.len(),
            };
        }
        let req = req.map(|()| rotary::Body::stream(Some(len)));
        let id = self.engine.submit(req, opts.streaming(false));
        let mut parts = std::collections::VecDeque::from(parts);
        let mut feed = |engine: &mut Engine, room: usize| -> io::Result<()> {
            let mut room = room;
            while room > 0 {
                let Some(part) = parts.front_mut() else {
                    let _ = engine.end_body(id, None);
                    return Ok(());
                };
                let chunk = match part {
                    Part::Bytes(b) if b.len() <= room => {
                        let all = b.clone();
                        parts.pop_front();
                        all
                    }
                    Part::Bytes(b) => b.split_to(room),
                    Part::File(f) => {
                        let mut buf = vec![0; room.min(256 * 1024)];
                        let n = io::Read::read(f, &mut buf)?;
                        if n == 0 {
                            parts.pop_front();
                            continue;
                        }
                        buf.truncate(n);
                        Bytes::from(buf)
                    }
                };
                room -= chunk.len();
                if engine.send_body(id, chunk).is_err() {
                    // The request ended (an early answer): its event says why.
                    return Ok(());
                }
            }
            if parts.is_empty() {
                let _ = engine.end_body(id, None);
            }
            Ok(())
        };
        self.wait_fed(id, &mut feed)
    }

    /// As [`Api::send`], but a signal cancels the request and returns
    /// [`ApiError::Stopped`] (for the long poll).
    pub(crate) fn send_interruptible(
        &mut self,
        req: http::Request<Bytes>,
        opts: RequestOptions,
    ) -> Result<Answer, ApiError> {
        let id = self.engine.submit(req, opts.streaming(false));
        self.wait(id, true, &mut |_| Ok(()))
    }

    /// Send `req` and stream a 2xx body into `out`, hashing it; a non-2xx
    /// body is read and dropped.
    pub(crate) fn download(
        &mut self,
        req: http::Request<Bytes>,
        opts: RequestOptions,
        out: &mut dyn Write,
    ) -> Result<Download, ApiError> {
        let id = self.engine.submit(req, opts.streaming(true));
        let mut hash = Context::new(&SHA256);
        let mut bytes = 0u64;
        let mut ok = None;
        let answer = self.wait(id, false, &mut |piece| {
            match piece {
                Piece::Head(status) => ok = Some(status.is_success()),
                Piece::Data(data) => {
                    bytes += data.len() as u64;
                    if ok == Some(true) {
                        hash.update(data);
                        out.write_all(data)?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(Download {
            status: answer.response.status(),
            served_by: answer.served_by,
            bytes,
            sha256: hex(hash.finish().as_ref()),
        })
    }

    /// Run the engine for up to `d` (lifecycle events, prewarming), or
    /// until a signal.
    pub(crate) fn idle(&mut self, d: Duration) -> Result<(), ApiError> {
        let until = Instant::now() + d;
        while self.stopped().is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.engine
                .poll(Some(left.min(Duration::from_millis(100))))
                .map_err(ApiError::Poll)?;
            while let Some(ev) = self.engine.next_event() {
                self.lifecycle(&ev);
            }
        }
        Ok(())
    }

    /// Shut the engine down (what is in flight fails with `Shutdown`).
    pub(crate) fn shutdown(mut self) {
        self.engine.shutdown();
        while let Some(ev) = self.engine.next_event() {
            self.lifecycle(&ev);
        }
    }

    /// Poll until request `id` ends, answering its `BodyWanted` with `feed`.
    fn wait_fed(
        &mut self,
        id: RequestId,
        feed: &mut dyn FnMut(&mut Engine, usize) -> io::Result<()>,
    ) -> Result<Answer, ApiError> {
        self.wait_with(id, false, &mut |_| Ok(()), feed)
    }

    /// Poll until request `id` ends; streamed pieces go to `sink`.
    fn wait(
        &mut self,
        id: RequestId,
        interruptible: bool,
        sink: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> Result<Answer, ApiError> {
        self.wait_with(id, interruptible, sink, &mut |_, _| Ok(()))
    }

    fn wait_with(
        &mut self,
        id: RequestId,
        interruptible: bool,
        sink: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
        feed: &mut dyn FnMut(&mut Engine, usize) -> io::Result<()>,
    ) -> Result<Answer, ApiError> {
        let mut head: Option<(http::Response<()>, ServedBy)> = None;
        loop {
            if interruptible {
                if let Some(sig) = self.stopped() {
                    self.engine.cancel(id);
                    while self.engine.next_event().is_some() {}
                    return Err(ApiError::Stopped(sig));
                }
            }
            self.engine
                .poll(Some(Duration::from_millis(100)))
                .map_err(ApiError::Poll)?;
            while let Some(ev) = self.engine.next_event() {
                if ev.request_id() != Some(id) {
                    self.lifecycle(&ev);
                    continue;
                }
                match ev {
                    Event::Response {
                        response,
                        served_by,
                        ..
                    } => {
                        return Ok(Answer {
                            response,
                            served_by,
                        })
                    }
                    Event::Failed { error, .. } => return Err(ApiError::Request(error)),
                    Event::BodyWanted { room, .. } => {
                        if let Err(e) = feed(&mut self.engine, room) {
                            self.engine.cancel(id);
                            return Err(ApiError::Write(e));
                        }
                    }
                    Event::Head {
                        response,
                        served_by,
                        ..
                    } => {
                        sink(Piece::Head(response.status())).map_err(ApiError::Write)?;
                        head = Some((response, served_by));
                    }
                    Event::Body { data, .. } => {
                        if let Err(e) = sink(Piece::Data(&data)) {
                            self.engine.cancel(id);
                            return Err(ApiError::Write(e));
                        }
                    }
                    Event::End { .. } => {
                        let Some((response, served_by)) = head.take() else {
                            continue;
                        };
                        let (parts, ()) = response.into_parts();
                        let response = http::Response::from_parts(parts, Bytes::new());
                        return Ok(Answer {
                            response,
                            served_by,
                        });
                    }
                    _ => {}
                }
            }
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

/// What a streamed response hands the sink.
enum Piece<'a> {
    Head(http::StatusCode),
    Data(&'a [u8]),
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
