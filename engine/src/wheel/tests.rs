//! Unit tests of the timer wheel: a BTreeMap model fed random operations, and
//! edge cases (level boundaries, past and far deadlines, stale keys, reuse).
//! Tests only; they read the wheel's storage but change it only through its API.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const MS: u64 = 1;
const SEC: u64 = 1000 * MS;
const HOUR: u64 = 3600 * SEC;

fn at(origin: Instant, ms: u64) -> Instant {
    origin + Duration::from_millis(ms)
}

/// An empty wheel whose tick clock starts now, and its origin.
fn fresh_wheel<T>() -> (Instant, Wheel<T>) {
    let origin = Instant::now();
    (origin, Wheel::new(origin))
}

/// Asserts that `wheel` holds no timer and so reports no deadline.
#[track_caller]
fn assert_drained<T>(wheel: &Wheel<T>) {
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
}

/// Drains everything due at `now`, returning the payloads in firing order.
fn drain<T>(wheel: &mut Wheel<T>, now: Instant) -> Vec<T> {
    std::iter::from_fn(|| wheel.poll_expired(now).map(|(_, p)| p)).collect()
}

// ----- model-based test -------------------------------------------------

/// The reference: timers ordered by (tick, insertion sequence).
struct Model {
    origin: Instant,
    now_tick: u64,
    seq: u64,
    order: BTreeMap<(u64, u64), u32>,
    live: HashMap<u32, (u64, u64)>,
}

