//! Moving a connection's bytes: how far a readiness event reads, the read
//! budget, the buffers every connection shares, and what arrived means in
//! the connection's stage (the proxy's handshake, the tunnel, the origin's
//! handshake, an exchange), and what an I/O failure means in each.
//!
//! Owns [`Buffers`] and `Engine::read_again`. The bytes themselves move in
//! the connection ([`super::conn`]); this file decides when, and hands what
//! arrived to the stage's handler.

use std::time::Instant;

use crate::error::{Error, Phase};
use crate::event::CloseReason;
use crate::keys::ConnKey;

use super::conn::{IoFailure, ReadPass, StageName};
use super::effects::{ConnRef, Effect, Outcome, ReadMode};
use super::Engine;

/// Plaintext bytes read from one connection per readiness event before the
/// loop moves on to others (fairness, and a bound on queued body events).
const READ_BUDGET: usize = 256 * 1024;

/// Size of the one read buffer shared by every connection.
const SCRATCH: usize = 64 * 1024;

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
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let conn = ConnRef { key, id: c.id() };
        let bufs = &mut self.bufs;
        if let Err(e) = c.flush(&mut bufs.sealed) {
            return self.io_failed(key, e, true, now);
        }
        // A paused body is left in the socket: TCP holds the server back.
        let read = if c.read_paused() {
            ReadMode::Skip
        } else {
            read
        };
        let pass = match read {
            ReadMode::Skip => ReadPass::default(),
            ReadMode::UntilShort | ReadMode::UntilWouldBlock => {
                let stop_short = read == ReadMode::UntilShort;
                match c.read_pass(&mut bufs.scratch, &mut bufs.sealed, budget, stop_short) {
                    Ok(pass) => pass,
                    Err(f) => {
                        // Bytes that arrived intact before the failure still
                        // count: the exchange may even have completed.
                        let ended = c.has_input()
                            && c.stage() == StageName::Ready
                            && self.on_input(conn, false, now);
                        if !ended {
                            self.io_failed(key, f, false, now);
                        }
                        return;
                    }
                }
            }
        };
        match c.stage() {
            // TLS with an https proxy: done, or the proxy gave up.
            StageName::ProxyHandshaking => self.on_proxy_handshake(conn, pass.eof, now),
            // The proxy's answer to CONNECT.
            StageName::Tunneling if pass.bytes > 0 || pass.eof => {
                self.on_tunnel_input(conn, pass.eof, now)
            }
            StageName::Handshaking | StageName::Ready => {
                if c.handshake_done() {
                    self.ready(key, now);
                }
                if let Some(c) = self.conns.get_mut(key).filter(|c| c.id() == conn.id) {
                    if pass.eof {
                        c.note_peer_end(pass.unclean);
                    }
                    if pass.bytes > 0 || pass.eof {
                        self.on_input(conn, pass.eof, now);
                    }
                }
            }
            _ => {}
        }
        let Some(c) = self.conns.get_mut(key).filter(|c| c.id() == conn.id) else {
            return;
        };
        if let Err(e) = c.flush(&mut self.bufs.sealed) {
            return self.io_failed(key, e, true, now);
        }
        if pass.more {
            self.read_again.push(conn);
        }
        if c.uploading() {
            self.pump(conn, now);
        }
        let Some(c) = self.conns.get(key).filter(|c| c.id() == conn.id) else {
            return;
        };
        if let (Some(rk), true, StageName::Ready) = (c.exchange(), c.wants_write(), c.stage()) {
            self.watch_send(key, rk, now);
        }
    }

    /// Read on from the connections whose last read stopped at the budget.
    pub(super) fn read_deferred(&mut self, now: Instant) {
        let again = std::mem::take(&mut self.read_again);
        for conn in again {
            if self.is_live(conn) {
                self.drive(conn.key, ReadMode::UntilWouldBlock, now);
            }
        }
    }

    /// Drive every connection whose pipe raises no readiness events (the
    /// in-memory pipes of the fuzzer), then fire deadlines due at `now`.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn drive_silent(&mut self, now: Instant) {
        let silent: Vec<ConnRef> = self
            .conns
            .iter()
            .filter(|(_, c)| c.sock().is_some_and(|s| !s.is_evented()))
            .map(|(key, c)| ConnRef { key, id: c.id() })
            .collect();
        for conn in silent {
            if self.is_live(conn) {
                self.on_token(self.mio.token(conn.key), ReadMode::UntilWouldBlock, now);
                self.apply(now);
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
    /// themselves gave); the connection then closes after it, its write
    /// side broken.
    fn answered_before(&mut self, conn: ConnRef, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(conn.key) else {
            return false;
        };
        let bufs = &mut self.bufs;
        // Up to the read budget: an answer the peer already sent is in the
        // socket's receive queue, readable before the reset it reports.
        let pass = c.read_pass(&mut bufs.scratch, &mut bufs.sealed, READ_BUDGET, false);
        let eof = pass.is_ok_and(|p| p.eof);
        if !c.has_input() {
            return false;
        }
        // Never handed another request, whatever the answer says.
        c.retire(CloseReason::PeerClose);
        self.on_input(conn, eof, now)
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
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some(c) = self.conns.get(key) else {
            return;
        };
        match c.stage() {
            StageName::ProxyHandshaking | StageName::Tunneling => {
                self.proxy_io_failed(key, failure)
            }
            StageName::Resolving | StageName::Connecting | StageName::Handshaking => {
                let error = match failure {
                    IoFailure::Tls(reason) => Error::tls(reason, Phase::Tls),
                    // The https proxy's session under the origin's broke.
                    IoFailure::Io(e) if crate::proxy_tls::tls_failure(&e).is_some() => {
                        return self.proxy_io_failed(key, IoFailure::Io(e));
                    }
                    IoFailure::Io(e) => Error::connect(c.addr(), e),
                };
                self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: error.into(),
                });
            }
            StageName::Ready => {
                let Some(req) = c.exchange().and_then(|rk| self.req_ref(rk)) else {
                    return self.effects.push(Effect::Close {
                        conn,
                        reason: CloseReason::PeerClose,
                    });
                };
                if writing && self.answered_before(conn, now) {
                    return;
                }
                let Some(c) = self.conns.get(key) else {
                    return;
                };
                let phase = match c.codec_state() {
                    rotary_proto::State::Body => Phase::ResponseBody,
                    rotary_proto::State::Sending if writing => Phase::Write,
                    _ if writing && !c.response_started() => Phase::Write,
                    _ => Phase::ResponseHead,
                };
                let error = match failure {
                    IoFailure::Tls(reason) => Error::tls(reason, phase),
                    IoFailure::Io(e) => Error::io(phase, e),
                };
                let outcome = Outcome::failed(error);
                self.effects
                    .push(Effect::ExchangeEnded { conn, req, outcome });
            }
        }
    }
}
