//! Requests from submission to their one terminal event: the request slab
//! and its id map, a buffered response's body, and ending a request
//! (abort, fail, emit).
//!
//! Owns [`Requests`] and every `Req`'s fields but `conn` and `reused`,
//! which [`super::exchange`] sets when it puts a request on a connection.
//! `take_request` is the one place a request leaves the slab.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rotary_proto::ResponseHead;

use crate::keys::{ConnKey, ReqKey, Slots, SHRINK_ABOVE};
use crate::wheel::TimerKey;
use crate::{Body, CloseReason, Error, RequestId, RequestOptions};

use super::flow::{Flow, Progress};
use super::pool::PoolKey;
use super::timers::{after, ReqTimer, Timer, REQ_TIMERS};
use super::upload::Upload;
use super::Engine;

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

/// A submitted request that has not ended yet.
pub(super) struct Req {
    pub(super) id: RequestId,
    pub(super) pool: PoolKey,
    pub(super) request: http::Request<Body>,
    pub(super) opts: RequestOptions,
    /// A body sent in pieces (file, stream, or after `100 Continue`).
    pub(super) upload: Option<Box<Upload>>,
    /// Transfer counters and flow control.
    pub(super) flow: Flow,
    /// The connection carrying it, once assigned.
    pub(super) conn: Option<ConnKey>,
    pub(super) timers: [Option<TimerKey>; REQ_TIMERS],
    /// Sent again once already (never twice).
    pub(super) retried: bool,
    /// A retry: only a connection that carried nothing yet may take it.
    pub(super) fresh_only: bool,
    /// Put on a connection that had carried an earlier exchange.
    pub(super) reused: bool,
    /// A buffered response's head, until its body ends.
    pub(super) head: Option<ResponseHead>,
    /// Redirects seen, once there is one (boxed: most requests never see
    /// one, and a `Req` is moved on every submit and end).
    pub(super) hops: Option<Box<Hops>>,
    body: BytesMut,
    /// A body that arrives in one piece is handed on without a copy.
    first_chunk: Option<Bytes>,
    body_len: usize,
}

impl Req {
    #[inline]
    fn new(
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
            flow: Flow::default(),
            conn: None,
            timers: [None; REQ_TIMERS],
            retried: false,
            fresh_only: false,
            reused: false,
            head: None,
            hops: None,
            body: BytesMut::new(),
            first_chunk: None,
            body_len: 0,
        }
    }

    /// A redirect response's body is draining before the next hop.
    #[inline]
    pub(super) fn redirecting(&self) -> bool {
        self.hops.as_ref().is_some_and(|h| h.next.is_some())
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

    /// Becomes the request for the next hop of a redirect (waiting for a
    /// connection again, now in `pool`); `None` when no hop was pending.
    ///
    /// # Errors
    /// The next hop's body cannot be sent (its file cannot be reopened).
    pub(super) fn follow(&mut self, pool: PoolKey) -> Option<Result<(), Error>> {
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
        self.fresh_only = false;
        Some(self.rewind())
    }

    /// The URI a response answers, when redirects led to it.
    pub(super) fn redirected_to(&self) -> Option<Arc<http::Uri>> {
        self.hops.as_ref().and_then(|h| h.current.clone())
    }

    /// Keep a piece of a buffered body. `Err(limit)` when the body would pass
    /// `max_body`.
    #[inline]
    pub(super) fn buffer_body(&mut self, data: Bytes) -> Result<(), usize> {
        self.body_len += data.len();
        if self.body_len > self.opts.max_body {
            return Err(self.opts.max_body);
        }
        match self.first_chunk.take() {
            None if self.body.is_empty() => self.first_chunk = Some(data),
            None => self.body.extend_from_slice(&data),
            Some(first) => {
                self.body.reserve(first.len() + data.len());
                self.body.extend_from_slice(&first);
                self.body.extend_from_slice(&data);
            }
        }
        Ok(())
    }

    /// The buffered response: its head and the whole body.
    #[inline]
    pub(super) fn buffered_response(&mut self) -> http::Response<Bytes> {
        let body = match self.first_chunk.take() {
            Some(b) => b,
            None => std::mem::take(&mut self.body).freeze(),
        };
        let mut response = http::Response::new(body);
        if let Some(head) = self.head.take() {
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
        }
        response
    }

    /// Its head went out with `Expect: 100-continue` and the body waits.
    #[inline]
    pub(super) fn awaits_continue(&self) -> bool {
        self.upload
            .as_deref()
            .is_some_and(|u| u.stage == super::upload::UploadStage::Continue)
    }

    /// Can its body be sent again?
    #[inline]
    pub(super) fn replayable(&self) -> bool {
        self.request.body().is_replayable()
    }

    /// Back to waiting, for a retry on a fresh connection: whatever part of
    /// a response arrived is dropped, and a file body starts over.
    ///
    /// # Errors
    /// The body's file cannot seek back.
    pub(super) fn prepare_retry(&mut self) -> Result<(), Error> {
        self.retried = true;
        self.fresh_only = true;
        self.rewind()
    }

    /// Back to the start of an attempt, the one way every new attempt (a
    /// retry, a redirect's next hop) begins: off its connection, nothing of
    /// a response kept, and its body (a file's, or bytes after `100
    /// Continue`) to be sent from its first byte. A host's pause stays.
    ///
    /// # Errors
    /// The body's file cannot seek back.
    fn rewind(&mut self) -> Result<(), Error> {
        self.flow = Flow {
            paused: self.flow.paused,
            ..Flow::default()
        };
        self.conn = None;
        self.reused = false;
        self.head = None;
        self.body.clear();
        self.first_chunk = None;
        self.body_len = 0;
        match self.upload.as_deref_mut() {
            Some(up) => up.rewind(),
            None => Ok(()),
        }
    }
}

