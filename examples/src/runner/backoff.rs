//! Exponential backoff with jitter for the runner's poll loop: every error
//! or unexpected status doubles the wait (up to a cap), each wait is drawn
//! from the upper half of the current step so a fleet that failed together
//! does not retry together, and only an answer that means "the coordinator
//! works" (201, 204) resets it.

use std::time::Duration;

/// The wait before the next attempt.
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    step: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Steps `base`, 2×`base`, … up to `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(base, max, fastrand::Rng::new())
    }

    fn with_rng(base: Duration, max: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            step: base,
            rng,
        }
    }

    /// The wait after a failure: uniform in [step/2, step]; the step then
    /// doubles, up to the cap.
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// The coordinator answered as it should: start again from `base`.
    pub(crate) fn reset(&mut self) {
        self.step = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_cap_and_reset_to_the_base() {
        let s = Duration::from_secs;
        let mut b = Backoff::with_rng(s(1), s(30), fastrand::Rng::with_seed(7));
        let mut steps = Vec::new();
        for _ in 0..8 {
            steps.push(b.next());
        }
        let expected_steps = [1, 2, 4, 8, 16, 30, 30, 30];
        for (wait, step) in steps.iter().zip(expected_steps) {
            assert!(
                *wait >= s(step) / 2 && *wait <= s(step),
                "{wait:?} outside [{step}/2, {step}] s: {steps:?}"
            );
        }
        // Jittered: the capped waits are not all the same.
        assert!(steps[5..].windows(2).any(|w| w[0] != w[1]), "{steps:?}");
        b.reset();
        assert!(
            b.next() <= s(1),
            "the first wait after a reset is the base again"
        );
        let second = b.next();
        assert!(second >= s(1) && second <= s(2), "{second:?}");
    }
}
