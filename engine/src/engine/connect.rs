//! Opening a connection: resolve → connect (address by address, racing per
//! RFC 8305) → [TLS with an `https://` proxy → `CONNECT`, in
//! [`super::tunnel`]] → TLS handshake → ready.
//!
//! Moves a connection through its stages before `Ready` (the stage holds
//! the dial, the tunnel's codec, the session: [`super::conn::Stage`]), and
//! arms their `Setup` deadlines. Chooses the TLS configuration (full
//! handshake or resumption). What a finished handshake says about the
//! origin is [`super::lifecycle`]'s; a failure, and what a ready connection
//! does next, are effects for [`super::apply`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::Resumption;
use crate::credentials::Epoch;
use crate::error::{Error, Phase};
use crate::event::{CloseReason, ConnId, Event};
use crate::keys::{ConnKey, PoolKey};
use crate::session::Session;
use crate::tls::TlsState;

use super::conn::{interleave, Conn, Leader, Purpose, StageName};
use super::effects::{ConnRef, Effect, ReadMode};
use super::timers::{after, ConnTimer, Timer};
use super::Engine;

/// Re-read `state`'s credential files if they changed, before a new
/// connection uses it; a version that fails keeps the previous one and
/// raises [`Event::TrustError`]. True when a new version was loaded (the
/// live connections are then judged at once).
pub(super) fn refresh_trust(state: &mut TlsState, out: &mut VecDeque<Event>) -> bool {
    match state.refresh() {
        Ok(true) => {
            log::info!("credential files changed; new connections use the new versions");
            true
        }
        Ok(false) => false,
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
            false
        }
    }
}

