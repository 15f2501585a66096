//! Timer wheel: owns every scheduled deadline of the engine (connect, handshake,
//! request, idle, max age, drain grace, backoff) and says which are due; only
//! its API changes them.
//!
//! # Model
//!
//! Time is counted in 1 ms *ticks* since the origin given to [`Wheel::new`].
//! A deadline is rounded **up** to its tick, so a timer never fires early; it is
//! due once `now`, rounded down to its tick, has reached the deadline's tick.
//! Time never goes backwards: a `now` earlier than one already seen is treated
//! as the latest one seen, and an `Instant` before the origin is tick 0. A
//! deadline already in the past is not an error: the timer is due at once and
//! [`Wheel::poll_expired`] returns it on its next call.
//!
//! # Structure
//!
//! The design follows tokio's hierarchical wheel (levels of 64 slots of 64×
//! growing width, a `u64` occupied bitfield per level so that "next non-empty
//! slot" is one `trailing_zeros`, entries in a slab with intrusive doubly linked
//! lists per slot, O(1) unlink that clears the slot's bit when it empties), with
//! one deliberate difference: **when** a slot cascades.
//!
//! tokio cascades a slot when the clock reaches the slot's start, so its next
//! expiration is sometimes a cascade instant at which nothing is due; a host
//! sleeping until then wakes up for nothing. Here the wheel guarantees that
//! [`Wheel::next_deadline`] is the *exact* (tick-rounded) deadline of the
//! earliest timer and that `poll_expired(next_deadline)` returns at least one
//! timer. To get that without scanning entries, slots cascade when they hold the
//! earliest timer and its exact tick is no longer known, rather than when the
//! clock reaches them:
//!
//! - The levels form a 64-ary tree over absolute ticks. A node of level `l`
//!   has 64 slots, each `64^l` ticks wide; level 0 slots are single ticks. The
//!   root's level grows as ticks grow (level `l` covers `64^(l+1)` ticks: 64 ms,
//!   4 s, 4.4 min, 4.7 h, 12.4 days, 2.2 years, ...), up to 10 levels.
//! - A slot is either a list of entries (its *coarse* form) or *cascaded* into a
//!   child node of the level below, which then holds all timers of that slot.
//!   An insert walks down through cascaded slots and links into the first list
//!   slot: a timer far from the earliest one stays high up, in O(1) links.
//! - The wheel remembers the *front*: the slot holding the earliest timer and
//!   that timer's tick. The front slot is a level-0 slot, or a coarse slot whose
//!   minimum tick is known (a single entry, or the earliest insert into it).
//!   When the front's minimum leaves a coarse slot that still holds other timers,
//!   the slot cascades one level down (each entry moves to the child slot of its
//!   tick; a 4 s slot goes straight to single ticks), and so on until the
//!   earliest tick is known again. A coarse front slot is also cascaded before
//!   its timers are returned, so timers due at the same tick fire in insertion
//!   order.
//!
//! Each cascade moves an entry at least one level down, so an entry moves at
//! most `levels - 1` times between insert and fire: cascading costs amortised
//! O(levels) per timer, and nothing is done while nothing is due.
//!
//! # Complexity
//!
//! With `L` the current number of levels (≤ 10; 5 for the first 12 days after
//! the origin, 6 for the first 2 years): insert, cancel and reset take O(L)
//! plus amortised cascade work; [`Wheel::next_deadline`], [`Wheel::deadline`]
//! and [`Wheel::len`] are O(1); [`Wheel::poll_expired`] is O(L) amortised per
//! returned timer. Storage is two contiguous `Vec`s (entries and nodes) whose
//! freed cells are reused, so a warmed-up wheel does not allocate. A node
//! (about half a KiB) exists only while a cascaded slot holds timers, and the
//! root; a timer far from the earliest one costs just its entry. Cascades
//! use two reused index buffers, as long as the longest list cascaded so far.
//!
//! # Source layout
//!
//! `wheel/mod.rs` holds the API, the clock (instants to ticks, the latest
//! `now`) and the count, and changes the storage only through its private
//! submodules: `entry.rs`, the entry slab and its generations; `level.rs`, the
//! nodes, their bitfields and the slot lists; `cascade.rs`, placement,
//! removal, the front and cascading. The unit tests, among them the
//! `BTreeMap` model test, are in `tests.rs`.
// Public only to the benchmarks (`test-hooks`); the engine uses what it needs.
#![cfg_attr(not(feature = "test-hooks"), allow(unreachable_pub, dead_code))]

