//! The server side of HTTP/1.1 framing for the coordinator, held to the
//! rules a real server applies (RFC 9112 §6.3 for requests): heads parsed by
//! httparse with size and count limits, `Content-Length` or chunked bodies
//! read as a stream with every buffer capped, `Expect: 100-continue`
//! answered only when a route reads the body, and anything ambiguous (two
//! lengths that disagree, `Transfer-Encoding` beside `Content-Length`, an
//! encoding other than chunked) refused with a 4xx and a closed connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{HandshakeKind, ServerConnection, StreamOwned};

use super::Shared;

/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;
/// A body that stalls this long mid-way ends the connection.
const BODY_STALL: Duration = Duration::from_secs(30);

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// One TLS connection and the plaintext read ahead of what was consumed.
pub(super) struct Conn {
    tls: Tls,
    buf: Vec<u8>,
    counted: bool,
}

/// A request head.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub(super) method: String,
    /// The request target as sent (path and query).
    pub(super) target: String,
    /// HTTP/1.0 (`false`) or HTTP/1.1.
    pub(super) http11: bool,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name`, case-insensitively.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target's path, without the query.
    pub(super) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }

    /// The client asked to close after this exchange (or speaks HTTP/1.0
    /// without keep-alive).
    pub(super) fn wants_close(&self) -> bool {
        let tokens = |name: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(name))
        };
        if self.http11 {
            tokens("close")
        } else {
            !tokens("keep-alive")
        }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length` bytes (0 when the request has neither header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request the server refuses before routing: the status line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: &'static str,
    pub(super) why: String,
}

fn refuse(status: &'static str, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

/// RFC 9112 §6.3, the steps that apply to a request, in order.
pub(super) fn framing(head: &Head) -> Result<Framing, Refusal> {
    let te: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if !te.is_empty() {
        // 3. Transfer-Encoding with Content-Length is a smuggling attempt
        //    or a broken client: refuse rather than guess.
        if !lengths.is_empty() {
            return Err(refuse(
                "400 Bad Request",
                "Transfer-Encoding together with Content-Length",
            ));
        }
        if !head.http11 {
            return Err(refuse(
                "400 Bad Request",
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // 4. chunked must be the final (here: the only) coding.
        return match te.as_slice() {
            [one] if one.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(refuse(
                "501 Not Implemented",
                format!("transfer coding {:?} (only chunked)", te.join(", ")),
            )),
        };
    }
    // 5. Content-Length: every value the same valid number.
    let mut length = None;
    for v in lengths {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse("400 Bad Request", format!("Content-Length {v:?}")));
        }
        let n: u64 = v
            .parse()
            .map_err(|_| refuse("400 Bad Request", format!("Content-Length {v:?} too large")))?;
        if length.is_some_and(|l| l != n) {
            return Err(refuse(
                "400 Bad Request",
                "Content-Length values that disagree",
            ));
        }
        length = Some(n);
    }
    // 7. Neither: a request has no body.
    Ok(Framing::Length(length.unwrap_or(0)))
}

impl Conn {
    pub(super) fn new(tls: Tls) -> Conn {
        Conn {
            tls,
            buf: Vec::with_capacity(4096),
            counted: false,
        }
    }

    /// Read the next request head. `Ok(None)` on a clean close or a stop;
    /// `Err(Ok(refusal))` for a head the server answers with an error.
    pub(super) fn read_head(
        &mut self,
        shared: &Shared,
    ) -> io::Result<Result<Option<Head>, Refusal>> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head {
                            method: req.method.unwrap_or_default().to_owned(),
                            target: req.path.unwrap_or("/").to_owned(),
                            http11: req.version == Some(1),
                            headers: req
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_owned(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                        };
                        self.buf.drain(..len);
                        if head.http11 && head.header("host").is_none() {
                            return Ok(Err(refuse(
                                "400 Bad Request",
                                "HTTP/1.1 request without Host",
                            )));
                        }
                        return Ok(Ok(Some(head)));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Ok(Err(refuse(
                            "431 Request Header Fields Too Large",
                            format!("more than {MAX_HEADERS} header lines"),
                        )))
                    }
                    Err(httparse::Error::Version) => {
                        return Ok(Err(refuse(
                            "505 HTTP Version Not Supported",
                            "only HTTP/1.0 and HTTP/1.1",
                        )))
                    }
                    Err(e) => return Ok(Err(refuse("400 Bad Request", format!("bad head: {e}")))),
                }
                if self.buf.len() > MAX_HEAD {
                    return Ok(Err(refuse(
                        "431 Request Header Fields Too Large",
                        format!("head over {MAX_HEAD} bytes"),
                    )));
                }
            }
            if !self.fill(shared, None)? {
                return Ok(Ok(None));
            }
        }
    }

    /// Read more plaintext into the buffer; false on EOF or stop. With
    /// `stall`, a read that waits past it is an error.
    fn fill(&mut self, shared: &Shared, stall: Option<Instant>) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if shared.stopping() {
                return Ok(false);
            }
            let r = self.tls.read(&mut chunk);
            if !self.counted && !self.tls.conn.is_handshaking() {
                self.counted = true;
                shared.count_handshake(
                    self.tls.conn.handshake_kind() == Some(HandshakeKind::Resumed),
                );
            }
            match r {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if stall.is_some_and(|s| Instant::now() >= s) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request body stalled",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// The client certificate (leaf) the peer presented, if any.
    pub(super) fn client_leaf(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        self.tls.conn.peer_certificates().and_then(|c| c.first())
    }

    /// Write `bytes` and flush.
    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// close_notify, then close the socket.
    pub(super) fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
        let _ = self.tls.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes seen.
    Trailers(usize),
}

