//! The byte pipe under a connection: a mio TCP stream, or an in-memory pipe
//! from [`crate::fuzzing::MemNet`] that lets a fuzzer play the peer.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::fuzzing::MemConn;

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

    pub(crate) fn connect(addr: SocketAddr) -> io::Result<Sock> {
        TcpStream::connect(addr).map(Sock::Tcp)
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
