//! The event loop: the [`Engine`] and its [`Handle`], the public API, and
//! the loop that turns readiness, deadlines and commands into work.
//!
//! The state has one owner per piece, each a module whose types keep their
//! fields private: [`conn`] (a connection and its stage), [`request`] (a
//! request and its attempt), [`pool`] (the pools), [`timers`] (the wheel and
//! the deadline sets). Handlers change the state they are handed and queue
//! [`effects`] for the rest: [`io`] (readiness by stage), [`connect`] and
//! [`tunnel`] (the stages before ready), [`exchange`] and [`transfer`] (an
//! exchange and its bodies), [`lifecycle`] (age, probes, chain change,
//! fresh chains), [`epochs`] (credential changes judged on live
//! connections), [`deadlines`] (a timer that fires). [`apply`] is the one
//! place the effects meet: exchanges and requests end, connections close,
//! pools dispatch. This file owns construction, the mio plumbing ([`Mio`]),
//! the command channel, and the public API, each entry point of which
//! applies the effects it caused before it returns.

mod apply;
mod conn;
mod connect;
mod deadlines;
mod effects;
mod epochs;
mod exchange;
mod flow;
mod handle;
mod io;
mod lifecycle;
mod lifetime;
mod pool;
mod redirect;
mod request;
mod run;
mod timers;
mod transfer;
mod tunnel;
mod upload;

// The lifetime decisions, pure, for `crate::fuzzing::lifetime`.
#[cfg(feature = "test-hooks")]
pub(crate) use lifetime::{expiry_deadline, prewarm_deadline, prewarm_wanted, probe_deadline};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mio::{Events, Poll, Registry, Token, Waker};

use crate::dns::{Answer, DnsPool, SystemResolver};
use crate::keys::{ConnKey, Key, PoolKey, Slots};
use crate::sock::Net;
use crate::stats::Counter;
use crate::tls::TlsState;
use crate::{
    Body, BuildError, ChainRequestId, CloseReason, Config, Error, Event, Origin, PeerChain, Policy,
    RequestId, RequestOptions, Stats,
};

use self::conn::{Conn, StageName};
use self::effects::{ConnRef, Effect, Effects, ReadMode, ReqRef};
use self::io::Buffers;
use self::pool::Pools;
use self::request::{Req, Requests};
use self::timers::{after, Timer, Timers};
use self::upload::Upload;

pub use self::flow::Progress;
use self::handle::Command;
pub use self::handle::Handle;

/// The engine's place in a mio loop: its own poll (or none when embedded),
/// the registry its sockets go on, and its token range. Token `base` is the
/// waker; connection `key` has token `base + 1 + key`.
struct Mio {
    poll: Option<Poll>,
    registry: Registry,
    base: usize,
    count: usize,
    events: Events,
    /// The tokens of one `poll`, copied out of `events` (reused).
    tokens: Vec<(Token, ReadMode)>,
    waker: Arc<Waker>,
}

impl Mio {
    #[inline]
    fn token(&self, key: ConnKey) -> Token {
        Token(self.base + 1 + key.index())
    }

    /// The connection a token stands for; `None` for the waker (and for
    /// tokens outside the range, which `handle_event` filters first).
    fn conn_of(&self, token: Token) -> Option<ConnKey> {
        let offset = token.0.checked_sub(self.base)?.checked_sub(1)?;
        Some(ConnKey::from_index(offset))
    }

    fn owns(&self, token: Token) -> bool {
        token.0 >= self.base && token.0 - self.base < self.count
    }
}

