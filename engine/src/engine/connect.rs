//! Opening a connection: resolve → connect (address by address) → [TLS
//! with an `https://` proxy → `CONNECT`, in `super::tunnel`] → TLS
//! handshake → ready, and what a failure at any of those steps does.
//!
//! Owns a connection's stages before `Ready` (`Conn::start_connecting`,
//! `start_handshake`, `set_ready`), its address list and `Setup` timer, the
//! pool's `connecting` count, and the choice of TLS configuration (full
//! handshake or resumption). What a finished handshake means for the
//! connection's lifetime is [`super::lifecycle`]'s.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::conn::{interleave, Conn, ConnTimer, Leader, Purpose, Stage};
use crate::keys::ConnKey;
use crate::session::Session;
use crate::stats::Counter;
use crate::tls::TlsState;
use crate::{CloseReason, ConnId, Error, Event, Handshake, Phase, Resumption};

use super::io::ReadMode;
use super::pool::PoolKey;
use super::timers::{after, Timer};
use super::Engine;

/// Re-read `state`'s trust files if they changed, before a new connection
/// uses it; a version that fails keeps the previous anchors and raises
/// [`Event::TrustError`].
pub(super) fn refresh_trust(state: &mut TlsState, out: &mut VecDeque<Event>) {
    match state.refresh() {
        Ok(true) => log::info!("trust files changed; new connections use the new anchors"),
        Ok(false) => {}
        Err(e) => {
            log::warn!(
                "keeping the previous trust anchors: {}: {}",
                e.path.display(),
                e.reason
            );
            out.push_back(Event::TrustError {
                path: e.path,
                reason: e.reason,
            });
        }
    }
}

