//! Request bodies sent in pieces: a file, a reader, bytes after `100
//! Continue`, or a stream the host feeds ([`Upload`]); the send window; and
//! where the upload stands ([`UploadStage`]).
//!
//! An in-memory body without `Expect` goes out with its head in one write;
//! every other body is an `Upload` that the engine moves into its
//! connection a window at a time ([`Upload::refill`]), only when everything
//! before it has reached the socket. So one request never holds more than
//! its window in the engine, whatever the body's size. Pure: it knows the
//! body, the codec and a buffer to write into, nothing of the engine.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use rotary_proto::Codec;

use crate::body::{FileCursor, Kind};
use crate::error::Error;
use crate::Body;

/// The smallest window used, whatever the options say.
const MIN_WINDOW: usize = 1024;

/// Body bytes one drive moves before the loop turns to other connections.
pub(super) const PUMP_BUDGET: usize = 1024 * 1024;

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
    sent: u64,
    stage: UploadStage,
    /// Sent with `Expect: 100-continue`.
    expect: bool,
}

/// What one refill did.
pub(super) enum Refill {
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
    pub(super) fn refill(
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
    pub(super) fn wants(&mut self, window: usize) -> Option<usize> {
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

/// The send window a request's options give (never below [`MIN_WINDOW`]).
pub(super) fn window(opts: &crate::RequestOptions) -> usize {
    opts.send_window.max(MIN_WINDOW)
}

impl Upload {
    /// Body bytes handed to the codec on the current connection.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    pub(super) fn stage(&self) -> UploadStage {
        self.stage
    }

    /// Its head is written: the body goes out now (`false`), or after `100
    /// Continue` (`true`, when it was sent with `Expect`).
    pub(super) fn start(&mut self) -> bool {
        if self.expect {
            self.stage = UploadStage::Continue;
        } else {
            self.stage = UploadStage::Sending;
        }
        self.expect
    }

    /// `100 Continue` came (or the wait for it ended): true when the body
    /// starts going out now.
    pub(super) fn go_on(&mut self) -> bool {
        if self.stage == UploadStage::Continue {
            self.stage = UploadStage::Sending;
            return true;
        }
        false
    }

    /// A final response came before the body was all sent: no more of it
    /// goes. True when it was unsent or going out.
    pub(super) fn stop(&mut self) -> bool {
        if matches!(self.stage, UploadStage::Continue | UploadStage::Sending) {
            self.stage = UploadStage::Stopped;
            return true;
        }
        false
    }

    /// The last piece is in the codec.
    pub(super) fn finished(&mut self) {
        self.stage = UploadStage::Done;
    }

    /// The host's feed, for a [`Body::stream`].
    fn feed_mut(&mut self) -> Option<&mut Feed> {
        match &mut self.source {
            Source::Feed(feed) => Some(feed),
            _ => None,
        }
    }

    /// Is it a body the host feeds?
    pub(super) fn is_fed(&self) -> bool {
        matches!(self.source, Source::Feed(_))
    }

    /// Take a chunk the host fed, within `window`.
    ///
    /// # Errors
    /// [`Error::NotFeeding`] after the body was ended (nothing changes);
    /// [`Error::WindowFull`] when it does not fit (it is not taken);
    /// [`Error::BodySource`] when it passes the declared length (the
    /// request must fail: `Fed::Failed`).
    pub(super) fn feed(&mut self, id: crate::RequestId, data: Bytes, window: usize) -> Fed {
        let sent = self.sent;
        let Some(feed) = self.feed_mut() else {
            return Fed::Refused(no_stream(id));
        };
        if feed.ended {
            return Fed::Refused(Error::NotFeeding(id));
        }
        if data.is_empty() {
            return Fed::Taken;
        }
        if feed.queued + data.len() > window {
            return Fed::Refused(Error::WindowFull { window });
        }
        let fed = feed.fed + data.len() as u64;
        if let Some(declared) = feed.declared.filter(|&d| fed > d) {
            let reason = format!("{fed} bytes fed for a body declared as {declared} bytes");
            return Fed::Failed(source_error(reason, sent));
        }
        feed.fed = fed;
        feed.queued += data.len();
        feed.queue.push_back(data);
        feed.asked = false;
        Fed::Taken
    }

    /// End a fed body, with trailers for a chunked one.
    pub(super) fn end_feed(&mut self, id: crate::RequestId, trailers: Option<HeaderMap>) -> Fed {
        let sent = self.sent;
        let Some(feed) = self.feed_mut() else {
            return Fed::Refused(no_stream(id));
        };
        if feed.ended {
            return Fed::Taken;
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
                return Fed::Failed(source_error(reason, sent));
            }
        }
        feed.ended = true;
        feed.trailers = trailers;
        Fed::Taken
    }

    /// A `BodyWanted { room }` is being handed to the host: the room as of
    /// now, since the host may have fed chunks after it was raised. `None`:
    /// drop it, the window is full or the body ended; the next ask comes
    /// when the queue drains. A body the host does not feed keeps `room`.
    pub(super) fn room_now(&mut self, room: usize, window: usize) -> Option<usize> {
        let Some(feed) = self.feed_mut() else {
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

/// What became of a chunk (or the end) the host fed.
pub(super) enum Fed {
    Taken,
    /// Not taken; the request goes on.
    Refused(Error),
    /// The request fails with this.
    Failed(Error),
}

/// The error for feeding request `id`, which has no fed body.
pub(super) fn no_stream(id: crate::RequestId) -> Error {
    Error::NotFeeding(id)
}
