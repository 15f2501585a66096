//! Response body framing: RFC 9112 §6.3 and the body decoders it selects.

use bytes::BytesMut;
use http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Version};

use crate::chunked::{Chunk, ChunkedDecoder};
use crate::keepalive::{parse_decimal, trim};
use crate::{Error, Limits, ResponseHead};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// Exactly this many bytes (0 for responses without content).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    CloseDelimited,
}

/// The body length of a response, and whether its framing was ambiguous
/// (Transfer-Encoding and Content-Length together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) length: BodyLength,
    pub(crate) ambiguous: bool,
}

/// RFC 9112 §6.3, "Message Body Length", for a response to `method`.
pub(crate) fn body_length(method: &Method, head: &ResponseHead) -> Result<Framing, Error> {
    let status = head.status;
    let unambiguous = |length| {
        Ok(Framing {
            length,
            ambiguous: false,
        })
    };

    // 1. Any response to a HEAD request and any response with a 1xx, 204 or
    //    304 status code ends at the empty line after the header fields.
    if *method == Method::HEAD
        || status.is_informational()
        || status.as_u16() == 204
        || status.as_u16() == 304
    {
        return unambiguous(BodyLength::Length(0));
    }

    // 2. A 2xx response to CONNECT turns the connection into a tunnel, which
    //    this codec does not carry (the codec stops before asking, see
    //    `State::Tunnel`).
    if *method == Method::CONNECT && status.is_success() {
        return Err(Error::UnsupportedUpgrade {
            status: status.as_u16(),
        });
    }

    let headers = &head.headers;
    if headers.contains_key(TRANSFER_ENCODING) {
        // §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        if head.version == Version::HTTP_10 {
            return Err(Error::TransferEncodingInHttp10);
        }
        // 3. Transfer-Encoding and Content-Length together: Transfer-Encoding
        //    overrides, and the connection is not reused (possible smuggling).
        let ambiguous = headers.contains_key(CONTENT_LENGTH);
        // 4. Chunked as the final coding delimits the body. Any other coding
        //    (`gzip, chunked`, `chunked, gzip`, one we do not know) would
        //    leave its encoding on the bytes handed over as the body: the
        //    codec sends no `TE`, so a server may apply nothing but chunked
        //    (RFC 9112 §7.4), and a response that does is refused by name
        //    rather than delivered still encoded. With no coding named at
        //    all (an empty field) nothing is encoded: step 4's close-
        //    delimited reading applies.
        let length = match codings(headers)? {
            Codings::Chunked => BodyLength::Chunked,
            Codings::None => BodyLength::CloseDelimited,
        };
        return Ok(Framing { length, ambiguous });
    }

    // 5. An invalid Content-Length is an unrecoverable error.
    // 6. A valid one gives the body length.
    if let Some(length) = content_length(headers)? {
        return unambiguous(BodyLength::Length(length));
    }

    // 7. (Requests without either header have no body; not for a client.)
    // 8. Otherwise, the response body is read until the connection closes.
    unambiguous(BodyLength::CloseDelimited)
}

/// What a response's Transfer-Encoding fields list, once it is known to
/// hold nothing the codec cannot undo.
enum Codings {
    /// Exactly one coding, `chunked`.
    Chunked,
    /// No coding at all (empty fields or list elements only).
    None,
}

/// The transfer codings of a response (every Transfer-Encoding field, in
/// order, as one list; empty elements skipped, parameters ignored). Only a
/// single `chunked` can be undone.
///
/// # Errors
/// [`Error::UnsupportedTransferCoding`] naming the first other coding, or
/// `chunked` when it is applied twice (RFC 9112 §7: a sender must not).
fn codings(headers: &HeaderMap) -> Result<Codings, Error> {
    let mut chunked = false;
    let names = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|coding| trim(coding.split(|&b| b == b';').next().unwrap_or_default()))
        .filter(|name| !name.is_empty());
    for name in names {
        if name.eq_ignore_ascii_case(b"chunked") && !chunked {
            chunked = true;
        } else {
            return Err(Error::UnsupportedTransferCoding {
                coding: coding_name(name),
            });
        }
    }
    Ok(if chunked {
        Codings::Chunked
    } else {
        Codings::None
    })
}

/// A coding's name for an error: lossy, lowercase and at most 64 bytes, so a
/// peer's header cannot make the message long.
fn coding_name(raw: &[u8]) -> String {
    const MAX: usize = 64;
    let mut name = String::from_utf8_lossy(&raw[..raw.len().min(MAX)]).to_ascii_lowercase();
    if raw.len() > MAX {
        name.push('…');
    }
    name
}

