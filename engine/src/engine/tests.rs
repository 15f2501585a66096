//! Unit tests of the loop's pure decisions: expiry, prewarm, idle hints
//! and idle selection.

use std::time::{Duration, Instant};

use super::exchange::hinted_idle;
use super::lifecycle::{
    expiry_deadline, prewarm_deadline, prewarm_lead, prewarm_wanted, probe_deadline,
};
use super::pool::{insert_idle, pick_idle};
use crate::keys::{ConnKey, Key};
use crate::{ConnId, Policy};

fn policy(age_ms: u64, jitter_ms: Option<u64>) -> Policy {
    Policy {
        max_age: Some(Duration::from_millis(age_ms)),
        max_age_jitter: jitter_ms.map(Duration::from_millis),
        ..Policy::default()
    }
}

#[test]
fn expiry_is_max_age_minus_a_share_of_the_jitter() {
    let t0 = Instant::now();
    let p = policy(1000, Some(200));
    assert_eq!(
        expiry_deadline(t0, &p, 0.0),
        Some(t0 + Duration::from_millis(1000))
    );
    assert_eq!(
        expiry_deadline(t0, &p, 0.5),
        Some(t0 + Duration::from_millis(900))
    );
    // Out-of-range draws are clamped.
    assert_eq!(
        expiry_deadline(t0, &p, 7.0),
        Some(t0 + Duration::from_millis(800))
    );
}

#[test]
fn default_jitter_is_ten_percent_and_none_disables_expiry() {
    let t0 = Instant::now();
    let p = policy(15 * 60 * 1000, None);
    assert_eq!(p.effective_jitter(), Duration::from_secs(90));
    assert_eq!(
        expiry_deadline(t0, &p, 1.0),
        Some(t0 + Duration::from_secs(810))
    );
    let off = Policy {
        max_age: None,
        ..Policy::default()
    };
    assert_eq!(expiry_deadline(t0, &off, 0.3), None);
}

#[test]
fn jitter_spreads_a_thousand_connections_over_the_window() {
    let t0 = Instant::now();
    let p = policy(10_000, Some(1_000));
    let mut ds: Vec<Instant> = (0..1000)
        .map(|_| expiry_deadline(t0, &p, fastrand::f64()).expect("max age set"))
        .collect();
    ds.sort();
    ds.dedup();
    assert!(
        ds.len() > 990,
        "deadlines should be distinct, got {}",
        ds.len()
    );
    let lo = t0 + Duration::from_millis(9_000);
    let hi = t0 + Duration::from_millis(10_000);
    assert!(ds.iter().all(|d| *d >= lo && *d <= hi));
    // Spread: both ends of the window are used.
    assert!(ds[0] < lo + Duration::from_millis(100));
    assert!(ds[ds.len() - 1] > hi - Duration::from_millis(100));
}

#[test]
fn keep_alive_timeout_hint_lowers_idle_limit_by_the_margin() {
    let s = Duration::from_secs;
    assert_eq!(hinted_idle(Some(s(90)), Some(s(5)), s(1)), Some(s(4)));
    assert_eq!(hinted_idle(Some(s(3)), Some(s(5)), s(1)), Some(s(3)));
    assert_eq!(hinted_idle(None, Some(s(5)), s(1)), Some(s(4)));
    assert_eq!(hinted_idle(Some(s(90)), None, s(1)), Some(s(90)));
    assert_eq!(
        hinted_idle(Some(s(90)), Some(s(1)), s(1)),
        Some(Duration::ZERO)
    );
}

#[test]
fn the_youngest_idle_connection_gets_the_next_request() {
    // (id, slab key); the key doubles as "requests served" here.
    let mut idle = Vec::new();
    for (id, key) in [(3, 5), (9, 1), (4, 0), (7, 0)] {
        insert_idle(&mut idle, ConnId(id), ConnKey::from_index(key));
    }
    let ids: Vec<u64> = idle.iter().map(|(id, _)| id.0).collect();
    assert_eq!(ids, [3, 4, 7, 9]);
    assert_eq!(pick_idle(&idle, None), Some(3));
    // A retry that must use a fresh connection skips used ones.
    let unused = |served: ConnKey| served.index() == 0;
    assert_eq!(pick_idle(&idle, Some(&unused)), Some(2));
    assert_eq!(pick_idle(&idle[3..], Some(&unused)), None);
    assert_eq!(pick_idle(&[], None), None);
}