impl Engine {
    /// Open a connection for pool `p`: look its host up (IP literals need
    /// no lookup), then connect.
    pub(super) fn open(&mut self, p: PoolKey, purpose: Purpose, now: Instant) {
        let chain_only = matches!(purpose, Purpose::Probe | Purpose::Fresh);
        let id = self.new_conn_id();
        let key = self.conns.insert(Conn::new(
            id,
            p,
            purpose,
            rotary_proto::Codec::new(self.config.limits),
        ));
        self.stats.connections_attempted += 1;
        let pool = &mut self.pools[p];
        pool.conns.push(key);
        if !chain_only {
            pool.connecting += 1;
        }
        // Through a proxy, the TCP connection (and every lifetime clock) is
        // the proxy's; the origin is reached inside it.
        let (host, port) = match &pool.proxy {
            Some(proxy) => (proxy.host().to_owned(), proxy.port()),
            None => (pool.origin.host().to_owned(), pool.origin.port()),
        };
        if let Some(ip) = self.net.literal(&host) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.set_dial(vec![std::net::SocketAddr::new(ip, port)]);
            }
            self.next_attempt(key, now);
        } else {
            let lookup = self.dns.submit(key, id.0, &host, port);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dial_mut().lookup = Some(lookup);
            }
            self.arm(
                Timer::Conn(key, ConnTimer::Setup),
                after(now, self.config.timeouts.dns),
            );
        }
    }

    /// Connections of pool `p` opened for requests and still waiting for
    /// their name's lookup, beyond the requests still queued (one ended:
    /// cancelled, past its deadline, or served by another connection): the
    /// youngest close (`CloseReason::Cancelled`), so a lookup nobody waits
    /// for is not run, and under a slow resolver such connections do not
    /// pile up for a name. Connections past their lookup stay; they go idle.
    pub(super) fn shed_lookups(&mut self, p: PoolKey) {
        let pool = &self.pools[p];
        // Cheap first: `connecting` counts every connection being opened
        // for requests, replacements included.
        if pool.connecting <= pool.queue.len() {
            return;
        }
        let waiting = pool.queue.len();
        let conns = &self.conns;
        let opening = |purpose: Purpose| {
            pool.conns.iter().rev().filter_map(move |&k| {
                let c = conns.get(k)?;
                (c.purpose == purpose && c.is_opening()).then_some((k, c.stage()))
            })
        };
        let surplus = opening(Purpose::Requests).count().saturating_sub(waiting);
        let shed: Vec<ConnKey> = opening(Purpose::Requests)
            .filter(|&(_, stage)| stage == Stage::Resolving)
            .map(|(k, _)| k)
            .take(surplus)
            .collect();
        for key in shed {
            log::debug!("closing a connection whose lookup no request waits for");
            self.close_conn(key, CloseReason::Cancelled);
        }
    }

    /// Resolver answers: connect to the addresses, or fail the attempt.
    pub(super) fn drain_answers(&mut self, now: Instant) {
        let mut answers = std::mem::take(&mut self.answers);
        self.dns.take_answers(&mut answers);
        for a in answers.drain(..) {
            let Some(conn) = self.live(a.conn, ConnId(a.serial)) else {
                continue;
            };
            if conn.stage() != Stage::Resolving {
                continue;
            }
            let p = conn.pool;
            match a.result {
                Ok(addrs) => {
                    conn.set_dial(interleave(addrs));
                    self.disarm(Timer::Conn(a.conn, ConnTimer::Setup));
                    self.next_attempt(a.conn, now);
                }
                Err(e) => {
                    let host = self.pools[p].origin.host().to_owned();
                    let err = Error::Resolve {
                        host,
                        cause: Arc::new(e),
                    };
                    self.connect_failed(a.conn, err, now);
                }
            }
        }
        crate::dns::shrink_after_burst(&mut answers);
        self.answers = answers;
    }

    /// Start the next address's attempt: on the connection's own socket
    /// when it has none, else on a new attempt entry that races it (RFC 8305:
    /// the next address waits `happy_eyeballs_delay`, or only until an
    /// attempt fails). With nothing left to try and nothing in flight, the
    /// connection fails.
    fn next_attempt(&mut self, key: ConnKey, now: Instant) {
        loop {
            let room = self.has_token_room();
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let racing = conn.sock.is_some();
            if !conn.dial_has_next() {
                if !racing && conn.dial_mut().attempts.is_empty() {
                    let err = self.race_lost(key);
                    return self.connect_failed(key, err, now);
                }
                return;
            }
            if racing && !room {
                // No token for another socket: the next address waits for
                // an attempt to fail.
                return;
            }
            let Some(addr) = conn.dial_mut().next_addr() else {
                return;
            };
            log::debug!("trying {addr}");
            let sock = match self.net.connect(addr) {
                Ok(sock) => sock,
                Err(e) => {
                    self.note_attempt_failure(key, addr, Error::connect(addr, e));
                    continue;
                }
            };
            let carrier = if racing {
                let of = Leader { key, id: conn.id };
                let pool = conn.pool;
                let codec = rotary_proto::Codec::new(self.config.limits);
                let attempt = Conn::new(self.new_conn_id(), pool, Purpose::Attempt(of), codec);
                let id = attempt.id;
                let carrier = self.conns.insert(attempt);
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.dial_mut().attempts.push((carrier, id));
                }
                carrier
            } else {
                key
            };
            let at_once = !sock.is_evented();
            let token = self.mio.token(carrier);
            let Some(c) = self.conns.get_mut(carrier) else {
                return;
            };
            c.start_connecting(sock, addr);
            if let Err(e) = c.register(&self.mio.registry, token) {
                self.drop_attempt(carrier, key);
                self.note_attempt_failure(key, addr, Error::connect(addr, e));
                continue;
            }
            self.arm(
                Timer::Conn(carrier, ConnTimer::Setup),
                after(now, self.config.timeouts.connect),
            );
            let next_at = now.checked_add(self.config.timeouts.happy_eyeballs_delay);
            if let (Some(at), true) = (
                next_at,
                self.conns.get(key).is_some_and(|c| c.dial_has_next()),
            ) {
                self.arm(Timer::Conn(key, ConnTimer::Race), at);
            }
            if at_once {
                // A pipe that raises no readiness event is connected already.
                self.on_connecting(carrier, ReadMode::Skip, now);
            }
            return;
        }
    }

    /// The `Race` timer fired: start the next address alongside.
    pub(super) fn on_race_timer(&mut self, key: ConnKey, now: Instant) {
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.stage() == Stage::Connecting)
        {
            self.next_attempt(key, now);
        }
    }

    /// The attempt on `carrier` (the connection itself, or one racing for
    /// it) failed with `err`: it closes, and the next address starts at once.
    pub(super) fn attempt_failed(&mut self, carrier: ConnKey, err: Error, now: Instant) {
        let Some(conn) = self.conns.get_mut(carrier) else {
            return;
        };
        let addr = conn.addr();
        let key = match conn.attempt_for() {
            Some(of) => {
                self.drop_attempt(carrier, of.key);
                if !self.is_live(of.key, of.id) {
                    return;
                }
                of.key
            }
            None => {
                conn.shutdown(&self.mio.registry);
                self.disarm(Timer::Conn(carrier, ConnTimer::Setup));
                carrier
            }
        };
        self.note_attempt_failure(key, addr, err);
        self.disarm(Timer::Conn(key, ConnTimer::Race));
        self.next_attempt(key, now);
    }

    /// Readiness while connecting: connected, still waiting, or failed.
    pub(super) fn on_connecting(&mut self, key: ConnKey, read: ReadMode, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(sock) = conn.sock.as_ref() else {
            return;
        };
        let addr = conn.addr();
        match sock.connect_result() {
            Ok(true) => {
                let Some((key, id)) = self.won(key, now) else {
                    return;
                };
                // What the peer sent at once (an alert, a proxy's refusal)
                // came with this event: no new edge announces it.
                let started = self.conns.get(key).is_some_and(|c| {
                    c.id == id && !matches!(c.stage(), Stage::Resolving | Stage::Connecting)
                });
                if read != ReadMode::Skip && started {
                    self.drive(key, read, now);
                }
            }
            Ok(false) => {}
            Err(e) => self.attempt_failed(key, Error::connect(addr, e), now),
        }
    }

    /// The attempt on `carrier` connected first: its socket becomes the
    /// connection's, every other attempt closes, and the connection goes on.
    /// Returns the connection that goes on.
    fn won(&mut self, carrier: ConnKey, now: Instant) -> Option<(ConnKey, ConnId)> {
        let conn = self.conns.get_mut(carrier)?;
        let key = match conn.attempt_for() {
            None => carrier,
            Some(of) => {
                let sock = conn.hand_over();
                self.drop_attempt(carrier, of.key);
                let token = self.mio.token(of.key);
                let conn = self.conns.get_mut(of.key).filter(|c| c.id == of.id);
                let (Some(conn), Some(sock)) = (conn, sock) else {
                    return None;
                };
                let registry = &self.mio.registry;
                // The connection's own attempt, if any, lost.
                conn.shutdown(registry);
                let addr = sock.1;
                if let Err(e) = conn.adopt(sock, registry, token) {
                    self.attempt_failed(of.key, Error::connect(addr, e), now);
                    return None;
                }
                of.key
            }
        };
        let losers = self
            .conns
            .get_mut(key)
            .map(|c| c.end_dial())
            .unwrap_or_default();
        for (k, id) in losers {
            if self.is_live(k, id) {
                self.close_conn(k, CloseReason::ConnectFailed);
            }
        }
        self.disarm(Timer::Conn(key, ConnTimer::Race));
        let id = self.conns.get(key)?.id;
        self.connected(key, now);
        Some((key, id))
    }

    /// Close attempt `carrier` (it closes quietly: it was never a
    /// connection of the pool's) and forget it in connection `key`.
    fn drop_attempt(&mut self, carrier: ConnKey, key: ConnKey) {
        if carrier == key {
            return;
        }
        self.close_conn(carrier, CloseReason::ConnectFailed);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.dial_mut().attempts.retain(|&(k, _)| k != carrier);
        }
    }

    fn note_attempt_failure(&mut self, key: ConnKey, addr: SocketAddr, err: Error) {
        if let Some(conn) = self.conns.get_mut(key) {
            let why = match &err {
                Error::Connect { cause, .. } => cause.to_string(),
                other => other.to_string(),
            };
            log::debug!("connect attempt to {addr} failed: {why}");
            let dial = conn.dial_mut();
            dial.failed.push((addr, why));
            dial.last_error = Some(err);
        }
    }

    /// The error of a connection none of whose addresses connected: the
    /// last failure, naming the earlier ones.
    fn race_lost(&mut self, key: ConnKey) -> Error {
        let Some(conn) = self.conns.get_mut(key) else {
            return Error::Shutdown;
        };
        let host = self.pools[conn.pool].origin.host();
        let dial = conn.dial_mut();
        let mut err = dial.last_error.take().unwrap_or_else(|| Error::Resolve {
            host: host.to_owned(),
            cause: Arc::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no addresses",
            )),
        });
        if let Error::Connect { earlier, .. } = &mut err {
            let n = dial.failed.len().saturating_sub(1);
            *earlier = dial.failed.drain(..n).collect();
        }
        err
    }

    fn new_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// TCP is up: the age clock starts; `https://` starts its handshake.
    fn connected(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        if let Some(sock) = conn.sock.as_ref() {
            sock.set_nodelay();
        }
        conn.connected_at = Some(now);
        self.arm_lifetime(key, now);
        if self.pools[p].proxy.as_ref().is_some_and(|x| x.is_tls()) {
            // TLS with the proxy first; then CONNECT, or ready for http://.
            return self.start_proxy_tls(key, now);
        }
        if !self.pools[p].origin.is_tls() {
            // Plain http through a proxy goes in absolute-form: no tunnel.
            return self.ready(key, now);
        }
        if self.pools[p].proxy.is_some() {
            return self.start_tunnel(key, now);
        }
        self.start_tls(key, BytesMut::new(), now)
    }

    /// Start the TLS handshake with the origin (directly, or inside a
    /// tunnel), `early` being bytes that arrived before it started (after
    /// a proxy's 2xx): they are the handshake's first input.
    pub(super) fn start_tls(&mut self, key: ConnKey, early: BytesMut, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        let config = self.tls_config_for(p, key, now);
        let host = self.pools[p].origin.host().to_owned();
        let name = match ServerName::try_from(host) {
            Ok(n) => n,
            Err(e) => {
                let err = Error::InvalidRequest(format!("bad server name: {e}"));
                return self.connect_failed(key, err, now);
            }
        };
        match Session::new(config, name) {
            Ok(mut session) => {
                if !early.is_empty() {
                    if let Err(e) = session.keep_pending_vec(early.to_vec()) {
                        let err = self.proxy_error(p, crate::ProxyFailure::Io(Arc::new(e)));
                        return self.connect_failed(key, err, now);
                    }
                }
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.start_handshake(session);
                }
                self.arm(
                    Timer::Conn(key, ConnTimer::Setup),
                    after(now, self.config.timeouts.handshake),
                );
                self.drive(key, ReadMode::Skip, now);
            }
            Err(reason) => {
                let err = Error::Tls {
                    reason,
                    phase: Phase::Tls,
                };
                self.connect_failed(key, err, now)
            }
        }
    }

    /// The TLS configuration for a new connection: resumption only when the
    /// policy allows it and the last full handshake is younger than max age.
    fn tls_config_for(&mut self, p: PoolKey, key: ConnKey, now: Instant) -> Arc<ClientConfig> {
        refresh_trust(&mut self.tls, &mut self.out);
        let pool = &mut self.pools[p];
        if pool.policy.resumption == Resumption::Never {
            return self.tls.full();
        }
        let fresh_only = self
            .conns
            .get(key)
            .is_some_and(|c| c.purpose != Purpose::Requests);
        let young = match (pool.full_handshake_at, pool.policy.max_age) {
            (Some(at), Some(age)) => now.saturating_duration_since(at) < age,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let purge = fresh_only || !young || std::mem::take(&mut pool.purge_sessions);
        self.tls.resuming(pool.origin.host(), purge)
    }

    /// Handshake done (or TCP connected for `http://`): report and use it.
    pub(super) fn ready(&mut self, key: ConnKey, now: Instant) {
        self.disarm(Timer::Conn(key, ConnTimer::Setup));
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        conn.set_ready();
        let pool = &mut self.pools[p];
        if !conn.is_chain_only() {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
        conn.remaining = pool.policy.max_requests;
        let purpose = conn.purpose;
        let Some((info, changed)) = self.observe_peer(key, now) else {
            return;
        };
        if purpose == Purpose::Fresh {
            return self.fresh_done(p, key, info, changed, now);
        }
        if purpose == Purpose::Probe {
            log::debug!("chain probe of {} done", info.origin);
            if let Some(previous) = changed {
                self.chain_changed(p, key, previous);
            }
            self.close_conn(key, CloseReason::Probe);
            return self.dispatch(p, now);
        }
        if let Some(not_after) = info.chain.as_ref().and_then(|c| c.not_after()) {
            self.retire_at_cert_expiry(key, not_after, now);
        }
        self.schedule_probe(p, now, true);
        self.count(p, Counter::Opened);
        let how = match info.handshake {
            Some(Handshake::Full) => "full handshake",
            Some(Handshake::Resumed) => "resumed session",
            None => "plain tcp",
        };
        log::debug!("connection {} to {} open ({how})", info.conn.0, info.origin);
        self.out.push_back(Event::Opened(info));
        if let Some(previous) = changed {
            self.chain_changed(p, key, previous);
        }
        if let Some(reason) = self.conns.get(key).and_then(|c| c.retiring) {
            self.close_conn(key, reason);
            return self.dispatch(p, now);
        }
        self.make_idle(key, now);
    }

    /// A connection attempt failed: it closes, and the oldest waiting request
    /// of its origin (if any) ends with the error; a fresh-chain
    /// connection's error answers every call waiting on it instead.
    pub(super) fn connect_failed(&mut self, key: ConnKey, err: Error, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        let chain_only = conn.is_chain_only();
        let fresh = conn.purpose == Purpose::Fresh;
        let err = match err {
            // The address that failed was the proxy's.
            Error::Resolve { .. } | Error::Connect { .. } if self.pools[p].proxy.is_some() => {
                self.proxy_error(p, crate::ProxyFailure::Unreachable(Box::new(err)))
            }
            err => err,
        };
        log::debug!("connection to {} failed: {err}", self.pools[p].origin);
        self.out.push_back(Event::ConnectFailed {
            conn: conn.id,
            origin: self.pools[p].origin.clone(),
            error: err.clone(),
        });
        if fresh {
            // Before the close, which would answer them as closed.
            self.answer_fresh(p, Err(err.clone()));
        }
        self.close_conn(key, CloseReason::ConnectFailed);
        if !chain_only {
            if let Some(rk) = self.pools[p].queue.pop_front() {
                self.fail_request(rk, err);
            }
        }
        self.dispatch(p, now);
    }
}