/// The Content-Length, if any. Repeated fields and comma-separated lists are
/// accepted when every value is the same decimal number (RFC 9110 §8.6).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    let values = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','));
    for value in values {
        let n = parse_decimal(trim(value)).ok_or(Error::InvalidContentLength)?;
        match length {
            Some(first) if first != n => {
                return Err(Error::ConflictingContentLength { first, second: n })
            }
            _ => length = Some(n),
        }
    }
    Ok(length)
}

/// What a body decoder produced.
#[derive(Debug)]
pub(crate) enum Decoded {
    Data(bytes::Bytes),
    End(Option<HeaderMap>),
}

/// Decoder of one response body.
#[derive(Debug)]
pub(crate) enum BodyDecoder {
    /// This many bytes remain.
    Length(u64),
    Chunked(ChunkedDecoder),
    CloseDelimited,
}

impl BodyDecoder {
    pub(crate) fn new(length: BodyLength, limits: Limits) -> Self {
        match length {
            BodyLength::Length(n) => BodyDecoder::Length(n),
            BodyLength::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(limits)),
            BodyLength::CloseDelimited => BodyDecoder::CloseDelimited,
        }
    }

    /// Hand out body bytes from the front of `input` as soon as they arrive.
    /// A close-delimited body never ends here; see [`BodyDecoder::eof`].
    pub(crate) fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        match self {
            BodyDecoder::Length(0) => Ok(Some(Decoded::End(None))),
            BodyDecoder::Length(remaining) => {
                if input.is_empty() {
                    return Ok(None);
                }
                let n = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= n as u64;
                Ok(Some(Decoded::Data(input.split_to(n).freeze())))
            }
            BodyDecoder::Chunked(decoder) => Ok(decoder.decode(input)?.map(|chunk| match chunk {
                Chunk::Data(data) => Decoded::Data(data),
                Chunk::End(trailers) => Decoded::End(trailers),
            })),
            BodyDecoder::CloseDelimited if input.is_empty() => Ok(None),
            BodyDecoder::CloseDelimited => Ok(Some(Decoded::Data(input.split().freeze()))),
        }
    }

    /// The connection closed: the end of a close-delimited body (or of an
    /// already complete one), a truncated body otherwise.
    pub(crate) fn eof(&self) -> Result<(), Error> {
        match self {
            BodyDecoder::Length(0) | BodyDecoder::CloseDelimited => Ok(()),
            BodyDecoder::Length(missing) => Err(Error::TruncatedBody {
                missing: *missing,
                exact: true,
            }),
            BodyDecoder::Chunked(decoder) => Err(Error::TruncatedBody {
                missing: decoder.min_remaining(),
                exact: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn framing(
        method: Method,
        status: u16,
        version: Version,
        fields: &[(&str, &str)],
    ) -> Result<Framing, Error> {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            let name: http::HeaderName = name.parse().expect("test header name");
            headers.append(name, value.parse().expect("test header value"));
        }
        let status = StatusCode::from_u16(status).expect("test status");
        body_length(
            &method,
            &ResponseHead {
                status,
                version,
                headers,
            },
        )
    }

    fn plain(length: BodyLength) -> Result<Framing, Error> {
        Ok(Framing {
            length,
            ambiguous: false,
        })
    }

    macro_rules! framing_cases {
        ($($name:ident: $method:ident $status:literal $version:ident $fields:expr => $expect:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(framing(Method::$method, $status, Version::$version, &$fields), $expect);
            }
        )*};
    }

    use BodyLength::{Chunked, CloseDelimited, Length};

    framing_cases! {
        framing_head_response_has_no_body_despite_length: HEAD 200 HTTP_11 [("content-length", "10")] => plain(Length(0));
        framing_204_has_no_body: GET 204 HTTP_11 [("transfer-encoding", "chunked")] => plain(Length(0));
        framing_304_has_no_body: GET 304 HTTP_11 [("content-length", "99")] => plain(Length(0));
        framing_1xx_has_no_body: GET 103 HTTP_11 [] => plain(Length(0));
        framing_connect_2xx_is_a_tunnel: CONNECT 200 HTTP_11 [] => Err(Error::UnsupportedUpgrade { status: 200 });
        framing_connect_failure_has_a_body: CONNECT 407 HTTP_11 [("content-length", "2")] => plain(Length(2));
        framing_te_chunked: GET 200 HTTP_11 [("transfer-encoding", "chunked")] => plain(Chunked);
        framing_te_chunked_is_case_insensitive: GET 200 HTTP_11 [("transfer-encoding", " Chunked ")] => plain(Chunked);
        framing_te_chunked_with_a_parameter: GET 200 HTTP_11 [("transfer-encoding", "chunked;x=1")] => plain(Chunked);
        framing_te_chunked_with_empty_list_elements: GET 200 HTTP_11 [("transfer-encoding", ", chunked,")] => plain(Chunked);
        framing_te_gzip_before_chunked_is_refused: GET 200 HTTP_11 [("transfer-encoding", "gzip, chunked")]
            => Err(Error::UnsupportedTransferCoding { coding: "gzip".into() });
        framing_te_gzip_before_chunked_across_fields_is_refused: GET 200 HTTP_11 [("transfer-encoding", "GZip"), ("transfer-encoding", "chunked")]
            => Err(Error::UnsupportedTransferCoding { coding: "gzip".into() });
        framing_te_gzip_after_chunked_is_refused: GET 200 HTTP_11 [("transfer-encoding", "chunked, gzip")]
            => Err(Error::UnsupportedTransferCoding { coding: "gzip".into() });
        framing_te_unknown_coding_alone_is_refused: GET 200 HTTP_11 [("transfer-encoding", "x-custom")]
            => Err(Error::UnsupportedTransferCoding { coding: "x-custom".into() });
        framing_te_chunked_twice_is_refused: GET 200 HTTP_11 [("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]
            => Err(Error::UnsupportedTransferCoding { coding: "chunked".into() });
        framing_te_coding_on_a_304_does_not_matter: GET 304 HTTP_11 [("transfer-encoding", "gzip")] => plain(Length(0));
        framing_te_empty_reads_until_close: GET 200 HTTP_11 [("transfer-encoding", "")] => plain(CloseDelimited);
        framing_te_with_cl_chunked_wins_and_is_ambiguous: GET 200 HTTP_11 [("content-length", "5"), ("transfer-encoding", "chunked")]
            => Ok(Framing { length: Chunked, ambiguous: true });
        framing_te_in_http10_is_refused: GET 200 HTTP_10 [("transfer-encoding", "chunked")] => Err(Error::TransferEncodingInHttp10);
        framing_content_length: GET 200 HTTP_11 [("content-length", "42")] => plain(Length(42));
        framing_content_length_zero: GET 200 HTTP_11 [("content-length", "0")] => plain(Length(0));
        framing_content_length_identical_repeats_accepted: GET 200 HTTP_11 [("content-length", "7"), ("content-length", "7")] => plain(Length(7));
        framing_content_length_identical_list_accepted: GET 200 HTTP_11 [("content-length", "7, 7,7")] => plain(Length(7));
        framing_content_length_differing_values_refused: GET 200 HTTP_11 [("content-length", "7"), ("content-length", "8")]
            => Err(Error::ConflictingContentLength { first: 7, second: 8 });
        framing_content_length_differing_list_refused: GET 200 HTTP_11 [("content-length", "7, 70")]
            => Err(Error::ConflictingContentLength { first: 7, second: 70 });
        framing_content_length_non_digit_refused: GET 200 HTTP_11 [("content-length", "1e3")] => Err(Error::InvalidContentLength);
        framing_content_length_sign_refused: GET 200 HTTP_11 [("content-length", "+5")] => Err(Error::InvalidContentLength);
        framing_content_length_empty_refused: GET 200 HTTP_11 [("content-length", "")] => Err(Error::InvalidContentLength);
        framing_content_length_empty_list_item_refused: GET 200 HTTP_11 [("content-length", "5,")] => Err(Error::InvalidContentLength);
        framing_content_length_overflow_refused: GET 200 HTTP_11 [("content-length", "18446744073709551616")] => Err(Error::InvalidContentLength);
        framing_content_length_max_u64_accepted: GET 200 HTTP_11 [("content-length", "18446744073709551615")] => plain(Length(u64::MAX));
        framing_no_length_http11_reads_until_close: GET 200 HTTP_11 [] => plain(CloseDelimited);
        framing_no_length_http10_reads_until_close: GET 200 HTTP_10 [] => plain(CloseDelimited);
        framing_http10_content_length: POST 200 HTTP_10 [("content-length", "3")] => plain(Length(3));
    }
}
