//! Requests from submission to their one terminal event: the request slab
//! and its id map ([`Requests`]), and each [`Req`] with its current
//! [`Attempt`].
//!
//! Owns every field of `Req`. An attempt (the first try, a retry on a
//! fresh connection, a redirect's next hop) carries what only it has: its
//! connection, its deadlines, what of a response has arrived. Every new
//! attempt begins the same way, through [`Req::rewind`]: the old attempt's
//! deadlines go as a set, and the body is sent again from its first byte.
//! [`Requests::remove`] is the one way out of the slab, and it disarms
//! every deadline the request held. Knows the timer kinds and the pure
//! body, flow and redirect modules; nothing else of the engine.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rotary_proto::ResponseHead;

use crate::error::Error;
use crate::event::RequestId;
use crate::keys::{ConnKey, PoolKey, ReqKey, Slots, SHRINK_ABOVE};
use crate::wheel::TimerKey;
use crate::{Body, RequestOptions};

use super::flow::{Flow, Progress};
use super::timers::{AttemptTimer, TimerSet, Timers};
use super::upload::{Upload, UploadStage};

/// Hashes a [`RequestId`] as itself: ids are distinct sequential numbers, so
/// SipHash's protection against chosen keys buys nothing for the id map.
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

/// Which try of a request an attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptKind {
    First,
    /// Sent again after a stale connection failed it: only a connection
    /// that carried nothing yet may take it.
    Retry,
    /// The next hop of a redirect.
    Redirect,
}

/// One try of a request: its connection, its deadlines, and what of its
/// response has arrived.
pub(super) struct Attempt {
    kind: AttemptKind,
    /// The connection carrying it, once assigned.
    conn: Option<ConnKey>,
    /// Put on a connection that had carried an earlier exchange.
    reused: bool,
    timers: TimerSet<AttemptTimer>,
    /// Transfer counters and flow control.
    flow: Flow,
    /// A buffered response's head, until its body ends.
    head: Option<ResponseHead>,
    body: Buffered,
}

impl Attempt {
    fn new(kind: AttemptKind) -> Attempt {
        Attempt {
            kind,
            conn: None,
            reused: false,
            timers: TimerSet::default(),
            flow: Flow::default(),
            head: None,
            body: Buffered::default(),
        }
    }
}

/// A buffered response body.
#[derive(Default)]
struct Buffered {
    bytes: BytesMut,
    /// A body that arrives in one piece is handed on without a copy.
    first: Option<Bytes>,
    len: usize,
}

/// A submitted request that has not ended yet.
pub(super) struct Req {
    id: RequestId,
    pool: PoolKey,
    request: http::Request<Body>,
    opts: RequestOptions,
    /// A body sent in pieces (file, stream, or after `100 Continue`).
    upload: Option<Box<Upload>>,
    /// The host holds its response body back ([`crate::Engine::pause`]).
    paused: bool,
    /// Sent again once already (never twice).
    retried: bool,
    /// Its total deadline, across attempts.
    total: Option<TimerKey>,
    /// Redirects seen, once there is one (boxed: most requests never see
    /// one, and a `Req` is moved on every submit and end).
    hops: Option<Box<Hops>>,
    attempt: Attempt,
}

/// The redirects of one request.
struct Hops {
    /// Every method and URI requested, the submitted one first.
    visited: Vec<(http::Method, http::Uri)>,
    /// The next hop's request, while a redirect response's body drains.
    next: Option<http::Request<Body>>,
    /// The URI requested now, once a hop was followed.
    current: Option<Arc<http::Uri>>,
}

impl Req {
    #[inline]
    pub(super) fn new(
        id: RequestId,
        pool: PoolKey,
        request: http::Request<Body>,
        opts: RequestOptions,
        upload: Option<Box<Upload>>,
    ) -> Req {
        Req {
            id,
            pool,
            request,
            opts,
            upload,
            paused: false,
            retried: false,
            total: None,
            hops: None,
            attempt: Attempt::new(AttemptKind::First),
        }
    }

    // ---- what it is

    #[inline]
    pub(super) fn id(&self) -> RequestId {
        self.id
    }

    /// The pool it waits in (or whose connection carries it).
    #[inline]
    pub(super) fn pool(&self) -> PoolKey {
        self.pool
    }

    #[inline]
    pub(super) fn opts(&self) -> &RequestOptions {
        &self.opts
    }

    #[inline]
    pub(super) fn request(&self) -> &http::Request<Body> {
        &self.request
    }

    /// The connection carrying its attempt.
    #[inline]
    pub(super) fn conn(&self) -> Option<ConnKey> {
        self.attempt.conn
    }

    /// Its attempt went on a connection that had carried an earlier exchange.
    #[inline]
    pub(super) fn reused(&self) -> bool {
        self.attempt.reused
    }

    /// Only a connection that carried nothing yet may take it (a retry).
    #[inline]
    pub(super) fn fresh_only(&self) -> bool {
        self.attempt.kind == AttemptKind::Retry
    }

