//! Name resolution off the event loop: a small thread pool (or the embedder's
//! own [`Resolver`]) whose answers come back through the loop's waker.
//!
//! Lookups are queued per name: connections that ask for a name already
//! queued or being looked up wait for that one lookup, so a slow name holds
//! at most one thread and lookups of other names go on beside it (up to
//! `Config::dns_threads` names at once). A connection that closes before
//! its answer (its request ended, the engine shut down) takes its ask back
//! when its [`Pending`] drops: a name nobody waits for any more is never
//! looked up. Shutting down waits a short while ([`STOP_WAIT`]) for lookups
//! in progress and then leaves their threads to finish on their own.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::keys::ConnKey;

/// Resolves a host name to the addresses to try, in order.
///
/// Called on one of the engine's resolver threads, never on the loop, so it
/// may block. The engine resolves afresh for every new connection, so DNS
/// changes reach the next connection (connections that ask while a lookup
/// of the same name is under way share its answer).
pub trait Resolver: Send + Sync {
    /// Look up `host`; the port is to be set on every returned address.
    ///
    /// # Errors
    /// Any error ends the connection attempt with [`Error::Resolve`](crate::Error::Resolve).
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The default resolver: the system's `getaddrinfo` through `ToSocketAddrs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// How long stopping the pool waits for lookups in progress: a system
/// lookup cannot be interrupted, and a shutdown must not take as long as
/// the slowest name. A thread still inside a lookup then finishes it and
/// exits on its own; its answer is dropped.
pub(crate) const STOP_WAIT: Duration = Duration::from_millis(100);

/// One finished lookup, for the connection `conn` with attempt `serial`.
pub(crate) struct Answer {
    pub(crate) conn: ConnKey,
    pub(crate) serial: u64,
    pub(crate) result: io::Result<Vec<SocketAddr>>,
}

/// A name to look up and the connections waiting for it.
struct Lookup {
    host: String,
    port: u16,
    waiters: Vec<(ConnKey, u64)>,
}

impl Lookup {
    fn is(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host == host
    }
}

#[derive(Default)]
struct State {
    /// Names no thread has taken yet, oldest first (each once).
    queued: VecDeque<Lookup>,
    /// Names being looked up now (each once, none of them queued).
    running: Vec<Lookup>,
    answers: Vec<Answer>,
    /// Live threads, and how many of them wait for work.
    threads: usize,
    idle: usize,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// A name was queued, or the pool stopped.
    work: Condvar,
    /// A thread exited.
    exited: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take back the ask of connection `conn` (attempt `serial`): a queued
    /// name nobody else waits for is dropped, and a running lookup's answer
    /// will not be delivered to it.
    fn cancel(&self, conn: ConnKey, serial: u64) {
        let mut state = self.lock();
        let State {
            queued, running, ..
        } = &mut *state;
        for lookup in queued.iter_mut().chain(running.iter_mut()) {
            lookup.waiters.retain(|&w| w != (conn, serial));
        }
        queued.retain(|l| !l.waiters.is_empty());
    }
}

/// A connection's lookup, queued or under way. Dropping it (the connection
/// closed, or its answer came) takes the ask back.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    conn: ConnKey,
    serial: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.cancel(self.conn, self.serial);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The resolver thread pool. Threads start on demand, up to `max_threads`.
pub(crate) struct DnsPool {
    resolver: Arc<dyn Resolver>,
    max_threads: usize,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
}

impl DnsPool {
    pub(crate) fn new(
        resolver: Arc<dyn Resolver>,
        max_threads: usize,
        waker: Arc<mio::Waker>,
    ) -> DnsPool {
        DnsPool {
            resolver,
            max_threads: max_threads.max(1),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                exited: Condvar::new(),
            }),
            waker,
        }
    }

    /// Queue a lookup for connection `conn` (attempt `serial`); the answer
    /// arrives through [`DnsPool::take_answers`] after the waker fires,
    /// unless the returned [`Pending`] is dropped first.
    pub(crate) fn submit(&mut self, conn: ConnKey, serial: u64, host: &str, port: u16) -> Pending {
        let pending = Pending {
            shared: Arc::clone(&self.shared),
            conn,
            serial,
        };
        let mut state = self.shared.lock();
        if state.stopped {
            log::warn!("resolver pool has stopped; lookup of {host} dropped");
            return pending;
        }
        let waiter = (conn, serial);
        let State {
            queued, running, ..
        } = &mut *state;
        if let Some(lookup) = running
            .iter_mut()
            .chain(queued.iter_mut())
            .find(|l| l.is(host, port))
        {
            lookup.waiters.push(waiter);
            return pending;
        }
        state.queued.push_back(Lookup {
            host: host.to_owned(),
            port,
            waiters: vec![waiter],
        });
        if state.idle == 0 && state.threads < self.max_threads {
            state.threads += 1;
            drop(state);
            self.spawn_thread();
        } else {
            drop(state);
            self.shared.work.notify_one();
        }
        pending
    }

    fn spawn_thread(&mut self) {
        let shared = Arc::clone(&self.shared);
        let waker = Arc::clone(&self.waker);
        let resolver = Arc::clone(&self.resolver);
        let spawned = std::thread::Builder::new()
            .name("rotary-dns".into())
            .spawn(move || serve(&shared, &*resolver, &waker));
        if let Err(e) = spawned {
            log::error!("could not start a resolver thread: {e}");
            let mut state = self.shared.lock();
            state.threads -= 1;
            if state.threads == 0 {
                // Nobody would ever answer: the lookups fail now, and the
                // engine fails their connections with the error.
                let failed: Vec<Lookup> = state.queued.drain(..).collect();
                for lookup in failed {
                    deliver(
                        &mut state,
                        lookup.waiters,
                        &Err(io::Error::other(e.to_string())),
                    );
                }
                drop(state);
                let _ = self.waker.wake();
            }
        }
        // The handle is dropped: a thread is never joined, only counted
        // (see `stop`).
    }

    /// Move the finished lookups into `out`.
    pub(crate) fn take_answers(&self, out: &mut Vec<Answer>) {
        let mut state = self.shared.lock();
        out.append(&mut state.answers);
        shrink_after_burst(&mut state.answers);
    }

    /// Stop the threads: queued lookups are dropped, idle threads exit at
    /// once. With `join`, wait up to [`STOP_WAIT`] for threads inside a
    /// lookup; one still there afterwards exits when its lookup returns
    /// (its answer dropped), and `threads` counts it until then.
    pub(crate) fn stop(&mut self, join: bool) {
        let mut state = self.shared.lock();
        state.stopped = true;
        state.queued.clear();
        state.running.iter_mut().for_each(|l| l.waiters.clear());
        state.answers.clear();
        self.shared.work.notify_all();
        if !join {
            return;
        }
        let until = Instant::now() + STOP_WAIT;
        while state.threads > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::debug!(
                    "{} resolver thread(s) still inside a lookup at shutdown: left to finish it",
                    state.threads
                );
                return;
            }
            state = match self.shared.exited.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Live resolver threads (a thread left inside a lookup at shutdown
    /// counts until it returns).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

/// A resolver thread: take the oldest queued name, look it up without the
/// lock, hand the answer to every connection still waiting for it; wait
/// when there is nothing to do; exit when the pool stops.
fn serve(shared: &Shared, resolver: &dyn Resolver, waker: &mio::Waker) {
    let mut state = shared.lock();
    loop {
        if state.stopped {
            break;
        }
        let Some(lookup) = state.queued.pop_front() else {
            state.idle += 1;
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
            continue;
        };
        let (host, port) = (lookup.host.clone(), lookup.port);
        state.running.push(lookup);
        drop(state);
        let result = catch_unwind(AssertUnwindSafe(|| resolver.resolve(&host, port)))
            .unwrap_or_else(|_| Err(io::Error::other("the resolver panicked")))
            .and_then(|addrs| match addrs.is_empty() {
                true => Err(io::Error::new(io::ErrorKind::NotFound, "no addresses")),
                false => Ok(addrs),
            });
        state = shared.lock();
        let Some(at) = state.running.iter().position(|l| l.is(&host, port)) else {
            continue;
        };
        let lookup = state.running.swap_remove(at);
        if !lookup.waiters.is_empty() && !state.stopped {
            deliver(&mut state, lookup.waiters, &result);
            let _ = waker.wake();
        }
    }
    state.threads -= 1;
    drop(state);
    shared.exited.notify_all();
}

/// One answer per waiting connection (an error is copied by kind and text).
fn deliver(state: &mut State, waiters: Vec<(ConnKey, u64)>, result: &io::Result<Vec<SocketAddr>>) {
    for (conn, serial) in waiters {
        let result = match result {
            Ok(addrs) => Ok(addrs.clone()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        state.answers.push(Answer {
            conn,
            serial,
            result,
        });
    }
}

/// An emptied list of answers that a burst of lookups grew gives its memory
/// back (a steady trickle of connections keeps its room).
pub(crate) fn shrink_after_burst(answers: &mut Vec<Answer>) {
    if answers.is_empty() && answers.capacity() > ANSWERS_KEPT {
        *answers = Vec::new();
    }
}

/// Answers an empty list keeps room for.
const ANSWERS_KEPT: usize = 64;
