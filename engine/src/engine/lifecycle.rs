//! A connection's lifetime after TCP connects: its age limit (with jitter)
//! and drain, the make-before-break replacement, what a finished handshake
//! says about the origin's chain (`ChainChanged`, retiring the older
//! connections), retirement at the leaf's notAfter, chain probes, and fresh
//! chains on demand ([`Engine::fresh_chain`](crate::Engine::fresh_chain)).
//!
//! Decides when a connection retires; the deadlines themselves are pure
//! functions in [`super::lifetime`], and closing is [`super::apply`]'s.
//! A `Purpose::Fresh` connection is open for a pool exactly while fresh-
//! chain calls wait on it: every way it ends (handshake done here, failed
//! or closed in `apply`) answers them all through [`Engine::answer_fresh`],
//! so each call gets one event.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::chain::PeerChain;
use crate::config::OnChainChange;
use crate::error::Error;
use crate::event::{ChainRequestId, CloseReason, ConnectionInfo, Event, Handshake, ProxyTlsInfo};
use crate::keys::{ConnKey, PoolKey};
use crate::origin::Origin;
use crate::stats::Counter;

use super::conn::{Purpose, StageName};
use super::effects::{ConnRef, Effect};
use super::lifetime::{expiry_deadline, prewarm_deadline, prewarm_wanted, probe_deadline};
use super::timers::{after, ConnTimer, Timer};
use super::Engine;

impl Engine {
    /// TCP just connected: arm the age limit and, before it, the prewarm.
    /// A probe or fresh-chain connection closes after its handshake, within
    /// its handshake deadline: it gets neither.
    pub(super) fn arm_lifetime(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get(key).filter(|c| !c.is_chain_only()) else {
            return;
        };
        let policy = *self.pools[conn.pool()].policy();
        let Some(at) = expiry_deadline(now, &policy, fastrand::f64()) else {
            return;
        };
        self.arm(Timer::Conn(key, ConnTimer::MaxAge), at);
        if let Some(warm) = prewarm_deadline(now, at, &policy) {
            self.arm(Timer::Conn(key, ConnTimer::Prewarm), warm);
        }
    }

    /// What the finished handshake of `key` showed: the connection's report,
    /// and the origin's previous chain when this full handshake changed it.
    /// Records the chain with the pool, and counts the handshake. `None`
    /// when `key` is gone.
    pub(super) fn observe_peer(
        &mut self,
        key: ConnKey,
        now: Instant,
    ) -> Option<(ConnectionInfo, Option<Arc<PeerChain>>)> {
        let conn = self.conns.get(key)?;
        let p = conn.pool();
        let pool = &mut self.pools[p];
        let mut info = ConnectionInfo {
            conn: conn.id(),
            origin: pool.origin().clone(),
            peer_addr: conn.addr(),
            proxy: pool.proxy().map(|p| p.to_string()),
            tls_version: None,
            cipher_suite: None,
            alpn: None,
            handshake: None,
            chain: None,
            proxy_tls: conn
                .sock()
                .and_then(crate::sock::Sock::proxy_tls)
                .and_then(|outer| {
                    let session = outer.session();
                    Some(ProxyTlsInfo {
                        tls_version: session.protocol_version(),
                        cipher_suite: session.negotiated_cipher_suite().map(|s| s.suite()),
                        chain: outer.chain()?.clone(),
                    })
                }),
        };
        let Some(tls) = conn.session() else {
            return Some((info, None));
        };
        let kind = match tls.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        let presented = tls.peer_certificates().unwrap_or_default();
        // With its verified path; the origin's current chain is shared.
        let chain = self
            .tls
            .peer_chain(presented, pool.origin().host(), pool.chain());
        info.tls_version = tls.protocol_version();
        info.cipher_suite = tls.negotiated_cipher_suite().map(|s| s.suite());
        info.alpn = tls.alpn_protocol().map(|a| a.to_vec());
        info.handshake = Some(kind);
        let changed = pool.saw_chain(&chain, kind == Handshake::Full, now);
        info.chain = Some(chain);
        let counter = match kind {
            Handshake::Full => Counter::HandshakeFull,
            Handshake::Resumed => Counter::HandshakeResumed,
        };
        self.count(p, counter);
        Some((info, changed))
    }

