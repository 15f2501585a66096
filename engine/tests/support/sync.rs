//! Waiting on state that other threads change: a lock that survives a
//! panicking test thread, and [`Watched`], state behind a mutex whose every
//! change wakes the threads waiting on it. Owns no state of its own.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Locks `m`, taking over a lock poisoned by a panicking test thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `changed` until `pred` holds on the state behind `m`; false on
/// timeout. The state's owner notifies `changed` whenever it changes.
pub(crate) fn wait_on<T>(
    m: &Mutex<T>,
    changed: &Condvar,
    timeout: Duration,
    pred: impl Fn(&T) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut g = lock(m);
    loop {
        if pred(&g) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        g = match changed.wait_timeout(g, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

/// State that threads change and tests wait on: a mutex, and a condvar
/// notified after every change made through [`Watched::update`].
#[derive(Default)]
pub(crate) struct Watched<T> {
    value: Mutex<T>,
    changed: Condvar,
}

impl<T> Watched<T> {
    /// Changes the state and wakes every waiter.
    pub(crate) fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut lock(&self.value));
        self.changed.notify_all();
    }

    /// Locks the state to read it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        lock(&self.value)
    }

    /// Waits until `pred` holds on the state; false on timeout.
    pub(crate) fn wait_until(&self, timeout: Duration, pred: impl Fn(&T) -> bool) -> bool {
        wait_on(&self.value, &self.changed, timeout, pred)
    }
}
