//! Request bodies: bytes in memory, a file, or a stream the host feeds.
//!
//! A body is a *source*: the engine pulls at most a window of it into memory
//! at a time ([`RequestOptions::send_window`](crate::RequestOptions::send_window)),
//! so a multi-GiB upload costs the same memory as a small one.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

/// The body of a request, given to [`Engine::submit`](crate::Engine::submit)
/// as `http::Request<Body>` (or anything that converts: `Bytes`, `Vec<u8>`,
/// `String`, `&'static str`, `()`).
///
/// | source | framing | replayable (retries, 307/308) |
/// |---|---|---|
/// | [`Body::from`] bytes | `Content-Length` | yes |
/// | [`Body::file`], [`Body::from_file`] | `Content-Length` (the length when opened) | yes, by seeking back |
/// | [`Body::stream`] | `Content-Length` when given, else chunked (with optional trailers) | no |
/// | [`Body::reader`] | as [`Body::stream`] | no |
///
/// A non-replayable body is never retried and a 307/308 redirect of it ends
/// with [`RedirectError::BodyNotReplayable`](crate::RedirectError::BodyNotReplayable).
#[derive(Debug, Default)]
pub struct Body {
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Bytes(Bytes),
    /// A file read from `start`, `len` bytes (its length when opened).
    File {
        file: File,
        start: u64,
        len: u64,
    },
    /// Fed by the host through [`Engine::send_body`](crate::Engine::send_body).
    Stream {
        len: Option<u64>,
    },
    /// Read in pieces as the connection takes them; `None` once an upload
    /// has taken the reader.
    Reader {
        reader: Option<Box<dyn Read + Send>>,
        len: Option<u64>,
    },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Kind::File { start, len, .. } => f
                .debug_struct("File")
                .field("start", start)
                .field("len", len)
                .finish_non_exhaustive(),
            Kind::Stream { len } => f.debug_struct("Stream").field("len", len).finish(),
            Kind::Reader { len, .. } => f
                .debug_struct("Reader")
                .field("len", len)
                .finish_non_exhaustive(),
        }
    }
}

impl Default for Kind {
    fn default() -> Self {
        Kind::Bytes(Bytes::new())
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::default()
    }

    /// The file at `path`, sent from its start with its current length as
    /// `Content-Length`. It is read in pieces as the connection takes them; a
    /// file that shrinks meanwhile fails the request with
    /// [`Error::BodySource`](crate::Error::BodySource).
    ///
    /// # Errors
    /// The error of opening the file or reading its length.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Body> {
        Body::from_file(File::open(path)?)
    }

    /// An open file, sent from its current position to its end (the length
    /// known now is the `Content-Length`). A retry or redirect seeks back to
    /// that position.
    ///
    /// # Errors
    /// The error of reading the file's length or position.
    pub fn from_file(mut file: File) -> io::Result<Body> {
        let start = file.stream_position()?;
        let end = file.metadata()?.len();
        Ok(Body {
            kind: Kind::File {
                file,
                start,
                len: end.saturating_sub(start),
            },
        })
    }

    /// A body the host feeds: after submitting, it hands chunks to
    /// [`Engine::send_body`](crate::Engine::send_body) (or
    /// [`Handle::send_body`](crate::Handle::send_body)) as
    /// [`Event::BodyWanted`](crate::Event::BodyWanted) asks for them, then
    /// ends it with [`Engine::end_body`](crate::Engine::end_body). With a
    /// `length` it is sent with `Content-Length` (and ending short of it,
    /// or feeding more, fails the request); without one it is chunked.
    pub fn stream(length: Option<u64>) -> Body {
        Body {
            kind: Kind::Stream { len: length },
        }
    }

    /// A body read from `reader` in pieces of at most the send window, on
    /// the thread that drives the request: with a [`Client`](crate::Client),
    /// the thread that called `send` (so a slow reader, such as a child
    /// process's pipe, holds up only its own request); with an
    /// [`Engine`](crate::Engine), the engine's thread as the connection takes
    /// the bytes, so give an engine readers that do not block for long (or
    /// feed a [`Body::stream`] yourself). With a `length` it is sent with
    /// `Content-Length`, and a reader that ends short of it, or has more,
    /// fails the request with [`Error::BodySource`](crate::Error::BodySource);
    /// without one it is chunked. Not replayable: never retried.
    pub fn reader(reader: impl Read + Send + 'static, length: Option<u64>) -> Body {
        Body {
            kind: Kind::Reader {
                reader: Some(Box::new(reader)),
                len: length,
            },
        }
    }

    /// The body's length, when known before it is sent.
    pub fn len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Bytes(b) => Some(b.len() as u64),
            Kind::File { len, .. } => Some(*len),
            Kind::Stream { len } | Kind::Reader { len, .. } => *len,
        }
    }

    /// True for a body known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Can it be sent again (after a retry or a 307/308 redirect)?
    pub fn is_replayable(&self) -> bool {
        !matches!(self.kind, Kind::Stream { .. } | Kind::Reader { .. })
    }

    /// The bytes of an in-memory body.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A second handle on the same content, for a replay; `None` when the
    /// body is not replayable (or the file cannot be duplicated).
    pub(crate) fn try_clone(&self) -> Option<Body> {
        let kind = match &self.kind {
            Kind::Bytes(b) => Kind::Bytes(b.clone()),
            Kind::File { file, start, len } => Kind::File {
                file: file.try_clone().ok()?,
                start: *start,
                len: *len,
            },
            Kind::Stream { .. } | Kind::Reader { .. } => return None,
        };
        Some(Body { kind })
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body {
            kind: Kind::Bytes(b),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from(Bytes::from(v))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Body {
        Body::from(Bytes::from_static(s))
    }
}

impl From<()> for Body {
    fn from(_: ()) -> Body {
        Body::empty()
    }
}

/// Where a file body is: reading it on from `pos` towards `start + len`.
pub(crate) struct FileCursor {
    pub(crate) file: File,
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) pos: u64,
}

impl FileCursor {
    /// Bytes still to send.
    pub(crate) fn left(&self) -> u64 {
        self.len - self.pos.min(self.len)
    }

    /// Seek to the body's start (a new attempt sends it from the top).
    pub(crate) fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.start))?;
        self.pos = 0;
        Ok(())
    }

    /// Read the next piece into `buf` (at most what is left). `Ok(0)` before
    /// the end means the file shrank.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left()).unwrap_or(usize::MAX));
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        loop {
            match self.file.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
