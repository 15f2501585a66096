//! A fleet on paper: N runners, each one rotary engine
//! with one connection to the same edge, in virtual time and without
//! sockets, counting the full handshakes the edge serves each second.
//!
//! The lifetime decisions are the engine's own (`rotary::fuzzing::lifetime`):
//! each connection's expiry with its jitter draw, when its prewarm timer
//! fires and whether it opens the replacement, when the chain probe is due.
//! What the simulation adds is only what the engine leaves to the world:
//!
//! - every runner polls all the time (a runner asks for jobs every few
//!   seconds), so its origin was always used just now and a request is
//!   always ready to open a connection when none is left;
//! - a handshake takes no virtual time, and every connection and probe is a
//!   full handshake (the default `Resumption::Never`);
//! - the engine's global connection budget is never the limit.
//!
//! Per runner, as the engine does it: a connection is made; its `MaxAge`
//! deadline is drawn; its prewarm timer opens the replacement (a handshake)
//! `prewarm_lead` before that, or, without prewarm, the connection closes
//! at its deadline and the next poll opens a new one. With
//! `chain_probe_interval`, the first ready connection arms the probe (drawn
//! over the whole interval); each probe is a handshake and re-arms it (the
//! interval less its jitter draw); a probe that sees a chain the
//! runner's connection does not have retires that connection
//! (`OnChainChange::RetireOld`), the pool empties, the probe is disarmed,
//! and the next poll's new connection arms it again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rotary::fuzzing::lifetime;
use rotary::Policy;

/// One simulated fleet.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Runners (one engine, one origin, one connection each).
    pub runners: u32,
    /// Their policy.
    pub policy: Policy,
    /// Every runner (re)starts at a uniformly drawn instant in `[0, restart_spread)`.
    pub restart_spread: Duration,
    /// The edge's certificate chain changes at this instant.
    pub rotation_at: Option<Duration>,
    /// How much virtual time is simulated.
    pub horizon: Duration,
    /// Seed of the jitter draws: the same seed gives the same run.
    pub seed: u64,
    /// Whether the probe's first arming is drawn over its whole interval,
    /// as the engine does; `false` arms it as a re-armed probe is (the
    /// interval less a share of the jitter), to show what that spread buys.
    pub spread_first_probe: bool,
}

/// Full handshakes the edge served in each second of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// `per_second[s]`: handshakes in `[s, s + 1)` seconds.
    pub per_second: Vec<u32>,
}

/// Summary of a [`Load`], handshakes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Handshakes in the restart's own seconds (`[0, restart_spread)`).
    pub restart: u64,
    /// Highest second after the restart.
    pub peak: u32,
    /// 99th percentile over the seconds after the restart.
    pub p99: u32,
    /// Mean over the seconds after the restart.
    pub mean: f64,
    /// All handshakes of the run.
    pub total: u64,
}

impl Load {
    /// Peak, p99 and mean over the seconds from `from` on (the restart's own
    /// seconds, which every policy pays alike, are counted apart).
    pub fn summary(&self, from: Duration) -> Summary {
        let skip = (from.as_secs_f64().ceil() as usize).min(self.per_second.len());
        let (head, tail) = self.per_second.split_at(skip);
        let mut sorted = tail.to_vec();
        sorted.sort_unstable();
        let p99 = sorted
            .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        let sum: u64 = tail.iter().map(|&n| u64::from(n)).sum();
        Summary {
            restart: head.iter().map(|&n| u64::from(n)).sum(),
            peak: sorted.last().copied().unwrap_or(0),
            p99,
            mean: sum as f64 / tail.len().max(1) as f64,
            total: sum + head.iter().map(|&n| u64::from(n)).sum::<u64>(),
        }
    }

    /// Handshakes in `[from, to)` whole seconds.
    pub fn between(&self, from: u64, to: u64) -> u64 {
        let end = (to as usize).min(self.per_second.len());
        let start = (from as usize).min(end);
        self.per_second[start..end]
            .iter()
            .map(|&n| u64::from(n))
            .sum()
    }
}

/// splitmix64: a small seeded generator, so a run is reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The runner's next poll finds no connection: it opens one.
    Connect,
    /// The prewarm timer of connection generation `gen`.
    Prewarm,
    /// The `MaxAge` deadline of generation `gen` (only armed alone when
    /// there is no prewarm to replace the connection first).
    Expire,
    /// The chain probe armed as probe generation `gen`.
    Probe,
}