use std::time::{Duration, Instant};

use cascade::{Front, NO_FRONT, NO_TICK};
use entry::Entries;
use level::{Nodes, MAX_LEVEL, SLOT_BITS};

mod cascade;
mod entry;
mod level;

/// Ticks above this are clamped (2^60 ms is about 36 million years).
const TICK_LIMIT: u64 = (1 << (SLOT_BITS * (MAX_LEVEL as u32 + 1))) - 1;
/// "No index" for entry and node links.
const NIL: u32 = u32::MAX;

/// Handle to a scheduled timer, returned by [`Wheel::insert`].
///
/// A key stays valid until its timer fires or is cancelled. After that it is
/// *stale*: the wheel detects it through a generation counter, also when the
/// timer's storage cell has been reused by a new timer, and every operation on
/// a stale key is a no-op (`cancel` → `None`, `reset` → `false`, `deadline` →
/// `None`). Generations are 32-bit: a key is misidentified only if the same
/// cell is reused 2^32 times while the key is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    /// The cell's index plus one (an index is never `NIL`), so that an
    /// `Option<TimerKey>` takes 8 bytes, not 12: a connection holds six.
    slot: std::num::NonZeroU32,
    generation: u32,
}

impl TimerKey {
    /// `index` is never `NIL` (`Entries::alloc` hands out no such cell).
    #[inline]
    fn new(index: u32, generation: u32) -> TimerKey {
        let slot = std::num::NonZeroU32::MIN.saturating_add(index);
        TimerKey { slot, generation }
    }

    /// The cell this key names.
    #[inline]
    fn index(self) -> u32 {
        self.slot.get() - 1
    }
}

/// A hierarchical timer wheel with 1 ms resolution, generic over the payload
/// `T` a timer carries (the engine uses a connection or request id).
///
/// The wheel never reads the clock: every method that depends on time takes
/// `now`, so it is driven as easily by a virtual clock as by a real one. A host
/// sleeps until [`next_deadline`](Wheel::next_deadline), then calls
/// [`poll_expired`](Wheel::poll_expired) until it returns `None`.
///
/// See the [module documentation](self) for the design and the costs.
///
/// # Example
///
/// ```
/// use rotary::wheel::Wheel;
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// let mut wheel = Wheel::new(start);
/// let idle = wheel.insert(start + Duration::from_secs(90), "idle");
/// wheel.insert(start + Duration::from_millis(250), "first byte");
/// assert_eq!(wheel.next_deadline(), Some(start + Duration::from_millis(250)));
///
/// // Activity on the connection: push the idle timeout back.
/// assert!(wheel.reset(idle, start + Duration::from_secs(120)));
///
/// // The host slept until the next deadline; drain what is due.
/// let now = start + Duration::from_millis(250);
/// let mut due = Vec::new();
/// while let Some((_key, what)) = wheel.poll_expired(now) {
///     due.push(what);
/// }
/// assert_eq!(due, ["first byte"]);
/// assert_eq!(wheel.cancel(idle), Some("idle"));
/// assert!(wheel.is_empty());
/// ```
pub struct Wheel<T> {
    /// Instant of tick 0.
    origin: Instant,
    /// Largest tick used: `origin + max_tick ms` is representable.
    max_tick: u64,
    /// `origin + max_tick ms`.
    max_instant: Instant,
    /// Latest `now` seen by `poll_expired`, rounded down to its tick.
    now_tick: u64,
    entries: Entries<T>,
    nodes: Nodes,
    len: usize,
    /// The earliest timer's slot and tick, kept true by `cascade.rs`.
    front: Front,
    /// Reused buffers of [`cascade`](Self::cascade): the list from its head,
    /// and from its tail.
    scratch_ahead: Vec<u32>,
    scratch_behind: Vec<u32>,
}

