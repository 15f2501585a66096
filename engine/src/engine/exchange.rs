//! One exchange on one connection: writing the request's head, feeding
//! what arrives to the codec, and turning the codec's output into the
//! request's events, down to the effect that ends the exchange.
//!
//! Changes the exchange's own state (the connection's codec and buffers,
//! the request's attempt) and queues the rest: [`Effect::ExchangeEnded`]
//! when the response is whole or the exchange failed (the retry rules,
//! [`retry_verdict`], are applied where it ends, in [`super::apply`]),
//! [`Effect::Abort`] when the request itself must end. Bodies in pieces and
//! flow control are [`super::transfer`]'s.

use std::time::Instant;

use http::Method;
use rotary_proto::{CloseCause, ResponseEvent};

use crate::error::{Deadline, Error, Phase};
use crate::event::{CloseReason, Event};
use crate::keys::{ConnKey, ReqKey};
use crate::redact::Redacted;

use super::conn::StageName;
use super::effects::{ConnRef, Effect, Outcome, ReadMode, ReqRef};
use super::redirect;
use super::request::Req;
use super::timers::{after, AttemptTimer, Timer};
use super::Engine;

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// May request `r`, whose exchange failed with `err` (`started`: some of a
/// response had arrived), be sent again on a fresh connection? `Err` says
/// why not, for the log.
pub(super) fn retry_verdict(r: &Req, err: &Error, started: bool) -> Result<(), &'static str> {
    let stale = matches!(err, Error::PeerClosed { reused: true, .. })
        || (r.reused() && matches!(err, Error::Io { .. }));
    let drained = matches!(err, Error::Timeout(Deadline::DrainGrace));
    if !(stale || drained) {
        Err("only a reused connection's close, or a drain, is retried")
    } else if !(is_idempotent(r.request().method()) || r.opts().retry_safe) {
        Err("the method is not idempotent and the request is not marked retry-safe")
    } else if !r.replayable() {
        Err("its body cannot be sent again")
    } else if r.retried() {
        Err("it was retried once already")
    } else if started {
        Err("part of a response had arrived")
    } else {
        Ok(())
    }
}