/// The redirects of one request.
pub(super) struct Hops {
    /// Every method and URI requested, the submitted one first.
    pub(super) visited: Vec<(http::Method, http::Uri)>,
    /// The next hop's request, while a redirect response's body drains.
    pub(super) next: Option<http::Request<Body>>,
    /// The URI requested now, once a hop was followed.
    current: Option<Arc<http::Uri>>,
}

/// The live requests, by slot and by id.
#[derive(Default)]
pub(super) struct Requests {
    slab: Slots<ReqKey, Req>,
    ids: HashMap<RequestId, ReqKey, IdHash>,
}

impl Requests {
    #[inline]
    fn insert(&mut self, req: Req) -> ReqKey {
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

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    /// The id map, emptied after a burst, gives its memory back (as the slab
    /// does; see [`Slots::remove`]).
    #[cold]
    #[inline(never)]
    fn shrink_ids(&mut self) {
        self.ids = HashMap::default();
    }

    pub(super) fn keys(&self) -> Vec<ReqKey> {
        self.slab.keys()
    }
}

impl Engine {
    pub(super) fn submit_with_id(
        &mut self,
        id: RequestId,
        mut request: http::Request<Body>,
        opts: RequestOptions,
        now: Instant,
    ) {
        if self.shut {
            return self.emit_failed(id, Error::Shutdown, false, Progress::default());
        }
        let p = match self.pools.of_uri(request.uri(), &self.config.policy) {
            Ok(p) => p,
            Err(e) => return self.emit_failed(id, e, false, Progress::default()),
        };
        let upload = match Upload::of(&mut request) {
            Ok(u) => u,
            Err(e) => return self.emit_failed(id, e, false, Progress::default()),
        };
        let fed = upload.is_some();
        let key = self.reqs.insert(Req::new(id, p, request, opts, upload));
        if fed {
            self.upload_submitted(key);
        }
        if let Some(d) = opts.deadline {
            self.arm(Timer::Req(key, ReqTimer::Total), after(now, d));
        }
        let pool = &mut self.pools[p];
        pool.last_used = Some(now);
        pool.queue.push_back(key);
        self.dispatch(p, now);
    }

    /// Cancel request `id` if it is still live.
    pub(super) fn cancel_at(&mut self, id: RequestId, now: Instant) {
        if let Some(rk) = self.reqs.find(id) {
            self.abort_request(rk, Error::Cancelled, CloseReason::Cancelled, now);
        }
    }

    /// End a request with `err` wherever it is; close its connection (with
    /// `reason`) if it was mid-exchange.
    pub(super) fn abort_request(
        &mut self,
        rk: ReqKey,
        err: Error,
        reason: CloseReason,
        now: Instant,
    ) {
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
    #[inline]
    pub(super) fn take_request(&mut self, rk: ReqKey) -> Option<Req> {
        // Straight from the slab, with one move: a `Req` is large.
        let req = self.reqs.slab.remove(rk)?;
        self.reqs.ids.remove(&req.id);
        if self.reqs.ids.is_empty() && self.reqs.ids.capacity() > SHRINK_ABOVE {
            self.reqs.shrink_ids();
        }
        for t in req.timers.into_iter().flatten() {
            self.timers.cancel(t);
        }
        if req.conn.is_none() {
            let pool = &mut self.pools[req.pool];
            pool.queue.retain(|&k| k != rk);
            if pool.conns.is_empty() {
                self.pools.may_be_unused(req.pool);
            }
        }
        Some(req)
    }

    pub(super) fn fail_request(&mut self, rk: ReqKey, err: Error) {
        let Some(req) = self.take_request(rk) else {
            return;
        };
        let progress = req.progress();
        self.emit_failed(req.id, err, req.reused, progress);
    }

    fn emit_failed(&mut self, id: RequestId, error: Error, reused: bool, progress: Progress) {
        log::debug!("request {} failed: {error}", id.0);
        self.stats.failed_by_phase[error.phase().index()] += 1;
        self.out.push_back(crate::Event::Failed {
            id,
            error,
            reused,
            progress,
        });
    }
}
