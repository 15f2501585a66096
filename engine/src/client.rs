//! [`Client`]: the engine behind blocking calls, driven by the threads that
//! wait on it.
//!
//! # Who drives the engine
//!
//! One [`Engine`], embedded on a `mio::Poll` the client owns, sits behind a
//! mutex with the routing tables (which request's messages go to which
//! caller). Driving the loop is a role, the *lead*, held by one thread at a
//! time: it takes the poll out of the shared state, waits on it *without*
//! the mutex, then takes the mutex to hand the engine what happened and to
//! route the events.
//!
//! - **A caller waiting on its request leads** when nobody else does: it
//!   submits under the mutex (the request is written to an idle
//!   connection at once), polls, reads, and returns as soon as its own
//!   request has what it waited for (the head, a piece of body, the end),
//!   putting the lead down. A thread that makes one call after another
//!   never crosses to another thread: no channel, no waker write, no futex.
//! - **Other callers** submit under the mutex too, then park. The leader
//!   routes their messages into per-request mailboxes and unparks them; a
//!   submission wakes the leader (the engine's waker) only when it brings
//!   the next deadline forward. A leader that returns hands the lead to a
//!   parked caller, if there is one.
//! - **The client's thread** (`rotary-client`) leads when nobody else has
//!   for [`LINGER`] (5 ms), or at once when a deadline of the engine is due
//!   meanwhile, and keeps polling for as long as no caller waits: ages,
//!   probes, chain changes, idle closes, stale-connection reads and every
//!   timer run with no caller present, exactly as on the engine's own
//!   thread. A caller that finds it leading wakes it, and it hands over.
//!   So an idle client costs what an idle engine thread costs (a poll that
//!   sleeps until the next deadline), and a busy one spends its time on the
//!   callers' threads.
//!
//! Every request runs in streaming mode with manual consumption, so the
//! caller's [`ResponseBody`] reads are the engine's flow control: bytes a
//! caller has not read yet stay within the request's receive window, in a
//! mailbox only that caller drains. A [`Body::reader`] is read on the
//! *caller's* thread, with the lead put down, so a slow source holds up
//! only its own request.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use mio::{Events, Poll, Waker};

use crate::body::Kind;
use crate::{
    Body, ChainRequestId, Config, Engine, Error, Event, Origin, PeerChain, RequestId,
    RequestOptions, Stats,
};

/// Lifecycle events the [`Client`] keeps for a host that has not read them
/// yet; later ones are dropped (and counted) until it does.
pub const LIFECYCLE_CAPACITY: usize = 256;

/// Largest piece read from a [`Body::reader`] at once.
const READ_PIECE: usize = 64 * 1024;

/// How long the lead may lie free before the client's own thread takes it
/// up: long enough that a thread making call after call keeps it (the gap
/// between two calls is microseconds, and a caller descheduled on a busy
/// machine misses a few milliseconds), short enough that readiness nobody
/// waits for (a server's FIN on an idle connection) is seen within it.
/// Deadlines do not wait for it: the client's thread wakes for the next one.
pub(crate) const LINGER: Duration = Duration::from_millis(5);

/// The most of a response body the engine reads ahead of the caller's
/// reads (less when [`RequestOptions::receive_window`] is smaller). The
/// caller reads from the engine's own pieces, so the body's memory is the
/// window, the read buffer the pieces were cut from, and the allocator's
/// slack around both: with 128 KiB a 256 MiB download grows RSS by about
/// 0.3 MiB, with 1 MiB by 3.5 MiB (the allocator serves pieces of 256 KiB
/// and more from mappings it keeps), at the same speed.
pub(crate) const CLIENT_WINDOW: usize = 128 * 1024;

/// Events one poll takes at most.
const EVENTS: usize = 1024;

/// A blocking HTTP/1.1-over-TLS client: one [`Engine`], driven by the
/// threads that wait on it and, when none does, by its own thread, with
/// every lifetime rule of the engine (max age with jitter, drain, full
/// handshakes, chain reports). See the module notes in the README
/// ("Writing a runner") for who drives the engine when.
///
/// `Send + Sync + Clone`: clones share the engine and its connections. The
/// client stops, failing whatever is in flight with [`Error::Shutdown`],
/// when [`Client::shutdown`] is called or the last clone is dropped (which
/// waits for its thread the same way).
///
/// ```no_run
/// use std::io::Read;
/// let client = rotary::Client::new(rotary::Config::default())?;
/// let req = http::Request::get("https://example.com/").body(())?;
/// let mut resp = client.send(req)?;
/// let mut text = String::new();
/// resp.body_mut().read_to_string(&mut text)?;
/// println!("{} {} bytes", resp.status(), text.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    lifecycle: Mutex<Option<mpsc::Receiver<Event>>>,
}

