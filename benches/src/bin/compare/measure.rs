//! What a client process measures about itself: CPU time, RSS, latencies, and
//! the one `RESULT` line it hands back to the parent.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// CPU time of this process (all threads) from `getrusage(RUSAGE_SELF)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) user_us: f64,
    pub(crate) sys_us: f64,
    pub(crate) max_rss_kib: u64,
}

pub(crate) fn cpu() -> Cpu {
    // SAFETY: getrusage writes one `rusage` into memory we own; zeroed is a
    // valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Cpu::default();
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Cpu {
        user_us: us(ru.ru_utime),
        sys_us: us(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// Resident set size now (`VmRSS` in `/proc/self/status`), KiB.
pub(crate) fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Hand freed heap memory back to the kernel (glibc `malloc_trim(0)`), so
/// an RSS reading after it counts live allocations, not the allocator's
/// free lists left behind by thousands of finished handshakes.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raise `RLIMIT_NOFILE` to its hard limit; returns the soft limit now in force.
pub(crate) fn raise_nofile() -> u64 {
    // SAFETY: zeroed `rlimit` is valid; get/setrlimit read or write one we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let want = lim.rlim_max;
    if lim.rlim_cur < want {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to a live `rlimit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return want as u64;
        }
    }
    lim.rlim_cur as u64
}

/// Warm-up, then a timed window, then stop: the phases of a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Warm,
    Measure,
    Done,
}

/// How long a load run warms up and measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Warm-up ends once this many requests completed ...
    pub(crate) warm_requests: u64,
    /// ... and at least this much time passed.
    pub(crate) warm_min: Duration,
    /// Length of the measured window.
    pub(crate) measure: Duration,
}

/// Longest a warm-up may take before the run is declared broken.
pub(crate) const WARM_LIMIT: Duration = Duration::from_secs(60);

/// The numbers of one load run's measured window.
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) wall: Duration,
    pub(crate) user_us: f64,
    pub(crate) sys_us: f64,
    /// Latencies of the requests that succeeded in the window, µs.
    pub(crate) latencies_us: Latencies,
}

/// Longest latency told apart, µs; longer ones count as this (the client
/// limit is 300 s, a window a few seconds).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Request latencies in µs: an HDR histogram with 3 significant digits
/// (fixed memory, ~70 KiB), not a vector of every sample.
#[derive(Debug)]
pub(crate) struct Latencies(Histogram<u32>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("1 µs ..= 60 s at 3 digits is a valid histogram"),
        )
    }
}

impl Latencies {
    /// Counts one request that started at `t0` and ended now.
    pub(crate) fn record_since(&mut self, t0: Instant) {
        self.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// Counts one request of `us` µs (0 counts as 1, beyond the bound as it).
    fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Adds another set of latencies to this one.
    pub(crate) fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// `q`th quantile (0.0..=1.0), µs; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }
}

/// Tracks phases and CPU snapshots of one load run.
pub(crate) struct Clock {
    schedule: Schedule,
    start: Instant,
    phase: Phase,
    window_start: Option<(Instant, Cpu)>,
    window_end: Option<(Instant, Cpu)>,
}

impl Clock {
    pub(crate) fn new(schedule: Schedule) -> Clock {
        Clock {
            schedule,
            start: Instant::now(),
            phase: Phase::Warm,
            window_start: None,
            window_end: None,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Moves to the next phase when due; `completed` counts every request
    /// finished so far. Errors when the warm-up never ends.
    pub(crate) fn tick(&mut self, completed: u64) -> Result<Phase, String> {
        let now = Instant::now();
        match self.phase {
            Phase::Warm => {
                let waited = now - self.start;
                if completed >= self.schedule.warm_requests && waited >= self.schedule.warm_min {
                    self.phase = Phase::Measure;
                    self.window_start = Some((now, cpu()));
                } else if waited > WARM_LIMIT {
                    return Err(format!(
                        "warm-up did not finish in {WARM_LIMIT:?} ({completed} of {} requests)",
                        self.schedule.warm_requests
                    ));
                }
            }
            Phase::Measure => {
                let (t0, _) = self.window_start.expect("Measure phase has a window start");
                if now - t0 >= self.schedule.measure {
                    self.phase = Phase::Done;
                    self.window_end = Some((now, cpu()));
                }
            }
            Phase::Done => {}
        }
        Ok(self.phase)
    }

    /// The window's wall time and CPU, once `Done`.
    pub(crate) fn window(&self) -> Window {
        match (self.window_start, self.window_end) {
            (Some((t0, c0)), Some((t1, c1))) => Window {
                wall: t1 - t0,
                user_us: c1.user_us - c0.user_us,
                sys_us: c1.sys_us - c0.sys_us,
                ..Window::default()
            },
            _ => Window::default(),
        }
    }
}

/// Builds the `RESULT k=v ...` line a client prints for the parent.
#[derive(Default)]
pub(crate) struct Report(String);

impl Report {
    pub(crate) fn put(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Report {
        let _ = write!(self.0, " {key}={value}");
        self
    }

    /// Adds the load-window keys: requests, failed, wall_s, req_per_s,
    /// user_us_per_req, sys_us_per_req, p50_us, p99_us.
    pub(crate) fn window(&mut self, w: Window) -> &mut Report {
        let n = w.requests.max(1) as f64;
        let secs = w.wall.as_secs_f64();
        self.put("requests", w.requests)
            .put("failed", w.failed)
            .put("wall_s", format!("{secs:.4}"))
            .put(
                "req_per_s",
                format!("{:.1}", w.requests as f64 / secs.max(1e-9)),
            )
            .put("user_us_per_req", format!("{:.3}", w.user_us / n))
            .put("sys_us_per_req", format!("{:.3}", w.sys_us / n))
            .put("cpu_s", format!("{:.4}", (w.user_us + w.sys_us) / 1e6))
            .put("p50_us", w.latencies_us.quantile(0.50))
            .put("p99_us", w.latencies_us.quantile(0.99))
    }

    pub(crate) fn line(&self) -> String {
        format!("RESULT{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_give_quantiles_within_three_digits_and_zero_when_empty() {
        let mut l = Latencies::default();
        assert_eq!((l.quantile(0.5), l.quantile(0.99)), (0, 0));
        // 1..=1000 µs once each, and one request far beyond the bound.
        for us in 1..=1000 {
            l.record(us);
        }
        l.record(u64::MAX);
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(l.quantile(0.5), 501), "{}", l.quantile(0.5));
        assert!(near(l.quantile(0.99), 991), "{}", l.quantile(0.99));
        assert!(near(l.quantile(1.0), MAX_LATENCY_US), "{}", l.quantile(1.0));
        let mut other = Latencies::default();
        other.record(0);
        l.add(&other);
        assert_eq!(l.quantile(0.0), 1);
    }
}
