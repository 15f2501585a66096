//! Request bodies sent in pieces: files and host-fed streams, the send
//! window, `Expect: 100-continue`, and the send-stall deadline.
//!
//! An in-memory body without `Expect` goes out with its head in one write
//! (see [`super::exchange`]); every other body is an [`Upload`] that
//! [`Engine::pump`] moves into the connection a window at a time, only when
//! everything before it has reached the socket. So one request never holds
//! more than its window in the engine, whatever the body's size.
//!
//! Owns `Req::upload` and `Conn::uploading`.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use rotary_proto::Codec;

use crate::body::{FileCursor, Kind};
use crate::conn::Stage;
use crate::keys::{ConnKey, ReqKey};
use crate::{Body, CloseReason, Deadline, Error, Event, RequestId};

use super::io::ReadMode;
use super::request::Requests;
use super::timers::{after, ReqTimer, Timer};
use super::Engine;

/// The smallest window used, whatever the options say.
const MIN_WINDOW: usize = 1024;

/// Body bytes one drive moves before the loop turns to other connections.
const PUMP_BUDGET: usize = 1024 * 1024;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadStage {
    /// Not on a connection yet.
    Queued,
    /// Head sent with `Expect: 100-continue`; waiting for the `100`.
    Continue,
    /// The body is going out.
    Sending,
    /// The body is complete.
    Done,
    /// A final response came first: the rest is not sent.
    Stopped,
}

enum Source {
    /// An in-memory body sent after a `100 Continue`.
    Bytes(Bytes),
    File(FileCursor),
    Reader(Reader),
    Feed(Feed),
}

/// A [`Body::reader`](crate::Body::reader), read on the engine's thread.
struct Reader {
    reader: Box<dyn std::io::Read + Send>,
    declared: Option<u64>,
    read: u64,
}

impl Reader {
    /// Bytes still allowed by the declared length.
    fn left(&self) -> u64 {
        self.declared
            .map_or(u64::MAX, |d| d.saturating_sub(self.read))
    }
}

/// A body the host feeds.
struct Feed {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Bytes handed over by the host, in all.
    fed: u64,
    declared: Option<u64>,
    ended: bool,
    trailers: Option<HeaderMap>,
    /// A `BodyWanted` is out and no chunk came since.
    asked: bool,
}

/// A request body sent in pieces.
pub(super) struct Upload {
    source: Source,
    /// Body bytes handed to the codec on the current connection.
    pub(super) sent: u64,
    pub(super) stage: UploadStage,
    /// Sent with `Expect: 100-continue`.
    expect: bool,
}

/// What one refill did.
enum Refill {
    Wrote(usize),
    /// A fed body has nothing queued (and is not ended).
    Starved,
    Finished,
}

fn source_error(reason: String, sent: u64) -> Error {
    Error::BodySource { reason, sent }
}

impl Upload {
    /// The upload a request needs, or `None` for a body sent with its head.
    ///
    /// # Errors
    /// A file body whose handle cannot be duplicated.
    /// A reader body's reader is taken out of `request` (it is not
    /// replayable, so nothing else needs it).
    pub(super) fn of(request: &mut http::Request<Body>) -> Result<Option<Box<Upload>>, Error> {
        let expect = request
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            && !request.body().is_empty();
        let source = match &mut request.body_mut().kind {
            Kind::Bytes(_) if !expect => return Ok(None),
            Kind::Bytes(b) => Source::Bytes(b.clone()),
            Kind::File { file, start, len } => {
                let file = file
                    .try_clone()
                    .map_err(|e| source_error(format!("cannot use the body's file: {e}"), 0))?;
                Source::File(FileCursor {
                    file,
                    start: *start,
                    len: *len,
                    pos: 0,
                })
            }
            Kind::Reader { reader, len } => {
                let reader = reader
                    .take()
                    .ok_or_else(|| source_error("the body's reader was already used".into(), 0))?;
                Source::Reader(Reader {
                    reader,
                    declared: *len,
                    read: 0,
                })
            }
            Kind::Stream { len } => Source::Feed(Feed {
                queue: VecDeque::new(),
                queued: 0,
                fed: 0,
                declared: *len,
                ended: false,
                trailers: None,
                asked: false,
            }),
        };
        Ok(Some(Box::new(Upload {
            source,
            sent: 0,
            stage: UploadStage::Queued,
            expect,
        })))
    }

    /// Back to the start, for a retry on another connection.
    ///
    /// # Errors
    /// A file that cannot seek back.
    pub(super) fn rewind(&mut self) -> Result<(), Error> {
        if let Source::File(f) = &mut self.source {
            f.rewind()
                .map_err(|e| source_error(format!("cannot seek the body's file back: {e}"), 0))?;
        }
        self.sent = 0;
        self.stage = UploadStage::Queued;
        Ok(())
    }

