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

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mio::{Interest, Registry, Token};
use rotary_proto::{Codec, NameCache, ResponseEvent, State, Verdict};

use crate::chain::PeerChain;
use crate::dns::Pending;
use crate::error::Deadline;
use crate::event::{CloseReason, ConnId};
use crate::keys::{ConnKey, PoolKey, ReqKey};
use crate::session::Session;
use crate::sock::Sock;
use crate::wheel::TimerKey;

use super::timers::{ConnTimer, TimerSet, Timers};

/// Result of one read pass.
#[derive(Debug, Default)]
pub(super) struct ReadPass {
    /// Plaintext bytes appended to the read buffer.
    pub(super) bytes: usize,
    /// The peer closed (TCP FIN or TLS close_notify).
    pub(super) eof: bool,
    /// Over TLS, the TCP connection ended without a close_notify: whatever a
    /// close-delimited body held may have been cut by an attacker.
    pub(super) unclean: bool,
    /// The read budget ran out before `WouldBlock`: read again later.
    pub(super) more: bool,
}

/// Failure of a read or write pass.
#[derive(Debug)]
pub(super) enum IoFailure {
    Io(io::Error),
    Tls(rustls::Error),
}

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

/// How far the peer's side of a ready connection has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerEnd {
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
pub(super) struct Dial {
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
    /// The next untried address.
    pub(super) fn next_addr(&mut self) -> Option<SocketAddr> {
        let addr = self.addrs.get(self.next).copied()?;
        self.next += 1;
        Some(addr)
    }

    /// Some address is still untried.
    pub(super) fn has_next(&self) -> bool {
        self.next < self.addrs.len()
    }

    /// Attempts racing besides the connection's own socket.
    pub(super) fn racing(&self) -> bool {
        !self.attempts.is_empty()
    }

    pub(super) fn add_attempt(&mut self, key: ConnKey, id: ConnId) {
        self.attempts.push((key, id));
    }

    pub(super) fn drop_attempt(&mut self, key: ConnKey) {
        self.attempts.retain(|&(k, _)| k != key);
    }

    /// Remember why `addr` failed; the last one is what a lost race reports.
    pub(super) fn note_failure(&mut self, addr: SocketAddr, why: String, err: crate::Error) {
        self.failed.push((addr, why));
        self.last_error = Some(err);
    }

