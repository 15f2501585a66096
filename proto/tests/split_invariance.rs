//! Split invariance: the same response stream fed whole, byte by byte and in
//! random pieces gives the same head, body, trailers and verdict — or the
//! same error.

use proptest::collection::vec;
use proptest::prelude::*;
use rotary_proto::fuzzing::{drive, Outcome, Request};
use rotary_proto::{CloseCause, Error, Limits};

#[derive(Debug, Clone)]
enum Framing {
    Length,
    /// Chunk sizes (cycled over the body), with extensions and a trailer.
    Chunked {
        sizes: Vec<usize>,
        extensions: bool,
        trailer: bool,
    },
    CloseDelimited,
}

/// A valid response, and what the codec must report for it.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    http10: bool,
    keep_alive_header: bool,
    connection_close: bool,
    interim: bool,
    framing: Framing,
    body: Vec<u8>,
}

impl Response {
    fn encode(&self) -> Vec<u8> {
        let mut s = Vec::new();
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        if self.interim {
            s.extend_from_slice(format!("{version} 100 Continue\r\n\r\n").as_bytes());
        }
        s.extend_from_slice(
            format!("{version} {} Whatever\r\nServer: prop\r\n", self.status).as_bytes(),
        );
        if self.keep_alive_header {
            s.extend_from_slice(b"Connection: keep-alive\r\nKeep-Alive: timeout=3, max=7\r\n");
        }
        if self.connection_close {
            s.extend_from_slice(b"Connection: close\r\n");
        }
        match &self.framing {
            Framing::Length => {
                s.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
                );
                s.extend_from_slice(&self.body);
            }
            Framing::Chunked {
                sizes,
                extensions,
                trailer,
            } => {
                s.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let ext = if *extensions { ";name=\"v;x\"" } else { "" };
                let mut rest = &self.body[..];
                for &size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at(size.min(rest.len()));
                    s.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
                    s.extend_from_slice(chunk);
                    s.extend_from_slice(b"\r\n");
                    rest = tail;
                }
                s.extend_from_slice(format!("0{ext}\r\n").as_bytes());
                if *trailer {
                    s.extend_from_slice(b"X-Checksum: 42\r\n");
                }
                s.extend_from_slice(b"\r\n");
            }
            Framing::CloseDelimited => {
                s.extend_from_slice(b"\r\n");
                s.extend_from_slice(&self.body);
            }
        }
        s
    }

    fn expected_close(&self) -> Option<CloseCause> {
        if matches!(self.framing, Framing::CloseDelimited) {
            Some(CloseCause::CloseDelimited)
        } else if self.connection_close {
            Some(CloseCause::ResponseClose)
        } else if self.http10 && !self.keep_alive_header {
            Some(CloseCause::Http10)
        } else {
            None
        }
    }
}

