//! What a caller holds while its request runs: [`Pending`] until the head
//! is taken, then [`ResponseBody`], whose reads are the engine's flow
//! control and whose upload (a [`Body::reader`](crate::Body::reader)) is
//! read on the caller's thread.

use std::io::{self, Read};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use crate::{Error, RequestId};

use super::lead::{Core, Key, Mailbox, Msg, Shared};
use super::READ_PIECE;

/// A request sent with [`Client::start`](crate::Client::start) whose response head has not been
/// taken yet. Dropping it cancels the request.
#[derive(Debug)]
pub struct Pending {
    /// `None` once the answer has been handed out.
    body: Option<ResponseBody>,
}

impl Pending {
    /// The request's id.
    pub fn id(&self) -> Option<RequestId> {
        self.body.as_ref().map(|b| b.id)
    }

    /// Wait for the response head (reading a [`Body::reader`](crate::Body::reader) meanwhile).
    ///
    /// # Errors
    /// As [`Client::send_with`](crate::Client::send_with); [`Error::Unsupported`] when
    /// [`Pending::wait_timeout`] already gave the answer.
    pub fn wait(mut self) -> Result<http::Response<ResponseBody>, Error> {
        match self.answer(None, None) {
            Some(result) => result,
            None => Err(Error::Shutdown),
        }
    }

    /// Wait at most `timeout` for the response head: `None` when it has not
    /// come yet (call again), else the answer, once.
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<http::Response<ResponseBody>, Error>> {
        self.answer(Some(Instant::now() + timeout), None)
    }

    /// The answer, waited for until `until`, starting with the client's
    /// mutex if `held`.
    pub(super) fn answer(
        &mut self,
        until: Option<Instant>,
        mut held: Option<MutexGuard<'_, Core>>,
    ) -> Option<Result<http::Response<ResponseBody>, Error>> {
        let Some(body) = self.body.as_mut() else {
            let why = "the request's answer was already taken".into();
            return Some(Err(Error::Unsupported(why)));
        };
        loop {
            let msg = match body.next_msg(until, held.take()) {
                Ok(Some(msg)) => msg,
                Ok(None) => return None,
                Err(e) => {
                    body.state = State::Done;
                    self.body = None;
                    return Some(Err(e));
                }
            };
            match msg {
                Msg::Head(head) => {
                    let body = self.body.take()?;
                    let (parts, ()) = head.into_parts();
                    return Some(Ok(http::Response::from_parts(parts, body)));
                }
                Msg::Failed(e) => {
                    body.state = State::Done;
                    self.body = None;
                    return Some(Err(e));
                }
                // Body bytes never come before their head.
                Msg::Wanted(_) | Msg::Body(_) | Msg::End(_) => {}
            }
        }
    }
}

/// A request body read on the caller's thread.
struct Upload {
    reader: Box<dyn Read + Send>,
    sent: u64,
    done: bool,
    /// What one read fills (reused): a piece goes to the engine as a copy of
    /// just its bytes, so a reader of small pieces holds no more than it read.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The body ended (trailers stored) or the request failed.
    Done,
}

/// The body of a [`Client`](crate::Client) response, read as it arrives (`impl Read`).
///
/// Reading hands bytes back to the engine's flow control, so an unread body
/// holds at most the receive window; a read that finds nothing waiting
/// drives the engine on the reading thread when no other thread does. A
/// read fails with an `io::Error` wrapping the request's [`Error`]
/// (`get_ref` and `downcast_ref` recover it; a deadline's kind is
/// `TimedOut`). Dropping the body before its end cancels the request and
/// closes its connection, which is never reused with unread bytes on it.
pub struct ResponseBody {
    id: RequestId,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    chunk: Bytes,
    chunk_len: usize,
    state: State,
    trailers: Option<HeaderMap>,
    upload: Option<Upload>,
    max_buffered_body: usize,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("id", &self.id)
            .field("done", &(self.state == State::Done))
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The request this body answers.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Trailers of a chunked body, once it has been read to its end.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Read the rest of the body into memory.
    ///
    /// # Errors
    /// [`Error::BodyTooLarge`] past the request's
    /// [`RequestOptions::max_buffered_body`](crate::RequestOptions::max_buffered_body) (the request is cancelled); the
    /// request's error.
    pub fn bytes(mut self) -> Result<Bytes, Error> {
        let mut all = BytesMut::new();
        loop {
            if !self.chunk.is_empty() {
                if all.len() + self.chunk.len() > self.max_buffered_body {
                    return Err(Error::BodyTooLarge {
                        limit: self.max_buffered_body,
                    });
                }
                all.extend_from_slice(&self.chunk);
                // Dropped, not cleared: see `read`.
                self.chunk = Bytes::new();
                self.consumed();
            }
            if self.state == State::Done {
                return Ok(all.freeze());
            }
            self.take_msg()?;
        }
    }

