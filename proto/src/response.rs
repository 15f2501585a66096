//! Response head parsing on httparse, incremental and bounded.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use crate::{Error, Limits};

/// Head of a final (non-1xx) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
}

/// Header slots parsed on the stack; a larger `max_headers` uses the heap.
const STACK_HEADERS: usize = 128;
/// Where the fields lie, kept on the stack for heads with up to this many.
const STACK_SPANS: usize = 32;

/// The header names of earlier heads, by position. A server sends the same
/// fields in the same order every time; a raw name byte-equal to the one
/// remembered at its position is that name, so it is cloned instead of
/// parsed and matched against the standard names again. A field that differs
/// is parsed, and it and the later positions are learned anew.
///
/// Every [`Codec`](crate::Codec) has one. Connections to the same server
/// can share one instead (it holds ~450 B of names for a typical server):
/// the host keeps a `NameCache` per server and hands it to
/// [`Codec::poll_response_with`](crate::Codec::poll_response_with). Starts
/// empty (`NameCache::default()`).
#[derive(Debug, Clone, Default)]
pub struct NameCache {
    /// The raw names, one after the other.
    raw: Vec<u8>,
    /// For each position: where its raw name ends in `raw`, and the name.
    names: Vec<(usize, HeaderName)>,
}

impl NameCache {
    /// Positions remembered; later fields are always parsed.
    const LEN: usize = 32;