    #[inline]
    pub(super) fn retried(&self) -> bool {
        self.retried
    }

    #[inline]
    pub(super) fn paused(&self) -> bool {
        self.paused
    }

    #[inline]
    pub(super) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Can its body be sent again?
    #[inline]
    pub(super) fn replayable(&self) -> bool {
        self.request.body().is_replayable()
    }

    #[inline]
    pub(super) fn flow(&self) -> &Flow {
        &self.attempt.flow
    }

    #[inline]
    pub(super) fn flow_mut(&mut self) -> &mut Flow {
        &mut self.attempt.flow
    }

    /// Its body, when sent in pieces.
    #[inline]
    pub(super) fn upload_mut(&mut self) -> Option<&mut Upload> {
        self.upload.as_deref_mut()
    }

    /// Its body is sent in pieces.
    #[inline]
    pub(super) fn uploads(&self) -> bool {
        self.upload.is_some()
    }

    /// Its head went out with `Expect: 100-continue` and the body waits.
    #[inline]
    pub(super) fn awaits_continue(&self) -> bool {
        self.upload
            .as_deref()
            .is_some_and(|u| u.stage() == UploadStage::Continue)
    }

    /// Its request and its upload, borrowed apart (to pump the body).
    #[inline]
    pub(super) fn upload_and_opts(&mut self) -> Option<(&mut Upload, &RequestOptions)> {
        Some((self.upload.as_deref_mut()?, &self.opts))
    }

    // ---- its deadlines

    /// The slot of its total deadline (written only through [`Timers`]).
    #[inline]
    pub(super) fn total_slot(&mut self) -> &mut Option<TimerKey> {
        &mut self.total
    }

    #[inline]
    pub(super) fn total_timer(&self) -> Option<TimerKey> {
        self.total
    }

    /// The slot of its attempt's deadline of kind `k`.
    #[inline]
    pub(super) fn attempt_slot(&mut self, k: AttemptTimer) -> &mut Option<TimerKey> {
        self.attempt.timers.slot(k)
    }

    #[inline]
    pub(super) fn attempt_timer(&self, k: AttemptTimer) -> Option<TimerKey> {
        self.attempt.timers.get(k)
    }

    // ---- attempts

    /// Its attempt is on connection `ck`, which had carried `reused` an
    /// earlier exchange.
    #[inline]
    pub(super) fn put_on(&mut self, ck: ConnKey, reused: bool) {
        self.attempt.conn = Some(ck);
        self.attempt.reused = reused;
    }

    /// Back to waiting, for a retry on a fresh connection.
    ///
    /// # Errors
    /// The body's file cannot seek back.
    pub(super) fn retry(&mut self, timers: &mut Timers) -> Result<(), Error> {
        self.retried = true;
        self.rewind(AttemptKind::Retry, timers)
    }

    /// A new attempt of `kind`, the one way every new attempt begins: the
    /// old one's deadlines go as a set, it is off its connection, nothing
    /// of a response is kept, and its body (a file's, or bytes after `100
    /// Continue`) is sent from its first byte. A host's pause stays.
    ///
    /// # Errors
    /// The body's file cannot seek back.
    fn rewind(&mut self, kind: AttemptKind, timers: &mut Timers) -> Result<(), Error> {
        self.attempt.timers.clear_all(timers);
        self.attempt = Attempt::new(kind);
        match self.upload.as_deref_mut() {
            Some(up) => up.rewind(),
            None => Ok(()),
        }
    }

    // ---- redirects

    /// A redirect response's body is draining before the next hop.
    #[inline]
    pub(super) fn redirecting(&self) -> bool {
        self.hops.as_ref().is_some_and(|h| h.next.is_some())
    }

    /// Every method and URI requested so far, the current ones last.
    pub(super) fn visited(&self) -> Vec<(http::Method, http::Uri)> {
        match &self.hops {
            Some(hops) => hops.visited.clone(),
            None => vec![(self.request.method().clone(), self.request.uri().clone())],
        }
    }

    /// Hops followed so far.
    pub(super) fn hops(&self) -> usize {
        self.hops.as_ref().map_or(0, |h| h.visited.len() - 1)
    }

    /// The response being read redirects to `next`.
    pub(super) fn redirect_to(&mut self, next: http::Request<Body>) {
        let first = (self.request.method().clone(), self.request.uri().clone());
        let hops = self.hops.get_or_insert_with(|| {
            Box::new(Hops {
                visited: vec![first],
                next: None,
                current: None,
            })
        });
        hops.next = Some(next);
    }

    /// The URI of the hop a redirect response leads to, while its body drains.
    pub(super) fn next_hop_uri(&self) -> Option<&http::Uri> {
        self.hops.as_ref()?.next.as_ref().map(|n| n.uri())
    }

