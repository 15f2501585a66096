//! One connection: its pipe and plaintext buffers, its deadlines, and its
//! [`Stage`], whose variants hold what only that stage has (the dial while
//! connecting, the `CONNECT`'s codec while tunnelling, the TLS session
//! while handshaking; the session, chain, codec and exchange once ready).
//!
//! Owns every field of [`Conn`]; the engine changes a connection only
//! through the methods here, which keep its stage's invariants (a request
//! is put on a ready, idle connection; a stage's data goes with the stage).
//! It moves bytes and answers questions; deciding what they mean is the
//! engine's. Knows the timer kinds ([`super::timers`]) and nothing else of
//! the engine.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use mio::{Interest, Registry, Token};
use rotary_proto::{Codec, ResponseEvent, State};

use crate::chain::PeerChain;
use crate::credentials::Epoch;
use crate::dns::Pending;
use crate::error::Deadline;
use crate::event::{CloseReason, ConnId};
use crate::keys::{ConnKey, PoolKey, ReqKey};
use crate::session::Session;
use crate::sock::Sock;
use crate::wheel::TimerKey;

mod dial;
mod link;
mod ready;

pub(super) use dial::{interleave, Dial};
use link::Link;
pub(super) use link::{IoFailure, ReadPass};
pub(super) use ready::IdleCheck;
use ready::{PeerEnd, Ready};

use super::timers::{ConnTimer, TimerSet, Timers};

/// What a connection is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
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
pub(super) struct Leader {
    pub(super) key: ConnKey,
    pub(super) id: ConnId,
}

/// Where a connection is in its life, with what only that stage has.
pub(super) enum Stage {
    /// Waiting for the resolver; the ask goes with the stage.
    Resolving(Option<Pending>),
    /// Non-blocking TCP connects in progress.
    Connecting(Box<Dial>),
    /// Connected to an `https://` proxy: TLS handshake with it in progress
    /// (its session is the pipe: [`Sock::ProxyTls`]).
    ProxyHandshaking,
    /// Connected to a proxy: `CONNECT` sent with this codec, its answer
    /// awaited.
    Tunneling(Codec),
    /// TLS handshake with the origin in progress, with the credential
    /// epoch its configuration was chosen in.
    Handshaking(Box<Session>, Epoch),
    /// Usable: idle or carrying an exchange.
    Ready(Ready),
}

/// The name of a stage, for matching without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StageName {
    Resolving,
    Connecting,
    ProxyHandshaking,
    Tunneling,
    Handshaking,
    Ready,
}

/// The room an idle connection's empty buffers keep between exchanges (see
/// [`Conn::release_buffers`]).
pub(super) const KEEP_BUSY: usize = 1024;

/// What a socket is registered for: both, once (see [`Conn::register`]).
const INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// One connection.
pub(super) struct Conn {
    id: ConnId,
    pool: PoolKey,
    purpose: Purpose,
    timers: TimerSet<ConnTimer>,
    link: Link,
    stage: Stage,
    /// Set when no new request may be assigned; it closes when its exchange
    /// ends (or, before it is ready, once it is).
    retiring: Option<CloseReason>,
    /// Why the `MaxAge` timer retires it: max age, or the leaf's notAfter.
    expiry: CloseReason,
    /// Counted in its pool as being opened for requests, until it joins
    /// the pool's idle connections (or closes).
    opening: bool,
}

impl Conn {
    pub(super) fn new(id: ConnId, pool: PoolKey, purpose: Purpose) -> Conn {
        Conn {
            id,
            pool,
            purpose,
            timers: TimerSet::default(),
            link: Link::default(),
            stage: Stage::Resolving(None),
            retiring: None,
            expiry: CloseReason::MaxAge,
            opening: matches!(purpose, Purpose::Requests | Purpose::Replacement),
        }
    }

    // ---- what it is

    #[inline]
    pub(super) fn id(&self) -> ConnId {
        self.id
    }

    #[inline]
    pub(super) fn pool(&self) -> PoolKey {
        self.pool
    }

    #[inline]
    pub(super) fn purpose(&self) -> Purpose {
        self.purpose
    }

    #[inline]
    pub(super) fn stage(&self) -> StageName {
        match self.stage {
            Stage::Resolving(_) => StageName::Resolving,
            Stage::Connecting(_) => StageName::Connecting,
            Stage::ProxyHandshaking => StageName::ProxyHandshaking,
            Stage::Tunneling(_) => StageName::Tunneling,
            Stage::Handshaking(..) => StageName::Handshaking,
            Stage::Ready(_) => StageName::Ready,
        }
    }

