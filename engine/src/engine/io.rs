//! Moving a connection's bytes: how far a readiness event reads, the read
//! budget, the buffers every connection shares, and what an I/O failure
//! means in each stage.
//!
//! Owns [`Buffers`] and `Engine::read_again`. The bytes themselves move in
//! `Conn::flush` and `Conn::read_pass`; this file decides when, and hands
//! what arrived to [`super::exchange`].

use std::time::Instant;

use crate::conn::{IoFailure, PeerEnd, ReadPass, Stage};
use crate::keys::ConnKey;
use crate::{CloseReason, Error, Phase};

use super::Engine;

/// Plaintext bytes read from one connection per readiness event before the
/// loop moves on to others (fairness, and a bound on queued body events).
const READ_BUDGET: usize = 256 * 1024;

/// Size of the one read buffer shared by every connection.
const SCRATCH: usize = 64 * 1024;

/// How far a drive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// Do not read (only write what is pending).
    Skip,
    /// Stop at a short read: the socket is drained and new data raises a
    /// new edge. Only safe when the event did not report a hang-up, whose
    /// EOF would otherwise never be read.
    UntilShort,
    /// Read until `WouldBlock` or EOF.
    UntilWouldBlock,
}

impl ReadMode {
    /// The mode for a readiness event: a hang-up (or error) reads to its
    /// EOF, readable data up to a short read, and an event that reports
    /// neither (the socket only turned writable) reads nothing: readiness
    /// is reported whole, so no data waits behind it.
    pub(super) fn after_event(event: &mio::event::Event) -> ReadMode {
        if event.is_read_closed() || event.is_error() {
            ReadMode::UntilWouldBlock
        } else if event.is_readable() {
            ReadMode::UntilShort
        } else {
            ReadMode::Skip
        }
    }
}

/// Buffers shared by every connection, used by one at a time.
pub(super) struct Buffers {
    /// Ciphertext (or plaintext for `http://`) read from a socket.
    pub(super) scratch: Vec<u8>,
    /// Outgoing TLS records of one connection, from encryption to the socket.
    pub(super) sealed: Vec<u8>,
}

impl Buffers {
    pub(super) fn new() -> Buffers {
        Buffers {
            scratch: vec![0; SCRATCH],
            sealed: Vec::with_capacity(16 * 1024 + 256),
        }
    }
}

