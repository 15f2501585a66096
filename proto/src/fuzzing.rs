//! Drivers shared by the fuzz targets, the corpus replay test and the
//! split-invariance tests. Not a stable API.
//!
//! The entry points assert the codec's invariants: no panic, progress on every
//! event, and the same outcome however the input is split.

use bytes::BytesMut;
use http::{HeaderMap, Method, Uri};

use crate::chunked::{Chunk, ChunkedDecoder};
use crate::request::{put_chunk, LAST_CHUNK};
use crate::{Codec, Error, Limits, ResponseEvent, ResponseHead, State, TargetForm, Verdict};

/// How each request is sent before its response is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET` without body.
    Get,
    /// `HEAD`: the response has no body.
    Head,
    /// `POST` with a 5-byte body, sent whole.
    Post,
    /// `PUT` streamed with a declared length, finished before the response.
    StreamedLength,
    /// `PUT` streamed chunked, finished before the response.
    StreamedChunked,
    /// `POST` streamed chunked and never finished: the response is early.
    Unfinished,
    /// `CONNECT`: a 2xx response would open a tunnel.
    Connect,
}

impl Request {
    /// All kinds, for picking one from a fuzz byte.
    pub const ALL: [Request; 7] = [
        Request::Get,
        Request::Head,
        Request::Post,
        Request::StreamedLength,
        Request::StreamedChunked,
        Request::Unfinished,
        Request::Connect,
    ];

    fn send(self, codec: &mut Codec, out: &mut BytesMut) -> Result<(), Error> {
        let uri = Uri::from_static("http://example.com/path?q");
        let headers = HeaderMap::new();
        let origin = TargetForm::Origin;
        let whole = |codec: &mut Codec, method: Method, out: &mut BytesMut, body: Option<&[u8]>| {
            codec.send_request(&method, &uri, &headers, body, origin, out)
        };
        match self {
            Request::Get => whole(codec, Method::GET, out, None),
            Request::Head => whole(codec, Method::HEAD, out, None),
            Request::Post => whole(codec, Method::POST, out, Some(b"hello")),
            Request::Connect => whole(codec, Method::CONNECT, out, None),
            Request::StreamedLength => {
                codec.start_streaming_request(
                    &Method::PUT,
                    &uri,
                    &headers,
                    Some(5),
                    origin,
                    out,
                )?;
                codec.send_body(b"hel", out)?;
                codec.send_body(b"lo", out)?;
                codec.end_body(out)
            }
            Request::StreamedChunked | Request::Unfinished => {
                codec.start_streaming_request(&Method::POST, &uri, &headers, None, origin, out)?;
                codec.send_body(b"hello", out)?;
                match self {
                    Request::Unfinished => Ok(()),
                    _ => codec.end_body(out),
                }
            }
        }
    }
}

/// What one exchange produced, as the caller of the codec sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exchange {
    /// The final response head.
    pub head: Option<ResponseHead>,
    /// All body bytes, concatenated.
    pub body: Vec<u8>,
    /// Trailers and verdict, once the exchange ended.
    pub end: Option<(Option<HeaderMap>, Verdict)>,
}

/// What driving a response stream through a codec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exchanges, in order; a new one starts after each reusable `End`.
    pub exchanges: Vec<Exchange>,
    /// The error that stopped the codec, if any.
    pub error: Option<Error>,
    /// The codec's state at the end (after EOF).
    pub state: State,
}

/// Most exchanges [`drive`] runs on one stream.
pub const MAX_EXCHANGES: usize = 3;

/// Send `request`, feed `stream` in pieces of the sizes in `splits` (the rest
/// in one piece once they run out; zero counts as one), polling after each,
/// then signal EOF. After a reusable `End`, the same request is sent again
/// when more input arrives (up to [`MAX_EXCHANGES`] exchanges).
///
/// # Panics
///
/// When the codec breaks an invariant: an event that makes no progress, an
/// empty `Data`, or an event after `End` without a new request.
pub fn drive(request: Request, limits: Limits, stream: &[u8], splits: &[usize]) -> Outcome {
    let mut codec = Codec::new(limits);
    let mut out = BytesMut::new();
    let mut exchanges = vec![Exchange::default()];
    let mut error = request.send(&mut codec, &mut out).err();
    let mut input = BytesMut::new();
    let mut rest = stream;
    let mut sizes = splits.iter();
    while error.is_none() {
        error = pump(&mut codec, request, &mut input, &mut exchanges, &mut out).err();
        if rest.is_empty() || error.is_some() {
            break;
        }
        let n = sizes.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
        input.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    if error.is_none() {
        match codec.handle_eof() {
            Ok(Some(event)) => record(&mut exchanges, event),
            Ok(None) => {}
            Err(err) => error = Some(err),
        }
    }
    Outcome {
        exchanges,
        error,
        state: codec.state(),
    }
}

/// Poll until the codec needs more input.
fn pump(
    codec: &mut Codec,
    request: Request,
    input: &mut BytesMut,
    exchanges: &mut Vec<Exchange>,
    out: &mut BytesMut,
) -> Result<(), Error> {
    // Every event but `End` consumes input, and `End` comes once per exchange.
    let bound = input.len() + 2 * MAX_EXCHANGES + 2;
    for _ in 0..bound {
        // The next request goes out when its response starts to arrive, so
        // that where the input is split cannot change what is sent when.
        if codec.state() == State::Done && !input.is_empty() && exchanges.len() < MAX_EXCHANGES {
            request.send(codec, out)?;
            exchanges.push(Exchange::default());
        }
        let before = input.len();
        let Some(event) = codec.poll_response(input)? else {
            return Ok(());
        };
        let ended = matches!(event, ResponseEvent::End { .. });
        assert!(
            ended || input.len() < before,
            "event without progress: {event:?}"
        );
        assert!(
            !matches!(&event, ResponseEvent::Data(d) if d.is_empty()),
            "empty data event"
        );
        record(exchanges, event);
    }
    panic!("poll_response did not settle within {bound} events");
}

fn record(exchanges: &mut [Exchange], event: ResponseEvent) {
    let Some(exchange) = exchanges.last_mut() else {
        return;
    };
    assert!(exchange.end.is_none(), "event after End: {event:?}");
    match event {
        ResponseEvent::Head(head) => {
            assert!(exchange.head.is_none(), "second head");
            exchange.head = Some(head);
        }
        ResponseEvent::Data(data) => {
            assert!(exchange.head.is_some(), "data before head");
            exchange.body.extend_from_slice(&data);
        }
        ResponseEvent::Continue => {
            assert!(exchange.head.is_none(), "100 Continue after the final head");
        }
        ResponseEvent::End { trailers, verdict } => exchange.end = Some((trailers, verdict)),
    }
}

/// Limits small enough for short fuzz inputs to reach them.
pub fn small_limits() -> Limits {
    Limits {
        max_head_bytes: 256,
        max_headers: 6,
        max_chunk_line: 24,
        max_trailer_bytes: 48,
    }
}

/// Piece sizes from a seed: a xorshift sequence, with sizes up to 1, 16 or
/// 1024 bytes depending on the seed.
pub fn splits_from_seed(seed: u8, total: usize) -> Vec<usize> {
    let max = [1, 16, 1024][usize::from(seed % 3)];
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut sizes = Vec::new();
    let mut sum = 0;
    while sum < total {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize) % max + 1;
        sizes.push(n);
        sum += n;
    }
    sizes
}

