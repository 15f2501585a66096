//! A ready connection: what it has ([`Ready`]) and its exchanges, from the
//! request put on it to the verdict that keeps or closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rotary_proto::{Codec, NameCache, ResponseEvent, State, Verdict};

use crate::chain::PeerChain;
use crate::credentials::Epoch;
use crate::event::{CloseReason, CredentialReason};
use crate::keys::ReqKey;
use crate::session::Session;

use super::{Conn, Stage, KEEP_BUSY};

/// How far the peer's side of a ready connection has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerEnd {
    /// Still open.
    Open,
    /// Closed (TCP FIN, or TLS close_notify).
    Closed,
    /// Over TLS, the TCP connection ended without a close_notify: whatever a
    /// close-delimited body held may have been cut by an attacker.
    Unclean,
}

/// What a ready connection has.
pub(in crate::engine) struct Ready {
    /// The origin's session (`None` for `http://`).
    pub(super) tls: Option<Box<Session>>,
    /// The origin's verified chain (`None` for `http://`).
    pub(super) chain: Option<Arc<PeerChain>>,
    /// The credentials it holds to (meaningful with `tls`): the client
    /// identity it presented, and the anchors and CRLs its chain was last
    /// judged valid under.
    pub(super) epoch: Epoch,
    /// Why its credentials stopped holding, once the host was told.
    pub(super) invalid: Option<CredentialReason>,
    pub(super) codec: Codec,
    /// Exchanges started on it.
    pub(super) served: u32,
    /// Exchanges the server still allows (`Keep-Alive: max`, `max_requests`).
    pub(super) remaining: Option<u32>,
    /// Its idle limit once a server's `Keep-Alive: timeout` tightened it.
    pub(super) idle_limit: Option<Duration>,
    /// While idle with an idle limit: when the idle timeout closes it.
    pub(super) idle_until: Option<Instant>,
    pub(super) peer_end: PeerEnd,
    /// The exchange it carries.
    pub(super) exchange: Option<OnConn>,
}

/// The exchange a ready connection carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct OnConn {
    pub(super) req: ReqKey,
    /// A request body is being moved in by the engine's pump.
    pub(super) uploading: bool,
    /// The host holds the response body back: do not read.
    pub(super) read_paused: bool,
}

/// What the idle timer finds when it fires.
pub(in crate::engine) enum IdleCheck {
    /// Idle past its limit: it closes.
    Expired,
    /// It worked and went idle again since: the timer waits on until then.
    Later(Instant),
    /// Busy, or no limit: nothing to do.
    Busy,
}

impl Conn {
    /// Connected (and handshaken) → usable, with `chain` verified and at
    /// most `remaining` exchanges.
    pub(in crate::engine) fn set_ready(
        &mut self,
        codec: Codec,
        chain: Option<Arc<PeerChain>>,
        remaining: Option<u32>,
    ) {
        let (tls, epoch) = match std::mem::replace(&mut self.stage, Stage::ProxyHandshaking) {
            Stage::Handshaking(s, epoch) => (Some(s), epoch),
            _ => (None, Epoch::default()),
        };
        self.stage = Stage::Ready(Ready {
            tls,
            chain,
            epoch,
            invalid: None,
            codec,
            served: 0,
            remaining,
            idle_limit: None,
            idle_until: None,
            peer_end: PeerEnd::Open,
            exchange: None,
        });
    }

    /// Its chain was judged again under the anchors and CRLs of `current`
    /// and holds, along `chain` (its verified path may have moved): it
    /// belongs to their epochs now. The identity it presented stays.
    pub(in crate::engine) fn rejudged(&mut self, current: Epoch, chain: Arc<PeerChain>) {
        if let Stage::Ready(r) = &mut self.stage {
            r.epoch.anchors = current.anchors;
            r.epoch.crls = current.crls;
            if r.chain.is_some() {
                r.chain = Some(chain);
            }
        }
    }