impl Engine {
    /// Put request `rk` on idle connection `ck` and write its head (and a
    /// body sent with it); a body in pieces starts after.
    pub(super) fn assign(&mut self, ck: ConnKey, rk: ReqKey, now: Instant) {
        let (Some(conn), Some(req)) = (self.conns.get_mut(ck), self.reqs.get_mut(rk)) else {
            return;
        };
        let cref = ConnRef {
            key: ck,
            id: conn.id(),
        };
        let rref = ReqRef {
            key: rk,
            id: req.id(),
        };
        let pool = &self.pools[conn.pool()];
        let r = req.request();
        let headers = pool.request_headers(r.headers());
        let form = pool.target_form();
        let streamed = req.uploads();
        let sent = conn.begin_exchange(rk, req.paused(), self.config.limits, |codec, wbuf| match r
            .body()
            .as_bytes()
            .filter(|_| !streamed)
        {
            Some(body) => {
                let needs_body = !body.is_empty()
                    || matches!(*r.method(), Method::POST | Method::PUT | Method::PATCH);
                codec.send_request(
                    r.method(),
                    r.uri(),
                    &headers,
                    needs_body.then_some(&body[..]),
                    form,
                    wbuf,
                )
            }
            None => codec.start_streaming_request(
                r.method(),
                r.uri(),
                &headers,
                r.body().len(),
                form,
                wbuf,
            ),
        });
        let reused = match sent {
            Ok(reused) => reused,
            Err(e) => {
                // The codec refused before writing a byte: the connection is
                // untouched and goes back to its pool.
                self.effects.push(Effect::Abort {
                    req: rref,
                    error: (Error::InvalidHeader(e.to_string())).into(),
                    close: CloseReason::Error,
                });
                return self.effects.push(Effect::Ready { conn: cref });
            }
        };
        req.put_on(ck, reused);
        if reused {
            self.stats.connections_reused += 1;
        }
        if let Some(t) = req.opts().first_byte_timeout {
            self.arm(Timer::Attempt(rk, AttemptTimer::FirstByte), after(now, t));
        }
        if streamed {
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
        if let Some(t) = self.reqs.get(rk).and_then(|r| r.opts().head_timeout) {
            self.arm(Timer::Attempt(rk, AttemptTimer::Head), after(now, t));
        }
    }

    /// New plaintext (or EOF) on a ready connection. True when it ended the
    /// exchange (an effect is queued for it).
    pub(super) fn on_input(&mut self, conn: ConnRef, eof: bool, now: Instant) -> bool {
        loop {
            // The connection and its pool's header names, borrowed apart.
            let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
                return true;
            };
            if c.read_paused() {
                // The host holds the body back: what arrived waits.
                return false;
            }
            let Some(rk) = c.exchange() else {
                if !c.has_input() && !eof {
                    return false;
                }
                if c.stage() == StageName::Ready {
                    // Idle (or draining after its exchange): bytes or EOF mean stale.
                    self.effects.push(Effect::Close {
                        conn,
                        reason: CloseReason::PeerClose,
                    });
                } else {
                    // The peer ended the handshake.
                    let error = Error::PeerClosed {
                        phase: Phase::Tls,
                        reused: false,
                    };
                    self.effects.push(Effect::ConnectFailed {
                        conn,
                        error: error.into(),
                    });
                }
                return false;
            };
            let Some(req) = self.reqs.get(rk).map(|r| ReqRef {
                key: rk,
                id: r.id(),
            }) else {
                return false;
            };
            let names = self.pools[c.pool()].names_mut();
            let Some(polled) = c.poll_response(names) else {
                return false;
            };
            let started = c.response_started();
            let under_way = c.response_under_way();
            match polled {
                Ok(Some(ev)) => {
                    self.disarm(Timer::Attempt(rk, AttemptTimer::FirstByte));
                    if self.on_response_event(conn, req, ev) {
                        return true;
                    }
                }
                Ok(None) if !eof => {
                    if started {
                        self.disarm(Timer::Attempt(rk, AttemptTimer::FirstByte));
                    }
                    if under_way {
                        self.watch_receive(conn.key, rk, now);
                    }
                    return false;
                }
                Ok(None) => {
                    self.on_eof(conn, req, started);
                    return true;
                }
                Err(cause) => {
                    let phase = self.response_phase(rk);
                    let outcome = Outcome::failed(Error::Protocol { phase, cause });
                    self.effects
                        .push(Effect::ExchangeEnded { conn, req, outcome });
                    return true;
                }
            }
        }
    }

    /// The peer closed while request `req` was on `conn` and the codec has
    /// nothing more from the bytes it had: the end of a close-delimited body,
    /// or a cut exchange. Either way the connection closes after.
    fn on_eof(&mut self, conn: ConnRef, req: ReqRef, started: bool) {
        let Some(c) = self.conns.get_mut(conn.key) else {
            return;
        };
        let at_eof = c.response_eof();
        let truncatable = c.peer_ended_unclean();
        // Whatever happened, the peer is gone.
        c.retire(CloseReason::PeerClose);
        self.disarm(Timer::Attempt(req.key, AttemptTimer::FirstByte));
        let reused = self.reqs.get(req.key).is_some_and(Req::reused);
        let cut = |phase| Outcome::failed(Error::PeerClosed { phase, reused });
        let outcome = match at_eof {
            // RFC 9112 §9.8: over TLS, a close-delimited body is complete
            // only with a close_notify; a bare FIN may be an attacker's
            // truncation.
            Ok(Some(ResponseEvent::End { verdict, .. }))
                if truncatable && verdict.close == Some(CloseCause::CloseDelimited) =>
            {
                cut(Phase::ResponseBody)
            }
            Ok(Some(ev)) => {
                if !self.on_response_event(conn, req, ev) {
                    // Not the end of the response: cut.
                    self.effects.push(Effect::ExchangeEnded {
                        conn,
                        req,
                        outcome: cut(Phase::ResponseBody),
                    });
                }
                return;
            }
            Ok(None) | Err(_) if !started => cut(Phase::ResponseHead),
            Ok(None) => cut(Phase::ResponseBody),
            Err(cause) => {
                let phase = self.response_phase(req.key);
                Outcome::failed(Error::Protocol { phase, cause })
            }
        };
        self.effects
            .push(Effect::ExchangeEnded { conn, req, outcome });
    }