#[derive(Debug, Clone, Copy, Default)]
struct Runner {
    /// Generation of the runner's current connection.
    conn_gen: u32,
    /// Its `MaxAge` deadline.
    expires: Option<Instant>,
    /// Whether its chain is the one before the rotation.
    old_chain: bool,
    /// Generation of the armed probe; `None` when disarmed.
    probe_gen: Option<u32>,
    probes_armed: u32,
}

/// Runs `s`; every handshake the edge serves, per second.
pub fn simulate(s: &Scenario) -> Load {
    let t0 = Instant::now();
    let at = |d: Duration| t0 + d;
    let since = |t: Instant| t.saturating_duration_since(t0);
    let horizon = s.horizon;
    let mut per_second = vec![0u32; horizon.as_secs_f64().ceil() as usize];
    let mut rng = Rng(s.seed);
    let mut runners = vec![Runner::default(); s.runners as usize];
    // (when, kind, runner, generation), earliest first.
    let mut queue: BinaryHeap<Reverse<(Duration, Kind, u32, u32)>> = BinaryHeap::new();
    for r in 0..s.runners {
        let start = s.restart_spread.mul_f64(rng.f64());
        queue.push(Reverse((start, Kind::Connect, r, 0)));
    }
    let rotated = |now: Duration| s.rotation_at.is_some_and(|r| now >= r);
    while let Some(Reverse((now, kind, r, gen))) = queue.pop() {
        if now >= horizon {
            break;
        }
        let Some(runner) = runners.get_mut(r as usize) else {
            continue;
        };
        let mut handshake = || {
            if let Some(n) = per_second.get_mut(now.as_secs() as usize) {
                *n += 1;
            }
        };
        match kind {
            Kind::Connect => {
                handshake();
                runner.conn_gen += 1;
                runner.old_chain = !rotated(now);
                let expires = lifetime::expiry_deadline(at(now), &s.policy, rng.f64());
                runner.expires = expires;
                if let Some(expires) = expires {
                    let next = match lifetime::prewarm_deadline(at(now), expires, &s.policy) {
                        Some(warm) => (since(warm), Kind::Prewarm),
                        None => (since(expires), Kind::Expire),
                    };
                    queue.push(Reverse((next.0, next.1, r, runner.conn_gen)));
                }
                if runner.probe_gen.is_none() {
                    let first = s.spread_first_probe;
                    if let Some(probe) =
                        lifetime::probe_deadline(at(now), &s.policy, rng.f64(), first)
                    {
                        runner.probes_armed += 1;
                        runner.probe_gen = Some(runner.probes_armed);
                        queue.push(Reverse((since(probe), Kind::Probe, r, runner.probes_armed)));
                    }
                }
            }
            Kind::Prewarm if gen == runner.conn_gen => {
                // The runner polls all the time: used just now, one connection open.
                if lifetime::prewarm_wanted(&s.policy, at(now), Some(at(now)), 1) {
                    queue.push(Reverse((now, Kind::Connect, r, 0)));
                } else if let Some(expires) = runner.expires {
                    queue.push(Reverse((since(expires), Kind::Expire, r, gen)));
                }
            }
            Kind::Expire if gen == runner.conn_gen => {
                // The pool is empty until the next poll: the probe stops.
                runner.probe_gen = None;
                queue.push(Reverse((now, Kind::Connect, r, 0)));
            }
            Kind::Probe if Some(gen) == runner.probe_gen => {
                handshake();
                if let Some(next) = lifetime::probe_deadline(at(now), &s.policy, rng.f64(), false) {
                    runner.probes_armed += 1;
                    runner.probe_gen = Some(runner.probes_armed);
                    queue.push(Reverse((since(next), Kind::Probe, r, runner.probes_armed)));
                }
                if rotated(now) && runner.old_chain {
                    // RetireOld: the connection goes, the probe connection
                    // closes, the pool is empty: disarmed until the new
                    // connection the next poll opens.
                    runner.conn_gen += 1;
                    runner.probe_gen = None;
                    queue.push(Reverse((now, Kind::Connect, r, 0)));
                }
            }
            // A timer of a connection or probe that is gone.
            Kind::Prewarm | Kind::Expire | Kind::Probe => {}
        }
    }
    Load { per_second }
}

