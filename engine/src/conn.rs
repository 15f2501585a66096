//! One connection: its socket, TLS session, codec, buffers and timer slots.
//!
//! This module moves bytes; the decisions (what a read means, when to close)
//! are the engine's.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use mio::{Interest, Registry, Token};
use rotary_proto::Codec;

use crate::keys::{ConnKey, PoolKey, ReqKey};
use crate::session::Session;
use crate::sock::Sock;
use crate::wheel::TimerKey;
use crate::{ConnId, PeerChain};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting for the resolver.
    Resolving,
    /// Non-blocking TCP connect in progress.
    Connecting,
    /// Connected to an `https://` proxy: TLS handshake with it in progress.
    ProxyHandshaking,
    /// Connected to a proxy: `CONNECT` sent, waiting for its answer.
    Tunneling,
    /// TLS handshake in progress.
    Handshaking,
    /// Usable: idle or carrying an exchange.
    Ready,
}

/// The timers a connection may hold, at most one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnTimer {
    /// DNS, connect, proxy handshake, proxy CONNECT or handshake deadline
    /// (one at a time).
    Setup = 0,
    /// Idle timeout.
    Idle = 1,
    /// Max age (with jitter).
    MaxAge = 2,
    /// Drain grace after expiry.
    Drain = 3,
    /// Open the replacement shortly before expiry.
    Prewarm = 4,
    /// Happy Eyeballs: start the next address's attempt while the others
    /// are still connecting.
    Race = 5,
}

pub(crate) const CONN_TIMERS: usize = 6;

/// Result of one read pass.
#[derive(Debug, Default)]
pub(crate) struct ReadPass {
    /// Plaintext bytes appended to `rbuf`.
    pub(crate) bytes: usize,
    /// The peer closed (TCP FIN or TLS close_notify).
    pub(crate) eof: bool,
    /// Over TLS, the TCP connection ended without a close_notify: whatever a
    /// close-delimited body held may have been cut by an attacker.
    pub(crate) unclean: bool,
    /// The read budget ran out before `WouldBlock`: read again later.
    pub(crate) more: bool,
}

/// Failure of a read or write pass.
#[derive(Debug)]
pub(crate) enum IoFailure {
    Io(io::Error),
    Tls(rustls::Error),
}

/// What a connection is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Carrying requests; may resume a stored TLS session.
    Requests,
    /// Replacing a retired connection (prewarm): never resumes a session.
    Replacement,
    /// A TLS-only chain probe: never resumes, never carries a request.
    Probe,
    /// A TLS-only full handshake a host asked for with
    /// `Engine::fresh_chain`: like a probe, and its chain answers the
    /// pool's waiting fresh-chain calls.
    Fresh,
    /// One more TCP connect racing for the connection at this key and id
    /// (Happy Eyeballs). Not part of any pool; the first attempt to connect
    /// hands its socket to that connection and the others close.
    Attempt(Leader),
}

/// The connection an attempt races for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leader {
    pub(crate) key: ConnKey,
    pub(crate) id: ConnId,
}

/// How far the peer's side of the connection has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerEnd {
    /// Still open.
    Open,
    /// Closed (TCP FIN, or TLS close_notify).
    Closed,
    /// Over TLS, the TCP connection ended without a close_notify: whatever a
    /// close-delimited body held may have been cut by an attacker.
    Unclean,
}

/// The addresses of one connection, tried in order (racing, per RFC 8305),
/// and what became of the attempts.
#[derive(Debug, Default)]
pub(crate) struct Dial {
    addrs: Vec<SocketAddr>,
    next: usize,
    /// The latest failure, reported if every address fails.
    pub(crate) last_error: Option<crate::Error>,
    /// Every address that failed, with why, in the order they failed.
    pub(crate) failed: Vec<(SocketAddr, String)>,
    /// The other sockets racing for this connection.
    pub(crate) attempts: Vec<(ConnKey, ConnId)>,
    /// The name's lookup while it is queued or under way: dropped with the
    /// dial (the answer came, or the connection closed), which takes the
    /// ask back so a lookup nobody waits for is not run.
    pub(crate) lookup: Option<crate::dns::Pending>,
}

