//! A connection's lifetime deadlines, as pure functions of the policy, the
//! time and a random draw: when it expires (max age with jitter), when its
//! replacement opens, whether a prewarm is wanted, when the origin's chain
//! is probed, and the idle limit after a server's hint. The engine arms
//! and acts on them; the fleet simulator and the fuzzer call them too.

use std::time::{Duration, Instant};

use crate::config::Policy;

use super::timers::after;

/// The instant a connection made at `connected_at` expires, given a random
/// `draw` in `[0, 1)`: `max_age` shortened by `draw × jitter`.
pub(crate) fn expiry_deadline(
    connected_at: Instant,
    policy: &Policy,
    draw: f64,
) -> Option<Instant> {
    let age = policy.max_age?;
    let jitter = policy.effective_jitter();
    let cut = jitter.mul_f64(draw.clamp(0.0, 1.0));
    Some(connected_at + age.saturating_sub(cut))
}

/// How long before expiry the replacement is opened: a quarter of the age
/// limit, at most 2 s (a handshake on a slow link).
pub(crate) fn prewarm_lead(age: Duration) -> Duration {
    (age / 4).min(Duration::from_secs(2))
}

/// When the replacement of a connection made at `now` and expiring at
/// `expires_at` is opened: the prewarm lead before expiry, if the policy
/// prewarms and that instant is still ahead.
pub(crate) fn prewarm_deadline(
    now: Instant,
    expires_at: Instant,
    policy: &Policy,
) -> Option<Instant> {
    let age = policy.max_age.filter(|_| policy.prewarm)?;
    let lead = prewarm_lead(age);
    (expires_at > now + lead).then(|| expires_at - lead)
}

/// Whether a prewarm timer firing at `now` opens the replacement: the
/// origin was used within the last max age and has room for one more of
/// its `open` connections (the engine also needs a connection token).
pub(crate) fn prewarm_wanted(
    policy: &Policy,
    now: Instant,
    last_used: Option<Instant>,
    open: usize,
) -> bool {
    let (Some(age), Some(used)) = (policy.max_age, last_used) else {
        return false;
    };
    policy.prewarm && now.saturating_duration_since(used) <= age && open < policy.max_connections
}

/// When the origin's next chain probe is due, armed at `now` with a random
/// `draw` in `[0, 1)`. The `first` probe (armed when the origin gains a
/// connection and has no probe armed) is drawn over the whole interval,
/// `interval × (1 − draw)`, so origins that connected in the same second
/// probe in different ones; every later one comes `interval − draw ×
/// jitter` after the last. With the jitter off, both are exactly one
/// interval.
pub(crate) fn probe_deadline(
    now: Instant,
    policy: &Policy,
    draw: f64,
    first: bool,
) -> Option<Instant> {
    let every = policy.chain_probe_interval?;
    let jitter = policy.effective_probe_jitter();
    let window = if first && !jitter.is_zero() {
        every
    } else {
        jitter
    };
    let cut = window.mul_f64(draw.clamp(0.0, 1.0));
    Some(after(now, every.saturating_sub(cut)))
}

/// The idle limit after a server's `Keep-Alive: timeout` hint: the hint
/// less `margin` (so reuse never races the server's close), and never more
/// than `ours`.
pub(crate) fn hinted_idle(
    ours: Option<Duration>,
    hint: Option<Duration>,
    margin: Duration,
) -> Option<Duration> {
    match (ours, hint) {
        (o, None) => o,
        (None, Some(h)) => Some(h.saturating_sub(margin)),
        (Some(o), Some(h)) => Some(o.min(h.saturating_sub(margin))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .map(|_| {
                    probe_deadline(t0, &p, fastrand::f64(), first).expect("probe interval set")
                })
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
}