    fn name(&mut self, at: usize, raw: &[u8]) -> Option<HeaderName> {
        // Where position `at`'s raw name starts, if the ones before are known.
        let start = match at.checked_sub(1) {
            None => Some(0),
            Some(before) => self.names.get(before).map(|n| n.0),
        };
        if let (Some(start), Some((end, name))) = (start, self.names.get(at)) {
            if self.raw.get(start..*end) == Some(raw) {
                return Some(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if let Some(start) = start.filter(|_| at < Self::LEN) {
            self.names.truncate(at);
            self.raw.truncate(start);
            self.raw.extend_from_slice(raw);
            self.names.push((self.raw.len(), name.clone()));
        }
        Some(name)
    }
}

/// Parse one response head (final or interim) from the front of `input` and
/// consume it.
///
/// Returns `Ok(None)` when the head is not complete yet. Only the first
/// `max_head_bytes` of `input` are looked at, so a head that does not end
/// within them is [`Error::HeadTooLarge`] however the bytes arrived. Header
/// values share the head's one buffer instead of each owning a copy.
///
/// A field value folded over several lines (obs-fold) is unfolded in place
/// first, as RFC 9112 §5.2 tells a user agent to: each fold becomes spaces,
/// so the value reads as one line (see [`unfold`]).
pub(crate) fn parse_head(
    input: &mut BytesMut,
    limits: &Limits,
    names: &mut NameCache,
) -> Result<Option<ResponseHead>, Error> {
    match parse_strict(input, limits, names) {
        Err(Strict::Syntax(err)) => {
            // Strict first: a head without folded lines (all of them, in
            // practice) needs no scan for folds. Any syntax error is looked
            // at again once the folds seen so far are unfolded.
            let window = input.len().min(limits.max_head_bytes);
            if !unfold(&mut input[..window]) {
                return Err(parse_error(err, limits));
            }
            match parse_strict(input, limits, names) {
                Err(Strict::Syntax(err)) => Err(parse_error(err, limits)),
                Err(Strict::Head(err)) => Err(err),
                Ok(head) => Ok(head),
            }
        }
        Err(Strict::Head(err)) => Err(err),
        Ok(head) => Ok(head),
    }
}

/// Why a strict parse stopped: a syntax error httparse found (which an
/// obs-fold may explain), or a head that parsed and is still refused.
enum Strict {
    Syntax(httparse::Error),
    Head(Error),
}

impl From<Error> for Strict {
    fn from(err: Error) -> Strict {
        Strict::Head(err)
    }
}

/// [`parse_head`] without folded lines: httparse's strict mode.
fn parse_strict(
    input: &mut BytesMut,
    limits: &Limits,
    names: &mut NameCache,
) -> Result<Option<ResponseHead>, Strict> {
    let window = &input[..input.len().min(limits.max_head_bytes)];
    // Uninitialized slots: httparse fills only what it parses, so a head is
    // not preceded by writing `max_headers` empty slots (3.2 KiB by default).
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let fields = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut response = httparse::Response::new(&mut []);
    let strict = httparse::ParserConfig::default();
    let len = match strict.parse_response_with_uninit_headers(&mut response, window, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(incomplete(window, limits)?),
        Err(err) => return Err(Strict::Syntax(err)),
    };
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(invalid("invalid HTTP version").into()),
    };
    let status = status_code(response.code)?;
    // Where each name and value lies in the head, to slice the shared buffer.
    let offset = |part: &[u8]| offset_in(window, part);
    let span = |field: &httparse::Header<'_>| {
        let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
        [
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        ]
    };
    // Up to STACK_SPANS on the stack (responses carry ~10), more on the heap.
    let mut stack_spans = [[0; 4]; STACK_SPANS];
    let mut heap_spans = Vec::new();
    let spans = if response.headers.len() <= STACK_SPANS {
        for (slot, field) in stack_spans.iter_mut().zip(response.headers.iter()) {
            *slot = span(field);
        }
        &stack_spans[..response.headers.len()]
    } else {
        heap_spans.extend(response.headers.iter().map(span));
        &heap_spans[..]
    };
    let head = input.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (at, &[name, name_end, value, value_end]) in spans.iter().enumerate() {
        let (name, value) = (name..name_end, value..value_end);
        let name = head.get(name).and_then(|raw| names.name(at, raw));
        let value = head
            .get(value.clone())
            .map(|_| HeaderValue::from_maybe_shared(head.slice(value)));
        match (name, value) {
            (Some(name), Some(Ok(value))) => headers.append(name, value),
            _ => return Err(invalid("invalid header field").into()),
        };
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

/// Where `part`, a slice httparse returned from `window`, starts in it.
fn offset_in(window: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(window.as_ptr() as usize)
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidHead { reason }
}

fn status_code(code: Option<u16>) -> Result<StatusCode, Error> {
    code.and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(invalid("invalid status code"))
}

/// A head not complete yet: wait, unless it has used up its limit.
fn incomplete(window: &[u8], limits: &Limits) -> Result<Option<ResponseHead>, Error> {
    if window.len() >= limits.max_head_bytes {
        return Err(Error::HeadTooLarge {
            limit: limits.max_head_bytes,
        });
    }
    Ok(None)
}

fn parse_error(err: httparse::Error, limits: &Limits) -> Error {
    match err {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders {
            limit: limits.max_headers,
        },
        err => invalid(reason(err)),
    }
}

/// Replace every obs-fold (RFC 9112 §5.2: `OWS CRLF RWS`, a field line
/// continued on a line that starts with a space or tab) in the head at the
/// front of `head` with as many spaces, in place; true when one was found.
///
/// RFC 9112 §5.2 tells a user agent that receives obs-fold in a response to
/// replace each one with one or more SP before interpreting the field value,
/// and curl does; refusing the response instead (as this codec once did)
/// fails requests to old servers and appliances that a user agent is
/// meant to read. The fold's danger is to intermediaries that forward a
/// message whose framing they and the next hop read differently (request
/// smuggling); rotary forwards nothing, and a folded `Content-Length` or
/// `Transfer-Encoding` unfolds to a value the framing rules then judge as
/// any other. The bytes keep their length, so the strict parse runs again
/// over the same buffer and values still share it.
///
/// Only lines after the status line and before the empty line that ends the
/// head are looked at: a line of white space right after the status line
/// is no fold (there is no field to continue, §2.2) and is left for the
/// parser to refuse, and the body is never touched. A head not complete yet
/// is unfolded as far as it goes; a fold completed by later bytes is found
/// when they arrive, so the result does not depend on how the bytes were
/// split.
fn unfold(head: &mut [u8]) -> bool {
    let Some(status_end) = head.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let mut found = false;
    // `line` is where the current line starts; `field` says whether the line
    // before it was a field line (so a leading space or tab continues it).
    let mut line = status_end + 1;
    let mut field = false;
    while let Some(&first) = head.get(line) {
        match first {
            b'\n' => break,
            b'\r' if head.get(line + 1).is_none_or(|&b| b == b'\n') => break,
            b' ' | b'\t' if field => {
                found = true;
                // The fold's CRLF (or bare LF) and the white space on both
                // sides of it become spaces.
                let mut at = line;
                while head.get(at).is_some_and(|&b| b == b' ' || b == b'\t') {
                    head[at] = b' ';
                    at += 1;
                }
                let mut back = line;
                if back > 0 && head[back - 1] == b'\n' {
                    back -= 1;
                    head[back] = b' ';
                }
                if back > 0 && head[back - 1] == b'\r' {
                    back -= 1;
                    head[back] = b' ';
                }
                while back > 0 && (head[back - 1] == b' ' || head[back - 1] == b'\t') {
                    back -= 1;
                    head[back] = b' ';
                }
            }
            b' ' | b'\t' => break,
            _ => {}
        }
        field = true;
        match head[line..].iter().position(|&b| b == b'\n') {
            Some(end) => line += end + 1,
            None => break,
        }
    }
    found
}

fn reason(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<(ResponseHead, usize)>, Error> {
        parse_with(input, &Limits::default())
    }

    fn parse_with(input: &[u8], limits: &Limits) -> Result<Option<(ResponseHead, usize)>, Error> {
        let mut buf = BytesMut::from(input);
        let head = parse_head(&mut buf, limits, &mut NameCache::default())?;
        Ok(head.map(|h| (h, input.len() - buf.len())))
    }

    #[test]
    fn head_incomplete_needs_more() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for end in 0..input.len() {
            assert_eq!(parse(&input[..end]), Ok(None), "prefix of {end} bytes");
        }
        let (head, len) = parse(input).expect("valid").expect("complete");
        assert_eq!(
            (head.status, head.version, len),
            (StatusCode::OK, Version::HTTP_11, input.len())
        );
    }

    #[test]
    fn head_reports_its_length_and_leaves_the_body() {
        let (head, len) = parse(b"HTTP/1.0 404 Not Found\r\nA: 1\r\nA: 2\r\n\r\nbody")
            .expect("valid")
            .expect("complete");
        assert_eq!(len, 38);
        assert_eq!(head.version, Version::HTTP_10);
        let values: Vec<_> = head.headers.get_all("a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn remembered_names_match_only_byte_equal_and_at_their_position() {
        let mut names = NameCache::default();
        let parse = |names: &mut NameCache, input: &[u8]| {
            let mut buf = BytesMut::from(input);
            let head = parse_head(&mut buf, &Limits::default(), names);
            let head = head.expect("valid").expect("complete");
            let names: Vec<String> = head.headers.keys().map(|n| n.to_string()).collect();
            names
        };
        assert_eq!(
            parse(
                &mut names,
                b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-One: 1\r\n\r\n"
            ),
            ["content-type", "x-one"]
        );
        // Same names in another case, a new one, one more than before.
        assert_eq!(
            parse(
                &mut names,
                b"HTTP/1.1 200 OK\r\ncontent-TYPE: a\r\nX-Two: 2\r\nDate: d\r\n\r\n"
            ),
            ["content-type", "x-two", "date"]
        );
        // Known names at other positions are parsed, not mistaken.
        assert_eq!(
            parse(
                &mut names,
                b"HTTP/1.1 200 OK\r\nX-Two: 2\r\nContent-Type: a\r\n\r\n"
            ),
            ["x-two", "content-type"]
        );
        assert_eq!(names.names.len(), 2);
        // 40 fields: the first 32 positions are remembered.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&mut names, &many).len(), 40);
        assert_eq!(parse(&mut names, &many).len(), 40);
        assert_eq!(names.names.len(), NameCache::LEN);
    }

    fn value(input: &[u8], name: &str) -> String {
        let (head, _) = parse(input).expect("valid").expect("complete");
        let value = head.headers.get(name).expect("the field");
        value.to_str().expect("visible ASCII").to_owned()
    }

    #[test]
    fn a_folded_value_is_unfolded_into_spaces() {
        assert_eq!(
            value(b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\n\r\n", "x-fold"),
            "a   b"
        );
        // Tabs and the white space around the fold become spaces too; a
        // value folded twice reads as one line; a bare LF folds as CRLF does.
        let head = b"HTTP/1.1 200 OK\r\nX-Fold: a \r\n\tb\n  c\r\nX-Next: d\r\n\r\n";
        assert_eq!(value(head, "x-fold"), "a    b   c");
        assert_eq!(value(head, "x-next"), "d");
        // A fold right after the colon leaves the value alone; a fold of
        // white space only is trimmed.
        assert_eq!(value(b"HTTP/1.1 200 OK\r\nX:\r\n b\r\n\r\n", "x"), "b");
        assert_eq!(value(b"HTTP/1.1 200 OK\r\nX: a\r\n \r\n\r\n", "x"), "a");
    }

    #[test]
    fn unfolding_keeps_the_head_length_and_never_touches_the_body() {
        let input = b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n\r\n body line";
        let (_, len) = parse(input).expect("valid").expect("complete");
        assert_eq!(len, input.len() - b"\r\n body line".len());
        let mut buf = BytesMut::from(&input[..]);
        parse_head(&mut buf, &Limits::default(), &mut NameCache::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(&buf[..], b"\r\n body line");
    }

    #[test]
    fn white_space_before_the_first_field_is_no_fold_and_is_refused() {
        let err = parse(b"HTTP/1.1 200 OK\r\n X: 1\r\n\r\n");
        assert_eq!(
            err,
            Err(Error::InvalidHead {
                reason: "invalid header name"
            })
        );
    }

    #[test]
    fn a_fold_split_across_reads_is_unfolded_once_it_arrives() {
        let input = b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n";
        for end in 0..input.len() {
            let mut buf = BytesMut::from(&input[..end]);
            let head = parse_head(&mut buf, &Limits::default(), &mut NameCache::default());
            assert_eq!(head, Ok(None), "prefix of {end} bytes");
            buf.extend_from_slice(&input[end..]);
            let head = parse_head(&mut buf, &Limits::default(), &mut NameCache::default());
            let head = head.expect("valid").expect("complete");
            assert_eq!(
                head.headers.get("x").map(|v| v.as_bytes()),
                Some(&b"a   b"[..])
            );
        }
    }

    #[test]
    fn head_size_limit_applies_to_incomplete_heads() {
        let limits = Limits {
            max_head_bytes: 16,
            ..Limits::default()
        };
        let long = b"HTTP/1.1 200 OK\r\nX: 1234567890";
        assert_eq!(parse_with(&long[..15], &limits), Ok(None));
        assert_eq!(
            parse_with(&long[..16], &limits),
            Err(Error::HeadTooLarge { limit: 16 })
        );
        assert_eq!(
            parse_with(long, &limits),
            Err(Error::HeadTooLarge { limit: 16 })
        );
        let fits = b"HTTP/1.1 200 \r\n\r\n";
        let limits = Limits {
            max_head_bytes: fits.len(),
            ..Limits::default()
        };
        assert!(matches!(parse_with(fits, &limits), Ok(Some(_))));
    }
}
