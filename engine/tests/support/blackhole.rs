//! An address on loopback where TCP connects hang, as to a host that drops
//! packets: a listener with a backlog of 0 whose one queued connection is
//! never accepted. Linux then drops further SYNs (the accept queue is full)
//! and the client waits for SYN-ACKs that never come. Owns that listener,
//! its one queued connection and the runtime that made the listener; it
//! changes nothing else, and nothing changes them until drop.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct BlackHole {
    addr: SocketAddr,
    // Held, never read: they keep the queue full.
    _listener: tokio::net::TcpListener,
    _filler: TcpStream,
    _rt: tokio::runtime::Runtime,
}

impl BlackHole {
    /// Panics with a clear message when this machine answers instead (for
    /// example `net.ipv4.tcp_abort_on_overflow = 1` turns drops into resets).
    pub fn new() -> BlackHole {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                socket.listen(0)
            })
            .expect("listen with backlog 0");
        let addr = listener.local_addr().expect("local addr");
        let filler =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("the one queued");
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        assert!(
            matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "a connect to a full accept queue should hang here, got {probe:?}"
        );
        BlackHole {
            addr,
            _listener: listener,
            _filler: filler,
            _rt: rt,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
