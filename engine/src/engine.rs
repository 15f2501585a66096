//! The event loop: pools of connections per origin, requests, the timer
//! wheel, and the decisions taken at each readiness event and deadline.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Method;
use mio::{Events, Poll, Registry, Token, Waker};
use rotary_proto::{Codec, Event as CodecEvent, ResponseHead, State as CodecState, TargetForm};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use slab::Slab;

use crate::conn::{Conn, ConnTimer, IoFailure, ReadPass, Stage};
use crate::dns::{Answer, DnsPool, SystemResolver};
use crate::session::Session;
use crate::sock::Sock;
use crate::stats::OriginStats;
use crate::tls::TlsState;
use crate::wheel::{TimerKey, Wheel};
use crate::{
    CloseReason, Config, ConnId, ConnectionInfo, Deadline, Error, Event, Handshake, OnChainChange,
    Origin, PeerChain, Phase, Policy, RequestId, RequestOptions, Resumption, ServedBy, Stats,
};

/// Hashes a [`RequestId`] as itself: ids are distinct sequential numbers, so
/// SipHash's protection against chosen keys buys nothing for the `ids` map.
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over hashbrown's top 7 control bits too.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Plaintext bytes read from one connection per readiness event before the
/// loop moves on to others (fairness, and a bound on queued body events).
const READ_BUDGET: usize = 256 * 1024;
/// How far a drive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Do not read (only write what is pending).
    Skip,
    /// Stop at a short read: the socket is drained and new data raises a
    /// new edge. Only safe when the event did not report a hang-up, whose
    /// EOF would otherwise never be read.
    UntilShort,
    /// Read until `WouldBlock` or EOF.
    UntilWouldBlock,
}

fn read_mode(read_closed: bool) -> ReadMode {
    if read_closed {
        ReadMode::UntilWouldBlock
    } else {
        ReadMode::UntilShort
    }
}

/// Size of the one read buffer shared by every connection.
const SCRATCH: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
enum ReqTimer {
    Total = 0,
    FirstByte = 1,
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Conn(usize, ConnTimer),
    Req(usize, ReqTimer),
    /// The chain probe of a pool.
    Probe(usize),
}

enum Command {
    Submit(Box<(RequestId, http::Request<Bytes>, RequestOptions)>),
    Cancel(RequestId),
}

struct Req {
    id: RequestId,
    pool: usize,
    request: http::Request<Bytes>,
    opts: RequestOptions,
    conn: Option<usize>,
    timers: [Option<TimerKey>; 2],
    retried: bool,
    fresh_only: bool,
    reused: bool,
    head: Option<ResponseHead>,
    body: BytesMut,
    first_chunk: Option<Bytes>,
    body_len: usize,
}

struct Pool {
    origin: Origin,
    policy: Policy,
    conns: Vec<usize>,
    /// Idle connections as (id, slab key), ascending by id: the youngest is
    /// last, the oldest first.
    idle: Vec<(ConnId, usize)>,
    queue: VecDeque<usize>,
    connecting: usize,
    last_used: Option<Instant>,
    chain: Option<Arc<PeerChain>>,
    /// When a full handshake last stored fresh session tickets.
    full_handshake_at: Option<Instant>,
    /// A connection retired for age or chain: forget stored sessions.
    purge_sessions: bool,
    probe_timer: Option<TimerKey>,
    stats: OriginStats,
}

/// A readiness-driven HTTP/1.1-over-TLS client.
///
/// One engine per thread. Drive it with [`Engine::poll`] and drain
/// [`Engine::next_event`], or embed it in a host's mio loop with
/// [`Engine::embedded`]; submit from other threads through [`Engine::handle`].
pub struct Engine {
    poll: Option<Poll>,
    registry: Registry,
    token_base: usize,
    token_count: usize,
    events: Events,
    tokens: Vec<(Token, bool)>,
    waker: Arc<Waker>,
    wheel: Wheel<Timer>,
    /// The latest instant `handle_timeouts` was given: a host's clock that
    /// goes back is read as this, as the wheel reads it.
    clock: Instant,
    conns: Slab<Conn>,
    reqs: Slab<Req>,
    ids: HashMap<RequestId, usize, IdHash>,
    pools: Vec<Pool>,
    pool_index: HashMap<Origin, usize>,
    /// The scheme and authority of the last submitted URI and its pool:
    /// consecutive requests to one origin skip building an `Origin`.
    last_pool: Option<(bool, http::uri::Authority, usize)>,
    policies: HashMap<Origin, Policy>,
    out: VecDeque<Event>,
    dns: DnsPool,
    answers: Vec<Answer>,
    tls: TlsState,
    config: Config,
    stats: Stats,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
    next_req: Arc<AtomicU64>,
    next_conn: u64,
    scratch: Vec<u8>,
    /// Outgoing TLS records of one connection, from encryption to the socket.
    stage: Vec<u8>,
    read_again: Vec<(usize, ConnId)>,
    shut: bool,
}

/// A `Send + Clone` handle that submits and cancels requests from other
/// threads and wakes the engine's loop. Events still come out of the engine.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    next_req: Arc<AtomicU64>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Submit a request; its events come out of the engine's `next_event`.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn submit(
        &self,
        request: http::Request<Bytes>,
        opts: RequestOptions,
    ) -> Result<RequestId, Error> {
        let id = RequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.tx
            .send(Command::Submit(Box::new((id, request, opts))))
            .map_err(|_| Error::Shutdown)?;
        let _ = self.waker.wake();
        Ok(id)
    }

    /// Cancel a request; it ends with [`Error::Cancelled`] unless it already ended.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn cancel(&self, id: RequestId) -> Result<(), Error> {
        self.tx
            .send(Command::Cancel(id))
            .map_err(|_| Error::Shutdown)?;
        let _ = self.waker.wake();
        Ok(())
    }
}

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

/// The idle limit after a server's `Keep-Alive: timeout` hint.
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

/// Which idle connection gets the next request: the youngest (highest id,
/// so older ones age out unused), and for a retry that must not reuse, only
/// one that has carried nothing yet (`fresh` tells which). `idle` is sorted
/// by id, so the usual pick is the last entry. Returns the index in `idle`.
pub(crate) fn pick_idle(
    idle: &[(ConnId, usize)],
    fresh_only: Option<&dyn Fn(usize) -> bool>,
) -> Option<usize> {
    match fresh_only {
        None => idle.len().checked_sub(1),
        Some(fresh) => idle.iter().rposition(|&(_, key)| fresh(key)),
    }
}

