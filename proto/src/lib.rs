//! Sans-IO HTTP/1.1 client codec for rotary.
//!
//! API CONTRACT (skeleton written first so the engine can be built against it;
//! the implementer fills in bodies, may add items, must not change these
//! signatures without telling the engine side).
//!
//! ```text
//! let mut codec = Codec::new(Limits::default());
//! let mut out = BytesMut::new();
//! codec.send_request(&request_parts_method, &uri, &headers, Some(&body_bytes), &mut out)?; // head + body in one buffer
//! // ... write `out` to the socket, read bytes into `input: BytesMut` ...
//! while let Some(ev) = codec.poll_response(&mut input)? { match ev { Head(..), Data(..), End(..) } }
//! // on EOF from the peer:
//! codec.handle_eof()? -> Option<Event> (End for close-delimited bodies, error otherwise)
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use std::time::Duration;

/// Errors (fill in: `#[non_exhaustive]`, one variant per failure class,
/// lowercase Display, std::error::Error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// placeholder; the implementer defines the real variants
    Placeholder,
}

/// Limits on what a peer can make the codec buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum bytes of a response head (status line + headers). Default 64 KiB.
    pub max_head_bytes: usize,
    /// Maximum number of response headers. Default 100.
    pub max_headers: usize,
    /// Maximum bytes of one chunk-size line including extensions. Default 4 KiB.
    pub max_chunk_line: usize,
    /// Maximum bytes of the chunked trailer section. Default 16 KiB.
    pub max_trailer_bytes: usize,
}

/// How the request target is written on the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetForm {
    /// `GET /path?query HTTP/1.1` (default).
    #[default]
    Origin,
    /// `GET http://host/path HTTP/1.1`, for a forward proxy.
    Absolute,
}

/// Server `Keep-Alive: timeout=N, max=M` hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAliveHints {
    /// `timeout=N`, in seconds.
    pub timeout: Option<Duration>,
    /// `max=M`: remaining exchanges the server allows.
    pub max: Option<u32>,
}

/// Why a connection may not carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The request carried `Connection: close`.
    RequestClose,
    /// The response carried `Connection: close`.
    ResponseClose,
    /// HTTP/1.0 response without `Connection: keep-alive`.
    Http10,
    /// The body was delimited by connection close.
    CloseDelimited,
    /// Transfer-Encoding together with Content-Length.
    AmbiguousFraming,
    /// The response arrived before the request body was fully sent.
    EarlyResponse,
    /// An error occurred.
    Error,
}

/// The keep-alive verdict after one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `None` when the connection may carry another request.
    pub close: Option<CloseReason>,
    /// Server hints, parsed leniently.
    pub hints: KeepAliveHints,
}

/// Head of a final (non-1xx) response.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
}

/// Output of [`Codec::poll_response`].
#[derive(Debug)]
pub enum Event {
    /// The final response head (interim 1xx responses are skipped).
    Head(ResponseHead),
    /// A piece of body (a `Bytes` split off the input buffer, no copy).
    Data(Bytes),
    /// The exchange is complete.
    End {
        /// Trailers of a chunked body, if any.
        trailers: Option<HeaderMap>,
        /// Whether the connection may be reused.
        verdict: Verdict,
    },
}

/// Exchange state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No exchange in progress; a request may be sent.
    Idle,
    /// Head written, body being streamed (`send_body` / `finish_request`).
    Sending,
    /// Request complete; waiting for the response head.
    AwaitingHead,
    /// Reading the body.
    Body,
    /// Exchange done and connection reusable: next `send_request` is allowed.
    Done,
    /// Connection must not be used again (close verdict or error).
    Closed,
}

/// Per-connection HTTP/1.1 exchange state machine.
#[derive(Debug)]
pub struct Codec {
    _limits: Limits,
}

impl Codec {
    /// New codec in state `Idle`.
    pub fn new(limits: Limits) -> Self {
        Codec { _limits: limits }
    }
    /// Current state.
    pub fn state(&self) -> State {
        State::Idle
    }
    /// Encode a whole request (head + body with Content-Length, or no body
    /// when `body` is None and the method has none) into `out`.
    /// Idle/Done → AwaitingHead. Validates headers before writing any byte.
    pub fn send_request(
        &mut self,
        _method: &Method,
        _uri: &Uri,
        _headers: &HeaderMap,
        _body: Option<&[u8]>,
        _form: TargetForm,
        _out: &mut BytesMut,
    ) -> Result<(), Error> {
        Err(Error::Placeholder)
    }
    /// Start a request whose body is streamed: `Some(n)` declared length
    /// (Content-Length), `None` chunked. Idle/Done → Sending.
    pub fn start_streaming_request(
        &mut self,
        _method: &Method,
        _uri: &Uri,
        _headers: &HeaderMap,
        _length: Option<u64>,
        _form: TargetForm,
        _out: &mut BytesMut,
    ) -> Result<(), Error> {
        Err(Error::Placeholder)
    }
    /// Append body bytes while Sending.
    pub fn send_body(&mut self, _data: &[u8], _out: &mut BytesMut) -> Result<(), Error> {
        Err(Error::Placeholder)
    }
    /// End the streamed body (fails if a declared length was not met). Sending → AwaitingHead.
    pub fn end_body(&mut self, _out: &mut BytesMut) -> Result<(), Error> {
        Err(Error::Placeholder)
    }
    /// Consume bytes from `input` (they are split off the front) and return the
    /// next event, or `Ok(None)` when more input is needed.
    pub fn poll_response(&mut self, _input: &mut BytesMut) -> Result<Option<Event>, Error> {
        Err(Error::Placeholder)
    }
    /// The peer closed its side. Returns `End` for a close-delimited body,
    /// `Ok(None)` when idle, an error (truncated head/body) otherwise.
    pub fn handle_eof(&mut self) -> Result<Option<Event>, Error> {
        Err(Error::Placeholder)
    }
    /// True once any byte of the response has been consumed for the current exchange.
    pub fn response_started(&self) -> bool {
        false
    }
}

/// Parse `Keep-Alive` header values leniently.
pub fn keep_alive_hints(_headers: &HeaderMap) -> KeepAliveHints {
    KeepAliveHints::default()
}