    /// Move the next window of the body into the codec.
    fn refill(
        &mut self,
        codec: &mut Codec,
        wbuf: &mut BytesMut,
        scratch: &mut [u8],
        window: usize,
    ) -> Result<Refill, Error> {
        let sent = self.sent;
        let codec_error = |e: rotary_proto::Error| source_error(e.to_string(), sent);
        match &mut self.source {
            Source::Bytes(b) => {
                let from = usize::try_from(self.sent)
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                let rest = b.slice(from..);
                let n = rest.len().min(window);
                codec.send_body(&rest[..n], wbuf).map_err(codec_error)?;
                self.sent += n as u64;
                if n < rest.len() {
                    return Ok(Refill::Wrote(n));
                }
                codec.end_body(wbuf).map_err(codec_error)?;
                Ok(Refill::Finished)
            }
            Source::File(f) => {
                let mut wrote = 0;
                while wrote < window && f.left() > 0 {
                    let room = (window - wrote).min(scratch.len());
                    let Some(buf) = scratch.get_mut(..room) else {
                        break;
                    };
                    let n = f.read(buf).map_err(|e| {
                        source_error(format!("reading the body's file failed: {e}"), self.sent)
                    })?;
                    if n == 0 {
                        let reason = format!(
                            "the file ended after {} of its {} bytes (it shrank while sent)",
                            f.pos, f.len
                        );
                        return Err(source_error(reason, self.sent));
                    }
                    codec.send_body(&buf[..n], wbuf).map_err(codec_error)?;
                    wrote += n;
                    self.sent += n as u64;
                }
                if f.left() > 0 {
                    return Ok(Refill::Wrote(wrote));
                }
                codec.end_body(wbuf).map_err(codec_error)?;
                Ok(Refill::Finished)
            }
            Source::Reader(r) => {
                let mut wrote = 0;
                while wrote < window && r.left() > 0 {
                    let room = (window - wrote)
                        .min(scratch.len())
                        .min(usize::try_from(r.left()).unwrap_or(usize::MAX));
                    let Some(buf) = scratch.get_mut(..room) else {
                        break;
                    };
                    let n = match r.reader.read(buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let reason = format!("reading the body failed: {e}");
                            return Err(source_error(reason, self.sent));
                        }
                    };
                    if n == 0 {
                        if let Some(d) = r.declared {
                            let reason =
                                format!("the body's reader ended after {} of {d} bytes", r.read);
                            return Err(source_error(reason, self.sent));
                        }
                        break;
                    }
                    let Some(piece) = buf.get(..n) else {
                        let reason = "the body's reader returned more than it was asked".into();
                        return Err(source_error(reason, self.sent));
                    };
                    codec.send_body(piece, wbuf).map_err(codec_error)?;
                    wrote += n;
                    r.read += n as u64;
                    self.sent += n as u64;
                }
                if wrote == window {
                    return Ok(Refill::Wrote(wrote));
                }
                codec.end_body(wbuf).map_err(codec_error)?;
                Ok(Refill::Finished)
            }
            Source::Feed(feed) => {
                let mut wrote = 0;
                while let Some(chunk) = feed.queue.pop_front() {
                    feed.queued -= chunk.len();
                    codec.send_body(&chunk, wbuf).map_err(codec_error)?;
                    wrote += chunk.len();
                    self.sent += chunk.len() as u64;
                }
                if wrote > 0 {
                    return Ok(Refill::Wrote(wrote));
                }
                if !feed.ended {
                    return Ok(Refill::Starved);
                }
                codec
                    .end_body_with(feed.trailers.as_ref(), wbuf)
                    .map_err(codec_error)?;
                Ok(Refill::Finished)
            }
        }
    }

    /// Ask the host for more, once per chunk it sends.
    fn wants(&mut self, window: usize) -> Option<usize> {
        let Source::Feed(feed) = &mut self.source else {
            return None;
        };
        if feed.asked || feed.ended {
            return None;
        }
        feed.asked = true;
        Some(window.saturating_sub(feed.queued))
    }
}