impl Engine {
    /// Open a connection for pool `p`: look its host up (IP literals need
    /// no lookup), then connect.
    pub(super) fn open(&mut self, p: PoolKey, purpose: Purpose, now: Instant) {
        let chain_only = matches!(purpose, Purpose::Probe | Purpose::Fresh);
        let id = self.new_conn_id();
        let key = self.conns.insert(Conn::new(id, p, purpose));
        self.stats.connections_attempted += 1;
        self.watch_credentials(now);
        let pool = &mut self.pools[p];
        pool.add_conn(key, !chain_only);
        // Through a proxy, the TCP connection (and every lifetime clock) is
        // the proxy's; the origin is reached inside it.
        let (host, port) = match pool.proxy() {
            Some(proxy) => (proxy.host().to_owned(), proxy.port()),
            None => (pool.origin().host().to_owned(), pool.origin().port()),
        };
        if let Some(ip) = self.net.literal(&host) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.start_dial(vec![SocketAddr::new(ip, port)]);
            }
            self.next_attempt(key, now);
        } else {
            let lookup = self.dns.submit(key, id.0, &host, port);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.await_lookup(lookup);
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
        let waiting = pool.waiting();
        if pool.connecting() <= waiting {
            return;
        }
        let conns = &self.conns;
        let opening = || {
            pool.conns().iter().rev().filter_map(move |&k| {
                let c = conns.get(k)?;
                (c.purpose() == Purpose::Requests && c.is_opening())
                    .then_some((ConnRef { key: k, id: c.id() }, c.stage()))
            })
        };
        let surplus = opening().count().saturating_sub(waiting);
        let shed: Vec<ConnRef> = opening()
            .filter(|&(_, stage)| stage == StageName::Resolving)
            .map(|(c, _)| c)
            .take(surplus)
            .collect();
        for conn in shed {
            log::debug!("closing a connection whose lookup no request waits for");
            self.effects.push(Effect::Close {
                conn,
                reason: CloseReason::Cancelled,
            });
        }
    }

    /// Resolver answers: connect to the addresses, or fail the attempt.
    pub(super) fn drain_answers(&mut self, now: Instant) {
        let mut answers = std::mem::take(&mut self.answers);
        self.dns.take_answers(&mut answers);
        for a in answers.drain(..) {
            let conn = ConnRef {
                key: a.conn,
                id: ConnId(a.serial),
            };
            let Some(c) = self.conns.get_mut(a.conn).filter(|c| c.id() == conn.id) else {
                continue;
            };
            if c.stage() != StageName::Resolving {
                continue;
            }
            let p = c.pool();
            match a.result {
                Ok(addrs) => {
                    c.start_dial(interleave(addrs));
                    self.disarm(Timer::Conn(a.conn, ConnTimer::Setup));
                    self.next_attempt(a.conn, now);
                }
                Err(e) => {
                    let host = self.pools[p].origin().host().to_owned();
                    let error = Error::Resolve {
                        host,
                        cause: Arc::new(e),
                    };
                    self.effects.push(Effect::ConnectFailed {
                        conn,
                        error: error.into(),
                    });
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
            let (id, pool, racing) = (conn.id(), conn.pool(), conn.has_sock());
            let Some(dial) = conn.dial_mut() else {
                return;
            };
            if !dial.has_next() {
                if !racing && !dial.racing() {
                    let error = self.race_lost(key);
                    self.effects.push(Effect::ConnectFailed {
                        conn: ConnRef { key, id },
                        error: error.into(),
                    });
                }
                return;
            }
            if racing && !room {
                // No token for another socket: the next address waits for
                // an attempt to fail.
                return;
            }
            let Some(addr) = dial.next_addr() else {
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
                let of = Leader { key, id };
                let attempt = Conn::new(self.new_conn_id(), pool, Purpose::Attempt(of));
                let attempt_id = attempt.id();
                let carrier = self.conns.insert(attempt);
                if let Some(dial) = self.conns.get_mut(key).and_then(Conn::dial_mut) {
                    dial.add_attempt(carrier, attempt_id);
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
            if c.attempt_for().is_some() {
                c.start_dial(Vec::new());
            }
            c.start_connecting(sock, addr);
            if let Err(e) = c.register(&self.mio.registry, token) {
                self.drop_attempt(carrier, key);
                if carrier == key {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.drop_sock(&self.mio.registry);
                    }
                }
                self.note_attempt_failure(key, addr, Error::connect(addr, e));
                continue;
            }
            self.arm(
                Timer::Conn(carrier, ConnTimer::Setup),
                after(now, self.config.timeouts.connect),
            );
            let next_at = now.checked_add(self.config.timeouts.happy_eyeballs_delay);
            let more = self
                .conns
                .get_mut(key)
                .and_then(Conn::dial_mut)
                .is_some_and(|d| d.has_next());
            if let (Some(at), true) = (next_at, more) {
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
            .is_some_and(|c| c.stage() == StageName::Connecting)
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
                if !self.is_live(ConnRef {
                    key: of.key,
                    id: of.id,
                }) {
                    return;
                }
                of.key
            }
            None => {
                conn.drop_sock(&self.mio.registry);
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
        let Some(sock) = conn.sock() else {
            return;
        };
        let addr = conn.addr();
        match sock.connect_result() {
            Ok(true) => {
                let Some(won) = self.won(key, now) else {
                    return;
                };
                // What the peer sent at once (an alert, a proxy's refusal)
                // came with this event: no new edge announces it.
                let started = self.conns.get(won.key).is_some_and(|c| {
                    c.id() == won.id
                        && !matches!(c.stage(), StageName::Resolving | StageName::Connecting)
                });
                if read != ReadMode::Skip && started {
                    self.drive(won.key, read, now);
                }
            }
            Ok(false) => {}
            Err(e) => self.attempt_failed(key, Error::connect(addr, e), now),
        }
    }

    /// The attempt on `carrier` connected first: its socket becomes the
    /// connection's, every other attempt closes, and the connection goes on.
    /// Returns the connection that goes on.
    fn won(&mut self, carrier: ConnKey, now: Instant) -> Option<ConnRef> {
        let conn = self.conns.get_mut(carrier)?;
        let key = match conn.attempt_for() {
            None => carrier,
            Some(of) => {
                let sock = conn.hand_over();
                self.drop_attempt(carrier, of.key);
                let token = self.mio.token(of.key);
                let conn = self.conns.get_mut(of.key).filter(|c| c.id() == of.id);
                let (Some(conn), Some(sock)) = (conn, sock) else {
                    return None;
                };
                let addr = sock.1;
                if let Err(e) = conn.adopt(sock, &self.mio.registry, token) {
                    self.attempt_failed(of.key, Error::connect(addr, e), now);
                    return None;
                }
                of.key
            }
        };
        let conn = self.conns.get_mut(key)?;
        let id = conn.id();
        for (k, id) in conn.connected() {
            self.effects.push(Effect::Close {
                conn: ConnRef { key: k, id },
                reason: CloseReason::ConnectFailed,
            });
        }
        self.disarm(Timer::Conn(key, ConnTimer::Race));
        self.disarm(Timer::Conn(key, ConnTimer::Setup));
        self.tcp_up(key, now);
        Some(ConnRef { key, id })
    }

    /// Close attempt `carrier` (it closes quietly: it was never a
    /// connection of the pool's) and forget it in connection `key`.
    fn drop_attempt(&mut self, carrier: ConnKey, key: ConnKey) {
        if carrier == key {
            return;
        }
        if let Some(conn) = self.conn_ref(carrier) {
            self.effects.push(Effect::Close {
                conn,
                reason: CloseReason::ConnectFailed,
            });
        }
        if let Some(dial) = self.conns.get_mut(key).and_then(Conn::dial_mut) {
            dial.drop_attempt(carrier);
        }
    }

    fn note_attempt_failure(&mut self, key: ConnKey, addr: SocketAddr, err: Error) {
        let why = match &err {
            Error::Connect { cause, .. } => cause.to_string(),
            other => other.to_string(),
        };
        log::debug!("connect attempt to {addr} failed: {why}");
        if let Some(dial) = self.conns.get_mut(key).and_then(Conn::dial_mut) {
            dial.note_failure(addr, why, err);
        }
    }

    /// The error of a connection none of whose addresses connected: the
    /// last failure, naming the earlier ones.
    fn race_lost(&mut self, key: ConnKey) -> Error {
        let Some(conn) = self.conns.get_mut(key) else {
            return Error::Shutdown;
        };
        let host = self.pools[conn.pool()].origin().host().to_owned();
        conn.dial_mut()
            .and_then(|d| d.lost())
            .unwrap_or_else(|| Error::Resolve {
                host,
                cause: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no addresses",
                )),
            })
    }

    fn new_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// TCP is up: the age clock starts; `https://` starts its handshake.
    fn tcp_up(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool();
        self.arm_lifetime(key, now);
        let pool = &self.pools[p];
        if pool.proxy().is_some_and(|x| x.is_tls()) {
            // TLS with the proxy first; then CONNECT, or ready for http://.
            return self.start_proxy_tls(key, now);
        }
        if !pool.origin().is_tls() {
            // Plain http (through a proxy in absolute-form): no tunnel.
            return self.ready(key, now);
        }
        if pool.proxy().is_some() {
            return self.start_tunnel(key, now);
        }
        self.start_tls(key, BytesMut::new(), now)
    }

    /// Start the TLS handshake with the origin (directly, or inside a
    /// tunnel), `early` being bytes that arrived before it started (after
    /// a proxy's 2xx): they are the handshake's first input.
    pub(super) fn start_tls(&mut self, key: ConnKey, early: BytesMut, now: Instant) {
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some(p) = self.conns.get(key).map(Conn::pool) else {
            return;
        };
        let (config, epoch) = self.tls_config_for(p, key, now);
        let host = self.pools[p].origin().host().to_owned();
        let name = match ServerName::try_from(host) {
            Ok(n) => n,
            Err(e) => {
                let error = Error::InvalidUri(format!("not a TLS server name: {e}"));
                return self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: error.into(),
                });
            }
        };
        match Session::new(config, name) {
            Ok(mut session) => {
                if !early.is_empty() {
                    if let Err(e) = session.keep_pending_vec(early.to_vec()) {
                        let error = self.proxy_error(p, crate::ProxyFailure::Io(Arc::new(e)));
                        return self.effects.push(Effect::ConnectFailed {
                            conn,
                            error: error.into(),
                        });
                    }
                }
                if let Some(c) = self.conns.get_mut(key) {
                    c.start_handshake(session, epoch);
                }
                self.arm(
                    Timer::Conn(key, ConnTimer::Setup),
                    after(now, self.config.timeouts.handshake),
                );
                self.drive(key, ReadMode::Skip, now);
            }
            Err(reason) => {
                let error = Error::tls(reason, Phase::Tls);
                self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: error.into(),
                });
            }
        }
    }

    /// The TLS configuration for a new connection, with the credential
    /// epoch it belongs to: resumption only when the policy allows it and
    /// the last full handshake is younger than max age.
    fn tls_config_for(
        &mut self,
        p: PoolKey,
        key: ConnKey,
        now: Instant,
    ) -> (Arc<ClientConfig>, Epoch) {
        if refresh_trust(&mut self.tls, &mut self.out) {
            self.check_credentials_now(now);
        }
        let epoch = self.tls.epoch();
        let pool = &mut self.pools[p];
        if pool.policy().resumption == Resumption::Never {
            return (self.tls.full(), epoch);
        }
        let fresh_only = self
            .conns
            .get(key)
            .is_some_and(|c| c.purpose() != Purpose::Requests);
        let young = match (pool.full_handshake_at(), pool.policy().max_age) {
            (Some(at), Some(age)) => now.saturating_duration_since(at) < age,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let purge = fresh_only || !young || pool.take_purge();
        (self.tls.resuming(pool.origin().host(), purge), epoch)
    }

    /// Handshake done (or TCP connected for `http://`): report it, and use
    /// it, by its purpose.
    pub(super) fn ready(&mut self, key: ConnKey, now: Instant) {
        self.disarm(Timer::Conn(key, ConnTimer::Setup));
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some((info, changed)) = self.observe_peer(key, now) else {
            return;
        };
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let p = c.pool();
        let purpose = c.purpose();
        let remaining = self.pools[p].policy().max_requests;
        c.set_ready(
            rotary_proto::Codec::new(self.config.limits),
            info.chain.clone(),
            remaining,
        );
        match purpose {
            Purpose::Fresh => return self.fresh_done(p, conn, info, changed),
            Purpose::Probe => {
                log::debug!("chain probe of {} done", info.origin);
                if let Some(previous) = changed {
                    self.chain_changed(p, key, previous);
                }
                return self.effects.push(Effect::Close {
                    conn,
                    reason: CloseReason::Probe,
                });
            }
            Purpose::Requests | Purpose::Replacement | Purpose::Attempt(_) => {}
        }
        if let Some(not_after) = info.chain.as_ref().and_then(|c| c.not_after()) {
            self.retire_at_cert_expiry(key, not_after, now);
        }
        self.schedule_probe(p, now, true);
        self.count(p, crate::stats::Counter::Opened);
        let how = match info.handshake {
            Some(crate::Handshake::Full) => "full handshake",
            Some(crate::Handshake::Resumed) => "resumed session",
            None => "plain tcp",
        };
        log::debug!("connection {} to {} open ({how})", info.conn.0, info.origin);
        self.out.push_back(Event::Opened(info));
        if let Some(previous) = changed {
            self.chain_changed(p, key, previous);
        }
        // Credentials that changed while it shook hands judge it now.
        self.judge_joining(key);
        match self.conns.get(key).and_then(Conn::retiring) {
            Some(reason) => self.effects.push(Effect::Close { conn, reason }),
            None => self.effects.push(Effect::Ready { conn }),
        }
    }
}
