//! The addresses of one connection and the attempts racing to connect to
//! them (RFC 8305): which address is next, what failed and why, and the
//! order in which a host's addresses are tried.

use std::net::SocketAddr;

use crate::event::ConnId;
use crate::keys::ConnKey;

/// The addresses of one connection, tried in order (racing, per RFC 8305),
/// and what became of the attempts.
#[derive(Debug, Default)]
pub(in crate::engine) struct Dial {
    addrs: Vec<SocketAddr>,
    next: usize,
    /// The latest failure, reported if every address fails.
    last_error: Option<crate::Error>,
    /// Every address that failed, with why, in the order they failed.
    failed: Vec<(SocketAddr, String)>,
    /// The other sockets racing for this connection.
    attempts: Vec<(ConnKey, ConnId)>,
}

impl Dial {
    /// A dial of `addrs`, in order.
    pub(in crate::engine) fn new(addrs: Vec<SocketAddr>) -> Dial {
        Dial {
            addrs,
            ..Dial::default()
        }
    }

    /// The attempts racing besides the connection's own socket, taken
    /// (the dial ends).
    pub(super) fn take_attempts(&mut self) -> Vec<(ConnKey, ConnId)> {
        std::mem::take(&mut self.attempts)
    }

    /// The next untried address.
    pub(in crate::engine) fn next_addr(&mut self) -> Option<SocketAddr> {
        let addr = self.addrs.get(self.next).copied()?;
        self.next += 1;
        Some(addr)
    }

    /// Some address is still untried.
    pub(in crate::engine) fn has_next(&self) -> bool {
        self.next < self.addrs.len()
    }

    /// Attempts racing besides the connection's own socket.
    pub(in crate::engine) fn racing(&self) -> bool {
        !self.attempts.is_empty()
    }

    pub(in crate::engine) fn add_attempt(&mut self, key: ConnKey, id: ConnId) {
        self.attempts.push((key, id));
    }

    pub(in crate::engine) fn drop_attempt(&mut self, key: ConnKey) {
        self.attempts.retain(|&(k, _)| k != key);
    }

    /// Remember why `addr` failed; the last one is what a lost race reports.
    pub(in crate::engine) fn note_failure(
        &mut self,
        addr: SocketAddr,
        why: String,
        err: crate::Error,
    ) {
        self.failed.push((addr, why));
        self.last_error = Some(err);
    }

    /// The error of a dial none of whose addresses connected: the last
    /// failure, naming the earlier ones (`None`: nothing was tried).
    pub(in crate::engine) fn lost(&mut self) -> Option<crate::Error> {
        let mut err = self.last_error.take()?;
        if let crate::Error::Connect { earlier, .. } = &mut err {
            let n = self.failed.len().saturating_sub(1);
            *earlier = self.failed.drain(..n).collect();
        }
        Some(err)
    }
}

/// The order in which to try `addrs` (RFC 8305 §4): the families
/// interleaved, starting with the family of the first address (the
/// resolver's, and so the host's, preference); within a family the
/// resolver's order stays.
pub(in crate::engine) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let v6_first = first.is_ipv6();
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == v6_first);
    let mut out = Vec::with_capacity(addrs.len());
    let (mut p, mut o) = (preferred.into_iter(), other.into_iter());
    loop {
        match (p.next(), o.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}