    /// The next message for this request, feeding the upload when asked;
    /// `None` when `until` passed first.
    fn next_msg(
        &mut self,
        until: Option<Instant>,
        mut held: Option<MutexGuard<'_, Core>>,
    ) -> Result<Option<Msg>, Error> {
        let key = Key::Req(self.id);
        loop {
            let mailbox = &self.mailbox;
            let quick = || mailbox.take();
            let take = |core: &mut Core| {
                let stopped = || core.stopping.then_some(Msg::Failed(Error::Shutdown));
                mailbox.take().or_else(stopped)
            };
            let msg = self.shared.wait(key, until, held.take(), quick, take);
            match msg {
                None => return Ok(None),
                Some(Msg::Wanted(limit)) => self.feed(limit)?,
                Some(msg) => return Ok(Some(msg)),
            }
        }
    }

    /// Wait for the next body chunk or the end.
    fn take_msg(&mut self) -> Result<(), Error> {
        match self.next_msg(None, None) {
            Ok(Some(Msg::Body(data))) => {
                self.chunk_len = data.len();
                self.chunk = data;
                // The end right behind it (a small body) is taken now, so
                // reading the chunk out need not tell the engine, whose
                // request is over, that it was consumed.
                let mut mail = self.mailbox.lock();
                if let Some(Msg::End(_)) = mail.msgs.front() {
                    if let Some(Msg::End(trailers)) = mail.msgs.pop_front() {
                        self.trailers = trailers;
                        self.state = State::Done;
                    }
                }
            }
            Ok(Some(Msg::End(trailers))) => {
                self.trailers = trailers;
                self.state = State::Done;
            }
            Ok(Some(Msg::Failed(e))) | Err(e) => {
                self.state = State::Done;
                return Err(e);
            }
            Ok(Some(Msg::Head(_) | Msg::Wanted(_)) | None) => {}
        }
        Ok(())
    }

    /// The chunk just read out: the engine may read that much more (once
    /// the body has ended, there is no more to read).
    fn consumed(&mut self) {
        if self.chunk_len > 0 && self.state == State::Open {
            let (id, n) = (self.id, self.chunk_len);
            self.chunk_len = 0;
            let shared = &self.shared;
            let mut core = shared.lock();
            core.engine.consume(id, n);
            core.kick(shared);
            shared.unlock(core);
        }
    }

