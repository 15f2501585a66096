//! Other threads' way in: a [`Handle`] sends [`Command`]s over a channel
//! and wakes the loop, which takes them in its next turn
//! ([`Engine::drain_commands`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mio::Waker;

use crate::{Body, ChainRequestId, CloseReason, Error, Origin, RequestId, RequestOptions};

use super::Engine;

/// What a [`Handle`] sends to the engine's thread.
pub(super) enum Command {
    Submit(Box<(RequestId, http::Request<Body>, RequestOptions)>),
    Cancel(RequestId),
    SendBody(RequestId, Bytes),
    EndBody(RequestId, Option<Box<HeaderMap>>),
    Consume(RequestId, usize),
    Pause(RequestId, bool),
    FreshChain(ChainRequestId, Origin, Duration),
}

/// A `Send + Clone` handle that submits and cancels requests from other
/// threads and wakes the engine's loop. Events still come out of the engine.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) waker: Arc<Waker>,
    pub(super) next_req: Arc<AtomicU64>,
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
    /// [`Event::FreshChain`](crate::Event::FreshChain) comes out of the engine's `next_event`. The
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

impl Engine {
    /// Take in what [`Handle`]s sent, applying the effects of each.
    pub(super) fn drain_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Submit(sub) => {
                    let (id, req, opts) = *sub;
                    self.submit_with_id(id, req, opts, now)
                }
                Command::Cancel(id) => self.abort_id(id, Error::Cancelled, CloseReason::Cancelled),
                Command::SendBody(id, data) => {
                    if let Err(e @ Error::WindowFull { .. }) = self.feed_body(id, data) {
                        self.abort_id(id, e, CloseReason::Error);
                    }
                }
                Command::EndBody(id, trailers) => {
                    // A failure already ended the request with its error.
                    let _ = self.finish_body(id, trailers.map(|t| *t));
                }
                Command::Consume(id, n) => self.consumed(id, n),
                Command::Pause(id, paused) => self.set_paused(id, paused),
                Command::FreshChain(id, origin, freshness) => {
                    self.fresh_chain_with_id(id, origin, freshness, now)
                }
            }
            self.apply(now);
        }
    }
}