    /// Becomes the request for the next hop of a redirect (waiting for a
    /// connection again, now in `pool`); `None` when no hop was pending.
    ///
    /// # Errors
    /// The next hop's body cannot be sent (its file cannot be reopened or
    /// seek back).
    pub(super) fn follow(
        &mut self,
        pool: PoolKey,
        timers: &mut Timers,
    ) -> Option<Result<(), Error>> {
        let hops = self.hops.as_mut()?;
        let mut next = hops.next.take()?;
        let upload = match Upload::of(&mut next) {
            Ok(u) => u,
            Err(e) => return Some(Err(e)),
        };
        hops.visited
            .push((next.method().clone(), next.uri().clone()));
        hops.current = Some(Arc::new(next.uri().clone()));
        self.upload = upload;
        self.request = next;
        self.pool = pool;
        self.retried = false;
        Some(self.rewind(AttemptKind::Redirect, timers))
    }

    /// The URI a response answers, when redirects led to it.
    #[inline]
    pub(super) fn redirected_to(&self) -> Option<Arc<http::Uri>> {
        self.hops.as_ref().and_then(|h| h.current.clone())
    }

    // ---- its response

    /// Keep a buffered response's head until its body ends.
    #[inline]
    pub(super) fn keep_head(&mut self, head: ResponseHead) {
        self.attempt.head = Some(head);
    }

    /// Keep a piece of a buffered body. `Err(limit)` when the body would pass
    /// `max_buffered_body`.
    #[inline]
    pub(super) fn buffer_body(&mut self, data: Bytes) -> Result<(), usize> {
        let body = &mut self.attempt.body;
        body.len += data.len();
        if body.len > self.opts.max_buffered_body {
            return Err(self.opts.max_buffered_body);
        }
        match body.first.take() {
            None if body.bytes.is_empty() => body.first = Some(data),
            None => body.bytes.extend_from_slice(&data),
            Some(first) => {
                body.bytes.reserve(first.len() + data.len());
                body.bytes.extend_from_slice(&first);
                body.bytes.extend_from_slice(&data);
            }
        }
        Ok(())
    }

    /// The buffered response: its head and the whole body.
    #[inline]
    pub(super) fn buffered_response(&mut self) -> http::Response<Bytes> {
        let body = &mut self.attempt.body;
        let bytes = match body.first.take() {
            Some(b) => b,
            None => std::mem::take(&mut body.bytes).freeze(),
        };
        let mut response = http::Response::new(bytes);
        if let Some(head) = self.attempt.head.take() {
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
        }
        response
    }

    /// How far this request's transfer has got.
    #[inline]
    pub(super) fn progress(&self) -> Progress {
        let send_total = self.request.body().len();
        let sent = match self.upload.as_deref() {
            Some(up) => up.sent(),
            // Sent with the head, once on a connection.
            None if self.attempt.conn.is_some() => send_total.unwrap_or(0),
            None => 0,
        };
        Progress {
            sent,
            send_total,
            received: self.attempt.flow.received,
            receive_total: self.attempt.flow.receive_total,
        }
    }
}

/// The live requests, by slot and by id.
#[derive(Default)]
pub(super) struct Requests {
    slab: Slots<ReqKey, Req>,
    ids: HashMap<RequestId, ReqKey, IdHash>,
}

impl Requests {
    #[inline]
    pub(super) fn insert(&mut self, req: Req) -> ReqKey {
        let id = req.id;
        let key = self.slab.insert(req);
        self.ids.insert(id, key);
        key
    }

    #[inline]
    pub(super) fn find(&self, id: RequestId) -> Option<ReqKey> {
        self.ids.get(&id).copied()
    }

    #[inline]
    pub(super) fn get(&self, key: ReqKey) -> Option<&Req> {
        self.slab.get(key)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, key: ReqKey) -> Option<&mut Req> {
        self.slab.get_mut(key)
    }

    /// The request at `key`, if it is still the one with `id` (slots are
    /// reused).
    #[inline]
    pub(super) fn live(&mut self, key: ReqKey, id: RequestId) -> Option<&mut Req> {
        self.slab.get_mut(key).filter(|r| r.id == id)
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn keys(&self) -> Vec<ReqKey> {
        self.slab.keys()
    }

    /// The one way out: the request leaves the slab and the id map, and
    /// every deadline it held (its total, its attempt's set) is disarmed.
    /// It is dropped here: what its owner needs of it is read before (a
    /// `Req` is large, and every move of one is a copy). False when `key`
    /// held none.
    #[inline]
    pub(super) fn remove(&mut self, key: ReqKey, timers: &mut Timers) -> bool {
        let Some(req) = self.slab.get_mut(key) else {
            return false;
        };
        timers.clear(&mut req.total);
        req.attempt.timers.clear_all(timers);
        self.ids.remove(&req.id);
        if self.ids.is_empty() && self.ids.capacity() > SHRINK_ABOVE {
            self.shrink_ids();
        }
        self.slab.remove(key).is_some()
    }

    /// The id map, emptied after a burst, gives its memory back (as the slab
    /// does; see [`Slots::remove`]).
    #[cold]
    #[inline(never)]
    fn shrink_ids(&mut self) {
        self.ids = HashMap::default();
    }
}
