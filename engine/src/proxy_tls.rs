//! The TLS session with an `https://` proxy, as the byte pipe under a
//! connection: [`ProxyTls`] reads and writes like a socket, and what goes
//! through it is plaintext to the proxy (the `CONNECT`, then the origin's
//! own TLS records, or an `http://` origin's absolute-form requests).
//!
//! Owns the outer rustls session and the pipe under it (generic: this file
//! knows nothing of sockets, [`crate::sock`] wraps it). A connection
//! through an `https://` proxy to an `https://` origin so runs two TLS
//! sessions on one socket: the origin's (`crate::session`, inside) is
//! written and read through this one. Direct connections and `http://`
//! proxies never build one: their pipe is the socket itself.
//!
//! The readiness contract the connection relies on holds through this
//! pipe: `read` answers `WouldBlock` only once the socket did and no
//! decrypted byte is left in the session, and a read shorter than asked
//! only when the socket answered `WouldBlock`, EOF or a short read (the
//! same sign of a drained socket the connection takes from a plain one);
//! so a new readiness edge always follows. `write` takes bytes only when the session's
//! encrypted output is flushed (else `WouldBlock`), so what it holds is
//! bounded by one write (and rustls's buffer limit), and [`ProxyTls::push`]
//! writes what is left when the socket turns writable.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::chain::PeerChain;

/// A rustls failure on the proxy's session, carried inside an `io::Error`
/// through the `Read`/`Write` interface (see [`tls_failure`]).
#[derive(Debug)]
struct ProxyTlsError(rustls::Error);

impl std::fmt::Display for ProxyTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls with the proxy: {}", self.0)
    }
}

impl std::error::Error for ProxyTlsError {}

/// The rustls error inside `e`, when `e` is a failure of the proxy's TLS
/// session rather than of the socket.
pub(crate) fn tls_failure(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()?
        .downcast_ref::<ProxyTlsError>()
        .map(|t| t.0.clone())
}

/// The TLS session with a proxy over the pipe `S` (its socket).
pub(crate) struct ProxyTls<S> {
    sock: S,
    tls: ClientConnection,
    /// The socket ended (read returned 0).
    eof: bool,
    /// The proxy's verified chain, once the handshake is done.
    chain: Option<Arc<PeerChain>>,
}

/// A client session with the proxy named `name`.
///
/// # Errors
/// rustls's, for a configuration it cannot start a session with.
pub(crate) fn session_for(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<ClientConnection, rustls::Error> {
    ClientConnection::new(config, name)
}

impl<S: Read + Write> ProxyTls<S> {
    /// The session `tls` over `sock`; its ClientHello goes out with the
    /// next [`ProxyTls::push`].
    pub(crate) fn new(sock: S, tls: ClientConnection) -> ProxyTls<S> {
        ProxyTls {
            sock,
            tls,
            eof: false,
            chain: None,
        }
    }

    /// The pipe under the session.
    pub(crate) fn sock(&self) -> &S {
        &self.sock
    }

    /// The pipe under the session, mutably (to register it, to end it).
    pub(crate) fn sock_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// The handshake with the proxy is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// The session's facts (version, suite, the certificates presented).
    pub(crate) fn session(&self) -> &ClientConnection {
        &self.tls
    }

    /// The proxy's verified chain, once the handshake is done and the
    /// engine has recorded it.
    pub(crate) fn chain(&self) -> Option<&Arc<PeerChain>> {
        self.chain.as_ref()
    }

    pub(crate) fn set_chain(&mut self, chain: Arc<PeerChain>) {
        self.chain = Some(chain);
    }

    /// Encrypted bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Write the session's encrypted output until done or `WouldBlock`.
    ///
    /// # Errors
    /// The socket's error.
    pub(crate) fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queue a close_notify and write it if the socket takes it (best
    /// effort); ending the pipe itself is its owner's.
    pub(crate) fn close_notify(&mut self) {
        if !self.tls.is_handshaking() {
            self.tls.send_close_notify();
            let _ = self.push();
        }
    }
}

impl<S: Read + Write> Read for ProxyTls<S> {
    /// Decrypted bytes from the proxy: `Ok(0)` at the end (close_notify, or
    /// the socket's EOF: whether the inner stream ended cleanly is the
    /// inner session's to judge), `WouldBlock` when nothing is left.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        // The last socket read was short: the socket is drained, as the
        // connection assumes of a plain socket's short read.
        let mut drained = false;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            if self.eof || (drained && filled > 0) {
                // A short answer: the next edge brings more. (Without
                // it, one more read per response only to hear WouldBlock.)
                return Ok(filled);
            }
            // The session's plaintext is drained: only now read more
            // records, so rustls's received-plaintext limit never trips.
            let mut from = Drained {
                sock: &mut self.sock,
                short: false,
            };
            match self.tls.read_tls(&mut from) {
                Ok(0) => self.eof = true,
                Ok(_) => drained = from.short,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert rustls queued, best effort.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, ProxyTlsError(e)));
            }
            // Handshake answers, key updates: out at once.
            self.push()?;
        }
    }
}

/// The socket, noting whether a read returned less than asked.
struct Drained<'a, S> {
    sock: &'a mut S,
    short: bool,
}

impl<S: Read> Read for Drained<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl<S: Read + Write> Write for ProxyTls<S> {
    /// Encrypt and send `buf` (or as much as the session takes); nothing
    /// is taken while earlier output still waits for the socket.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}