/// nginx worker CPU per full handshake measured on this machine (~430 µs,
/// BENCHMARKS.md): what a second of handshakes costs the edge in cores.
pub const EDGE_CPU_PER_HANDSHAKE: Duration = Duration::from_micros(430);

/// Edge cores `per_second` handshakes keep busy.
pub fn edge_cores(per_second: f64) -> f64 {
    per_second * EDGE_CPU_PER_HANDSHAKE.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn policy(jitter: Option<Duration>, probe: Option<Duration>) -> Policy {
        let mut p = Policy::default();
        p.max_age_jitter = jitter;
        p.chain_probe_interval = probe;
        p
    }

    fn scenario(runners: u32, policy: Policy, horizon: Duration) -> Scenario {
        Scenario {
            runners,
            policy,
            restart_spread: Duration::from_secs(1),
            rotation_at: None,
            horizon,
            seed: 18,
            spread_first_probe: true,
        }
    }

    #[test]
    fn without_jitter_every_runner_reconnects_in_the_same_second() {
        let s = scenario(2_000, policy(Some(Duration::ZERO), None), 40 * MIN);
        let load = simulate(&s);
        // 15 min less the 2 s prewarm lead: waves at 898 s and 1796 s.
        assert_eq!(load.between(898, 900), 2_000);
        assert_eq!(load.between(1796, 1798), 2_000);
        let sum = load.summary(Duration::from_secs(1));
        assert_eq!((sum.restart, sum.total), (2_000, 3 * 2_000));
        assert!(sum.peak >= 1_000, "{sum:?}");
    }

    #[test]
    fn the_default_jitter_spreads_the_first_wave_over_its_window() {
        let s = scenario(2_000, policy(None, None), 20 * MIN);
        let load = simulate(&s);
        let sum = load.summary(Duration::from_secs(1));
        // 10 % of 15 min: every first replacement lands in 808..=899 s.
        assert_eq!(load.between(808, 900), 2_000);
        assert_eq!(sum.total, 2 * 2_000);
        // 2,000 over 90 s is 22 a second; no second holds more than 3×.
        assert!(sum.peak <= 66, "{sum:?}");
        assert_eq!(simulate(&s), load, "the same seed gives the same run");
    }

    #[test]
    fn a_probe_heals_every_runner_within_one_interval_of_a_rotation() {
        let probe = Duration::from_secs(300);
        let quiet = scenario(1_000, policy(None, Some(probe)), 12 * MIN);
        let mut rotation = quiet.clone();
        rotation.rotation_at = Some(Duration::from_secs(400));
        let (before, after) = (simulate(&quiet), simulate(&rotation));
        // The first probes after the restart cover the first interval:
        // 1,000 over 300 s, a few a second, never the whole fleet at once.
        let sum = before.summary(Duration::from_secs(1));
        assert!(sum.peak <= 20, "{sum:?}");
        // The rotation adds one reconnect per runner within one interval of
        // it (the reconnected runner's probe is armed anew, drawn over its
        // interval: at most one more probe each).
        let (b, a) = (before.summary(MIN), after.summary(MIN));
        assert!(
            (1_000..=2_000).contains(&(a.total - b.total)),
            "{b:?} {a:?}"
        );
        assert!(after.between(400, 701) >= before.between(400, 701) + 900);
    }

    #[test]
    fn without_probe_jitter_the_fleet_probes_in_lockstep() {
        let mut p = policy(None, Some(Duration::from_secs(300)));
        p.chain_probe_jitter = Some(Duration::ZERO);
        let load = simulate(&scenario(1_000, p, 12 * MIN));
        // The whole fleet at 300 s and 600 s.
        assert_eq!(load.between(300, 302), 1_000);
        assert_eq!(load.between(600, 602), 1_000);
    }

    #[test]
    fn without_prewarm_the_connection_is_replaced_at_its_deadline() {
        let mut p = policy(Some(Duration::ZERO), None);
        p.prewarm = false;
        let load = simulate(&scenario(500, p, 20 * MIN));
        assert_eq!(load.between(900, 902), 500);
        assert_eq!(load.summary(Duration::ZERO).total, 1_000);
    }
}
