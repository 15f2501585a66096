//! The one place effects are applied: events go out, exchanges end,
//! requests end, connections close, pools dispatch.
//!
//! Handlers ([`super::io`], [`super::exchange`], [`super::connect`],
//! [`super::lifecycle`], [`super::deadlines`], the commands) compute what
//! happened and queue it ([`super::effects`]); [`Engine::apply`] drains the
//! queue. The functions that end things are private to this file, so the
//! compiler holds every caller to the queue:
//! - [`Engine::end_exchange`] is the one way an exchange ends: its request
//!   is answered, follows a redirect, is retried or fails; its connection
//!   is reused or closes;
//! - [`Engine::end_request`] is the one way a request leaves before its
//!   exchange ended (cancel, deadlines, a failed body), closing the
//!   connection it was on;
//! - [`Engine::close_conn`] is the one way a connection leaves: its
//!   deadlines go as a set, its pool forgets it;
//! - each of them lets the pool dispatch again, so a request waiting for a
//!   connection is never stranded by a close.

use std::time::Instant;

use rotary_proto::Verdict;

use crate::error::{Error, Phase};
use crate::event::{CloseReason, Event, RequestId, ServedBy, Trailers};
use crate::keys::{ConnKey, PoolKey, ReqKey};
use crate::stats::Counter;

use super::conn::Purpose;
use super::effects::{ConnRef, Effect, Outcome, ReqRef};
use super::exchange::retry_verdict;
use super::request::Req;
use super::timers::{ConnTimer, Timer};
use super::Engine;

impl Engine {
    /// Apply every queued effect, and those they queue, in order.
    pub(super) fn apply(&mut self, now: Instant) {
        while let Some(effect) = self.effects.pop() {
            match effect {
                Effect::ExchangeEnded { conn, req, outcome } => {
                    self.end_exchange(conn, req, outcome, now)
                }
                Effect::Abort { req, error, close } => self.end_request(req, *error, close, now),
                Effect::Close { conn, reason } => self.close_conn(conn, reason, now),
                Effect::ConnectFailed { conn, error } => self.connect_failed(conn, *error, now),
                Effect::Ready { conn } => self.joined(conn, now),
                Effect::Dispatch(p) => self.dispatch(p, now),
                Effect::Open { pool, purpose } => {
                    if self.has_token_room() {
                        self.open(pool, purpose, now);
                    } else if purpose == Purpose::Fresh {
                        let limit = self.mio.count.saturating_sub(1);
                        self.answer_fresh(pool, Err(Error::ConnectionLimit { limit }));
                    }
                }
                Effect::Drive { conn, read } => {
                    if self.is_live(conn) {
                        self.drive(conn.key, read, now);
                    }
                }
            }
        }
    }

    /// The exchange on `conn` ended with `outcome`: its request is
    /// answered, follows its redirect, is retried on a fresh connection or
    /// fails; the connection goes back to its pool or closes; the pools
    /// dispatch.
    fn end_exchange(&mut self, conn: ConnRef, req: ReqRef, outcome: Outcome, now: Instant) {
        let on_it = self.reqs.get(req.key).is_some_and(|r| r.id() == req.id);
        let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        if !on_it || c.exchange() != Some(req.key) {
            return;
        }
        let p = c.pool();
        let started = c.response_started();
        let rk = c.end_exchange();
        let drain = Timer::Conn(conn.key, ConnTimer::Drain);
        self.disarm(drain);
        match outcome {
            Outcome::Done { verdict, trailers } => {
                let follow = rk.filter(|&rk| self.reqs.get(rk).is_some_and(Req::redirecting));
                if let (Some(rk), None) = (rk, follow) {
                    self.answer(rk, conn, trailers.map(|t| *t));
                }
                self.reuse_or_close(conn, &verdict, now);
                if let Some(rk) = follow {
                    self.follow_redirect(rk, now);
                }
            }
            Outcome::Failed(err) => {
                let err = *err;
                let reason = match err {
                    Error::PeerClosed { .. } | Error::Io { .. } => CloseReason::PeerClose,
                    Error::Timeout(crate::Deadline::DrainGrace) => CloseReason::MaxAge,
                    _ => CloseReason::Error,
                };
                if let Some(rk) = rk {
                    self.retry_or_fail(rk, p, err, started);
                }
                self.close_conn(conn, reason, now);
            }
        }
    }