impl Model {
    fn tick_ceil(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(ns.div_ceil(1_000_000)).unwrap()
    }
    fn schedule(&mut self, id: u32, deadline: Instant) {
        let key = (self.tick_ceil(deadline), self.seq);
        self.seq += 1;
        self.order.insert(key, id);
        self.live.insert(id, key);
    }
    fn cancel(&mut self, id: u32) -> bool {
        match self.live.remove(&id) {
            Some(key) => self.order.remove(&key).is_some(),
            None => false,
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        let (&(tick, _), _) = self.order.first_key_value()?;
        Some(at(self.origin, tick))
    }
    fn poll(&mut self, now: Instant) -> Option<u32> {
        let tick = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.now_tick = self.now_tick.max(tick);
        let (&(tick, _), _) = self.order.first_key_value()?;
        if tick > self.now_tick {
            return None;
        }
        let (_, id) = self.order.pop_first()?;
        self.live.remove(&id);
        Some(id)
    }
}

/// A deadline around `now_ms` (ms since origin): mostly future up to 24 h
/// at every level's scale, sometimes on level boundaries, in the past,
/// before the origin, or repeating an earlier deadline.
fn random_deadline(
    rng: &mut fastrand::Rng,
    origin: Instant,
    now_ms: u64,
    last: Instant,
) -> Instant {
    let nanos = if rng.bool() { 0 } else { rng.u32(0..1_000_000) };
    let ms = match rng.u32(0..100) {
        0..=59 => {
            let scale = [64, 4096, 262_144, 16_777_216, 24 * HOUR + 1][rng.usize(0..5)];
            now_ms + rng.u64(0..scale)
        }
        60..=69 => {
            let width = 64u64.pow(rng.u32(1..5));
            let base = (now_ms / width + rng.u64(0..3)) * width;
            (base + rng.u64(0..3)).saturating_sub(1)
        }
        70..=79 => now_ms.saturating_sub(rng.u64(0..5000)),
        80..=84 => {
            return origin
                .checked_sub(Duration::from_millis(rng.u64(1..1000)))
                .unwrap_or(origin)
        }
        _ => return last,
    };
    at(origin, ms) + Duration::from_nanos(u64::from(nanos))
}

fn run_model(seed: u64, ops: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (origin, mut wheel) = fresh_wheel();
    let mut model = Model {
        origin,
        now_tick: 0,
        seq: 0,
        order: BTreeMap::new(),
        live: HashMap::new(),
    };
    let mut keys: Vec<TimerKey> = Vec::new();
    let mut now_ms = 0u64; // the driver's clock; polls may use earlier instants
    let mut last = origin;
    let pace = seed % 3;
    for step in 0..ops {
        let ctx = || format!("seed {seed}, step {step}");
        match rng.u32(0..100) {
            0..=39 => {
                let deadline = random_deadline(&mut rng, origin, now_ms, last);
                last = deadline;
                let id = keys.len() as u32;
                keys.push(wheel.insert(deadline, id));
                model.schedule(id, deadline);
            }
            40..=54 if !keys.is_empty() => {
                let id = rng.u32(0..keys.len() as u32);
                let got = wheel.cancel(keys[id as usize]);
                let want = model.cancel(id);
                assert_eq!(got, want.then_some(id), "cancel {id}: {}", ctx());
            }
            55..=69 if !keys.is_empty() => {
                let id = rng.u32(0..keys.len() as u32);
                let deadline = random_deadline(&mut rng, origin, now_ms, last);
                let live = model.live.contains_key(&id);
                assert_eq!(
                    wheel.reset(keys[id as usize], deadline),
                    live,
                    "reset {id}: {}",
                    ctx()
                );
                if live {
                    model.cancel(id);
                    model.schedule(id, deadline);
                }
            }
            70..=74 if !keys.is_empty() => {
                let id = rng.u32(0..keys.len() as u32);
                let want = model.live.get(&id).map(|&(tick, _)| at(origin, tick));
                assert_eq!(
                    wheel.deadline(keys[id as usize]),
                    want,
                    "deadline {id}: {}",
                    ctx()
                );
            }
            _ => {
                // Pace 0 jumps hours often (the wheel stays small), pace 1
                // only steps milliseconds to seconds (thousands of timers
                // pile up), pace 2 is in between.
                let dice = match pace {
                    0 => rng.u32(0..20),
                    1 => [0, 4, 7, 8, 11, 12, 13, 14, 15, 16][rng.usize(0..10)],
                    _ => {
                        if rng.u32(0..100) == 0 {
                            5
                        } else {
                            [0, 1, 4, 7, 8, 9, 11, 12][rng.usize(0..8)]
                        }
                    }
                };
                let now = match dice {
                    // Exactly the next deadline: must make progress.
                    0..=3 => match wheel.next_deadline() {
                        Some(next) => {
                            let got = wheel.poll_expired(next).map(|(_, id)| id);
                            assert!(got.is_some(), "no progress at next_deadline: {}", ctx());
                            assert_eq!(got, model.poll(next), "poll at next_deadline: {}", ctx());
                            next
                        }
                        None => at(origin, now_ms),
                    },
                    // Time going backwards.
                    4 => at(origin, now_ms.saturating_sub(rng.u64(0..10_000))),
                    5..=6 => {
                        now_ms += rng.u64(0..25 * HOUR);
                        at(origin, now_ms)
                    }
                    7..=10 => {
                        now_ms += if pace == 1 {
                            rng.u64(0..2 * SEC)
                        } else {
                            rng.u64(0..70 * SEC)
                        };
                        at(origin, now_ms)
                    }
                    _ => {
                        now_ms += rng.u64(0..100);
                        at(origin, now_ms) + Duration::from_nanos(rng.u64(0..1_000_000))
                    }
                };
                // Drain everything, or stop part-way to check partial drains.
                let limit = if rng.bool() {
                    usize::MAX
                } else {
                    rng.usize(0..4)
                };
                for _ in 0..limit {
                    let got = wheel.poll_expired(now).map(|(_, id)| id);
                    assert_eq!(got, model.poll(now), "poll: {}", ctx());
                    if got.is_none() {
                        break;
                    }
                }
            }
        }
        assert_eq!(wheel.len(), model.live.len(), "len: {}", ctx());
        assert_eq!(
            wheel.next_deadline(),
            model.next_deadline(),
            "next_deadline: {}",
            ctx()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random insert / cancel / reset / deadline / expire sequences of
    /// 10,000 operations agree with a `BTreeMap<(tick, seq), id>` model on
    /// every fired timer (and its order), `next_deadline` and `len`.
    #[test]
    fn wheel_matches_btreemap_model(seed in any::<u64>()) {
        run_model(seed, 10_000);
    }
}

#[test]
fn model_with_fixed_seeds() {
    for seed in 0..4 {
        run_model(seed, 10_000);
    }
}

// ----- edge tests -------------------------------------------------------

const BOUNDARIES: &[u64] = &[
    0,
    1,
    2,
    62,
    63,
    64,
    65,
    127,
    128,
    4095,
    4096,
    4097,
    262_143,
    262_144,
    262_145,
    16_777_215,
    16_777_216,
    16_777_217,
    24 * HOUR,
    24 * HOUR + 1,
    1_073_741_823,
    1_073_741_824,
    1_073_741_825,
];

#[test]
fn level_boundary_deadlines_fire_exactly_on_their_tick() {
    for start in [0, 1, 63, 64, 4095, 4096, 262_143, 1_000_000] {
        for &d in BOUNDARIES {
            let (origin, mut wheel) = fresh_wheel();
            assert_eq!(wheel.poll_expired(at(origin, start)), None);
            let key = wheel.insert(at(origin, start + d), d);
            assert_eq!(
                wheel.next_deadline(),
                Some(at(origin, start + d)),
                "start {start} d {d}"
            );
            if d > 0 {
                assert_eq!(
                    wheel.poll_expired(at(origin, start + d - 1)),
                    None,
                    "start {start} d {d}"
                );
            }
            assert_eq!(
                wheel.poll_expired(at(origin, start + d)),
                Some((key, d)),
                "start {start} d {d}"
            );
            assert_drained(&wheel);
        }
    }
}

#[test]
fn all_boundaries_in_one_wheel_fire_in_deadline_order() {
    let (origin, mut wheel) = fresh_wheel();
    for &d in BOUNDARIES.iter().rev() {
        wheel.insert(at(origin, d), d);
    }
    for &d in BOUNDARIES {
        assert_eq!(wheel.next_deadline(), Some(at(origin, d)));
        if d > 0 {
            assert_eq!(wheel.poll_expired(at(origin, d - 1)), None);
        }
        assert_eq!(drain(&mut wheel, at(origin, d)), vec![d]);
    }
    assert_drained(&wheel);
}

#[test]
fn past_deadline_fires_on_next_poll_even_with_an_earlier_now() {
    let (origin, mut wheel) = fresh_wheel();
    assert_eq!(wheel.poll_expired(at(origin, 10 * SEC)), None);
    wheel.insert(at(origin, 5 * SEC), "past");
    wheel.insert(at(origin, 20 * SEC), "future");
    // The exact (past) deadline is reported, so the host does not sleep.
    assert_eq!(wheel.next_deadline(), Some(at(origin, 5 * SEC)));
    // Time never goes backwards: an earlier `now` still sees 10 s.
    assert_eq!(drain(&mut wheel, at(origin, SEC)), vec!["past"]);
    assert_eq!(wheel.next_deadline(), Some(at(origin, 20 * SEC)));
}

#[test]
fn instants_before_the_origin_count_as_the_origin() {
    let (origin, mut wheel) = fresh_wheel();
    let Some(before) = origin.checked_sub(Duration::from_secs(1)) else {
        return;
    };
    let key = wheel.insert(before, 1);
    assert_eq!(wheel.deadline(key), Some(origin));
    assert_eq!(wheel.next_deadline(), Some(origin));
    assert_eq!(drain(&mut wheel, before), vec![1]);
}

#[test]
fn sub_millisecond_deadlines_round_up_to_the_next_tick() {
    let (origin, mut wheel) = fresh_wheel();
    let key = wheel.insert(at(origin, 7) + Duration::from_nanos(1), ());
    assert_eq!(wheel.deadline(key), Some(at(origin, 8)));
    assert_eq!(
        wheel.poll_expired(at(origin, 7) + Duration::from_micros(999)),
        None
    );
    assert!(wheel.poll_expired(at(origin, 8)).is_some());
}

#[test]
fn same_tick_timers_fire_in_insertion_order() {
    let (origin, mut wheel) = fresh_wheel();
    // Far enough to start in a coarse slot, then cascade together.
    for i in 0..100 {
        wheel.insert(at(origin, 300_000) + Duration::from_micros(i % 1000), i);
    }
    wheel.insert(at(origin, 299_999), 1000);
    assert_eq!(drain(&mut wheel, at(origin, 299_999)), vec![1000]);
    assert_eq!(drain(&mut wheel, at(origin, 300_000)), vec![0]);
    assert_eq!(
        drain(&mut wheel, at(origin, 300_001)),
        (1..100).collect::<Vec<_>>()
    );
}

#[test]
fn reset_moves_a_timer_earlier_and_later() {
    let (origin, mut wheel) = fresh_wheel();
    let a = wheel.insert(at(origin, 5000), 'a');
    let b = wheel.insert(at(origin, 6000), 'b');
    assert!(wheel.reset(b, at(origin, 100)));
    assert_eq!(wheel.next_deadline(), Some(at(origin, 100)));
    assert_eq!(wheel.deadline(b), Some(at(origin, 100)));
    assert!(wheel.reset(b, at(origin, 1_000_000)));
    assert!(wheel.reset(a, at(origin, 2_000_000)));
    assert_eq!(wheel.next_deadline(), Some(at(origin, 1_000_000)));
    assert_eq!(drain(&mut wheel, at(origin, 1_999_999)), vec!['b']);
    assert_eq!(drain(&mut wheel, at(origin, 2_000_000)), vec!['a']);
    // A reset to the past is due at once.
    let c = wheel.insert(at(origin, 3_000_000), 'c');
    assert!(wheel.reset(c, origin));
    assert_eq!(drain(&mut wheel, origin), vec!['c']);
}

#[test]
fn stale_keys_are_no_ops_after_fire_cancel_and_cell_reuse() {
    let (origin, mut wheel) = fresh_wheel();
    let fired = wheel.insert(at(origin, 1), 1);
    assert_eq!(wheel.poll_expired(at(origin, 1)), Some((fired, 1)));
    assert_eq!(wheel.cancel(fired), None);
    assert!(!wheel.reset(fired, at(origin, 5)));
    assert_eq!(wheel.deadline(fired), None);

    // The freed cell is reused by the next insert; the old key stays stale.
    let reused = wheel.insert(at(origin, 10), 2);
    assert_ne!(reused, fired);
    assert_eq!(wheel.cancel(fired), None);
    assert!(!wheel.reset(fired, at(origin, 5)));
    assert_eq!(wheel.deadline(reused), Some(at(origin, 10)));
    assert_eq!(wheel.cancel(reused), Some(2));
    assert_eq!(wheel.cancel(reused), None);
    assert_drained(&wheel);
}

#[test]
fn a_24_hour_deadline_fires_after_24_hours() {
    let (origin, mut wheel) = fresh_wheel();
    wheel.insert(at(origin, 24 * HOUR), "day");
    wheel.insert(at(origin, 90 * SEC), "idle");
    assert_eq!(drain(&mut wheel, at(origin, 90 * SEC)), vec!["idle"]);
    assert_eq!(wheel.next_deadline(), Some(at(origin, 24 * HOUR)));
    // Step through the day in hour-sized jumps.
    for h in 1..24 {
        assert_eq!(wheel.poll_expired(at(origin, h * HOUR)), None);
    }
    assert_eq!(drain(&mut wheel, at(origin, 24 * HOUR)), vec!["day"]);
}

#[test]
fn huge_jumps_in_now_fire_everything_in_order() {
    let (origin, mut wheel) = fresh_wheel();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut want: Vec<(u64, u32)> = (0..5000).map(|i| (rng.u64(0..24 * HOUR), i)).collect();
    for &(ms, i) in &want {
        wheel.insert(at(origin, ms), i);
    }
    want.sort();
    let years = at(origin, 10 * 365 * 24 * HOUR);
    let got = drain(&mut wheel, years);
    assert_eq!(got, want.iter().map(|&(_, i)| i).collect::<Vec<_>>());
    // Later timers are placed relative to the new time, beyond old levels.
    wheel.insert(years + Duration::from_millis(64), 1);
    wheel.insert(years, 0);
    assert_eq!(drain(&mut wheel, years), vec![0]);
    assert_eq!(
        drain(&mut wheel, years + Duration::from_millis(64)),
        vec![1]
    );
}

#[test]
fn far_future_deadlines_are_clamped_without_panicking() {
    let (origin, mut wheel) = fresh_wheel();
    let mut far = origin;
    for secs in [1u64 << 40, 1 << 50, 1 << 60, u64::MAX / 2, u64::MAX] {
        if let Some(t) = origin.checked_add(Duration::from_secs(secs)) {
            far = t;
            let key = wheel.insert(t, secs);
            assert!(wheel.deadline(key).is_some());
        }
    }
    assert!(wheel.next_deadline().is_some());
    assert_eq!(wheel.poll_expired(at(origin, 24 * HOUR)), None);
    // Polling at the farthest instant fires all of them.
    let scheduled = wheel.len();
    assert!(scheduled > 0);
    assert_eq!(drain(&mut wheel, far).len(), scheduled);
    assert_drained(&wheel);
}

#[test]
fn cancelling_the_earliest_timer_of_a_coarse_slot_finds_the_next_exactly() {
    let (origin, mut wheel) = fresh_wheel();
    let mut rng = fastrand::Rng::with_seed(3);
    // 200 timers inside one 4096 ms slot (and one level higher), shuffled.
    let mut ms: Vec<u64> = (0..200).map(|i| 8192 + i * 20 + rng.u64(0..20)).collect();
    rng.shuffle(&mut ms);
    let keys: HashMap<u64, TimerKey> = ms
        .iter()
        .map(|&m| (m, wheel.insert(at(origin, m), m)))
        .collect();
    ms.sort();
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(wheel.next_deadline(), Some(at(origin, *m)));
        if i % 2 == 0 {
            assert_eq!(wheel.cancel(keys[m]), Some(*m));
        } else {
            assert!(wheel.reset(keys[m], at(origin, 100_000 + m)));
        }
    }
    assert_eq!(wheel.len(), 100);
    assert_eq!(wheel.next_deadline(), Some(at(origin, 100_000 + ms[1])));
}

#[test]
fn a_warmed_up_wheel_reuses_its_storage() {
    let (origin, mut wheel) = fresh_wheel();
    // The same 5000 deadlines over 5 minutes, shifted by a multiple of a
    // level-3 slot so that every round has the same shape in the tree.
    let round = |wheel: &mut Wheel<u32>, base: u64| {
        let mut rng = fastrand::Rng::with_seed(5);
        for i in 0..5000 {
            wheel.insert(at(origin, base + rng.u64(0..300 * SEC)), i);
        }
        assert_eq!(drain(wheel, at(origin, base + 300 * SEC)).len(), 5000);
        (wheel.entries.cells(), wheel.nodes.cells())
    };
    let warm = round(&mut wheel, 0);
    for k in 1..4 {
        // No new entry cells or nodes.
        assert_eq!(round(&mut wheel, k * 2 * 64 * 64 * 64), warm);
    }
}

#[test]
fn poll_at_next_deadline_always_makes_progress() {
    let (origin, mut wheel) = fresh_wheel();
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..2000 {
        wheel.insert(
            at(origin, rng.u64(0..24 * HOUR)) + Duration::from_nanos(rng.u64(0..1_000_000)),
            i,
        );
    }
    let mut fired = 0;
    while let Some(next) = wheel.next_deadline() {
        assert!(wheel.poll_expired(next).is_some());
        fired += 1 + drain(&mut wheel, next).len();
    }
    assert_eq!(fired, 2000);
}

#[test]
fn an_optional_key_takes_no_more_room_than_a_key() {
    // A connection holds six of them.
    assert_eq!(
        std::mem::size_of::<Option<TimerKey>>(),
        std::mem::size_of::<TimerKey>()
    );
    let (origin, mut wheel) = fresh_wheel::<u32>();
    let first = wheel.insert(at(origin, 5), 0);
    let second = wheel.insert(at(origin, 7), 1);
    assert_eq!(first.index(), 0);
    assert_eq!(second.index(), 1);
    assert_eq!(wheel.cancel(first), Some(0));
    // The vacated cell is reused under a new generation: the old key is stale.
    let third = wheel.insert(at(origin, 9), 2);
    assert_eq!(third.index(), 0);
    assert_eq!(wheel.cancel(first), None);
    assert_eq!(wheel.cancel(third), Some(2));
}
