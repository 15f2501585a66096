//! Pools of connections per origin and route: which pool a request goes
//! to, its queue of waiting requests, its connections (idle, busy, being
//! opened), and what the origin taught the engine (its chain, when a full
//! handshake last stored tickets, its counters).
//!
//! Owns [`Pools`] and every field of [`Pool`]; the engine changes a pool
//! only through the methods here, which keep its lists consistent (a
//! connection is idle only if it is the pool's; the `connecting` count
//! follows the connections being opened for requests).
//!
//! A pool lives while it has a connection, a waiting request or a waiting
//! fresh-chain call; once it has none, [`Pools::sweep`] drops it at the end
//! of the loop's turn, so a runner that follows redirects to thousands of
//! object-storage hosts holds memory only for the origins it still uses.
//! What the origin taught it is remembered for the [`RECENT`] origins
//! dropped last and handed to the origin's next pool: a server that closes
//! after every response still gets `ChainChanged` and resumption rules.
//! Knows the engine's keys and nothing else of it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::time::Instant;

use http::header::PROXY_AUTHORIZATION;
use http::HeaderMap;
use rotary_proto::{NameCache, TargetForm};

use crate::chain::PeerChain;
use crate::config::Policy;
use crate::error::Error;
use crate::event::{ChainRequestId, ConnId};
use crate::keys::{ConnKey, PoolKey, ReqKey, Slots, SHRINK_ABOVE};
use crate::origin::Origin;
use crate::proxy::{Proxies, Proxy};
use crate::stats::{Counter, OriginStats};
use crate::wheel::TimerKey;

/// The connections and waiting requests of one origin and route.
pub(super) struct Pool {
    origin: Origin,
    /// The server's header names, lent to the codec of whichever of the
    /// pool's connections parses a response head (one copy per origin,
    /// not one per connection).
    names: NameCache,
    /// The proxy every connection of this pool goes through (fixed for the
    /// pool: a route that changes makes another pool).
    proxy: Option<Arc<Proxy>>,
    policy: Policy,
    conns: Vec<ConnKey>,
    /// Idle connections, ascending by id: the youngest is last, the oldest
    /// first.
    idle: Vec<(ConnId, ConnKey)>,
    queue: VecDeque<ReqKey>,
    /// Connections being opened for requests (probes do not count).
    connecting: usize,
    last_used: Option<Instant>,
    /// The chain of the origin's newest full handshake.
    chain: Option<Arc<PeerChain>>,
    /// When a full handshake last stored fresh session tickets.
    full_handshake_at: Option<Instant>,
    /// A connection retired for age or chain: forget stored sessions.
    purge_sessions: bool,
    probe_timer: Option<TimerKey>,
    /// Fresh-chain calls waiting for the pool's one fresh-chain handshake
    /// (a `Purpose::Fresh` connection is open exactly while this is not
    /// empty).
    fresh_waiters: Vec<ChainRequestId>,
    stats: OriginStats,
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

    // ---- what it is

    #[inline]
    pub(super) fn origin(&self) -> &Origin {
        &self.origin
    }