    /// Its credentials no longer hold, for `reason`: true when the host is
    /// to hear of it (the first time, or a revocation after a gentler
    /// reason, which closes it at once).
    pub(in crate::engine) fn invalidate(&mut self, reason: CredentialReason) -> bool {
        let Stage::Ready(r) = &mut self.stage else {
            return false;
        };
        match r.invalid {
            None => {}
            Some(CredentialReason::Revoked) => return false,
            Some(_) if reason == CredentialReason::Revoked => {}
            Some(_) => return false,
        }
        r.invalid = Some(reason);
        true
    }

    /// Why its credentials stopped holding, if they did.
    pub(in crate::engine) fn invalid(&self) -> Option<CredentialReason> {
        match &self.stage {
            Stage::Ready(r) => r.invalid,
            _ => None,
        }
    }

    /// Put request `rk` on this idle connection; `write` puts its head (and
    /// a body sent with it) into the write buffer with the codec. Returns
    /// whether it carried an earlier exchange. A codec that refuses (before
    /// writing a byte) leaves the connection idle, with a fresh codec.
    #[inline]
    pub(in crate::engine) fn begin_exchange<E>(
        &mut self,
        rk: ReqKey,
        paused: bool,
        limits: rotary_proto::Limits,
        write: impl FnOnce(&mut Codec, &mut BytesMut) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Stage::Ready(r) = &mut self.stage else {
            // Only an idle, ready connection is handed a request.
            return Ok(false);
        };
        if let Err(e) = write(&mut r.codec, &mut self.link.wbuf) {
            r.codec = Codec::new(limits);
            self.link.wbuf.clear();
            return Err(e);
        }
        let reused = r.served > 0;
        r.served += 1;
        r.remaining = r.remaining.map(|n| n.saturating_sub(1));
        r.idle_until = None;
        r.exchange = Some(OnConn {
            req: rk,
            uploading: false,
            read_paused: paused,
        });
        Ok(reused)
    }

    /// The exchange ends (its request leaves the connection).
    #[inline]
    pub(in crate::engine) fn end_exchange(&mut self) -> Option<ReqKey> {
        match &mut self.stage {
            Stage::Ready(r) => r.exchange.take().map(|e| e.req),
            _ => None,
        }
    }

    /// What the connection does after an exchange that ended well with
    /// `verdict`: the server's hints tighten its limits, and a reason to
    /// close comes back when it is not to be reused.
    #[inline]
    pub(in crate::engine) fn after_exchange(
        &mut self,
        verdict: &Verdict,
        idle_default: Option<Duration>,
        margin: Duration,
    ) -> Option<CloseReason> {
        let Stage::Ready(r) = &mut self.stage else {
            return Some(CloseReason::Error);
        };
        if let Some(max) = verdict.hints.max {
            r.remaining = Some(r.remaining.map_or(max, |n| n.min(max)));
        }
        let idle = crate::engine::lifetime::hinted_idle(
            r.idle_limit.or(idle_default),
            verdict.hints.timeout,
            margin,
        );
        r.idle_limit = idle;
        if verdict.close.is_some() || idle == Some(Duration::ZERO) {
            Some(CloseReason::ServerClose)
        } else if r.peer_end != PeerEnd::Open {
            Some(CloseReason::PeerClose)
        } else if let Some(reason) = self.retiring {
            Some(reason)
        } else if r.remaining == Some(0) {
            Some(CloseReason::MaxRequests)
        } else {
            None
        }
    }

    /// Back to idle: `None` when bytes nobody asked for wait in it (it is
    /// stale and must close), else when its idle limit (or `default`) ends.
    /// Its empty buffers shrink to [`KEEP_BUSY`].
    #[inline]
    pub(in crate::engine) fn go_idle(
        &mut self,
        now: Instant,
        default: Option<Duration>,
    ) -> Option<Option<Instant>> {
        if !self.link.rbuf.is_empty() {
            return None;
        }
        self.release_buffers(KEEP_BUSY);
        let Stage::Ready(r) = &mut self.stage else {
            return None;
        };
        r.idle_until = r
            .idle_limit
            .or(default)
            .map(|l| crate::engine::timers::after(now, l));
        Some(r.idle_until)
    }

