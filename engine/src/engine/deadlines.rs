//! Arming deadlines in their owners' slots, and what a deadline that fires
//! means: each kind goes to the handler that owns its meaning.
//!
//! [`Engine::arm`] and [`Engine::disarm`] are the only writers of a slot
//! (through [`Timers`](super::timers::Timers)), so a slot and the wheel
//! never disagree. A timer that fires is forgotten in its slot first, then
//! handed on; the handlers compute and queue effects.

use std::time::Instant;

use crate::error::{Deadline, Error};
use crate::event::CloseReason;
use crate::stats::Counter;
use crate::wheel::TimerKey;

use super::conn::{IdleCheck, StageName};
use super::effects::{Effect, Outcome};
use super::timers::{AttemptTimer, ConnTimer, Timer, Timers};
use super::Engine;

impl Engine {
    /// The slot that remembers `timer`, if its owner is still there.
    #[inline]
    fn timer_slot(&mut self, timer: Timer) -> Option<(&mut Timers, &mut Option<TimerKey>)> {
        let slot = match timer {
            Timer::Conn(key, kind) => self.conns.get_mut(key)?.timer_slot(kind),
            Timer::Attempt(key, kind) => self.reqs.get_mut(key)?.attempt_slot(kind),
            Timer::Total(key) => self.reqs.get_mut(key)?.total_slot(),
            Timer::Probe(p) => self.pools.get_mut(p)?.probe_slot(),
            Timer::Credentials => &mut self.credential_timer,
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
            Timer::Conn(key, kind) => self.conns.get(key)?.timer(kind),
            Timer::Attempt(key, kind) => self.reqs.get(key)?.attempt_timer(kind),
            Timer::Total(key) => self.reqs.get(key)?.total_timer(),
            Timer::Probe(p) => self.pools.get(p)?.probe_timer(),
            Timer::Credentials => self.credential_timer,
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
            Timer::Credentials => self.check_credentials(now),
            Timer::Total(key) => self.deadline_passed(key, Error::Timeout(Deadline::Total)),
            Timer::Attempt(key, kind) => match kind {
                AttemptTimer::FirstByte => {
                    self.deadline_passed(key, Error::Timeout(Deadline::FirstByte))
                }
                AttemptTimer::Head => self.deadline_passed(key, Error::Timeout(Deadline::Head)),
                AttemptTimer::Continue => self.on_continue_timer(key, now),
                AttemptTimer::SendStall => self.on_send_stall(key, now),
                AttemptTimer::ReceiveStall => self.on_receive_stall(key, now),
            },
        }
    }

    /// Request `key` ends with `error` (a deadline); its connection closes.
    fn deadline_passed(&mut self, key: crate::keys::ReqKey, error: Error) {
        if let Some(req) = self.req_ref(key) {
            self.effects.push(Effect::Abort {
                req,
                error: error.into(),
                close: CloseReason::Error,
            });
        }
    }

    fn on_conn_timer(&mut self, key: crate::keys::ConnKey, kind: ConnTimer, now: Instant) {
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some(c) = self.conns.get(key) else {
            return;
        };
        match kind {
            ConnTimer::Setup => match (c.stage(), c.setup_deadline()) {
                (StageName::Connecting, _) => {
                    self.attempt_failed(key, Error::Timeout(Deadline::Connect), now)
                }
                (_, Some(deadline)) => self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: (Error::Timeout(deadline)).into(),
                }),
                (_, None) => {}
            },
            // Armed lazily (see make_idle): the connection may have worked
            // and gone idle again since; then it waits on.
            ConnTimer::Idle => match c.idle_check(now) {
                IdleCheck::Expired => self.effects.push(Effect::Close {
                    conn,
                    reason: CloseReason::Idle,
                }),
                IdleCheck::Later(until) => self.arm(Timer::Conn(key, ConnTimer::Idle), until),
                IdleCheck::Busy => {}
            },
            ConnTimer::MaxAge => self.expire(key, now),
            ConnTimer::Drain => {
                if let Some(req) = c.exchange().and_then(|rk| self.req_ref(rk)) {
                    self.count(c.pool(), Counter::DrainHitGrace);
                    let outcome = Outcome::failed(Error::Timeout(Deadline::DrainGrace));
                    self.effects
                        .push(Effect::ExchangeEnded { conn, req, outcome });
                }
            }
            ConnTimer::Prewarm => self.prewarm(key, now),
            ConnTimer::Race => self.on_race_timer(key, now),
        }
    }
}