    /// Retire the connection at its leaf's notAfter when that comes before
    /// its max age.
    pub(super) fn retire_at_cert_expiry(
        &mut self,
        key: ConnKey,
        not_after: SystemTime,
        now: Instant,
    ) {
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let at = after(now, left);
        let max_age = Timer::Conn(key, ConnTimer::MaxAge);
        if self.armed(max_age).is_none_or(|c| at < c) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.expire_at_cert();
            }
            self.arm(max_age, at);
        }
    }

    /// Pool `p`'s chain changed with the handshake of `newest`: report it
    /// and, by policy, retire every older connection of the pool.
    pub(super) fn chain_changed(&mut self, p: PoolKey, newest: ConnKey, previous: Arc<PeerChain>) {
        self.count(p, Counter::ChainChange);
        let pool = &self.pools[p];
        let Some(current) = pool.chain().cloned() else {
            return;
        };
        log::info!(
            "peer chain of {} changed: {} -> {}",
            pool.origin(),
            previous.fingerprint_hex(),
            current.fingerprint_hex()
        );
        self.out.push_back(Event::ChainChanged {
            origin: pool.origin().clone(),
            previous,
            current,
        });
        if pool.policy().on_chain_change == OnChainChange::Keep {
            return;
        }
        let older: Vec<ConnKey> = pool
            .conns()
            .iter()
            .copied()
            .filter(|&k| k != newest)
            .collect();
        for key in older {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.is_idle() {
                let conn = ConnRef { key, id: conn.id() };
                self.effects.push(Effect::Close {
                    conn,
                    reason: CloseReason::ChainChange,
                });
            } else {
                conn.retire(CloseReason::ChainChange);
            }
        }
    }

    /// The `MaxAge` timer fired: an idle connection closes, a busy one
    /// drains (within the grace, if any) and closes when its exchange ends.
    pub(super) fn expire(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool();
        let reason = conn.expiry_reason();
        if conn.is_idle() {
            let conn = ConnRef { key, id: conn.id() };
            return self.effects.push(Effect::Close { conn, reason });
        }
        conn.retire(reason);
        if conn.exchange().is_some() {
            if let Some(grace) = self.pools[p].policy().drain_grace {
                self.arm(Timer::Conn(key, ConnTimer::Drain), after(now, grace));
            }
        }
        // A draining connection takes no request; queued ones may need a new one.
        self.effects.push(Effect::Dispatch(p));
    }

    /// Shortly before `key` expires: open its replacement if the origin was
    /// used within the last max age and has room.
    pub(super) fn prewarm(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool();
        let pool = &self.pools[p];
        if prewarm_wanted(pool.policy(), now, pool.last_used(), pool.conns().len())
            && self.has_token_room()
        {
            log::debug!("prewarming a replacement connection to {}", pool.origin());
            self.open(p, Purpose::Replacement, now);
        }
    }

    /// Arm the origin's chain probe, if the policy asks for one and it has
    /// live connections to heal.
    /// `first` is true when a connection became ready (the probe's first
    /// arming, unless one is armed already), false when a probe re-arms it.
    pub(super) fn schedule_probe(&mut self, p: PoolKey, now: Instant, first: bool) {
        let pool = &self.pools[p];
        if pool.probe_timer().is_some() || !pool.origin().is_tls() {
            return;
        }
        let Some(at) = probe_deadline(now, pool.policy(), fastrand::f64(), first) else {
            return;
        };
        self.arm(Timer::Probe(p), at);
    }

    /// The probe timer fired: a TLS-only full handshake shows whether the
    /// origin's chain changed while the live connections kept the old one.
    pub(super) fn probe(&mut self, p: PoolKey, now: Instant) {
        let Some(pool) = self.pools.get(p) else {
            return;
        };
        let live = pool.conns().iter().any(|&k| {
            self.conns
                .get(k)
                .is_some_and(|c| !c.is_chain_only() && c.stage() == StageName::Ready)
        });
        if !live || self.shut || !self.has_token_room() {
            // Nothing left to heal: the pool may go.
            self.pools.may_be_unused(p);
            return;
        }
        self.count(p, Counter::Probe);
        self.open(p, Purpose::Probe, now);
        self.schedule_probe(p, now, false);
    }

    /// Answer (or start answering) fresh-chain call `id` for `origin`.
    pub(super) fn fresh_chain_with_id(
        &mut self,
        id: ChainRequestId,
        origin: Origin,
        freshness: Duration,
        now: Instant,
    ) {
        let answer = |engine: &mut Engine, origin: Origin, result| {
            engine
                .out
                .push_back(Event::FreshChain { id, origin, result });
        };
        if self.shut {
            return answer(self, origin, Err(Error::Shutdown));
        }
        if !origin.is_tls() {
            let why = format!("a fresh chain needs an https:// origin, not {origin}");
            return answer(self, origin, Err(Error::Unsupported(why)));
        }
        let p = self.pools.get_or_insert(origin, &self.config.policy);
        let pool = &mut self.pools[p];
        let recent = pool
            .full_handshake_at()
            .is_some_and(|at| now.saturating_duration_since(at) <= freshness);
        if let (true, Some(chain)) = (recent, pool.chain().cloned()) {
            let origin = pool.origin().clone();
            return answer(self, origin, Ok(chain));
        }
        if pool.fresh_waiting() {
            // One handshake is under way: this call shares it.
            pool.wait_fresh(id);
            return;
        }
        if let Err(err) = self.make_room(p) {
            let origin = self.pools[p].origin().clone();
            return answer(self, origin, Err(err));
        }
        log::debug!("fresh-chain handshake to {}", self.pools[p].origin());
        self.pools[p].wait_fresh(id);
        // After the close that makes room, if any. A connect that fails
        // at once answers through the connect failure.
        self.effects.push(Effect::Open {
            pool: p,
            purpose: Purpose::Fresh,
        });
    }

    /// Room for one more connection of pool `p` within `max_connections`
    /// (its oldest idle connection closes first if need be) and the token
    /// range.
    fn make_room(&mut self, p: PoolKey) -> Result<(), Error> {
        let pool = &self.pools[p];
        let max = pool.policy().max_connections.max(1);
        if pool.conns().len() >= max {
            let Some(oldest) = pool.oldest_idle().and_then(|k| self.conn_ref(k)) else {
                return Err(Error::ConnectionLimit { limit: max });
            };
            self.effects.push(Effect::Close {
                conn: oldest,
                reason: CloseReason::Idle,
            });
        } else if !self.has_token_room() {
            return Err(Error::ConnectionLimit {
                limit: self.mio.count.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// The fresh-chain connection `conn` of pool `p` finished its handshake:
    /// what changed is reported (and retires older connections by policy,
    /// as a probe's would), every waiting call gets its chain, and the
    /// connection closes.
    pub(super) fn fresh_done(
        &mut self,
        p: PoolKey,
        conn: ConnRef,
        info: ConnectionInfo,
        changed: Option<Arc<PeerChain>>,
    ) {
        self.count(p, Counter::FreshHandshake);
        log::debug!("fresh-chain handshake to {} done", info.origin);
        if let Some(previous) = changed {
            self.chain_changed(p, conn.key, previous);
        }
        let result = info.chain.ok_or_else(|| {
            Error::Unsupported("the fresh-chain connection has no tls chain".into())
        });
        self.answer_fresh(p, result);
        self.effects.push(Effect::Close {
            conn,
            reason: CloseReason::Probe,
        });
    }

    /// Every call waiting on pool `p`'s fresh-chain handshake ends with
    /// `result`.
    pub(super) fn answer_fresh(&mut self, p: PoolKey, result: Result<Arc<PeerChain>, Error>) {
        let pool = &mut self.pools[p];
        let waiters = pool.take_fresh();
        let origin = pool.origin().clone();
        for id in waiters {
            self.out.push_back(Event::FreshChain {
                id,
                origin: origin.clone(),
                result: result.clone(),
            });
        }
    }
}
