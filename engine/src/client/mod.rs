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
//!   routes their messages into per-request mailboxes and unparks them,
//!   and they take their mail under the mailbox's own lock, not the
//!   client's mutex; a submission wakes the leader (the engine's waker)
//!   only when it brings the next deadline forward. A leader that returns
//!   hands the lead to a parked caller, if there is one.
//! - **A send that finds the mutex held** queues its request in an inbox
//!   and parks: whoever holds the mutex submits the queue before letting go
//!   (and after taking it), parking each caller on its request. With many
//!   callers the mutex is nearly always held, by the leader's pass or by
//!   another submission, and a caller that slept on it would sleep twice
//!   per request (on the mutex, then on its answer); with the inbox it
//!   sleeps once.
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

mod body;
mod lead;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::body::Kind;
use crate::{
    Body, Config, Engine, Error, Event, Origin, PeerChain, RequestId, RequestOptions, Stats,
};

pub use body::{Pending, ResponseBody};
use lead::{Core, Key, Lead, Leader, Mailbox, Queued, Shared};

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
        let ids = engine.request_ids();
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
            inbox: Mutex::new(Vec::new()),
            ids,
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
        let (mut pending, core) = self.submit(request, opts, true)?;
        // The wait goes on under the mutex the submission took: one turn
        // of it where a start and a wait would take two (with many callers,
        // each turn may wait for the leader's pass). A request queued for
        // the mutex's holder is parked on by its thread meanwhile: woken
        // with its answer, or to lead, or (should nobody have submitted it)
        // after LINGER, to take the mutex and submit it itself.
        if core.is_none() {
            std::thread::park_timeout(LINGER);
        }
        match pending.answer(None, core) {
            Some(result) => result,
            None => Err(Error::Shutdown),
        }
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
        let (pending, core) = self.submit(request, opts, false)?;
        if let Some(core) = core {
            self.inner.shared.unlock(core);
        }
        Ok(pending)
    }

    /// Submit a request; the client's mutex is still held on return. With
    /// `queue`, a request that finds the mutex busy is queued for its
    /// holder, and `None` comes back in its place (see [`Shared::inbox`]).
    fn submit(
        &self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
        queue: bool,
    ) -> Result<(Pending, Option<MutexGuard<'_, Core>>), Error> {
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
                reader
            }
            _ => None,
        };
        let window = opts.receive_window.min(CLIENT_WINDOW);
        let opts = opts
            .streaming(true)
            .manual_consume(true)
            .receive_window(window);
        let shared = &self.inner.shared;
        let id = RequestId(shared.ids.fetch_add(1, Ordering::Relaxed));
        let mailbox = Arc::new(Mailbox::default());
        let body = ResponseBody::new(
            id,
            shared.clone(),
            mailbox.clone(),
            upload,
            opts.max_buffered_body,
        );
        let q = Queued {
            id,
            request,
            opts,
            mailbox,
            caller: queue.then(std::thread::current),
        };
        let core = if queue {
            // A client that has stopped fails a queued request with
            // `Error::Shutdown` when it is submitted.
            shared.submit_or_queue(q)
        } else {
            let mut core = shared.lock();
            if core.stopping {
                shared.unlock(core);
                return Err(Error::Shutdown);
            }
            core.admit(q, shared);
            Some(core)
        };
        Ok((Pending::new(body), core))
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
        shared.unlock(core);
        let taken = shared.wait(
            Key::Chain(id),
            None,
            None,
            || None,
            |core| match core.chains.get(&id) {
                Some(Some(_)) => core.chains.remove(&id).flatten(),
                Some(None) if core.stopping => {
                    core.chains.remove(&id);
                    Some(Err(Error::Shutdown))
                }
                Some(None) => None,
                None => Some(Err(Error::Shutdown)),
            },
        );
        taken.unwrap_or(Err(Error::Shutdown))
    }

    /// The engine's counters and gauges (see [`Engine::stats`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the client shut down.
    pub fn stats(&self) -> Result<Stats, Error> {
        let shared = &self.inner.shared;
        let core = shared.lock();
        let stats = (!core.stopping).then(|| core.engine.stats());
        shared.unlock(core);
        stats.ok_or(Error::Shutdown)
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
        shared.unlock(core);
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
                core.fail_all();
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
            shared.unlock(core);
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// A cleartext keep-alive server that answers every request with "ok".
    fn ok_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        format!("http://127.0.0.1:{port}/")
    }

    /// Send a GET from another thread; its status and body come back.
    fn send_from_thread(
        client: &Client,
        url: &str,
    ) -> mpsc::Receiver<Result<(u16, Vec<u8>), Error>> {
        let (tx, rx) = mpsc::channel();
        let (client, url) = (client.clone(), url.to_string());
        std::thread::spawn(move || {
            let req = http::Request::get(url).body(()).expect("request");
            let result = client.send(req).and_then(|mut resp| {
                let mut body = Vec::new();
                let read = resp.body_mut().read_to_end(&mut body);
                read.map_err(|e| Error::Unsupported(e.to_string()))?;
                Ok((resp.status().as_u16(), body))
            });
            let _ = tx.send(result);
        });
        rx
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + T;
        while !done() {
            assert!(Instant::now() < until, "{what}: not within {T:?}");
            std::thread::yield_now();
        }
    }

    /// The answer `answer` carries is a 200 with "ok".
    fn assert_ok(answer: mpsc::Receiver<Result<(u16, Vec<u8>), Error>>) {
        let got = answer.recv_timeout(T).expect("an answer in time");
        assert_eq!(got.expect("the request succeeds"), (200, b"ok".to_vec()));
    }

    /// Nothing left behind: no route, no parked caller, nothing queued.
    fn assert_drained(shared: &Shared) {
        let core = shared.lock();
        assert!(core.routes.is_empty(), "{} routes left", core.routes.len());
        assert!(
            core.parked.is_empty(),
            "{} callers left parked",
            core.parked.len()
        );
        shared.unlock(core);
        assert!(shared.inbox().is_empty(), "requests left queued");
    }

    /// A send made while the test holds the client's mutex, which `let_go`
    /// then lets go of: the send is queued, and answered.
    fn queued_send(let_go: impl FnOnce(&Shared, MutexGuard<'_, Core>)) {
        let url = ok_server();
        let client = Client::new(Config::default()).expect("client");
        let shared = client.inner.shared.clone();
        let held = shared.core.lock().expect("the client's mutex");
        let answer = send_from_thread(&client, &url);
        wait_until("the send queued its request", || shared.inbox().len() == 1);
        let_go(&shared, held);
        assert_ok(answer);
        assert_drained(&shared);
    }

    #[test]
    fn a_send_that_finds_the_mutex_held_is_queued_and_its_holder_submits_it() {
        queued_send(|shared, held| {
            shared.unlock(held);
            let why = "the holder submitted it as it let go";
            assert!(shared.inbox().is_empty(), "{why}");
        });
    }

    #[test]
    fn a_queued_request_its_holder_forgot_is_still_submitted() {
        // Let go without looking at the inbox: the next thread to take the
        // mutex submits it (the caller itself after LINGER, or the client's
        // thread on its rounds).
        queued_send(|_, held| drop(held));
    }

    #[test]
    fn many_callers_at_once_each_get_their_answer_and_leave_nothing_behind() {
        let url = ok_server();
        let client = Client::new(Config::default()).expect("client");
        let answers: Vec<_> = (0..128).map(|_| send_from_thread(&client, &url)).collect();
        answers.into_iter().for_each(assert_ok);
        assert_drained(&client.inner.shared);
    }
}
