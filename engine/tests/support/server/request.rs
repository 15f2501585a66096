//! What a handler is given: the [`RecordedRequest`], parsed off the wire by
//! a deliberately small server-side HTTP/1.1 request reader (independent of
//! rotary-proto), and the [`ConnInfo`] of the connection it came on. The
//! reader owns only its buffer; besides reading it clears the read timeout
//! once a request starts. The head and the body are read in two steps, so
//! that an [`OnHead`](super::OnHead) hook can answer before the body (or
//! part of it) is read; the body is hashed (SHA-256) as it arrives and kept
//! only when the server keeps bodies.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use super::tls::TlsInfo;
use super::Io;
use crate::support::stream::take_line;

/// Largest request head the server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;

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
    /// The decoded body (empty when the server does not keep bodies, see
    /// [`ServerBuilder::keep_bodies`](super::ServerBuilder::keep_bodies)).
    pub body: Vec<u8>,
    /// Body bytes read (kept or not).
    pub body_len: u64,
    /// SHA-256 of the body bytes read.
    pub body_sha256: [u8; 32],
    /// The whole body was read (false when an [`OnHead`](super::OnHead)
    /// plan answered before its end).
    pub body_complete: bool,
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

/// How a request's body is framed, from its head.
#[derive(Clone, Copy, Debug)]
pub(super) enum BodyFraming {
    Length(u64),
    Chunked,
}

/// Hashes a body as it arrives and keeps its bytes when asked.
struct BodySink<'a> {
    req: &'a mut RecordedRequest,
    hash: ring::digest::Context,
    keep: bool,
    /// Body bytes still allowed by the plan (`u64::MAX`: all).
    allowed: u64,
}

impl BodySink<'_> {
    fn take(&mut self, data: &[u8]) -> Result<(), ReadError> {
        if self.keep && self.req.body.len() + data.len() > MAX_BODY {
            return Err(ReadError::Bad("body too large".into()));
        }
        self.hash.update(data);
        self.req.body_len += data.len() as u64;
        self.allowed -= data.len() as u64;
        if self.keep {
            self.req.body.extend_from_slice(data);
        }
        Ok(())
    }

    fn finish(self, complete: bool) {
        let digest = self.hash.finish();
        self.req.body_sha256.copy_from_slice(digest.as_ref());
        self.req.body_complete = complete;
    }
}

pub(super) enum ReadError {
    /// The idle timeout passed before a request started.
    Idle,
    /// Malformed request.
    Bad(String),
    /// I/O error or EOF mid-request.
    Io,
}

#[derive(Default)]
pub(super) struct RequestReader {
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
            if let Some(line) = take_line(&mut self.buf) {
                return Ok(line);
            }
            if self.buf.len() > limit {
                return Err(ReadError::Bad("line too long".into()));
            }
            if !self.fill(io)? {
                return Err(ReadError::Io);
            }
        }
    }

    /// Reads up to `n` body bytes into `sink`, a buffer at a time.
    fn pass(&mut self, io: &mut Io, sink: &mut BodySink<'_>, n: u64) -> Result<(), ReadError> {
        let mut left = n;
        while left > 0 {
            if self.buf.is_empty() && !self.fill(io)? {
                return Err(ReadError::Io);
            }
            let k = (self.buf.len() as u64).min(left) as usize;
            sink.take(&self.buf[..k])?;
            self.buf.drain(..k);
            left -= k as u64;
        }
        Ok(())
    }

    /// One request's head; Ok(None) on a clean EOF before its first byte.
    /// The body is left to [`RequestReader::read_body`].
    pub(super) fn read_head(
        &mut self,
        io: &mut Io,
    ) -> Result<Option<(RecordedRequest, BodyFraming)>, ReadError> {
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
        let req = RecordedRequest {
            conn_id: 0,
            index_on_conn: 0,
            seq: 0,
            method: method.to_owned(),
            target: target.to_owned(),
            minor_version,
            headers,
            body: Vec::new(),
            body_len: 0,
            body_sha256: [0; 32],
            body_complete: false,
            chunked: false,
            trailers: Vec::new(),
            received_at,
        };

        let te = req.header_all("transfer-encoding").join(",");
        if !te.trim().is_empty() {
            let last = te.split(',').map(str::trim).rfind(|t| !t.is_empty());
            if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                return Err(ReadError::Bad(format!("transfer-encoding {te:?}")));
            }
            return Ok(Some((req, BodyFraming::Chunked)));
        }
        let lengths = req.header_all("content-length");
        let mut length: Option<u64> = None;
        for v in lengths.iter().flat_map(|v| v.split(',')) {
            let v = v.trim();
            let n: u64 = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse().ok())
                .flatten()
                .ok_or_else(|| ReadError::Bad(format!("content-length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Bad("conflicting content-length".into()));
            }
            length = Some(n);
        }
        Ok(Some((req, BodyFraming::Length(length.unwrap_or(0)))))
    }

    /// Reads the body of `req` (framed as its head said), hashing it and
    /// keeping it when `keep`, but at most `limit` bytes of it: a body left
    /// unread past the limit leaves the request incomplete.
    pub(super) fn read_body(
        &mut self,
        io: &mut Io,
        req: &mut RecordedRequest,
        framing: BodyFraming,
        limit: Option<u64>,
        keep: bool,
    ) -> Result<(), ReadError> {
        let mut sink = BodySink {
            req,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            keep,
            allowed: limit.unwrap_or(u64::MAX),
        };
        let complete = match framing {
            BodyFraming::Length(n) => {
                if keep && n > MAX_BODY as u64 {
                    return Err(ReadError::Bad("body too large".into()));
                }
                let take = n.min(sink.allowed);
                self.pass(io, &mut sink, take)?;
                take == n
            }
            BodyFraming::Chunked => {
                sink.req.chunked = true;
                self.read_chunked(io, &mut sink)?
            }
        };
        sink.finish(complete);
        Ok(())
    }

    /// A chunked body into `sink`; Ok(false) when the sink's allowance ran
    /// out first.
    fn read_chunked(&mut self, io: &mut Io, sink: &mut BodySink<'_>) -> Result<bool, ReadError> {
        loop {
            let line = self.line(io, 4096)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Bad(format!("chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let take = size.min(sink.allowed);
            self.pass(io, sink, take)?;
            if take < size {
                return Ok(false);
            }
            let end = self.line(io, 4096)?;
            if !end.is_empty() {
                return Err(ReadError::Bad("chunk data longer than its size".into()));
            }
        }
        loop {
            let line = self.line(io, MAX_HEAD)?;
            if line.is_empty() {
                return Ok(true);
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(format!("trailer line {line:?}")));
            };
            sink.req
                .trailers
                .push((name.to_owned(), value.trim().to_owned()));
        }
    }
}