    /// The response of request `rk` arrived whole on `conn`: its terminal
    /// event goes out.
    fn answer(&mut self, rk: ReqKey, conn: ConnRef, trailers: Option<http::HeaderMap>) {
        let chain = self.conns.get(conn.key).and_then(|c| c.chain().cloned());
        // Read in place, then dropped with its slot (see `take_request`).
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let event = if req.opts().streaming {
            Event::End {
                id: req.id(),
                trailers,
            }
        } else {
            let served_by = ServedBy {
                conn: conn.id,
                reused: req.reused(),
                chain,
                redirected_to: req.redirected_to(),
            };
            let mut response = req.buffered_response();
            if let Some(t) = trailers {
                response.extensions_mut().insert(Trailers(t));
            }
            Event::Response {
                id: req.id(),
                response,
                served_by,
            }
        };
        self.stats.requests_ok += 1;
        self.out.push_back(event);
        self.take_request(rk);
    }

    /// The redirect response of `rk` ended: the request goes on to its next
    /// hop, waiting in that origin's pool.
    fn follow_redirect(&mut self, rk: ReqKey, now: Instant) {
        let Some(uri) = self.reqs.get(rk).and_then(|r| r.next_hop_uri()) else {
            return;
        };
        let pool = self.pools.of_uri(uri, &self.config.policy);
        let followed = match pool {
            Ok(p) => self
                .reqs
                .get_mut(rk)
                .and_then(|r| r.follow(p, &mut self.timers))
                .map(|done| done.map(|()| p)),
            Err(e) => Some(Err(e)),
        };
        match followed {
            Some(Ok(p)) => {
                self.pools[p].enqueue(rk, now);
                self.dispatch(p, now);
            }
            Some(Err(e)) => self.fail_request(rk, e),
            None => {}
        }
    }

    /// A connection whose exchange ended well: back to its pool's idle
    /// list, or closed when the server, its hints, its age or its peer say
    /// so.
    fn reuse_or_close(&mut self, conn: ConnRef, verdict: &Verdict, now: Instant) {
        let Some(c) = self.conns.get_mut(conn.key) else {
            return;
        };
        let policy = *self.pools[c.pool()].policy();
        match c.after_exchange(verdict, policy.idle_timeout, policy.keep_alive_margin) {
            Some(reason) => self.close_conn(conn, reason, now),
            None => self.make_idle(conn, now),
        }
    }

