//! Every deadline on one wheel: the timer kinds, arming and clearing them,
//! and the fan-out of a fired timer to the handler that owns its meaning.
//!
//! Owns the wheel and the loop's clock. The slot that remembers an armed
//! timer lives with its owner (`Conn::timers`, `Req::timers`,
//! `Pool::probe_timer`); only [`Engine::arm`] and [`Engine::disarm`] write
//! those slots, so a slot and the wheel never disagree.

use std::time::{Duration, Instant};

use crate::conn::{ConnTimer, Stage};
use crate::keys::{ConnKey, ReqKey};
use crate::stats::Counter;
use crate::wheel::{TimerKey, Wheel};
use crate::{CloseReason, Deadline, Error};

use super::pool::PoolKey;
use super::Engine;

/// `now + d`, saturating: a duration too long to add (a user's
/// `Duration::MAX`) means "not within this process's life", never a panic.
pub(super) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(1 << 34)))
        .unwrap_or(now)
}

/// The deadlines a request may hold, at most one of each.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReqTimer {
    Total = 0,
    FirstByte = 1,
    /// The wait for `100 Continue` ([`super::upload`]).
    Continue = 2,
    /// Bytes wait for the socket ([`super::upload`]).
    SendStall = 3,
    /// A started response waits for more ([`super::flow`]).
    ReceiveStall = 4,
    /// The written request waits for its final response head.
    Head = 5,
}

pub(super) const REQ_TIMERS: usize = 6;

/// A timer on the wheel: whose it is and what it means.
#[derive(Debug, Clone, Copy)]
pub(super) enum Timer {
    Conn(ConnKey, ConnTimer),
    Req(ReqKey, ReqTimer),
    /// The chain probe of a pool.
    Probe(PoolKey),
}

/// The wheel and the latest instant the loop has seen.
pub(super) struct Timers {
    wheel: Wheel<Timer>,
    /// The latest instant `handle_timeouts` was given: a host's clock that
    /// goes back is read as this, as the wheel reads it.
    clock: Instant,
}

impl Timers {
    pub(super) fn new(now: Instant) -> Timers {
        Timers {
            wheel: Wheel::new(now),
            clock: now,
        }
    }

    /// Move the clock to `now`, never back, and return the time handlers
    /// must judge by. The wheel fires what is due by the latest time it has
    /// seen; handlers judging by an earlier one would re-arm a timer that is
    /// due again at once, forever.
    pub(super) fn advance(&mut self, now: Instant) -> Instant {
        self.clock = now.max(self.clock);
        self.clock
    }

    pub(super) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.wheel
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
    }

    pub(super) fn poll_expired(&mut self, now: Instant) -> Option<Timer> {
        self.wheel.poll_expired(now).map(|(_, timer)| timer)
    }

    pub(super) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// When the timer remembered in `slot` is due.
    #[inline]
    pub(super) fn deadline(&self, slot: Option<TimerKey>) -> Option<Instant> {
        slot.and_then(|t| self.wheel.deadline(t))
    }

    /// Cancel the timer `t` of a value that is going away.
    #[inline]
    pub(super) fn cancel(&mut self, t: TimerKey) {
        self.wheel.cancel(t);
    }

    /// Cancel every timer of a value that is going away.
    #[inline]
    pub(super) fn cancel_all(&mut self, slots: &mut [Option<TimerKey>]) {
        for t in slots.iter_mut().filter_map(Option::take) {
            self.wheel.cancel(t);
        }
    }

    #[inline]
    fn set(&mut self, slot: &mut Option<TimerKey>, at: Instant, timer: Timer) {
        match *slot {
            Some(t) if self.wheel.reset(t, at) => {}
            _ => *slot = Some(self.wheel.insert(at, timer)),
        }
    }

    #[inline]
    fn clear(&mut self, slot: &mut Option<TimerKey>) {
        if let Some(t) = slot.take() {
            self.wheel.cancel(t);
        }
    }
}