    #[inline]
    pub(super) fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.proxy.as_ref()
    }

    #[inline]
    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The header names its responses use, for the codec that parses one.
    #[inline]
    pub(super) fn names_mut(&mut self) -> &mut NameCache {
        &mut self.names
    }

    #[inline]
    pub(super) fn count(&mut self, counter: Counter) {
        *self.stats.counter(counter) += 1;
    }

    #[inline]
    pub(super) fn last_used(&self) -> Option<Instant> {
        self.last_used
    }

    /// How a request is written on one of its connections: absolute-form to
    /// a proxy for `http://` (RFC 9112 §3.2.2), origin-form otherwise
    /// (inside a tunnel the origin sees an ordinary request).
    #[inline]
    pub(super) fn target_form(&self) -> TargetForm {
        if self.proxy.is_some() && !self.origin.is_tls() {
            TargetForm::Absolute
        } else {
            TargetForm::Origin
        }
    }

    /// The headers of a request on one of its connections: a plain
    /// `http://` request through a proxy with credentials carries
    /// `Proxy-Authorization` (its own, when the caller set one); every other
    /// request goes as it is.
    #[inline]
    pub(super) fn request_headers<'a>(&self, headers: &'a HeaderMap) -> Cow<'a, HeaderMap> {
        let auth = self
            .proxy
            .as_ref()
            .filter(|_| !self.origin.is_tls() && !headers.contains_key(PROXY_AUTHORIZATION))
            .and_then(|p| p.authorization());
        match auth {
            None => Cow::Borrowed(headers),
            Some(auth) => {
                let mut with = headers.clone();
                with.insert(PROXY_AUTHORIZATION, auth);
                Cow::Owned(with)
            }
        }
    }

    // ---- its queue

    /// A request waits for a connection (at the back of the queue), used
    /// at `now`.
    #[inline]
    pub(super) fn enqueue(&mut self, rk: ReqKey, now: Instant) {
        self.last_used = Some(now);
        self.queue.push_back(rk);
    }

    /// A retried request waits again, before every other.
    #[inline]
    pub(super) fn requeue_first(&mut self, rk: ReqKey) {
        self.queue.push_front(rk);
    }

    /// The request leaves the queue (it ended while waiting).
    #[inline]
    pub(super) fn unqueue(&mut self, rk: ReqKey) {
        self.queue.retain(|&k| k != rk);
    }

    /// The request waiting longest.
    #[inline]
    pub(super) fn first_waiting(&self) -> Option<ReqKey> {
        self.queue.front().copied()
    }

    /// It takes the request waiting longest off the queue.
    #[inline]
    pub(super) fn take_first_waiting(&mut self) -> Option<ReqKey> {
        let rk = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > SHRINK_ABOVE {
            // A queue a burst of submits grew gives its memory back.
            self.queue = VecDeque::new();
        }
        rk
    }

    #[inline]
    pub(super) fn waiting(&self) -> usize {
        self.queue.len()
    }

    // ---- its connections

    /// A connection of its own is being opened (`for_requests`: counted as
    /// opening for the queue; a probe or fresh-chain handshake is not).
    pub(super) fn add_conn(&mut self, key: ConnKey, for_requests: bool) {
        self.conns.push(key);
        if for_requests {
            self.connecting += 1;
        }
    }

    /// One being opened for requests is ready (or stopped being opened).
    #[inline]
    pub(super) fn opened(&mut self) {
        self.connecting = self.connecting.saturating_sub(1);
    }

    /// A connection leaves it (`opening`: it was still being opened for
    /// requests). True when it was the pool's last.
    pub(super) fn remove_conn(&mut self, key: ConnKey, opening: bool) -> bool {
        self.conns.retain(|&k| k != key);
        self.idle.retain(|&(_, k)| k != key);
        if opening {
            self.opened();
        }
        self.conns.is_empty()
    }

    /// Connections being opened for requests.
    #[inline]
    pub(super) fn connecting(&self) -> usize {
        self.connecting
    }

    /// Every connection of the pool.
    #[inline]
    pub(super) fn conns(&self) -> &[ConnKey] {
        &self.conns
    }

    /// A connection goes idle, keeping `idle` sorted by id.
    #[inline]
    pub(super) fn add_idle(&mut self, id: ConnId, key: ConnKey) {
        // A connection going idle is usually the youngest or near it.
        let at = self.idle.partition_point(|&(other, _)| other < id);
        self.idle.insert(at, (id, key));
    }

    /// The idle connection the next request gets, taken off the idle list:
    /// the youngest (highest id, so older ones age out unused), or for a
    /// retry that must not reuse, the youngest that has carried nothing yet
    /// (`fresh` tells which).
    #[inline]
    pub(super) fn take_idle(
        &mut self,
        fresh_only: Option<&dyn Fn(ConnKey) -> bool>,
    ) -> Option<ConnKey> {
        let i = pick_idle(&self.idle, fresh_only)?;
        Some(self.idle.remove(i).1)
    }

    /// Its oldest idle connection.
    #[inline]
    pub(super) fn oldest_idle(&self) -> Option<ConnKey> {
        self.idle.first().map(|&(_, k)| k)
    }

    // ---- what the origin taught it

    /// The chain of the origin's newest full handshake.
    #[inline]
    pub(super) fn chain(&self) -> Option<&Arc<PeerChain>> {
        self.chain.as_ref()
    }

    pub(super) fn full_handshake_at(&self) -> Option<Instant> {
        self.full_handshake_at
    }

    /// A handshake at `now` showed `chain` (`full`: not a resumption).
    /// Returns the previous chain when a full handshake changed it.
    pub(super) fn saw_chain(
        &mut self,
        chain: &Arc<PeerChain>,
        full: bool,
        now: Instant,
    ) -> Option<Arc<PeerChain>> {
        let mut changed = None;
        if full {
            self.full_handshake_at = Some(now);
            if let Some(prev) = self.chain.as_ref().filter(|prev| ***prev != **chain) {
                changed = Some(prev.clone());
            }
        }
        if self.chain.is_none() || full {
            self.chain = Some(chain.clone());
        }
        changed
    }

    /// A live connection's chain `old` was judged again and verifies along
    /// another path now (`new`): when `old` is the origin's current chain,
    /// `new` takes its place, so [`Pools::chain_of`] (and a job's CA
    /// bundle) follows the path that still holds.
    pub(super) fn rechain(&mut self, old: &Arc<PeerChain>, new: &Arc<PeerChain>) {
        if self
            .chain
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, old) || **c == **old)
        {
            self.chain = Some(new.clone());
        }
    }

    /// Stored sessions must be forgotten before the next resumption (a
    /// connection retired for age or chain).
    pub(super) fn purge_sessions(&mut self) {
        self.purge_sessions = true;
    }

    /// Whether stored sessions must be forgotten now (once).
    pub(super) fn take_purge(&mut self) -> bool {
        std::mem::take(&mut self.purge_sessions)
    }

    /// The slot of its chain probe (written only through the timers).
    #[inline]
    pub(super) fn probe_slot(&mut self) -> &mut Option<TimerKey> {
        &mut self.probe_timer
    }

    #[inline]
    pub(super) fn probe_timer(&self) -> Option<TimerKey> {
        self.probe_timer
    }

    // ---- fresh-chain calls

    /// A fresh-chain call waits for the pool's handshake. True when it is
    /// the first (a handshake must start).
    pub(super) fn wait_fresh(&mut self, id: ChainRequestId) -> bool {
        self.fresh_waiters.push(id);
        self.fresh_waiters.len() == 1
    }

    /// Every waiting fresh-chain call, taken (each is answered once).
    pub(super) fn take_fresh(&mut self) -> Vec<ChainRequestId> {
        std::mem::take(&mut self.fresh_waiters)
    }

    #[inline]
    pub(super) fn fresh_waiting(&self) -> bool {
        !self.fresh_waiters.is_empty()
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

    /// The idle connections of every pool.
    pub(super) fn idle_conns(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.iter().flat_map(|p| p.idle.iter().map(|&(_, k)| k))
    }

    /// The counters of every pool in use, then of the pools dropped lately.
    pub(super) fn origin_stats(&self) -> impl Iterator<Item = &OriginStats> {
        let live = self.iter().map(|p| &p.stats);
        live.chain(self.recent.iter().map(|r| &r.stats))
    }

    /// The pool at `p`, if it is still in use.
    #[inline]
    pub(super) fn get(&self, p: PoolKey) -> Option<&Pool> {
        self.list.get(p)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, p: PoolKey) -> Option<&mut Pool> {
        self.list.get_mut(p)
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
    #[inline]
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
                direct: pool.policy.direct,
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

    /// The pool for a request URI. The last URI's pool is kept (and
    /// forgotten when a sweep drops it); `Authority` compares
    /// case-insensitively.
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
        let proxy = match policy.direct {
            false => self.proxies.route(&origin).cloned(),
            true => None,
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
fn pick_idle(
    idle: &[(ConnId, ConnKey)],
    fresh_only: Option<&dyn Fn(ConnKey) -> bool>,
) -> Option<usize> {
    match fresh_only {
        None => idle.len().checked_sub(1),
        Some(fresh) => idle.iter().rposition(|&(_, key)| fresh(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;

    #[test]
    fn the_youngest_idle_connection_gets_the_next_request() {
        let mut pools = Pools::new(Proxies::default());
        let origin = Origin::parse("https://a.test").expect("origin");
        let p = pools.get_or_insert(origin, &Policy::default());
        let pool = &mut pools[p];
        // (id, slab key); the key doubles as "requests served" here.
        for (id, key) in [(3, 5), (9, 1), (4, 0), (7, 0)] {
            pool.add_idle(ConnId(id), ConnKey::from_index(key));
        }
        let ids: Vec<u64> = pool.idle.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [3, 4, 7, 9]);
        assert_eq!(pool.oldest_idle(), Some(ConnKey::from_index(5)));
        // A retry that must use a fresh connection skips used ones.
        let unused = |served: ConnKey| served.index() == 0;
        assert_eq!(pool.take_idle(Some(&unused)), Some(ConnKey::from_index(0)));
        let ids: Vec<u64> = pool.idle.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [3, 4, 9], "id 7, the youngest unused, went");
        assert_eq!(pool.take_idle(None), Some(ConnKey::from_index(1)));
        assert_eq!(pool.take_idle(Some(&unused)), Some(ConnKey::from_index(0)));
        assert_eq!(pool.take_idle(Some(&unused)), None);
        assert_eq!(pool.take_idle(None), Some(ConnKey::from_index(5)));
        assert_eq!(pool.take_idle(None), None);
    }
}