impl<T> std::fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wheel")
            .field("len", &self.len)
            .field("now_tick", &self.now_tick)
            .field("next_tick", &self.next_tick())
            .field("levels", &(self.nodes[self.nodes.root()].level + 1))
            .finish_non_exhaustive()
    }
}

impl<T> Wheel<T> {
    /// Creates an empty wheel whose tick clock starts at `now`.
    ///
    /// `now` is the origin of the 1 ms ticks; later instants passed to the
    /// wheel are measured from it, and earlier ones count as the origin itself.
    /// O(1); allocates the root node (about half a KiB) and nothing else until
    /// the first insert.
    pub fn new(now: Instant) -> Self {
        Self::with_capacity(now, 0)
    }

    /// Creates an empty wheel like [`new`](Wheel::new), with room for `cap`
    /// timers before its entry storage has to grow.
    ///
    /// O(1) plus the allocation of `cap` entry cells (and a proportionate
    /// number of nodes).
    pub fn with_capacity(now: Instant, cap: usize) -> Self {
        // The largest tick whose instant exists (instants are bounded by the
        // platform); halving terminates at 0, and `now + 0 ms` exists.
        let mut max_tick = TICK_LIMIT;
        let max_instant = loop {
            match now.checked_add(Duration::from_millis(max_tick)) {
                Some(instant) => break instant,
                None => max_tick /= 2,
            }
        };
        Wheel {
            origin: now,
            max_tick,
            max_instant,
            now_tick: 0,
            entries: Entries::with_capacity(cap),
            nodes: Nodes::with_capacity(cap),
            len: 0,
            front: NO_FRONT,
            scratch_ahead: Vec::new(),
            scratch_behind: Vec::new(),
        }
    }

    /// Number of scheduled timers (fired and cancelled ones are gone). O(1).
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when no timer is scheduled. O(1).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules a timer carrying `payload` at `deadline` and returns its key.
    ///
    /// The deadline is rounded up to the next whole millisecond after the
    /// origin. A deadline at or before the latest `now` seen (including one
    /// before the origin) is due at once: the next
    /// [`poll_expired`](Wheel::poll_expired) returns it. Deadlines more than
    /// about 36 million years away are clamped. Timers due at the same tick
    /// fire in the order they were inserted (or last reset).
    ///
    /// O(levels) plus amortised cascade work; does not allocate while freed
    /// cells are available.
    ///
    /// # Panics
    ///
    /// Only if 2^32 − 1 timers are live at once (the key index space is
    /// exhausted; memory runs out long before on common machines).
    pub fn insert(&mut self, deadline: Instant, payload: T) -> TimerKey {
        let tick = self.tick_ceil(deadline);
        let index = self.entries.alloc(tick, payload);
        self.place(index);
        self.len += 1;
        self.entries.key(index)
    }

