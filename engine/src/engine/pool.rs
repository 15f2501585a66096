//! Pools of connections per origin: finding a request's pool, putting
//! queued requests on idle connections (or opening new ones), taking a
//! connection back when its exchange ends, and closing connections.
//!
//! Owns [`Pools`] (the pools, their index by origin, the origin policies)
//! and each pool's `conns`, `idle`, `queue` and `connecting`. `close_conn` is
//! the one place a connection leaves the slab.
//!
//! A pool lives while it has a connection, a waiting request or a waiting
//! fresh-chain call; once it has none, [`Pools::sweep`] drops it at the end
//! of the loop's turn, so a runner that follows redirects to thousands of
//! object-storage hosts holds memory only for the origins it still uses.
//! What the origin taught it (its last chain, when a full handshake last
//! stored tickets, its counters) is remembered for the [`RECENT`] origins
//! dropped last and handed to the origin's next pool: a server that closes
//! after every response still gets `ChainChanged` and resumption rules.

use std::collections::{HashMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::{ConnTimer, Purpose};
use crate::keys::{ConnKey, ReqKey, Slots, SHRINK_ABOVE};
use crate::stats::{Counter, OriginStats};
use crate::{
    CloseReason, ConnId, Error, Origin, PeerChain, Phase, Policy, Proxies, Proxy, ProxyUse,
};

pub(super) use crate::keys::PoolKey;

use super::timers::{after, Timer};
use super::Engine;

/// The connections and waiting requests of one origin.
pub(super) struct Pool {
    pub(super) origin: Origin,
    /// The server's header names, lent to the codec of whichever of the
    /// pool's connections parses a response head (one copy per origin,
    /// not one per connection).
    pub(super) names: rotary_proto::NameCache,
    /// The proxy every connection of this pool goes through (fixed for the
    /// pool: a route that changes makes another pool).
    pub(super) proxy: Option<Arc<Proxy>>,
    pub(super) policy: Policy,
    pub(super) conns: Vec<ConnKey>,
    /// Idle connections, ascending by id: the youngest is last, the oldest
    /// first.
    pub(super) idle: Vec<(ConnId, ConnKey)>,
    pub(super) queue: VecDeque<ReqKey>,
    /// Connections being opened for requests (probes do not count).
    pub(super) connecting: usize,
    pub(super) last_used: Option<Instant>,
    /// The chain of the origin's newest full handshake.
    pub(super) chain: Option<Arc<PeerChain>>,
    /// When a full handshake last stored fresh session tickets.
    pub(super) full_handshake_at: Option<Instant>,
    /// A connection retired for age or chain: forget stored sessions.
    pub(super) purge_sessions: bool,
    pub(super) probe_timer: Option<crate::wheel::TimerKey>,
    /// Fresh-chain calls waiting for the pool's one fresh-chain handshake
    /// (a `Purpose::Fresh` connection is open exactly while this is not
    /// empty; see [`super::fresh`]).
    pub(super) fresh_waiters: Vec<crate::ChainRequestId>,
    pub(super) stats: OriginStats,
    /// When it was made, in the order of [`Pools`]: the newest pool of an
    /// origin answers for it.
    created: u64,
}

impl Pool {
    /// Nothing of the pool is in use: it may be dropped.
    fn unused(&self) -> bool {
        self.conns.is_empty()
            && self.queue.is_empty()
            && self.fresh_waiters.is_empty()
            && self.probe_timer.is_none()
    }
}

/// Origins whose memory outlives their pool (see the module's notes): a
/// chain is a few KiB, so this bounds it to about half a MiB.
const RECENT: usize = 64;

/// What a dropped pool knew of its origin and route.
struct Remembered {
    key: (Origin, Option<Arc<Proxy>>),
    chain: Option<Arc<PeerChain>>,
    full_handshake_at: Option<Instant>,
    purge_sessions: bool,
    stats: OriginStats,
}

/// Every pool in use, found by origin, and the policies set per origin. A
/// [`PoolKey`] stays valid while its pool has a connection or a request
/// (which is what holds one); [`Pools::sweep`] drops the others.
#[derive(Default)]
pub(super) struct Pools {
    list: Slots<PoolKey, Pool>,
    /// Pools that may have fallen out of use since the last sweep.
    unused: Vec<PoolKey>,
    /// The origins of the pools dropped last, the newest at the back.
    recent: VecDeque<Remembered>,
    made: u64,
    index: HashMap<(Origin, Option<Arc<Proxy>>), PoolKey>,
    /// The engine's proxies, resolved when it was built.
    proxies: Proxies,
    /// The scheme and authority of the last submitted URI and its pool:
    /// consecutive requests to one origin skip building an `Origin`.
    last: Option<(bool, http::uri::Authority, PoolKey)>,
    policies: HashMap<Origin, Policy>,
}

impl Index<PoolKey> for Pools {
    type Output = Pool;
    #[inline]
    fn index(&self, p: PoolKey) -> &Pool {
        self.list
            .get(p)
            .expect("a pool key is held only by a connection or request of a pool in use")
    }
}

impl IndexMut<PoolKey> for Pools {
    #[inline]
    fn index_mut(&mut self, p: PoolKey) -> &mut Pool {
        self.list
            .get_mut(p)
            .expect("a pool key is held only by a connection or request of a pool in use")
    }
}

impl Pools {
    pub(super) fn new(proxies: Proxies) -> Pools {
        Pools {
            proxies,
            ..Pools::default()
        }
    }

    /// The chain of `origin`'s newest full handshake, from its pool or, when
    /// the pool was dropped lately, from what it remembered.
    pub(super) fn chain_of(&self, origin: &Origin) -> Option<Arc<PeerChain>> {
        match self.find(origin) {
            Some(p) => self[p].chain.clone(),
            None => self
                .recent
                .iter()
                .rev()
                .find(|r| r.key.0 == *origin)
                .and_then(|r| r.chain.clone()),
        }
    }

    /// The newest pool of `origin` (there is one per route the origin took).
    pub(super) fn find(&self, origin: &Origin) -> Option<PoolKey> {
        self.list
            .iter()
            .filter(|(_, p)| p.origin == *origin)
            .max_by_key(|(_, p)| p.created)
            .map(|(k, _)| k)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.list.iter().map(|(_, p)| p)
    }

    /// The counters of every pool in use, then of the pools dropped lately.
    pub(super) fn origin_stats(&self) -> impl Iterator<Item = &OriginStats> {
        let live = self.iter().map(|p| &p.stats);
        live.chain(self.recent.iter().map(|r| &r.stats))
    }

    /// Pools in use.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Requests waiting for a connection, over every pool.
    pub(super) fn queued(&self) -> usize {
        self.iter().map(|p| p.queue.len()).sum()
    }

    /// Fresh-chain calls waiting for a handshake, over every pool.
    pub(super) fn fresh_pending(&self) -> usize {
        self.iter().map(|p| p.fresh_waiters.len()).sum()
    }

    /// Pool `p` may have just fallen out of use: the next sweep looks.
    pub(super) fn may_be_unused(&mut self, p: PoolKey) {
        self.unused.push(p);
    }

    /// Drop the pools that fell out of use: no connection, no waiting
    /// request or fresh-chain call, no probe armed. Run between handlers,
    /// never inside one, so no handler holds the key of a pool it drops.
    pub(super) fn sweep(&mut self) {
        if self.unused.is_empty() {
            return;
        }
        let mut unused = std::mem::take(&mut self.unused);
        for p in unused.drain(..) {
            if !self.list.get(p).is_some_and(Pool::unused) {
                continue;
            }
            let Some(pool) = self.list.remove(p) else {
                continue;
            };
            let key = (pool.origin, pool.proxy);
            self.index.remove(&key);
            if self.last.as_ref().is_some_and(|(_, _, last)| *last == p) {
                self.last = None;
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(Remembered {
                key,
                chain: pool.chain,
                full_handshake_at: pool.full_handshake_at,
                purge_sessions: pool.purge_sessions,
                stats: pool.stats,
            });
        }
        if unused.capacity() > SHRINK_ABOVE {
            unused = Vec::new();
        }
        self.unused = unused;
    }

    pub(super) fn set_policy(&mut self, origin: Origin, policy: Policy) {
        for (_, pool) in self.list.iter_mut().filter(|(_, p)| p.origin == origin) {
            // A pool's route is fixed: one the new policy no longer takes
            // gets no new request (the next one makes the other pool).
            pool.policy = Policy {
                proxy: pool.policy.proxy,
                ..policy
            };
        }
        // The route may have changed: the next request looks it up anew.
        self.last = None;
        self.policies.insert(origin, policy);
    }

    pub(super) fn policy_of(&self, origin: &Origin, default: &Policy) -> Policy {
        self.policies.get(origin).copied().unwrap_or(*default)
    }

    /// The pool for a request URI. Pools are never removed, so the last
    /// URI's pool stays valid; `Authority` compares case-insensitively.
    #[inline]
    pub(super) fn of_uri(&mut self, uri: &http::Uri, default: &Policy) -> Result<PoolKey, Error> {
        let tls = match uri.scheme_str() {
            Some("https") => Some(true),
            Some("http") => Some(false),
            _ => None,
        };
        if let (Some((last_tls, last, p)), Some(tls), Some(authority)) =
            (&self.last, tls, uri.authority())
        {
            // A URI cloned from the last one shares its bytes: no compare.
            let same = last.as_str().as_ptr() == authority.as_str().as_ptr()
                && last.as_str().len() == authority.as_str().len();
            if *last_tls == tls && (same || last == authority) {
                return Ok(*p);
            }
        }
        let p = self.get_or_insert(Origin::from_uri(uri)?, default);
        self.last = tls.zip(uri.authority()).map(|(t, a)| (t, a.clone(), p));
        Ok(p)
    }

    pub(super) fn get_or_insert(&mut self, origin: Origin, default: &Policy) -> PoolKey {
        let policy = self.policy_of(&origin, default);
        let proxy = match policy.proxy {
            ProxyUse::Engine => self.proxies.route(&origin).cloned(),
            ProxyUse::Direct => None,
        };
        let key = (origin, proxy);
        if let Some(&p) = self.index.get(&key) {
            return p;
        }
        let known = self.recent.iter().position(|r| r.key == key);
        let known = known.and_then(|i| self.recent.remove(i));
        let (origin, proxy) = key;
        self.made += 1;
        let p = self.list.insert(Pool {
            origin: origin.clone(),
            proxy: proxy.clone(),
            policy,
            conns: Vec::new(),
            idle: Vec::new(),
            queue: VecDeque::new(),
            connecting: 0,
            last_used: None,
            chain: known.as_ref().and_then(|k| k.chain.clone()),
            full_handshake_at: known.as_ref().and_then(|k| k.full_handshake_at),
            purge_sessions: known.as_ref().is_some_and(|k| k.purge_sessions),
            probe_timer: None,
            names: rotary_proto::NameCache::default(),
            fresh_waiters: Vec::new(),
            stats: known.map_or_else(|| OriginStats::new(origin.clone()), |k| k.stats),
            created: self.made,
        });
        self.index.insert((origin, proxy), p);
        // A pool whose first request fails at once is never used at all.
        self.unused.push(p);
        p
    }
}

/// Which idle connection gets the next request: the youngest (highest id,
/// so older ones age out unused), and for a retry that must not reuse, only
/// one that has carried nothing yet (`fresh` tells which). `idle` is sorted
/// by id, so the usual pick is the last entry. Returns the index in `idle`.
pub(super) fn pick_idle(
    idle: &[(ConnId, ConnKey)],
    fresh_only: Option<&dyn Fn(ConnKey) -> bool>,
) -> Option<usize> {
    match fresh_only {
        None => idle.len().checked_sub(1),
        Some(fresh) => idle.iter().rposition(|&(_, key)| fresh(key)),
    }
}

/// Add an idle connection to `idle`, keeping it sorted by id.
pub(super) fn insert_idle(idle: &mut Vec<(ConnId, ConnKey)>, id: ConnId, key: ConnKey) {
    // A connection going idle is usually the youngest or near it.
    let at = idle.partition_point(|&(other, _)| other < id);
    idle.insert(at, (id, key));
}

impl Engine {
    /// Put queued requests on idle connections (the youngest first), then open
    /// connections for those still waiting, within the origin's maximum.
    pub(super) fn dispatch(&mut self, p: PoolKey, now: Instant) {
        if self.shut {
            return;
        }
        loop {
            let pool = &self.pools[p];
            let Some(&rk) = pool.queue.front() else {
                // A queue a burst of submits grew gives its memory back.
                if pool.queue.capacity() > SHRINK_ABOVE {
                    self.pools[p].queue = VecDeque::new();
                }
                break;
            };
            let fresh = self.reqs.get(rk).is_some_and(|r| r.fresh_only);
            let conns = &self.conns;
            let unused = |k: ConnKey| conns.get(k).is_some_and(|c| c.served == 0);
            let pick = pick_idle(
                &pool.idle,
                fresh.then_some(&unused as &dyn Fn(ConnKey) -> bool),
            );
            let Some(i) = pick else { break };
            let pool = &mut self.pools[p];
            let (_, ck) = pool.idle.remove(i);
            pool.queue.pop_front();
            self.assign(ck, rk, now);
        }
        let pool = &self.pools[p];
        let max = pool.policy.max_connections.max(1);
        let mut waiting = pool.queue.len();
        while waiting > self.pools[p].connecting && self.has_token_room() {
            if self.pools[p].conns.len() >= max {
                // Only fresh-only retries wait while connections sit idle: make room.
                let Some(&(_, oldest)) = self.pools[p].idle.first() else {
                    break;
                };
                self.close_conn(oldest, CloseReason::Idle);
                continue;
            }
            self.open(p, Purpose::Requests, now);
            waiting = self.pools[p].queue.len();
        }
    }

    /// The connection is free: back to the pool's idle list with its idle
    /// deadline, or closed when the peer sent bytes nobody asked for.
    pub(super) fn make_idle(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        if !conn.rbuf.is_empty() {
            self.close_conn(key, CloseReason::PeerClose);
            return self.dispatch(p, now);
        }
        conn.release_buffers(crate::conn::KEEP_BUSY);
        self.idled = true;
        let limit = conn.idle_limit.or(self.pools[p].policy.idle_timeout);
        insert_idle(&mut self.pools[p].idle, conn.id, key);
        conn.idle_until = limit.map(|l| after(now, l));
        let until = conn.idle_until;
        // A busy keep-alive connection goes idle once per exchange: an idle
        // timer still armed from an earlier idle spell stays and, when it
        // fires, re-arms for the rest. The wheel is touched only when the
        // new deadline is earlier (a server's Keep-Alive hint) or none is set.
        let idle = Timer::Conn(key, ConnTimer::Idle);
        if let Some(until) = until {
            if self.armed(idle).is_none_or(|at| at > until) {
                self.arm(idle, until);
            }
        }
        self.dispatch(p, now);
    }

    /// Close a connection now: cancel its timers, close_notify, drop the
    /// socket, leave the pool. Its request, if still attached, fails.
    pub(super) fn close_conn(&mut self, key: ConnKey, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        self.timers.cancel_all(&mut conn.timers);
        conn.shutdown(&self.mio.registry);
        if conn.attempt_for().is_some() {
            // A losing Happy Eyeballs attempt was never the pool's.
            return;
        }
        for (k, id) in conn.end_dial() {
            if self.is_live(k, id) {
                self.close_conn(k, reason);
            }
        }
        let pool = &mut self.pools[conn.pool];
        pool.conns.retain(|&k| k != key);
        pool.idle.retain(|&(_, k)| k != key);
        if conn.is_opening() {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
        if matches!(
            reason,
            CloseReason::MaxAge | CloseReason::ChainChange | CloseReason::CertExpiry
        ) {
            pool.purge_sessions = true;
        }
        let fresh = conn.purpose == Purpose::Fresh;
        if pool.conns.is_empty() {
            // Nothing left to heal: the probe stops until the next connection.
            self.disarm(Timer::Probe(conn.pool));
            self.pools.may_be_unused(conn.pool);
        }
        let origin = self.pools[conn.pool].origin.clone();
        self.count(conn.pool, Counter::Closed(reason));
        log::debug!(
            "connection {} to {origin} closed: {}",
            conn.id.0,
            reason.name()
        );
        if fresh {
            // Answered already when it finished or failed its handshake;
            // anything else (shutdown, close_idle) ends the calls here.
            let err = match reason {
                CloseReason::Shutdown => Error::Shutdown,
                _ => Error::Cancelled,
            };
            self.answer_fresh(conn.pool, Err(err));
        }
        if let Some(rk) = conn.req {
            if let Some(r) = self.reqs.get_mut(rk) {
                r.conn = None;
            }
            let err = match reason {
                CloseReason::Shutdown => Error::Shutdown,
                _ => Error::PeerClosed {
                    phase: Phase::ResponseHead,
                    reused: conn.served > 1,
                },
            };
            self.fail_request(rk, err);
        }
        self.out.push_back(crate::Event::Closed {
            conn: conn.id,
            origin,
            reason,
        });
    }
}
