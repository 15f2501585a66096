//! The per-connection exchange state machine.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, CONNECTION};
use http::{Method, StatusCode, Uri};

use crate::body::{body_length, BodyDecoder, BodyLength, Decoded};
use crate::keepalive::{has_token, keep_alive_hints, KeepAliveHints, Reuse, Verdict};
use crate::request::{
    check_header, encode_head, put_chunk, put_last_chunk_with, Framing, LAST_CHUNK,
};
use crate::response::{parse_head, NameCache, ResponseHead};
use crate::{Error, TargetForm};

/// Limits on what a peer can make the codec buffer.
///
/// Every buffer a peer can grow is bounded by one of these; exceeding one is
/// an error of its own kind. Build with `Limits::default()` and adjust fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum bytes of a response head (status line + headers). Default 64 KiB.
    pub max_head_bytes: usize,
    /// Maximum number of response headers (and of trailer fields). Default 100.
    pub max_headers: usize,
    /// Maximum bytes of one chunk-size line including extensions. Default 4 KiB.
    pub max_chunk_line: usize,
    /// Maximum bytes of the chunked trailer section. Default 16 KiB.
    pub max_trailer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_chunk_line: 4 * 1024,
            max_trailer_bytes: 16 * 1024,
        }
    }
}

/// Output of [`Codec::poll_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEvent {
    /// The final response head (interim 1xx responses are skipped).
    Head(ResponseHead),
    /// A piece of body (a `Bytes` split off the input buffer, no copy).
    Data(Bytes),
    /// A `100 Continue` arrived while the request body was still open: a
    /// request sent with `Expect: 100-continue` may now send its body. (Any
    /// other interim response, and a 100 once the body is complete, is
    /// consumed silently.)
    Continue,
    /// The exchange is complete.
    End {
        /// Trailers of a chunked body, if any.
        trailers: Option<HeaderMap>,
        /// Whether the connection may be reused.
        verdict: Verdict,
    },
}

/// Exchange state, as seen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No exchange in progress; a request may be sent.
    Idle,
    /// Head written, body being streamed (`send_body` / `end_body`). The
    /// response may already be arriving.
    Sending,
    /// Request complete; waiting for the response head.
    AwaitingHead,
    /// Reading the body.
    Body,
    /// Exchange done and connection reusable: next `send_request` is allowed.
    Done,
    /// Connection must not be used again (close verdict, EOF or error).
    Closed,
    /// A `CONNECT` was answered with a 2xx: the connection is a tunnel now
    /// (RFC 9110 §9.3.6). The bytes after the head belong to the tunnel and
    /// are left in the caller's input; the codec carries nothing more.
    Tunnel,
}

#[derive(Debug)]
enum Progress {
    Idle,
    Active { writing: Writing, reading: Reading },
    Done,
    Closed,
    Tunnel,
}

/// The request side of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Content-Length body: `remaining` of `declared` bytes still to send.
    Length { declared: u64, remaining: u64 },
    /// Chunked body, open.
    Chunked,
    /// The request is completely written.
    Finished,
}

/// The response side of an exchange.
#[derive(Debug)]
enum Reading {
    Head,
    Body(BodyDecoder),
}

/// Per-exchange facts.
#[derive(Debug, Default)]
struct Exchange {
    /// The request method, as far as response framing cares.
    method: Framed,
    started: bool,
    reuse: Reuse,
    hints: KeepAliveHints,
}

/// The request method as far as response framing cares: HEAD, CONNECT, or
/// any other (one byte per connection, where a `Method` takes 24).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Framed {
    #[default]
    Other,
    Head,
    Connect,
}

impl Framed {
    fn of(method: &Method) -> Framed {
        if *method == Method::HEAD {
            Framed::Head
        } else if *method == Method::CONNECT {
            Framed::Connect
        } else {
            Framed::Other
        }
    }

    /// A method that frames a response as this one does.
    fn method(self) -> Method {
        match self {
            Framed::Other => Method::GET,
            Framed::Head => Method::HEAD,
            Framed::Connect => Method::CONNECT,
        }
    }
}

