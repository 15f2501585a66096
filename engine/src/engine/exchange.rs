//! One exchange on one connection: writing the request, feeding what
//! arrives to the codec, turning codec output into events, and ending the
//! exchange — reuse, retire, or retry the request elsewhere.
//!
//! Owns `Conn::req`, `served`, `remaining`, `idle_limit` and `peer_end`
//! while an exchange runs, the request's `FirstByte` timer, and the retry
//! rules. A response's bytes are the request's ([`super::request`]).

use std::time::{Duration, Instant};

use http::Method;
use rotary_proto::{CloseCause, Codec, ResponseEvent, Verdict};

use crate::conn::{PeerEnd, Stage};
use crate::keys::{ConnKey, ReqKey};
use crate::stats::Counter;
use crate::{CloseReason, ConnId, Deadline, Error, Event, Phase, ServedBy, Trailers};

use super::io::ReadMode;
use super::redirect;
use super::request::Req;
use super::timers::{after, ReqTimer, Timer};
use super::tunnel;
use super::Engine;

/// The idle limit after a server's `Keep-Alive: timeout` hint.
pub(crate) fn hinted_idle(
    ours: Option<Duration>,
    hint: Option<Duration>,
    margin: Duration,
) -> Option<Duration> {
    match (ours, hint) {
        (o, None) => o,
        (None, Some(h)) => Some(h.saturating_sub(margin)),
        (Some(o), Some(h)) => Some(o.min(h.saturating_sub(margin))),
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// May request `r`, whose exchange failed with `err` (`started`: some of a
/// response had arrived), be sent again on a fresh connection? `Err` says
/// why not, for the log.
fn retry_verdict(r: &Req, err: &Error, started: bool) -> Result<(), &'static str> {
    let stale = matches!(err, Error::PeerClosed { reused: true, .. })
        || (r.reused && matches!(err, Error::Io { .. }));
    let drained = matches!(err, Error::Timeout(Deadline::DrainGrace));
    if !(stale || drained) {
        Err("only a reused connection's close, or a drain, is retried")
    } else if !(is_idempotent(r.request.method()) || r.opts.retry_safe) {
        Err("the method is not idempotent and the request is not marked retry-safe")
    } else if !r.replayable() {
        Err("its body cannot be sent again")
    } else if r.retried {
        Err("it was retried once already")
    } else if started {
        Err("part of a response had arrived")
    } else {
        Ok(())
    }
}

impl Engine {
    /// Put request `rk` on idle connection `ck` and send its head and body.
    pub(super) fn assign(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get_mut(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        conn.idle_until = None;
        let r = &req.request;
        let pool = &self.pools[conn.pool];
        let headers = tunnel::request_headers(pool, r.headers());
        let form = tunnel::target_form(pool);
        let sent = match (req.upload.as_deref(), r.body().as_bytes()) {
            (None, Some(body)) => {
                let needs_body = !body.is_empty()
                    || matches!(*r.method(), Method::POST | Method::PUT | Method::PATCH);
                conn.codec.send_request(
                    r.method(),
                    r.uri(),
                    &headers,
                    needs_body.then_some(&body[..]),
                    form,
                    &mut conn.wbuf,
                )
            }
            _ => conn.codec.start_streaming_request(
                r.method(),
                r.uri(),
                &headers,
                r.body().len(),
                form,
                &mut conn.wbuf,
            ),
        };
        if let Err(e) = sent {
            // The codec refuses before writing a byte: the connection is
            // untouched, so it goes back to the pool with a fresh codec.
            conn.codec = Codec::new(self.config.limits);
            conn.wbuf.clear();
            self.fail_request(rk, Error::InvalidRequest(e.to_string()));
            return self.make_idle(ck, now);
        }
        req.reused = conn.served > 0;
        req.conn = Some(ck);
        // A pause asked for while the request waited holds from its first byte.
        conn.read_paused = req.flow.paused;
        conn.served += 1;
        conn.remaining = conn.remaining.map(|r| r.saturating_sub(1));
        conn.req = Some(rk);
        if req.reused {
            self.stats.connections_reused += 1;
        }
        let uploads = req.upload.is_some();
        if let Some(t) = req.opts.first_byte_timeout {
            self.arm(Timer::Req(rk, ReqTimer::FirstByte), after(now, t));
        }
        if uploads {
            self.upload_started(ck, rk, now);
        } else {
            self.request_written(rk, now);
        }
        // Only the request goes out: anything the peer sends raises an event.
        self.drive(ck, ReadMode::Skip, now);
    }

    /// The whole of request `rk` is written (to the connection's buffer):
    /// the wait for its response head starts. A body sent in pieces gets
    /// there when its last piece is in, however long that took.
    pub(super) fn request_written(&mut self, rk: ReqKey, now: Instant) {
        if let Some(t) = self.reqs.get(rk).and_then(|r| r.opts.head_timeout) {
            self.arm(Timer::Req(rk, ReqTimer::Head), after(now, t));
        }
    }

    /// New plaintext (or EOF) on a connection.
    pub(super) fn on_input(&mut self, key: ConnKey, id: ConnId, eof: bool, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            if eof && conn.peer_end == PeerEnd::Open {
                conn.peer_end = PeerEnd::Closed;
            }
        }
        loop {
            // The connection and its pool's header names, borrowed apart.
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                return;
            };
            if conn.read_paused {
                // The host holds the body back: what arrived waits in rbuf.
                return;
            }
            let Some(rk) = conn.req else {
                if !conn.rbuf.is_empty() || eof {
                    // Idle (or draining after its exchange): bytes or EOF mean stale.
                    let p = conn.pool;
                    if conn.stage() == Stage::Ready {
                        self.close_conn(key, CloseReason::PeerClose);
                    } else {
                        let err = Error::PeerClosed {
                            phase: Phase::Tls,
                            reused: false,
                        };
                        return self.connect_failed(key, err, now);
                    }
                    self.dispatch(p, now);
                }
                return;
            };
            let names = &mut self.pools[conn.pool].names;
            let polled = conn.codec.poll_response_with(&mut conn.rbuf, names);
            let started = conn.codec.response_started();
            // A head whose first bytes are in, or a body: the response is
            // under way, and the stall deadline watches that it goes on.
            let under_way =
                conn.codec.state() == rotary_proto::State::Body || !conn.rbuf.is_empty();
            match polled {
                Ok(Some(ev)) => {
                    self.disarm(Timer::Req(rk, ReqTimer::FirstByte));
                    self.on_response_event(key, rk, ev, now);
                }
                Ok(None) if !eof => {
                    if started {
                        self.disarm(Timer::Req(rk, ReqTimer::FirstByte));
                    }
                    if under_way {
                        self.watch_receive(key, rk, now);
                    }
                    return;
                }
                Ok(None) => return self.on_eof(key, id, rk, started, now),
                Err(cause) => {
                    let phase = self.response_phase(rk);
                    return self.exchange_failed(key, Error::Protocol { phase, cause }, now);
                }
            }
        }
    }

    /// The peer closed while request `rk` was on `key` and the codec has
    /// nothing more from the bytes it had: the end of a close-delimited body,
    /// or a cut exchange. Either way the connection closes.
    fn on_eof(&mut self, key: ConnKey, id: ConnId, rk: ReqKey, started: bool, now: Instant) {
        let Some(conn) = self.live(key, id) else {
            return;
        };
        let at_eof = conn.codec.handle_eof();
        let truncatable = conn.peer_end == PeerEnd::Unclean;
        self.disarm(Timer::Req(rk, ReqTimer::FirstByte));
        let reused = self.reqs.get(rk).is_some_and(|r| r.reused);
        let cut = |phase| Error::PeerClosed { phase, reused };
        match at_eof {
            // RFC 9112 §9.8: over TLS, a close-delimited body is complete
            // only with a close_notify; a bare FIN may be an attacker's
            // truncation.
            Ok(Some(ResponseEvent::End { verdict, .. }))
                if truncatable && verdict.close == Some(CloseCause::CloseDelimited) =>
            {
                self.exchange_failed(key, cut(Phase::ResponseBody), now);
            }
            Ok(Some(ev)) => self.on_response_event(key, rk, ev, now),
            Ok(None) | Err(_) if !started => {
                self.exchange_failed(key, cut(Phase::ResponseHead), now);
            }
            Ok(None) => self.exchange_failed(key, cut(Phase::ResponseBody), now),
            Err(cause) => {
                let phase = self.response_phase(rk);
                self.exchange_failed(key, Error::Protocol { phase, cause }, now);
            }
        }
        // Whatever happened, the peer is gone.
        if let Some(p) = self.live(key, id).map(|c| c.pool) {
            self.close_conn(key, CloseReason::PeerClose);
            self.dispatch(p, now);
        }
    }

    /// The phase a protocol error of request `rk`'s response belongs to.
    fn response_phase(&self, rk: ReqKey) -> Phase {
        // Streamed heads are handed out at once, so `Req::head` alone
        // would not tell.
        if self.reqs.get(rk).is_some_and(|r| r.flow.head_seen) {
            Phase::ResponseBody
        } else {
            Phase::ResponseHead
        }
    }

    #[inline]
    fn served_by(&self, key: ConnKey, rk: ReqKey) -> ServedBy {
        let conn = self.conns.get(key);
        let req = self.reqs.get(rk);
        ServedBy {
            conn: conn.map_or(ConnId(0), |c| c.id),
            reused: req.is_some_and(|r| r.reused),
            chain: conn.and_then(|c| c.chain.clone()),
            redirected_to: req.and_then(|r| r.redirected_to()),
        }
    }

    /// A response head arrived for `rk`: when it is a redirect the request
    /// follows, remember the next hop (its body is then drained unseen).
    /// `Err` when the redirect cannot be followed.
    fn redirect_of(
        &mut self,
        rk: ReqKey,
        head: &rotary_proto::ResponseHead,
    ) -> Result<bool, Error> {
        let Some(req) = self.reqs.get_mut(rk) else {
            return Ok(false);
        };
        if req.opts.max_redirects == 0 {
            return Ok(false);
        }
        let first;
        let visited: &[(http::Method, http::Uri)] = match &req.hops {
            Some(hops) => &hops.visited,
            None => {
                first = [(req.request.method().clone(), req.request.uri().clone())];
                &first
            }
        };
        let rules = redirect::Rules {
            hops: visited.len() - 1,
            max: req.opts.max_redirects,
            to_http: req.opts.allow_https_to_http,
            sensitive: &self.config.sensitive_headers,
            visited,
        };
        let location = head.headers.get(http::header::LOCATION);
        match redirect::next_hop(&req.request, head.status, location, &rules) {
            Ok(Some(next)) => {
                log::debug!(
                    "request {} follows a {} to {}",
                    req.id.0,
                    head.status.as_u16(),
                    next.uri()
                );
                req.redirect_to(next);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(Error::Redirect(e)),
        }
    }

    /// The redirect response on `key` ended: the request goes on to its next
    /// hop (in its origin's queue) and the connection is reused or retired.
    fn follow_redirect(&mut self, key: ConnKey, rk: ReqKey, verdict: Verdict, now: Instant) {
        self.disarm(Timer::Req(rk, ReqTimer::FirstByte));
        let next = self
            .reqs
            .get(rk)
            .and_then(|r| r.hops.as_ref())
            .and_then(|h| h.next.as_ref());
        let Some(next) = next else {
            return self.exchange_done(key, verdict, now);
        };
        let pool = self.pools.of_uri(next.uri(), &self.config.policy);
        self.exchange_done(key, verdict, now);
        match pool {
            Ok(p) => match self.reqs.get_mut(rk).and_then(|r| r.follow(p)) {
                Some(Ok(())) => {
                    let pool = &mut self.pools[p];
                    pool.last_used = Some(now);
                    pool.queue.push_back(rk);
                    self.dispatch(p, now);
                }
                Some(Err(e)) => self.fail_request(rk, e),
                None => {}
            },
            Err(e) => self.fail_request(rk, e),
        }
    }

    /// One piece of request `rk`'s response arrived on `key`.
    fn on_response_event(&mut self, key: ConnKey, rk: ReqKey, ev: ResponseEvent, now: Instant) {
        match ev {
            ResponseEvent::Continue => self.upload_continue(rk),
            ResponseEvent::Head(head) => {
                self.disarm(Timer::Req(rk, ReqTimer::Head));
                if self.conns.get(key).is_some_and(|c| c.uploading)
                    || self.reqs.get(rk).is_some_and(Req::awaits_continue)
                {
                    self.upload_stop(key, rk);
                }
                if let Some(req) = self.reqs.get_mut(rk) {
                    req.flow.head_seen = true;
                    req.flow.receive_total = head
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                }
                match self.redirect_of(rk, &head) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => return self.abort_request(rk, e, CloseReason::Error, now),
                }
                let Some(req) = self.reqs.get_mut(rk) else {
                    return;
                };
                if req.opts.streaming {
                    let mut response = http::Response::new(());
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    let id = req.id;
                    let served_by = self.served_by(key, rk);
                    self.out.push_back(Event::Head {
                        id,
                        response,
                        served_by,
                    });
                } else {
                    req.head = Some(head);
                }
            }
            ResponseEvent::Data(data) => {
                let Some(req) = self.reqs.get_mut(rk) else {
                    return;
                };
                if req.redirecting() {
                    // A followed redirect's body: nobody reads it.
                    return;
                }
                req.flow.received += data.len() as u64;
                if req.opts.streaming {
                    let id = req.id;
                    let n = data.len();
                    self.out.push_back(Event::Body { id, data });
                    return self.delivered(key, rk, n);
                }
                if let Err(limit) = req.buffer_body(data) {
                    let err = Error::BodyTooLarge { limit };
                    self.abort_request(rk, err, CloseReason::Error, now);
                }
            }
            ResponseEvent::End { trailers, verdict } => {
                if self.reqs.get(rk).is_some_and(|r| r.redirecting()) {
                    return self.follow_redirect(key, rk, verdict, now);
                }
                let served_by = self.served_by(key, rk);
                let Some(mut req) = self.take_request(rk) else {
                    return;
                };
                self.stats.requests_ok += 1;
                if req.opts.streaming {
                    self.out.push_back(Event::End {
                        id: req.id,
                        trailers,
                    });
                } else {
                    let mut response = req.buffered_response();
                    if let Some(t) = trailers {
                        response.extensions_mut().insert(Trailers(t));
                    }
                    self.out.push_back(Event::Response {
                        id: req.id,
                        response,
                        served_by,
                    });
                }
                self.exchange_done(key, verdict, now);
            }
        }
    }

    /// The exchange on `key` ended well: reuse or retire the connection.
    #[inline]
    fn exchange_done(&mut self, key: ConnKey, verdict: Verdict, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        conn.req = None;
        self.disarm(Timer::Conn(key, crate::conn::ConnTimer::Drain));
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let policy = self.pools[p].policy;
        if let Some(max) = verdict.hints.max {
            conn.remaining = Some(conn.remaining.map_or(max, |r| r.min(max)));
        }
        let idle = hinted_idle(
            conn.idle_limit.or(policy.idle_timeout),
            verdict.hints.timeout,
            policy.keep_alive_margin,
        );
        conn.idle_limit = idle;
        let reason = if verdict.close.is_some() || idle == Some(Duration::ZERO) {
            Some(CloseReason::ServerClose)
        } else if conn.peer_closed() {
            Some(CloseReason::PeerClose)
        } else if let Some(r) = conn.retiring {
            Some(r)
        } else if conn.remaining == Some(0) {
            Some(CloseReason::MaxRequests)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.close_conn(key, reason);
                self.dispatch(p, now);
            }
            None => self.make_idle(key, now),
        }
    }

    /// The exchange on `key` failed: retry the request on a fresh connection
    /// when that is safe, fail it otherwise; close the connection.
    pub(super) fn exchange_failed(&mut self, key: ConnKey, err: Error, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let p = conn.pool;
        let started = conn.codec.response_started();
        let reason = match err {
            Error::PeerClosed { .. } | Error::Io { .. } => CloseReason::PeerClose,
            Error::Timeout(Deadline::DrainGrace) => CloseReason::MaxAge,
            _ => CloseReason::Error,
        };
        let rk = conn.req.take();
        self.close_conn(key, reason);
        if let Some(rk) = rk {
            let verdict = self.reqs.get(rk).map(|r| retry_verdict(r, &err, started));
            let retry = verdict == Some(Ok(()));
            let closed = matches!(err, Error::PeerClosed { .. } | Error::Io { .. });
            if let (Some(Err(why)), Some(r), true) = (verdict, self.reqs.get(rk), closed) {
                log::debug!("request {} not retried after {err}: {why}", r.id.0);
            }
            let rewound = match retry {
                true => self.reqs.get_mut(rk).map(|r| {
                    log::debug!(
                        "request {}: {err}; retrying it once on a fresh connection",
                        r.id.0
                    );
                    r.prepare_retry()
                }),
                false => None,
            };
            if let Some(Err(e)) = rewound {
                self.fail_request(rk, e);
            } else if retry {
                self.count(p, Counter::Retry);
                for t in [
                    ReqTimer::FirstByte,
                    ReqTimer::Continue,
                    ReqTimer::SendStall,
                    ReqTimer::ReceiveStall,
                    ReqTimer::Head,
                ] {
                    self.disarm(Timer::Req(rk, t));
                }
                self.pools[p].queue.push_front(rk);
            } else {
                let err = match err {
                    Error::PeerClosed { phase, .. } => Error::PeerClosed {
                        phase,
                        reused: self.reqs.get(rk).is_some_and(|r| r.reused),
                    },
                    e => e,
                };
                self.fail_request(rk, err);
            }
        }
        self.dispatch(p, now);
    }
}