impl Engine {
    /// Write what is pending, read what arrived, and act on it.
    pub(super) fn drive(&mut self, key: ConnKey, read: ReadMode, now: Instant) {
        let budget = self.read_room(key, READ_BUDGET);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Slab keys are reused: a connection closed below may hand its key to
        // a new one, so every later look-up checks the id too.
        let id = conn.id;
        let bufs = &mut self.bufs;
        if let Err(e) = conn.flush(&mut bufs.sealed) {
            return self.io_failed(key, e, true, now);
        }
        // A paused body is left in the socket: TCP holds the server back.
        let read = if conn.read_paused {
            ReadMode::Skip
        } else {
            read
        };
        let pass = match read {
            ReadMode::Skip => ReadPass::default(),
            ReadMode::UntilShort | ReadMode::UntilWouldBlock => {
                let stop_short = read == ReadMode::UntilShort;
                let read = conn.read_pass(&mut bufs.scratch, &mut bufs.sealed, budget, stop_short);
                match read {
                    Ok(pass) => pass,
                    Err(f) => {
                        // Bytes that arrived intact before the failure still
                        // count: the exchange may even have completed.
                        if !conn.rbuf.is_empty() && conn.stage() == Stage::Ready {
                            self.on_input(key, id, false, now);
                        }
                        if self.is_live(key, id) {
                            self.io_failed(key, f, false, now);
                        }
                        return;
                    }
                }
            }
        };
        conn.bytes_in += pass.bytes as u64;
        if conn.stage() == Stage::ProxyHandshaking {
            // TLS with an https proxy: done, or the proxy gave up.
            self.on_proxy_handshake(key, id, pass.eof, now);
        } else if conn.stage() == Stage::Tunneling {
            // The proxy's answer to CONNECT: the tunnel's own module.
            if pass.bytes > 0 || pass.eof {
                self.on_tunnel_input(key, id, pass.eof, now);
            }
        } else {
            if conn.stage() == Stage::Handshaking
                && conn.tls.as_ref().is_some_and(|t| !t.is_handshaking())
            {
                self.ready(key, now);
            }
            if pass.unclean {
                if let Some(conn) = self.live(key, id) {
                    conn.peer_end = PeerEnd::Unclean;
                }
            }
            if (pass.bytes > 0 || pass.eof) && self.is_live(key, id) {
                self.on_input(key, id, pass.eof, now);
            }
        }
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
            return;
        };
        if let Err(e) = conn.flush(&mut self.bufs.sealed) {
            return self.io_failed(key, e, true, now);
        }
        if pass.more {
            self.read_again.push((key, id));
        }
        // The connection is looked up again only after a call that may
        // have closed it.
        let mut conn = conn;
        if conn.uploading {
            self.pump(key, now);
            let Some(c) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                return;
            };
            conn = c;
        }
        if let (Some(rk), true, Stage::Ready) = (conn.req, conn.wants_write(), conn.stage()) {
            self.watch_send(key, rk, now);
        }
    }

    /// Read on from the connections whose last read stopped at the budget.
    pub(super) fn read_deferred(&mut self, now: Instant) {
        let again = std::mem::take(&mut self.read_again);
        for (key, id) in again {
            if self.is_live(key, id) {
                self.drive(key, ReadMode::UntilWouldBlock, now);
            }
        }
    }

    /// Drive every connection whose pipe raises no readiness events (the
    /// in-memory pipes of [`crate::fuzzing`]), then fire deadlines due at
    /// `now`.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn drive_silent(&mut self, now: Instant) {
        let keys: Vec<(ConnKey, crate::ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.sock.as_ref().is_some_and(|s| !s.is_evented()))
            .map(|(k, c)| (k, c.id))
            .collect();
        for (key, id) in keys {
            if self.is_live(key, id) {
                self.on_token(self.mio.token(key), ReadMode::UntilWouldBlock, now);
            }
        }
        self.handle_timeouts(now);
    }

    /// A write on `key` failed while it carried an exchange. The peer may
    /// have answered and closed before taking the whole request (an early
    /// 401, 403 or 413 to a large upload: its kernel resets the connection
    /// for the unread bytes, and the next write fails). What it sent before
    /// is still in the socket: read it, and when it completes the response,
    /// that response is the answer, as for an early answer read in time.
    /// True when the exchange ended so (a response, or an error the bytes
    /// themselves gave); the connection is then closed.
    fn answered_before(&mut self, key: ConnKey, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let (id, req, pool) = (conn.id, conn.req, conn.pool);
        let bufs = &mut self.bufs;
        // Up to the read budget: an answer the peer already sent is in the
        // socket's receive queue, readable before the reset it reports.
        let eof = match conn.read_pass(&mut bufs.scratch, &mut bufs.sealed, READ_BUDGET, false) {
            Ok(pass) => pass.eof,
            Err(_) => false,
        };
        if conn.rbuf.is_empty() {
            return false;
        }
        self.on_input(key, id, eof, now);
        let Some(conn) = self.live(key, id) else {
            return true;
        };
        if conn.req.is_some() && conn.req == req {
            return false;
        }
        if conn.req.is_none() {
            // Its write side is broken: never handed another request.
            self.close_conn(key, CloseReason::PeerClose);
            self.dispatch(pool, now);
        }
        true
    }

    /// A read or write failed: before `Ready` the attempt fails; after, the
    /// exchange on it does (or the idle connection just closes).
    pub(super) fn io_failed(
        &mut self,
        key: ConnKey,
        failure: IoFailure,
        writing: bool,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.stage() {
            Stage::ProxyHandshaking | Stage::Tunneling => self.proxy_io_failed(key, failure, now),
            Stage::Resolving | Stage::Connecting | Stage::Handshaking => {
                let err = match failure {
                    IoFailure::Tls(reason) => Error::Tls {
                        reason,
                        phase: Phase::Tls,
                    },
                    // The https proxy's session under the origin's broke.
                    IoFailure::Io(e) if crate::proxy_tls::tls_failure(&e).is_some() => {
                        return self.proxy_io_failed(key, IoFailure::Io(e), now);
                    }
                    IoFailure::Io(e) => Error::connect(conn.addr(), e),
                };
                self.connect_failed(key, err, now);
            }
            Stage::Ready => {
                if writing && conn.req.is_some() && self.answered_before(key, now) {
                    return;
                }
                let Some(conn) = self.conns.get(key) else {
                    return;
                };
                let phase = match conn.codec.state() {
                    rotary_proto::State::Body => Phase::ResponseBody,
                    rotary_proto::State::Sending if writing => Phase::Write,
                    _ if writing && !conn.codec.response_started() => Phase::Write,
                    _ => Phase::ResponseHead,
                };
                let err = match failure {
                    IoFailure::Tls(reason) => Error::Tls { reason, phase },
                    IoFailure::Io(e) => Error::io(phase, e),
                };
                if conn.req.is_some() {
                    self.exchange_failed(key, err, now);
                } else {
                    let p = conn.pool;
                    self.close_conn(key, CloseReason::PeerClose);
                    self.dispatch(p, now);
                }
            }
        }
    }
}
