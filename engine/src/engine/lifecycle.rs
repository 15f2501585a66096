//! A connection's lifetime after it is open: its age limit (with jitter)
//! and drain, the make-before-break replacement, what a finished handshake
//! says about the origin's chain (`ChainChanged`, retiring the older
//! connections), retirement at the leaf's notAfter, and chain probes.
//!
//! Owns `Conn::retiring` and `expiry_reason`, the `MaxAge`, `Prewarm` and
//! `Drain` timers, and the pool's `chain`, `full_handshake_at` and probe
//! timer. Closing is [`super::pool`]'s; this file decides when.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::conn::{ConnTimer, Purpose};
use crate::keys::ConnKey;
use crate::stats::Counter;
use crate::{
    CloseReason, ConnectionInfo, Event, Handshake, OnChainChange, PeerChain, Policy, ProxyTlsInfo,
};

use super::pool::PoolKey;
use super::timers::{after, Timer};
use super::Engine;

/// The instant a connection made at `connected_at` expires, given a random
/// `draw` in `[0, 1)`: `max_age` shortened by `draw × jitter`.
pub(crate) fn expiry_deadline(
    connected_at: Instant,
    policy: &Policy,
    draw: f64,
) -> Option<Instant> {
    let age = policy.max_age?;
    let jitter = policy.effective_jitter();
    let cut = jitter.mul_f64(draw.clamp(0.0, 1.0));
    Some(connected_at + age.saturating_sub(cut))
}

/// How long before expiry the replacement is opened: a quarter of the age
/// limit, at most 2 s (a handshake on a slow link).
pub(crate) fn prewarm_lead(age: Duration) -> Duration {
    (age / 4).min(Duration::from_secs(2))
}

/// When the replacement of a connection made at `now` and expiring at
/// `expires_at` is opened: the prewarm lead before expiry, if the policy
/// prewarms and that instant is still ahead.
pub(crate) fn prewarm_deadline(
    now: Instant,
    expires_at: Instant,
    policy: &Policy,
) -> Option<Instant> {
    let age = policy.max_age.filter(|_| policy.prewarm)?;
    let lead = prewarm_lead(age);
    (expires_at > now + lead).then(|| expires_at - lead)
}

/// Whether a prewarm timer firing at `now` opens the replacement: the
/// origin was used within the last max age and has room for one more of
/// its `open` connections (the engine also needs a connection token).
pub(crate) fn prewarm_wanted(
    policy: &Policy,
    now: Instant,
    last_used: Option<Instant>,
    open: usize,
) -> bool {
    let (Some(age), Some(used)) = (policy.max_age, last_used) else {
        return false;
    };
    policy.prewarm && now.saturating_duration_since(used) <= age && open < policy.max_connections
}

/// When the origin's next chain probe is due, armed at `now` with a random
/// `draw` in `[0, 1)`. The `first` probe (armed when the origin gains a
/// connection and has no probe armed) is drawn over the whole interval,
/// `interval × (1 − draw)`, so origins that connected in the same second
/// probe in different ones; every later one comes `interval − draw ×
/// jitter` after the last. With the jitter off, both are exactly one
/// interval.
pub(crate) fn probe_deadline(
    now: Instant,
    policy: &Policy,
    draw: f64,
    first: bool,
) -> Option<Instant> {
    let every = policy.chain_probe_interval?;
    let jitter = policy.effective_probe_jitter();
    let window = if first && !jitter.is_zero() {
        every
    } else {
        jitter
    };
    let cut = window.mul_f64(draw.clamp(0.0, 1.0));
    Some(after(now, every.saturating_sub(cut)))
}

