//! The chunked transfer coding decoder (RFC 9112 §7.1).
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The decoder is a small state machine fed from the front of the input:
//! framing bytes are consumed one at a time, chunk data is split off whole.
//! Only the trailer section is buffered, bounded by
//! [`Limits::max_trailer_bytes`](crate::Limits).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{Error, Limits};

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Some chunk data.
    Data(Bytes),
    /// The body ended, with its trailer fields if there were any.
    End(Option<HeaderMap>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// First hex digit of a chunk size.
    Start,
    /// Further hex digits.
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// A chunk extension: read and ignored up to CR.
    Ext,
    /// The LF ending the chunk-size line.
    SizeLf,
    /// Chunk data; `size` bytes remain.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The trailer section, buffered until the empty line.
    Trailer,
    /// Done; the end has been reported.
    Done,
}

/// Incremental decoder of one chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// The chunk size being read, then the chunk data still to come.
    size: u64,
    /// Bytes of the current chunk-size line so far.
    line: usize,
    trailer: Vec<u8>,
    limits: Limits,
}

impl ChunkedDecoder {
    pub(crate) fn new(limits: Limits) -> Self {
        ChunkedDecoder {
            state: State::Start,
            size: 0,
            line: 0,
            trailer: Vec::new(),
            limits,
        }
    }

    /// Consume from the front of `input`; `Ok(None)` means more input is needed.
    /// After `End` has been returned, returns `Ok(None)` without consuming.
    pub(crate) fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Chunk>, Error> {
        loop {
            match self.state {
                State::Data if self.size == 0 => self.state = State::DataCr,
                State::Data => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = input
                        .len()
                        .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= n as u64;
                    return Ok(Some(Chunk::Data(input.split_to(n).freeze())));
                }
                State::Done => return Ok(None),
                _ => {
                    let Some(&byte) = input.first() else {
                        return Ok(None);
                    };
                    input.advance(1);
                    if let Some(end) = self.step(byte)? {
                        return Ok(Some(end));
                    }
                }
            }
        }
    }

    /// Advance over one framing byte; returns the end of the body when reached.
    fn step(&mut self, byte: u8) -> Result<Option<Chunk>, Error> {
        let invalid = |reason| Err(Error::InvalidChunk { reason });
        if matches!(
            self.state,
            State::Start | State::Size | State::SizeWs | State::Ext | State::SizeLf
        ) {
            self.line += 1;
            if self.line > self.limits.max_chunk_line {
                return Err(Error::ChunkLineTooLong {
                    limit: self.limits.max_chunk_line,
                });
            }
        }
        self.state = match (self.state, byte) {
            (State::Start | State::Size, _) if byte.is_ascii_hexdigit() => {
                let digit = (byte as char).to_digit(16).map_or(0, u64::from);
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(digit))
                    .ok_or(Error::ChunkSizeOverflow)?;
                State::Size
            }
            (State::Start, _) => return invalid("chunk size is not a hex number"),
            (State::Size | State::SizeWs, b' ' | b'\t') => State::SizeWs,
            (State::Size | State::SizeWs, b';') => State::Ext,
            (State::Size | State::SizeWs | State::Ext, b'\r') => State::SizeLf,
            (State::Size | State::SizeWs, _) => return invalid("invalid byte after chunk size"),
            (State::Ext, b'\t') => State::Ext,
            (State::Ext, _) if byte < 0x20 || byte == 0x7f => {
                return invalid("control character in chunk extension")
            }
            (State::Ext, _) => State::Ext,
            (State::SizeLf, b'\n') if self.size == 0 => State::Trailer,
            (State::SizeLf, b'\n') => State::Data,
            (State::SizeLf, _) => return invalid("chunk-size line not ended by CRLF"),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.line = 0;
                State::Start
            }
            (State::DataCr | State::DataLf, _) => {
                return invalid("chunk data not followed by CRLF")
            }
            (State::Trailer, _) => return self.trailer_byte(byte),
            (State::Data | State::Done, _) => return invalid("decoder stepped outside framing"),
        };
        Ok(None)
    }

    /// Buffer one byte of the trailer section; parse it at the empty line.
    fn trailer_byte(&mut self, byte: u8) -> Result<Option<Chunk>, Error> {
        if self.trailer.len() >= self.limits.max_trailer_bytes {
            return Err(Error::TrailersTooLarge {
                limit: self.limits.max_trailer_bytes,
            });
        }
        if byte == b'\n' && self.trailer.last() != Some(&b'\r') {
            return Err(Error::InvalidTrailers {
                reason: "line not ended by CRLF",
            });
        }
        self.trailer.push(byte);
        let trailers = match &self.trailer[..] {
            b"\r\n" => None,
            t if t.ends_with(b"\r\n\r\n") => Some(parse_trailers(t, self.limits.max_headers)?),
            _ => return Ok(None),
        };
        self.trailer = Vec::new();
        self.state = State::Done;
        Ok(Some(Chunk::End(trailers)))
    }

    /// A lower bound on the bytes still needed to complete the body, for
    /// reporting a truncated body.
    pub(crate) fn min_remaining(&self) -> u64 {
        const LAST_CHUNK: u64 = b"0\r\n\r\n".len() as u64;
        let after_data = |size: u64| size.saturating_add(2 + LAST_CHUNK);
        match self.state {
            State::Start => LAST_CHUNK,
            // A zero size so far may still be the last chunk: CRLF CRLF.
            State::Size | State::SizeWs | State::Ext if self.size == 0 => 4,
            State::Size | State::SizeWs | State::Ext => after_data(self.size).saturating_add(2),
            State::SizeLf if self.size == 0 => 3,
            State::SizeLf => after_data(self.size).saturating_add(1),
            State::Data => after_data(self.size),
            State::DataCr => after_data(0),
            State::DataLf => after_data(0) - 1,
            State::Trailer => match &self.trailer[..] {
                [] => 2,
                [b'\r'] => 1,
                t if t.ends_with(b"\r\n\r") => 1,
                t if t.ends_with(b"\r\n") => 2,
                t if t.ends_with(b"\r") => 3,
                _ => 4,
            },
            State::Done => 0,
        }
    }
}

