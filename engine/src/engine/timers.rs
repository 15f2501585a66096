//! Every deadline of the engine on one wheel: what a timer stands for
//! ([`Timer`]), the sets of deadlines their owners hold ([`TimerSet`]), and
//! the wheel with the loop's clock ([`Timers`]).
//!
//! Owns the wheel and the clock. Each owner holds its deadlines as one
//! [`TimerSet`] (a connection's, an attempt's) or one slot (a request's
//! total deadline, a pool's probe); only [`Timers::set`] and
//! [`Timers::clear`] write a slot, so a slot and the wheel never disagree,
//! and an owner that ends clears its whole set at once
//! ([`TimerSet::clear_all`]), whatever kinds it holds: there is no list of
//! kinds to keep up to date. Knows no other module of the engine.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::keys::{ConnKey, PoolKey, ReqKey};
use crate::wheel::{TimerKey, Wheel};

/// `now + d`, saturating: a duration too long to add (a user's
/// `Duration::MAX`) means "not within this process's life", never a panic.
pub(super) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(1 << 34)))
        .unwrap_or(now)
}

/// A kind of deadline an owner holds at most one of.
pub(super) trait Kind: Copy {
    /// Its slot in the owner's set.
    fn index(self) -> usize;
}

/// A connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnTimer {
    /// DNS, connect, proxy handshake, proxy `CONNECT` or TLS handshake
    /// deadline (one at a time: the stage's).
    Setup = 0,
    /// Idle timeout.
    Idle = 1,
    /// Max age (with jitter), or the leaf's notAfter when sooner.
    MaxAge = 2,
    /// Drain grace after expiry.
    Drain = 3,
    /// Open the replacement shortly before expiry.
    Prewarm = 4,
    /// Happy Eyeballs: start the next address's attempt while the others
    /// are still connecting.
    Race = 5,
}

impl Kind for ConnTimer {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// The deadlines of one attempt of a request (its first try, a retry, a
/// redirect's hop): they end with the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptTimer {
    /// The first response byte ([`crate::RequestOptions::first_byte_timeout`]).
    FirstByte = 0,
    /// The wait for `100 Continue`.
    Continue = 1,
    /// Request bytes wait for the socket.
    SendStall = 2,
    /// A started response waits for more.
    ReceiveStall = 3,
    /// The written request waits for its final response head.
    Head = 4,
}

impl Kind for AttemptTimer {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// A timer on the wheel: whose it is and what it means.
#[derive(Debug, Clone, Copy)]
pub(super) enum Timer {
    Conn(ConnKey, ConnTimer),
    Attempt(ReqKey, AttemptTimer),
    /// A request's total deadline, across its attempts.
    Total(ReqKey),
    /// The chain probe of a pool.
    Probe(PoolKey),
    /// The engine's look at every credential file (armed while it holds
    /// connections).
    Credentials,
}

/// Most kinds one owner holds.
const MOST: usize = 6;

/// The deadlines one owner holds, at most one of each kind `K`.
pub(super) struct TimerSet<K> {
    slots: [Option<TimerKey>; MOST],
    kind: PhantomData<K>,
}

impl<K: Kind> Default for TimerSet<K> {
    fn default() -> Self {
        TimerSet {
            slots: [None; MOST],
            kind: PhantomData,
        }
    }
}

impl<K: Kind> TimerSet<K> {
    /// The slot of kind `k`, for [`Timers::set`] and [`Timers::clear`].
    #[inline]
    pub(super) fn slot(&mut self, k: K) -> &mut Option<TimerKey> {
        &mut self.slots[k.index() % MOST]
    }

    /// The timer of kind `k`, if armed.
    #[inline]
    pub(super) fn get(&self, k: K) -> Option<TimerKey> {
        self.slots[k.index() % MOST]
    }

    /// The owner ends: every deadline it holds goes, whatever its kind.
    #[inline]
    pub(super) fn clear_all(&mut self, timers: &mut Timers) {
        for t in self.slots.iter_mut().filter_map(Option::take) {
            timers.wheel.cancel(t);
        }
    }
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
    #[inline]
    pub(super) fn advance(&mut self, now: Instant) -> Instant {
        self.clock = now.max(self.clock);
        self.clock
    }

    #[inline]
    pub(super) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.wheel
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
    }

    /// The next timer due at `now`; the wheel has dropped it, so its owner's
    /// slot must be emptied (not cleared) by whoever handles it.
    #[inline]
    pub(super) fn poll_expired(&mut self, now: Instant) -> Option<Timer> {
        self.wheel.poll_expired(now).map(|(_, timer)| timer)
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// When the timer remembered in `slot` is due.
    #[inline]
    pub(super) fn deadline(&self, slot: Option<TimerKey>) -> Option<Instant> {
        slot.and_then(|t| self.wheel.deadline(t))
    }

    /// Arm `timer` for `at` in `slot`, moving it if armed.
    #[inline]
    pub(super) fn set(&mut self, slot: &mut Option<TimerKey>, at: Instant, timer: Timer) {
        match *slot {
            Some(t) if self.wheel.reset(t, at) => {}
            _ => *slot = Some(self.wheel.insert(at, timer)),
        }
    }

    /// Disarm the timer in `slot`, if any.
    #[inline]
    pub(super) fn clear(&mut self, slot: &mut Option<TimerKey>) {
        if let Some(t) = slot.take() {
            self.wheel.cancel(t);
        }
    }
}