fn response() -> impl Strategy<Value = Response> {
    let framing = prop_oneof![
        Just(Framing::Length),
        (vec(1usize..40, 1..5), any::<bool>(), any::<bool>()).prop_map(
            |(sizes, extensions, trailer)| Framing::Chunked {
                sizes,
                extensions,
                trailer
            }
        ),
        Just(Framing::CloseDelimited),
    ];
    (
        prop::sample::select(vec![200u16, 201, 203, 400, 404, 500, 503]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        framing,
        vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(status, http10, keep_alive_header, connection_close, interim, framing, body)| {
                // Transfer-Encoding is refused in HTTP/1.0, so such a stream would not be valid.
                let framing = match framing {
                    Framing::Chunked { .. } if http10 => Framing::Length,
                    framing => framing,
                };
                Response {
                    status,
                    http10,
                    keep_alive_header,
                    connection_close,
                    interim,
                    framing,
                    body,
                }
            },
        )
}

/// Whole, byte by byte, and in the given pieces: all the same.
fn fed_every_way(stream: &[u8], pieces: &[usize]) -> Result<Outcome, TestCaseError> {
    let limits = Limits::default();
    let whole = drive(Request::Get, limits, stream, &[]);
    prop_assert_eq!(
        &drive(Request::Get, limits, stream, &vec![1; stream.len()]),
        &whole
    );
    prop_assert_eq!(&drive(Request::Get, limits, stream, pieces), &whole);
    Ok(whole)
}

/// Streams that must fail, each with one specific error.
fn invalid_streams() -> Vec<(&'static [u8], Error)> {
    vec![
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            Error::ConflictingContentLength {
                first: 1,
                second: 2,
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            Error::InvalidContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: a\r\n  b\r\nContent-Length: 1\r\n 1\r\n\r\n",
            Error::InvalidContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Error::UnsupportedTransferCoding {
                coding: "gzip".into(),
            },
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            Error::UnsupportedUpgrade { status: 101 },
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::TransferEncodingInHttp10,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            Error::TruncatedBody {
                missing: 4,
                exact: true,
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde",
            Error::TruncatedBody {
                missing: 7,
                exact: false,
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
            Error::InvalidChunk {
                reason: "chunk size is not a hex number",
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            Error::InvalidChunk {
                reason: "chunk data not followed by CRLF",
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000000000000000\r\n",
            Error::ChunkSizeOverflow,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
            Error::InvalidTrailers {
                reason: "malformed trailer field",
            },
        ),
        (b"HTTP/1.1 200 OK\r\nContent", Error::IncompleteHead),
        (b"", Error::ClosedBeforeResponse),
        (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            Error::InvalidHead {
                reason: "invalid status line",
            },
        ),
        (
            b"ICY 200 OK\r\n\r\n",
            Error::InvalidHead {
                reason: "invalid HTTP version",
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nextra",
            Error::UnsolicitedData,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_responses_give_the_same_result_however_split(
        response in response(),
        pieces in vec(1usize..64, 0..40),
    ) {
        let stream = response.encode();
        let outcome = fed_every_way(&stream, &pieces)?;
        prop_assert_eq!(&outcome.error, &None);
        let exchange = &outcome.exchanges[0];
        let head = exchange.head.as_ref().expect("a head");
        prop_assert_eq!(head.status.as_u16(), response.status);
        prop_assert_eq!(&exchange.body, &response.body);
        let (trailers, verdict) = exchange.end.as_ref().expect("an end");
        let trailer = trailers.as_ref().and_then(|t| t.get("x-checksum"));
        let expect_trailer = matches!(response.framing, Framing::Chunked { trailer: true, .. });
        prop_assert_eq!(trailer.is_some(), expect_trailer);
        prop_assert_eq!(verdict.close, response.expected_close());
        if response.keep_alive_header {
            prop_assert_eq!(verdict.hints.max, Some(7));
        }
    }

    #[test]
    fn two_pipelined_responses_give_the_same_result_however_split(
        first in response(),
        second in response(),
        pieces in vec(1usize..64, 0..40),
    ) {
        prop_assume!(first.expected_close().is_none());
        let mut stream = first.encode();
        stream.extend_from_slice(&second.encode());
        let outcome = fed_every_way(&stream, &pieces)?;
        prop_assert_eq!(&outcome.error, &None);
        prop_assert_eq!(outcome.exchanges.len(), 2);
        prop_assert_eq!(&outcome.exchanges[1].body, &second.body);
    }

    #[test]
    fn invalid_streams_give_the_same_error_however_split(
        index in 0usize..16,
        pieces in vec(1usize..16, 0..20),
    ) {
        let cases = invalid_streams();
        let (stream, error) = &cases[index % cases.len()];
        let outcome = fed_every_way(stream, &pieces)?;
        prop_assert_eq!(outcome.error.as_ref(), Some(error));
    }

    #[test]
    fn corrupted_responses_give_the_same_result_however_split(
        response in response(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        pieces in vec(1usize..64, 0..40),
    ) {
        let mut stream = response.encode();
        for (at, byte) in flips {
            let at = at.index(stream.len());
            stream[at] = byte;
        }
        stream.truncate(cut.index(stream.len() + 1));
        fed_every_way(&stream, &pieces)?;
    }
}
