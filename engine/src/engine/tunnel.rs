//! Reaching an origin through a forward proxy: the TLS handshake with an
//! `https://` proxy (`Stage::ProxyHandshaking`, right after TCP connect),
//! the `CONNECT` stage (`Stage::Tunneling`, before the TLS handshake with
//! the origin) and how plain `http://` requests are addressed to a proxy.
//!
//! Owns the trust states of proxies with trust settings of their own
//! ([`ProxyTrusts`]), the proxy's session setup and its `Setup` deadline
//! ([`Timeouts::handshake`](crate::Timeouts::handshake)), the `CONNECT`
//! exchange (sent and parsed by the connection's own codec, with its
//! limits), its `Setup` deadline
//! ([`Timeouts::proxy_connect`](crate::Timeouts::proxy_connect)) and the
//! errors of [`ProxyFailure`]. On a 2xx the codec is replaced by a fresh
//! one and whatever followed the answer's head becomes the TLS session's
//! first input ([`Engine::start_tls`]). The proxy's session is the pipe
//! the rest goes through (`crate::proxy_tls`); it never resumes, so its
//! chain is always the one the proxy presents now.

use std::sync::Arc;
use std::time::Instant;

use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{HeaderMap, Method, Uri};
use rotary_proto::{Codec, ResponseEvent, TargetForm};

use rustls::pki_types::ServerName;

use crate::config::Trust;
use crate::error::{Error, ProxyFailure};
use crate::keys::{ConnKey, PoolKey};
use crate::proxy::{Proxies, Proxy};
use crate::proxy_tls::ProxyTls;
use crate::sock::Sock;
use crate::tls::TlsState;

use super::conn::IoFailure;
use super::effects::{ConnRef, Effect, ReadMode};
use super::timers::{after, ConnTimer, Timer};
use super::Engine;

/// The TLS states (anchors, configs, verifier) of the `https://` proxies
/// whose trust is their own ([`Proxy::with_trust`]); the others use the
/// engine's. Built with the engine, so a bad file fails
/// [`Engine::new`](crate::Engine::new) as the engine's own trust does.
#[derive(Default)]
pub(super) struct ProxyTrusts {
    states: Vec<(Trust, TlsState)>,
}

impl ProxyTrusts {
    /// One state per distinct trust among `proxies`.
    ///
    /// # Errors
    /// As [`TlsState::new`], naming the proxy's trust.
    pub(super) fn new(proxies: &Proxies) -> Result<ProxyTrusts, crate::tls::FileError> {
        let mut states: Vec<(Trust, TlsState)> = Vec::new();
        for proxy in proxies.each().filter(|p| p.is_tls()) {
            let Some(trust) = proxy.trust() else {
                continue;
            };
            if states.iter().any(|(t, _)| t == trust) {
                continue;
            }
            let state = TlsState::new(trust).map_err(|mut e| {
                e.reason = format!("trust for proxy {proxy}: {}", e.reason);
                e
            })?;
            states.push((trust.clone(), state));
        }
        Ok(ProxyTrusts { states })
    }

    fn state_mut(&mut self, proxy: &Proxy) -> Option<&mut TlsState> {
        let trust = proxy.trust()?;
        self.states
            .iter_mut()
            .find(|(t, _)| t == trust)
            .map(|(_, s)| s)
    }

    fn state(&self, proxy: &Proxy) -> Option<&TlsState> {
        let trust = proxy.trust()?;
        self.states.iter().find(|(t, _)| t == trust).map(|(_, s)| s)
    }

    /// Which state `proxy` uses: its index here, or `None` for the
    /// engine's own.
    pub(super) fn index_of(&self, proxy: &Proxy) -> Option<usize> {
        let trust = proxy.trust()?;
        self.states.iter().position(|(t, _)| t == trust)
    }

    /// The state at `i` (see [`ProxyTrusts::index_of`]).
    pub(super) fn get(&self, i: usize) -> Option<&TlsState> {
        self.states.get(i).map(|(_, s)| s)
    }

