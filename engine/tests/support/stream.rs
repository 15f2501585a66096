//! A blocking byte stream over TCP, plain or inside rustls, for both ends the
//! support code plays (the test server's connections, the blocking client),
//! and the line splitting both read HTTP heads with. Owns only the stream
//! and the caller's buffer it is handed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};

use rustls::{ConnectionCommon, SideData, StreamOwned};

/// Plain TCP, or rustls over TCP; `C` is rustls's client or server connection.
pub(crate) enum Stream<C> {
    Plain(TcpStream),
    Tls(Box<StreamOwned<C, TcpStream>>),
}

impl<C> Stream<C> {
    /// The TCP socket under it (for timeouts and shutdowns).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
}

impl<C, S> Read for Stream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl<C, S> Write for Stream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    /// For TLS, also every queued record: the server's cuts at a byte offset
    /// rely on the bytes before the cut being on the wire when it returns.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => {
                t.flush()?;
                while t.conn.wants_write() {
                    t.conn.write_tls(&mut t.sock)?;
                }
                Ok(())
            }
        }
    }
}

/// Takes the first whole line out of `buf`, without its LF or CRLF (lossy
/// UTF-8); `None` while `buf` holds no LF.
pub(crate) fn take_line(buf: &mut Vec<u8>) -> Option<String> {
    let pos = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=pos).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}
