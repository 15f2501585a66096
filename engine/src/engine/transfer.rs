//! Bodies under way: a request body moved into its connection a window at a
//! time ([`Engine::pump`]), the host's feed of a [`crate::Body::stream`],
//! `Expect: 100-continue`, a streamed response's receive window (the host's
//! consume, pause and resume), and the send- and receive-stall deadlines.
//!
//! Changes the request's upload and flow counters and the connection's
//! uploading and read-paused flags; a body that fails, or a stall, is an
//! [`Effect::Abort`] for [`super::apply`].

use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use crate::error::{Deadline, Error};
use crate::event::{CloseReason, Event, RequestId};
use crate::keys::{ConnKey, ReqKey};

use super::effects::{ConnRef, Effect, ReadMode, ReqRef};
use super::flow::Progress;
use super::timers::{after, AttemptTimer, Timer};
use super::upload::{self, Fed, Refill, PUMP_BUDGET};
use super::Engine;

impl Engine {
    /// A submitted request's upload is ready: a fed body may be filled
    /// while its connection opens.
    pub(super) fn upload_submitted(&mut self, rk: ReqKey) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let id = req.id();
        let Some((up, opts)) = req.upload_and_opts() else {
            return;
        };
        if let Some(room) = up.wants(upload::window(opts)) {
            self.out.push_back(Event::BodyWanted { id, room });
        }
    }

    /// The head of request `rk` (with an upload) is written on `ck`: start
    /// the body, or wait for `100 Continue` first.
    pub(super) fn upload_started(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let Some((up, opts)) = req.upload_and_opts() else {
            return;
        };
        let wait = opts.continue_timeout;
        if up.start() {
            self.arm(Timer::Attempt(rk, AttemptTimer::Continue), after(now, wait));
        } else if let Some(conn) = self.conns.get_mut(ck) {
            conn.set_uploading(true);
        }
    }

    /// `100 Continue` arrived, or the wait for it ended: send the body.
    pub(super) fn upload_continue(&mut self, rk: ReqKey) {
        self.disarm(Timer::Attempt(rk, AttemptTimer::Continue));
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let Some(ck) = req.conn() else {
            return;
        };
        if req.upload_mut().is_some_and(|up| up.go_on()) {
            if let Some(conn) = self.conns.get_mut(ck) {
                conn.set_uploading(true);
            }
        }
    }

    /// The continue wait of `rk` ended without a `100`.
    pub(super) fn on_continue_timer(&mut self, rk: ReqKey, _now: Instant) {
        let ck = self.reqs.get(rk).and_then(|r| r.conn());
        self.upload_continue(rk);
        if let Some(conn) = ck.and_then(|ck| self.conn_ref(ck)) {
            self.effects.push(Effect::Drive {
                conn,
                read: ReadMode::Skip,
            });
        }
    }

    /// A final response arrived while request `rk`'s body was unsent or
    /// still going out: send no more of it (the codec's verdict closes the
    /// connection after the response, as its framing is now unknown).
    pub(super) fn upload_stop(&mut self, ck: ConnKey, rk: ReqKey) {
        self.disarm(Timer::Attempt(rk, AttemptTimer::Continue));
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let id = req.id();
        if let Some(up) = req.upload_mut() {
            if up.stop() {
                log::debug!(
                    "request {}: final response before the body was sent; {} body bytes sent",
                    id.0,
                    up.sent()
                );
            }
        }
        if let Some(conn) = self.conns.get_mut(ck) {
            conn.set_uploading(false);
        }
    }

    /// Move body bytes into connection `conn` while the socket takes them,
    /// up to the budget.
    pub(super) fn pump(&mut self, conn: ConnRef, now: Instant) {
        let mut budget = PUMP_BUDGET;
        loop {
            let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
                return;
            };
            if let Err(e) = c.flush(&mut self.bufs.sealed) {
                return self.io_failed(conn.key, e, true, now);
            }
            if !c.uploading() || c.wants_write() {
                return;
            }
            let Some((rk, req)) = c
                .exchange()
                .and_then(|rk| Some((rk, self.reqs.get_mut(rk)?)))
            else {
                c.set_uploading(false);
                return;
            };
            let id = req.id();
            let Some((up, opts)) = req.upload_and_opts() else {
                c.set_uploading(false);
                return;
            };
            if budget == 0 {
                self.read_again.push(conn);
                return;
            }
            let window = upload::window(opts);
            let Some((codec, wbuf)) = c.body_out() else {
                return;
            };
            match up.refill(codec, wbuf, &mut self.bufs.scratch, window) {
                Ok(Refill::Wrote(n)) => budget = budget.saturating_sub(n),
                Ok(Refill::Finished) => {
                    up.finished();
                    c.set_uploading(false);
                    self.request_written(rk, now);
                    // Loop once more to flush the end of the body.
                }
                Ok(Refill::Starved) => {
                    if let Some(room) = up.wants(window) {
                        self.out.push_back(Event::BodyWanted { id, room });
                    }
                    return;
                }
                Err(error) => {
                    log::debug!("request {} body failed: {error}", id.0);
                    let req = ReqRef { key: rk, id };
                    return self.effects.push(Effect::Abort {
                        req,
                        error: error.into(),
                        close: CloseReason::Error,
                    });
                }
            }
        }
    }

    /// Bytes of request `rk` wait for the socket: watch that the peer takes them.
    pub(super) fn watch_send(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let Some(d) = req.opts().send_stall_timeout else {
            return;
        };
        if req.attempt_timer(AttemptTimer::SendStall).is_none() {
            req.flow_mut().tx_mark = conn.bytes_out();
            self.arm(Timer::Attempt(rk, AttemptTimer::SendStall), after(now, d));
        }
    }

    /// The send-stall timer of `rk` fired: fail it if nothing moved since.
    pub(super) fn on_send_stall(&mut self, rk: ReqKey, now: Instant) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let (Some(ck), Some(d)) = (req.conn(), req.opts().send_stall_timeout) else {
            return;
        };
        let Some(conn) = self.conns.get(ck) else {
            return;
        };
        if conn.stage() != super::conn::StageName::Ready || !conn.wants_write() {
            return;
        }
        let out = conn.bytes_out();
        if out > req.flow().tx_mark {
            req.flow_mut().tx_mark = out;
            return self.arm(Timer::Attempt(rk, AttemptTimer::SendStall), after(now, d));
        }
        let req = ReqRef {
            key: rk,
            id: req.id(),
        };
        self.effects.push(Effect::Abort {
            req,
            error: (Error::Timeout(Deadline::SendStall)).into(),
            close: CloseReason::Error,
        });
    }

    /// Hand a chunk of a fed body to request `id`.
    ///
    /// # Errors
    /// See [`crate::Engine::send_body`]; a chunk past the declared length
    /// also ends the request.
    pub(super) fn feed_body(&mut self, id: RequestId, data: Bytes) -> Result<(), Error> {
        let fed = self.fed(id, |up, window| up.feed(id, data, window))?;
        self.fed_outcome(id, fed)
    }

    /// End the fed body of request `id`, with trailers for a chunked one.
    ///
    /// # Errors
    /// See [`crate::Engine::end_body`].
    pub(super) fn finish_body(
        &mut self,
        id: RequestId,
        trailers: Option<HeaderMap>,
    ) -> Result<(), Error> {
        let fed = self.fed(id, |up, _| up.end_feed(id, trailers))?;
        self.fed_outcome(id, fed)
    }

    /// `f` on the fed body of live request `id` and its send window.
    fn fed<T>(
        &mut self,
        id: RequestId,
        f: impl FnOnce(&mut upload::Upload, usize) -> T,
    ) -> Result<T, Error> {
        let req = self
            .reqs
            .find(id)
            .and_then(|rk| self.reqs.get_mut(rk))
            .ok_or_else(|| upload::no_stream(id))?;
        let (up, opts) = req.upload_and_opts().ok_or_else(|| upload::no_stream(id))?;
        if !up.is_fed() {
            return Err(upload::no_stream(id));
        }
        let window = upload::window(opts);
        Ok(f(up, window))
    }

    /// What a feed of request `id` did: new bytes move on if its connection
    /// is sending; a failure ends the request.
    fn fed_outcome(&mut self, id: RequestId, fed: Fed) -> Result<(), Error> {
        let Some(rk) = self.reqs.find(id) else {
            return Err(upload::no_stream(id));
        };
        match fed {
            Fed::Taken => {
                let ck = self.reqs.get(rk).and_then(|r| r.conn());
                let conn = ck.and_then(|ck| self.conn_ref(ck));
                if let Some(conn) =
                    conn.filter(|c| self.conns.get(c.key).is_some_and(|c| c.uploading()))
                {
                    self.effects.push(Effect::Drive {
                        conn,
                        read: ReadMode::Skip,
                    });
                }
                Ok(())
            }
            Fed::Refused(e) => Err(e),
            Fed::Failed(error) => {
                self.effects.push(Effect::Abort {
                    req: ReqRef { key: rk, id },
                    error: (error.clone()).into(),
                    close: CloseReason::Error,
                });
                Err(error)
            }
        }
    }

    /// A `BodyWanted { room }` of `id` is being handed to the host: the
    /// room as of now (see [`upload::Upload::room_now`]). A request that is
    /// gone keeps its event as it is (its terminal event follows).
    pub(super) fn room_now(&mut self, id: RequestId, room: usize) -> Option<usize> {
        self.fed(id, |up, window| up.room_now(room, window))
            .unwrap_or(Some(room))
    }

    /// The host consumed `n` streamed body bytes of `id`.
    pub(super) fn consumed(&mut self, id: RequestId, n: usize) {
        let Some(rk) = self.reqs.find(id) else {
            return;
        };
        if let Some(req) = self.reqs.get_mut(rk) {
            let window = req.opts().receive_window;
            req.flow_mut().consumed(n, window);
        }
        self.maybe_resume(rk);
    }

    /// Hold back (`true`) or let go (`false`) the body of `id`.
    pub(super) fn set_paused(&mut self, id: RequestId, paused: bool) {
        let Some(rk) = self.reqs.find(id) else {
            return;
        };
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        req.set_paused(paused);
        if paused {
            if let Some(conn) = req.conn().and_then(|ck| self.conns.get_mut(ck)) {
                conn.set_read_paused(true);
            }
        } else {
            self.maybe_resume(rk);
        }
    }

    /// Read on for `rk` if its connection is paused and it is below its window.
    fn maybe_resume(&mut self, rk: ReqKey) {
        let Some(req) = self.reqs.get(rk) else {
            return;
        };
        if req.paused() || !req.flow().has_room(req.opts().receive_window) {
            return;
        }
        let Some(ck) = req.conn() else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(ck).filter(|c| c.read_paused()) {
            conn.set_read_paused(false);
            self.resumed.push(ConnRef {
                key: ck,
                id: conn.id(),
            });
        }
    }

    /// Read on from the connections let go since the last turn: first what
    /// they already hold, then the socket.
    pub(super) fn resume_reads(&mut self, now: Instant) {
        let resumed = std::mem::take(&mut self.resumed);
        for conn in resumed {
            let Some(c) = self
                .conns
                .get(conn.key)
                .filter(|c| c.id() == conn.id && !c.read_paused())
            else {
                continue;
            };
            let eof = c.peer_closed();
            self.on_input(conn, eof, now);
            if self.is_live(conn) {
                self.drive(conn.key, ReadMode::UntilWouldBlock, now);
            }
        }
    }

    /// The response of `rk` is under way on `ck`: watch that it keeps coming.
    pub(super) fn watch_receive(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let Some(d) = req.opts().receive_stall_timeout else {
            return;
        };
        if req.attempt_timer(AttemptTimer::ReceiveStall).is_none() {
            req.flow_mut().rx_mark = conn.bytes_in();
            self.arm(
                Timer::Attempt(rk, AttemptTimer::ReceiveStall),
                after(now, d),
            );
        }
    }

    /// The receive-stall timer of `rk` fired: fail it if nothing arrived
    /// since while the host was not holding it back.
    pub(super) fn on_receive_stall(&mut self, rk: ReqKey, now: Instant) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let (Some(ck), Some(d)) = (req.conn(), req.opts().receive_stall_timeout) else {
            return;
        };
        let Some(conn) = self.conns.get(ck) else {
            return;
        };
        if !conn.response_under_way() {
            // A complete interim response, and the final head not begun:
            // that wait is the head deadline's. The next bytes re-arm this.
            return;
        }
        if conn.read_paused() || conn.uploading() || conn.bytes_in() > req.flow().rx_mark {
            req.flow_mut().rx_mark = conn.bytes_in();
            return self.arm(
                Timer::Attempt(rk, AttemptTimer::ReceiveStall),
                after(now, d),
            );
        }
        let req = ReqRef {
            key: rk,
            id: req.id(),
        };
        self.effects.push(Effect::Abort {
            req,
            error: (Error::Timeout(Deadline::ReceiveStall)).into(),
            close: CloseReason::Error,
        });
    }

    /// The transfer counters of live request `id`.
    pub(super) fn progress_of(&self, id: RequestId) -> Option<Progress> {
        Some(self.reqs.get(self.reqs.find(id)?)?.progress())
    }
}
