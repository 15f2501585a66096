//! The threads a test helper (the test server, the fault proxy) spawns: kept
//! as they start, so that the helper's drop can wait for them within a bound
//! and detach, for the caller to report, the ones that do not end. Owns only
//! the join handles.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lock;

/// Join handles of a helper's worker threads.
#[derive(Default)]
pub(crate) struct Threads {
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Threads {
    /// Keeps `handle`, dropping the handles of threads that have finished.
    pub(crate) fn add(&self, handle: JoinHandle<()>) {
        let mut handles = lock(&self.handles);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// Waits for the accept thread `accept` (which adds no thread once it has
    /// ended), then for every kept thread, calling `close_live` before each
    /// look so that sockets opened meanwhile are shut too; gives up after
    /// `bound`. Joins the threads that ended; returns how many still run
    /// (detached).
    pub(crate) fn join_within(
        &self,
        bound: Duration,
        accept: Option<JoinHandle<()>>,
        close_live: impl Fn(),
    ) -> usize {
        let deadline = Instant::now() + bound;
        let mut handles: Vec<JoinHandle<()>> = accept.into_iter().collect();
        while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        handles.extend(lock(&self.handles).drain(..));
        loop {
            close_live();
            if handles.iter().all(|h| h.is_finished()) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = 0;
        for h in handles {
            if h.is_finished() {
                let _ = h.join();
            } else {
                stuck += 1;
            }
        }
        stuck
    }
}