    /// What its idle timer finds at `now`.
    pub(in crate::engine) fn idle_check(&self, now: Instant) -> IdleCheck {
        match &self.stage {
            Stage::Ready(r) if r.exchange.is_none() => match r.idle_until {
                Some(until) if until <= now => IdleCheck::Expired,
                Some(until) => IdleCheck::Later(until),
                None => IdleCheck::Busy,
            },
            _ => IdleCheck::Busy,
        }
    }

    /// The pump moves a request body in (`true`) or has stopped.
    #[inline]
    pub(in crate::engine) fn set_uploading(&mut self, on: bool) {
        if let Stage::Ready(Ready {
            exchange: Some(e), ..
        }) = &mut self.stage
        {
            e.uploading = on;
        }
    }

    #[inline]
    pub(in crate::engine) fn uploading(&self) -> bool {
        matches!(&self.stage, Stage::Ready(Ready { exchange: Some(e), .. }) if e.uploading)
    }

    /// The host holds the body back (`true`): nothing is read.
    #[inline]
    pub(in crate::engine) fn set_read_paused(&mut self, paused: bool) {
        if let Stage::Ready(Ready {
            exchange: Some(e), ..
        }) = &mut self.stage
        {
            e.read_paused = paused;
        }
    }

    #[inline]
    pub(in crate::engine) fn read_paused(&self) -> bool {
        matches!(&self.stage, Stage::Ready(Ready { exchange: Some(e), .. }) if e.read_paused)
    }

    /// The codec and the write buffer of a ready connection, for a body's
    /// next piece.
    #[inline]
    pub(in crate::engine) fn body_out(&mut self) -> Option<(&mut Codec, &mut BytesMut)> {
        match &mut self.stage {
            Stage::Ready(r) => Some((&mut r.codec, &mut self.link.wbuf)),
            _ => None,
        }
    }

    /// The next piece of the response from what was read, parsed with the
    /// pool's header `names`.
    #[inline]
    pub(in crate::engine) fn poll_response(
        &mut self,
        names: &mut NameCache,
    ) -> Option<Result<Option<ResponseEvent>, rotary_proto::Error>> {
        match &mut self.stage {
            Stage::Ready(r) => Some(r.codec.poll_response_with(&mut self.link.rbuf, names)),
            _ => None,
        }
    }

    /// The peer ended: what the codec makes of it.
    #[inline]
    pub(in crate::engine) fn response_eof(
        &mut self,
    ) -> Result<Option<ResponseEvent>, rotary_proto::Error> {
        match &mut self.stage {
            Stage::Ready(r) => r.codec.handle_eof(),
            _ => Err(rotary_proto::Error::ClosedBeforeResponse),
        }
    }

    /// Some of the current response has arrived (interim ones included).
    #[inline]
    pub(in crate::engine) fn response_started(&self) -> bool {
        matches!(&self.stage, Stage::Ready(r) if r.codec.response_started())
    }

    /// The codec's state (ready connections; `Idle` before).
    #[inline]
    pub(in crate::engine) fn codec_state(&self) -> State {
        match &self.stage {
            Stage::Ready(r) => r.codec.state(),
            _ => State::Idle,
        }
    }

    /// A response is under way: a head whose first bytes are in, or a body.
    #[inline]
    pub(in crate::engine) fn response_under_way(&self) -> bool {
        let in_body = matches!(&self.stage, Stage::Ready(r) if r.codec.reading_body());
        in_body || !self.link.rbuf.is_empty()
    }

    /// Plaintext read and not yet parsed into events.
    pub(in crate::engine) fn input_len(&self) -> usize {
        self.link.rbuf.len()
    }

    /// Bytes wait in the read buffer.
    #[inline]
    pub(in crate::engine) fn has_input(&self) -> bool {
        !self.link.rbuf.is_empty()
    }
}