/// What every thread of a client shares.
struct Shared {
    core: Mutex<Core>,
    /// The engine's waker: wakes whoever leads out of its poll.
    waker: Arc<Waker>,
    dropped: AtomicU64,
}

/// The poll and its events buffer: whoever holds them leads.
struct Lead {
    poll: Poll,
    events: Events,
    /// `events` came out of a poll and the engine has not seen them yet:
    /// the client's thread hands them over with the lead, so a waiting
    /// caller does that I/O on its own thread (see [`Shared::lead`]).
    unhandled: bool,
    /// That poll waited and saw nothing.
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    Nobody,
    Caller,
    Background,
}

/// What a parked thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Req(RequestId),
    Chain(ChainRequestId),
}

/// The state behind the client's mutex.
struct Core {
    engine: Engine,
    /// The lead, while nobody holds it.
    lead: Option<Box<Lead>>,
    leader: Leader,
    /// The leader is inside its poll until this instant (`Some(None)`:
    /// until woken); `None` while it is not polling.
    sleeping: Option<Option<Instant>>,
    /// A wake is on its way to the leader.
    woken: bool,
    /// When the lead was last put down.
    released: Instant,
    routes: HashMap<RequestId, Route>,
    chains: HashMap<ChainRequestId, Option<Result<Arc<PeerChain>, Error>>>,
    /// Callers waiting without the lead.
    parked: Vec<(Key, Thread)>,
    /// Parked callers to wake once the mutex is let go (so they do not
    /// wake only to wait for it).
    wake: Vec<Thread>,
    /// The client's thread.
    background: Option<Thread>,
    stopping: bool,
    /// Dropped when the client stops, so the host's receiver sees the end.
    lifecycle: Option<mpsc::SyncSender<Event>>,
}

/// One request's mailbox.
struct Route {
    mail: VecDeque<Msg>,
    /// Body bytes the engine took from the caller's reader.
    fed: u64,
}

