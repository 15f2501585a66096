//! Timer wheel against `BinaryHeap` and `BTreeMap`.
//!
//! Run: `cargo bench -p rotary-benches --bench wheel`
//!
//! The workload, identical for the three structures and measured in one group:
//! insert 1,000,000 timers with deadlines spread uniformly over 5 minutes
//! (sub-millisecond parts included), cancel a random half of them in random
//! order, then advance a clock in 1 ms steps to the last deadline and drain
//! every due timer at each step. The deadlines and the cancel order are
//! generated once, outside the timed code.
//!
//! - `wheel`: `rotary::wheel::Wheel<u64>` (built with its capacity).
//! - `binary_heap`: a min-heap of `(deadline, id)` with lazy cancellation: a
//!   cancel marks the id in a tombstone vector, and expiry skips marked ids.
//! - `btree_map`: `BTreeMap<(Instant, u64), u64>`; cancel removes the key.
//!
//! Before timing, the three are checked to fire the same timers. After the
//! criterion group, a markdown table gives medians of five alternated rounds
//! (wheel, heap, btree, wheel, …) and their ratio to `btree_map`: criterion
//! times the three one after the other, so load on the machine can skew its
//! ratios; the alternated ones come from the same rounds, and the `rounds`
//! column gives the smallest and largest ratio of a single round. The target
//! is wheel ≤ 0.3 × btree_map.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rotary::wheel::Wheel;

const TIMERS: usize = 1_000_000;
const SPREAD: Duration = Duration::from_secs(5 * 60);
const STEP: Duration = Duration::from_millis(1);

/// The pre-generated workload.
struct Workload {
    origin: Instant,
    /// Deadline of timer `id`.
    deadlines: Vec<Instant>,
    /// Ids to cancel, in cancel order (a random half).
    cancels: Vec<usize>,
    /// The clock runs from `origin` to here in `STEP`s.
    end: Instant,
}

/// splitmix64: a small deterministic generator, so the benchmark needs no
/// extra dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Workload {
    fn new() -> Self {
        let mut rng = SplitMix(0x5eed);
        let origin = Instant::now();
        let spread = SPREAD.as_nanos() as u64;
        let deadlines: Vec<Instant> = (0..TIMERS)
            .map(|_| origin + Duration::from_nanos(rng.below(spread)))
            .collect();
        // Fisher-Yates over all ids; the first half is the cancel order.
        let mut ids: Vec<usize> = (0..TIMERS).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        ids.truncate(TIMERS / 2);
        Workload {
            origin,
            deadlines,
            cancels: ids,
            end: origin + SPREAD + STEP,
        }
    }

    /// Calls `expire(now)` at every clock step.
    fn run_clock(&self, mut expire: impl FnMut(Instant)) {
        let mut now = self.origin;
        while now <= self.end {
            expire(now);
            now += STEP;
        }
    }
}

/// Returns (timers fired, sum of fired ids) as a cross-check.
fn run_wheel(w: &Workload) -> (usize, u64) {
    let mut wheel = Wheel::with_capacity(w.origin, TIMERS);
    let keys: Vec<_> = w
        .deadlines
        .iter()
        .enumerate()
        .map(|(id, &deadline)| wheel.insert(deadline, id as u64))
        .collect();
    for &id in &w.cancels {
        black_box(wheel.cancel(keys[id]));
    }
    let (mut fired, mut sum) = (0, 0);
    w.run_clock(|now| {
        while let Some((_, id)) = wheel.poll_expired(now) {
            fired += 1;
            sum += id;
        }
    });
    (fired, sum)
}

fn run_heap(w: &Workload) -> (usize, u64) {
    let mut heap = BinaryHeap::with_capacity(TIMERS);
    let mut cancelled = vec![false; TIMERS];
    for (id, &deadline) in w.deadlines.iter().enumerate() {
        heap.push(Reverse((deadline, id as u64)));
    }
    for &id in &w.cancels {
        cancelled[id] = true;
    }
    let (mut fired, mut sum) = (0, 0);
    w.run_clock(|now| {
        while let Some(&Reverse((deadline, id))) = heap.peek() {
            if deadline > now {
                break;
            }
            heap.pop();
            if !cancelled[id as usize] {
                fired += 1;
                sum += id;
            }
        }
    });
    (fired, sum)
}

fn run_btree(w: &Workload) -> (usize, u64) {
    let mut map = BTreeMap::new();
    for (id, &deadline) in w.deadlines.iter().enumerate() {
        map.insert((deadline, id as u64), id as u64);
    }
    for &id in &w.cancels {
        black_box(map.remove(&(w.deadlines[id], id as u64)));
    }
    let (mut fired, mut sum) = (0, 0);
    w.run_clock(|now| {
        while let Some(entry) = map.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            fired += 1;
            sum += id;
        }
    });
    (fired, sum)
}

fn timers_1m(c: &mut Criterion) {
    let w = Workload::new();
    // Not timed: the three must fire the same timers.
    let expected = run_btree(&w);
    assert_eq!(expected.0, TIMERS - TIMERS / 2);
    assert_eq!(
        run_wheel(&w),
        expected,
        "wheel fired other timers than BTreeMap"
    );
    assert_eq!(
        run_heap(&w),
        expected,
        "heap fired other timers than BTreeMap"
    );

    let mut group = c.benchmark_group("timers_1m_insert_cancel_half_expire");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    // Interleaved in one group, so the ratios come from the same run.
    group.bench_function("wheel", |b| b.iter(|| black_box(run_wheel(&w))));
    group.bench_function("binary_heap", |b| b.iter(|| black_box(run_heap(&w))));
    group.bench_function("btree_map", |b| b.iter(|| black_box(run_btree(&w))));
    group.finish();
    alternating_summary(&w);
}

/// Criterion measures the three one after the other, so load from other
/// processes can skew their ratio. This runs them alternately (A B C A B C …,
/// five rounds) and prints medians and ratios from the same rounds.
fn alternating_summary(w: &Workload) {
    const ROUNDS: usize = 5;
    type Run = fn(&Workload) -> (usize, u64);
    let runs: [(&str, Run); 3] = [
        ("wheel", run_wheel),
        ("binary_heap", run_heap),
        ("btree_map", run_btree),
    ];
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..ROUNDS {
        for ((_, run), t) in runs.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            black_box(run(w));
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Per-round ratios too: how far one round strays from another.
    let ranges = times.each_ref().map(|t| {
        let ratios = t.iter().zip(&times[2]).map(|(x, btree)| x / btree);
        ratios.fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        })
    });
    let medians = times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[ROUNDS / 2]
    });
    println!(
        "\n| structure (1M timers, alternated x{ROUNDS}) | median ms | / btree_map | rounds |"
    );
    println!("|---|---:|---:|---:|");
    for (((name, _), m), (lo, hi)) in runs.iter().zip(medians).zip(ranges) {
        println!(
            "| {name} | {m:.1} | {:.2} | {lo:.2}–{hi:.2} |",
            m / medians[2]
        );
    }
}

criterion_group!(benches, timers_1m);
criterion_main!(benches);