/// Add an idle connection to `idle`, keeping it sorted by id.
fn insert_idle(idle: &mut Vec<(ConnId, usize)>, id: ConnId, key: usize) {
    // A connection going idle is usually the youngest or near it.
    let at = idle.partition_point(|&(other, _)| other < id);
    idle.insert(at, (id, key));
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

impl Engine {
    /// An engine that owns its `mio::Poll`; drive it with [`Engine::poll`].
    ///
    /// # Errors
    /// An I/O error from creating the poll, or `InvalidInput` when the trust
    /// configuration yields no usable anchors (unreadable or empty CA file).
    pub fn new(config: Config) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Engine::build(Some(poll), registry, 0, usize::MAX, config)
    }

    /// An engine embedded in a host's mio loop: its waker and sockets are
    /// registered on `registry` under tokens `token_base ..
    /// token_base + token_count`. The host routes events for those tokens to
    /// [`Engine::handle_event`], sleeps at most [`Engine::next_timeout`], and
    /// calls [`Engine::handle_timeouts`] after every wake-up. At most
    /// `token_count - 1` connections are open at once.
    ///
    /// # Errors
    /// As [`Engine::new`]; `InvalidInput` when `token_count < 2`.
    pub fn embedded(
        registry: &Registry,
        token_base: usize,
        token_count: usize,
        config: Config,
    ) -> io::Result<Engine> {
        if token_count < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "token_count must be at least 2",
            ));
        }
        Engine::build(None, registry.try_clone()?, token_base, token_count, config)
    }

    fn build(
        poll: Option<Poll>,
        registry: Registry,
        token_base: usize,
        token_count: usize,
        config: Config,
    ) -> io::Result<Engine> {
        let tls = TlsState::new(&config.trust)?;
        let waker = Arc::new(Waker::new(&registry, Token(token_base))?);
        let resolver = config
            .resolver
            .clone()
            .unwrap_or_else(|| Arc::new(SystemResolver));
        let dns = DnsPool::new(resolver, config.dns_threads, waker.clone());
        let (cmd_tx, cmd_rx) = mpsc::channel();
        Ok(Engine {
            poll,
            registry,
            token_base,
            token_count,
            events: Events::with_capacity(1024),
            tokens: Vec::with_capacity(1024),
            waker,
            wheel: Wheel::new(Instant::now()),
            clock: Instant::now(),
            conns: Slab::new(),
            reqs: Slab::new(),
            ids: HashMap::default(),
            last_pool: None,
            pools: Vec::new(),
            pool_index: HashMap::new(),
            policies: HashMap::new(),
            out: VecDeque::new(),
            dns,
            answers: Vec::new(),
            tls,
            config,
            stats: Stats::default(),
            cmd_tx,
            cmd_rx,
            next_req: Arc::new(AtomicU64::new(1)),
            next_conn: 1,
            scratch: vec![0; SCRATCH],
            stage: Vec::with_capacity(16 * 1024 + 256),
            read_again: Vec::new(),
            shut: false,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.cmd_tx.clone(),
            waker: self.waker.clone(),
            next_req: self.next_req.clone(),
        }
    }

    /// Override the lifetime policy for one origin (existing connections
    /// keep the deadlines they already have).
    pub fn set_origin_policy(&mut self, origin: Origin, policy: Policy) {
        if let Some(&p) = self.pool_index.get(&origin) {
            self.pools[p].policy = policy;
        }
        self.policies.insert(origin, policy);
    }

    /// The policy in force for `origin`.
    pub fn origin_policy(&self, origin: &Origin) -> Policy {
        self.policies
            .get(origin)
            .copied()
            .unwrap_or(self.config.policy)
    }

    /// The verified chain of the origin's newest TLS connection.
    pub fn peer_chain(&self, origin: &Origin) -> Option<Arc<PeerChain>> {
        let p = *self.pool_index.get(origin)?;
        self.pools[p].chain.clone()
    }

    /// Submit a request (absolute URI: `http://` or `https://`). The request
    /// ends with exactly one terminal event; an invalid request ends at once
    /// with [`Error::InvalidRequest`], a request submitted after
    /// [`Engine::shutdown`] with [`Error::Shutdown`].
    pub fn submit(&mut self, request: http::Request<Bytes>, opts: RequestOptions) -> RequestId {
        let id = RequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.submit_with_id(id, request, opts, Instant::now());
        id
    }

    fn submit_with_id(
        &mut self,
        id: RequestId,
        request: http::Request<Bytes>,
        opts: RequestOptions,
        now: Instant,
    ) {
        if self.shut {
            return self.emit_failed(id, Error::Shutdown, false);
        }
        let p = match self.pool_of_uri(request.uri()) {
            Ok(p) => p,
            Err(e) => return self.emit_failed(id, e, false),
        };
        let key = self.reqs.insert(Req {
            id,
            pool: p,
            request,
            opts,
            conn: None,
            timers: [None; 2],
            retried: false,
            fresh_only: false,
            reused: false,
            head: None,
            body: BytesMut::new(),
            first_chunk: None,
            body_len: 0,
        });
        self.ids.insert(id, key);
        if let Some(d) = opts.deadline {
            self.set_req_timer(key, ReqTimer::Total, now + d);
        }
        let pool = &mut self.pools[p];
        pool.last_used = Some(now);
        pool.queue.push_back(key);
        self.dispatch(p, now);
    }

    /// Cancel a request: it ends with [`Error::Cancelled`] (its connection,
    /// if mid-exchange, is closed). Unknown or finished ids are ignored.
    pub fn cancel(&mut self, id: RequestId) {
        let Some(&rk) = self.ids.get(&id) else { return };
        let now = Instant::now();
        self.abort_request(rk, Error::Cancelled, CloseReason::Cancelled, now);
    }

    /// Run the loop until the request ends; returns its response. Events
    /// about other requests and connections stay queued for `next_event`.
    ///
    /// # Errors
    /// The request's error; [`Error::InvalidRequest`] for an embedded engine
    /// (the host owns the loop there).
    pub fn execute(
        &mut self,
        request: http::Request<Bytes>,
        opts: RequestOptions,
    ) -> Result<http::Response<Bytes>, Error> {
        if self.poll.is_none() {
            return Err(Error::InvalidRequest(
                "execute needs an engine that owns its poll".into(),
            ));
        }
        let id = self.submit(request, opts.streaming(false));
        loop {
            let found = self
                .out
                .iter()
                .position(|e| e.is_terminal() && e.request_id() == Some(id));
            if let Some(pos) = found {
                return match self.out.remove(pos) {
                    Some(Event::Response { response, .. }) => Ok(response),
                    Some(Event::Failed { error, .. }) => Err(error),
                    _ => Err(Error::Shutdown),
                };
            }
            if let Err(e) = self.poll(None) {
                self.cancel(id);
                return Err(Error::io(Phase::Request, e));
            }
        }
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.out.pop_front()
    }

    /// Block until I/O, the next deadline or `timeout` (whichever is first;
    /// `None` = no limit beyond the deadlines), then process what happened.
    /// Returns at once when events are already waiting.
    ///
    /// # Errors
    /// An error from `mio::Poll::poll`; `InvalidInput` for an embedded engine.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        self.drain_commands(now);
        let mut wait = timeout;
        if let Some(t) = self.next_timeout(now) {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        if !self.out.is_empty() {
            wait = Some(Duration::ZERO);
        }
        let Some(poll) = self.poll.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "embedded engine: the host polls",
            ));
        };
        match poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        tokens.extend(
            self.events
                .iter()
                .map(|e| (e.token(), e.is_read_closed() || e.is_error())),
        );
        let now = Instant::now();
        for &(t, closed) in &tokens {
            self.on_token(t, read_mode(closed), now);
        }
        self.tokens = tokens;
        self.handle_timeouts(Instant::now());
        Ok(())
    }

    /// Embedded mode: handle one mio event. Returns false when the token is
    /// not the engine's.
    pub fn handle_event(&mut self, event: &mio::event::Event) -> bool {
        let t = event.token().0;
        if t < self.token_base || t - self.token_base >= self.token_count {
            return false;
        }
        let closed = event.is_read_closed() || event.is_error();
        self.on_token(event.token(), read_mode(closed), Instant::now());
        true
    }

    /// How long the host may sleep before calling [`Engine::handle_timeouts`]:
    /// the next deadline, zero when work is pending, `None` when nothing is
    /// scheduled.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        self.wheel
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
    }

    /// Fire every deadline due at `now`, and finish deferred work (resolver
    /// answers, submissions from handles, reads cut short by the budget).
    /// Harmless to call more often than needed.
    pub fn handle_timeouts(&mut self, now: Instant) {
        // The wheel fires what is due by the latest time it has seen; the
        // handlers must judge by that time too, or a re-armed timer would be
        // due again at once, forever.
        let now = now.max(self.clock);
        self.clock = now;
        self.drain_commands(now);
        self.drain_answers(now);
        let again = std::mem::take(&mut self.read_again);
        for (key, id) in again {
            if self.conns.get(key).is_some_and(|c| c.id == id) {
                self.drive(key, ReadMode::UntilWouldBlock, now);
            }
        }
        while let Some((_, timer)) = self.wheel.poll_expired(now) {
            self.on_timer(timer, now);
        }
    }

    /// Drive every in-memory connection and fire deadlines due at `now`
    /// (for [`crate::fuzzing`]; in-memory pipes have no readiness events).
    #[doc(hidden)]
    pub fn drive_memnet(&mut self, now: Instant) {
        let keys: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.sock, Some(Sock::Mem(_))))
            .map(|(k, c)| (k, c.id))
            .collect();
        for (key, id) in keys {
            if self.is_live(key, id) {
                self.on_token(self.token(key), ReadMode::UntilWouldBlock, now);
            }
        }
        self.handle_timeouts(now);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.connections = self.conns.len();
        s.timers = self.wheel.len();
        s.queued = self.pools.iter().map(|p| p.queue.len()).sum();
        s.in_flight = self.reqs.len() - s.queued;
        s.origins = self.pools.iter().map(|p| p.stats.clone()).collect();
        s
    }

    /// Close every connection that carries no exchange: idle ones (with
    /// close_notify on TLS) and ones still being opened.
    pub fn close_idle(&mut self) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.req.is_none())
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close_conn(key, CloseReason::Shutdown);
        }
    }

    /// Fail every queued and in-flight request with [`Error::Shutdown`], send
    /// close_notify on every TLS connection, close every socket and stop the
    /// resolver threads (waiting for a lookup in progress). Later submissions
    /// fail with [`Error::Shutdown`].
    pub fn shutdown(&mut self) {
        self.stop(true);
    }

    fn stop(&mut self, join: bool) {
        if self.shut {
            return;
        }
        let now = Instant::now();
        self.drain_commands(now);
        self.shut = true;
        let reqs: Vec<usize> = self.reqs.iter().map(|(k, _)| k).collect();
        for rk in reqs {
            self.abort_request(rk, Error::Shutdown, CloseReason::Shutdown, now);
        }
        let conns: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in conns {
            self.close_conn(key, CloseReason::Shutdown);
        }
        self.dns.stop(join);
        self.drain_commands(now);
    }

    /// Live resolver threads (for leak checks).
    pub fn resolver_threads(&self) -> usize {
        self.dns.threads()
    }

    // ----- plumbing -------------------------------------------------------

    /// The pool for a request URI. Pools are never removed, so the last
    /// URI's pool stays valid; `Authority` compares case-insensitively.
    fn pool_of_uri(&mut self, uri: &http::Uri) -> Result<usize, Error> {
        let tls = match uri.scheme_str() {
            Some("https") => Some(true),
            Some("http") => Some(false),
            _ => None,
        };
        if let (Some((last_tls, last, p)), Some(tls), Some(authority)) =
            (&self.last_pool, tls, uri.authority())
        {
            // A URI cloned from the last one shares its bytes: no compare.
            let same = last.as_str().as_ptr() == authority.as_str().as_ptr()
                && last.as_str().len() == authority.as_str().len();
            if *last_tls == tls && (same || last == authority) {
                return Ok(*p);
            }
        }
        let p = self.pool_for(Origin::from_uri(uri)?);
        self.last_pool = tls.zip(uri.authority()).map(|(t, a)| (t, a.clone(), p));
        Ok(p)
    }

    fn pool_for(&mut self, origin: Origin) -> usize {
        if let Some(&p) = self.pool_index.get(&origin) {
            return p;
        }
        let policy = self.origin_policy(&origin);
        self.pools.push(Pool {
            origin: origin.clone(),
            policy,
            conns: Vec::new(),
            idle: Vec::new(),
            queue: VecDeque::new(),
            connecting: 0,
            last_used: None,
            chain: None,
            full_handshake_at: None,
            purge_sessions: false,
            probe_timer: None,
            stats: OriginStats::new(origin.clone()),
        });
        let p = self.pools.len() - 1;
        self.pool_index.insert(origin, p);
        p
    }

    fn token(&self, key: usize) -> Token {
        Token(self.token_base + 1 + key)
    }

    fn on_token(&mut self, token: Token, read: ReadMode, now: Instant) {
        if token.0 == self.token_base {
            self.drain_commands(now);
            self.drain_answers(now);
            return;
        }
        let key = token.0 - self.token_base - 1;
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.stage {
            Stage::Resolving => {}
            Stage::Connecting => self.on_connecting(key, now),
            Stage::Handshaking | Stage::Ready => self.drive(key, read, now),
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Submit(sub) => {
                    let (id, req, opts) = *sub;
                    self.submit_with_id(id, req, opts, now)
                }
                Command::Cancel(id) => {
                    if let Some(&rk) = self.ids.get(&id) {
                        self.abort_request(rk, Error::Cancelled, CloseReason::Cancelled, now);
                    }
                }
            }
        }
    }

    fn drain_answers(&mut self, now: Instant) {
        let mut answers = std::mem::take(&mut self.answers);
        self.dns.take_answers(&mut answers);
        for a in answers.drain(..) {
            let Some(conn) = self.conns.get_mut(a.conn) else {
                continue;
            };
            if conn.id.0 != a.serial || conn.stage != Stage::Resolving {
                continue;
            }
            match a.result {
                Ok(addrs) => {
                    conn.addrs = addrs;
                    self.clear_conn_timer(a.conn, ConnTimer::Setup);
                    self.start_connect(a.conn, now);
                }
                Err(e) => {
                    let host = self.pools[conn.pool].origin.host().to_owned();
                    self.connect_failed(
                        a.conn,
                        Error::Resolve {
                            host,
                            cause: Arc::new(e),
                        },
                        now,
                    );
                }
            }
        }
        self.answers = answers;
    }

    // ----- timers ---------------------------------------------------------

    fn set_conn_timer(&mut self, key: usize, kind: ConnTimer, at: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let slot = &mut conn.timers[kind as usize];
        match *slot {
            Some(t) if self.wheel.reset(t, at) => {}
            _ => *slot = Some(self.wheel.insert(at, Timer::Conn(key, kind))),
        }
    }

    fn clear_conn_timer(&mut self, key: usize, kind: ConnTimer) {
        if let Some(t) = self
            .conns
            .get_mut(key)
            .and_then(|c| c.timers[kind as usize].take())
        {
            self.wheel.cancel(t);
        }
    }

    fn set_req_timer(&mut self, key: usize, kind: ReqTimer, at: Instant) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        let slot = &mut req.timers[kind as usize];
        match *slot {
            Some(t) if self.wheel.reset(t, at) => {}
            _ => *slot = Some(self.wheel.insert(at, Timer::Req(key, kind))),
        }
    }

    fn clear_req_timer(&mut self, key: usize, kind: ReqTimer) {
        if let Some(t) = self
            .reqs
            .get_mut(key)
            .and_then(|r| r.timers[kind as usize].take())
        {
            self.wheel.cancel(t);
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Conn(key, kind) => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                conn.timers[kind as usize] = None;
                match kind {
                    ConnTimer::Setup => match conn.stage {
                        Stage::Resolving => {
                            self.connect_failed(key, Error::Timeout(Deadline::Dns), now)
                        }
                        Stage::Connecting => {
                            self.next_address(key, Error::Timeout(Deadline::Connect), now)
                        }
                        Stage::Handshaking => {
                            self.connect_failed(key, Error::Timeout(Deadline::Handshake), now)
                        }
                        Stage::Ready => {}
                    },
                    // Armed lazily (see make_idle): the connection may have
                    // worked and gone idle again since; then it waits on.
                    ConnTimer::Idle => match conn.idle_until.filter(|_| conn.is_idle()) {
                        Some(until) if until <= now => {
                            let p = conn.pool;
                            self.close_conn(key, CloseReason::Idle);
                            self.dispatch(p, now);
                        }
                        Some(until) => self.set_conn_timer(key, ConnTimer::Idle, until),
                        None => {}
                    },
                    ConnTimer::MaxAge => self.expire(key, now),
                    ConnTimer::Drain => {
                        if conn.req.is_some() {
                            self.stats.drains_hit_grace += 1;
                            self.pools[conn.pool].stats.drains_hit_grace += 1;
                            self.exchange_failed(key, Error::Timeout(Deadline::DrainGrace), now);
                        }
                    }
                    ConnTimer::Prewarm => self.prewarm(key, now),
                }
            }
            Timer::Probe(p) => {
                self.pools[p].probe_timer = None;
                self.probe(p, now);
            }
            Timer::Req(key, kind) => {
                let Some(req) = self.reqs.get_mut(key) else {
                    return;
                };
                req.timers[kind as usize] = None;
                let deadline = match kind {
                    ReqTimer::Total => Deadline::Total,
                    ReqTimer::FirstByte => Deadline::FirstByte,
                };
                self.abort_request(key, Error::Timeout(deadline), CloseReason::Error, now);
            }
        }
    }

    // ----- connection set-up ----------------------------------------------

    fn open_conn(&mut self, p: usize, replacement: bool, now: Instant) {
        self.open(p, replacement, false, now);
    }

    fn open(&mut self, p: usize, replacement: bool, probe: bool, now: Instant) {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let mut conn = Conn::new(id, p, Codec::new(self.config.limits));
        conn.replacement = replacement;
        conn.probe = probe;
        let key = self.conns.insert(conn);
        self.stats.connections_attempted += 1;
        let pool = &mut self.pools[p];
        pool.conns.push(key);
        if !probe {
            pool.connecting += 1;
        }
        let (host, port) = (pool.origin.host().to_owned(), pool.origin.port());
        // IP literals need no lookup; in-memory pipes have no network to look up.
        let literal = match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) if self.config.memnet.is_some() => Some(IpAddr::from([127, 0, 0, 1])),
            Err(_) => None,
        };
        if let Some(ip) = literal {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.addrs = vec![SocketAddr::new(ip, port)];
            }
            self.start_connect(key, now);
        } else {
            self.dns.submit(key, id.0, &host, port);
            self.set_conn_timer(key, ConnTimer::Setup, now + self.config.timeouts.dns);
        }
    }

    /// Connect to the next untried address, or fail the attempt.
    fn start_connect(&mut self, key: usize, now: Instant) {
        let token = self.token(key);
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Some(addr) = conn.addrs.get(conn.next_addr).copied() else {
                let err = conn.last_error.take().unwrap_or_else(|| Error::Resolve {
                    host: self.pools[conn.pool].origin.host().to_owned(),
                    cause: Arc::new(io::Error::new(io::ErrorKind::NotFound, "no addresses")),
                });
                return self.connect_failed(key, err, now);
            };
            conn.next_addr += 1;
            let sock = match &self.config.memnet {
                Some(net) => Ok(Sock::Mem(net.connect(addr))),
                None => Sock::connect(addr),
            };
            match sock {
                Ok(sock) => {
                    conn.sock = Some(sock);
                    conn.stage = Stage::Connecting;
                    conn.peer_addr = Some(addr);
                    conn.interest = None;
                    if let Err(e) = conn.update_interest(&self.registry, token) {
                        conn.sock = None;
                        conn.last_error = Some(Error::Connect {
                            addr,
                            cause: Arc::new(e),
                        });
                        continue;
                    }
                    self.set_conn_timer(key, ConnTimer::Setup, now + self.config.timeouts.connect);
                    if self.config.memnet.is_some() {
                        // In-memory pipes connect at once.
                        self.on_connecting(key, now);
                    }
                    return;
                }
                Err(e) => {
                    conn.last_error = Some(Error::Connect {
                        addr,
                        cause: Arc::new(e),
                    })
                }
            }
        }
    }

    fn next_address(&mut self, key: usize, err: Error, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.shutdown(&self.registry);
        conn.last_error = Some(err);
        self.start_connect(key, now);
    }

    fn on_connecting(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(sock) = conn.sock.as_ref() else {
            return;
        };
        let addr = conn.addr();
        match sock.connect_result() {
            Ok(true) => self.connected(key, now),
            Ok(false) => {}
            Err(e) => self.next_address(
                key,
                Error::Connect {
                    addr,
                    cause: Arc::new(e),
                },
                now,
            ),
        }
    }

    fn connected(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        if let Some(sock) = conn.sock.as_ref() {
            sock.set_nodelay();
        }
        conn.connected_at = Some(now);
        let policy = self.pools[p].policy;
        if let Some(at) = expiry_deadline(now, &policy, fastrand::f64()) {
            self.set_conn_timer(key, ConnTimer::MaxAge, at);
            if policy.prewarm {
                if let Some(age) = policy.max_age {
                    let lead = prewarm_lead(age);
                    if at > now + lead {
                        self.set_conn_timer(key, ConnTimer::Prewarm, at - lead);
                    }
                }
            }
        }
        if !self.pools[p].origin.is_tls() {
            return self.ready(key, now);
        }
        let config = self.tls_config_for(p, key, now);
        let host = self.pools[p].origin.host().to_owned();
        let name = match ServerName::try_from(host) {
            Ok(n) => n,
            Err(e) => {
                return self.connect_failed(
                    key,
                    Error::InvalidRequest(format!("bad server name: {e}")),
                    now,
                )
            }
        };
        match Session::new(config, name) {
            Ok(tls) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.tls = Some(Box::new(tls));
                    conn.stage = Stage::Handshaking;
                }
                self.set_conn_timer(key, ConnTimer::Setup, now + self.config.timeouts.handshake);
                self.drive(key, ReadMode::Skip, now);
            }
            Err(reason) => self.connect_failed(
                key,
                Error::Tls {
                    reason,
                    phase: Phase::Tls,
                },
                now,
            ),
        }
    }

    /// The TLS configuration for a new connection: resumption only when the
    /// policy allows it and the last full handshake is younger than max age.
    fn tls_config_for(&mut self, p: usize, key: usize, now: Instant) -> Arc<ClientConfig> {
        match self.tls.refresh() {
            Ok(true) => log::info!("trust files changed; new connections use the new anchors"),
            Ok(false) => {}
            Err(e) => {
                log::warn!(
                    "keeping the previous trust anchors: {}: {}",
                    e.path.display(),
                    e.reason
                );
                self.out.push_back(Event::TrustError {
                    path: e.path,
                    reason: e.reason,
                });
            }
        }
        let pool = &mut self.pools[p];
        if pool.policy.resumption == Resumption::Never {
            return self.tls.full();
        }
        let replacement = self.conns.get(key).is_some_and(|c| c.replacement);
        let young = match (pool.full_handshake_at, pool.policy.max_age) {
            (Some(at), Some(age)) => now.saturating_duration_since(at) < age,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let purge = replacement || !young || std::mem::take(&mut pool.purge_sessions);
        self.tls.resuming(pool.origin.host(), purge)
    }

    /// A connection attempt failed: it closes, and the oldest waiting request
    /// of its origin (if any) ends with the error.
    fn connect_failed(&mut self, key: usize, err: Error, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        log::debug!("connection to {} failed: {err}", self.pools[p].origin);
        let conn = conn.id;
        self.out.push_back(Event::ConnectFailed {
            conn,
            origin: self.pools[p].origin.clone(),
            error: err.clone(),
        });
        let probe = self.conns.get(key).is_some_and(|c| c.probe);
        self.close_conn(key, CloseReason::ConnectFailed);
        if !probe {
            if let Some(rk) = self.pools[p].queue.pop_front() {
                self.fail_request(rk, err);
            }
        }
        self.dispatch(p, now);
    }

    /// Handshake done (or TCP connected for `http://`): report and use it.
    fn ready(&mut self, key: usize, now: Instant) {
        self.clear_conn_timer(key, ConnTimer::Setup);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        conn.stage = Stage::Ready;
        let pool = &mut self.pools[p];
        if !conn.probe {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
        conn.remaining = pool.policy.max_requests;
        let mut info = ConnectionInfo {
            conn: conn.id,
            origin: pool.origin.clone(),
            peer_addr: conn.addr(),
            tls_version: None,
            cipher_suite: None,
            alpn: None,
            handshake: None,
            chain: None,
        };
        let mut changed = None;
        let mut expires_with_cert = None;
        if let Some(tls) = conn.tls.as_deref() {
            let kind = match tls.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
                _ => Handshake::Full,
            };
            let presented = tls.peer_certificates().unwrap_or_default();
            // With its verified path; the origin's current chain is shared.
            let chain = self
                .tls
                .peer_chain(presented, pool.origin.host(), pool.chain.as_ref());
            info.tls_version = tls.protocol_version();
            info.cipher_suite = tls.negotiated_cipher_suite().map(|s| s.suite());
            info.alpn = tls.alpn_protocol().map(|a| a.to_vec());
            info.handshake = Some(kind);
            info.chain = Some(chain.clone());
            conn.chain = Some(chain.clone());
            expires_with_cert = chain.not_after();
            match kind {
                Handshake::Full => {
                    self.stats.handshakes_full += 1;
                    pool.stats.handshakes_full += 1;
                    pool.full_handshake_at = Some(now);
                    if let Some(prev) = pool.chain.as_ref().filter(|prev| ***prev != *chain) {
                        changed = Some(prev.clone());
                    }
                }
                Handshake::Resumed => {
                    self.stats.handshakes_resumed += 1;
                    pool.stats.handshakes_resumed += 1;
                }
            }
            if pool.chain.is_none() || kind == Handshake::Full {
                pool.chain = Some(chain);
            }
        }
        let probe = self.conns.get(key).is_some_and(|c| c.probe);
        if probe {
            log::debug!("chain probe of {} done", info.origin);
            if let Some(previous) = changed {
                self.chain_changed(p, key, previous);
            }
            self.close_conn(key, CloseReason::Probe);
            return self.dispatch(p, now);
        }
        if let Some(not_after) = expires_with_cert {
            self.retire_at_cert_expiry(key, not_after, now);
        }
        self.schedule_probe(p, now);
        self.stats.connections_opened += 1;
        self.pools[p].stats.connections_opened += 1;
        log::debug!(
            "connection {} to {} open ({:?})",
            info.conn.0,
            info.origin,
            info.handshake
        );
        self.out.push_back(Event::Opened(info));
        if let Some(previous) = changed {
            self.chain_changed(p, key, previous);
        }
        if let Some(reason) = self.conns.get(key).and_then(|c| c.retiring) {
            self.close_conn(key, reason);
            return self.dispatch(p, now);
        }
        self.make_idle(key, now);
    }

    /// Retire the connection at its leaf's notAfter when that comes before
    /// its max age.
    fn retire_at_cert_expiry(
        &mut self,
        key: usize,
        not_after: std::time::SystemTime,
        now: Instant,
    ) {
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let at = now + left;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let current = conn.timers[ConnTimer::MaxAge as usize].and_then(|t| self.wheel.deadline(t));
        if current.is_none_or(|c| at < c) {
            conn.expiry_reason = CloseReason::CertExpiry;
            self.set_conn_timer(key, ConnTimer::MaxAge, at);
        }
    }

    fn chain_changed(&mut self, p: usize, newest: usize, previous: Arc<PeerChain>) {
        self.stats.chain_changes += 1;
        self.pools[p].stats.chain_changes += 1;
        let pool = &self.pools[p];
        let Some(current) = pool.chain.clone() else {
            return;
        };
        log::info!(
            "peer chain of {} changed: {} -> {}",
            pool.origin,
            previous.fingerprint_hex(),
            current.fingerprint_hex()
        );
        self.out.push_back(Event::ChainChanged {
            origin: pool.origin.clone(),
            previous,
            current,
        });
        if pool.policy.on_chain_change == OnChainChange::Keep {
            return;
        }
        let older: Vec<usize> = pool
            .conns
            .iter()
            .copied()
            .filter(|&k| k != newest)
            .collect();
        for key in older {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.is_idle() {
                self.close_conn(key, CloseReason::ChainChange);
            } else if conn.retiring.is_none() {
                conn.retiring = Some(CloseReason::ChainChange);
            }
        }
    }

    // ----- lifetime ---------------------------------------------------------

    fn expire(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        let reason = conn.expiry_reason;
        if conn.is_idle() {
            self.close_conn(key, reason);
            return self.dispatch(p, now);
        }
        if conn.retiring.is_none() {
            conn.retiring = Some(reason);
        }
        if conn.req.is_some() {
            if let Some(grace) = self.pools[p].policy.drain_grace {
                self.set_conn_timer(key, ConnTimer::Drain, now + grace);
            }
        }
        // A draining connection takes no request; queued ones may need a new one.
        self.dispatch(p, now);
    }

    fn prewarm(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let p = conn.pool;
        let pool = &self.pools[p];
        let (Some(age), Some(used)) = (pool.policy.max_age, pool.last_used) else {
            return;
        };
        let recently = now.saturating_duration_since(used) <= age;
        if pool.policy.prewarm
            && recently
            && pool.conns.len() < pool.policy.max_connections
            && self.has_token_room()
        {
            log::debug!("prewarming a replacement connection to {}", pool.origin);
            self.open_conn(p, true, now);
        }
    }

    /// Arm the origin's chain probe, if the policy asks for one and it has
    /// live connections to heal.
    fn schedule_probe(&mut self, p: usize, now: Instant) {
        let pool = &self.pools[p];
        let Some(every) = pool.policy.chain_probe_interval else {
            return;
        };
        if pool.probe_timer.is_some() || !pool.origin.is_tls() {
            return;
        }
        let t = self.wheel.insert(now + every, Timer::Probe(p));
        self.pools[p].probe_timer = Some(t);
    }

    fn probe(&mut self, p: usize, now: Instant) {
        let live = self.pools[p].conns.iter().any(|&k| {
            self.conns
                .get(k)
                .is_some_and(|c| !c.probe && c.stage == Stage::Ready)
        });
        if !live || self.shut || !self.has_token_room() {
            return;
        }
        self.stats.probes += 1;
        self.pools[p].stats.probes += 1;
        self.open(p, true, true, now);
        self.schedule_probe(p, now);
    }

    fn has_token_room(&self) -> bool {
        self.conns.len() + 1 < self.token_count
    }

    // ----- dispatch -----------------------------------------------------------

    /// Put queued requests on idle connections (the youngest first), then open
    /// connections for those still waiting, within the origin's maximum.
    fn dispatch(&mut self, p: usize, now: Instant) {
        if self.shut {
            return;
        }
        loop {
            let pool = &self.pools[p];
            let Some(&rk) = pool.queue.front() else { break };
            let fresh = self.reqs.get(rk).is_some_and(|r| r.fresh_only);
            let conns = &self.conns;
            let unused = |k: usize| conns.get(k).is_some_and(|c| c.served == 0);
            let pick = pick_idle(
                &pool.idle,
                fresh.then_some(&unused as &dyn Fn(usize) -> bool),
            );
            let Some(i) = pick else { break };
            let pool = &mut self.pools[p];
            let (_, ck) = pool.idle.remove(i);
            pool.queue.pop_front();
            self.assign(ck, rk, now);
        }
        let pool = &self.pools[p];
        let max = pool.policy.max_connections.max(1);
        let mut waiting = pool.queue.len();
        while waiting > self.pools[p].connecting && self.has_token_room() {
            if self.pools[p].conns.len() >= max {
                // Only fresh-only retries wait while connections sit idle: make room.
                let Some(&(_, victim)) = self.pools[p].idle.first() else {
                    break;
                };
                self.close_conn(victim, CloseReason::Idle);
                continue;
            }
            self.open_conn(p, false, now);
            waiting = self.pools[p].queue.len();
        }
    }

    fn make_idle(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        if !conn.rbuf.is_empty() {
            self.close_conn(key, CloseReason::PeerClose);
            return self.dispatch(p, now);
        }
        conn.release_buffers();
        let limit = conn.idle_limit.or(self.pools[p].policy.idle_timeout);
        insert_idle(&mut self.pools[p].idle, conn.id, key);
        conn.idle_until = limit.map(|l| now + l);
        // A busy keep-alive connection goes idle once per exchange: an idle
        // timer still armed from an earlier idle spell stays and, when it
        // fires, re-arms for the rest. The wheel is touched only when the
        // new deadline is earlier (a server's Keep-Alive hint) or none is set.
        let armed = conn.timers[ConnTimer::Idle as usize].and_then(|t| self.wheel.deadline(t));
        if let Some(until) = conn.idle_until {
            if armed.is_none_or(|at| at > until) {
                self.set_conn_timer(key, ConnTimer::Idle, until);
            }
        }
        self.dispatch(p, now);
    }

    fn assign(&mut self, ck: usize, rk: usize, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get_mut(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        conn.idle_until = None;
        let r = &req.request;
        let body = r.body();
        let needs_body =
            !body.is_empty() || matches!(*r.method(), Method::POST | Method::PUT | Method::PATCH);
        let sent = conn.codec.send_request(
            r.method(),
            r.uri(),
            r.headers(),
            needs_body.then_some(&body[..]),
            TargetForm::Origin,
            &mut conn.wbuf,
        );
        if let Err(e) = sent {
            // The codec refuses before writing a byte: the connection is
            // untouched, so it goes back to the pool with a fresh codec.
            conn.codec = Codec::new(self.config.limits);
            conn.wbuf.clear();
            self.fail_request(rk, Error::InvalidRequest(e.to_string()));
            return self.make_idle(ck, now);
        }
        req.reused = conn.served > 0;
        req.conn = Some(ck);
        conn.served += 1;
        conn.remaining = conn.remaining.map(|r| r.saturating_sub(1));
        conn.req = Some(rk);
        if req.reused {
            self.stats.connections_reused += 1;
        }
        if let Some(t) = req.opts.first_byte_timeout {
            self.set_req_timer(rk, ReqTimer::FirstByte, now + t);
        }
        // Only the request goes out: anything the peer sends raises an event.
        self.drive(ck, ReadMode::Skip, now);
    }

    // ----- I/O ----------------------------------------------------------------

    /// Write what is pending, read what arrived, and act on it.
    fn drive(&mut self, key: usize, read: ReadMode, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Slab keys are reused: a connection closed below may hand its key to
        // a new one, so every later look-up checks the id too.
        let id = conn.id;
        if let Err(e) = conn.flush(&mut self.stage) {
            return self.io_failed(key, e, true, now);
        }
        let pass = match read {
            ReadMode::Skip => ReadPass::default(),
            ReadMode::UntilShort | ReadMode::UntilWouldBlock => {
                let stop_short = read == ReadMode::UntilShort;
                match conn.read_pass(&mut self.scratch, &mut self.stage, READ_BUDGET, stop_short) {
                    Ok(pass) => pass,
                    Err(f) => {
                        // Bytes that arrived intact before the failure still
                        // count: the exchange may even have completed.
                        if !conn.rbuf.is_empty() && conn.stage == Stage::Ready {
                            self.on_input(key, id, false, now);
                        }
                        if self.is_live(key, id) {
                            self.io_failed(key, f, false, now);
                        }
                        return;
                    }
                }
            }
        };
        if conn.stage == Stage::Handshaking
            && conn.tls.as_ref().is_some_and(|t| !t.is_handshaking())
        {
            self.ready(key, now);
        }
        if pass.unclean {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.unclean_eof = true;
            }
        }
        if (pass.bytes > 0 || pass.eof) && self.is_live(key, id) {
            self.on_input(key, id, pass.eof, now);
        }
        let token = self.token(key);
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
            return;
        };
        if let Err(e) = conn.flush(&mut self.stage) {
            return self.io_failed(key, e, true, now);
        }
        if pass.more {
            self.read_again.push((key, id));
        }
        if let Err(e) = conn.update_interest(&self.registry, token) {
            self.io_failed(key, IoFailure::Io(e), false, now);
        }
    }

    fn is_live(&self, key: usize, id: ConnId) -> bool {
        self.conns.get(key).is_some_and(|c| c.id == id)
    }

    fn io_failed(&mut self, key: usize, failure: IoFailure, writing: bool, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.stage {
            Stage::Resolving | Stage::Connecting | Stage::Handshaking => {
                let err = match failure {
                    IoFailure::Tls(reason) => Error::Tls {
                        reason,
                        phase: Phase::Tls,
                    },
                    IoFailure::Io(e) => Error::Connect {
                        addr: conn.addr(),
                        cause: Arc::new(e),
                    },
                };
                self.connect_failed(key, err, now);
            }
            Stage::Ready => {
                let phase = match conn.codec.state() {
                    CodecState::Body => Phase::ResponseBody,
                    CodecState::Sending if writing => Phase::Write,
                    _ if writing && !conn.codec.response_started() => Phase::Write,
                    _ => Phase::ResponseHead,
                };
                let err = match failure {
                    IoFailure::Tls(reason) => Error::Tls { reason, phase },
                    IoFailure::Io(e) => Error::io(phase, e),
                };
                if conn.req.is_some() {
                    self.exchange_failed(key, err, now);
                } else {
                    let p = conn.pool;
                    self.close_conn(key, CloseReason::PeerClose);
                    self.dispatch(p, now);
                }
            }
        }
    }

    /// New plaintext (or EOF) on a connection.
    fn on_input(&mut self, key: usize, id: ConnId, eof: bool, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.peer_eof |= eof;
        }
        loop {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                return;
            };
            let Some(rk) = conn.req else {
                if !conn.rbuf.is_empty() || eof {
                    // Idle (or draining after its exchange): bytes or EOF mean stale.
                    let p = conn.pool;
                    if conn.stage == Stage::Ready {
                        self.close_conn(key, CloseReason::PeerClose);
                    } else {
                        let err = Error::PeerClosed {
                            phase: Phase::Tls,
                            reused: false,
                        };
                        return self.connect_failed(key, err, now);
                    }
                    self.dispatch(p, now);
                }
                return;
            };
            let polled = conn.codec.poll_response(&mut conn.rbuf);
            let started = conn.codec.response_started();
            match polled {
                Ok(Some(ev)) => {
                    self.clear_req_timer(rk, ReqTimer::FirstByte);
                    self.on_codec_event(key, rk, ev, now);
                }
                Ok(None) => {
                    if !eof {
                        if started {
                            self.clear_req_timer(rk, ReqTimer::FirstByte);
                        }
                        return;
                    }
                    let at_eof = conn.codec.handle_eof();
                    let truncatable = conn.unclean_eof;
                    self.clear_req_timer(rk, ReqTimer::FirstByte);
                    let reused = self.reqs.get(rk).is_some_and(|r| r.reused);
                    match at_eof {
                        // RFC 9112 §9.8: over TLS, a close-delimited body is
                        // complete only with a close_notify; a bare FIN may be
                        // an attacker's truncation.
                        Ok(Some(CodecEvent::End { verdict, .. }))
                            if truncatable
                                && verdict.close
                                    == Some(rotary_proto::CloseReason::CloseDelimited) =>
                        {
                            let err = Error::PeerClosed {
                                phase: Phase::ResponseBody,
                                reused,
                            };
                            self.exchange_failed(key, err, now);
                        }
                        Ok(Some(ev)) => self.on_codec_event(key, rk, ev, now),
                        Ok(None) | Err(_) if !started => {
                            let err = Error::PeerClosed {
                                phase: Phase::ResponseHead,
                                reused,
                            };
                            self.exchange_failed(key, err, now);
                        }
                        Ok(None) => {
                            let err = Error::PeerClosed {
                                phase: Phase::ResponseBody,
                                reused,
                            };
                            self.exchange_failed(key, err, now);
                        }
                        Err(cause) => {
                            let phase = if self.reqs.get(rk).is_some_and(|r| r.head.is_some()) {
                                Phase::ResponseBody
                            } else {
                                Phase::ResponseHead
                            };
                            self.exchange_failed(key, Error::Protocol { phase, cause }, now);
                        }
                    }
                    // Whatever happened, the peer is gone.
                    if let Some(p) = self.conns.get(key).filter(|c| c.id == id).map(|c| c.pool) {
                        self.close_conn(key, CloseReason::PeerClose);
                        self.dispatch(p, now);
                    }
                    return;
                }
                Err(cause) => {
                    let phase = if self.reqs.get(rk).is_some_and(|r| r.head.is_some()) {
                        Phase::ResponseBody
                    } else {
                        Phase::ResponseHead
                    };
                    return self.exchange_failed(key, Error::Protocol { phase, cause }, now);
                }
            }
        }
    }

    fn served_by(&self, key: usize, rk: usize) -> ServedBy {
        let conn = self.conns.get(key);
        ServedBy {
            conn: conn.map_or(ConnId(0), |c| c.id),
            reused: self.reqs.get(rk).is_some_and(|r| r.reused),
            chain: conn.and_then(|c| c.chain.clone()),
        }
    }

    fn on_codec_event(&mut self, key: usize, rk: usize, ev: CodecEvent, now: Instant) {
        match ev {
            CodecEvent::Head(head) => {
                let Some(req) = self.reqs.get_mut(rk) else {
                    return;
                };
                if req.opts.streaming {
                    let mut response = http::Response::new(());
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    let id = req.id;
                    let served_by = self.served_by(key, rk);
                    self.out.push_back(Event::Head {
                        id,
                        response,
                        served_by,
                    });
                } else {
                    req.head = Some(head);
                }
            }
            CodecEvent::Data(data) => {
                let Some(req) = self.reqs.get_mut(rk) else {
                    return;
                };
                if req.opts.streaming {
                    let id = req.id;
                    self.out.push_back(Event::Body { id, data });
                    return;
                }
                req.body_len += data.len();
                if req.body_len > req.opts.max_body {
                    let limit = req.opts.max_body;
                    return self.abort_request(
                        rk,
                        Error::BodyTooLarge { limit },
                        CloseReason::Error,
                        now,
                    );
                }
                match req.first_chunk.take() {
                    None if req.body.is_empty() => req.first_chunk = Some(data),
                    None => req.body.extend_from_slice(&data),
                    Some(first) => {
                        req.body.reserve(first.len() + data.len());
                        req.body.extend_from_slice(&first);
                        req.body.extend_from_slice(&data);
                    }
                }
            }
            CodecEvent::End { trailers, verdict } => {
                let served_by = self.served_by(key, rk);
                let Some(mut req) = self.take_request(rk) else {
                    return;
                };
                self.stats.requests_ok += 1;
                if req.opts.streaming {
                    self.out.push_back(Event::End {
                        id: req.id,
                        trailers,
                    });
                } else {
                    let body = match req.first_chunk.take() {
                        Some(b) => b,
                        None => std::mem::take(&mut req.body).freeze(),
                    };
                    let mut response = http::Response::new(body);
                    if let Some(head) = req.head.take() {
                        *response.status_mut() = head.status;
                        *response.version_mut() = head.version;
                        *response.headers_mut() = head.headers;
                    }
                    if let Some(t) = trailers {
                        response.extensions_mut().insert(Trailers(t));
                    }
                    self.out.push_back(Event::Response {
                        id: req.id,
                        response,
                        served_by,
                    });
                }
                self.exchange_done(key, verdict, now);
            }
        }
    }

    /// The exchange on `key` ended well: reuse or retire the connection.
    fn exchange_done(&mut self, key: usize, verdict: rotary_proto::Verdict, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        conn.req = None;
        self.clear_conn_timer(key, ConnTimer::Drain);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let policy = self.pools[p].policy;
        if let Some(max) = verdict.hints.max {
            conn.remaining = Some(conn.remaining.map_or(max, |r| r.min(max)));
        }
        let idle = hinted_idle(
            conn.idle_limit.or(policy.idle_timeout),
            verdict.hints.timeout,
            policy.keep_alive_margin,
        );
        conn.idle_limit = idle;
        let reason = if verdict.close.is_some() || idle == Some(Duration::ZERO) {
            Some(CloseReason::ServerClose)
        } else if conn.peer_eof {
            Some(CloseReason::PeerClose)
        } else if let Some(r) = conn.retiring {
            Some(r)
        } else if conn.remaining == Some(0) {
            Some(CloseReason::MaxRequests)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.close_conn(key, reason);
                self.dispatch(p, now);
            }
            None => self.make_idle(key, now),
        }
    }

    /// The exchange on `key` failed: retry the request on a fresh connection
    /// when that is safe, fail it otherwise; close the connection.
    fn exchange_failed(&mut self, key: usize, err: Error, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        let started = conn.codec.response_started();
        let reason = match err {
            Error::PeerClosed { .. } | Error::Io { .. } => CloseReason::PeerClose,
            Error::Timeout(Deadline::DrainGrace) => CloseReason::MaxAge,
            _ => CloseReason::Error,
        };
        let rk = conn.req.take();
        self.close_conn(key, reason);
        if let Some(rk) = rk {
            let retry = self.reqs.get(rk).is_some_and(|r| {
                let safe = is_idempotent(r.request.method()) || r.opts.retry_safe;
                let stale = matches!(err, Error::PeerClosed { reused: true, .. })
                    || (r.reused && matches!(err, Error::Io { .. }));
                let drained = matches!(err, Error::Timeout(Deadline::DrainGrace));
                safe && !r.retried && !started && (stale || drained)
            });
            if retry {
                self.stats.retries += 1;
                self.pools[p].stats.retries += 1;
                self.clear_req_timer(rk, ReqTimer::FirstByte);
                if let Some(r) = self.reqs.get_mut(rk) {
                    log::debug!(
                        "retrying request {} on a fresh connection after: {err}",
                        r.id.0
                    );
                    r.retried = true;
                    r.fresh_only = true;
                    r.conn = None;
                    r.head = None;
                    r.body.clear();
                    r.first_chunk = None;
                    r.body_len = 0;
                }
                self.pools[p].queue.push_front(rk);
            } else {
                let err = match err {
                    Error::PeerClosed { phase, .. } => Error::PeerClosed {
                        phase,
                        reused: self.reqs.get(rk).is_some_and(|r| r.reused),
                    },
                    e => e,
                };
                self.fail_request(rk, err);
            }
        }
        self.dispatch(p, now);
    }

    /// End a request with `err` wherever it is; close its connection (with
    /// `reason`) if it was mid-exchange.
    fn abort_request(&mut self, rk: usize, err: Error, reason: CloseReason, now: Instant) {
        let Some(req) = self.reqs.get(rk) else { return };
        let p = req.pool;
        if let Some(ck) = req.conn {
            if let Some(conn) = self.conns.get_mut(ck) {
                conn.req = None;
            }
            self.fail_request(rk, err);
            self.close_conn(ck, reason);
        } else {
            self.fail_request(rk, err);
        }
        self.dispatch(p, now);
    }

    /// Remove a request from every structure; its timers are cancelled.
    fn take_request(&mut self, rk: usize) -> Option<Req> {
        let req = self.reqs.try_remove(rk)?;
        self.ids.remove(&req.id);
        for t in req.timers.into_iter().flatten() {
            self.wheel.cancel(t);
        }
        if req.conn.is_none() {
            self.pools[req.pool].queue.retain(|&k| k != rk);
        }
        Some(req)
    }

    fn fail_request(&mut self, rk: usize, err: Error) {
        let Some(req) = self.take_request(rk) else {
            return;
        };
        self.emit_failed(req.id, err, req.reused);
    }

    fn emit_failed(&mut self, id: RequestId, error: Error, reused: bool) {
        log::debug!("request {} failed: {error}", id.0);
        self.stats.failed_by_phase[error.phase().index()] += 1;
        self.out.push_back(Event::Failed { id, error, reused });
    }

    /// Close a connection now: cancel its timers, close_notify, drop the
    /// socket, leave the pool. Its request, if still attached, fails.
    fn close_conn(&mut self, key: usize, reason: CloseReason) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        for t in conn.timers.iter_mut().filter_map(Option::take) {
            self.wheel.cancel(t);
        }
        conn.shutdown(&self.registry);
        let pool = &mut self.pools[conn.pool];
        pool.conns.retain(|&k| k != key);
        pool.idle.retain(|&(_, k)| k != key);
        if conn.stage != Stage::Ready && !conn.probe {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
        if matches!(
            reason,
            CloseReason::MaxAge | CloseReason::ChainChange | CloseReason::CertExpiry
        ) {
            pool.purge_sessions = true;
        }
        if pool.conns.is_empty() {
            // Nothing left to heal: the probe stops until the next connection.
            if let Some(t) = pool.probe_timer.take() {
                self.wheel.cancel(t);
            }
        }
        let origin = pool.origin.clone();
        self.stats.closed_by_reason[reason.index()] += 1;
        self.pools[conn.pool].stats.closed_by_reason[reason.index()] += 1;
        log::debug!(
            "connection {} to {origin} closed: {}",
            conn.id.0,
            reason.name()
        );
        if let Some(rk) = conn.req {
            if let Some(r) = self.reqs.get_mut(rk) {
                r.conn = None;
            }
            let err = match reason {
                CloseReason::Shutdown => Error::Shutdown,
                _ => Error::PeerClosed {
                    phase: Phase::ResponseHead,
                    reused: conn.served > 1,
                },
            };
            self.fail_request(rk, err);
        }
        self.out.push_back(Event::Closed {
            conn: conn.id,
            origin,
            reason,
        });
    }
}

/// Trailers of a chunked response, stored in the response's extensions.
#[derive(Debug, Clone)]
pub struct Trailers(pub http::HeaderMap);

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(false);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
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
    fn the_youngest_idle_connection_gets_the_next_request() {
        // (id, slab key); the key doubles as "requests served" here.
        let mut idle = Vec::new();
        for (id, key) in [(3, 5), (9, 1), (4, 0), (7, 0)] {
            insert_idle(&mut idle, ConnId(id), key);
        }
        let ids: Vec<u64> = idle.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [3, 4, 7, 9]);
        assert_eq!(pick_idle(&idle, None), Some(3));
        // A retry that must use a fresh connection skips used ones.
        let unused = |served: usize| served == 0;
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
}
