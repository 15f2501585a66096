//! Fresh chains on demand: [`Engine::fresh_chain`] answers with the chain of
//! a full handshake no older than the freshness the host asks for, starting
//! a TLS-only handshake (a `Purpose::Fresh` connection, a probe's sibling)
//! when the origin has none that recent.
//!
//! Owns each pool's `fresh_waiters`. A `Purpose::Fresh` connection is open
//! for a pool exactly while its waiters are not empty: every way such a
//! connection ends (handshake done in [`super::connect`]'s `ready`, failed
//! in `connect_failed`, closed in [`super::pool`]'s `close_conn`) answers
//! them all through [`Engine::answer_fresh`], so each call gets one event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Purpose;
use crate::keys::ConnKey;
use crate::stats::Counter;
use crate::{ChainRequestId, CloseReason, ConnectionInfo, Error, Event, Origin, PeerChain};

use super::pool::PoolKey;
use super::Engine;

impl Engine {
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
            return answer(self, origin, Err(Error::InvalidRequest(why)));
        }
        let p = self.pools.get_or_insert(origin, &self.config.policy);
        let pool = &mut self.pools[p];
        let recent = pool
            .full_handshake_at
            .is_some_and(|at| now.saturating_duration_since(at) <= freshness);
        if let (true, Some(chain)) = (recent, pool.chain.clone()) {
            let origin = pool.origin.clone();
            return answer(self, origin, Ok(chain));
        }
        if !pool.fresh_waiters.is_empty() {
            // One handshake is under way: this call shares it.
            pool.fresh_waiters.push(id);
            return;
        }
        if let Err(err) = self.make_room(p) {
            let origin = self.pools[p].origin.clone();
            return answer(self, origin, Err(err));
        }
        log::debug!("fresh-chain handshake to {}", self.pools[p].origin);
        self.pools[p].fresh_waiters.push(id);
        // May fail at once (an address that refuses synchronously); then
        // `connect_failed` has answered already.
        self.open(p, Purpose::Fresh, now);
    }

    /// Room for one more connection of pool `p` within `max_connections`
    /// (closing its oldest idle connection if need be) and the token range.
    fn make_room(&mut self, p: PoolKey) -> Result<(), Error> {
        let max = self.pools[p].policy.max_connections.max(1);
        if self.pools[p].conns.len() >= max {
            let Some(&(_, oldest)) = self.pools[p].idle.first() else {
                return Err(Error::ConnectionLimit { limit: max });
            };
            self.close_conn(oldest, CloseReason::Idle);
        }
        if !self.has_token_room() {
            return Err(Error::ConnectionLimit {
                limit: self.mio.count.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// The fresh-chain connection `key` of pool `p` finished its handshake:
    /// what changed is reported (and retires older connections by policy,
    /// as a probe's would), every waiting call gets its chain, and the
    /// connection closes.
    pub(super) fn fresh_done(
        &mut self,
        p: PoolKey,
        key: ConnKey,
        info: ConnectionInfo,
        changed: Option<Arc<PeerChain>>,
        now: Instant,
    ) {
        self.count(p, Counter::FreshHandshake);
        log::debug!("fresh-chain handshake to {} done", info.origin);
        if let Some(previous) = changed {
            self.chain_changed(p, key, previous);
        }
        let result = info.chain.ok_or_else(|| {
            Error::InvalidRequest("the fresh-chain connection has no tls chain".into())
        });
        self.answer_fresh(p, result);
        self.close_conn(key, CloseReason::Probe);
        self.dispatch(p, now);
    }

    /// Every call waiting on pool `p`'s fresh-chain handshake ends with
    /// `result`.
    pub(super) fn answer_fresh(&mut self, p: PoolKey, result: Result<Arc<PeerChain>, Error>) {
        let waiters = std::mem::take(&mut self.pools[p].fresh_waiters);
        let origin = &self.pools[p].origin;
        for id in waiters {
            self.out.push_back(Event::FreshChain {
                id,
                origin: origin.clone(),
                result: result.clone(),
            });
        }
    }
}