/// A readiness-driven HTTP/1.1-over-TLS client.
///
/// One engine per thread. Drive it with [`Engine::poll`] and drain
/// [`Engine::next_event`], or embed it in a host's mio loop with
/// [`Engine::embedded`]; submit from other threads through [`Engine::handle`].
pub struct Engine {
    mio: Mio,
    timers: Timers,
    conns: Slots<ConnKey, Conn>,
    reqs: Requests,
    pools: Pools,
    out: VecDeque<Event>,
    dns: DnsPool,
    /// Resolver answers of one drain (reused).
    answers: Vec<Answer>,
    tls: TlsState,
    /// Trust of `https://` proxies with trust settings of their own.
    proxy_trusts: tunnel::ProxyTrusts,
    /// The slot of the credential check ([`timers::Timer::Credentials`]),
    /// armed while the engine holds connections.
    credential_timer: Option<crate::wheel::TimerKey>,
    net: Net,
    config: Config,
    stats: Stats,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
    next_req: Arc<AtomicU64>,
    next_conn: u64,
    bufs: Buffers,
    /// What handlers decided, for [`apply`](Engine::apply).
    effects: Effects,
    /// Connections whose read stopped at the budget: read on next turn.
    read_again: Vec<ConnRef>,
    /// Connections whose host let their body go on: read on next turn.
    resumed: Vec<ConnRef>,
    /// A connection went idle since the last quiet poll (see
    /// `Engine::release_idle_buffers`).
    idled: bool,
    shut: bool,
}

/// Events the drained queue keeps room for (see `Engine::shrink_events`):
/// more than a poll at 256 busy connections queues.
const EVENTS_KEPT: usize = 1024;

impl Engine {
    /// An engine that owns its `mio::Poll`; drive it with [`Engine::poll`].
    ///
    /// # Errors
    /// [`BuildError::Config`] for a setting that cannot work (see
    /// [`Config::check`]), [`BuildError::Trust`] when the trust
    /// configuration yields no usable anchors (an unreadable or empty CA
    /// file, say) or an `https://` proxy's own trust is unusable, and
    /// [`BuildError::Io`] when the poll cannot be created.
    pub fn new(config: Config) -> Result<Engine, BuildError> {
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
    /// As [`Engine::new`]; [`BuildError::Config`] (for `token_count`) when
    /// `token_count < 2` or the range runs past `usize::MAX`.
    pub fn embedded(
        registry: &Registry,
        token_base: usize,
        token_count: usize,
        config: Config,
    ) -> Result<Engine, BuildError> {
        if token_count < 2 || token_base.checked_add(token_count).is_none() {
            return Err(crate::ConfigError::new(
                "token_count",
                "must be at least 2, and the range must fit in usize",
            )
            .into());
        }
        Engine::build(None, registry.try_clone()?, token_base, token_count, config)
    }

    fn build(
        poll: Option<Poll>,
        registry: Registry,
        base: usize,
        count: usize,
        config: Config,
    ) -> Result<Engine, BuildError> {
        config.check()?;
        let tls = TlsState::new(&config.trust)?;
        let proxies = config.proxy.clone();
        let proxy_trusts = tunnel::ProxyTrusts::new(&proxies)?;
        let waker = Arc::new(Waker::new(&registry, Token(base))?);
        let resolver = config
            .resolver
            .clone()
            .unwrap_or_else(|| Arc::new(SystemResolver));
        let dns = DnsPool::new(resolver, config.dns_threads, waker.clone());
        let (cmd_tx, cmd_rx) = mpsc::channel();
        Ok(Engine {
            mio: Mio {
                poll,
                registry,
                base,
                count,
                events: Events::with_capacity(1024),
                tokens: Vec::with_capacity(1024),
                waker,
            },
            timers: Timers::new(Instant::now()),
            conns: Slots::default(),
            reqs: Requests::default(),
            pools: Pools::new(proxies),
            out: VecDeque::new(),
            dns,
            answers: Vec::new(),
            tls,
            proxy_trusts,
            credential_timer: None,
            #[cfg(feature = "test-hooks")]
            net: Net::new(config.network.clone()),
            #[cfg(not(feature = "test-hooks"))]
            net: Net::new(None),
            config,
            stats: Stats::default(),
            cmd_tx,
            cmd_rx,
            next_req: Arc::new(AtomicU64::new(1)),
            next_conn: 1,
            bufs: Buffers::new(),
            effects: Effects::default(),
            read_again: Vec::new(),
            resumed: Vec::new(),
            idled: false,
            shut: false,
        })
    }

    /// The waker of the engine's poll: [`crate::Client`] wakes its leader with it.
    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.mio.waker.clone()
    }

