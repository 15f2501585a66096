//! The event loop: the [`Engine`] and its [`Handle`], the public API, and
//! the loop that turns readiness, deadlines and commands into work.
//!
//! A request flows submit → [`request`] → [`pool`] → [`connect`] → [`io`] →
//! [`exchange`] → event, with [`timers`] and [`lifecycle`] beside it; a
//! fresh-chain call goes [`fresh`] → [`connect`] → event. This
//! file owns construction, the mio plumbing ([`Mio`]) and the command
//! channel; every other piece of state belongs to the child module named
//! after it, which alone changes it (see the README's architecture notes).

mod connect;
mod exchange;
mod flow;
mod fresh;
mod io;
mod lifecycle;
mod pool;
mod redirect;
mod request;
mod timers;
mod tunnel;
mod upload;

#[cfg(test)]
mod tests;

// The lifetime decisions, pure, for `crate::fuzzing::lifetime`.
#[cfg(feature = "test-hooks")]
pub(crate) use lifecycle::{expiry_deadline, prewarm_deadline, prewarm_wanted, probe_deadline};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mio::{Events, Poll, Registry, Token, Waker};

use crate::conn::{Conn, Stage};
use crate::dns::{Answer, DnsPool, SystemResolver};
use crate::keys::{ConnKey, Key, Slots};
use crate::sock::Net;
use crate::stats::Counter;
use crate::tls::TlsState;
use crate::{
    Body, BuildError, ChainRequestId, CloseReason, Config, ConnId, Error, Event, Origin, PeerChain,
    Phase, Policy, RequestId, RequestOptions, Stats,
};

use self::io::{Buffers, ReadMode};
use self::pool::{PoolKey, Pools};
use self::request::Requests;
use self::timers::Timers;

pub use self::flow::Progress;

/// What a [`Handle`] sends to the engine's thread.
enum Command {
    Submit(Box<(RequestId, http::Request<Body>, RequestOptions)>),
    Cancel(RequestId),
    SendBody(RequestId, Bytes),
    EndBody(RequestId, Option<Box<HeaderMap>>),
    Consume(RequestId, usize),
    Pause(RequestId, bool),
    FreshChain(ChainRequestId, Origin, Duration),
}

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
    net: Net,
    config: Config,
    stats: Stats,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
    next_req: Arc<AtomicU64>,
    next_conn: u64,
    bufs: Buffers,
    /// Connections whose read stopped at the budget: read on next turn.
    read_again: Vec<(ConnKey, ConnId)>,
    /// Connections whose host let their body go on: read on next turn.
    resumed: Vec<(ConnKey, ConnId)>,
    /// A connection went idle since the last quiet poll (see
    /// `Engine::release_idle_buffers`).
    idled: bool,
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
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> Result<RequestId, Error> {
        let id = RequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        let request = request.map(Into::into);
        self.send(Command::Submit(Box::new((id, request, opts))))?;
        Ok(id)
    }

    /// Hand a chunk of a [`Body::stream`] to request `id` (see
    /// [`Engine::send_body`]). A chunk past the request's send window fails
    /// the request with [`Error::WindowFull`]; chunks for a request that
    /// has ended are dropped.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn send_body(&self, id: RequestId, data: Bytes) -> Result<(), Error> {
        self.send(Command::SendBody(id, data))
    }

    /// End the [`Body::stream`] of request `id` (see [`Engine::end_body`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn end_body(&self, id: RequestId, trailers: Option<HeaderMap>) -> Result<(), Error> {
        self.send(Command::EndBody(id, trailers.map(Box::new)))
    }

    /// Report `n` streamed body bytes of `id` consumed (see [`Engine::consume`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn consume(&self, id: RequestId, n: usize) -> Result<(), Error> {
        self.send(Command::Consume(id, n))
    }

    /// Pause (`true`) or resume (`false`) the streamed body of `id` (see
    /// [`Engine::pause`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn pause(&self, id: RequestId, paused: bool) -> Result<(), Error> {
        self.send(Command::Pause(id, paused))
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.tx.send(cmd).map_err(|_| Error::Shutdown)?;
        let _ = self.waker.wake();
        Ok(())
    }

    /// Cancel a request; it ends with [`Error::Cancelled`] unless it already ended.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn cancel(&self, id: RequestId) -> Result<(), Error> {
        self.send(Command::Cancel(id))
    }

    /// [`Engine::fresh_chain`] from another thread: its
    /// [`Event::FreshChain`] comes out of the engine's `next_event`. The
    /// freshness counts from when the engine's loop takes the call.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the engine is gone.
    pub fn fresh_chain(
        &self,
        origin: Origin,
        freshness: Duration,
    ) -> Result<ChainRequestId, Error> {
        let id = ChainRequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.tx
            .send(Command::FreshChain(id, origin, freshness))
            .map_err(|_| Error::Shutdown)?;
        let _ = self.waker.wake();
        Ok(id)
    }
}

