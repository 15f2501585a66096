//! The codec's error type: one variant per failure class.

use std::fmt;

use crate::State;

/// Everything that can go wrong in the codec.
///
/// Errors are sticky: once a [`Codec`](crate::Codec) method has returned an
/// error, every later call returns the same error and the state is
/// [`State::Closed`]. The connection must not carry another request.
///
/// Variants fall into three groups: misuse by the caller (`InvalidState`,
/// `InvalidRequestHeader`, `MissingAuthority`, `RequestBodyTooLong`,
/// `RequestBodyTooShort`), a malformed or over-limit response from the peer
/// (everything from `HeadTooLarge` to `UnsolicitedData`), and the peer closing
/// the connection too early (`ClosedBeforeResponse`, `IncompleteHead`,
/// `TruncatedBody`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A method was called in a state that does not allow it, e.g. a second
    /// request while one is in flight, or `send_body` outside a streamed request.
    InvalidState {
        /// The method that was called.
        operation: &'static str,
        /// The state the codec was in.
        state: State,
    },
    /// A request header would break the message framing: its name is not a
    /// token, or its value contains CR, LF or NUL. Nothing was written.
    InvalidRequestHeader {
        /// The header name (lossily decoded).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An absolute-form request target was asked for but the URI has no
    /// scheme or no authority, or a `CONNECT` URI has no authority. Nothing
    /// was written.
    MissingAuthority,
    /// `send_body` was given more bytes than the declared Content-Length.
    /// Nothing of that call was written.
    RequestBodyTooLong {
        /// The declared length.
        declared: u64,
    },
    /// `end_body` was called before the declared Content-Length was sent.
    RequestBodyTooShort {
        /// The declared length.
        declared: u64,
        /// How many bytes were still owed.
        missing: u64,
    },
    /// The peer sent a response head larger than [`Limits::max_head_bytes`](crate::Limits).
    HeadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent more header fields than [`Limits::max_headers`](crate::Limits).
    TooManyHeaders {
        /// The limit in fields.
        limit: usize,
    },
    /// The peer sent a response head that does not parse (status line,
    /// header syntax, version or status code).
    InvalidHead {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The peer switched protocols (`101`, or `2xx` to `CONNECT`); the codec
    /// does not support upgrades or tunnels. The head has been consumed from
    /// the input, so bytes of the new protocol are left there for a caller
    /// that wants to take the connection over.
    UnsupportedUpgrade {
        /// The response status code.
        status: u16,
    },
    /// The peer sent a Content-Length that is not a plain decimal number
    /// fitting in 64 bits.
    InvalidContentLength,
    /// The peer sent several Content-Length values that disagree.
    ConflictingContentLength {
        /// The first value seen.
        first: u64,
        /// A later, different value.
        second: u64,
    },
    /// The peer sent Transfer-Encoding in an HTTP/1.0 response, whose framing
    /// therefore cannot be trusted (RFC 9112 §6.1).
    TransferEncodingInHttp10,
    /// The peer applied a transfer coding other than one `chunked`
    /// (`gzip, chunked`, `chunked, gzip`, a coding the codec does not know,
    /// or `chunked` twice). The codec sends no `TE` field, so the server may
    /// use nothing but chunked (RFC 9112 §7.4); the body is refused rather
    /// than handed over still encoded.
    UnsupportedTransferCoding {
        /// The first coding that cannot be undone (lowercase, at most 64
        /// bytes of it).
        coding: String,
    },
    /// The peer sent a malformed chunked body.
    InvalidChunk {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The peer sent a chunk size that does not fit in 64 bits.
    ChunkSizeOverflow,
    /// The peer sent a chunk-size line (with extensions) longer than
    /// [`Limits::max_chunk_line`](crate::Limits).
    ChunkLineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent a trailer section larger than
    /// [`Limits::max_trailer_bytes`](crate::Limits).
    TrailersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent a trailer section that does not parse, or with more
    /// fields than [`Limits::max_headers`](crate::Limits).
    InvalidTrailers {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The peer sent bytes while no response was expected (before a request,
    /// or after the response ended).
    UnsolicitedData,
    /// The peer closed the connection before sending any byte of the response.
    /// On a reused connection this usually means the server had already
    /// dropped it as idle.
    ClosedBeforeResponse,
    /// The peer closed the connection in the middle of the response head.
    IncompleteHead,
    /// The peer closed the connection before the body was complete.
    TruncatedBody {
        /// Bytes still missing: exact for a Content-Length body, a lower
        /// bound for a chunked one (see `exact`).
        missing: u64,
        /// Whether `missing` is exact (Content-Length) or a lower bound (chunked).
        exact: bool,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidState { operation, state } => {
                write!(f, "`{operation}` is not allowed in state {state:?}")
            }
            Error::InvalidRequestHeader { name, reason } => {
                write!(f, "request header `{name}` refused: {reason}")
            }
            Error::MissingAuthority => {
                f.write_str("absolute-form request target needs a URI with scheme and authority")
            }
            Error::RequestBodyTooLong { declared } => {
                write!(f, "request body longer than its declared length of {declared} bytes")
            }
            Error::RequestBodyTooShort { declared, missing } => write!(
                f,
                "request body ended {missing} bytes short of its declared length of {declared} bytes"
            ),
            Error::HeadTooLarge { limit } => {
                write!(f, "response head larger than the limit of {limit} bytes")
            }
            Error::TooManyHeaders { limit } => {
                write!(f, "response has more than the limit of {limit} header fields")
            }
            Error::InvalidHead { reason } => write!(f, "malformed response head: {reason}"),
            Error::UnsupportedUpgrade { status } => {
                write!(f, "response {status} switches protocols, which is not supported")
            }
            Error::InvalidContentLength => f.write_str("response has an invalid content-length"),
            Error::ConflictingContentLength { first, second } => write!(
                f,
                "response has conflicting content-length values {first} and {second}"
            ),
            Error::TransferEncodingInHttp10 => {
                f.write_str("http/1.0 response carries transfer-encoding")
            }
            Error::UnsupportedTransferCoding { coding } => write!(
                f,
                "response uses the transfer coding `{coding}`, which is not supported \
                 (only chunked, once: no TE was sent)"
            ),
            Error::InvalidChunk { reason } => write!(f, "malformed chunked body: {reason}"),
            Error::ChunkSizeOverflow => f.write_str("chunk size does not fit in 64 bits"),
            Error::ChunkLineTooLong { limit } => {
                write!(f, "chunk-size line longer than the limit of {limit} bytes")
            }
            Error::TrailersTooLarge { limit } => {
                write!(f, "trailer section larger than the limit of {limit} bytes")
            }
            Error::InvalidTrailers { reason } => write!(f, "malformed trailer section: {reason}"),
            Error::UnsolicitedData => f.write_str("peer sent data while no response was expected"),
            Error::ClosedBeforeResponse => {
                f.write_str("connection closed before any byte of the response")
            }
            Error::IncompleteHead => f.write_str("connection closed inside the response head"),
            Error::TruncatedBody { missing, exact } => {
                let bound = if *exact { "" } else { "at least " };
                write!(f, "connection closed with {bound}{missing} bytes of the body missing")
            }
        }
    }
}

impl std::error::Error for Error {}