    /// End live request `id` with `error`: a refusal of the [`crate::Client`]'s
    /// own, which its caller must see named, not as a cancel.
    pub(crate) fn abort(&mut self, id: RequestId, error: Error) {
        self.abort_id(id, error, CloseReason::Error);
        let now = self.now();
        self.apply(now);
    }

    /// Queue the end of live request `id` with `error`; a connection it is
    /// on closes with `close`.
    fn abort_id(&mut self, id: RequestId, error: Error, close: CloseReason) {
        if let Some(key) = self.reqs.find(id) {
            let req = ReqRef { key, id };
            self.effects.push(Effect::Abort {
                req,
                error: error.into(),
                close,
            });
        }
    }

    /// A host that owns the poll of an embedded engine ([`crate::Client`])
    /// waited, and no socket became ready: the loop is quiet, so idle
    /// connections give back their empty buffers, as [`Engine::poll`] has
    /// them do (see `release_idle_buffers`).
    pub(crate) fn handle_quiet(&mut self) {
        if self.idled {
            self.release_idle_buffers();
        }
    }

    /// Take a request in: it waits in its origin's pool, which dispatches.
    fn submit_with_id(
        &mut self,
        id: RequestId,
        mut request: http::Request<Body>,
        opts: RequestOptions,
        now: Instant,
    ) {
        let fail = |engine: &mut Engine, e| engine.emit_failed(id, e, false, Progress::default());
        if self.shut {
            return fail(self, Error::Shutdown);
        }
        if let Err(e) = opts.check() {
            return fail(self, e);
        }
        let p = match self.pools.of_uri(request.uri(), &self.config.policy) {
            Ok(p) => p,
            Err(e) => return fail(self, e),
        };
        let upload = match Upload::of(&mut request) {
            Ok(u) => u,
            Err(e) => return fail(self, e),
        };
        let fed = upload.as_deref().is_some_and(Upload::is_fed);
        let key = self.reqs.insert(Req::new(id, p, request, opts, upload));
        if fed {
            self.upload_submitted(key);
        }
        if let Some(d) = opts.deadline {
            self.arm(Timer::Total(key), after(now, d));
        }
        self.pools[p].enqueue(key, now);
        self.effects.push(Effect::Dispatch(p));
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.cmd_tx.clone(),
            waker: self.mio.waker.clone(),
            next_req: self.next_req.clone(),
        }
    }

    /// Override the lifetime policy for one origin (existing connections
    /// keep the deadlines they already have).
    ///
    /// # Errors
    /// A [`ConfigError`](crate::ConfigError) for a policy that cannot work
    /// (see [`Policy::check`]); the origin's policy is then unchanged.
    pub fn set_origin_policy(
        &mut self,
        origin: Origin,
        policy: Policy,
    ) -> Result<(), crate::ConfigError> {
        policy.check()?;
        self.pools.set_policy(origin, policy);
        Ok(())
    }

    /// The policy in force for `origin`.
    pub fn origin_policy(&self, origin: &Origin) -> Policy {
        self.pools.policy_of(origin, &self.config.policy)
    }

    /// The verified chain of the origin's newest full TLS handshake, while
    /// the origin has a pool or is among the last origins whose pools were
    /// dropped (see [`Stats::pools`]).
    pub fn peer_chain(&self, origin: &Origin) -> Option<Arc<PeerChain>> {
        self.pools.chain_of(origin)
    }

    /// Submit a request (absolute URI: `http://` or `https://`). The request
    /// ends with exactly one terminal event; an invalid request (or options
    /// that cannot work, see [`RequestOptions::check`]) ends at once
    /// with [`Error::InvalidUri`], [`Error::InvalidOptions`] or (for a
    /// header that would break framing, once on a connection)
    /// [`Error::InvalidHeader`], a request submitted after
    /// [`Engine::shutdown`] with [`Error::Shutdown`]. The body is anything
    /// that converts into a [`Body`]: bytes, a file, or a stream the host
    /// feeds with [`Engine::send_body`].
    pub fn submit(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> RequestId {
        let id = RequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.submit_as(id, request.map(Into::into), opts);
        id
    }

    /// Where request ids come from: a `Client` caller takes its id here
    /// before it queues its request for whoever holds the engine.
    pub(crate) fn request_ids(&self) -> Arc<AtomicU64> {
        self.next_req.clone()
    }

    /// [`Engine::submit`] under an id taken from [`Engine::request_ids`].
    pub(crate) fn submit_as(
        &mut self,
        id: RequestId,
        request: http::Request<Body>,
        opts: RequestOptions,
    ) {
        let now = self.now();
        self.submit_with_id(id, request, opts, now);
        self.apply(now);
    }

    /// Hand the next chunk of request `id`'s [`Body::stream`] to the engine.
    /// The host may queue up to [`RequestOptions::send_window`] bytes ahead;
    /// [`Event::BodyWanted`] says when there is room again. A declared
    /// length passed fails the request.
    ///
    /// # Errors
    /// [`Error::WindowFull`] when the chunk does not fit the window (it is
    /// not taken: send it after the next `BodyWanted`);
    /// [`Error::BodySource`] when it goes past the declared length (the
    /// request fails with it too); [`Error::NotFeeding`] when `id` has
    /// ended, has no streamed body, or its body was ended.
    pub fn send_body(&mut self, id: RequestId, data: Bytes) -> Result<(), Error> {
        let fed = self.feed_body(id, data);
        let now = self.now();
        self.apply(now);
        fed
    }

    /// End request `id`'s [`Body::stream`]; `trailers` follow a chunked
    /// body (one without a declared length).
    ///
    /// # Errors
    /// [`Error::BodySource`] when the body is shorter than its declared
    /// length, or trailers were given for a body with one (the request fails
    /// with it too); [`Error::NotFeeding`] when `id` has ended or has no
    /// streamed body.
    pub fn end_body(&mut self, id: RequestId, trailers: Option<HeaderMap>) -> Result<(), Error> {
        let ended = self.finish_body(id, trailers);
        let now = self.now();
        self.apply(now);
        ended
    }

    /// Report `n` bytes of request `id`'s streamed body as consumed, for a
    /// request with [`RequestOptions::manual_consume`]: once fewer than
    /// [`RequestOptions::receive_window`] bytes are unconsumed, the engine
    /// reads its connection again. Unknown ids are ignored.
    pub fn consume(&mut self, id: RequestId, n: usize) {
        self.consumed(id, n);
    }

    /// Stop reading request `id`'s response body (`true`), whatever the
    /// window says, or let it go on (`false`). The receive-stall deadline
    /// does not run while paused; the total deadline does. Unknown ids are
    /// ignored.
    pub fn pause(&mut self, id: RequestId, paused: bool) {
        self.set_paused(id, paused);
    }

    /// How far live request `id` has got: body bytes sent and received,
    /// with totals when known. `None` once it has ended.
    pub fn progress(&self, id: RequestId) -> Option<Progress> {
        self.progress_of(id)
    }

    /// The origin's chain as it is now, for a job's CA file: answered with
    /// one [`Event::FreshChain`] carrying this call's id.
    ///
    /// When a full handshake with `origin` finished within `freshness`, its
    /// chain answers at once (the event is queued before this returns).
    /// Otherwise a TLS-only full handshake starts (never a resumption, which
    /// would replay an old chain; no request is sent and the connection
    /// closes with [`CloseReason::Probe`] once it is done) and its chain
    /// answers. Calls for one origin made while that handshake is under way
    /// share it, each getting its own event. `Duration::ZERO` asks for a new
    /// handshake every time (unless one finished this very instant).
    ///
    /// The handshake is a connection like any other: it counts against the
    /// origin's [`Policy::max_connections`] (its oldest idle connection is
    /// closed to make room), has the [`crate::Timeouts`] `dns`, `connect`
    /// and `handshake` deadlines, raises [`Event::ConnectFailed`] when it
    /// fails, and when its chain differs from the origin's previous one it
    /// raises [`Event::ChainChanged`] and applies
    /// [`Policy::on_chain_change`], as a chain probe does. It also becomes
    /// the origin's [`Engine::peer_chain`] and counts in
    /// [`Stats::fresh_chain_handshakes`] and `handshakes_full`; waiting
    /// calls show in [`Stats::fresh_chains_pending`].
    ///
    /// # Errors
    /// In the event's `result`: [`Error::Unsupported`] for an `http://`
    /// origin; [`Error::ConnectionLimit`] when the origin is at
    /// `max_connections` with no idle connection to close;
    /// [`Error::Shutdown`] after (or during) [`Engine::shutdown`], and
    /// [`Error::Cancelled`] when [`Engine::close_idle`] closes the
    /// handshake's connection; otherwise the connection's error (resolve,
    /// connect, TLS with rustls's reason, or a [`crate::Deadline`]).
    pub fn fresh_chain(&mut self, origin: &Origin, freshness: Duration) -> ChainRequestId {
        let id = ChainRequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        let now = self.now();
        self.fresh_chain_with_id(id, origin.clone(), freshness, now);
        self.apply(now);
        id
    }

    /// Cancel a request: it ends with [`Error::Cancelled`] (its connection,
    /// if mid-exchange, is closed). Unknown or finished ids are ignored.
    pub fn cancel(&mut self, id: RequestId) {
        self.abort_id(id, Error::Cancelled, CloseReason::Cancelled);
        let now = self.now();
        self.apply(now);
    }

    /// The next event, if any. A streamed body's bytes count as consumed
    /// once their [`Event::Body`] is handed out here (unless the request has
    /// [`RequestOptions::manual_consume`]). An [`Event::BodyWanted`]'s
    /// `room` is counted here too, so chunks fed since it was raised are
    /// taken off (and an ask with no room left, or after the body ended,
    /// is not handed out): feeding `room` bytes never overfills the window.
    pub fn next_event(&mut self) -> Option<Event> {
        let Some(mut event) = self.out.pop_front() else {
            if self.out.capacity() > EVENTS_KEPT {
                self.shrink_events();
            }
            return None;
        };
        while let Event::BodyWanted { id, room } = &mut event {
            // One queued before its request ended asks for nothing.
            let live = self.reqs.find(*id).is_some();
            match self.room_now(*id, *room).filter(|_| live) {
                Some(now) => {
                    *room = now;
                    break;
                }
                None => event = self.out.pop_front()?,
            }
        }
        if let Event::Body { id, data } = &event {
            let auto = self
                .reqs
                .find(*id)
                .and_then(|rk| self.reqs.get(rk))
                .is_some_and(|r| !r.opts().manual_consume);
            if auto {
                self.consumed(*id, data.len());
            }
        }
        Some(event)
    }

    /// The event queue, drained after a burst (10,000 connections opening
    /// at once queue 10,000 `Opened` events), gives back all but room for
    /// [`EVENTS_KEPT`]: a steady load below that never reallocates it.
    #[cold]
    #[inline(never)]
    fn shrink_events(&mut self) {
        self.out.shrink_to(EVENTS_KEPT);
    }

    /// Block until I/O, the next deadline or `timeout` (whichever is first;
    /// `None` = no limit beyond the deadlines), then process what happened.
    /// Returns at once when events are already waiting.
    ///
    /// # Errors
    /// An error from `mio::Poll::poll`; `InvalidInput` for an embedded engine.
    pub fn poll(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.poll_with(timeout, true)
    }

    /// [`Engine::poll`]; `hurry` returns at once when events are waiting.
    /// `execute` and `execute_into` do not hurry: the events they leave
    /// queued (other requests', `Opened`, ...) are the host's for later,
    /// and hurrying for them would spin the loop for the whole exchange.
    fn poll_with(&mut self, timeout: Option<Duration>, hurry: bool) -> std::io::Result<()> {
        let now = self.now();
        self.drain_commands(now);
        let mut wait = timeout;
        // Queued events are the caller's business (`hurry`), not a deadline.
        if let Some(t) = self.work_timeout(now) {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        if hurry && !self.out.is_empty() {
            wait = Some(Duration::ZERO);
        }
        let Some(poll) = self.mio.poll.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "embedded engine: the host polls",
            ));
        };
        match poll.poll(&mut self.mio.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if self.idled && self.mio.events.is_empty() && wait != Some(Duration::ZERO) {
            self.release_idle_buffers();
        }
        let mut tokens = std::mem::take(&mut self.mio.tokens);
        tokens.clear();
        tokens.extend(
            self.mio
                .events
                .iter()
                .map(|e| (e.token(), ReadMode::after_event(e))),
        );
        let now = self.now();
        for &(t, read) in &tokens {
            self.on_token(t, read, now);
            self.apply(now);
        }
        self.mio.tokens = tokens;
        let now = self.now();
        self.handle_timeouts(now);
        Ok(())
    }

    /// A poll waited and no socket became ready, and some connection went
    /// idle since the last such poll: the loop is quiet. Every idle
    /// connection gives back its empty read and write buffers (one check
    /// each for those that gave them back before), which a busy keep-alive
    /// connection keeps from one exchange to the next (dropping them at every exchange's end cost
    /// 11 % more instructions per request: the next exchange allocates them
    /// again). An idle connection is left with its TLS session.
    #[cold]
    #[inline(never)]
    fn release_idle_buffers(&mut self) {
        self.idled = false;
        for key in self.pools.idle_conns() {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.release_buffers(0);
            }
        }
    }

    /// Embedded mode: handle one mio event. Returns false when the token is
    /// not the engine's.
    pub fn handle_event(&mut self, event: &mio::event::Event) -> bool {
        if !self.mio.owns(event.token()) {
            return false;
        }
        let now = self.now();
        self.on_token(event.token(), ReadMode::after_event(event), now);
        self.apply(now);
        true
    }

    /// How long the host may sleep before calling [`Engine::handle_timeouts`]:
    /// zero while events wait in [`Engine::next_event`] (drain them before
    /// sleeping) or other work is pending, else the next deadline; `None`
    /// when nothing is scheduled.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.out.is_empty() {
            return Some(Duration::ZERO);
        }
        self.work_timeout(now)
    }

    /// [`Engine::next_timeout`] without the queued events: the next
    /// deadline, or zero when a read or resume waits for the next turn.
    fn work_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_again.is_empty() || !self.resumed.is_empty() {
            return Some(Duration::ZERO);
        }
        self.timers.next_timeout(now)
    }

    /// Fire every deadline due at `now`, and finish deferred work (resolver
    /// answers, submissions from handles, reads cut short by the budget).
    /// Harmless to call more often than needed.
    pub fn handle_timeouts(&mut self, now: Instant) {
        let now = self.timers.advance(now);
        self.drain_commands(now);
        self.drain_answers(now);
        self.read_deferred(now);
        self.resume_reads(now);
        while let Some(timer) = self.timers.poll_expired(now) {
            self.on_timer(timer, now);
            self.apply(now);
        }
        self.apply(now);
        self.pools.sweep();
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.connections = self.conns.len();
        s.timers = self.timers.len();
        s.queued = self.pools.queued();
        s.in_flight = self.reqs.len() - s.queued;
        s.fresh_chains_pending = self.pools.fresh_pending();
        s.pools = self.pools.len();
        // One entry per origin, whichever routes (direct, proxies) it took.
        let mut at = std::collections::HashMap::new();
        s.origins = Vec::new();
        for stats in self.pools.origin_stats() {
            match at.get(&stats.origin) {
                Some(&i) => {
                    if let Some(o) = s.origins.get_mut(i) {
                        crate::stats::OriginStats::absorb(o, stats);
                    }
                }
                None => {
                    at.insert(stats.origin.clone(), s.origins.len());
                    s.origins.push(stats.clone());
                }
            }
        }
        s
    }

    /// Close every connection that carries no exchange: idle ones (with
    /// close_notify on TLS) and ones still being opened. Requests waiting for
    /// a connection keep waiting: their pools open new ones for them, so a
    /// request whose connection was still opening is not stranded.
    pub fn close_idle(&mut self) {
        let now = self.now();
        self.close_all_idle(CloseReason::Shutdown, now);
        self.apply(now);
        self.pools.sweep();
    }

    /// Fail every queued and in-flight request with [`Error::Shutdown`], send
    /// close_notify on every TLS connection, close every socket and stop the
    /// resolver threads: queued lookups are dropped, and a lookup in
    /// progress is waited for at most 100 ms (a system lookup cannot be
    /// interrupted; its thread then finishes it, drops the answer and exits
    /// on its own, counted by `resolver_threads` (with the `test-hooks`
    /// feature) until it does).
    /// Later submissions fail with [`Error::Shutdown`].
    pub fn shutdown(&mut self) {
        self.stop(true);
    }

    fn stop(&mut self, join: bool) {
        if self.shut {
            return;
        }
        let now = self.now();
        self.drain_commands(now);
        self.apply(now);
        self.shut = true;
        self.end_everything(&Error::Shutdown, now);
        self.apply(now);
        self.dns.stop(join);
        self.drain_commands(now);
        self.apply(now);
        self.pools.sweep();
    }

    /// Live resolver threads (for leak checks; `test-hooks` only),
    /// including one still inside a lookup that [`Engine::shutdown`]
    /// stopped waiting for.
    #[cfg(feature = "test-hooks")]
    pub fn resolver_threads(&self) -> usize {
        self.dns.threads()
    }

    /// Readiness on `token`: the waker's wakes the command and resolver
    /// queues; a connection's moves it on by its stage.
    fn on_token(&mut self, token: Token, read: ReadMode, now: Instant) {
        let Some(key) = self.mio.conn_of(token) else {
            self.drain_commands(now);
            self.drain_answers(now);
            return;
        };
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.stage() {
            StageName::Resolving => {}
            StageName::Connecting => self.on_connecting(key, read, now),
            StageName::ProxyHandshaking
            | StageName::Tunneling
            | StageName::Handshaking
            | StageName::Ready => self.drive(key, read, now),
        }
    }

    /// The time the engine judges by: the clock, or the latest instant a
    /// host gave [`Engine::handle_timeouts`] when that is later (a host's
    /// clock that ran ahead). Deadlines armed from an earlier instant would
    /// be due at once.
    #[inline]
    fn now(&mut self) -> Instant {
        self.timers.advance(Instant::now())
    }

    /// Bump `counter` engine-wide and for pool `p`.
    #[inline]
    fn count(&mut self, p: PoolKey, counter: Counter) {
        *self.stats.counter(counter) += 1;
        self.pools[p].count(counter);
    }

    fn has_token_room(&self) -> bool {
        self.conns.len() + 1 < self.mio.count
    }
}

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
