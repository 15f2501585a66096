//! The process's resident memory, for tests that bound it: [`rss_kib`]
//! reads `VmRSS` from `/proc/self/status` (Linux), and [`RssWatch`] samples
//! it on a thread of its own and keeps the peak, so a spike between two
//! looks of the test is still seen, and can stop a run whose memory runs
//! away before it takes the machine's ([`RssWatch::with_limit`]). Owns only
//! its sampling thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// `VmRSS` of this process in KiB; `None` where `/proc` does not say.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples [`rss_kib`] every `every` until stopped; the peak is kept.
pub struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatch {
    /// Starts sampling now (the first sample is taken at once).
    pub fn start(every: Duration) -> RssWatch {
        RssWatch::with_limit(every, u64::MAX, || {})
    }

    /// As [`RssWatch::start`], and calls `over` (once, on the sampling
    /// thread) when a sample exceeds `limit_kib`: say, to shut down the
    /// client whose memory runs away.
    pub fn with_limit(
        every: Duration,
        limit_kib: u64,
        over: impl FnOnce() + Send + 'static,
    ) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib().unwrap_or(0)));
        let (stop, stopped) = mpsc::channel::<()>();
        let p = peak.clone();
        let mut over = Some(over);
        let thread = std::thread::Builder::new()
            .name("rss-watch".into())
            .spawn(move || loop {
                let now = rss_kib().unwrap_or(0);
                p.fetch_max(now, Ordering::Relaxed);
                if now > limit_kib {
                    if let Some(f) = over.take() {
                        f();
                    }
                }
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .expect("spawn the RSS sampler");
        RssWatch {
            peak,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The highest sample so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak
            .load(Ordering::Relaxed)
            .max(rss_kib().unwrap_or(0))
    }

    /// Stops sampling; the peak, in KiB.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.peak_kib()
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.halt();
    }
}
