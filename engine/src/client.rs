//! [`Client`]: the engine on a background thread, behind blocking calls.
//!
//! The thread owns one [`Engine`] and loops: take commands, `poll`, route
//! each event to the caller waiting for it. Every request runs in streaming
//! mode with manual consumption, so the caller's [`ResponseBody`] reads are
//! the engine's flow control: bytes a caller has not read yet stay within
//! the request's receive window, in a channel that only that caller drains.
//! A [`Body::reader`] is read on the *caller's* thread as the engine asks
//! for more, so a slow source holds up only its own request.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use mio::Waker;

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

/// A blocking HTTP/1.1-over-TLS client: one [`Engine`] on a background
/// thread, with every lifetime rule of the engine (max age with jitter,
/// drain, full handshakes, chain reports).
///
/// `Send + Sync + Clone`: clones share the thread and its connections. The
/// thread stops, failing whatever is in flight with [`Error::Shutdown`],
/// when [`Client::shutdown`] is called or the last clone is dropped (which
/// waits for it the same way).
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
    remote: Remote,
    ids: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    lifecycle: Mutex<Option<mpsc::Receiver<Event>>>,
    dropped: Arc<AtomicU64>,
}

/// The way to the engine's thread: its command queue and its waker.
#[derive(Clone)]
struct Remote {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
}

impl Remote {
    fn send(&self, cmd: Cmd) -> Result<(), Error> {
        self.tx.send(cmd).map_err(|_| Error::Shutdown)?;
        let _ = self.waker.wake();
        Ok(())
    }
}

enum Cmd {
    Send(
        Box<(RequestId, http::Request<Body>, RequestOptions)>,
        mpsc::Sender<Msg>,
    ),
    Feed(RequestId, Bytes),
    End(RequestId),
    Consume(RequestId, usize),
    Cancel(RequestId),
    FreshChain(
        Origin,
        Duration,
        mpsc::Sender<Result<Arc<PeerChain>, Error>>,
    ),
    Stats(mpsc::Sender<Stats>),
    CloseIdle,
    Shutdown,
}

