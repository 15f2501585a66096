//! The byte stream of one server-side connection: plain TCP, or rustls over
//! TCP. Owns nothing but the stream; flushing a TLS stream puts every queued
//! record on the wire, so that a cut after it cuts exactly there.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::server::ServerConnection;

/// The connection's byte stream: plain TCP or rustls over TCP.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Io {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(t) => &t.sock,
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(t) => {
                t.flush()?;
                while t.conn.wants_write() {
                    t.conn.write_tls(&mut t.sock)?;
                }
                Ok(())
            }
        }
    }
}