    /// Look at every state's credential files ([`TlsState::check`]): what
    /// each found, by index.
    pub(super) fn check(
        &mut self,
        now: Instant,
        wall: std::time::SystemTime,
    ) -> Vec<(usize, crate::credentials::Checked)> {
        self.states
            .iter_mut()
            .enumerate()
            .map(|(i, (_, s))| (i, s.check(now, wall)))
            .collect()
    }
}

impl Engine {
    /// TCP to an `https://` proxy is up: start the TLS handshake with it
    /// (always a full one) within the handshake deadline.
    pub(super) fn start_proxy_tls(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some(p) = self.conns.get(key).map(|c| c.pool()) else {
            return;
        };
        let Some(proxy) = self.pools[p].proxy().cloned() else {
            return;
        };
        let (config, changed) = match self.proxy_trusts.state_mut(&proxy) {
            Some(state) => {
                let changed = super::connect::refresh_trust(state, &mut self.out);
                (state.full(), changed)
            }
            None => {
                let changed = super::connect::refresh_trust(&mut self.tls, &mut self.out);
                (self.tls.full(), changed)
            }
        };
        if changed {
            self.check_credentials_now(now);
        }
        let session = ServerName::try_from(proxy.host().to_owned())
            .map_err(|e| Error::InvalidProxy(format!("{proxy}: not a TLS server name: {e}")))
            .and_then(|name| {
                crate::proxy_tls::session_for(config, name)
                    .map_err(|e| self.proxy_error(p, ProxyFailure::Tls(e)))
            });
        let session = match session {
            Ok(s) => s,
            Err(error) => {
                return self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: error.into(),
                })
            }
        };
        log::debug!(
            "connection {} to {}: tls handshake with proxy {proxy}",
            conn.id.0,
            self.pools[p].origin()
        );
        if let Some(c) = self.conns.get_mut(key) {
            c.start_proxy_handshake(|sock| Sock::ProxyTls(Box::new(ProxyTls::new(sock, session))));
        }
        self.arm(
            Timer::Conn(key, ConnTimer::Setup),
            after(now, self.config.timeouts.handshake),
        );
        self.drive(key, ReadMode::Skip, now);
    }

    /// After a read while the handshake with the proxy runs: done, the
    /// proxy's chain is verified and recorded and the connection goes on
    /// (`CONNECT` for an `https://` origin; ready for `http://`, whose
    /// requests go to the proxy in absolute-form); the proxy closing first
    /// fails it.
    pub(super) fn on_proxy_handshake(&mut self, conn: ConnRef, eof: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        let p = c.pool();
        let Some(outer) = c.sock_mut().and_then(Sock::proxy_tls_mut) else {
            return;
        };
        if outer.is_handshaking() {
            if eof {
                let error = self.proxy_error(p, ProxyFailure::Closed);
                self.effects.push(Effect::ConnectFailed {
                    conn,
                    error: error.into(),
                });
            }
            return;
        }
        let pool = &self.pools[p];
        let Some(proxy) = pool.proxy() else {
            return;
        };
        let state = self.proxy_trusts.state(proxy).unwrap_or(&self.tls);
        let session = outer.session();
        let presented = session.peer_certificates().unwrap_or_default();
        let chain = state.peer_chain(presented, proxy.host(), None);
        let facts = match (
            session.protocol_version(),
            session.negotiated_cipher_suite(),
        ) {
            (Some(v), Some(c)) => format!("{v:?}, {:?}", c.suite()),
            _ => "version unknown".to_owned(),
        };
        log::debug!(
            "connection {} to {}: tls with proxy {proxy} up ({facts}), its leaf {}",
            conn.id.0,
            pool.origin(),
            chain.fingerprint_hex()
        );
        outer.set_chain(chain);
        self.disarm(Timer::Conn(conn.key, ConnTimer::Setup));
        if self.pools[p].origin().is_tls() {
            self.start_tunnel(conn.key, now);
        } else {
            self.ready(conn.key, now);
        }
    }

    /// A read or write failure before the tunnel is up: the proxy's.
    pub(super) fn proxy_io_failed(&mut self, key: ConnKey, failure: IoFailure) {
        let (Some(conn), Some(p)) = (self.conn_ref(key), self.conns.get(key).map(|c| c.pool()))
        else {
            return;
        };
        let failure = match failure {
            IoFailure::Tls(reason) => ProxyFailure::Tls(reason),
            IoFailure::Io(e) => match crate::proxy_tls::tls_failure(&e) {
                Some(reason) => ProxyFailure::Tls(reason),
                None => ProxyFailure::Io(Arc::new(e)),
            },
        };
        let error = self.proxy_error(p, failure);
        self.effects.push(Effect::ConnectFailed {
            conn,
            error: error.into(),
        });
    }

    /// TCP to the proxy is up (and TLS with an `https://` one): send
    /// `CONNECT host:port` and wait for the answer within the proxy-connect
    /// deadline.
    pub(super) fn start_tunnel(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conn_ref(key) else {
            return;
        };
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let pool = &self.pools[c.pool()];
        let (Some(proxy), origin) = (pool.proxy(), pool.origin()) else {
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
        let codec = Codec::new(self.config.limits);
        let sent = authority
            .parse::<Uri>()
            .map_err(|e| e.to_string())
            .and_then(|uri| {
                c.start_tunnel(codec, |codec, wbuf| {
                    codec
                        .send_request(
                            &Method::CONNECT,
                            &uri,
                            &headers,
                            None,
                            TargetForm::Origin,
                            wbuf,
                        )
                        .map_err(|e| e.to_string())
                })
            });
        if let Err(why) = sent {
            let error = Error::InvalidUri(format!("cannot tunnel to {authority}: {why}"));
            return self.effects.push(Effect::ConnectFailed {
                conn,
                error: error.into(),
            });
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
        self.arm(
            Timer::Conn(key, ConnTimer::Setup),
            after(now, self.config.timeouts.proxy_connect),
        );
        self.drive(key, ReadMode::Skip, now);
    }

    /// Bytes (or EOF) from the proxy while the `CONNECT` is unanswered.
    pub(super) fn on_tunnel_input(&mut self, conn: ConnRef, eof: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(conn.key).filter(|c| c.id() == conn.id) else {
            return;
        };
        let p = c.pool();
        let polled = match c.poll_tunnel() {
            Some(polled) => polled,
            None => return,
        };
        let failure = match polled {
            Ok(Some(ResponseEvent::Head(head))) if c.tunnel_open() => {
                let early = c.tunnel_up();
                log::debug!(
                    "connection {} to {}: tunnel up ({})",
                    conn.id.0,
                    self.pools[p].origin(),
                    head.status
                );
                self.disarm(Timer::Conn(conn.key, ConnTimer::Setup));
                return self.start_tls(conn.key, early, now);
            }
            Ok(Some(ResponseEvent::Head(head))) => ProxyFailure::Refused {
                status: head.status,
                authenticate: head
                    .headers
                    .get_all(PROXY_AUTHENTICATE)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
                credentials_sent: self.pools[p].proxy().is_some_and(|p| p.has_credentials()),
            },
            // Nothing but a head comes before the head.
            Ok(Some(_)) => ProxyFailure::Closed,
            Ok(None) if !eof => return,
            Ok(None) => match c.tunnel_eof() {
                Err(rotary_proto::Error::IncompleteHead) | Ok(_) => ProxyFailure::Closed,
                Err(rotary_proto::Error::ClosedBeforeResponse) => ProxyFailure::Closed,
                Err(e) => ProxyFailure::BadResponse(e),
            },
            Err(e) => ProxyFailure::BadResponse(e),
        };
        let error = self.proxy_error(p, failure);
        self.effects.push(Effect::ConnectFailed {
            conn,
            error: error.into(),
        });
    }

    /// A [`ProxyFailure`] of pool `p`'s proxy as the request's error.
    pub(super) fn proxy_error(&self, p: PoolKey, failure: ProxyFailure) -> Error {
        Error::Proxy {
            proxy: self.pools[p]
                .proxy()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            failure,
        }
    }
}
