//! The state all threads of one test server share: the counters and records
//! that tests read and wait on (one mutex, one condvar notified on every
//! change), the handler and hooks a test may swap while it runs, the tracked
//! sockets of live connections, and the stop flag with the interruptible
//! sleep that delays and long polls wait in. Threads change it only through
//! `update`, `untrack` and the atomics.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use rustls::server::ServerConfig;

use super::request::{ConnInfo, RecordedRequest};
use super::tls::RotatingResolver;
use super::{AcceptHook, Handler, OnHead};
use crate::support::sync::{lock, wait_on, Watched};
use crate::support::threads::Threads;

/// Counters of one server, a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Connections whose thread is still running.
    pub connections_open: u64,
    /// Completed full TLS handshakes (including HelloRetryRequest ones).
    pub handshakes_full: u64,
    /// Completed resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// TLS handshakes that failed (see [`TestServer::tls_errors`]).
    pub handshakes_failed: u64,
    /// Requests parsed (the head, and the body unless an on-head plan
    /// answered before its end).
    pub requests: u64,
    /// Replies written to the end (not cut, not stalled).
    pub replies_completed: u64,
    /// Connections the server closed for idleness.
    pub idle_closed: u64,
    /// Requests rejected as malformed (answered 400, then closed).
    pub bad_requests: u64,
}

impl ServerStats {
    /// Full plus resumed handshakes.
    pub fn handshakes(&self) -> u64 {
        self.handshakes_full + self.handshakes_resumed
    }
}

/// What the server has seen; behind `Shared::state`, notified on `changed`.
#[derive(Default)]
pub(super) struct State {
    pub(super) stats: ServerStats,
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) tls_errors: Vec<String>,
    pub(super) conn_infos: Vec<ConnInfo>,
}

/// What every thread of one server shares.
pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<Arc<ServerConfig>>,
    pub(super) resolver: Option<Arc<RotatingResolver>>,
    pub(super) handler: RwLock<Handler>,
    pub(super) accept: RwLock<Option<AcceptHook>>,
    pub(super) on_head: RwLock<Option<OnHead>>,
    /// Request bodies are kept in [`RecordedRequest::body`] (else only hashed).
    pub(super) keep_bodies: AtomicBool,
    pub(super) idle_ms: AtomicU64,
    pub(super) keepalive_requests: AtomicU64,
    pub(super) stopping: AtomicBool,
    pub(super) state: Watched<State>,
    pub(super) stop_lock: Mutex<()>,
    pub(super) stop_cv: Condvar,
    /// Clones of live connections' sockets, to shut them down on drop.
    pub(super) conns: Mutex<HashMap<u64, TcpStream>>,
    pub(super) threads: Threads,
    pub(super) next_conn: AtomicU64,
}

impl Shared {
    /// A server listening on `addr`, with no idle timeout or request limit yet.
    pub(super) fn new(
        addr: SocketAddr,
        tls: Option<(Arc<ServerConfig>, Arc<RotatingResolver>)>,
        handler: Handler,
        accept: Option<AcceptHook>,
    ) -> Shared {
        let (tls, resolver) = tls.unzip();
        Shared {
            addr,
            tls,
            resolver,
            handler: RwLock::new(handler),
            accept: RwLock::new(accept),
            on_head: RwLock::new(None),
            keep_bodies: AtomicBool::new(true),
            idle_ms: AtomicU64::new(0),
            keepalive_requests: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            state: Watched::default(),
            stop_lock: Mutex::new(()),
            stop_cv: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            threads: Threads::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`; false if the server is shutting down.
    pub(super) fn sleep(&self, d: Duration) -> bool {
        // Drop notifies `stop_cv` under `stop_lock` when it sets the flag.
        !wait_on(&self.stop_lock, &self.stop_cv, d, |_| self.stopping())
    }

    pub(super) fn stall(&self) {
        while self.sleep(Duration::from_secs(3600)) {}
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut State)) {
        self.state.update(f);
    }

    /// Sets (or clears) the idle timeout for waits that start from now on.
    pub(super) fn set_idle_timeout(&self, d: Option<Duration>) {
        let ms = d.map_or(0, |d| d.as_millis().max(1) as u64);
        self.idle_ms.store(ms, Ordering::SeqCst);
    }

    /// Sets (or clears) the per-connection request limit.
    pub(super) fn set_keepalive_requests(&self, n: Option<u64>) {
        let n = n.map_or(0, |n| n.max(1));
        self.keepalive_requests.store(n, Ordering::SeqCst);
    }

    pub(super) fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(super) fn untrack(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Shuts `how` down on every live connection's socket.
    pub(super) fn shutdown_conns(&self, how: Shutdown) {
        for s in lock(&self.conns).values() {
            let _ = s.shutdown(how);
        }
    }
}
