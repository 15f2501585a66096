//! A minimal blocking HTTP/1.1 client (std TcpStream, optionally rustls) for
//! checking the test server itself, and for "a plain rustls client would see…"
//! comparisons in engine tests. Not the engine, and not meant to be clever.
//! Owns one connection and its read buffer; changes nothing outside them.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use super::stream::{take_line, Stream};

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// Interim (1xx) statuses received before this response.
    pub interim: Vec<u16>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One blocking client connection.
pub struct Client {
    stream: Stream<ClientConnection>,
    buf: Vec<u8>,
}

impl Client {
    /// Plain TCP connection to `addr`; reads time out after `timeout`.
    pub fn plain(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        Ok(Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        })
    }

    /// TLS connection to `addr` for `server_name`, handshake completed; reads
    /// time out after `timeout`. Handshake errors come back as `io::Error`
    /// wrapping the rustls error.
    pub fn tls(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> io::Result<Client> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::new(),
        })
    }

    /// The server's chain as the client's rustls reports it (for a resumed
    /// session: the chain of the session's original full handshake).
    pub fn peer_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s
                .conn
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect()),
        }
    }

    /// Full or resumed (`None` for plain).
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.conn.handshake_kind(),
        }
    }

    /// Sets the read timeout of later reads.
    pub fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(Some(d))
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `GET path` (Host: localhost) and reads the response.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        self.read_response(false)
    }

    /// Sends `method path` with a body (Content-Length) and reads the response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)?;
        self.read_response(method == "HEAD")
    }

    /// Reads until EOF and returns everything (for raw/garbage replies).
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.buf);
        match self.stream.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(out),
            Err(e) => Err(e),
        }
    }

    /// Whether the server has closed: a read returns EOF (or an error) within `timeout`.
    pub fn is_closed_by_peer(&mut self, timeout: Duration) -> bool {
        let _ = self.set_read_timeout(timeout);
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(line) = take_line(&mut self.buf) {
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one response (skipping interim ones); `head_only` for HEAD requests.
    pub fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut interim = Vec::new();
        let (status, headers) = loop {
            let status_line = self.line()?;
            let mut parts = status_line.splitn(3, ' ');
            let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
                return Err(bad(format!("status line {status_line:?}")));
            };
            if !version.starts_with("HTTP/1.") {
                return Err(bad(format!("status line {status_line:?}")));
            }
            let status: u16 = code.parse().map_err(|_| bad(format!("status {code:?}")))?;
            let mut headers = Vec::new();
            loop {
                let line = self.line()?;
                if line.is_empty() {
                    break;
                }
                let (n, v) = line
                    .split_once(':')
                    .ok_or_else(|| bad(format!("header {line:?}")))?;
                headers.push((n.to_owned(), v.trim().to_owned()));
            }
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            break (status, headers);
        };
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            interim,
        };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.line()?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad(format!("chunk size {line:?}")))?;
                if size == 0 {
                    break;
                }
                let data = self.exact(size)?;
                resp.body.extend_from_slice(&data);
                self.line()?;
            }
            loop {
                let line = self.line()?;
                if line.is_empty() {
                    break;
                }
                if let Some((n, v)) = line.split_once(':') {
                    resp.trailers.push((n.to_owned(), v.trim().to_owned()));
                }
            }
        } else if let Some(len) = resp.header("content-length") {
            let n: usize = len
                .parse()
                .map_err(|_| bad(format!("content-length {len:?}")))?;
            resp.body = self.exact(n)?;
        } else {
            resp.body = self.read_to_end()?;
        }
        Ok(resp)
    }
}