impl Dial {
    pub(crate) fn new(addrs: Vec<SocketAddr>) -> Dial {
        Dial {
            addrs,
            ..Dial::default()
        }
    }

    /// The next untried address.
    pub(crate) fn next_addr(&mut self) -> Option<SocketAddr> {
        let addr = self.addrs.get(self.next).copied()?;
        self.next += 1;
        Some(addr)
    }

    /// Some address is still untried.
    pub(crate) fn has_next(&self) -> bool {
        self.next < self.addrs.len()
    }
}

/// The order in which to try `addrs` (RFC 8305 §4): the families
/// interleaved, starting with the family of the first address (the
/// resolver's, and so the host's, preference); within a family the
/// resolver's order stays.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
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

/// The room an idle connection's empty buffers keep between exchanges (see
/// [`Conn::release_buffers`]).
pub(crate) const KEEP_BUSY: usize = 1024;

/// What a socket is registered for: both, once (see [`Conn::register`]).
const INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// One connection. Its lifecycle (`stage`) changes only through the
/// transition methods below; the engine decides when to call them.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) pool: PoolKey,
    stage: Stage,
    pub(crate) purpose: Purpose,
    pub(crate) sock: Option<Sock>,
    pub(crate) tls: Option<Box<Session>>,
    /// The addresses and attempts while connecting (boxed and dropped once
    /// TCP connects: an idle connection does not carry them).
    dial: Option<Box<Dial>>,
    peer_addr: Option<SocketAddr>,
    pub(crate) codec: Codec,
    /// Plaintext received and not yet consumed by the codec.
    pub(crate) rbuf: BytesMut,
    /// Plaintext to send (before TLS).
    pub(crate) wbuf: BytesMut,
    /// The request in flight.
    pub(crate) req: Option<ReqKey>,
    /// Exchanges started on this connection.
    pub(crate) served: u32,
    /// Exchanges the server still allows (`Keep-Alive: max`, `max_requests`).
    pub(crate) remaining: Option<u32>,
    /// Set when no new request may be assigned; closed when the exchange ends.
    pub(crate) retiring: Option<crate::CloseReason>,
    /// Why the `MaxAge` timer retires it: max age, or the leaf's notAfter.
    pub(crate) expiry_reason: crate::CloseReason,
    pub(crate) connected_at: Option<Instant>,
    pub(crate) idle_limit: Option<std::time::Duration>,
    /// While idle with an idle limit: when the idle timeout closes it.
    pub(crate) idle_until: Option<Instant>,
    pub(crate) timers: [Option<TimerKey>; CONN_TIMERS],
    pub(crate) chain: Option<Arc<PeerChain>>,
    pub(crate) peer_end: PeerEnd,
    /// A request body is being moved in by the engine's pump.
    pub(crate) uploading: bool,
    /// The host holds the response body back: do not read.
    pub(crate) read_paused: bool,
    /// Plaintext bytes read, in all (for the receive-stall deadline).
    pub(crate) bytes_in: u64,
    /// Bytes written to a plain socket, in all (TLS counts its own).
    plain_out: u64,
}

impl Conn {
    pub(crate) fn new(id: ConnId, pool: PoolKey, purpose: Purpose, codec: Codec) -> Conn {
        Conn {
            id,
            pool,
            stage: Stage::Resolving,
            purpose,
            sock: None,
            tls: None,
            dial: None,
            peer_addr: None,
            codec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            req: None,
            served: 0,
            remaining: None,
            retiring: None,
            expiry_reason: crate::CloseReason::MaxAge,
            connected_at: None,
            idle_limit: None,
            idle_until: None,
            timers: [None; CONN_TIMERS],
            chain: None,
            peer_end: PeerEnd::Open,
            uploading: false,
            read_paused: false,
            bytes_in: 0,
            plain_out: 0,
        }
    }

    /// The dial state, created on first use.
    pub(crate) fn dial_mut(&mut self) -> &mut Dial {
        self.dial.get_or_insert_with(Box::default)
    }

    /// Some address is still untried.
    pub(crate) fn dial_has_next(&self) -> bool {
        self.dial.as_ref().is_some_and(|d| d.has_next())
    }