/// Parse a complete trailer section (fields, then the empty line).
fn parse_trailers(section: &[u8], max_fields: usize) -> Result<HeaderMap, Error> {
    let invalid = |reason| Error::InvalidTrailers { reason };
    let mut fields = vec![httparse::EMPTY_HEADER; max_fields];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete trailer section")),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many trailer fields")),
        Err(_) => return Err(invalid("malformed trailer field")),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        match (name, value) {
            (Ok(name), Ok(value)) => trailers.append(name, value),
            _ => return Err(invalid("malformed trailer field")),
        };
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `step` bytes: body, trailers, or error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(chunk) = decoder.decode(&mut buf)? {
                match chunk {
                    Chunk::Data(data) => body.extend_from_slice(&data),
                    Chunk::End(trailers) => return Ok((body, trailers)),
                }
            }
        }
        Err(Error::TruncatedBody {
            missing: decoder.min_remaining(),
            exact: false,
        })
    }

    /// Decode whole, then split at every byte ("shotgun"); all must agree.
    fn decode(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let whole = decode_in_steps(input, input.len());
        for step in 1..input.len() {
            assert_eq!(decode_in_steps(input, step), whole, "step {step} differs");
        }
        whole
    }

    fn body(input: &[u8]) -> Result<Vec<u8>, Error> {
        decode(input).map(|(body, _)| body)
    }

    macro_rules! chunked_cases {
        ($($name:ident: $input:expr => $expect:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(body($input), $expect);
            }
        )*};
    }

    fn bad(reason: &'static str) -> Result<Vec<u8>, Error> {
        Err(Error::InvalidChunk { reason })
    }

    chunked_cases! {
        chunked_single_chunk: b"5\r\nhello\r\n0\r\n\r\n" => Ok(b"hello".to_vec());
        chunked_several_chunks_concatenate: b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" => Ok(b"abcde".to_vec());
        chunked_empty_body: b"0\r\n\r\n" => Ok(vec![]);
        chunked_hex_size_is_case_insensitive: b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n"
            => Ok(b"01234567890123456789".to_vec());
        chunked_leading_zeros_are_accepted: b"0003\r\nabc\r\n000\r\n\r\n" => Ok(b"abc".to_vec());
        chunked_extensions_are_ignored: b"3;name=val;x=\"q;d\"\r\nabc\r\n0;last\r\n\r\n"
            => Ok(b"abc".to_vec());
        chunked_whitespace_before_extension_is_tolerated: b"3 \t;ext\r\nabc\r\n0 \r\n\r\n"
            => Ok(b"abc".to_vec());
        chunked_data_may_contain_crlf: b"4\r\n\r\n\r\n\r\n0\r\n\r\n" => Ok(b"\r\n\r\n".to_vec());
        chunked_size_overflow_is_refused: b"10000000000000000\r\n" => Err(Error::ChunkSizeOverflow);
        chunked_largest_size_does_not_overflow: b"ffffffffffffffff\r\nab"
            => Err(Error::TruncatedBody { missing: u64::MAX, exact: false });
        chunked_missing_size_is_refused: b"\r\nabc\r\n0\r\n\r\n" => bad("chunk size is not a hex number");
        chunked_non_hex_size_is_refused: b"xyz\r\n" => bad("chunk size is not a hex number");
        chunked_signed_size_is_refused: b"+5\r\nhello\r\n0\r\n\r\n" => bad("chunk size is not a hex number");
        chunked_junk_after_size_is_refused: b"5x\r\nhello\r\n" => bad("invalid byte after chunk size");
        chunked_bare_lf_after_size_is_refused: b"5\nhello\r\n0\r\n\r\n" => bad("invalid byte after chunk size");
        chunked_cr_without_lf_is_refused: b"5\rhello" => bad("chunk-size line not ended by CRLF");
        chunked_lf_in_extension_is_refused: b"5;a\nb\r\nhello\r\n" => bad("control character in chunk extension");
        chunked_data_longer_than_size_is_refused: b"3\r\nabcd\r\n0\r\n\r\n" => bad("chunk data not followed by CRLF");
        chunked_data_without_crlf_is_refused: b"3\r\nabc0\r\n\r\n" => bad("chunk data not followed by CRLF");
        chunked_truncated_in_data_reports_missing_lower_bound: b"a\r\nabc"
            => Err(Error::TruncatedBody { missing: 7 + 2 + 5, exact: false });
        chunked_truncated_before_last_chunk: b"3\r\nabc\r\n" => Err(Error::TruncatedBody { missing: 5, exact: false });
        chunked_truncated_in_trailers: b"0\r\nx: y\r\n" => Err(Error::TruncatedBody { missing: 2, exact: false });
        chunked_trailer_with_bare_lf_is_refused: b"0\r\nx: y\n\n"
            => Err(Error::InvalidTrailers { reason: "line not ended by CRLF" });
        chunked_malformed_trailer_is_refused: b"0\r\nno colon\r\n\r\n"
            => Err(Error::InvalidTrailers { reason: "malformed trailer field" });
        chunked_folded_trailer_is_refused: b"0\r\nx: a\r\n b\r\n\r\n"
            => Err(Error::InvalidTrailers { reason: "malformed trailer field" });
    }

    #[test]
    fn chunked_trailers_are_surfaced() {
        let (body, trailers) =
            decode(b"2\r\nok\r\n0\r\nExpires: never\r\nx-sum: 42\r\n\r\n").expect("valid body");
        assert_eq!(body, b"ok");
        let trailers = trailers.expect("trailers present");
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers["expires"], "never");
        assert_eq!(trailers["x-sum"], "42");
    }

    #[test]
    fn chunked_without_trailers_reports_none() {
        assert_eq!(decode(b"0\r\n\r\n"), Ok((vec![], None)));
    }

    #[test]
    fn chunked_size_line_is_bounded() {
        let limits = Limits {
            max_chunk_line: 8,
            ..Limits::default()
        };
        let mut decoder = ChunkedDecoder::new(limits);
        let mut input = BytesMut::from(&b"1;abcd\r\nx\r\n0;abcdefgh\r\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Some(Chunk::Data(Bytes::from_static(b"x"))))
        );
        assert_eq!(
            decoder.decode(&mut input),
            Err(Error::ChunkLineTooLong { limit: 8 })
        );
    }

    #[test]
    fn chunked_trailers_are_bounded_in_bytes_and_fields() {
        let limits = Limits {
            max_trailer_bytes: 10,
            ..Limits::default()
        };
        let mut decoder = ChunkedDecoder::new(limits);
        let mut input = BytesMut::from(&b"0\r\nx-long: 0123456789\r\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut input),
            Err(Error::TrailersTooLarge { limit: 10 })
        );

        let limits = Limits {
            max_headers: 1,
            ..Limits::default()
        };
        let mut decoder = ChunkedDecoder::new(limits);
        let mut input = BytesMut::from(&b"0\r\na: 1\r\nb: 2\r\n\r\n"[..]);
        let err = Error::InvalidTrailers {
            reason: "too many trailer fields",
        };
        assert_eq!(decoder.decode(&mut input), Err(err));
    }

    #[test]
    fn chunked_stops_at_the_end_and_leaves_the_rest() {
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let mut input = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(decoder.decode(&mut input), Ok(Some(Chunk::End(None))));
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(&input[..], b"HTTP/1.1");
    }

    #[test]
    fn chunked_data_is_handed_out_as_it_arrives() {
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let mut input = BytesMut::from(&b"10\r\nabc"[..]);
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Some(Chunk::Data(Bytes::from_static(b"abc"))))
        );
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.min_remaining(), 13 + 2 + 5);
    }
}