impl Engine {
    /// The slot that remembers `timer`, if its owner is still there.
    #[inline]
    fn timer_slot(&mut self, timer: Timer) -> Option<(&mut Timers, &mut Option<TimerKey>)> {
        let slot = match timer {
            Timer::Conn(key, kind) => &mut self.conns.get_mut(key)?.timers[kind as usize],
            Timer::Req(key, kind) => &mut self.reqs.get_mut(key)?.timers[kind as usize],
            Timer::Probe(p) => &mut self.pools[p].probe_timer,
        };
        Some((&mut self.timers, slot))
    }

    /// Arm `timer` for `at` (moving it if armed); nothing when its owner is gone.
    #[inline]
    pub(super) fn arm(&mut self, timer: Timer, at: Instant) {
        if let Some((timers, slot)) = self.timer_slot(timer) {
            timers.set(slot, at, timer);
        }
    }

    /// Cancel `timer` if armed.
    #[inline]
    pub(super) fn disarm(&mut self, timer: Timer) {
        if let Some((timers, slot)) = self.timer_slot(timer) {
            timers.clear(slot);
        }
    }

    /// When `timer` is due, if armed.
    #[inline]
    pub(super) fn armed(&self, timer: Timer) -> Option<Instant> {
        let slot = match timer {
            Timer::Conn(key, kind) => self.conns.get(key)?.timers[kind as usize],
            Timer::Req(key, kind) => self.reqs.get(key)?.timers[kind as usize],
            Timer::Probe(p) => self.pools[p].probe_timer,
        };
        self.timers.deadline(slot)
    }

    /// A timer fired: forget it in its slot, then hand it to its handler.
    pub(super) fn on_timer(&mut self, timer: Timer, now: Instant) {
        // The wheel already dropped it; clearing the slot must not cancel it
        // again, so the slot is emptied, not disarmed.
        let Some((_, slot)) = self.timer_slot(timer) else {
            return;
        };
        *slot = None;
        match timer {
            Timer::Conn(key, kind) => self.on_conn_timer(key, kind, now),
            Timer::Probe(p) => self.probe(p, now),
            Timer::Req(key, kind) => {
                let deadline = match kind {
                    ReqTimer::Total => Deadline::Total,
                    ReqTimer::FirstByte => Deadline::FirstByte,
                    ReqTimer::Head => Deadline::Head,
                    ReqTimer::Continue => return self.on_continue_timer(key, now),
                    ReqTimer::SendStall => return self.on_send_stall(key, now),
                    ReqTimer::ReceiveStall => return self.on_receive_stall(key, now),
                };
                self.abort_request(key, Error::Timeout(deadline), CloseReason::Error, now);
            }
        }
    }

    fn on_conn_timer(&mut self, key: ConnKey, kind: ConnTimer, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match kind {
            ConnTimer::Setup => match conn.stage() {
                Stage::Resolving => self.connect_failed(key, Error::Timeout(Deadline::Dns), now),
                Stage::Connecting => {
                    self.attempt_failed(key, Error::Timeout(Deadline::Connect), now)
                }
                Stage::ProxyHandshaking => {
                    self.connect_failed(key, Error::Timeout(Deadline::ProxyHandshake), now)
                }
                Stage::Tunneling => {
                    self.connect_failed(key, Error::Timeout(Deadline::ProxyConnect), now)
                }
                Stage::Handshaking => {
                    self.connect_failed(key, Error::Timeout(Deadline::Handshake), now)
                }
                Stage::Ready => {}
            },
            // Armed lazily (see make_idle): the connection may have worked
            // and gone idle again since; then it waits on.
            ConnTimer::Idle => match conn.idle_until.filter(|_| conn.is_idle()) {
                Some(until) if until <= now => {
                    let p = conn.pool;
                    self.close_conn(key, CloseReason::Idle);
                    self.dispatch(p, now);
                }
                Some(until) => self.arm(Timer::Conn(key, ConnTimer::Idle), until),
                None => {}
            },
            ConnTimer::MaxAge => self.expire(key, now),
            ConnTimer::Drain => {
                if conn.req.is_some() {
                    self.count(conn.pool, Counter::DrainHitGrace);
                    self.exchange_failed(key, Error::Timeout(Deadline::DrainGrace), now);
                }
            }
            ConnTimer::Prewarm => self.prewarm(key, now),
            ConnTimer::Race => self.on_race_timer(key, now),
        }
    }
}
