//! Reaching an origin through a forward proxy: the `CONNECT` stage
//! (`Stage::Tunneling`, between TCP connect and the TLS handshake) and how
//! plain `http://` requests are addressed to a proxy.
//!
//! Owns the `CONNECT` exchange (sent and parsed by the connection's own
//! codec, with its limits), its `Setup` deadline
//! ([`Timeouts::proxy_connect`](crate::Timeouts::proxy_connect)) and the
//! errors of [`ProxyFailure`]. On a 2xx the codec is replaced by a fresh
//! one and whatever followed the answer's head becomes the TLS session's
//! first input ([`Engine::start_tls`]).

use std::borrow::Cow;
use std::time::Instant;

use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{HeaderMap, Method, Uri};
use rotary_proto::{Codec, ResponseEvent, State, TargetForm};

use crate::conn::ConnTimer;
use crate::keys::ConnKey;
use crate::{ConnId, Error, ProxyFailure};

use super::io::ReadMode;
use super::pool::{Pool, PoolKey};
use super::timers::{after, Timer};
use super::Engine;

/// How a request is written on a connection of `pool`: absolute-form to a
/// proxy for `http://` (RFC 9112 §3.2.2), origin-form otherwise (inside a
/// tunnel the origin sees an ordinary request).
pub(super) fn target_form(pool: &Pool) -> TargetForm {
    if pool.proxy.is_some() && !pool.origin.is_tls() {
        TargetForm::Absolute
    } else {
        TargetForm::Origin
    }
}

/// The headers of a request on a connection of `pool`: a plain `http://`
/// request through a proxy with credentials carries `Proxy-Authorization`
/// (its own, when the caller set one); every other request goes as it is.
pub(super) fn request_headers<'a>(pool: &Pool, headers: &'a HeaderMap) -> Cow<'a, HeaderMap> {
    let auth = pool
        .proxy
        .as_ref()
        .filter(|_| !pool.origin.is_tls() && !headers.contains_key(PROXY_AUTHORIZATION))
        .and_then(|p| p.authorization());
    match auth {
        None => Cow::Borrowed(headers),
        Some(auth) => {
            let mut with = headers.clone();
            with.insert(PROXY_AUTHORIZATION, auth);
            Cow::Owned(with)
        }
    }
}

impl Engine {
    /// TCP to the proxy is up: send `CONNECT host:port` and wait for the
    /// answer within the proxy-connect deadline.
    pub(super) fn start_tunnel(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let pool = &self.pools[conn.pool];
        let (Some(proxy), origin) = (pool.proxy.as_ref(), &pool.origin) else {
            return;
        };
        let authority = if origin.host().contains(':') {
            format!("[{}]:{}", origin.host(), origin.port())
        } else {
            format!("{}:{}", origin.host(), origin.port())
        };
        let mut headers = HeaderMap::new();
        if let Some(auth) = proxy.authorization() {
            headers.insert(PROXY_AUTHORIZATION, auth);
        }
        let sent = authority
            .parse::<Uri>()
            .map_err(|e| e.to_string())
            .and_then(|uri| {
                conn.codec
                    .send_request(
                        &Method::CONNECT,
                        &uri,
                        &headers,
                        None,
                        TargetForm::Origin,
                        &mut conn.wbuf,
                    )
                    .map_err(|e| e.to_string())
            });
        if let Err(why) = sent {
            let err = Error::InvalidRequest(format!("cannot tunnel to {authority}: {why}"));
            return self.connect_failed(key, err, now);
        }
        log::debug!(
            "connection {} to {origin}: CONNECT {authority} through {proxy}{}",
            conn.id.0,
            if proxy.has_credentials() {
                " (with credentials)"
            } else {
                ""
            }
        );
        conn.start_tunnel();
        self.arm(
            Timer::Conn(key, ConnTimer::Setup),
            after(now, self.config.timeouts.proxy_connect),
        );
        self.drive(key, ReadMode::Skip, now);
    }

    /// Bytes (or EOF) from the proxy while the `CONNECT` is unanswered.
    pub(super) fn on_tunnel_input(&mut self, key: ConnKey, id: ConnId, eof: bool, now: Instant) {
        let limits = self.config.limits;
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
            return;
        };
        let p = conn.pool;
        let failure = match conn.codec.poll_response(&mut conn.rbuf) {
            Ok(Some(ResponseEvent::Head(head))) if conn.codec.state() == State::Tunnel => {
                let early = conn.rbuf.split();
                conn.codec = Codec::new(limits);
                log::debug!(
                    "connection {} to {}: tunnel up ({})",
                    conn.id.0,
                    self.pools[p].origin,
                    head.status
                );
                self.disarm(Timer::Conn(key, ConnTimer::Setup));
                return self.start_tls(key, early, now);
            }
            Ok(Some(ResponseEvent::Head(head))) => ProxyFailure::Refused {
                status: head.status,
                authenticate: head
                    .headers
                    .get_all(PROXY_AUTHENTICATE)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
                credentials_sent: self.pools[p]
                    .proxy
                    .as_ref()
                    .is_some_and(|p| p.has_credentials()),
            },
            // Nothing but a head comes before the head.
            Ok(Some(_)) => ProxyFailure::Closed,
            Ok(None) if !eof => return,
            Ok(None) => match conn.codec.handle_eof() {
                Err(rotary_proto::Error::IncompleteHead) | Ok(_) => ProxyFailure::Closed,
                Err(rotary_proto::Error::ClosedBeforeResponse) => ProxyFailure::Closed,
                Err(e) => ProxyFailure::BadResponse(e),
            },
            Err(e) => ProxyFailure::BadResponse(e),
        };
        let err = self.proxy_error(p, failure);
        self.connect_failed(key, err, now);
    }

    /// A [`ProxyFailure`] of pool `p`'s proxy as the request's error.
    pub(super) fn proxy_error(&self, p: PoolKey, failure: ProxyFailure) -> Error {
        Error::Proxy {
            proxy: self.pools[p]
                .proxy
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            failure,
        }
    }
}