/// Fuzz target `response`: `[config, seed, stream…]`. The config byte picks
/// the request kind and small limits; the stream is fed whole, in seeded
/// pieces, and (when short) byte by byte, and all three must agree.
pub fn response(data: &[u8]) {
    let [config, seed, stream @ ..] = data else {
        return;
    };
    let request = Request::ALL[usize::from(config & 0x7f) % Request::ALL.len()];
    let limits = if config & 0x80 != 0 {
        small_limits()
    } else {
        Limits::default()
    };
    let whole = drive(request, limits, stream, &[]);
    let split = drive(
        request,
        limits,
        stream,
        &splits_from_seed(*seed, stream.len()),
    );
    assert_eq!(whole, split, "split feeding changed the outcome");
    if stream.len() <= 512 {
        let bytewise = drive(request, limits, stream, &vec![1; stream.len()]);
        assert_eq!(whole, bytewise, "byte-by-byte feeding changed the outcome");
    }
}

/// What decoding a chunked body produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// Body bytes, concatenated.
    pub body: Vec<u8>,
    /// `Ok(trailers)` at the end, or the error (a truncated body when the
    /// input ran out).
    pub end: Result<Option<HeaderMap>, Error>,
    /// Input left after the end of the body.
    pub rest: Vec<u8>,
}

/// Decode `input` as a chunked body, fed in pieces of the sizes in `splits`.
pub fn decode_chunked(limits: Limits, input: &[u8], splits: &[usize]) -> Chunked {
    let mut decoder = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = input;
    let mut sizes = splits.iter();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Chunk::Data(data))) => {
                assert!(!data.is_empty(), "empty chunk data");
                body.extend_from_slice(&data);
                continue;
            }
            Ok(Some(Chunk::End(trailers))) => {
                buf.extend_from_slice(rest);
                return Chunked {
                    body,
                    end: Ok(trailers),
                    rest: buf.to_vec(),
                };
            }
            Ok(None) => assert!(buf.is_empty(), "decoder stalled with input left"),
            Err(err) => {
                return Chunked {
                    body,
                    end: Err(err),
                    rest: Vec::new(),
                }
            }
        }
        if rest.is_empty() {
            let missing = decoder.min_remaining();
            assert!(missing > 0, "an unfinished body needs more bytes");
            let end = Err(Error::TruncatedBody {
                missing,
                exact: false,
            });
            return Chunked {
                body,
                end,
                rest: Vec::new(),
            };
        }
        let n = sizes.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Fuzz target `chunked`: `[config, seed, input…]`. Decodes the input whole
/// and in seeded pieces (must agree), then encodes the input as a chunked
/// body with the codec's encoder and checks it decodes back to itself.
pub fn chunked(data: &[u8]) {
    let [config, seed, input @ ..] = data else {
        return;
    };
    let limits = if config & 0x80 != 0 {
        small_limits()
    } else {
        Limits::default()
    };
    let splits = splits_from_seed(*seed, input.len());
    let whole = decode_chunked(limits, input, &[]);
    assert_eq!(
        whole,
        decode_chunked(limits, input, &splits),
        "split feeding changed the outcome"
    );

    let mut encoded = BytesMut::new();
    let mut offset = 0;
    for &n in &splits {
        let end = (offset + n).min(input.len());
        put_chunk(&mut encoded, &input[offset..end]);
        offset = end;
    }
    encoded.extend_from_slice(LAST_CHUNK);
    let decoded = decode_chunked(Limits::default(), &encoded, &[]);
    assert_eq!(
        decoded,
        Chunked {
            body: input.to_vec(),
            end: Ok(None),
            rest: Vec::new()
        }
    );
}