#[test]
fn prewarm_lead_is_a_quarter_capped_at_two_seconds() {
    assert_eq!(
        prewarm_lead(Duration::from_millis(100)),
        Duration::from_millis(25)
    );
    assert_eq!(
        prewarm_lead(Duration::from_secs(900)),
        Duration::from_secs(2)
    );
}

#[test]
fn prewarm_and_probe_deadlines_follow_the_policy() {
    let ms = Duration::from_millis;
    let t0 = Instant::now();
    let p = policy(100, Some(0));
    // 25 ms before a 100 ms expiry; none once the lead is past or off.
    assert_eq!(prewarm_deadline(t0, t0 + ms(100), &p), Some(t0 + ms(75)));
    assert_eq!(prewarm_deadline(t0, t0 + ms(20), &p), None);
    let off = Policy {
        prewarm: false,
        ..p
    };
    assert_eq!(prewarm_deadline(t0, t0 + ms(100), &off), None);
    // Wanted only for an origin used within max age, with room.
    assert!(prewarm_wanted(&p, t0 + ms(75), Some(t0), 1));
    assert!(!prewarm_wanted(&p, t0 + ms(175), Some(t0), 1));
    assert!(!prewarm_wanted(&p, t0 + ms(75), None, 1));
    assert!(!prewarm_wanted(
        &p,
        t0 + ms(75),
        Some(t0),
        p.max_connections
    ));
    assert!(!prewarm_wanted(&off, t0 + ms(75), Some(t0), 1));
    assert_eq!(probe_deadline(t0, &p, 0.5, true), None);
    let probing = Policy {
        chain_probe_interval: Some(ms(300)),
        ..p
    };
    assert_eq!(probing.effective_probe_jitter(), ms(3));
    // A re-armed probe: the interval less a share of 1 % of it.
    assert_eq!(probe_deadline(t0, &probing, 0.0, false), Some(t0 + ms(300)));
    let half = Duration::from_micros(298_500);
    assert_eq!(probe_deadline(t0, &probing, 0.5, false), Some(t0 + half));
    assert_eq!(probe_deadline(t0, &probing, 9.0, false), Some(t0 + ms(297)));
    let wide = Policy {
        chain_probe_jitter: Some(ms(30)),
        ..probing
    };
    assert_eq!(probe_deadline(t0, &wide, 0.5, false), Some(t0 + ms(285)));
    // The first one: anywhere in the interval.
    assert_eq!(probe_deadline(t0, &probing, 0.5, true), Some(t0 + ms(150)));
    // Jitter off: exactly one interval, first or not.
    let lockstep = Policy {
        chain_probe_jitter: Some(Duration::ZERO),
        ..probing
    };
    assert_eq!(probe_deadline(t0, &lockstep, 0.5, true), Some(t0 + ms(300)));
    assert_eq!(
        probe_deadline(t0, &lockstep, 0.5, false),
        Some(t0 + ms(300))
    );
}

/// The fleet simulation's finding: without jitter on the probe, engines
/// that connected in the same second probe in the same second of every
/// interval, forever. With the engine's draws a thousand first probes
/// cover the whole interval, and the re-armed ones its last 1 %.
#[test]
fn probes_armed_together_spread_over_the_interval() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let p = Policy {
        chain_probe_interval: Some(s(300)),
        ..Policy::default()
    };
    let spread = |first: bool| {
        let mut ds: Vec<Instant> = (0..1000)
            .map(|_| probe_deadline(t0, &p, fastrand::f64(), first).expect("probe interval set"))
            .collect();
        ds.sort();
        ds
    };
    let first = spread(true);
    assert!(first.iter().all(|d| *d > t0 && *d <= t0 + s(300)));
    // No second holds more than 2 % of them (1,000 over 300 s is 3.3 a second).
    let mut per_second = [0u32; 301];
    for d in &first {
        per_second[d.duration_since(t0).as_secs() as usize] += 1;
    }
    assert!(per_second.iter().all(|&n| n <= 20), "{per_second:?}");
    assert!(first[0] < t0 + s(30) && first[999] > t0 + s(270));
    let later = spread(false);
    let ms = Duration::from_millis;
    assert!(later.iter().all(|d| *d >= t0 + s(297) && *d <= t0 + s(300)));
    assert!(later[0] < t0 + ms(297_300) && later[999] > t0 + ms(299_700));
}