impl Exchange {
    /// Note what the final response head says about framing and reuse;
    /// `early` when it arrived before the request was completely sent.
    fn final_head(&mut self, head: &ResponseHead, early: bool) -> Result<BodyLength, Error> {
        let framing = body_length(&self.method.method(), head)?;
        self.reuse.response(head.version, &head.headers);
        self.reuse.ambiguous_framing = framing.ambiguous;
        self.reuse.close_delimited = framing.length == BodyLength::CloseDelimited;
        self.reuse.early_response = early;
        self.hints = keep_alive_hints(&head.headers);
        Ok(framing.length)
    }
}

/// Per-connection HTTP/1.1 exchange state machine.
///
/// Sans-IO: the caller writes the bytes the codec puts into an output buffer
/// and feeds it the bytes it reads. One exchange at a time, no pipelining:
///
/// ```text
///         send_request                   Head            End (reusable)
///   Idle ───────────────► AwaitingHead ───────► Body ─────────────────► Done
///    │                         ▲                  │
///    │ start_streaming_request │ end_body         └─ End (close) ─► Closed
///    └──────────► Sending ─────┘
/// ```
///
/// `Done` accepts the next request like `Idle`; an error, EOF or a close
/// verdict leads to `Closed`, which accepts nothing. A 2xx answer to a
/// `CONNECT` leads to `Tunnel` after its `Head`: no body is read, and what
/// follows the head stays in the input for the tunnel's next layer.
///
/// The response may be polled while still `Sending` (a server may answer
/// early); such an exchange ends with a close verdict. Every method refuses
/// misuse with [`Error::InvalidState`] and never panics. Errors are sticky:
/// after one, every call returns it again and the state is [`State::Closed`].
#[derive(Debug)]
pub struct Codec {
    limits: Limits,
    progress: Progress,
    exchange: Exchange,
    /// Boxed: set at most once, and a connection carries its codec for life.
    error: Option<Box<Error>>,
    /// For [`Codec::poll_response`] without a shared cache; made on first use.
    names: Option<Box<NameCache>>,
}

impl Codec {
    /// New codec in state [`State::Idle`].
    pub fn new(limits: Limits) -> Self {
        Codec {
            limits,
            progress: Progress::Idle,
            exchange: Exchange::default(),
            error: None,
            names: None,
        }
    }

    /// The limits this codec enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Current state.
    pub fn state(&self) -> State {
        match &self.progress {
            _ if self.error.is_some() => State::Closed,
            Progress::Idle => State::Idle,
            Progress::Done => State::Done,
            Progress::Closed => State::Closed,
            Progress::Tunnel => State::Tunnel,
            Progress::Active { writing, .. } if *writing != Writing::Finished => State::Sending,
            Progress::Active {
                reading: Reading::Head,
                ..
            } => State::AwaitingHead,
            Progress::Active {
                reading: Reading::Body(_),
                ..
            } => State::Body,
        }
    }

    /// The response's body is being read, whatever the request side is
    /// doing ([`Codec::state`] says `Sending` while the request's body is
    /// unfinished, even when the response's body is arriving: a server may
    /// answer early).
    pub fn reading_body(&self) -> bool {
        matches!(
            self.progress,
            Progress::Active {
                reading: Reading::Body(_),
                ..
            }
        ) && self.error.is_none()
    }