/// What the engine tells the caller of one request.
enum Msg {
    /// The engine has room for the request body up to this many bytes in
    /// all, counted from the body's start: the bytes it has taken plus the
    /// room of its window as it was handed out. An absolute limit, so asks
    /// that overlap with pieces still being read never add up to more than
    /// the window (a room relative to "now" would count those pieces twice).
    Wanted(u64),
    Head(http::Response<()>),
    Body(Bytes),
    End(Option<HeaderMap>),
    Failed(Error),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Build the engine (errors come back here) and start the client's
    /// thread, named `rotary-client`, which drives the engine while no
    /// caller does.
    ///
    /// # Errors
    /// As [`Engine::new`]; [`BuildError::Io`](crate::BuildError::Io) when
    /// the poll or the thread cannot be made.
    pub fn new(config: Config) -> Result<Client, crate::BuildError> {
        let poll = Poll::new()?;
        let engine = Engine::embedded(poll.registry(), 0, usize::MAX, config)?;
        let (life_tx, life_rx) = mpsc::sync_channel(LIFECYCLE_CAPACITY);
        let shared = Arc::new(Shared {
            waker: engine.waker(),
            core: Mutex::new(Core {
                engine,
                lead: Some(Box::new(Lead {
                    poll,
                    events: Events::with_capacity(EVENTS),
                    unhandled: false,
                    quiet: false,
                })),
                leader: Leader::Nobody,
                sleeping: None,
                woken: false,
                released: Instant::now(),
                routes: HashMap::new(),
                chains: HashMap::new(),
                parked: Vec::new(),
                wake: Vec::new(),
                background: None,
                stopping: false,
                lifecycle: Some(life_tx),
            }),
            dropped: AtomicU64::new(0),
        });
        let bg = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rotary-client".into())
            .spawn(move || bg.background())?;
        shared.lock().background = Some(thread.thread().clone());
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some(thread)),
                lifecycle: Mutex::new(Some(life_rx)),
            }),
        })
    }

    /// Send a request with default [`RequestOptions`]; see [`Client::send_with`].
    ///
    /// # Errors
    /// As [`Client::send_with`].
    pub fn send(
        &self,
        request: http::Request<impl Into<Body>>,
    ) -> Result<http::Response<ResponseBody>, Error> {
        self.send_with(request, RequestOptions::default())
    }

    /// Send a request and wait for its response head, driving the engine
    /// on this thread meanwhile when no other caller does. The body is read
    /// from the returned [`ResponseBody`] as it arrives (at most
    /// [`RequestOptions::receive_window`] of it, and at most 128 KiB, waits
    /// unread; the server is held back through TCP beyond that). The response's extensions hold
    /// the [`ServedBy`](crate::ServedBy) (connection, chain, redirect target).
    ///
    /// The request body may be anything [`Body`] takes: bytes, a
    /// [`Body::file`] (read by the engine), or a [`Body::reader`], read on
    /// this thread as the engine asks for more. A [`Body::stream`] has no
    /// one to feed it here and fails with [`Error::Unsupported`]. Options
    /// apply as documented on [`RequestOptions`], except that the body is
    /// always streamed to the [`ResponseBody`]; `max_buffered_body` bounds
    /// [`ResponseBody::bytes`].
    ///
    /// # Errors
    /// The request's error (which names its phase); [`Error::BodySource`]
    /// when the reader fails; [`Error::Shutdown`] once the client shut down.
    pub fn send_with(
        &self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> Result<http::Response<ResponseBody>, Error> {
        self.start(request, opts)?.wait()
    }

    /// Submit a request and return at once: [`Pending::wait`] or
    /// [`Pending::wait_timeout`] gives its response head, as
    /// [`Client::send_with`] does, and dropping the [`Pending`] cancels the
    /// request (say, a long poll a signal should cut short). Meanwhile the
    /// client's thread drives the request.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a [`Body::stream`];
    /// [`Error::Shutdown`] once the client shut down. The request's own
    /// errors come from the wait.
    pub fn start(
        &self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> Result<Pending, Error> {
        let mut request = request.map(Into::into);
        let upload = match &mut request.body_mut().kind {
            Kind::Stream { .. } => {
                return Err(Error::Unsupported(
                    "a Client cannot feed a Body::stream; use Body::reader".into(),
                ))
            }
            Kind::Reader { reader, len } => {
                let (reader, len) = (reader.take(), *len);
                // From here the engine sees a stream this thread feeds.
                request.body_mut().kind = Kind::Stream { len };
                reader.map(|reader| Upload {
                    reader,
                    sent: 0,
                    done: false,
                    scratch: Vec::new(),
                })
            }
            _ => None,
        };
        let window = opts.receive_window.min(CLIENT_WINDOW);
        let opts = opts
            .streaming(true)
            .manual_consume(true)
            .receive_window(window);
        let shared = &self.inner.shared;
        let mut core = shared.lock();
        if core.stopping {
            return Err(Error::Shutdown);
        }
        let id = core.engine.submit(request, opts);
        core.routes.insert(
            id,
            Route {
                mail: VecDeque::new(),
                fed: 0,
            },
        );
        core.route(shared);
        core.kick(shared);
        Shared::unlock(core);
        Ok(Pending {
            body: Some(ResponseBody {
                id,
                shared: shared.clone(),
                chunk: Bytes::new(),
                chunk_len: 0,
                state: State::Open,
                trailers: None,
                upload,
                max_buffered_body: opts.max_buffered_body,
            }),
        })
    }

    /// The origin's chain as it is now (see [`Engine::fresh_chain`]): the
    /// chain of a full handshake that finished within `freshness`, or of one
    /// started now. Calls for one origin from many threads share one
    /// handshake.
    ///
    /// # Errors
    /// As [`Engine::fresh_chain`]'s event; [`Error::Shutdown`] once the
    /// client shut down.
    pub fn fresh_chain(
        &self,
        origin: &Origin,
        freshness: Duration,
    ) -> Result<Arc<PeerChain>, Error> {
        let shared = &self.inner.shared;
        let mut core = shared.lock();
        if core.stopping {
            return Err(Error::Shutdown);
        }
        let id = core.engine.fresh_chain(origin, freshness);
        core.chains.insert(id, None);
        core.route(shared);
        Shared::unlock(core);
        let taken = shared.wait(Key::Chain(id), None, |core| match core.chains.get(&id) {
            Some(Some(_)) => core.chains.remove(&id).flatten(),
            Some(None) if core.stopping => {
                core.chains.remove(&id);
                Some(Err(Error::Shutdown))
            }
            Some(None) => None,
            None => Some(Err(Error::Shutdown)),
        });
        taken.unwrap_or(Err(Error::Shutdown))
    }

    /// The engine's counters and gauges (see [`Engine::stats`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the client shut down.
    pub fn stats(&self) -> Result<Stats, Error> {
        let core = self.inner.shared.lock();
        if core.stopping {
            return Err(Error::Shutdown);
        }
        Ok(core.engine.stats())
    }

    /// Close every connection that carries no exchange (see
    /// [`Engine::close_idle`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the client shut down.
    pub fn close_idle(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let mut core = shared.lock();
        if core.stopping {
            return Err(Error::Shutdown);
        }
        core.engine.close_idle();
        core.route(shared);
        core.kick(shared);
        Shared::unlock(core);
        Ok(())
    }

    /// The lifecycle events — [`Event::Opened`], [`Event::Closed`],
    /// [`Event::ConnectFailed`], [`Event::ChainChanged`],
    /// [`Event::TrustError`], [`Event::CredentialsInvalid`] (a live
    /// connection whose client identity, trust anchor or chain stopped
    /// holding, with the reason), [`Event::IdentityExpiring`] — on a
    /// channel. The first call takes the
    /// receiver; later calls get `None`. Reading it is optional: at most
    /// [`LIFECYCLE_CAPACITY`] events wait, later ones are dropped and
    /// counted in [`Client::lifecycle_dropped`].
    pub fn lifecycle(&self) -> Option<mpsc::Receiver<Event>> {
        self.inner
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Lifecycle events dropped because [`LIFECYCLE_CAPACITY`] were
    /// waiting unread.
    pub fn lifecycle_dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stop the client: every queued and in-flight request fails with
    /// [`Error::Shutdown`] (a caller blocked in [`Client::send_with`] gets
    /// it as its result, a [`ResponseBody`] as a read error), TLS
    /// connections get close_notify, the client's thread is joined, and
    /// later calls on any clone fail with [`Error::Shutdown`]. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = &self.shared;
        {
            let mut core = shared.lock();
            if !core.stopping {
                core.stopping = true;
                core.engine.shutdown();
                core.route(shared);
                // Whatever the engine did not end (a route whose request
                // had ended is waiting for its owner) is told now.
                for route in core.routes.values_mut() {
                    route.mail.push_back(Msg::Failed(Error::Shutdown));
                }
                for slot in core.chains.values_mut() {
                    if slot.is_none() {
                        *slot = Some(Err(Error::Shutdown));
                    }
                }
                for (_, t) in &core.parked {
                    t.unpark();
                }
                if let Some(t) = &core.background {
                    t.unpark();
                }
                if core.sleeping.is_some() {
                    let _ = shared.waker.wake();
                }
                core.lifecycle = None;
            }
        }
        if let Some(t) = thread.take() {
            if t.join().is_err() {
                log::error!("the client's thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Let the mutex go, then wake the callers that got mail meanwhile.
    fn unlock(mut core: MutexGuard<'_, Core>) {
        let wake = std::mem::take(&mut core.wake);
        drop(core);
        for t in wake {
            t.unpark();
        }
    }

    /// Wait until `take` finds what `key`'s owner waits for (then it is
    /// returned) or `until` passes (`None`), leading the engine's loop
    /// whenever nobody else does.
    fn wait<T>(
        &self,
        key: Key,
        until: Option<Instant>,
        mut take: impl FnMut(&mut Core) -> Option<T>,
    ) -> Option<T> {
        let mut core = self.lock();
        let found = loop {
            if let Some(found) = take(&mut core) {
                break Some(found);
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                break None;
            }
            if let Some(lead) = core.lead.take() {
                let (c, found) = self.lead(core, lead, Leader::Caller, until, &mut take);
                core = c;
                if found.is_some() {
                    break found;
                }
                continue;
            }
            // Someone else leads: it routes our messages to us and unparks
            // us, or hands us the lead. The client's thread gives it up to
            // any caller that waits.
            core.parked.push((key, std::thread::current()));
            if core.leader == Leader::Background {
                core.wake_leader(self);
            }
            Shared::unlock(core);
            match until {
                Some(u) => std::thread::park_timeout(u.saturating_duration_since(now)),
                None => std::thread::park(),
            }
            core = self.lock();
            if let Some(at) = core.parked.iter().position(|(k, _)| *k == key) {
                core.parked.swap_remove(at);
            }
        };
        Shared::unlock(core);
        found
    }

    /// Drive the engine's loop with `lead` until `done` finds something
    /// (returned), `until` passes, or (for the client's thread) a caller
    /// waits; then put the lead down and hand it to a parked caller.
    fn lead<'a, T>(
        &'a self,
        mut core: MutexGuard<'a, Core>,
        mut lead: Box<Lead>,
        who: Leader,
        until: Option<Instant>,
        done: &mut impl FnMut(&mut Core) -> Option<T>,
    ) -> (MutexGuard<'a, Core>, Option<T>) {
        core.leader = who;
        let found = loop {
            if lead.unhandled {
                lead.unhandled = false;
                for event in lead.events.iter() {
                    core.engine.handle_event(event);
                }
                if lead.quiet {
                    core.engine.handle_quiet();
                }
                core.engine.handle_timeouts(Instant::now());
                core.route(self);
                if let Some(found) = done(&mut core) {
                    break Some(found);
                }
            }
            let now = Instant::now();
            if core.stopping
                || (who == Leader::Background && !core.parked.is_empty())
                || until.is_some_and(|u| now >= u)
            {
                break None;
            }
            let mut timeout = core.engine.next_timeout(now);
            if let Some(u) = until {
                let left = u.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            core.sleeping = Some(timeout.map(|t| now + t));
            core.woken = false;
            Shared::unlock(core);
            let Lead { poll, events, .. } = &mut *lead;
            let polled = poll.poll(events, timeout);
            core = self.lock();
            core.sleeping = None;
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("client: poll failed, shutting the engine down: {e}");
                    core.engine.shutdown();
                }
            }
            lead.unhandled = true;
            lead.quiet = lead.events.is_empty() && timeout != Some(Duration::ZERO);
            // A caller came while the client's thread polled: the events go
            // to it with the lead, so their reads, and the buffers those
            // allocate, are the caller's (at the top of the loop otherwise).
            if who == Leader::Background && !core.parked.is_empty() && !core.stopping {
                break None;
            }
        };
        core.lead = Some(lead);
        core.leader = Leader::Nobody;
        core.released = Instant::now();
        core.hand_over();
        (core, found)
    }

    /// The client's thread: lead while no caller does (see the module notes).
    fn background(self: Arc<Shared>) {
        let mut core = self.lock();
        loop {
            if core.stopping {
                break;
            }
            let now = Instant::now();
            let wait = if core.lead.is_some() {
                let mut due = core.released + LINGER;
                if let Some(t) = core.engine.next_timeout(now) {
                    due = due.min(now + t);
                }
                if due > now {
                    due - now
                } else if !core.parked.is_empty() {
                    // A caller that waits was handed the lead and has not
                    // taken it up yet: remind one (never needed, as the
                    // hand-over already woke one; a guard against a lost
                    // wake-up leaving callers parked with nobody leading).
                    core.released = now;
                    core.hand_over();
                    LINGER
                } else {
                    if let Some(lead) = core.lead.take() {
                        // No caller for LINGER: the loop is quiet, and idle
                        // connections give back their buffers now rather
                        // than at the next poll that times out, which may be
                        // the next deadline, minutes away.
                        core.engine.handle_quiet();
                        let idle = &mut |_: &mut Core| None::<()>;
                        core = self.lead(core, lead, Leader::Background, None, idle).0;
                    }
                    continue;
                }
            } else {
                // A caller leads: look again later. A deadline that falls
                // due meanwhile is the leader's to handle.
                LINGER
            };
            Shared::unlock(core);
            std::thread::park_timeout(wait);
            core = self.lock();
        }
    }
}

impl Core {
    /// Hand every waiting event to whoever waits for it.
    fn route(&mut self, shared: &Shared) {
        while let Some(event) = self.engine.next_event() {
            match event {
                Event::Head {
                    id,
                    mut response,
                    served_by,
                } => {
                    response.extensions_mut().insert(served_by);
                    self.tell(id, Msg::Head(response));
                }
                Event::Body { id, data } => self.tell(id, Msg::Body(data)),
                Event::End { id, trailers } => self.tell(id, Msg::End(trailers)),
                Event::BodyWanted { id, room } => {
                    let fed = self.routes.get(&id).map_or(0, |r| r.fed);
                    self.tell(id, Msg::Wanted(fed + room as u64));
                }
                Event::Failed { id, error, .. } => self.tell(id, Msg::Failed(error)),
                Event::Response {
                    id,
                    response,
                    served_by,
                } => {
                    // Not raised in streaming mode; delivered whole if it is.
                    let (mut parts, body) = response.into_parts();
                    parts.extensions.insert(served_by);
                    self.tell(id, Msg::Head(http::Response::from_parts(parts, ())));
                    if !body.is_empty() {
                        self.tell(id, Msg::Body(body));
                    }
                    self.tell(id, Msg::End(None));
                }
                Event::FreshChain { id, result, .. } => {
                    if let Some(slot) = self.chains.get_mut(&id) {
                        *slot = Some(result);
                        self.unpark(Key::Chain(id));
                    }
                }
                other => {
                    let full = match &self.lifecycle {
                        Some(tx) => tx.try_send(other).is_err(),
                        None => false,
                    };
                    if full {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Put `msg` in request `id`'s mailbox and wake its caller if it is
    /// parked. A request whose owner has gone has no route (its owner
    /// cancelled it on the way out).
    fn tell(&mut self, id: RequestId, msg: Msg) {
        if let Some(route) = self.routes.get_mut(&id) {
            route.mail.push_back(msg);
            self.unpark(Key::Req(id));
        }
    }

    /// The lead was put down: wake one parked caller whose mailbox is
    /// empty, so it takes the lead up (those with mail were woken already
    /// and return without leading).
    fn hand_over(&mut self) {
        let needy = self.parked.iter().find(|(key, _)| match key {
            Key::Req(id) => self.routes.get(id).is_some_and(|r| r.mail.is_empty()),
            Key::Chain(id) => self.chains.get(id).is_some_and(Option::is_none),
        });
        if let Some((_, t)) = needy {
            self.wake.push(t.clone());
        }
    }

    /// Wake the caller parked on `key`, once the mutex is let go.
    fn unpark(&mut self, key: Key) {
        if let Some((_, t)) = self.parked.iter().find(|(k, _)| *k == key) {
            self.wake.push(t.clone());
        }
    }

    /// The engine changed outside the leader's loop (a submission, a
    /// cancel, bytes consumed): a leader asleep in its poll must look again
    /// if the engine's next deadline came before the one it sleeps until.
    /// With nobody leading, the client's thread looks within [`LINGER`].
    fn kick(&mut self, shared: &Shared) {
        let Some(until) = self.sleeping else {
            return;
        };
        let now = Instant::now();
        let Some(next) = self.engine.next_timeout(now).map(|t| now + t) else {
            return;
        };
        if until.is_none_or(|u| next < u) {
            self.wake_leader(shared);
        }
    }

    fn wake_leader(&mut self, shared: &Shared) {
        if self.sleeping.is_some() && !self.woken {
            self.woken = true;
            let _ = shared.waker.wake();
        }
    }
}

/// A request sent with [`Client::start`] whose response head has not been
/// taken yet. Dropping it cancels the request.
#[derive(Debug)]
pub struct Pending {
    /// `None` once the answer has been handed out.
    body: Option<ResponseBody>,
}

impl Pending {
    /// The request's id.
    pub fn id(&self) -> Option<RequestId> {
        self.body.as_ref().map(|b| b.id)
    }

    /// Wait for the response head (reading a [`Body::reader`] meanwhile).
    ///
    /// # Errors
    /// As [`Client::send_with`]; [`Error::Unsupported`] when
    /// [`Pending::wait_timeout`] already gave the answer.
    pub fn wait(mut self) -> Result<http::Response<ResponseBody>, Error> {
        match self.answer(None) {
            Some(result) => result,
            None => Err(Error::Shutdown),
        }
    }

    /// Wait at most `timeout` for the response head: `None` when it has not
    /// come yet (call again), else the answer, once.
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<http::Response<ResponseBody>, Error>> {
        self.answer(Some(Instant::now() + timeout))
    }

    fn answer(
        &mut self,
        until: Option<Instant>,
    ) -> Option<Result<http::Response<ResponseBody>, Error>> {
        let Some(body) = self.body.as_mut() else {
            let why = "the request's answer was already taken".into();
            return Some(Err(Error::Unsupported(why)));
        };
        loop {
            let msg = match body.next_msg(until) {
                Ok(Some(msg)) => msg,
                Ok(None) => return None,
                Err(e) => {
                    body.state = State::Done;
                    self.body = None;
                    return Some(Err(e));
                }
            };
            match msg {
                Msg::Head(head) => {
                    let body = self.body.take()?;
                    let (parts, ()) = head.into_parts();
                    return Some(Ok(http::Response::from_parts(parts, body)));
                }
                Msg::Failed(e) => {
                    body.state = State::Done;
                    self.body = None;
                    return Some(Err(e));
                }
                // Body bytes never come before their head.
                Msg::Wanted(_) | Msg::Body(_) | Msg::End(_) => {}
            }
        }
    }
}

/// A request body read on the caller's thread.
struct Upload {
    reader: Box<dyn Read + Send>,
    sent: u64,
    done: bool,
    /// What one read fills (reused): a piece goes to the engine as a copy of
    /// just its bytes, so a reader of small pieces holds no more than it read.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The body ended (trailers stored) or the request failed.
    Done,
}

/// The body of a [`Client`] response, read as it arrives (`impl Read`).
///
/// Reading hands bytes back to the engine's flow control, so an unread body
/// holds at most the receive window; a read that finds nothing waiting
/// drives the engine on the reading thread when no other thread does. A
/// read fails with an `io::Error` wrapping the request's [`Error`]
/// (`get_ref` and `downcast_ref` recover it; a deadline's kind is
/// `TimedOut`). Dropping the body before its end cancels the request and
/// closes its connection, which is never reused with unread bytes on it.
pub struct ResponseBody {
    id: RequestId,
    shared: Arc<Shared>,
    chunk: Bytes,
    chunk_len: usize,
    state: State,
    trailers: Option<HeaderMap>,
    upload: Option<Upload>,
    max_buffered_body: usize,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("id", &self.id)
            .field("done", &(self.state == State::Done))
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The request this body answers.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Trailers of a chunked body, once it has been read to its end.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Read the rest of the body into memory.
    ///
    /// # Errors
    /// [`Error::BodyTooLarge`] past the request's
    /// [`RequestOptions::max_buffered_body`] (the request is cancelled); the
    /// request's error.
    pub fn bytes(mut self) -> Result<Bytes, Error> {
        let mut all = BytesMut::new();
        loop {
            if !self.chunk.is_empty() {
                if all.len() + self.chunk.len() > self.max_buffered_body {
                    return Err(Error::BodyTooLarge {
                        limit: self.max_buffered_body,
                    });
                }
                all.extend_from_slice(&self.chunk);
                // Dropped, not cleared: see `read`.
                self.chunk = Bytes::new();
                self.consumed();
            }
            if self.state == State::Done {
                return Ok(all.freeze());
            }
            self.take_msg()?;
        }
    }

    /// The next message for this request, feeding the upload when asked;
    /// `None` when `until` passed first.
    fn next_msg(&mut self, until: Option<Instant>) -> Result<Option<Msg>, Error> {
        let id = self.id;
        loop {
            let msg = self.shared.wait(Key::Req(id), until, |core| {
                let route = core.routes.get_mut(&id)?;
                match route.mail.pop_front() {
                    Some(msg) => Some(msg),
                    None if core.stopping => Some(Msg::Failed(Error::Shutdown)),
                    None => None,
                }
            });
            match msg {
                None => return Ok(None),
                Some(Msg::Wanted(limit)) => self.feed(limit)?,
                Some(msg) => return Ok(Some(msg)),
            }
        }
    }

    /// Wait for the next body chunk or the end.
    fn take_msg(&mut self) -> Result<(), Error> {
        match self.next_msg(None) {
            Ok(Some(Msg::Body(data))) => {
                self.chunk_len = data.len();
                self.chunk = data;
            }
            Ok(Some(Msg::End(trailers))) => {
                self.trailers = trailers;
                self.state = State::Done;
            }
            Ok(Some(Msg::Failed(e))) | Err(e) => {
                self.state = State::Done;
                return Err(e);
            }
            Ok(Some(Msg::Head(_) | Msg::Wanted(_)) | None) => {}
        }
        Ok(())
    }

    /// The chunk just read out: the engine may read that much more.
    fn consumed(&mut self) {
        if self.chunk_len > 0 {
            let (id, n) = (self.id, self.chunk_len);
            self.chunk_len = 0;
            let shared = &self.shared;
            let mut core = shared.lock();
            core.engine.consume(id, n);
            core.kick(shared);
            Shared::unlock(core);
        }
    }

    /// Hand the engine the reader's bytes up to `limit` (counted from the
    /// body's start; see [`Msg::Wanted`]). Pieces already sent count, so an
    /// ask that they cover sends nothing: the engine asks again once they
    /// are in. The reader runs without the client's mutex or the lead.
    fn feed(&mut self, mut limit: u64) -> Result<(), Error> {
        let Some(up) = self.upload.as_mut().filter(|u| !u.done) else {
            return Ok(());
        };
        let (id, shared) = (self.id, &self.shared);
        // Each piece goes to the engine as soon as it is read, so a reader
        // that trickles (a live log) is sent as it comes, and the pieces
        // together fill the room the engine has.
        let mut left = usize::try_from(limit.saturating_sub(up.sent)).unwrap_or(usize::MAX);
        while left > 0 {
            let want = left.min(READ_PIECE);
            if up.scratch.len() < want {
                up.scratch.resize(want, 0);
            }
            let Some(buf) = up.scratch.get_mut(..want) else {
                return Ok(());
            };
            let n = match up.reader.read(buf) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let error = Error::BodySource {
                        reason: format!("reading the body failed: {e}"),
                        sent: up.sent,
                    };
                    up.done = true;
                    let mut core = shared.lock();
                    core.engine.cancel(id);
                    core.routes.remove(&id);
                    core.route(shared);
                    core.kick(shared);
                    Shared::unlock(core);
                    self.state = State::Done;
                    return Err(error);
                }
            };
            let mut core = shared.lock();
            if core.stopping {
                return Err(Error::Shutdown);
            }
            if n == 0 {
                up.done = true;
                // A failure ends the request with its own event.
                let _ = core.engine.end_body(id, None);
                core.route(shared);
                core.kick(shared);
                Shared::unlock(core);
                return Ok(());
            }
            let piece = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            up.sent += n as u64;
            match core.engine.send_body(id, piece) {
                Ok(()) => {
                    if let Some(route) = core.routes.get_mut(&id) {
                        route.fed += n as u64;
                    }
                }
                // Never while the reader stays within the limits it is
                // given; a piece dropped would corrupt the body, so the
                // request ends, with the error that says why.
                Err(e @ Error::WindowFull { .. }) => {
                    log::error!("request {}: body piece past the window: {e}", id.0);
                    core.engine.abort(id, e);
                }
                // A failure ends the request with its own event.
                Err(e) => log::debug!("request {}: body piece not taken: {e}", id.0),
            }
            core.route(shared);
            // Asks raised while this one was fed are newer, and the highest
            // is where this feed stops: the reader is asked for the window's
            // worth, not, ask by stale ask, for the few bytes each piece
            // freed (a silly window: pieces that shrink to tens of bytes,
            // each its own TLS record).
            if let Some(route) = core.routes.get_mut(&id) {
                while let Some(&Msg::Wanted(newer)) = route.mail.front() {
                    route.mail.pop_front();
                    limit = limit.max(newer);
                }
            }
            left = usize::try_from(limit.saturating_sub(up.sent)).unwrap_or(usize::MAX);
            core.kick(shared);
            Shared::unlock(core);
        }
        Ok(())
    }
}

impl Read for ResponseBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.chunk.is_empty() {
                let n = buf.len().min(self.chunk.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..n), self.chunk.get(..n)) {
                    to.copy_from_slice(from);
                }
                self.chunk.advance(n);
                if self.chunk.is_empty() {
                    // An empty `Bytes` still holds its share of the
                    // connection's read buffer: kept, the next read into
                    // that buffer would find it shared and allocate a new
                    // one (and grow it again record by record), and the
                    // old one would stay pinned until this chunk is
                    // replaced.
                    self.chunk = Bytes::new();
                    self.consumed();
                }
                return Ok(n);
            }
            if self.state == State::Done || buf.is_empty() {
                return Ok(0);
            }
            self.take_msg().map_err(into_io)?;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut core = shared.lock();
        core.routes.remove(&self.id);
        if self.state == State::Open && !core.stopping {
            core.engine.cancel(self.id);
            core.route(shared);
            core.kick(shared);
        }
        Shared::unlock(core);
    }
}

/// A request's error as an `io::Error` that carries it.
fn into_io(e: Error) -> io::Error {
    let kind = match e {
        Error::Timeout(_) => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}