    /// The deadline its `Setup` timer stands for in its stage.
    #[inline]
    pub(super) fn setup_deadline(&self) -> Option<Deadline> {
        match self.stage {
            Stage::Resolving(_) => Some(Deadline::Dns),
            Stage::Connecting(_) => Some(Deadline::Connect),
            Stage::ProxyHandshaking => Some(Deadline::ProxyHandshake),
            Stage::Tunneling(_) => Some(Deadline::ProxyConnect),
            Stage::Handshaking(..) => Some(Deadline::Handshake),
            Stage::Ready(_) => None,
        }
    }

    /// Opened only to see the peer's chain (a probe or a fresh-chain
    /// handshake): it never carries a request, and the pool's count of
    /// connections being opened for requests leaves it out.
    #[inline]
    pub(super) fn is_chain_only(&self) -> bool {
        matches!(self.purpose, Purpose::Probe | Purpose::Fresh)
    }

    /// Being opened for requests (counted in its pool's `connecting`).
    #[inline]
    pub(super) fn is_opening(&self) -> bool {
        self.opening
    }

    /// It joins its pool's idle connections: true when it counted as being
    /// opened until now.
    pub(super) fn joined(&mut self) -> bool {
        std::mem::take(&mut self.opening)
    }

    /// The connection this attempt races for, if it is one.
    #[inline]
    pub(super) fn attempt_for(&self) -> Option<Leader> {
        match self.purpose {
            Purpose::Attempt(of) => Some(of),
            _ => None,
        }
    }

