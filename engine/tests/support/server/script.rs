//! What a test scripts: [`Accept`], the fate of a freshly accepted
//! connection, and [`Reply`], the answer to one request (status, headers,
//! body, [`Framing`], delays, a [`Cut`] at a byte offset, a close, a reset, a
//! stall), serialized into timed segments for the connection to write.
//! A body is bytes, or generated piece by piece as it is written
//! ([`Reply::generated`]), so a reply of any size costs no memory.
//! Pure data: nothing here touches a socket or the server's state.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::request::RecordedRequest;

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

/// What an on-head hook ([`ServerBuilder::on_head`](super::ServerBuilder::on_head))
/// decides once a request's head has been read.
#[derive(Clone, Debug, Default)]
pub enum BodyPlan {
    /// Read the whole body, then let the handler answer (the default).
    #[default]
    Read,
    /// Read at most this many bytes of the body, then answer with this
    /// reply instead of the handler's and end the connection (the rest of
    /// the body is never read). `Early(0, Reply::text(413, ..))` is an early
    /// answer; `Early(n, Reply::reset())` resets after `n` body bytes. Build it
    /// with [`BodyPlan::early`].
    /// `Expect: 100-continue` is answered only when `n` is not zero.
    Early(u64, Box<Reply>),
}

impl BodyPlan {
    /// [`BodyPlan::Early`]: read at most `body_bytes` of the body, then
    /// answer with `reply`.
    pub fn early(body_bytes: u64, reply: Reply) -> BodyPlan {
        BodyPlan::Early(body_bytes, Box::new(reply))
    }
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

/// Writes a generated body's bytes from an offset into a buffer; see
/// [`Reply::generated`].
pub type Fill = Arc<dyn Fn(u64, &mut [u8]) + Send + Sync>;

/// Largest piece of a generated body written at once.
const GEN_PIECE: u64 = 64 * 1024;

/// A generated body: its length and what writes it.
#[derive(Clone)]
struct Generated {
    len: u64,
    fill: Fill,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// One timed segment of a serialized reply.
pub(super) enum Seg {
    /// Bytes as they are.
    Bytes(Vec<u8>),
    /// `len` bytes of a generated body from offset `from`, framed by
    /// `prefix` and `suffix` (a chunk's size line and CRLF).
    Gen {
        prefix: Vec<u8>,
        from: u64,
        len: u64,
        suffix: Vec<u8>,
        fill: Fill,
    },
}

impl Seg {
    /// The segment's length in bytes.
    fn len(&self) -> u64 {
        match self {
            Seg::Bytes(bytes) => bytes.len() as u64,
            Seg::Gen {
                prefix,
                len,
                suffix,
                ..
            } => prefix.len() as u64 + len + suffix.len() as u64,
        }
    }

    /// The segment's bytes in pieces of at most 64 KiB (a generated body's
    /// are made as they are taken).
    pub(super) fn pieces(self) -> Box<dyn Iterator<Item = Vec<u8>>> {
        match self {
            Seg::Bytes(bytes) => Box::new(std::iter::once(bytes)),
            Seg::Gen {
                prefix,
                from,
                len,
                suffix,
                fill,
            } => {
                let body = (0..len.div_ceil(GEN_PIECE)).map(move |i| {
                    let at = i * GEN_PIECE;
                    let mut buf = vec![0; GEN_PIECE.min(len - at) as usize];
                    fill(from + at, &mut buf);
                    buf
                });
                Box::new(
                    std::iter::once(prefix)
                        .chain(body)
                        .chain(std::iter::once(suffix))
                        .filter(|p| !p.is_empty()),
                )
            }
        }
    }
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

/// How the server ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// TLS close_notify, FIN, then a linger until the client's EOF.
    Graceful,
    /// Abruptly, the way a cut does.
    Abort(Cut),
}

/// What a reply does: answer, write raw bytes, or end without answering.
#[derive(Clone, Debug)]
pub(super) enum ReplyKind {
    Respond,
    Raw(Vec<u8>),
    End(End),
}

/// One scripted reply. Build it with a constructor and chained modifiers:
/// `Reply::text(200, "hi").header("x", "y").chunked().parts(&[1, 1])`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub(super) kind: ReplyKind,
    status: u16,
    reason: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
    body_fill: Option<Generated>,
    parts: Vec<usize>,
    trailers: Vec<(String, String)>,
    interim: Vec<u16>,
    head_delay: Duration,
    part_delay: Duration,
    pub(super) cut: Option<(usize, Cut)>,
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
            body_fill: None,
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
        Reply::with_kind(ReplyKind::End(End::Graceful))
    }

