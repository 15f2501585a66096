//! Opening a connection: resolve → connect (address by address) → TLS
//! handshake → ready, and what a failure at any of those steps does.
//!
//! Owns a connection's stages before `Ready` (`Conn::start_connecting`,
//! `start_handshake`, `set_ready`), its address list and `Setup` timer, the
//! pool's `connecting` count, and the choice of TLS configuration (full
//! handshake or resumption). What a finished handshake means for the
//! connection's lifetime is [`super::lifecycle`]'s.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::conn::{Conn, ConnTimer, Dial, Purpose};
use crate::keys::ConnKey;
use crate::session::Session;
use crate::stats::Counter;
use crate::{CloseReason, ConnId, Error, Event, Phase, Resumption};

use super::io::ReadMode;
use super::pool::PoolKey;
use super::timers::Timer;
use super::Engine;

impl Engine {
    /// Open a connection for pool `p`: look its host up (IP literals need
    /// no lookup), then connect.
    pub(super) fn open(&mut self, p: PoolKey, purpose: Purpose, now: Instant) {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let key = self.conns.insert(Conn::new(
            id,
            p,
            purpose,
            rotary_proto::Codec::new(self.config.limits),
        ));
        self.stats.connections_attempted += 1;
        let pool = &mut self.pools[p];
        pool.conns.push(key);
        if purpose != Purpose::Probe {
            pool.connecting += 1;
        }
        let (host, port) = (pool.origin.host().to_owned(), pool.origin.port());
        if let Some(ip) = self.net.literal(&host) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dial = Dial::new(vec![std::net::SocketAddr::new(ip, port)]);
            }
            self.start_connect(key, now);
        } else {
            self.dns.submit(key, id.0, &host, port);
            self.arm(
                Timer::Conn(key, ConnTimer::Setup),
                now + self.config.timeouts.dns,
            );
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
            if conn.stage() != crate::conn::Stage::Resolving {
                continue;
            }
            let p = conn.pool;
            match a.result {
                Ok(addrs) => {
                    conn.dial = Dial::new(addrs);
                    self.disarm(Timer::Conn(a.conn, ConnTimer::Setup));
                    self.start_connect(a.conn, now);
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
        self.answers = answers;
    }

    /// Connect to the next untried address, or fail the attempt.
    fn start_connect(&mut self, key: ConnKey, now: Instant) {
        let token = self.mio.token(key);
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Some(addr) = conn.dial.next_addr() else {
                let err = conn
                    .dial
                    .last_error
                    .take()
                    .unwrap_or_else(|| Error::Resolve {
                        host: self.pools[conn.pool].origin.host().to_owned(),
                        cause: Arc::new(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no addresses",
                        )),
                    });
                return self.connect_failed(key, err, now);
            };
            let sock = match self.net.connect(addr) {
                Ok(sock) => sock,
                Err(e) => {
                    conn.dial.last_error = Some(Error::Connect {
                        addr,
                        cause: Arc::new(e),
                    });
                    continue;
                }
            };
            let at_once = !sock.is_evented();
            conn.start_connecting(sock, addr);
            if let Err(e) = conn.update_interest(&self.mio.registry, token) {
                conn.sock = None;
                conn.dial.last_error = Some(Error::Connect {
                    addr,
                    cause: Arc::new(e),
                });
                continue;
            }
            self.arm(
                Timer::Conn(key, ConnTimer::Setup),
                now + self.config.timeouts.connect,
            );
            if at_once {
                // A pipe that raises no readiness event is connected already.
                self.on_connecting(key, now);
            }
            return;
        }
    }

    /// The current address failed with `err`: try the next.
    pub(super) fn next_address(&mut self, key: ConnKey, err: Error, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.shutdown(&self.mio.registry);
        conn.dial.last_error = Some(err);
        self.start_connect(key, now);
    }

    /// Readiness while connecting: connected, still waiting, or failed.
    pub(super) fn on_connecting(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(sock) = conn.sock.as_ref() else {
            return;
        };
        let addr = conn.addr();
        match sock.connect_result() {
            Ok(true) => self.connected(key, now),
            Ok(false) => {}
            Err(e) => {
                let err = Error::Connect {
                    addr,
                    cause: Arc::new(e),
                };
                self.next_address(key, err, now)
            }
        }
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
        if !self.pools[p].origin.is_tls() {
            return self.ready(key, now);
        }
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
            Ok(session) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.start_handshake(session);
                }
                self.arm(
                    Timer::Conn(key, ConnTimer::Setup),
                    now + self.config.timeouts.handshake,
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
        match self.tls.refresh() {
            Ok(true) => log::info!("trust files changed; new connections use the new anchors"),
            Ok(false) => {}
            Err(e) => {
                log::warn!(
                    "keeping the previous trust anchors: {}: {}",
                    e.path.display(),
                    e.reason
                );
                self.out.push_back(Event::TrustError {
                    path: e.path,
                    reason: e.reason,
                });
            }
        }
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
        if conn.purpose != Purpose::Probe {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
        conn.remaining = pool.policy.max_requests;
        let purpose = conn.purpose;
        let Some((info, changed)) = self.observe_peer(key, now) else {
            return;
        };
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
        self.schedule_probe(p, now);
        self.count(p, Counter::Opened);
        log::debug!(
            "connection {} to {} open ({:?})",
            info.conn.0,
            info.origin,
            info.handshake
        );
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
    /// of its origin (if any) ends with the error.
    pub(super) fn connect_failed(&mut self, key: ConnKey, err: Error, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        let probe = conn.purpose == Purpose::Probe;
        log::debug!("connection to {} failed: {err}", self.pools[p].origin);
        self.out.push_back(Event::ConnectFailed {
            conn: conn.id,
            origin: self.pools[p].origin.clone(),
            error: err.clone(),
        });
        self.close_conn(key, CloseReason::ConnectFailed);
        if !probe {
            if let Some(rk) = self.pools[p].queue.pop_front() {
                self.fail_request(rk, err);
            }
        }
        self.dispatch(p, now);
    }
}