/// A chunked body's decoder, fed from a buffer it drains.
#[derive(Debug, Clone, Copy)]
struct Chunked {
    state: Chunk,
    done: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: Chunk::Size,
            done: false,
        }
    }
}

impl Chunked {
    /// One step of the chunked decoder on the buffered bytes: `Some(true)`
    /// after delivering data, `Some(false)` after a framing step (the caller
    /// loops), `None` when it needs more bytes.
    fn step(&mut self, buf: &mut Vec<u8>, each: &mut dyn FnMut(&[u8])) -> io::Result<Option<bool>> {
        let line_end = |buf: &[u8]| buf.windows(2).position(|w| w == b"\r\n");
        match self.state {
            Chunk::Size => {
                let Some(end) = line_end(buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(bad("chunk-size line too long"));
                    }
                    return Ok(None);
                };
                if end > MAX_CHUNK_LINE {
                    return Err(bad("chunk-size line too long"));
                }
                let line = &buf[..end];
                let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                let hex = std::str::from_utf8(hex).map_err(|_| bad("chunk size is not hex"))?;
                let hex = hex.trim_end_matches([' ', '\t']);
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("chunk size is not hex"));
                }
                let size = u64::from_str_radix(hex, 16).map_err(|_| bad("chunk size overflows"))?;
                buf.drain(..end + 2);
                self.state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
                Ok(Some(false))
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (buf.len() as u64).min(left) as usize;
                each(&buf[..n]);
                buf.drain(..n);
                let left = left - n as u64;
                self.state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                Ok(Some(true))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                buf.drain(..2);
                self.state = Chunk::Size;
                Ok(Some(false))
            }
            Chunk::Trailers(_) if self.done => Ok(None),
            Chunk::Trailers(seen) => {
                let Some(end) = line_end(buf) else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err(bad("trailers too large"));
                    }
                    return Ok(None);
                };
                buf.drain(..end + 2);
                if end == 0 {
                    self.done = true;
                    return Ok(Some(false));
                }
                let seen = seen + end + 2;
                if seen > MAX_TRAILERS {
                    return Err(bad("trailers too large"));
                }
                self.state = Chunk::Trailers(seen);
                Ok(Some(false))
            }
        }
    }
}

/// A request body, read as it arrives.
pub(super) struct Body<'a> {
    conn: &'a mut Conn,
    shared: &'a Shared,
    framing: Framing,
    /// Content-Length bytes left (for `Framing::Length`).
    left: u64,
    chunked: Chunked,
    done: bool,
    /// Send `100 Continue` before the first read.
    expect_continue: bool,
    read: u64,
}

impl<'a> Body<'a> {
    pub(super) fn new(
        conn: &'a mut Conn,
        shared: &'a Shared,
        head: &Head,
        framing: Framing,
    ) -> Body<'a> {
        let left = match framing {
            Framing::Length(n) => n,
            Framing::Chunked => 0,
        };
        let expect_continue = head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && head.http11;
        Body {
            conn,
            shared,
            framing,
            left,
            chunked: Chunked::default(),
            done: framing == Framing::Length(0),
            expect_continue,
            read: 0,
        }
    }

    /// The length the client declared, if it did.
    pub(super) fn declared_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        }
    }

    /// The whole body has been read.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// Body bytes delivered so far.
    pub(super) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next piece of the body, handed to `each`; `Ok(false)` once the
    /// body ended.
    ///
    /// # Errors
    /// The socket's error, a stall, a close before the end, or a chunked
    /// framing error (`InvalidData`).
    pub(super) fn next(&mut self, each: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        if self.expect_continue {
            self.expect_continue = false;
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        loop {
            match self.framing {
                Framing::Length(_) => {
                    if !self.conn.buf.is_empty() {
                        let n = (self.conn.buf.len() as u64).min(self.left) as usize;
                        each(&self.conn.buf[..n]);
                        self.conn.buf.drain(..n);
                        self.left -= n as u64;
                        self.read += n as u64;
                        self.done = self.left == 0;
                        return Ok(true);
                    }
                }
                Framing::Chunked => {
                    let before = self.conn.buf.len();
                    let step = self.chunked.step(&mut self.conn.buf, each)?;
                    if let Some(data) = step {
                        if data {
                            self.read += (before - self.conn.buf.len()) as u64;
                            return Ok(true);
                        }
                        if self.chunked.done {
                            self.done = true;
                            return Ok(false);
                        }
                        continue;
                    }
                }
            }
            if !self
                .conn
                .fill(self.shared, Some(Instant::now() + BODY_STALL))?
            {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} body bytes", self.read),
                ));
            }
        }
    }

    /// Read the whole body into memory, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`Body::next`]; `Ok(Err(TooLarge))` when the body is larger than `limit`.
    pub(super) fn read_all(&mut self, limit: usize) -> io::Result<Result<Vec<u8>, TooLarge>> {
        if self.declared_len().is_some_and(|n| n > limit as u64) {
            return Ok(Err(TooLarge));
        }
        let mut out = Vec::new();
        let mut over = false;
        while self.next(&mut |b| {
            if out.len() + b.len() > limit {
                over = true;
            } else {
                out.extend_from_slice(b);
            }
        })? {
            if over {
                return Ok(Err(TooLarge));
            }
        }
        Ok(Ok(out))
    }

    /// Read and drop up to `limit` more bytes; true when the body ended.
    pub(super) fn discard(&mut self, limit: u64) -> bool {
        let start = self.read;
        while !self.done && self.read - start <= limit {
            if self.declared_len().is_some_and(|_| self.left > limit) {
                return false;
            }
            match self.next(&mut |_| {}) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => return false,
            }
        }
        self.done
    }
}

