//! The byte pipe under a connection: a mio TCP stream, a [`Pipe`] of a
//! [`Network`] the engine was given instead of TCP (the seam the engine
//! fuzzer's in-memory peers enter by), or the TLS session with an
//! `https://` proxy over one of those ([`crate::proxy_tls`]). An enum, so a
//! direct connection pays one match per call for the other cases.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::proxy_tls::ProxyTls;

/// A network the engine dials instead of TCP: every connection is a
/// [`Pipe`] that raises no readiness events, connects at once and is
/// driven by the engine's own turns, and every host name is on it (no
/// lookup). Only with the `test-hooks` feature: the seam of the engine's
/// fuzzer and deterministic tests, not a stable API.
#[allow(unreachable_pub)] // public under `test-hooks` only
pub trait Network: Send + Sync {
    /// Open a pipe to `addr`.
    ///
    /// # Errors
    /// The connect's failure, as a socket's would be reported.
    fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Pipe>>;
}

/// One connection of a [`Network`]: non-blocking bytes both ways
/// (`WouldBlock` when nothing is there).
#[allow(unreachable_pub)] // public under `test-hooks` only
pub trait Pipe: Read + Write + Send {
    /// End the engine's sending side.
    fn shutdown_write(&mut self);
}

/// Where connections go: TCP, or a [`Network`] the engine was given.
pub(crate) enum Net {
    Tcp,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    Given(Arc<dyn Network>),
}

impl Net {
    pub(crate) fn new(given: Option<Arc<dyn Network>>) -> Net {
        given.map_or(Net::Tcp, Net::Given)
    }

    /// The address of `host` when no lookup is needed: an IP literal, or any
    /// name on a given network (which has no names to look up).
    pub(crate) fn literal(&self, host: &str) -> Option<IpAddr> {
        match (host.parse::<IpAddr>(), self) {
            (Ok(ip), _) => Some(ip),
            (Err(_), Net::Given(_)) => Some(IpAddr::from([127, 0, 0, 1])),
            (Err(_), Net::Tcp) => None,
        }
    }

    /// Start a non-blocking connect to `addr`.
    pub(crate) fn connect(&self, addr: SocketAddr) -> io::Result<Sock> {
        match self {
            Net::Tcp => TcpStream::connect(addr).map(Sock::Tcp),
            Net::Given(net) => net.connect(addr).map(Sock::Pipe),
        }
    }
}

pub(crate) enum Sock {
    Tcp(TcpStream),
    Pipe(Box<dyn Pipe>),
    /// TLS to an `https://` proxy over a TCP (or in-memory) socket.
    ProxyTls(Box<ProxyTls<Sock>>),
}

impl Sock {
    pub(crate) fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
        first: bool,
    ) -> io::Result<()> {
        match self {
            Sock::Tcp(s) if first => registry.register(s, token, interest),
            Sock::Tcp(s) => registry.reregister(s, token, interest),
            Sock::Pipe(_) => Ok(()),
            Sock::ProxyTls(t) => t.sock_mut().register(registry, token, interest, first),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        match self {
            Sock::Tcp(s) => {
                let _ = registry.deregister(s);
            }
            Sock::Pipe(_) => {}
            Sock::ProxyTls(t) => t.sock_mut().deregister(registry),
        }
    }

    /// End the sending side (after a close_notify to an `https://` proxy).
    pub(crate) fn shutdown_write(&mut self) {
        match self {
            Sock::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Sock::Pipe(m) => m.shutdown_write(),
            Sock::ProxyTls(t) => {
                t.close_notify();
                t.sock_mut().shutdown_write();
            }
        }
    }

    /// Write what an `https://` proxy's session holds encrypted (a plain
    /// socket holds nothing).
    ///
    /// # Errors
    /// The socket's error.
    #[inline]
    pub(crate) fn push(&mut self) -> io::Result<()> {
        match self {
            Sock::ProxyTls(t) => t.push(),
            Sock::Tcp(_) | Sock::Pipe(_) => Ok(()),
        }
    }

    /// Bytes wait in the pipe itself for the socket to take them.
    #[inline]
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Sock::ProxyTls(t) => t.wants_write(),
            Sock::Tcp(_) | Sock::Pipe(_) => false,
        }
    }

    /// The TLS session with an `https://` proxy, if this pipe is one.
    pub(crate) fn proxy_tls(&self) -> Option<&ProxyTls<Sock>> {
        match self {
            Sock::ProxyTls(t) => Some(t),
            Sock::Tcp(_) | Sock::Pipe(_) => None,
        }
    }

    /// As [`Sock::proxy_tls`], mutably.
    pub(crate) fn proxy_tls_mut(&mut self) -> Option<&mut ProxyTls<Sock>> {
        match self {
            Sock::ProxyTls(t) => Some(t),
            Sock::Tcp(_) | Sock::Pipe(_) => None,
        }
    }

    /// The outcome of a non-blocking connect: `Ok(true)` connected,
    /// `Ok(false)` still in progress.
    pub(crate) fn connect_result(&self) -> io::Result<bool> {
        match self {
            Sock::Tcp(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                match s.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Sock::Pipe(_) => Ok(true),
            Sock::ProxyTls(t) => t.sock().connect_result(),
        }
    }

    pub(crate) fn set_nodelay(&self) {
        match self {
            Sock::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            Sock::Pipe(_) => {}
            Sock::ProxyTls(t) => t.sock().set_nodelay(),
        }
    }

    /// A socket raises readiness events; an in-memory pipe raises none: it
    /// connects at once and is driven by `Engine::drive_silent`.
    pub(crate) fn is_evented(&self) -> bool {
        match self {
            Sock::Tcp(_) => true,
            Sock::Pipe(_) => false,
            Sock::ProxyTls(t) => t.sock().is_evented(),
        }
    }
}

impl Read for Sock {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Pipe(m) => m.read(buf),
            Sock::ProxyTls(t) => t.read(buf),
        }
    }
}

impl Write for Sock {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Pipe(m) => m.write(buf),
            Sock::ProxyTls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.flush(),
            Sock::Pipe(_) => Ok(()),
            Sock::ProxyTls(t) => t.flush(),
        }
    }
}