    /// Reset without answering (RST where supported, see [`reset_supported`]).
    pub fn reset() -> Reply {
        Reply::with_kind(ReplyKind::End(End::Abort(Cut::Reset)))
    }

    /// Never answer; the connection stays open and silent until server shutdown.
    pub fn stall() -> Reply {
        Reply::with_kind(ReplyKind::End(End::Abort(Cut::Stall)))
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
        self.body_fill = None;
        self
    }

    /// Sets a body of `len` bytes that `fill` writes as the reply goes out:
    /// `fill(offset, buf)` fills `buf` with the body's bytes from `offset`
    /// (at most 64 KiB at a time). Framing, parts, delays and cuts apply as
    /// to any body; nothing of it is held in memory.
    pub fn generated(mut self, len: u64, fill: Fill) -> Self {
        self.body = Vec::new();
        self.body_fill = Some(Generated { len, fill });
        self
    }

    /// The body's length.
    fn body_len(&self) -> u64 {
        self.body_fill
            .as_ref()
            .map_or(self.body.len() as u64, |g| g.len)
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

    /// The serialized reply as (delay before, segment) pairs. A response to
    /// HEAD keeps its framing header but has no body; a 1xx, 204 or 304 with an
    /// empty body gets no `Content-Length` (RFC 9110 §8.6). A generated body's
    /// parts are [`Seg::Gen`], written a piece at a time.
    pub(super) fn segments(&self, head_request: bool) -> Vec<(Duration, Seg)> {
        let mut out = Vec::new();
        match &self.kind {
            ReplyKind::Raw(bytes) => {
                out.push((self.head_delay, Seg::Bytes(bytes.clone())));
                return out;
            }
            ReplyKind::Respond => {}
            _ => return out,
        }
        let body_len = self.body_len();
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
            Framing::ContentLength if bodiless_status && body_len == 0 => {}
            Framing::ContentLength => {
                head.extend_from_slice(format!("Content-Length: {body_len}\r\n").as_bytes())
            }
            Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::CloseDelimited | Framing::Verbatim => {}
        }
        head.extend_from_slice(b"\r\n");
        out.push((self.head_delay, Seg::Bytes(head)));
        let extra = self
            .extra
            .iter()
            .map(|(d, bytes)| (*d, Seg::Bytes(bytes.clone())));
        if head_request {
            out.extend(extra);
            return out;
        }

        // The body's parts, as ranges of it.
        let mut parts = Vec::new();
        let mut at = 0u64;
        for &size in &self.parts {
            let n = (size as u64).min(body_len - at);
            parts.push((at, n));
            at += n;
        }
        if at < body_len {
            parts.push((at, body_len - at));
        }
        let chunked = self.framing == Framing::Chunked;
        for (from, len) in parts {
            if chunked && len == 0 {
                continue; // an empty chunk would end the body
            }
            let (prefix, suffix) = match chunked {
                true => (format!("{len:x}\r\n").into_bytes(), b"\r\n".to_vec()),
                false => (Vec::new(), Vec::new()),
            };
            let seg = match &self.body_fill {
                Some(g) => Seg::Gen {
                    prefix,
                    from,
                    len,
                    suffix,
                    fill: g.fill.clone(),
                },
                None => {
                    let range = from as usize..(from + len) as usize;
                    let mut bytes = prefix;
                    bytes.extend_from_slice(&self.body[range]);
                    bytes.extend_from_slice(&suffix);
                    Seg::Bytes(bytes)
                }
            };
            out.push((self.part_delay, seg));
        }
        if chunked {
            let mut end = b"0\r\n".to_vec();
            for (n, v) in &self.trailers {
                end.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            end.extend_from_slice(b"\r\n");
            out.push((Duration::ZERO, Seg::Bytes(end)));
        }
        out.extend(extra);
        out
    }

    /// The serialized reply's length: of its head (with any interim
    /// responses) and in all, for placing a cut or a stall at an offset.
    pub fn wire_len(&self, head_request: bool) -> (u64, u64) {
        let segs = self.segments(head_request);
        let head = match (&self.kind, segs.first()) {
            (ReplyKind::Respond, Some((_, seg))) => seg.len(),
            _ => 0,
        };
        (head, segs.iter().map(|(_, seg)| seg.len()).sum())
    }

    pub(super) fn wants_close(&self, req: &RecordedRequest) -> bool {
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