/// A body over a route's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooLarge;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Head {
        Head {
            method: "POST".into(),
            target: "/x".into(),
            http11: true,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn framing_follows_rfc_9112_for_requests() {
        assert_eq!(framing(&head(&[])), Ok(Framing::Length(0)));
        assert_eq!(
            framing(&head(&[("Content-Length", "12")])),
            Ok(Framing::Length(12))
        );
        // The same length twice (or as a list) is one length.
        assert_eq!(
            framing(&head(&[
                ("content-length", "5"),
                ("Content-Length", "5, 5")
            ])),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(&head(&[("Transfer-Encoding", "chunked")])),
            Ok(Framing::Chunked)
        );
        let refused = |h: &[(&str, &str)]| framing(&head(h)).map_err(|r| r.status);
        assert_eq!(
            refused(&[("Content-Length", "5"), ("Content-Length", "6")]),
            Err("400 Bad Request")
        );
        assert_eq!(refused(&[("Content-Length", "-1")]), Err("400 Bad Request"));
        assert_eq!(refused(&[("Content-Length", "+5")]), Err("400 Bad Request"));
        assert_eq!(
            refused(&[("Content-Length", "99999999999999999999999")]),
            Err("400 Bad Request")
        );
        assert_eq!(
            refused(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]),
            Err("400 Bad Request")
        );
        assert_eq!(
            refused(&[("Transfer-Encoding", "gzip, chunked")]),
            Err("501 Not Implemented")
        );
        let mut h10 = head(&[("Transfer-Encoding", "chunked")]);
        h10.http11 = false;
        assert_eq!(framing(&h10).map_err(|r| r.status), Err("400 Bad Request"));
    }

    /// Feed `input` to a chunked decoder in pieces cut at `cuts`; the data,
    /// whether it ended, and the bytes left after the body.
    fn decode(input: &[u8], cuts: &[usize]) -> io::Result<(Vec<u8>, bool, Vec<u8>)> {
        let mut d = Chunked::default();
        let (mut buf, mut data) = (Vec::new(), Vec::new());
        let mut from = 0;
        for &to in cuts.iter().chain([input.len()].iter()) {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            while !d.done {
                match d.step(&mut buf, &mut |b| data.extend_from_slice(b))? {
                    Some(_) => {}
                    None => break,
                }
            }
        }
        Ok((data, d.done, buf))
    }

    #[test]
    fn chunked_bodies_decode_the_same_split_at_every_byte() {
        let input = b"5\r\nhello\r\n3;ext=1\r\n wo\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                      0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let want = b"hello woabcdefghijklmnopqrstuvwxyz".to_vec();
        for i in 0..input.len() {
            for j in i..input.len() {
                let (data, done, rest) = decode(input, &[i, j]).expect("valid chunked body");
                assert_eq!(
                    (data.as_slice(), done),
                    (want.as_slice(), true),
                    "cut at {i}, {j}"
                );
                assert_eq!(rest, b"NEXT", "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn chunked_framing_errors_are_refused_and_buffers_stay_capped() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"fffffffffffffffffffff\r\n",
        ] {
            assert!(
                decode(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode(&long_line, &[]).is_err());
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b'x', MAX_TRAILERS + 1));
        assert!(decode(&trailers, &[]).is_err());
        // Incomplete is not an error: it waits for more.
        assert_eq!(
            decode(b"5\r\nhel", &[]).expect("partial"),
            (b"hel".to_vec(), false, Vec::new())
        );
    }

    #[test]
    fn connection_tokens_decide_close_per_version() {
        assert!(!head(&[]).wants_close());
        assert!(head(&[("Connection", "keep-alive, close")]).wants_close());
        let mut h10 = head(&[]);
        h10.http11 = false;
        assert!(h10.wants_close());
        h10.headers.push(("Connection".into(), "Keep-Alive".into()));
        assert!(!h10.wants_close());
    }
}