    /// The phase a protocol error of request `rk`'s response belongs to.
    fn response_phase(&self, rk: ReqKey) -> Phase {
        // Streamed heads are handed out at once, so a kept head alone
        // would not tell.
        if self.reqs.get(rk).is_some_and(|r| r.flow().head_seen) {
            Phase::ResponseBody
        } else {
            Phase::ResponseHead
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
        if req.opts().max_redirects == 0 {
            return Ok(false);
        }
        let visited = req.visited();
        let rules = redirect::Rules {
            hops: req.hops(),
            max: req.opts().max_redirects,
            to_http: req.opts().allow_https_to_http,
            sensitive: &self.config.sensitive_headers,
            visited: &visited,
        };
        let location = head.headers.get(http::header::LOCATION);
        match redirect::next_hop(req.request(), head.status, location, &rules) {
            Ok(Some(next)) => {
                log::debug!(
                    "request {} follows a {} to {}",
                    req.id().0,
                    head.status.as_u16(),
                    Redacted(next.uri())
                );
                req.redirect_to(next);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(Error::Redirect(e)),
        }
    }

    /// One piece of request `req`'s response arrived on `conn`. True when
    /// it ended the exchange.
    fn on_response_event(&mut self, conn: ConnRef, req: ReqRef, ev: ResponseEvent) -> bool {
        let rk = req.key;
        match ev {
            ResponseEvent::Continue => self.upload_continue(rk),
            ResponseEvent::Head(head) => {
                self.disarm(Timer::Attempt(rk, AttemptTimer::Head));
                let uploading = self.conns.get(conn.key).is_some_and(|c| c.uploading());
                if uploading || self.reqs.get(rk).is_some_and(Req::awaits_continue) {
                    self.upload_stop(conn.key, rk);
                }
                if let Some(r) = self.reqs.get_mut(rk) {
                    let flow = r.flow_mut();
                    flow.head_seen = true;
                    flow.receive_total = head
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                }
                match self.redirect_of(rk, &head) {
                    Ok(true) => return false,
                    Ok(false) => {}
                    Err(error) => {
                        self.effects.push(Effect::Abort {
                            req,
                            error: error.into(),
                            close: CloseReason::Error,
                        });
                        return true;
                    }
                }
                let Some(r) = self.reqs.get_mut(rk) else {
                    return false;
                };
                if r.opts().streaming {
                    let mut response = http::Response::new(());
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    let served_by = crate::ServedBy {
                        conn: conn.id,
                        reused: r.reused(),
                        chain: self.conns.get(conn.key).and_then(|c| c.chain().cloned()),
                        redirected_to: r.redirected_to(),
                    };
                    self.out.push_back(Event::Head {
                        id: req.id,
                        response,
                        served_by,
                    });
                } else {
                    r.keep_head(head);
                }
            }
            ResponseEvent::Data(data) => {
                let Some(r) = self.reqs.get_mut(rk) else {
                    return false;
                };
                if r.redirecting() {
                    // A followed redirect's body: nobody reads it.
                    return false;
                }
                r.flow_mut().received += data.len() as u64;
                if r.opts().streaming {
                    let n = data.len();
                    let window = r.opts().receive_window;
                    let full = r.flow_mut().delivered(n, window);
                    self.out.push_back(Event::Body { id: req.id, data });
                    if full {
                        if let Some(c) = self.conns.get_mut(conn.key) {
                            c.set_read_paused(true);
                        }
                    }
                    return false;
                }
                if let Err(limit) = r.buffer_body(data) {
                    self.effects.push(Effect::Abort {
                        req,
                        error: (Error::BodyTooLarge { limit }).into(),
                        close: CloseReason::Error,
                    });
                    return true;
                }
            }
            ResponseEvent::End { trailers, verdict } => {
                let trailers = trailers.map(Box::new);
                let outcome = Outcome::Done { verdict, trailers };
                self.effects
                    .push(Effect::ExchangeEnded { conn, req, outcome });
                return true;
            }
        }
        false
    }
}