/// The largest receive window of [`Engine::execute_into`]: past 128 KiB the
/// pieces and the read buffer they are cut from reach sizes the allocator
/// maps and keeps (a 256 MiB download grew RSS by 1.2 MiB at 256 KiB, 0.3
/// at 128 KiB, at the same speed).
const EXECUTE_INTO_WINDOW: usize = 128 * 1024;

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
    /// file, say), [`BuildError::Proxy`] for bad proxy settings, and
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
        let proxies = config.proxy.resolve().map_err(BuildError::Proxy)?;
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
        if let Some(rk) = self.reqs.find(id) {
            self.abort_request(rk, error, CloseReason::Error, Instant::now());
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
    /// with [`Error::InvalidRequest`], a request submitted after
    /// [`Engine::shutdown`] with [`Error::Shutdown`]. The body is anything
    /// that converts into a [`Body`]: bytes, a file, or a stream the host
    /// feeds with [`Engine::send_body`].
    pub fn submit(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> RequestId {
        let id = RequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.submit_with_id(id, request.map(Into::into), opts, Instant::now());
        id
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
    /// request fails with it too); [`Error::InvalidRequest`] when `id` has
    /// ended, has no streamed body, or its body was ended.
    pub fn send_body(&mut self, id: RequestId, data: Bytes) -> Result<(), Error> {
        self.feed_body(id, data, Instant::now())
    }

    /// End request `id`'s [`Body::stream`]; `trailers` follow a chunked
    /// body (one without a declared length).
    ///
    /// # Errors
    /// [`Error::BodySource`] when the body is shorter than its declared
    /// length, or trailers were given for a body with one (the request fails
    /// with it too); [`Error::InvalidRequest`] when `id` has ended or has no
    /// streamed body.
    pub fn end_body(&mut self, id: RequestId, trailers: Option<HeaderMap>) -> Result<(), Error> {
        self.finish_body(id, trailers, Instant::now())
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
    /// In the event's `result`: [`Error::InvalidRequest`] for an `http://`
    /// origin; [`Error::ConnectionLimit`] when the origin is at
    /// `max_connections` with no idle connection to close;
    /// [`Error::Shutdown`] after (or during) [`Engine::shutdown`], and
    /// [`Error::Cancelled`] when [`Engine::close_idle`] closes the
    /// handshake's connection; otherwise the connection's error (resolve,
    /// connect, TLS with rustls's reason, or a [`crate::Deadline`]).
    pub fn fresh_chain(&mut self, origin: &Origin, freshness: Duration) -> ChainRequestId {
        let id = ChainRequestId(self.next_req.fetch_add(1, Ordering::Relaxed));
        self.fresh_chain_with_id(id, origin.clone(), freshness, Instant::now());
        id
    }

    /// Cancel a request: it ends with [`Error::Cancelled`] (its connection,
    /// if mid-exchange, is closed). Unknown or finished ids are ignored.
    pub fn cancel(&mut self, id: RequestId) {
        self.cancel_at(id, Instant::now());
    }

    /// Run the loop until the request ends; returns its response. Events
    /// about other requests and connections stay queued for `next_event`.
    ///
    /// # Errors
    /// The request's error; [`Error::InvalidRequest`] for an embedded engine
    /// (the host owns the loop there) and for a [`Body::stream`] (nothing
    /// would feed it); a failing poll ends the request (no event about it
    /// is left queued) with [`Error::Io`] of [`Phase::Request`].
    pub fn execute(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> Result<http::Response<Bytes>, Error> {
        if self.mio.poll.is_none() {
            return Err(Error::InvalidRequest(
                "execute needs an engine that owns its poll".into(),
            ));
        }
        let request = request.map(Into::into);
        if matches!(request.body().kind, crate::body::Kind::Stream { .. }) {
            return Err(Error::InvalidRequest(
                "execute cannot feed a streamed request body".into(),
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
            if let Err(e) = self.poll_with(None, false) {
                self.abandon(id);
                return Err(Error::io(Phase::Request, e));
            }
        }
    }

    /// Run the loop until the request ends, writing its body to `sink` as
    /// it arrives (streamed, so `max_body` does not apply and memory stays
    /// within the receive window whatever the size). Each piece is written
    /// before the loop reads on, so a large window buys nothing here: the
    /// window is the smaller of [`RequestOptions::receive_window`] and
    /// 256 KiB (with the 1 MiB default, a 256 MiB download's RSS grew by
    /// 2 MiB; with 256 KiB by 0.6 MiB, at the same speed). Returns the
    /// response head, with [`Trailers`](crate::Trailers) in its extensions
    /// for a chunked body with trailers. Other events stay queued.
    ///
    /// # Errors
    /// The request's error; [`Error::Sink`] when writing to `sink` fails
    /// (the request is cancelled); [`Error::InvalidRequest`] for an embedded
    /// engine; a request body fed by the host cannot be used here (nothing
    /// would feed it) and ends with [`Error::InvalidRequest`].
    pub fn execute_into(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
        sink: &mut impl std::io::Write,
    ) -> Result<http::Response<()>, Error> {
        if self.mio.poll.is_none() {
            return Err(Error::InvalidRequest(
                "execute_into needs an engine that owns its poll".into(),
            ));
        }
        let request = request.map(Into::into);
        if matches!(request.body().kind, crate::body::Kind::Stream { .. }) {
            return Err(Error::InvalidRequest(
                "execute_into cannot feed a streamed request body".into(),
            ));
        }
        let opts = opts
            .streaming(true)
            .manual_consume(true)
            .receive_window(opts.receive_window.min(EXECUTE_INTO_WINDOW));
        let id = self.submit(request, opts);
        let mut head = None;
        loop {
            while let Some(pos) = self.out.iter().position(|e| e.request_id() == Some(id)) {
                match self.out.remove(pos) {
                    Some(Event::Head { response, .. }) => head = Some(response),
                    Some(Event::Body { data, .. }) => {
                        if let Err(e) = sink.write_all(&data) {
                            self.abandon(id);
                            return Err(Error::Sink(Arc::new(e)));
                        }
                        self.consume(id, data.len());
                    }
                    Some(Event::End { trailers, .. }) => {
                        let mut response = head.unwrap_or_default();
                        if let Some(t) = trailers {
                            response.extensions_mut().insert(crate::Trailers(t));
                        }
                        return Ok(response);
                    }
                    Some(Event::Failed { error, .. }) => return Err(error),
                    _ => {}
                }
            }
            if let Err(e) = self.poll_with(None, false) {
                self.abandon(id);
                return Err(Error::io(Phase::Request, e));
            }
        }
    }

    /// End request `id` whose outcome `execute` or `execute_into` has
    /// already returned: its events, the cancel's included, are dropped, so
    /// the host never sees a second outcome.
    fn abandon(&mut self, id: RequestId) {
        self.cancel(id);
        self.out.retain(|e| e.request_id() != Some(id));
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
                .is_some_and(|r| !r.opts.manual_consume);
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
        let now = Instant::now();
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
        let now = Instant::now();
        for &(t, read) in &tokens {
            self.on_token(t, read, now);
        }
        self.mio.tokens = tokens;
        self.handle_timeouts(Instant::now());
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
        for pool in self.pools.iter() {
            for &(_, key) in &pool.idle {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.release_buffers(0);
                }
            }
        }
    }

    /// Embedded mode: handle one mio event. Returns false when the token is
    /// not the engine's.
    pub fn handle_event(&mut self, event: &mio::event::Event) -> bool {
        if !self.mio.owns(event.token()) {
            return false;
        }
        self.on_token(event.token(), ReadMode::after_event(event), Instant::now());
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
        }
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
        let now = Instant::now();
        let idle: Vec<(ConnKey, PoolKey)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.req.is_none() && c.attempt_for().is_none())
            .map(|(k, c)| (k, c.pool))
            .collect();
        let mut pools: Vec<PoolKey> = idle.iter().map(|&(_, p)| p).collect();
        for (key, _) in idle {
            self.close_conn(key, CloseReason::Shutdown);
        }
        pools.sort_unstable();
        pools.dedup();
        for p in pools {
            self.dispatch(p, now);
        }
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
        let now = Instant::now();
        self.drain_commands(now);
        self.shut = true;
        for rk in self.reqs.keys() {
            self.abort_request(rk, Error::Shutdown, CloseReason::Shutdown, now);
        }
        for key in self.conns.keys() {
            self.close_conn(key, CloseReason::Shutdown);
        }
        self.dns.stop(join);
        self.drain_commands(now);
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
            Stage::Resolving => {}
            Stage::Connecting => self.on_connecting(key, read, now),
            Stage::ProxyHandshaking | Stage::Tunneling | Stage::Handshaking | Stage::Ready => {
                self.drive(key, read, now)
            }
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Submit(sub) => {
                    let (id, req, opts) = *sub;
                    self.submit_with_id(id, req, opts, now)
                }
                Command::Cancel(id) => self.cancel_at(id, now),
                Command::SendBody(id, data) => {
                    if let Err(e @ Error::WindowFull { .. }) = self.feed_body(id, data, now) {
                        if let Some(rk) = self.reqs.find(id) {
                            self.abort_request(rk, e, CloseReason::Error, now);
                        }
                    }
                }
                Command::EndBody(id, trailers) => {
                    // A failure already ended the request with its error.
                    let _ = self.finish_body(id, trailers.map(|t| *t), now);
                }
                Command::Consume(id, n) => self.consumed(id, n),
                Command::Pause(id, paused) => self.set_paused(id, paused),
                Command::FreshChain(id, origin, freshness) => {
                    self.fresh_chain_with_id(id, origin, freshness, now)
                }
            }
        }
    }

    /// The connection at `key`, if it is still the one with `id`: slab keys
    /// are reused, so a key held across a call that may close connections is
    /// checked this way before it is used again.
    #[inline]
    fn live(&mut self, key: ConnKey, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(key).filter(|c| c.id == id)
    }

    #[inline]
    fn is_live(&self, key: ConnKey, id: ConnId) -> bool {
        self.conns.get(key).is_some_and(|c| c.id == id)
    }

    /// Bump `counter` engine-wide and for pool `p`.
    #[inline]
    fn count(&mut self, p: PoolKey, counter: Counter) {
        *self.stats.counter(counter) += 1;
        *self.pools[p].stats.counter(counter) += 1;
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
