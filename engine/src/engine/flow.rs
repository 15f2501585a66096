//! Streamed response bodies under flow control: the receive window, the
//! host's consume/pause/resume, the receive-stall deadline, and progress.
//!
//! A streamed request counts body bytes delivered as events and not yet
//! consumed; at its window the connection stops reading (`Conn::read_paused`),
//! so the server is held back by TCP instead of the engine's memory
//! growing. Consuming below the window queues the connection in
//! `Engine::resumed`, read on at the loop's next turn.
//!
//! Owns `Req::flow` and `Conn::read_paused`.

use std::time::Instant;

use crate::keys::{ConnKey, ReqKey};
use crate::{CloseReason, Deadline, Error, RequestId};

use super::io::ReadMode;
use super::request::Req;
use super::timers::{after, ReqTimer, Timer};
use super::Engine;

/// A request's transfer counters and flow-control state.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Flow {
    /// Streamed body bytes delivered and not yet consumed.
    pub(super) unconsumed: usize,
    /// The host paused the body explicitly.
    pub(super) paused: bool,
    /// Response body bytes received.
    pub(super) received: u64,
    /// The response's `Content-Length`, when it has one.
    pub(super) receive_total: Option<u64>,
    /// The final response head arrived (what follows is the body's phase,
    /// streamed or buffered).
    pub(super) head_seen: bool,
    /// The connection's byte counters when the stall timers were armed.
    pub(super) tx_mark: u64,
    pub(super) rx_mark: u64,
}

/// How far a request's transfer has got; see [`Engine::progress`](crate::Engine::progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Request body bytes handed to the connection.
    pub sent: u64,
    /// The request body's length, when known.
    pub send_total: Option<u64>,
    /// Response body bytes received.
    pub received: u64,
    /// The response body's length (`Content-Length`), when known.
    pub receive_total: Option<u64>,
}

impl Engine {
    /// `n` bytes of a streamed body of `rk` were delivered on `ck`.
    #[inline]
    pub(super) fn delivered(&mut self, ck: ConnKey, rk: ReqKey, n: usize) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        req.flow.unconsumed = req.flow.unconsumed.saturating_add(n);
        if req.flow.unconsumed >= req.opts.receive_window.max(1) {
            if let Some(conn) = self.conns.get_mut(ck) {
                conn.read_paused = true;
            }
        }
    }

    /// How much plaintext the next read of `ck` may take: `budget`, or, for
    /// a streamed response, what is left of its receive window (bytes
    /// delivered and not consumed, and bytes read and not yet delivered,
    /// the head's among them, count against it), at least 1 so a read
    /// makes progress.
    /// A pass checks its budget between socket reads, so it ends at most
    /// one read (the 64 KiB scratch) past this: the window, not the read
    /// budget, bounds what a body holds in the engine.
    pub(super) fn read_room(&self, ck: ConnKey, budget: usize) -> usize {
        let Some(conn) = self.conns.get(ck) else {
            return budget;
        };
        let Some(req) = conn.req.and_then(|rk| self.reqs.get(rk)) else {
            return budget;
        };
        if !req.opts.streaming {
            return budget;
        }
        let held = req.flow.unconsumed.saturating_add(conn.rbuf.len());
        req.opts
            .receive_window
            .saturating_sub(held)
            .clamp(1, budget.max(1))
    }

    /// The host consumed `n` streamed body bytes of `id`.
    pub(super) fn consumed(&mut self, id: RequestId, n: usize) {
        let Some(rk) = self.reqs.find(id) else {
            return;
        };
        if let Some(req) = self.reqs.get_mut(rk) {
            req.flow.unconsumed = req.flow.unconsumed.saturating_sub(n);
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
        req.flow.paused = paused;
        if paused {
            if let Some(conn) = req.conn.and_then(|ck| self.conns.get_mut(ck)) {
                conn.read_paused = true;
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
        if req.flow.paused || req.flow.unconsumed >= req.opts.receive_window.max(1) {
            return;
        }
        let Some(ck) = req.conn else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(ck).filter(|c| c.read_paused) {
            conn.read_paused = false;
            self.resumed.push((ck, conn.id));
        }
    }

    /// Read on from the connections let go since the last turn: first what
    /// they already hold, then the socket.
    pub(super) fn resume_reads(&mut self, now: Instant) {
        let resumed = std::mem::take(&mut self.resumed);
        for (key, id) in resumed {
            let Some(conn) = self.live(key, id).filter(|c| !c.read_paused) else {
                continue;
            };
            let eof = conn.peer_closed();
            self.on_input(key, id, eof, now);
            if self.is_live(key, id) {
                self.drive(key, ReadMode::UntilWouldBlock, now);
            }
        }
    }

    /// The body of `rk` is under way on `ck`: watch that it keeps coming.
    pub(super) fn watch_receive(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let Some(d) = req.opts.receive_stall_timeout else {
            return;
        };
        if req.timers[ReqTimer::ReceiveStall as usize].is_none() {
            req.flow.rx_mark = conn.bytes_in;
            self.arm(Timer::Req(rk, ReqTimer::ReceiveStall), after(now, d));
        }
    }

    /// The receive-stall timer of `rk` fired: fail it if nothing arrived
    /// since while the host was not holding it back.
    pub(super) fn on_receive_stall(&mut self, rk: ReqKey, now: Instant) {
        let Some(req) = self.reqs.get_mut(rk) else {
            return;
        };
        let (Some(ck), Some(d)) = (req.conn, req.opts.receive_stall_timeout) else {
            return;
        };
        let Some(conn) = self.conns.get(ck) else {
            return;
        };
        let under_way = conn.codec.state() == rotary_proto::State::Body || !conn.rbuf.is_empty();
        if !under_way {
            // A complete interim response, and the final head not begun:
            // that wait is the head deadline's. The next bytes re-arm this.
            return;
        }
        if conn.read_paused || conn.uploading || conn.bytes_in > req.flow.rx_mark {
            req.flow.rx_mark = conn.bytes_in;
            return self.arm(Timer::Req(rk, ReqTimer::ReceiveStall), after(now, d));
        }
        let err = Error::Timeout(Deadline::ReceiveStall);
        self.abort_request(rk, err, CloseReason::Error, now);
    }

    /// The transfer counters of live request `id`.
    pub(super) fn progress_of(&self, id: RequestId) -> Option<Progress> {
        Some(self.reqs.get(self.reqs.find(id)?)?.progress())
    }
}

impl Req {
    /// How far this request's transfer has got.
    pub(super) fn progress(&self) -> Progress {
        let send_total = self.request.body().len();
        let sent = match self.upload.as_deref() {
            Some(up) => up.sent,
            // Sent with the head, once on a connection.
            None if self.conn.is_some() => send_total.unwrap_or(0),
            None => 0,
        };
        Progress {
            sent,
            send_total,
            received: self.flow.received,
            receive_total: self.flow.receive_total,
        }
    }
}