    /// The error of a dial none of whose addresses connected: the last
    /// failure, naming the earlier ones (`None`: nothing was tried).
    pub(super) fn lost(&mut self) -> Option<crate::Error> {
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
pub(super) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
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
    /// TLS handshake with the origin in progress.
    Handshaking(Box<Session>),
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

/// What a ready connection has.
pub(super) struct Ready {
    /// The origin's session (`None` for `http://`).
    tls: Option<Box<Session>>,
    /// The origin's verified chain (`None` for `http://`).
    chain: Option<Arc<PeerChain>>,
    codec: Codec,
    /// Exchanges started on it.
    served: u32,
    /// Exchanges the server still allows (`Keep-Alive: max`, `max_requests`).
    remaining: Option<u32>,
    /// Its idle limit once a server's `Keep-Alive: timeout` tightened it.
    idle_limit: Option<Duration>,
    /// While idle with an idle limit: when the idle timeout closes it.
    idle_until: Option<Instant>,
    peer_end: PeerEnd,
    /// The exchange it carries.
    exchange: Option<OnConn>,
}

/// The exchange a ready connection carries.
#[derive(Debug, Clone, Copy)]
struct OnConn {
    req: ReqKey,
    /// A request body is being moved in by the engine's pump.
    uploading: bool,
    /// The host holds the response body back: do not read.
    read_paused: bool,
}

/// The pipe and its plaintext, with what it counted.
#[derive(Default)]
struct Link {
    sock: Option<Sock>,
    peer_addr: Option<SocketAddr>,
    /// Plaintext received and not yet consumed by a codec.
    rbuf: BytesMut,
    /// Plaintext to send (before TLS).
    wbuf: BytesMut,
    /// Plaintext bytes read, in all (for the receive-stall deadline).
    bytes_in: u64,
    /// Bytes written to a plain socket, in all (TLS counts its own).
    plain_out: u64,
}

/// The room an idle connection's empty buffers keep between exchanges (see
/// [`Conn::release_buffers`]).
pub(super) const KEEP_BUSY: usize = 1024;

/// What a socket is registered for: both, once (see [`Conn::register`]).
const INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// What the idle timer finds when it fires.
pub(super) enum IdleCheck {
    /// Idle past its limit: it closes.
    Expired,
    /// It worked and went idle again since: the timer waits on until then.
    Later(Instant),
    /// Busy, or no limit: nothing to do.
    Busy,
}

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
            Stage::Handshaking(_) => StageName::Handshaking,
            Stage::Ready(_) => StageName::Ready,
        }
    }

    /// The deadline its `Setup` timer stands for in its stage.
    pub(super) fn setup_deadline(&self) -> Option<Deadline> {
        match self.stage {
            Stage::Resolving(_) => Some(Deadline::Dns),
            Stage::Connecting(_) => Some(Deadline::Connect),
            Stage::ProxyHandshaking => Some(Deadline::ProxyHandshake),
            Stage::Tunneling(_) => Some(Deadline::ProxyConnect),
            Stage::Handshaking(_) => Some(Deadline::Handshake),
            Stage::Ready(_) => None,
        }
    }

    /// Opened only to see the peer's chain (a probe or a fresh-chain
    /// handshake): it never carries a request, and the pool's count of
    /// connections being opened for requests leaves it out.
    pub(super) fn is_chain_only(&self) -> bool {
        matches!(self.purpose, Purpose::Probe | Purpose::Fresh)
    }

    /// Being opened for requests (counted in its pool's `connecting`).
    pub(super) fn is_opening(&self) -> bool {
        self.opening
    }

    /// It joins its pool's idle connections: true when it counted as being
    /// opened until now.
    pub(super) fn joined(&mut self) -> bool {
        std::mem::take(&mut self.opening)
    }

    /// The connection this attempt races for, if it is one.
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
    pub(super) fn addr(&self) -> SocketAddr {
        self.link
            .peer_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The peer's side of a ready connection has ended (cleanly or not).
    pub(super) fn peer_closed(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.peer_end != PeerEnd::Open)
    }

    /// Over TLS, the peer ended without a close_notify.
    pub(super) fn peer_ended_unclean(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.peer_end == PeerEnd::Unclean)
    }

    /// The peer ended its side: cleanly unless it was `unclean` already.
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
    pub(super) fn served(&self) -> u32 {
        match &self.stage {
            Stage::Ready(r) => r.served,
            _ => 0,
        }
    }

    /// The origin's verified chain, once ready over TLS.
    pub(super) fn chain(&self) -> Option<&Arc<PeerChain>> {
        match &self.stage {
            Stage::Ready(r) => r.chain.as_ref(),
            _ => None,
        }
    }

    /// The origin's TLS session (handshaking or ready).
    pub(super) fn session(&self) -> Option<&Session> {
        match &self.stage {
            Stage::Handshaking(s) => Some(&**s),
            Stage::Ready(r) => r.tls.as_deref(),
            _ => None,
        }
    }

    /// The pipe (for the proxy's session under it).
    pub(super) fn sock(&self) -> Option<&Sock> {
        self.link.sock.as_ref()
    }

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
        self.stage = Stage::Connecting(Box::new(Dial {
            addrs,
            ..Dial::default()
        }));
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
            Stage::Connecting(dial) => std::mem::take(&mut dial.attempts),
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
            Stage::Connecting(dial) => dial.attempts,
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

    /// Connected (or tunnelled) → TLS handshake with the origin.
    pub(super) fn start_handshake(&mut self, session: Session) {
        self.stage = Stage::Handshaking(Box::new(session));
    }

    /// The origin's handshake is done (or TCP is up for `http://`).
    pub(super) fn handshake_done(&self) -> bool {
        match &self.stage {
            Stage::Handshaking(s) => !s.is_handshaking(),
            _ => false,
        }
    }

    /// Connected (and handshaken) → usable, with `chain` verified and at
    /// most `remaining` exchanges.
    pub(super) fn set_ready(
        &mut self,
        codec: Codec,
        chain: Option<Arc<PeerChain>>,
        remaining: Option<u32>,
    ) {
        let tls = match std::mem::replace(&mut self.stage, Stage::ProxyHandshaking) {
            Stage::Handshaking(s) => Some(s),
            _ => None,
        };
        self.stage = Stage::Ready(Ready {
            tls,
            chain,
            codec,
            served: 0,
            remaining,
            idle_limit: None,
            idle_until: None,
            peer_end: PeerEnd::Open,
            exchange: None,
        });
    }

    // ---- exchanges

    /// Put request `rk` on this idle connection; `write` puts its head (and
    /// a body sent with it) into the write buffer with the codec. Returns
    /// whether it carried an earlier exchange. A codec that refuses (before
    /// writing a byte) leaves the connection idle, with a fresh codec.
    pub(super) fn begin_exchange<E>(
        &mut self,
        rk: ReqKey,
        paused: bool,
        limits: rotary_proto::Limits,
        write: impl FnOnce(&mut Codec, &mut BytesMut) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Stage::Ready(r) = &mut self.stage else {
            // Only an idle, ready connection is handed a request.
            return Ok(false);
        };
        if let Err(e) = write(&mut r.codec, &mut self.link.wbuf) {
            r.codec = Codec::new(limits);
            self.link.wbuf.clear();
            return Err(e);
        }
        let reused = r.served > 0;
        r.served += 1;
        r.remaining = r.remaining.map(|n| n.saturating_sub(1));
        r.idle_until = None;
        r.exchange = Some(OnConn {
            req: rk,
            uploading: false,
            read_paused: paused,
        });
        Ok(reused)
    }

    /// The exchange ends (its request leaves the connection).
    pub(super) fn end_exchange(&mut self) -> Option<ReqKey> {
        match &mut self.stage {
            Stage::Ready(r) => r.exchange.take().map(|e| e.req),
            _ => None,
        }
    }

    /// What the connection does after an exchange that ended well with
    /// `verdict`: the server's hints tighten its limits, and a reason to
    /// close comes back when it is not to be reused.
    pub(super) fn after_exchange(
        &mut self,
        verdict: &Verdict,
        idle_default: Option<Duration>,
        margin: Duration,
    ) -> Option<CloseReason> {
        let Stage::Ready(r) = &mut self.stage else {
            return Some(CloseReason::Error);
        };
        if let Some(max) = verdict.hints.max {
            r.remaining = Some(r.remaining.map_or(max, |n| n.min(max)));
        }
        let idle = super::lifetime::hinted_idle(
            r.idle_limit.or(idle_default),
            verdict.hints.timeout,
            margin,
        );
        r.idle_limit = idle;
        if verdict.close.is_some() || idle == Some(Duration::ZERO) {
            Some(CloseReason::ServerClose)
        } else if r.peer_end != PeerEnd::Open {
            Some(CloseReason::PeerClose)
        } else if let Some(reason) = self.retiring {
            Some(reason)
        } else if r.remaining == Some(0) {
            Some(CloseReason::MaxRequests)
        } else {
            None
        }
    }

    /// Back to idle: `None` when bytes nobody asked for wait in it (it is
    /// stale and must close), else when its idle limit (or `default`) ends.
    /// Its empty buffers shrink to [`KEEP_BUSY`].
    pub(super) fn go_idle(
        &mut self,
        now: Instant,
        default: Option<Duration>,
    ) -> Option<Option<Instant>> {
        if !self.link.rbuf.is_empty() {
            return None;
        }
        self.release_buffers(KEEP_BUSY);
        let Stage::Ready(r) = &mut self.stage else {
            return None;
        };
        r.idle_until = r
            .idle_limit
            .or(default)
            .map(|l| super::timers::after(now, l));
        Some(r.idle_until)
    }

    /// What its idle timer finds at `now`.
    pub(super) fn idle_check(&self, now: Instant) -> IdleCheck {
        match &self.stage {
            Stage::Ready(r) if r.exchange.is_none() => match r.idle_until {
                Some(until) if until <= now => IdleCheck::Expired,
                Some(until) => IdleCheck::Later(until),
                None => IdleCheck::Busy,
            },
            _ => IdleCheck::Busy,
        }
    }

    /// The pump moves a request body in (`true`) or has stopped.
    pub(super) fn set_uploading(&mut self, on: bool) {
        if let Stage::Ready(Ready {
            exchange: Some(e), ..
        }) = &mut self.stage
        {
            e.uploading = on;
        }
    }

    pub(super) fn uploading(&self) -> bool {
        matches!(&self.stage, Stage::Ready(Ready { exchange: Some(e), .. }) if e.uploading)
    }

    /// The host holds the body back (`true`): nothing is read.
    pub(super) fn set_read_paused(&mut self, paused: bool) {
        if let Stage::Ready(Ready {
            exchange: Some(e), ..
        }) = &mut self.stage
        {
            e.read_paused = paused;
        }
    }

    pub(super) fn read_paused(&self) -> bool {
        matches!(&self.stage, Stage::Ready(Ready { exchange: Some(e), .. }) if e.read_paused)
    }

    /// The codec and the write buffer of a ready connection, for a body's
    /// next piece.
    pub(super) fn body_out(&mut self) -> Option<(&mut Codec, &mut BytesMut)> {
        match &mut self.stage {
            Stage::Ready(r) => Some((&mut r.codec, &mut self.link.wbuf)),
            _ => None,
        }
    }

    /// The next piece of the response from what was read, parsed with the
    /// pool's header `names`.
    pub(super) fn poll_response(
        &mut self,
        names: &mut NameCache,
    ) -> Option<Result<Option<ResponseEvent>, rotary_proto::Error>> {
        match &mut self.stage {
            Stage::Ready(r) => Some(r.codec.poll_response_with(&mut self.link.rbuf, names)),
            _ => None,
        }
    }

    /// The peer ended: what the codec makes of it.
    pub(super) fn response_eof(&mut self) -> Result<Option<ResponseEvent>, rotary_proto::Error> {
        match &mut self.stage {
            Stage::Ready(r) => r.codec.handle_eof(),
            _ => Err(rotary_proto::Error::ClosedBeforeResponse),
        }
    }

    /// Some of the current response has arrived (interim ones included).
    pub(super) fn response_started(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.codec.response_started())
    }

    /// The codec's state (ready connections; `Idle` before).
    pub(super) fn codec_state(&self) -> State {
        match &self.stage {
            Stage::Ready(r) => r.codec.state(),
            _ => State::Idle,
        }
    }

    /// A response is under way: a head whose first bytes are in, or a body.
    pub(super) fn response_under_way(&self) -> bool {
        self.codec_state() == State::Body || !self.link.rbuf.is_empty()
    }

    /// Bytes wait in the read buffer.
    pub(super) fn has_input(&self) -> bool {
        !self.link.rbuf.is_empty()
    }

    // ---- bytes

    /// Plaintext bytes read, in all.
    pub(super) fn bytes_in(&self) -> u64 {
        self.link.bytes_in
    }

    /// Bytes written to the socket, in all (ciphertext for TLS).
    pub(super) fn bytes_out(&self) -> u64 {
        self.link.plain_out + self.session().map_or(0, |t| t.written())
    }

    /// Give back buffer memory while idle: an idle connection should cost
    /// little more than its TLS session. An empty read or write buffer with
    /// more than `keep` bytes of room goes; [`KEEP_BUSY`] when an exchange
    /// ends (a busy keep-alive connection does not reallocate), 0 once the
    /// loop is quiet.
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
    fn parts(&mut self) -> (&mut Link, Option<&mut Session>) {
        let tls = match &mut self.stage {
            Stage::Handshaking(s) => Some(&mut **s),
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
    pub(super) fn flush(&mut self, sealed: &mut Vec<u8>) -> Result<(), IoFailure> {
        let (link, tls) = self.parts();
        link.flush(tls, sealed)
    }

    /// Bytes are waiting to go out.
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

impl Link {
    fn read_pass(
        &mut self,
        mut tls: Option<&mut Session>,
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
            let Some(tls) = tls.as_deref_mut() else {
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

    fn flush(&mut self, tls: Option<&mut Session>, sealed: &mut Vec<u8>) -> Result<(), IoFailure> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        // What an https proxy's session holds goes first (nothing, on a
        // plain socket).
        sock.push().map_err(IoFailure::Io)?;
        let Some(tls) = tls else {
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