impl Engine {
    /// A submitted request's upload is ready: a fed body may be filled
    /// while its connection opens.
    pub(super) fn upload_submitted(&mut self, rk: ReqKey) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let window = req.opts.send_window.max(MIN_WINDOW);
        if let Some(room) = req.upload.as_deref_mut().and_then(|u| u.wants(window)) {
            let id = req.id;
            self.out.push_back(Event::BodyWanted { id, room });
        }
    }

    /// The head of request `rk` (with an upload) is written on `ck`: start
    /// the body, or wait for `100 Continue` first.
    pub(super) fn upload_started(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get_mut(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let Some(up) = req.upload.as_deref_mut() else {
            return;
        };
        if up.expect {
            up.stage = UploadStage::Continue;
            let wait = req.opts.continue_timeout;
            self.arm(Timer::Req(rk, ReqTimer::Continue), after(now, wait));
        } else {
            up.stage = UploadStage::Sending;
            conn.uploading = true;
        }
    }

    /// `100 Continue` arrived, or the wait for it ended: send the body.
    pub(super) fn upload_continue(&mut self, rk: ReqKey) {
        self.disarm(Timer::Req(rk, ReqTimer::Continue));
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let (Some(ck), Some(up)) = (req.conn, req.upload.as_deref_mut()) else {
            return;
        };
        if up.stage == UploadStage::Continue {
            up.stage = UploadStage::Sending;
            if let Some(conn) = self.conns.get_mut(ck) {
                conn.uploading = true;
            }
        }
    }

    /// The continue wait of `rk` ended without a `100`.
    pub(super) fn on_continue_timer(&mut self, rk: ReqKey, now: Instant) {
        let ck = self.reqs.get(rk).and_then(|r| r.conn);
        self.upload_continue(rk);
        if let Some(ck) = ck {
            self.drive(ck, ReadMode::Skip, now);
        }
    }

    /// A final response arrived while request `rk`'s body was unsent or
    /// still going out: send no more of it (the codec's verdict closes the
    /// connection after the response, as its framing is now unknown).
    pub(super) fn upload_stop(&mut self, ck: ConnKey, rk: ReqKey) {
        self.disarm(Timer::Req(rk, ReqTimer::Continue));
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        if let Some(up) = req.upload.as_deref_mut() {
            if matches!(up.stage, UploadStage::Continue | UploadStage::Sending) {
                log::debug!(
                    "request {}: final response before the body was sent; {} body bytes sent",
                    req.id.0,
                    up.sent
                );
                up.stage = UploadStage::Stopped;
            }
        }
        if let Some(conn) = self.conns.get_mut(ck) {
            conn.uploading = false;
        }
    }

    /// Move body bytes into connection `key` while the socket takes them,
    /// up to the budget.
    pub(super) fn pump(&mut self, key: ConnKey, now: Instant) {
        let mut budget = PUMP_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if let Err(e) = conn.flush(&mut self.bufs.sealed) {
                return self.io_failed(key, e, true, now);
            }
            if !conn.uploading || conn.wants_write() {
                return;
            }
            let id = conn.id;
            let Some(rk) = conn.req else {
                conn.uploading = false;
                return;
            };
            let Some(req) = self.reqs.get_mut(rk) else {
                return;
            };
            let Some(up) = req.upload.as_deref_mut() else {
                conn.uploading = false;
                return;
            };
            if budget == 0 {
                self.read_again.push((key, id));
                return;
            }
            let window = req.opts.send_window.max(MIN_WINDOW);
            let refill = up.refill(
                &mut conn.codec,
                &mut conn.wbuf,
                &mut self.bufs.scratch,
                window,
            );
            match refill {
                Ok(Refill::Wrote(n)) => budget = budget.saturating_sub(n),
                Ok(Refill::Finished) => {
                    up.stage = UploadStage::Done;
                    conn.uploading = false;
                    self.request_written(rk, now);
                    // Loop once more to flush the end of the body.
                }
                Ok(Refill::Starved) => {
                    if let Some(room) = up.wants(window) {
                        let id = req.id;
                        self.out.push_back(Event::BodyWanted { id, room });
                    }
                    return;
                }
                Err(e) => {
                    log::debug!("request {} body failed: {e}", req.id.0);
                    return self.abort_request(rk, e, CloseReason::Error, now);
                }
            }
        }
    }

    /// Bytes of request `rk` wait for the socket: watch that the peer takes them.
    pub(super) fn watch_send(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let Some(d) = req.opts.send_stall_timeout else {
            return;
        };
        if req.timers[ReqTimer::SendStall as usize].is_none() {
            req.flow.tx_mark = conn.bytes_out();
            self.arm(Timer::Req(rk, ReqTimer::SendStall), after(now, d));
        }
    }

    /// The send-stall timer of `rk` fired: fail it if nothing moved since.
    pub(super) fn on_send_stall(&mut self, rk: ReqKey, now: Instant) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let (Some(ck), Some(d)) = (req.conn, req.opts.send_stall_timeout) else {
            return;
        };
        let Some(conn) = self.conns.get(ck) else {
            return;
        };
        if conn.stage() != Stage::Ready || !conn.wants_write() {
            return;
        }
        let out = conn.bytes_out();
        if out > req.flow.tx_mark {
            req.flow.tx_mark = out;
            return self.arm(Timer::Req(rk, ReqTimer::SendStall), after(now, d));
        }
        let err = Error::Timeout(Deadline::SendStall);
        self.abort_request(rk, err, CloseReason::Error, now);
    }

    /// Hand a chunk of a fed body to request `id`.
    pub(super) fn feed_body(
        &mut self,
        id: RequestId,
        data: Bytes,
        now: Instant,
    ) -> Result<(), Error> {
        let (rk, feed, sent, window) = fed(&mut self.reqs, id)?;
        if feed.ended {
            return Err(Error::InvalidRequest(format!(
                "request {}: body chunk after end_body",
                id.0
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        if feed.queued + data.len() > window {
            return Err(Error::WindowFull { window });
        }
        let fed = feed.fed + data.len() as u64;
        if let Some(declared) = feed.declared.filter(|&d| fed > d) {
            let reason = format!("{fed} bytes fed for a body declared as {declared} bytes");
            let err = source_error(reason, sent);
            self.abort_request(rk, err.clone(), CloseReason::Error, now);
            return Err(err);
        }
        feed.fed = fed;
        feed.queued += data.len();
        feed.queue.push_back(data);
        feed.asked = false;
        self.push_body(rk, now);
        Ok(())
    }

    /// End the fed body of request `id`, with trailers for a chunked one.
    pub(super) fn finish_body(
        &mut self,
        id: RequestId,
        trailers: Option<HeaderMap>,
        now: Instant,
    ) -> Result<(), Error> {
        let (rk, feed, sent, _) = fed(&mut self.reqs, id)?;
        if feed.ended {
            return Ok(());
        }
        let trailers = trailers.filter(|t| !t.is_empty());
        if let Some(declared) = feed.declared {
            let short = feed.fed < declared;
            if short || trailers.is_some() {
                let reason = match short {
                    true => format!(
                        "the body ended after {} of its declared {declared} bytes",
                        feed.fed
                    ),
                    false => "trailers need a chunked body (no declared length)".to_string(),
                };
                let err = source_error(reason, sent);
                self.abort_request(rk, err.clone(), CloseReason::Error, now);
                return Err(err);
            }
        }
        feed.ended = true;
        feed.trailers = trailers;
        self.push_body(rk, now);
        Ok(())
    }

    /// New body bytes for `rk`: move them on if its connection is sending.
    fn push_body(&mut self, rk: ReqKey, now: Instant) {
        let Some(ck) = self.reqs.get(rk).and_then(|r| r.conn) else {
            return;
        };
        if self.conns.get(ck).is_some_and(|c| c.uploading) {
            self.drive(ck, ReadMode::Skip, now);
        }
    }
}

/// The fed body of live request `id`: its key, the feed, the body bytes
/// sent so far and the request's send window.
impl Engine {
    /// A `BodyWanted { room }` of `id` is being handed to the host: the
    /// room as of now, since the host may have fed chunks after it was
    /// raised (each chunk that goes out at once can raise the next ask, so
    /// asks queue up). `None`: drop it, the window is full or the body
    /// ended; the next ask comes when the queue drains. A request that is
    /// gone keeps its event as it is (its terminal event follows).
    pub(super) fn room_now(&mut self, id: RequestId, room: usize) -> Option<usize> {
        let Ok((_, feed, _, window)) = fed(&mut self.reqs, id) else {
            return Some(room);
        };
        if feed.ended {
            return None;
        }
        match window.saturating_sub(feed.queued) {
            0 => {
                feed.asked = false;
                None
            }
            now => Some(now),
        }
    }
}

fn fed(reqs: &mut Requests, id: RequestId) -> Result<(ReqKey, &mut Feed, u64, usize), Error> {
    let rk = reqs.find(id).ok_or_else(|| no_stream(id))?;
    let req = reqs.get_mut(rk).ok_or_else(|| no_stream(id))?;
    let window = req.opts.send_window.max(MIN_WINDOW);
    match req.upload.as_deref_mut() {
        Some(Upload {
            source: Source::Feed(feed),
            sent,
            ..
        }) => Ok((rk, feed, *sent, window)),
        _ => Err(no_stream(id)),
    }
}

fn no_stream(id: RequestId) -> Error {
    Error::InvalidRequest(format!(
        "request {} has ended or has no streamed body",
        id.0
    ))
}