/// What the engine's thread tells the caller of one request.
enum Msg {
    /// The engine has room for the request body up to this many bytes in
    /// all, counted from the body's start: the bytes it has taken plus the
    /// room of its window as it was handed out. An absolute limit, so asks
    /// that overlap with pieces still on their way never add up to more
    /// than the window (a room relative to "now" would count those pieces
    /// twice).
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
    /// Build the engine (errors come back here) and start its thread,
    /// named `rotary-client`.
    ///
    /// # Errors
    /// As [`Engine::new`]; [`BuildError::Io`](crate::BuildError::Io) when
    /// the thread cannot start.
    pub fn new(config: Config) -> Result<Client, crate::BuildError> {
        let engine = Engine::new(config)?;
        let (tx, rx) = mpsc::channel();
        let (life_tx, life_rx) = mpsc::sync_channel(LIFECYCLE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let remote = Remote {
            tx,
            waker: engine.waker(),
        };
        let ids = engine.request_ids();
        let loop_dropped = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("rotary-client".into())
            .spawn(move || Loop::new(engine, rx, life_tx, loop_dropped).run())?;
        Ok(Client {
            inner: Arc::new(Inner {
                remote,
                ids,
                thread: Mutex::new(Some(thread)),
                lifecycle: Mutex::new(Some(life_rx)),
                dropped,
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

    /// Send a request and wait for its response head. The body is read
    /// from the returned [`ResponseBody`] as it arrives (at most
    /// [`RequestOptions::receive_window`] of it waits unread; the server is
    /// held back through TCP beyond that). The response's extensions hold
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
    /// request (say, a long poll a signal should cut short).
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
        let id = RequestId(self.inner.ids.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel();
        let opts = opts.streaming(true).manual_consume(true);
        self.inner
            .remote
            .send(Cmd::Send(Box::new((id, request, opts)), tx))?;
        Ok(Pending {
            body: Some(ResponseBody {
                id,
                rx,
                remote: self.inner.remote.clone(),
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
        let (tx, rx) = mpsc::channel();
        self.inner
            .remote
            .send(Cmd::FreshChain(origin.clone(), freshness, tx))?;
        rx.recv().map_err(|_| Error::Shutdown)?
    }

    /// The engine's counters and gauges (see [`Engine::stats`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the client shut down.
    pub fn stats(&self) -> Result<Stats, Error> {
        let (tx, rx) = mpsc::channel();
        self.inner.remote.send(Cmd::Stats(tx))?;
        rx.recv().map_err(|_| Error::Shutdown)
    }

    /// Close every connection that carries no exchange (see
    /// [`Engine::close_idle`]).
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the client shut down.
    pub fn close_idle(&self) -> Result<(), Error> {
        self.inner.remote.send(Cmd::CloseIdle)
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
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Stop the engine's thread and wait for it: every queued and in-flight
    /// request fails with [`Error::Shutdown`] (a caller blocked in
    /// [`Client::send_with`] gets it as its result, a [`ResponseBody`] as a
    /// read error), TLS connections get close_notify, and later calls on any
    /// clone fail with [`Error::Shutdown`]. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = thread.take() {
            let _ = self.remote.send(Cmd::Shutdown);
            if t.join().is_err() {
                log::error!("the client's engine thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
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
/// holds at most the receive window. A read fails with an `io::Error`
/// wrapping the request's [`Error`] (`get_ref` and `downcast_ref` recover
/// it; a deadline's kind is `TimedOut`). Dropping the body before its end
/// cancels the request and closes its connection, which is never reused
/// with unread bytes on it.
pub struct ResponseBody {
    id: RequestId,
    rx: mpsc::Receiver<Msg>,
    remote: Remote,
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
                self.chunk.clear();
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
        loop {
            let msg = match until {
                None => self.rx.recv().map_err(|_| Error::Shutdown)?,
                Some(t) => match self
                    .rx
                    .recv_timeout(t.saturating_duration_since(Instant::now()))
                {
                    Ok(msg) => msg,
                    Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Shutdown),
                },
            };
            let Msg::Wanted(limit) = msg else {
                return Ok(Some(msg));
            };
            self.feed(limit)?;
        }
    }

    /// Wait for the next body chunk or the end.
    fn take_msg(&mut self) -> Result<(), Error> {
        let msg = self.next_msg(None);
        match msg {
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

    /// The chunk just read out: tell the engine it may read that much more.
    fn consumed(&mut self) {
        if self.chunk_len > 0 {
            let _ = self.remote.send(Cmd::Consume(self.id, self.chunk_len));
            self.chunk_len = 0;
        }
    }

    /// Hand the engine the reader's bytes up to `limit` (counted from the
    /// body's start; see [`Msg::Wanted`]). Pieces already sent count, so an
    /// ask that they cover sends nothing: the engine asks again once they
    /// are in.
    fn feed(&mut self, limit: u64) -> Result<(), Error> {
        let Some(up) = self.upload.as_mut().filter(|u| !u.done) else {
            return Ok(());
        };
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
                    let _ = self.remote.send(Cmd::Cancel(self.id));
                    self.state = State::Done;
                    return Err(error);
                }
            };
            if n == 0 {
                up.done = true;
                return self.remote.send(Cmd::End(self.id));
            }
            let piece = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            up.sent += n as u64;
            left -= n;
            self.remote.send(Cmd::Feed(self.id, piece))?;
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
        if self.state == State::Open {
            let _ = self.remote.send(Cmd::Cancel(self.id));
        }
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

/// Where one request's messages go, and how much of its fed body the
/// engine has taken.
struct Route {
    tx: mpsc::Sender<Msg>,
    /// Body bytes the engine took from the caller's `Feed`s.
    fed: u64,
}

/// The engine's thread.
struct Loop {
    engine: Engine,
    rx: mpsc::Receiver<Cmd>,
    lifecycle: mpsc::SyncSender<Event>,
    dropped: Arc<AtomicU64>,
    routes: HashMap<RequestId, Route>,
    chains: HashMap<ChainRequestId, mpsc::Sender<Result<Arc<PeerChain>, Error>>>,
}

impl Loop {
    fn new(
        engine: Engine,
        rx: mpsc::Receiver<Cmd>,
        lifecycle: mpsc::SyncSender<Event>,
        dropped: Arc<AtomicU64>,
    ) -> Loop {
        Loop {
            engine,
            rx,
            lifecycle,
            dropped,
            routes: HashMap::new(),
            chains: HashMap::new(),
        }
    }

    fn run(mut self) {
        loop {
            if !self.take_commands() {
                break;
            }
            if let Err(e) = self.engine.poll(None) {
                log::error!("client engine: poll failed, shutting down: {e}");
                break;
            }
            self.route();
        }
        self.engine.shutdown();
        self.route();
        // Whatever came in meanwhile is answered, not left hanging.
        while let Ok(cmd) = self.rx.try_recv() {
            self.refuse(cmd);
        }
        for (_, route) in self.routes.drain() {
            let _ = route.tx.send(Msg::Failed(Error::Shutdown));
        }
        for (_, tx) in self.chains.drain() {
            let _ = tx.send(Err(Error::Shutdown));
        }
    }

    /// Apply waiting commands; false once the client is shutting down.
    fn take_commands(&mut self) -> bool {
        loop {
            let cmd = match self.rx.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            match cmd {
                Cmd::Send(sub, tx) => {
                    let (id, request, opts) = *sub;
                    self.routes.insert(id, Route { tx, fed: 0 });
                    self.engine.submit_as(id, request, opts);
                }
                Cmd::Feed(id, data) => match self.engine.send_body(id, data.clone()) {
                    Ok(()) => {
                        if let Some(route) = self.routes.get_mut(&id) {
                            route.fed += data.len() as u64;
                        }
                    }
                    // Never while the caller stays within the limits it is
                    // given; a piece dropped would corrupt the body, so the
                    // request ends, with the error that says why.
                    Err(e @ Error::WindowFull { .. }) => {
                        log::error!("request {}: body piece past the window: {e}", id.0);
                        self.engine.abort(id, e);
                    }
                    // A failure ends the request with its own event.
                    Err(e) => log::debug!("request {}: body piece not taken: {e}", id.0),
                },
                Cmd::End(id) => {
                    // A failure ends the request with its own event.
                    let _ = self.engine.end_body(id, None);
                }
                Cmd::Consume(id, n) => self.engine.consume(id, n),
                Cmd::Cancel(id) => self.engine.cancel(id),
                Cmd::FreshChain(origin, freshness, tx) => {
                    let id = self.engine.fresh_chain(&origin, freshness);
                    self.chains.insert(id, tx);
                }
                Cmd::Stats(tx) => {
                    let _ = tx.send(self.engine.stats());
                }
                Cmd::CloseIdle => self.engine.close_idle(),
                Cmd::Shutdown => return false,
            }
            // Answers queued at once (say, a fresh chain in cache) go out
            // before the next command.
            self.route();
        }
    }

    /// A command that came after shutdown.
    fn refuse(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send(_, tx) => {
                let _ = tx.send(Msg::Failed(Error::Shutdown));
            }
            Cmd::FreshChain(_, _, tx) => {
                let _ = tx.send(Err(Error::Shutdown));
            }
            Cmd::Stats(tx) => {
                let _ = tx.send(self.engine.stats());
            }
            _ => {}
        }
    }

    /// Hand every waiting event to whoever waits for it.
    fn route(&mut self) {
        while let Some(event) = self.engine.next_event() {
            match event {
                Event::Head {
                    id,
                    mut response,
                    served_by,
                } => {
                    response.extensions_mut().insert(served_by);
                    self.tell(id, Msg::Head(response), false);
                }
                Event::Body { id, data } => self.tell(id, Msg::Body(data), false),
                Event::End { id, trailers } => self.tell(id, Msg::End(trailers), true),
                Event::BodyWanted { id, room } => {
                    let fed = self.routes.get(&id).map_or(0, |r| r.fed);
                    self.tell(id, Msg::Wanted(fed + room as u64), false)
                }
                Event::Failed { id, error, .. } => self.tell(id, Msg::Failed(error), true),
                Event::Response {
                    id,
                    response,
                    served_by,
                } => {
                    // Not raised in streaming mode; delivered whole if it is.
                    let (mut parts, body) = response.into_parts();
                    parts.extensions.insert(served_by);
                    self.tell(id, Msg::Head(http::Response::from_parts(parts, ())), false);
                    if !body.is_empty() {
                        self.tell(id, Msg::Body(body), false);
                    }
                    self.tell(id, Msg::End(None), true);
                }
                Event::FreshChain { id, result, .. } => {
                    if let Some(tx) = self.chains.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                other => {
                    if self.lifecycle.try_send(other).is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Send `msg` to request `id`'s caller; a caller that has gone away
    /// gets its request cancelled.
    fn tell(&mut self, id: RequestId, msg: Msg, terminal: bool) {
        let gone = match self.routes.get(&id) {
            Some(route) => route.tx.send(msg).is_err(),
            None => false,
        };
        if terminal {
            self.routes.remove(&id);
        } else if gone {
            self.routes.remove(&id);
            self.engine.cancel(id);
        }
    }
}