    /// Start dialling `addrs`, in order.
    pub(crate) fn set_dial(&mut self, addrs: Vec<SocketAddr>) {
        self.dial = Some(Box::new(Dial::new(addrs)));
    }

    /// TCP connected: forget the dial, handing back the attempts that lost.
    pub(crate) fn end_dial(&mut self) -> Vec<(ConnKey, crate::ConnId)> {
        self.dial.take().map(|d| d.attempts).unwrap_or_default()
    }

    /// Bytes written to the socket, in all (ciphertext for TLS).
    pub(crate) fn bytes_out(&self) -> u64 {
        self.plain_out + self.tls.as_ref().map_or(0, |t| t.written())
    }

    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }

    /// Resolving or connecting → connecting to `addr` over `sock`.
    pub(crate) fn start_connecting(&mut self, sock: Sock, addr: SocketAddr) {
        self.sock = Some(sock);
        self.stage = Stage::Connecting;
        self.peer_addr = Some(addr);
    }

    /// Connected to an `https://` proxy → TLS handshake with it: the
    /// socket becomes what `wrap` makes of it (the proxy's session over it).
    pub(crate) fn start_proxy_handshake(&mut self, wrap: impl FnOnce(Sock) -> Sock) {
        if let Some(sock) = self.sock.take() {
            self.sock = Some(wrap(sock));
        }
        self.stage = Stage::ProxyHandshaking;
    }

    /// Connected to a proxy (and handshaken with an `https://` one) →
    /// `CONNECT` in flight.
    pub(crate) fn start_tunnel(&mut self) {
        self.stage = Stage::Tunneling;
    }

    /// Connected (or tunnelled) → TLS handshake in progress.
    pub(crate) fn start_handshake(&mut self, session: Session) {
        self.tls = Some(Box::new(session));
        self.stage = Stage::Handshaking;
    }

    /// Connected (and handshaken) → usable.
    pub(crate) fn set_ready(&mut self) {
        self.stage = Stage::Ready;
    }

    /// Counts toward the pool's connections being opened for requests.
    /// Opened only to see the peer's chain (a probe or a fresh-chain
    /// handshake): it never carries a request, and the pool's `connecting`
    /// count (connections opened for requests) leaves it out.
    pub(crate) fn is_chain_only(&self) -> bool {
        matches!(self.purpose, Purpose::Probe | Purpose::Fresh)
    }

    pub(crate) fn is_opening(&self) -> bool {
        self.stage != Stage::Ready
            && matches!(self.purpose, Purpose::Requests | Purpose::Replacement)
    }

    /// The connection this attempt races for, if it is one.
    pub(crate) fn attempt_for(&self) -> Option<Leader> {
        match self.purpose {
            Purpose::Attempt(of) => Some(of),
            _ => None,
        }
    }

    /// Give up the socket (of a won attempt), registered with the poller,
    /// with its address.
    pub(crate) fn hand_over(&mut self) -> Option<(Sock, SocketAddr)> {
        let sock = self.sock.take()?;
        Some((sock, self.addr()))
    }

    /// Take over the socket of a won attempt: it moves to `token`.
    pub(crate) fn adopt(
        &mut self,
        (mut sock, addr): (Sock, SocketAddr),
        registry: &Registry,
        token: Token,
    ) -> io::Result<()> {
        let result = sock.register(registry, token, INTEREST, false);
        self.start_connecting(sock, addr);
        result
    }

    /// The peer's side has ended (cleanly or not).
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_end != PeerEnd::Open
    }

    /// The address connected to (or being tried); unspecified before any.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.peer_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Ready, not retiring and not carrying an exchange.
    pub(crate) fn is_idle(&self) -> bool {
        self.stage == Stage::Ready && self.req.is_none()
    }

    /// Give back buffer memory while idle: an idle connection should cost
    /// little more than its TLS session. An empty read or write buffer with
    /// more than `keep` bytes of room goes; [`KEEP_BUSY`] when an exchange
    /// ends (a busy keep-alive connection does not reallocate), 0 once the
    /// loop is quiet.
    pub(crate) fn release_buffers(&mut self, keep: usize) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > keep {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > keep {
            self.wbuf = BytesMut::new();
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.release_buffers();
        }
    }

    /// Read until `WouldBlock`, EOF, or `budget` bytes (and, with
    /// `stop_short`, a short read); plaintext goes to `rbuf`. TLS records
    /// are read into the shared `scratch` and decrypted from there; records
    /// the handshake answers with wait for the next `flush` (`sealed` is
    /// left empty).
    pub(crate) fn read_pass(
        &mut self,
        scratch: &mut [u8],
        sealed: &mut Vec<u8>,
        budget: usize,
        stop_short: bool,
    ) -> Result<ReadPass, IoFailure> {
        let mut pass = ReadPass::default();
        let Some(sock) = self.sock.as_mut() else {
            return Ok(pass);
        };
        loop {
            if pass.bytes >= budget {
                pass.more = true;
                return Ok(pass);
            }
            let Some(tls) = self.tls.as_deref_mut() else {
                match sock.read(scratch) {
                    Ok(0) => {
                        pass.eof = true;
                        return Ok(pass);
                    }
                    Ok(n) => {
                        self.rbuf.extend_from_slice(&scratch[..n]);
                        pass.bytes += n;
                        if stop_short && n < scratch.len() {
                            return Ok(pass);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pass),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(IoFailure::Io(e)),
                }
                continue;
            };
            // Carried-over partial input goes in front of the new bytes; in the
            // rare case it nearly fills the scratch, it becomes the buffer.
            let mut pending = tls.take_pending();
            let carried = pending.len();
            let in_scratch = carried + 16 * 1024 <= scratch.len();
            let buf: &mut [u8] = if in_scratch {
                scratch[..carried].copy_from_slice(&pending);
                scratch
            } else {
                pending.resize(carried + 16 * 1024, 0);
                &mut pending
            };
            let mut fin = false;
            let (filled, stop) = match sock.read(&mut buf[carried..]) {
                Ok(0) => {
                    fin = true;
                    (carried, true)
                }
                Ok(n) => (carried + n, stop_short && carried + n < buf.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (carried, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (carried, false),
                Err(e) => return Err(IoFailure::Io(e)),
            };
            let done = tls.process(&mut buf[..filled], &mut self.rbuf, &mut self.wbuf, sealed);
            tls.park(sealed);
            let done = done.map_err(IoFailure::Tls)?;
            pass.bytes += done.plaintext;
            pass.eof |= done.closed || fin;
            pass.unclean |= fin && !done.closed && !tls.peer_closed();
            let consumed = done.consumed.min(filled);
            if in_scratch {
                tls.keep_pending(pending, &scratch[consumed..filled])
            } else {
                pending.copy_within(consumed..filled, 0);
                pending.truncate(filled - consumed);
                tls.keep_pending_vec(pending)
            }
            .map_err(IoFailure::Io)?;
            if stop || pass.eof {
                return Ok(pass);
            }
        }
    }

    /// Write `wbuf` (through TLS, encrypted into the shared `sealed`) until
    /// done or `WouldBlock`.
    pub(crate) fn flush(&mut self, sealed: &mut Vec<u8>) -> Result<(), IoFailure> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        // What an https proxy's session holds goes first (nothing, on a
        // plain socket).
        sock.push().map_err(IoFailure::Io)?;
        let Some(tls) = self.tls.as_deref_mut() else {
            while !self.wbuf.is_empty() {
                match sock.write(&self.wbuf) {
                    Ok(0) => return Err(IoFailure::Io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.wbuf.advance(n);
                        self.plain_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(IoFailure::Io(e)),
                }
            }
            return Ok(());
        };
        if tls.is_handshaking() || !self.wbuf.is_empty() {
            let mut pending = tls.take_pending();
            let done = tls.process(&mut pending, &mut self.rbuf, &mut self.wbuf, sealed);
            let sent = tls.send(sock, sealed);
            let done = done.map_err(IoFailure::Tls)?;
            let consumed = done.consumed.min(pending.len());
            pending.drain(..consumed);
            tls.keep_pending_vec(pending).map_err(IoFailure::Io)?;
            return sent.map_err(IoFailure::Io);
        }
        tls.send(sock, sealed).map_err(IoFailure::Io)
    }

    /// Bytes are waiting to go out.
    pub(crate) fn wants_write(&self) -> bool {
        self.stage == Stage::Connecting
            || !self.wbuf.is_empty()
            || self.tls.as_ref().is_some_and(|t| t.wants_write())
            || self.sock.as_ref().is_some_and(Sock::wants_write)
    }

    /// Register the new socket with the poller, once, for reading and
    /// writing; it stays registered while the connection holds it.
    /// Readiness is edge-triggered: writability is reported only when it
    /// changes (space freed after a write met a full buffer), so `WRITABLE`
    /// costs no wakeup while nothing waits to go out, and the engine drives
    /// a connection the same whichever readiness woke it. So no
    /// re-registration follows the connection's wants (before, each change
    /// of wants cost an `epoll_ctl`: one per connection, two per stalled
    /// upload write).
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self.sock.as_mut() {
            Some(sock) => sock.register(registry, token, INTEREST, true),
            None => Ok(()),
        }
    }

    /// Send close_notify (best effort), deregister and drop the socket.
    pub(crate) fn shutdown(&mut self, registry: &Registry) {
        if let Some(mut sock) = self.sock.take() {
            if let Some(tls) = self.tls.as_deref_mut() {
                if !tls.is_handshaking() {
                    tls.queue_close_notify();
                    let mut pending = tls.take_pending();
                    let mut nothing = BytesMut::new();
                    let mut sealed = Vec::new();
                    let _ = tls.process(
                        &mut pending,
                        &mut nothing,
                        &mut BytesMut::new(),
                        &mut sealed,
                    );
                    let _ = tls.send(&mut sock, &mut sealed);
                }
            }
            sock.deregister(registry);
            sock.shutdown_write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn addresses_interleave_by_family_starting_with_the_first() {
        let got = interleave(addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "[2001:db8::3]:443",
            "192.0.2.1:443",
        ]));
        let want = addrs(&[
            "[2001:db8::1]:443",
            "192.0.2.1:443",
            "[2001:db8::2]:443",
            "[2001:db8::3]:443",
        ]);
        assert_eq!(got, want);
        let got = interleave(addrs(&["192.0.2.1:80", "192.0.2.2:80", "[::1]:80"]));
        assert_eq!(got, addrs(&["192.0.2.1:80", "[::1]:80", "192.0.2.2:80"]));
        assert_eq!(interleave(Vec::new()), Vec::new());
        let one = addrs(&["[::1]:1"]);
        assert_eq!(interleave(one.clone()), one);
    }

    #[test]
    fn a_quiet_idle_connection_gives_back_its_empty_buffers_and_keeps_bytes() {
        let codec = Codec::new(rotary_proto::Limits::default());
        let key = <PoolKey as crate::keys::Key>::from_index(0);
        let mut conn = Conn::new(ConnId(1), key, Purpose::Requests, codec);
        conn.rbuf.reserve(512);
        conn.wbuf.extend_from_slice(b"unsent");
        conn.release_buffers(KEEP_BUSY);
        assert!(
            conn.rbuf.capacity() >= 512,
            "a busy connection keeps its room"
        );
        conn.release_buffers(0);
        assert_eq!(conn.rbuf.capacity(), 0);
        assert_eq!(&conn.wbuf[..], b"unsent", "bytes still to send stay");
        conn.wbuf.clear();
        conn.release_buffers(0);
        assert_eq!(conn.wbuf.capacity(), 0);
    }

    #[test]
    fn a_dial_hands_out_each_address_once() {
        let mut dial = Dial::new(addrs(&["192.0.2.1:1", "192.0.2.2:1"]));
        assert!(dial.has_next());
        assert_eq!(dial.next_addr(), Some(addrs(&["192.0.2.1:1"])[0]));
        assert_eq!(dial.next_addr(), Some(addrs(&["192.0.2.2:1"])[0]));
        assert!(!dial.has_next());
        assert_eq!(dial.next_addr(), None);
    }
}
