//! The byte pipe under a connection: a mio TCP stream, or an in-memory pipe
//! from [`crate::fuzzing::MemNet`] that lets a fuzzer play the peer.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::fuzzing::{MemConn, MemNet};

/// Where connections go: TCP, or the in-memory pipes of a fuzzer. The one
/// place the engine's production path meets the fuzzing hooks.
pub(crate) enum Net {
    Tcp,
    Mem(MemNet),
}

impl Net {
    pub(crate) fn new(memnet: Option<MemNet>) -> Net {
        memnet.map_or(Net::Tcp, Net::Mem)
    }

    /// The address of `host` when no lookup is needed: an IP literal, or any
    /// name on an in-memory network (which has no names to look up).
    pub(crate) fn literal(&self, host: &str) -> Option<IpAddr> {
        match (host.parse::<IpAddr>(), self) {
            (Ok(ip), _) => Some(ip),
            (Err(_), Net::Mem(_)) => Some(IpAddr::from([127, 0, 0, 1])),
            (Err(_), Net::Tcp) => None,
        }
    }

    /// Start a non-blocking connect to `addr`.
    pub(crate) fn connect(&self, addr: SocketAddr) -> io::Result<Sock> {
        match self {
            Net::Tcp => TcpStream::connect(addr).map(Sock::Tcp),
            Net::Mem(net) => Ok(Sock::Mem(net.connect(addr))),
        }
    }
}

pub(crate) enum Sock {
    Tcp(TcpStream),
    Mem(MemConn),
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
            Sock::Mem(_) => Ok(()),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if let Sock::Tcp(s) = self {
            let _ = registry.deregister(s);
        }
    }

    pub(crate) fn shutdown_write(&self) {
        match self {
            Sock::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Sock::Mem(m) => m.shutdown_write(),
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
            Sock::Mem(_) => Ok(true),
        }
    }

    pub(crate) fn set_nodelay(&self) {
        if let Sock::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    /// A socket raises readiness events; an in-memory pipe raises none: it
    /// connects at once and is driven by `Engine::drive_silent`.
    pub(crate) fn is_evented(&self) -> bool {
        matches!(self, Sock::Tcp(_))
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Mem(m) => m.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Mem(m) => m.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.flush(),
            Sock::Mem(_) => Ok(()),
        }
    }
}