    /// Cancels the timer `key` and returns its payload, or `None` if the key is
    /// stale (the timer already fired or was cancelled).
    ///
    /// O(levels) to unlink and clear emptied bitfields, plus amortised cascade
    /// work when the earliest timer is cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if !self.entries.is_live(key) {
            return None;
        }
        self.remove(key.index());
        self.len -= 1;
        Some(self.entries.free(key.index()))
    }

    /// Moves the timer `key` to `deadline` (rounded up like
    /// [`insert`](Wheel::insert); a past deadline makes it due at once) and
    /// returns `true`, or returns `false` if the key is stale.
    ///
    /// The key stays valid. Among timers due at the same tick, a reset timer
    /// counts as inserted now. O(levels) plus amortised cascade work.
    pub fn reset(&mut self, key: TimerKey, deadline: Instant) -> bool {
        if !self.entries.is_live(key) {
            return false;
        }
        let tick = self.tick_ceil(deadline);
        self.remove(key.index());
        self.entries[key.index()].tick = tick;
        self.place(key.index());
        true
    }

    /// The deadline of the timer `key` as the wheel keeps it (rounded up to
    /// its tick, clamped to the origin), or `None` if the key is stale. O(1).
    #[inline]
    pub fn deadline(&self, key: TimerKey) -> Option<Instant> {
        if !self.entries.is_live(key) {
            return None;
        }
        Some(self.instant_of(self.entries[key.index()].tick))
    }

    /// The exact instant at which the earliest timer is due, or `None` when the
    /// wheel is empty.
    ///
    /// It is the tick-rounded deadline of that timer: never later than any
    /// scheduled timer's deadline, and `poll_expired(next_deadline)` returns at
    /// least one timer. It may be in the past (a past deadline, or a timer not
    /// yet polled); a host then polls without sleeping. O(1): the wheel keeps
    /// the front of its bitfields up to date, nothing is scanned.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_tick().map(|tick| self.instant_of(tick))
    }

    /// Removes and returns one timer that is due at `now`, earliest deadline
    /// first (insertion order within a tick), or `None` when none is due.
    ///
    /// A timer is due when its tick-rounded deadline is at or before `now`
    /// (or before the latest `now` seen, as time never goes backwards). Call
    /// until it returns `None` to drain all due timers; timers inserted in the
    /// meantime with due deadlines are returned too. Its key becomes stale.
    /// O(levels) amortised, including the cascades it triggers.
    pub fn poll_expired(&mut self, now: Instant) -> Option<(TimerKey, T)> {
        let now_tick = self.tick_floor(now);
        if now_tick > self.now_tick {
            self.now_tick = now_tick;
        }
        if self.front.tick > self.now_tick {
            // Also covers the empty wheel (`NO_TICK`).
            return None;
        }
        let Front { node, slot, .. } = self.front;
        let (level, list) = {
            let n = &self.nodes[node];
            (n.level, n.slots[slot as usize])
        };
        if level > 0 && list.head != list.tail {
            // A coarse front slot with several timers: the earliest one is not
            // necessarily its head. Cascade until it sits alone or at level 0.
            self.find_front(node);
        }
        let index = self.nodes[self.front.node].slots[self.front.slot as usize].head;
        let key = self.entries.key(index);
        self.remove(index);
        self.len -= 1;
        Some((key, self.entries.free(index)))
    }

    // ----- time conversion -------------------------------------------------

    /// The front tick, if any.
    fn next_tick(&self) -> Option<u64> {
        (self.front.tick != NO_TICK).then_some(self.front.tick)
    }

    /// `t` as a tick, rounded up, clamped to `0..=max_tick`.
    fn tick_ceil(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.origin);
        let round_up = u128::from(since.subsec_nanos() % 1_000_000 != 0);
        self.clamp_tick(since.as_millis() + round_up)
    }

    /// `t` as a tick, rounded down, clamped to `0..=max_tick`.
    fn tick_floor(&self, t: Instant) -> u64 {
        self.clamp_tick(t.saturating_duration_since(self.origin).as_millis())
    }

    fn clamp_tick(&self, millis: u128) -> u64 {
        u64::try_from(millis).map_or(self.max_tick, |ms| ms.min(self.max_tick))
    }

    fn instant_of(&self, tick: u64) -> Instant {
        // Ticks never exceed `max_tick`, whose instant exists.
        self.origin
            .checked_add(Duration::from_millis(tick))
            .unwrap_or(self.max_instant)
    }
}

#[cfg(test)]
mod tests;