    /// The exchange of request `rk` on a connection of pool `p` failed with
    /// `err` (`started`: some of a response had arrived): the request waits
    /// again, first in its pool's queue, when the retry rules allow; it
    /// fails otherwise.
    fn retry_or_fail(&mut self, rk: ReqKey, p: PoolKey, err: Error, started: bool) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let verdict = retry_verdict(req, &err, started);
        let closed = matches!(err, Error::PeerClosed { .. } | Error::Io { .. });
        match verdict {
            Ok(()) => {
                log::debug!(
                    "request {}: {err}; retrying it once on a fresh connection",
                    req.id().0
                );
                match req.retry(&mut self.timers) {
                    Ok(()) => {
                        self.count(p, Counter::Retry);
                        self.pools[p].requeue_first(rk);
                    }
                    Err(e) => self.fail_request(rk, e),
                }
            }
            Err(why) => {
                if closed {
                    log::debug!("request {} not retried after {err}: {why}", req.id().0);
                }
                let err = match err {
                    Error::PeerClosed { phase, .. } => Error::PeerClosed {
                        phase,
                        reused: req.reused(),
                    },
                    e => e,
                };
                self.fail_request(rk, err);
            }
        }
    }

    /// Request `req` ends with `error` wherever it is: waiting, or on a
    /// connection mid-exchange, which then closes with `close` (its framing
    /// is lost).
    fn end_request(&mut self, req: ReqRef, error: Error, close: CloseReason, now: Instant) {
        let Some(r) = self.reqs.live(req.key, req.id) else {
            return;
        };
        let p = r.pool();
        let on = r.conn().and_then(|ck| {
            let c = self.conns.get_mut(ck)?;
            (c.exchange() == Some(req.key)).then(|| {
                c.end_exchange();
                ConnRef {
                    key: ck,
                    id: c.id(),
                }
            })
        });
        self.fail_request(req.key, error);
        match on {
            Some(conn) => self.close_conn(conn, close, now),
            None => self.dispatch(p, now),
        }
    }

    /// Take request `rk` out of the slab and its pool's queue. What its
    /// end needs of it is read before, in place: a `Req` is large, and
    /// every move of one is a copy.
    fn take_request(&mut self, rk: ReqKey) {
        let Some(req) = self.reqs.get(rk) else {
            return;
        };
        let (p, waiting) = (req.pool(), req.conn().is_none());
        self.reqs.remove(rk, &mut self.timers);
        if waiting {
            let pool = &mut self.pools[p];
            pool.unqueue(rk);
            if pool.conns().is_empty() {
                self.pools.may_be_unused(p);
            }
        }
    }

    /// Request `rk` ends with `error` (its connection, if any, is the
    /// caller's business).
    fn fail_request(&mut self, rk: ReqKey, error: Error) {
        let Some(req) = self.reqs.get(rk) else {
            return;
        };
        let (id, reused, progress) = (req.id(), req.reused(), req.progress());
        self.take_request(rk);
        self.emit_failed(id, error, reused, progress);
    }

    /// The failure of request `id`, which may never have had a slot.
    pub(super) fn emit_failed(
        &mut self,
        id: RequestId,
        error: Error,
        reused: bool,
        progress: super::Progress,
    ) {
        log::debug!("request {} failed: {error}", id.0);
        self.stats.failed_by_phase[error.phase().index()] += 1;
        self.out.push_back(Event::Failed {
            id,
            error,
            reused,
            progress,
        });
    }

    /// Close a connection now: its deadlines go, close_notify, the socket
    /// is dropped, its pool forgets it, and the pool dispatches. A request
    /// still on it fails; a fresh-chain call still waiting on it is
    /// answered.
    fn close_conn(&mut self, conn: ConnRef, reason: CloseReason, now: Instant) {
        if !self.is_live(conn) {
            return;
        }
        let Some(mut c) = self.conns.remove(conn.key) else {
            return;
        };
        c.shut(&mut self.timers, &self.mio.registry);
        if self.conns.len() == 0 {
            self.unwatch_credentials();
        }
        if c.attempt_for().is_some() {
            // A losing Happy Eyeballs attempt was never the pool's.
            return;
        }
        for (key, id) in c.take_attempts() {
            self.close_conn(ConnRef { key, id }, reason, now);
        }
        let p = c.pool();
        let pool = &mut self.pools[p];
        let last = pool.remove_conn(conn.key, c.is_opening());
        if matches!(
            reason,
            CloseReason::MaxAge | CloseReason::ChainChange | CloseReason::CertExpiry
        ) {
            pool.purge_sessions();
        }
        if last {
            // Nothing left to heal: the probe stops until the next connection.
            self.disarm(Timer::Probe(p));
            self.pools.may_be_unused(p);
        }
        let origin = self.pools[p].origin().clone();
        self.count(p, Counter::Closed(reason));
        log::debug!(
            "connection {} to {origin} closed: {}",
            conn.id.0,
            reason.name()
        );
        if c.purpose() == Purpose::Fresh && self.pools[p].fresh_waiting() {
            // Answered already when it finished or failed its handshake;
            // anything else (shutdown, close_idle) ends the calls here.
            let err = match reason {
                CloseReason::Shutdown => Error::Shutdown,
                _ => Error::Cancelled,
            };
            self.answer_fresh(p, Err(err));
        }
        if let Some(rk) = c.exchange() {
            let err = match reason {
                CloseReason::Shutdown => Error::Shutdown,
                _ => Error::PeerClosed {
                    phase: Phase::ResponseHead,
                    reused: c.served() > 1,
                },
            };
            self.fail_request(rk, err);
        }
        self.out.push_back(Event::Closed {
            conn: conn.id,
            origin,
            reason,
        });
        self.dispatch(p, now);
    }

    /// Opening `conn` failed with `error`: the host hears of it, a
    /// fresh-chain call waiting on it is answered, the request waiting
    /// longest for its pool fails with the error, and it closes.
    fn connect_failed(&mut self, conn: ConnRef, error: Error, now: Instant) {
        let Some(c) = self.conns.get(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        let p = c.pool();
        let chain_only = c.is_chain_only();
        let fresh = c.purpose() == Purpose::Fresh;
        let err = match error {
            // The address that failed was the proxy's.
            Error::Resolve { .. } | Error::Connect { .. } if self.pools[p].proxy().is_some() => {
                self.proxy_error(p, crate::ProxyFailure::Unreachable(Box::new(error)))
            }
            err => err,
        };
        let origin = self.pools[p].origin().clone();
        log::debug!("connection to {origin} failed: {err}");
        self.out.push_back(Event::ConnectFailed {
            conn: conn.id,
            origin,
            error: err.clone(),
        });
        if fresh {
            // Before the close, which would answer them as closed.
            self.answer_fresh(p, Err(err.clone()));
        }
        if !chain_only {
            if let Some(rk) = self.pools[p].take_first_waiting() {
                self.fail_request(rk, err);
            }
        }
        self.close_conn(conn, CloseReason::ConnectFailed, now);
    }

    /// A connection opened for requests is ready: it stops counting as one
    /// being opened only now, as it joins its pool's idle list (counted
    /// earlier, a dispatch in between would open one connection too many).
    fn joined(&mut self, conn: ConnRef, now: Instant) {
        let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        if c.exchange().is_some() {
            return;
        }
        if c.joined() {
            self.pools[c.pool()].opened();
        }
        self.make_idle(conn, now);
    }

    /// The connection is free: back to its pool's idle list with its idle
    /// deadline, or closed when the peer sent bytes nobody asked for; the
    /// pool dispatches.
    fn make_idle(&mut self, conn: ConnRef, now: Instant) {
        let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        let p = c.pool();
        let default = self.pools[p].policy().idle_timeout;
        let Some(until) = c.go_idle(now, default) else {
            return self.close_conn(conn, CloseReason::PeerClose, now);
        };
        self.pools[p].add_idle(conn.id, conn.key);
        self.idled = true;
        // A busy keep-alive connection goes idle once per exchange: an idle
        // timer still armed from an earlier idle spell stays and, when it
        // fires, re-arms for the rest. The wheel is touched only when the
        // new deadline is earlier (a server's Keep-Alive hint) or none is set.
        let idle = Timer::Conn(conn.key, ConnTimer::Idle);
        if let Some(until) = until {
            if self.armed(idle).is_none_or(|at| at > until) {
                self.arm(idle, until);
            }
        }
        self.dispatch(p, now);
    }

    /// Put pool `p`'s waiting requests on its idle connections (the
    /// youngest first), then open connections for those still waiting,
    /// within the origin's maximum.
    #[inline]
    fn dispatch(&mut self, p: PoolKey, now: Instant) {
        // Every exchange's end dispatches; on a busy keep-alive pool nothing
        // waits then and nothing is being opened, so there is nothing to
        // put, open or shed: a check here spares the call.
        let pool = &self.pools[p];
        if pool.waiting() == 0 && pool.connecting() == 0 {
            return;
        }
        self.dispatch_waiting(p, now);
    }

    /// [`Engine::dispatch`] for a pool where requests wait or connections
    /// are being opened.
    fn dispatch_waiting(&mut self, p: PoolKey, now: Instant) {
        if self.shut {
            return;
        }
        loop {
            let pool = &self.pools[p];
            let Some(rk) = pool.first_waiting() else {
                break;
            };
            let fresh = self.reqs.get(rk).is_some_and(Req::fresh_only);
            let conns = &self.conns;
            let unused = |k: ConnKey| conns.get(k).is_some_and(|c| c.served() == 0);
            let pool = &mut self.pools[p];
            let Some(ck) = pool.take_idle(fresh.then_some(&unused as &dyn Fn(ConnKey) -> bool))
            else {
                break;
            };
            pool.take_first_waiting();
            self.assign(ck, rk, now);
        }
        let max = self.pools[p].policy().max_connections.max(1);
        while self.pools[p].waiting() > self.pools[p].connecting() && self.has_token_room() {
            let pool = &self.pools[p];
            if pool.conns().len() >= max {
                // Only fresh-only retries wait while connections sit idle:
                // the oldest makes room, and its close dispatches again.
                if let Some(conn) = pool.oldest_idle().and_then(|k| self.conn_ref(k)) {
                    self.effects.push(Effect::Close {
                        conn,
                        reason: CloseReason::Idle,
                    });
                }
                break;
            }
            self.open(p, Purpose::Requests, now);
        }
        self.shed_lookups(p);
    }

    /// Close, without a request to re-queue, every connection that carries
    /// no exchange (see [`Engine::close_idle`]).
    pub(super) fn close_all_idle(&mut self, reason: CloseReason, now: Instant) {
        let idle: Vec<ConnRef> = self
            .conns
            .iter()
            .filter(|(_, c)| c.exchange().is_none() && c.attempt_for().is_none())
            .map(|(key, c)| ConnRef { key, id: c.id() })
            .collect();
        for conn in idle {
            self.close_conn(conn, reason, now);
        }
    }

    /// Every request ends with `error`, every connection closes (shutdown).
    pub(super) fn end_everything(&mut self, error: &Error, now: Instant) {
        for rk in self.reqs.keys() {
            if let Some(id) = self.reqs.get(rk).map(Req::id) {
                let req = ReqRef { key: rk, id };
                self.end_request(req, error.clone(), CloseReason::Shutdown, now);
            }
        }
        let all: Vec<ConnRef> = self
            .conns
            .iter()
            .map(|(key, c)| ConnRef { key, id: c.id() })
            .collect();
        for conn in all {
            self.close_conn(conn, CloseReason::Shutdown, now);
        }
    }

    /// The connection at `conn.key` is still the one with `conn.id`.
    #[inline]
    pub(super) fn is_live(&self, conn: ConnRef) -> bool {
        self.conns.get(conn.key).is_some_and(|c| c.id() == conn.id)
    }

    /// A reference to the live connection at `key`.
    #[inline]
    pub(super) fn conn_ref(&self, key: ConnKey) -> Option<ConnRef> {
        self.conns.get(key).map(|c| ConnRef { key, id: c.id() })
    }

    /// A reference to the live request at `key`.
    #[inline]
    pub(super) fn req_ref(&self, key: ReqKey) -> Option<ReqRef> {
        self.reqs.get(key).map(|r| ReqRef { key, id: r.id() })
    }
}