    /// Hand the engine the reader's bytes up to `limit` (counted from the
    /// body's start; see [`Msg::Wanted`]). Pieces already sent count, so an
    /// ask that they cover sends nothing: the engine asks again once they
    /// are in. The reader runs without the client's mutex or the lead.
    fn feed(&mut self, mut limit: u64) -> Result<(), Error> {
        let Some(up) = self.upload.as_mut().filter(|u| !u.done) else {
            return Ok(());
        };
        let (id, shared, mailbox) = (self.id, &self.shared, &self.mailbox);
        // Each piece goes to the engine as soon as it is read, so a reader
        // that trickles (a live log) is sent as it comes, and the pieces
        // together fill the room the engine has.
        let mut left = usize::try_from(limit.saturating_sub(up.sent)).unwrap_or(usize::MAX);
        while left > 0 {
            let want = left.min(READ_PIECE);
            if up.scratch.len() < want {
                up.scratch.resize(want, 0);
            }
            let Some(buf) = up.scratch.get_mut(..want) else {
                return Ok(());
            };
            let n = match up.reader.read(buf) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let error = Error::BodySource {
                        reason: format!("reading the body failed: {e}"),
                        sent: up.sent,
                    };
                    up.done = true;
                    let mut core = shared.lock();
                    core.engine.cancel(id);
                    core.routes.remove(&id);
                    core.route(shared);
                    core.kick(shared);
                    shared.unlock(core);
                    self.state = State::Done;
                    return Err(error);
                }
            };
            let mut core = shared.lock();
            if core.stopping {
                shared.unlock(core);
                return Err(Error::Shutdown);
            }
            if n == 0 {
                up.done = true;
                // A failure ends the request with its own event.
                let _ = core.engine.end_body(id, None);
                core.route(shared);
                core.kick(shared);
                shared.unlock(core);
                return Ok(());
            }
            let piece = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            up.sent += n as u64;
            match core.engine.send_body(id, piece) {
                Ok(()) => {
                    if let Some(route) = core.routes.get_mut(&id) {
                        route.fed += n as u64;
                    }
                }
                // Never while the reader stays within the limits it is
                // given; a piece dropped would corrupt the body, so the
                // request ends, with the error that says why.
                Err(e @ Error::WindowFull { .. }) => {
                    log::error!("request {}: body piece past the window: {e}", id.0);
                    core.engine.abort(id, e);
                }
                // A failure ends the request with its own event.
                Err(e) => log::debug!("request {}: body piece not taken: {e}", id.0),
            }
            // Deadlines do not wait for this feed. The leader would run
            // them, but a reader of small pieces takes the mutex piece after
            // piece, and the mutex is not fair: the leader could wait for
            // it for seconds. So timers that are due run here.
            let now = Instant::now();
            if core.engine.next_timeout(now) == Some(Duration::ZERO) {
                core.engine.handle_timeouts(now);
            }
            core.route(shared);
            // Asks raised while this one was fed are newer, and the highest
            // is where this feed stops: the reader is asked for the window's
            // worth, not, ask by stale ask, for the few bytes each piece
            // freed (a silly window: pieces that shrink to tens of bytes,
            // each its own TLS record). Anything else for this request (its
            // head, its end) stops the feed, so the caller sees it now.
            let told = {
                let mut mail = mailbox.lock();
                while let Some(&Msg::Wanted(newer)) = mail.msgs.front() {
                    mail.msgs.pop_front();
                    limit = limit.max(newer);
                }
                !mail.msgs.is_empty()
            };
            left = usize::try_from(limit.saturating_sub(up.sent)).unwrap_or(usize::MAX);
            core.kick(shared);
            shared.unlock(core);
            if told {
                break;
            }
        }
        Ok(())
    }
}

impl Read for ResponseBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.chunk.is_empty() {
                let n = buf.len().min(self.chunk.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..n), self.chunk.get(..n)) {
                    to.copy_from_slice(from);
                }
                self.chunk.advance(n);
                if self.chunk.is_empty() {
                    // An empty `Bytes` still holds its share of the
                    // connection's read buffer: kept, the next read into
                    // that buffer would find it shared and allocate a new
                    // one (and grow it again record by record), and the
                    // old one would stay pinned until this chunk is
                    // replaced.
                    self.chunk = Bytes::new();
                    self.consumed();
                }
                return Ok(n);
            }
            if self.state == State::Done || buf.is_empty() {
                return Ok(0);
            }
            self.take_msg().map_err(into_io)?;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A closed mailbox: the request is over and out of the table.
        if self.mailbox.lock().closed {
            return;
        }
        let shared = &self.shared;
        let mut core = shared.lock();
        core.routes.remove(&self.id);
        if self.state == State::Open && !core.stopping {
            core.engine.cancel(self.id);
            core.route(shared);
            core.kick(shared);
        }
        shared.unlock(core);
    }
}

/// A request's error as an `io::Error` that carries it.
fn into_io(e: Error) -> io::Error {
    let kind = match e {
        Error::Timeout(_) => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Pending {
    /// The answer to come of request `id`.
    pub(super) fn new(body: ResponseBody) -> Pending {
        Pending { body: Some(body) }
    }
}

impl ResponseBody {
    /// The body of request `id`, its upload read from `reader` if it has
    /// one, and a whole-body read refused beyond `max_buffered_body`.
    pub(super) fn new(
        id: RequestId,
        shared: Arc<Shared>,
        mailbox: Arc<Mailbox>,
        reader: Option<Box<dyn Read + Send>>,
        max_buffered_body: usize,
    ) -> ResponseBody {
        ResponseBody {
            id,
            shared,
            mailbox,
            chunk: Bytes::new(),
            chunk_len: 0,
            state: State::Open,
            trailers: None,
            upload: reader.map(|reader| Upload {
                reader,
                sent: 0,
                done: false,
                scratch: Vec::new(),
            }),
            max_buffered_body,
        }
    }
}