    /// The error that closed the codec, if any.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_deref()
    }

    /// True once any byte of the response has been seen for the current
    /// exchange (including an incomplete head still in the caller's buffer,
    /// and interim 1xx responses). A request whose response has not started
    /// can safely be retried elsewhere if it is idempotent.
    pub fn response_started(&self) -> bool {
        self.exchange.started
    }

    /// Encode a whole request into `out`: request line, `Host`, `headers`,
    /// framing, then `body`. Allowed in `Idle` and `Done`; leads to
    /// `AwaitingHead`.
    ///
    /// Framing: a non-empty body is sent with `Content-Length`; an empty or
    /// absent body gets `Content-Length: 0` for POST, PUT and PATCH and no
    /// framing header for other methods. `Host` is taken from the URI's
    /// authority unless `headers` holds one. Caller-supplied `Content-Length`
    /// and `Transfer-Encoding` are ignored: the codec always writes its own.
    /// A request with `Connection: close` makes the verdict close.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] in any other state; [`Error::InvalidRequestHeader`]
    /// or [`Error::MissingAuthority`] for a request that cannot be encoded. No
    /// byte is written on error.
    pub fn send_request(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        form: TargetForm,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_can_send("send_request")?;
        let framing = Framing::for_body(method, body);
        self.start(method, uri, headers, framing, form, out)?;
        out.put_slice(body.unwrap_or_default());
        self.begin(method, headers, Writing::Finished);
        Ok(())
    }

    /// Start a request whose body is streamed with [`send_body`](Self::send_body)
    /// and [`end_body`](Self::end_body): `Some(n)` declares a length
    /// (`Content-Length: n`), `None` uses `Transfer-Encoding: chunked`. Allowed
    /// in `Idle` and `Done`; leads to `Sending`. Headers as in
    /// [`send_request`](Self::send_request).
    ///
    /// # Errors
    ///
    /// As [`send_request`](Self::send_request); no byte is written on error.
    pub fn start_streaming_request(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        length: Option<u64>,
        form: TargetForm,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_can_send("start_streaming_request")?;
        let (framing, writing) = match length {
            Some(n) => (
                Framing::Length(n),
                Writing::Length {
                    declared: n,
                    remaining: n,
                },
            ),
            None => (Framing::Chunked, Writing::Chunked),
        };
        self.start(method, uri, headers, framing, form, out)?;
        self.begin(method, headers, writing);
        Ok(())
    }

    /// Append body bytes of a streamed request to `out` (as one chunk for a
    /// chunked body; empty `data` writes nothing). Allowed while `Sending`,
    /// also when the response has started to arrive.
    ///
    /// # Errors
    ///
    /// [`Error::RequestBodyTooLong`] if `data` goes past the declared length
    /// (nothing of it is written); [`Error::InvalidState`] when no streamed
    /// request body is open.
    pub fn send_body(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        self.check()?;
        match &mut self.progress {
            Progress::Active {
                writing:
                    Writing::Length {
                        declared,
                        remaining,
                    },
                ..
            } => {
                match remaining.checked_sub(data.len() as u64) {
                    Some(left) => *remaining = left,
                    None => {
                        let declared = *declared;
                        return self.fail(Error::RequestBodyTooLong { declared });
                    }
                }
                out.put_slice(data);
            }
            Progress::Active {
                writing: Writing::Chunked,
                ..
            } => put_chunk(out, data),
            _ => return self.misuse("send_body"),
        }
        Ok(())
    }

    /// End a streamed request body: writes the last chunk of a chunked body.
    /// Leads from `Sending` to `AwaitingHead` (or to wherever the response
    /// has got to).
    ///
    /// # Errors
    ///
    /// [`Error::RequestBodyTooShort`] if a declared length was not met;
    /// [`Error::InvalidState`] when no streamed request body is open.
    pub fn end_body(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.end_body_with(None, out)
    }

    /// End a streamed request body as [`end_body`](Self::end_body) does,
    /// sending `trailers` after the last chunk of a chunked body.
    ///
    /// # Errors
    ///
    /// As [`end_body`](Self::end_body); [`Error::InvalidRequestHeader`] for
    /// a trailer that would break framing, and [`Error::InvalidState`] for
    /// trailers on a body with a declared length (they have nowhere to go).
    /// Nothing is written on error.
    pub fn end_body_with(
        &mut self,
        trailers: Option<&HeaderMap>,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check()?;
        let trailers = trailers.filter(|t| !t.is_empty());
        if let Some(t) = trailers {
            for (name, value) in t {
                if let Err(e) = check_header(name.as_str().as_bytes(), value.as_bytes()) {
                    return self.fail(e);
                }
            }
            if !matches!(
                self.progress,
                Progress::Active {
                    writing: Writing::Chunked,
                    ..
                }
            ) {
                return self.misuse("end_body_with(trailers)");
            }
        }
        let Progress::Active { writing, .. } = &mut self.progress else {
            return self.misuse("end_body");
        };
        match *writing {
            Writing::Length { remaining: 0, .. } => {}
            Writing::Length {
                declared,
                remaining,
            } => {
                return self.fail(Error::RequestBodyTooShort {
                    declared,
                    missing: remaining,
                })
            }
            Writing::Chunked => match trailers {
                None => out.put_slice(LAST_CHUNK),
                Some(t) => put_last_chunk_with(out, t),
            },
            Writing::Finished => return self.misuse("end_body"),
        }
        *writing = Writing::Finished;
        Ok(())
    }

    /// Consume bytes from the front of `input` and return the next event, or
    /// `Ok(None)` when more input is needed. Call it until it returns
    /// `Ok(None)` each time bytes are appended to `input`.
    ///
    /// Events come in order `Head`, `Data`…, `End`; interim 1xx responses are
    /// consumed silently. Body data is handed out as soon as it arrives, split
    /// off `input` without copying. An incomplete head is left in `input`
    /// until it is complete. After `End` the state is `Done` (reusable) or
    /// `Closed`. With no response expected, empty input gives `Ok(None)`.
    ///
    /// # Errors
    ///
    /// Any malformed or over-limit response (see [`Error`]); a 101 response
    /// ([`Error::UnsupportedUpgrade`]); bytes when no response is expected
    /// ([`Error::UnsolicitedData`]).
    pub fn poll_response(&mut self, input: &mut BytesMut) -> Result<Option<ResponseEvent>, Error> {
        self.check()?;
        match self.read(input, None) {
            Ok(event) => Ok(event),
            Err(err) => self.fail(err),
        }
    }

    /// [`Codec::poll_response`], remembering header names in `names`
    /// instead of the codec's own cache: connections to one server can
    /// share one [`NameCache`] (the host keeps it, one per server) instead
    /// of each keeping a copy.
    ///
    /// # Errors
    ///
    /// As [`Codec::poll_response`].
    #[inline]
    pub fn poll_response_with(
        &mut self,
        input: &mut BytesMut,
        names: &mut NameCache,
    ) -> Result<Option<ResponseEvent>, Error> {
        self.check()?;
        match self.read(input, Some(names)) {
            Ok(event) => Ok(event),
            Err(err) => self.fail(err),
        }
    }

    /// The peer closed its side of the connection. Call it once `poll_response`
    /// has consumed everything it could.
    ///
    /// Returns `End` (verdict close) when this ends a close-delimited body, or
    /// a body already complete whose `End` was not yet polled; `Ok(None)` when
    /// no exchange was in flight. The state becomes `Closed` in every case.
    ///
    /// # Errors
    ///
    /// [`Error::ClosedBeforeResponse`] when no response byte had arrived (on a
    /// reused connection: the server dropped it as idle);
    /// [`Error::IncompleteHead`] inside the head; [`Error::TruncatedBody`]
    /// inside a Content-Length or chunked body.
    pub fn handle_eof(&mut self) -> Result<Option<ResponseEvent>, Error> {
        self.check()?;
        let result = match &self.progress {
            Progress::Idle | Progress::Done | Progress::Closed => Ok(None),
            Progress::Tunnel => return Ok(None),
            Progress::Active {
                reading: Reading::Head,
                ..
            } if self.exchange.started => Err(Error::IncompleteHead),
            Progress::Active {
                reading: Reading::Head,
                ..
            } => Err(Error::ClosedBeforeResponse),
            Progress::Active {
                reading: Reading::Body(decoder),
                ..
            } => decoder.eof().map(|()| Some(self.end(None))),
        };
        match result {
            Ok(event) => {
                self.progress = Progress::Closed;
                Ok(event)
            }
            Err(err) => self.fail(err),
        }
    }

    fn read(
        &mut self,
        input: &mut BytesMut,
        mut names: Option<&mut NameCache>,
    ) -> Result<Option<ResponseEvent>, Error> {
        loop {
            if matches!(self.progress, Progress::Tunnel) {
                // The tunnel's bytes are not the codec's to judge.
                return Ok(None);
            }
            let Progress::Active { writing, reading } = &mut self.progress else {
                return if input.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::UnsolicitedData)
                };
            };
            let decoder = match reading {
                Reading::Body(decoder) => decoder,
                Reading::Head => {
                    self.exchange.started |= !input.is_empty();
                    let cache = match names.as_deref_mut() {
                        Some(shared) => shared,
                        None => self.names.get_or_insert_with(Box::default),
                    };
                    let Some(head) = parse_head(input, &self.limits, cache)? else {
                        return Ok(None);
                    };
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Error::UnsupportedUpgrade { status: 101 });
                    }
                    if head.status == StatusCode::CONTINUE && *writing != Writing::Finished {
                        return Ok(Some(ResponseEvent::Continue));
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    if self.exchange.method == Framed::Connect && head.status.is_success() {
                        // RFC 9110 §9.3.6: the tunnel starts right after the
                        // head; any Content-Length or Transfer-Encoding is
                        // meaningless here (RFC 9112 §6.3 rule 2).
                        self.progress = Progress::Tunnel;
                        return Ok(Some(ResponseEvent::Head(head)));
                    }
                    let early = *writing != Writing::Finished;
                    let length = self.exchange.final_head(&head, early)?;
                    *reading = Reading::Body(BodyDecoder::new(length, self.limits));
                    return Ok(Some(ResponseEvent::Head(head)));
                }
            };
            return Ok(match decoder.decode(input)? {
                None => None,
                Some(Decoded::Data(data)) => Some(ResponseEvent::Data(data)),
                Some(Decoded::End(trailers)) => Some(self.end(trailers)),
            });
        }
    }

    /// Finish the exchange with its verdict.
    fn end(&mut self, trailers: Option<HeaderMap>) -> ResponseEvent {
        let verdict = self.exchange.reuse.verdict(self.exchange.hints);
        self.progress = if verdict.keep_alive() {
            Progress::Done
        } else {
            Progress::Closed
        };
        ResponseEvent::End { trailers, verdict }
    }

    fn check_can_send(&mut self, operation: &'static str) -> Result<(), Error> {
        self.check()?;
        match self.progress {
            Progress::Idle | Progress::Done => Ok(()),
            _ => self.misuse(operation),
        }
    }

    /// Validate and write a request head; on error nothing is written.
    fn start(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        framing: Framing,
        form: TargetForm,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        match encode_head(method, uri, headers, framing, form, out) {
            Ok(()) => Ok(()),
            Err(err) => self.fail(err),
        }
    }

    fn begin(&mut self, method: &Method, headers: &HeaderMap, writing: Writing) {
        let reuse = Reuse {
            request_close: has_token(headers, &CONNECTION, "close"),
            ..Reuse::default()
        };
        // Only HEAD and CONNECT change how a response is framed.
        self.exchange = Exchange {
            method: Framed::of(method),
            started: false,
            reuse,
            hints: KeepAliveHints::default(),
        };
        self.progress = Progress::Active {
            writing,
            reading: Reading::Head,
        };
    }

    fn check(&self) -> Result<(), Error> {
        match &self.error {
            Some(err) => Err((**err).clone()),
            None => Ok(()),
        }
    }

    fn misuse<T>(&mut self, operation: &'static str) -> Result<T, Error> {
        let state = self.state();
        self.fail(Error::InvalidState { operation, state })
    }

    fn fail<T>(&mut self, err: Error) -> Result<T, Error> {
        self.error = Some(Box::new(err.clone()));
        self.progress = Progress::Closed;
        Err(err)
    }
}