impl Engine {
    /// TCP just connected: arm the age limit and, before it, the prewarm.
    /// A probe or fresh-chain connection closes after its handshake, within
    /// its handshake deadline: it gets neither.
    pub(super) fn arm_lifetime(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get(key).filter(|c| !c.is_chain_only()) else {
            return;
        };
        let policy = self.pools[conn.pool].policy;
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
    /// Records the chain on the connection and the pool, and counts the
    /// handshake. `None` when `key` is gone.
    pub(super) fn observe_peer(
        &mut self,
        key: ConnKey,
        now: Instant,
    ) -> Option<(ConnectionInfo, Option<Arc<PeerChain>>)> {
        let conn = self.conns.get_mut(key)?;
        let p = conn.pool;
        let pool = &mut self.pools[p];
        let mut info = ConnectionInfo {
            conn: conn.id,
            origin: pool.origin.clone(),
            peer_addr: conn.addr(),
            proxy: pool.proxy.as_ref().map(|p| p.to_string()),
            tls_version: None,
            cipher_suite: None,
            alpn: None,
            handshake: None,
            chain: None,
            proxy_tls: conn
                .sock
                .as_ref()
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
        let Some(tls) = conn.tls.as_deref() else {
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
            .peer_chain(presented, pool.origin.host(), pool.chain.as_ref());
        info.tls_version = tls.protocol_version();
        info.cipher_suite = tls.negotiated_cipher_suite().map(|s| s.suite());
        info.alpn = tls.alpn_protocol().map(|a| a.to_vec());
        info.handshake = Some(kind);
        info.chain = Some(chain.clone());
        conn.chain = Some(chain.clone());
        let mut changed = None;
        if kind == Handshake::Full {
            pool.full_handshake_at = Some(now);
            if let Some(prev) = pool.chain.as_ref().filter(|prev| ***prev != *chain) {
                changed = Some(prev.clone());
            }
        }
        if pool.chain.is_none() || kind == Handshake::Full {
            pool.chain = Some(chain);
        }
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
                conn.expiry_reason = CloseReason::CertExpiry;
            }
            self.arm(max_age, at);
        }
    }

    /// Pool `p`'s chain changed with the handshake of `newest`: report it
    /// and, by policy, retire every older connection of the pool.
    pub(super) fn chain_changed(&mut self, p: PoolKey, newest: ConnKey, previous: Arc<PeerChain>) {
        self.count(p, Counter::ChainChange);
        let pool = &self.pools[p];
        let Some(current) = pool.chain.clone() else {
            return;
        };
        log::info!(
            "peer chain of {} changed: {} -> {}",
            pool.origin,
            previous.fingerprint_hex(),
            current.fingerprint_hex()
        );
        self.out.push_back(Event::ChainChanged {
            origin: pool.origin.clone(),
            previous,
            current,
        });
        if pool.policy.on_chain_change == OnChainChange::Keep {
            return;
        }
        let older: Vec<ConnKey> = pool
            .conns
            .iter()
            .copied()
            .filter(|&k| k != newest)
            .collect();
        for key in older {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.is_idle() {
                self.close_conn(key, CloseReason::ChainChange);
            } else if conn.retiring.is_none() {
                conn.retiring = Some(CloseReason::ChainChange);
            }
        }
    }

    /// The `MaxAge` timer fired: an idle connection closes, a busy one
    /// drains (within the grace, if any) and closes when its exchange ends.
    pub(super) fn expire(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        let reason = conn.expiry_reason;
        if conn.is_idle() {
            self.close_conn(key, reason);
            return self.dispatch(p, now);
        }
        if conn.retiring.is_none() {
            conn.retiring = Some(reason);
        }
        if conn.req.is_some() {
            if let Some(grace) = self.pools[p].policy.drain_grace {
                self.arm(Timer::Conn(key, ConnTimer::Drain), after(now, grace));
            }
        }
        // A draining connection takes no request; queued ones may need a new one.
        self.dispatch(p, now);
    }

    /// Shortly before `key` expires: open its replacement if the origin was
    /// used within the last max age and has room.
    pub(super) fn prewarm(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        let pool = &self.pools[p];
        if prewarm_wanted(&pool.policy, now, pool.last_used, pool.conns.len())
            && self.has_token_room()
        {
            log::debug!("prewarming a replacement connection to {}", pool.origin);
            self.open(p, Purpose::Replacement, now);
        }
    }

    /// Arm the origin's chain probe, if the policy asks for one and it has
    /// live connections to heal.
    /// `first` is true when a connection became ready (the probe's first
    /// arming, unless one is armed already), false when a probe re-arms it.
    pub(super) fn schedule_probe(&mut self, p: PoolKey, now: Instant, first: bool) {
        let pool = &self.pools[p];
        if pool.probe_timer.is_some() || !pool.origin.is_tls() {
            return;
        }
        let Some(at) = probe_deadline(now, &pool.policy, fastrand::f64(), first) else {
            return;
        };
        self.arm(Timer::Probe(p), at);
    }

    /// The probe timer fired: a TLS-only full handshake shows whether the
    /// origin's chain changed while the live connections kept the old one.
    pub(super) fn probe(&mut self, p: PoolKey, now: Instant) {
        let live = self.pools[p].conns.iter().any(|&k| {
            self.conns
                .get(k)
                .is_some_and(|c| !c.is_chain_only() && c.stage() == crate::conn::Stage::Ready)
        });
        if !live || self.shut || !self.has_token_room() {
            return;
        }
        self.count(p, Counter::Probe);
        self.open(p, Purpose::Probe, now);
        self.schedule_probe(p, now, false);
    }
}