    /// Ready and carrying no exchange.
    #[inline]
    pub(super) fn is_idle(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.exchange.is_none())
    }

    /// The request of the exchange it carries.
    #[inline]
    pub(super) fn exchange(&self) -> Option<ReqKey> {
        match &self.stage {
            Stage::Ready(r) => r.exchange.map(|e| e.req),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn retiring(&self) -> Option<CloseReason> {
        self.retiring
    }

    /// Take no new request; close once the exchange (if any) ends. The
    /// first reason stays.
    pub(super) fn retire(&mut self, reason: CloseReason) {
        self.retiring.get_or_insert(reason);
    }

    pub(super) fn expiry_reason(&self) -> CloseReason {
        self.expiry
    }

    /// The `MaxAge` timer now stands for the leaf's notAfter.
    pub(super) fn expire_at_cert(&mut self) {
        self.expiry = CloseReason::CertExpiry;
    }

    /// The address connected to (or being tried); unspecified before any.
    #[inline]
    pub(super) fn addr(&self) -> SocketAddr {
        self.link
            .peer_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The peer's side of a ready connection has ended (cleanly or not).
    #[inline]
    pub(super) fn peer_closed(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.peer_end != PeerEnd::Open)
    }

    /// Over TLS, the peer ended without a close_notify.
    #[inline]
    pub(super) fn peer_ended_unclean(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.peer_end == PeerEnd::Unclean)
    }

    /// The peer ended its side: cleanly unless it was `unclean` already.
    #[inline]
    pub(super) fn note_peer_end(&mut self, unclean: bool) {
        if let Stage::Ready(r) = &mut self.stage {
            if unclean {
                r.peer_end = PeerEnd::Unclean;
            } else if r.peer_end == PeerEnd::Open {
                r.peer_end = PeerEnd::Closed;
            }
        }
    }

    /// Exchanges started on it.
    #[inline]
    pub(super) fn served(&self) -> u32 {
        match &self.stage {
            Stage::Ready(r) => r.served,
            _ => 0,
        }
    }

    /// The origin's verified chain, once ready over TLS.
    #[inline]
    pub(super) fn chain(&self) -> Option<&Arc<PeerChain>> {
        match &self.stage {
            Stage::Ready(r) => r.chain.as_ref(),
            _ => None,
        }
    }

    /// The origin's TLS session (handshaking or ready).
    #[inline]
    pub(super) fn session(&self) -> Option<&Session> {
        match &self.stage {
            Stage::Handshaking(s, _) => Some(&**s),
            Stage::Ready(r) => r.tls.as_deref(),
            _ => None,
        }
    }

    /// The credential epoch of its origin's TLS: chosen with its
    /// configuration (handshaking), and moved on for the anchors and CRLs
    /// whenever its chain is judged valid again (ready). `None` before the
    /// handshake and for `http://`.
    pub(super) fn epoch(&self) -> Option<Epoch> {
        match &self.stage {
            Stage::Handshaking(_, e) => Some(*e),
            Stage::Ready(Ready {
                tls: Some(_),
                epoch,
                ..
            }) => Some(*epoch),
            _ => None,
        }
    }

    /// The pipe (for the proxy's session under it).
    #[inline]
    pub(super) fn sock(&self) -> Option<&Sock> {
        self.link.sock.as_ref()
    }

    #[inline]
    pub(super) fn sock_mut(&mut self) -> Option<&mut Sock> {
        self.link.sock.as_mut()
    }

    // ---- its deadlines

    /// Its slot for timers of kind `k` (written only through [`Timers`]).
    #[inline]
    pub(super) fn timer_slot(&mut self, k: ConnTimer) -> &mut Option<TimerKey> {
        self.timers.slot(k)
    }

    #[inline]
    pub(super) fn timer(&self, k: ConnTimer) -> Option<TimerKey> {
        self.timers.get(k)
    }

    // ---- stages

    /// Resolving: the name's lookup is `lookup` (taken back if the stage ends first).
    pub(super) fn await_lookup(&mut self, lookup: Pending) {
        if let Stage::Resolving(slot) = &mut self.stage {
            *slot = Some(lookup);
        }
    }

    /// Resolved (or an IP literal): dial `addrs`, in order.
    pub(super) fn start_dial(&mut self, addrs: Vec<SocketAddr>) {
        self.stage = Stage::Connecting(Box::new(Dial::new(addrs)));
    }

    /// The dial, while connecting.
    pub(super) fn dial_mut(&mut self) -> Option<&mut Dial> {
        match &mut self.stage {
            Stage::Connecting(d) => Some(d),
            _ => None,
        }
    }

    /// It holds a socket (its own attempt is under way).
    pub(super) fn has_sock(&self) -> bool {
        self.link.sock.is_some()
    }

    /// Connecting to `addr` over `sock` (a new attempt of its own).
    pub(super) fn start_connecting(&mut self, sock: Sock, addr: SocketAddr) {
        self.link.sock = Some(sock);
        self.link.peer_addr = Some(addr);
    }

    /// Its own attempt failed: the socket goes, the dial stays.
    pub(super) fn drop_sock(&mut self, registry: &Registry) {
        if let Some(mut sock) = self.link.sock.take() {
            sock.deregister(registry);
            sock.shutdown_write();
        }
    }

    /// Give up the socket (of a won attempt), registered with the poller,
    /// with its address.
    pub(super) fn hand_over(&mut self) -> Option<(Sock, SocketAddr)> {
        let sock = self.link.sock.take()?;
        Some((sock, self.addr()))
    }

    /// Take over the socket of a won attempt: it moves to `token`; its own
    /// attempt, if any, lost.
    pub(super) fn adopt(
        &mut self,
        (mut sock, addr): (Sock, SocketAddr),
        registry: &Registry,
        token: Token,
    ) -> io::Result<()> {
        self.drop_sock(registry);
        let result = sock.register(registry, token, INTEREST, false);
        self.start_connecting(sock, addr);
        result
    }

    /// The attempts racing for it, taken (it closes while connecting).
    pub(super) fn take_attempts(&mut self) -> Vec<(ConnKey, ConnId)> {
        match &mut self.stage {
            Stage::Connecting(dial) => dial.take_attempts(),
            _ => Vec::new(),
        }
    }

    /// TCP connected: the dial ends, handing back the attempts that lost.
    /// The next stage is the caller's to start.
    pub(super) fn connected(&mut self) -> Vec<(ConnKey, ConnId)> {
        if let Some(sock) = self.link.sock.as_ref() {
            sock.set_nodelay();
        }
        match std::mem::replace(&mut self.stage, Stage::ProxyHandshaking) {
            Stage::Connecting(mut dial) => dial.take_attempts(),
            other => {
                self.stage = other;
                Vec::new()
            }
        }
    }

    /// Connected to an `https://` proxy → TLS handshake with it: the pipe
    /// becomes what `wrap` makes of it (the proxy's session over it).
    pub(super) fn start_proxy_handshake(&mut self, wrap: impl FnOnce(Sock) -> Sock) {
        if let Some(sock) = self.link.sock.take() {
            self.link.sock = Some(wrap(sock));
        }
        self.stage = Stage::ProxyHandshaking;
    }

    /// Connected to a proxy (and handshaken with an `https://` one) →
    /// `CONNECT` in flight: `write` puts it into the write buffer with the
    /// tunnel's own codec.
    pub(super) fn start_tunnel<E>(
        &mut self,
        codec: Codec,
        write: impl FnOnce(&mut Codec, &mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut codec = codec;
        write(&mut codec, &mut self.link.wbuf)?;
        self.stage = Stage::Tunneling(codec);
        Ok(())
    }

    /// The proxy's answer to the `CONNECT` so far (tunnelling only).
    pub(super) fn poll_tunnel(
        &mut self,
    ) -> Option<Result<Option<ResponseEvent>, rotary_proto::Error>> {
        match &mut self.stage {
            Stage::Tunneling(codec) => Some(codec.poll_response(&mut self.link.rbuf)),
            _ => None,
        }
    }

    /// The proxy closed before answering the `CONNECT` in full: what its
    /// codec makes of it.
    pub(super) fn tunnel_eof(&mut self) -> Result<Option<ResponseEvent>, rotary_proto::Error> {
        match &mut self.stage {
            Stage::Tunneling(codec) => codec.handle_eof(),
            _ => Err(rotary_proto::Error::ClosedBeforeResponse),
        }
    }

    /// The `CONNECT` was answered with a 2xx: the connection is a tunnel.
    pub(super) fn tunnel_open(&self) -> bool {
        matches!(&self.stage, Stage::Tunneling(c) if c.state() == State::Tunnel)
    }

    /// The tunnel is up: what followed the proxy's answer belongs to the
    /// origin's TLS, whose handshake starts now.
    pub(super) fn tunnel_up(&mut self) -> BytesMut {
        self.link.rbuf.split()
    }

    /// Connected (or tunnelled) → TLS handshake with the origin, with a
    /// configuration of credential epoch `epoch`.
    pub(super) fn start_handshake(&mut self, session: Session, epoch: Epoch) {
        self.stage = Stage::Handshaking(Box::new(session), epoch);
    }

    /// The origin's handshake is done (or TCP is up for `http://`).
    #[inline]
    pub(super) fn handshake_done(&self) -> bool {
        match &self.stage {
            Stage::Handshaking(s, _) => !s.is_handshaking(),
            _ => false,
        }
    }

    // ---- bytes

    /// Plaintext bytes read, in all.
    #[inline]
    pub(super) fn bytes_in(&self) -> u64 {
        self.link.bytes_in
    }

    /// Bytes written to the socket, in all (ciphertext for TLS).
    #[inline]
    pub(super) fn bytes_out(&self) -> u64 {
        self.link.plain_out + self.session().map_or(0, |t| t.written())
    }

    /// Give back buffer memory while idle: an idle connection should cost
    /// little more than its TLS session. An empty read or write buffer with
    /// more than `keep` bytes of room goes; [`KEEP_BUSY`] when an exchange
    /// ends (a busy keep-alive connection does not reallocate), 0 once the
    /// loop is quiet.
    #[inline]
    pub(super) fn release_buffers(&mut self, keep: usize) {
        let link = &mut self.link;
        if link.rbuf.is_empty() && link.rbuf.capacity() > keep {
            link.rbuf = BytesMut::new();
        }
        if link.wbuf.is_empty() && link.wbuf.capacity() > keep {
            link.wbuf = BytesMut::new();
        }
        if let Stage::Ready(Ready { tls: Some(tls), .. }) = &mut self.stage {
            tls.release_buffers();
        }
    }

    /// The origin's session and the link, borrowed apart.
    #[inline]
    fn parts(&mut self) -> (&mut Link, Option<&mut Session>) {
        let tls = match &mut self.stage {
            Stage::Handshaking(s, _) => Some(&mut **s),
            Stage::Ready(Ready { tls: Some(s), .. }) => Some(&mut **s),
            _ => None,
        };
        (&mut self.link, tls)
    }

    /// Read until `WouldBlock`, EOF, or `budget` bytes (and, with
    /// `stop_short`, a short read); plaintext goes to the read buffer. TLS
    /// records are read into the shared `scratch` and decrypted from
    /// there; records the handshake answers with wait for the next `flush`
    /// (`sealed` is left empty).
    #[inline]
    pub(super) fn read_pass(
        &mut self,
        scratch: &mut [u8],
        sealed: &mut Vec<u8>,
        budget: usize,
        stop_short: bool,
    ) -> Result<ReadPass, IoFailure> {
        let (link, tls) = self.parts();
        let pass = link.read_pass(tls, scratch, sealed, budget, stop_short)?;
        self.link.bytes_in += pass.bytes as u64;
        Ok(pass)
    }

    /// Write the write buffer (through TLS, encrypted into the shared
    /// `sealed`) until done or `WouldBlock`.
    #[inline]
    pub(super) fn flush(&mut self, sealed: &mut Vec<u8>) -> Result<(), IoFailure> {
        let (link, tls) = self.parts();
        link.flush(tls, sealed)
    }

    /// Bytes are waiting to go out.
    #[inline]
    pub(super) fn wants_write(&self) -> bool {
        matches!(self.stage, Stage::Connecting(_))
            || !self.link.wbuf.is_empty()
            || self.session().is_some_and(|t| t.wants_write())
            || self.link.sock.as_ref().is_some_and(Sock::wants_write)
    }

    /// Register the new socket with the poller, once, for reading and
    /// writing; it stays registered while the connection holds it.
    /// Readiness is edge-triggered: writability is reported only when it
    /// changes (space freed after a write met a full buffer), so `WRITABLE`
    /// costs no wakeup while nothing waits to go out, and the engine drives
    /// a connection the same whichever readiness woke it. So no
    /// re-registration follows the connection's wants.
    pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self.link.sock.as_mut() {
            Some(sock) => sock.register(registry, token, INTEREST, true),
            None => Ok(()),
        }
    }

    /// It ends: every deadline it holds goes, close_notify is sent (best
    /// effort), the socket is deregistered and dropped.
    pub(super) fn shut(&mut self, timers: &mut Timers, registry: &Registry) {
        self.timers.clear_all(timers);
        let Some(mut sock) = self.link.sock.take() else {
            return;
        };
        if let Stage::Ready(Ready { tls: Some(tls), .. }) = &mut self.stage {
            tls.queue_close_notify();
            let mut pending = tls.take_pending();
            let mut sealed = Vec::new();
            let _ = tls.process(
                &mut pending,
                &mut BytesMut::new(),
                &mut BytesMut::new(),
                &mut sealed,
            );
            let _ = tls.send(&mut sock, &mut sealed);
        }
        sock.deregister(registry);
        sock.shutdown_write();
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
        let key = <PoolKey as crate::keys::Key>::from_index(0);
        let mut conn = Conn::new(ConnId(1), key, Purpose::Requests);
        conn.link.rbuf.reserve(512);
        conn.link.wbuf.extend_from_slice(b"unsent");
        conn.release_buffers(KEEP_BUSY);
        assert!(
            conn.link.rbuf.capacity() >= 512,
            "a busy connection keeps its room"
        );
        conn.release_buffers(0);
        assert_eq!(conn.link.rbuf.capacity(), 0);
        assert_eq!(&conn.link.wbuf[..], b"unsent", "bytes still to send stay");
        conn.link.wbuf.clear();
        conn.release_buffers(0);
        assert_eq!(conn.link.wbuf.capacity(), 0);
    }

    #[test]
    fn a_dial_hands_out_each_address_once_and_a_lost_race_names_the_earlier_failures() {
        let mut conn = Conn::new(
            ConnId(1),
            <PoolKey as crate::keys::Key>::from_index(0),
            Purpose::Requests,
        );
        conn.start_dial(addrs(&["192.0.2.1:1", "192.0.2.2:1"]));
        let dial = conn.dial_mut().expect("connecting");
        assert!(dial.has_next());
        let a = dial.next_addr().expect("first");
        let b = dial.next_addr().expect("second");
        assert_eq!(
            (a, b),
            (addrs(&["192.0.2.1:1"])[0], addrs(&["192.0.2.2:1"])[0])
        );
        assert!(!dial.has_next());
        assert_eq!(dial.next_addr(), None);
        for addr in [a, b] {
            let io = io::Error::from(io::ErrorKind::ConnectionRefused);
            dial.note_failure(addr, io.to_string(), crate::Error::connect(addr, io));
        }
        match dial.lost() {
            Some(crate::Error::Connect { addr, earlier, .. }) => {
                assert_eq!(addr, b);
                assert_eq!(earlier.len(), 1);
                assert_eq!(earlier[0].0, a);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(conn.stage(), StageName::Connecting));
    }
}
