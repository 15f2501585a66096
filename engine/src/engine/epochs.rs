//! Credential epochs on live connections: the engine's look at every
//! credential file ([`Timer::Credentials`], every
//! [`Trust::check_interval`](crate::Trust::check_interval) while the
//! engine holds connections), and what a new version means for the
//! connections made before it.
//!
//! Each TLS connection holds the [`Epoch`](crate::credentials::Epoch) its configuration was chosen in
//! (`Stage::Handshaking`, then `Ready`: [`super::conn`]). When a set moves
//! on, the connections of older epochs are judged again, with local
//! computation only:
//! - **anchors or CRLs**: the stored chain is verified again
//!   ([`TlsState::judge`]): still valid, the connection (and the origin's
//!   current chain, so a job's CA bundle) takes the path it verifies along
//!   now; no longer trusted, it retires (no new request; the exchange on it
//!   finishes); revoked, it closes at once, failing its request with
//!   [`Error::Revoked`] (or retires, by [`Policy::on_revocation`](crate::Policy::on_revocation)).
//!   The chain of an `https://` proxy under the connection is judged the
//!   same way when its trust changes.
//! - **client identity**: make-before-break. The pool opens one
//!   replacement (a full handshake, presenting the new identity); once a
//!   connection with the new identity is ready, the older ones retire.
//! - **identity expiring**: at its retirement time the connections that
//!   presented it retire; its warning time raises one
//!   [`Event::IdentityExpiring`].
//!
//! A connection whose handshake ran across a change is judged as it becomes
//! ready. Every connection whose credentials stop holding raises one
//! [`Event::CredentialsInvalid`] (a revocation may follow a gentler reason:
//! it closes the connection at once) and counts in
//! [`Stats::credentials_invalid`](crate::Stats::credentials_invalid).
//! Closing is [`super::apply`]'s: this file queues effects.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::OnRevocation;
use crate::credentials::{Checked, IdentityNotice};
use crate::crl::RevokedCertificate;
use crate::error::{Error, Phase};
use crate::event::{CloseReason, CredentialReason, Event};
use crate::keys::{ConnKey, PoolKey};
use crate::sock::Sock;
use crate::tls::{Judgement, TlsState};

use super::conn::{Purpose, StageName};
use super::effects::{ConnRef, Effect, ReqRef};
use super::timers::{after, Timer};
use super::Engine;

/// Why a connection's credentials stopped holding, with what the host is
/// told.
struct Invalid {
    reason: CredentialReason,
    detail: String,
    /// The certificate, for a revocation.
    revoked: Option<RevokedCertificate>,
}

impl Engine {
    /// A connection is being opened: the credential check runs while the
    /// engine holds connections.
    pub(super) fn watch_credentials(&mut self, now: Instant) {
        if self.credential_timer.is_none() {
            let at = after(now, self.tls.check_interval());
            self.arm(Timer::Credentials, at);
        }
    }

    /// The look before a new connection loaded a new version: the live
    /// connections are judged at once, not at the next interval.
    pub(super) fn check_credentials_now(&mut self, now: Instant) {
        self.arm(Timer::Credentials, now);
    }

    /// The engine holds no connection any more: nothing to watch for.
    pub(super) fn unwatch_credentials(&mut self) {
        self.disarm(Timer::Credentials);
    }

    /// The check timer fired: look at every credential file, report what
    /// could not be used, judge the live connections of older epochs, and
    /// look again after the interval while connections remain.
    pub(super) fn check_credentials(&mut self, now: Instant) {
        let wall = SystemTime::now();
        let checked = self.tls.check(now, wall);

        self.report(&checked);
        let mut proxies = Vec::new();
        for (i, c) in self.proxy_trusts.check(now, wall) {
            self.report(&c);
            if c.changed.anchors || c.changed.crls {
                proxies.push(i);
            }
        }
        let engine_trust = checked.changed.anchors || checked.changed.crls;
        if engine_trust || !proxies.is_empty() {
            let ready: Vec<ConnKey> = self
                .conns
                .iter()
                .filter(|(_, c)| c.stage() == StageName::Ready && !c.is_chain_only())
                .map(|(k, _)| k)
                .collect();
            for key in ready {
                self.judge_origin(key);
                self.judge_proxy(key, engine_trust, &proxies);
            }
        }
        if checked.changed.identity {
            let pools: Vec<PoolKey> = self
                .conns
                .iter()
                .filter(|(_, c)| c.epoch().is_some())
                .map(|(_, c)| c.pool())
                .collect();
            let mut seen = Vec::new();
            for p in pools {
                if !seen.contains(&p) {
                    seen.push(p);
                    self.converge_identity(p);
                }
            }
        }
        if let Some(notice) = &checked.identity_retiring {
            self.retire_identity(notice, wall);
        }
        if self.conns.len() > 0 {
            self.watch_credentials(now);
        }
    }

    /// What a check found that the host must hear of: each file that could
    /// not be used, and the identity's warning.
    fn report(&mut self, checked: &Checked) {
        for e in &checked.errors {
            log::warn!(
                "keeping the previous credentials: {}: {}",
                e.path.display(),
                e.reason
            );
            self.out.push_back(Event::TrustError {
                path: e.path.clone(),
                reason: e.reason.clone(),
            });
        }
        if let Some(n) = &checked.identity_expiring {
            log::warn!(
                "client identity {} (serial {}, {}) nears its notAfter and no renewal was loaded",
                n.subject,
                n.serial,
                n.path.display()
            );
            self.stats.identity_expiry_warnings += 1;
            self.out.push_back(Event::IdentityExpiring {
                path: n.path.clone(),
                subject: n.subject.clone(),
                serial: n.serial.clone(),
                not_after: n.not_after,
            });
        }
    }

    /// A connection opened for requests finished its handshake: the
    /// credentials that changed while it ran judge it now.
    pub(super) fn judge_joining(&mut self, key: ConnKey) {
        self.judge_origin(key);
        if let Some(p) = self.conns.get(key).map(|c| c.pool()) {
            self.converge_identity(p);
        }
    }

    /// Judge the origin's chain of ready connection `key` again when the
    /// anchors or CRLs moved on since its epoch.
    fn judge_origin(&mut self, key: ConnKey) {
        let current = self.tls.epoch();
        let Some(c) = self.conns.get(key) else {
            return;
        };
        let (Some(epoch), Some(chain)) = (c.epoch(), c.chain().cloned()) else {
            return;
        };
        if epoch.anchors == current.anchors && epoch.crls == current.crls {
            return;
        }
        let p = c.pool();
        let host = self.pools[p].origin().host();
        match self.tls.judge(&chain, host) {
            Judgement::Valid(now_path) => {
                if !Arc::ptr_eq(&now_path, &chain) {
                    log::info!(
                        "connection {} to {}: its chain verifies along another path now",
                        c.id().0,
                        self.pools[p].origin()
                    );
                    self.pools[p].rechain(&chain, &now_path);
                }
                if let Some(c) = self.conns.get_mut(key) {
                    c.rejudged(current, now_path);
                }
            }
            Judgement::Revoked(cert) => self.invalid(key, revoked(cert, "")),
            Judgement::Untrusted(e) => self.invalid(key, untrusted(&e, "")),
        }
    }

    /// Judge the chain of the `https://` proxy under ready connection `key`
    /// again when that proxy's trust changed: its own (`proxies` lists the
    /// states that moved) or the engine's (`engine_trust`).
    fn judge_proxy(&mut self, key: ConnKey, engine_trust: bool, proxies: &[usize]) {
        let Some(c) = self.conns.get(key).filter(|c| c.invalid().is_none()) else {
            return;
        };
        let Some(chain) = c.sock().and_then(Sock::proxy_tls).and_then(|o| o.chain()) else {
            return;
        };
        let chain = chain.clone();
        let Some(proxy) = self.pools[c.pool()].proxy().cloned() else {
            return;
        };
        let state: &TlsState = match self.proxy_trusts.index_of(&proxy) {
            Some(i) if proxies.contains(&i) => match self.proxy_trusts.get(i) {
                Some(s) => s,
                None => return,
            },
            None if engine_trust => &self.tls,
            _ => return,
        };
        let whose = format!("proxy {proxy}: ");
        match state.judge(&chain, proxy.host()) {
            Judgement::Valid(now_path) => {
                if let Some(outer) = self
                    .conns
                    .get_mut(key)
                    .and_then(|c| c.sock_mut())
                    .and_then(Sock::proxy_tls_mut)
                {
                    outer.set_chain(now_path);
                }
            }
            Judgement::Revoked(cert) => self.invalid(key, revoked(cert, &whose)),
            Judgement::Untrusted(e) => self.invalid(key, untrusted(&e, &whose)),
        }
    }

    /// Make-before-break for a new client identity in pool `p`: once one of
    /// its connections presenting the current identity is ready, those that
    /// presented an older one retire; until then one replacement is opened
    /// (within `max_connections`; without room the older ones retire now,
    /// and the pool opens new ones for the requests that wait).
    fn converge_identity(&mut self, p: PoolKey) {
        let current = self.tls.epoch().identity;
        let Some(pool) = self.pools.get(p).filter(|pool| pool.origin().is_tls()) else {
            return;
        };
        let mut old = Vec::new();
        let (mut new_ready, mut new_coming) = (false, false);
        for &k in pool.conns() {
            let Some(c) = self.conns.get(k) else {
                continue;
            };
            if c.is_chain_only() || c.retiring().is_some() {
                continue;
            }
            let ready = c.stage() == StageName::Ready;
            match c.epoch() {
                Some(e) if e.identity < current => {
                    if ready {
                        old.push(k);
                    }
                }
                Some(_) if ready => new_ready = true,
                // Before its handshake, a connection takes the current one.
                _ => new_coming |= !ready,
            }
        }
        if old.is_empty() {
            return;
        }
        let subject = match self.tls.identity() {
            Some((subject, serial)) => format!("{subject} (serial {serial})"),
            None => "none".to_owned(),
        };
        let detail = format!("a newer client identity is in use: {subject}");
        let room = pool.conns().len() < pool.policy().max_connections.max(1);
        if !new_ready && new_coming {
            return;
        }
        if !new_ready && room && self.has_token_room() {
            log::info!(
                "client identity changed: opening a connection to {} presenting {subject}; \
                 the older ones retire once it is ready",
                pool.origin()
            );
            self.effects.push(Effect::Open {
                pool: p,
                purpose: Purpose::Replacement,
            });
            return;
        }
        for key in old {
            let why = Invalid {
                reason: CredentialReason::IdentityRotated,
                detail: detail.clone(),
                revoked: None,
            };
            self.invalid(key, why);
        }
    }

    /// The identity of `notice` reached its retirement time: the
    /// connections that presented it (or an older one) retire.
    fn retire_identity(&mut self, notice: &IdentityNotice, wall: SystemTime) {
        let left = notice.not_after.duration_since(wall).map_or_else(
            |_| "expired".to_owned(),
            |d| format!("expires in {} s", d.as_secs()),
        );
        let detail = format!(
            "client identity {} (serial {}) {left}",
            notice.subject, notice.serial
        );
        log::warn!("{detail}: its connections retire");
        let presented: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.stage() == StageName::Ready && !c.is_chain_only())
            .filter(|(_, c)| c.epoch().is_some_and(|e| e.identity <= notice.epoch))
            .map(|(k, _)| k)
            .collect();
        for key in presented {
            let why = Invalid {
                reason: CredentialReason::IdentityExpiring,
                detail: detail.clone(),
                revoked: None,
            };
            self.invalid(key, why);
        }
    }

    /// Ready connection `key`'s credentials no longer hold: the host hears
    /// of it once, and it retires, or for a revocation (by policy) closes
    /// at once, failing the request on it with [`Error::Revoked`].
    fn invalid(&mut self, key: ConnKey, why: Invalid) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.invalidate(why.reason) {
            return;
        }
        let conn = ConnRef { key, id: c.id() };
        let p = c.pool();
        let pool = &self.pools[p];
        let close_now = why.revoked.is_some()
            && pool.policy().on_revocation == OnRevocation::Close
            && c.exchange().is_some();
        log::warn!(
            "connection {} to {}: credentials no longer hold ({}): {}",
            conn.id.0,
            pool.origin(),
            why.reason.name(),
            why.detail
        );
        self.stats.credentials_invalid_by_reason[why.reason.index()] += 1;
        self.out.push_back(Event::CredentialsInvalid {
            conn: conn.id,
            origin: pool.origin().clone(),
            reason: why.reason,
            detail: why.detail,
        });
        let idle = c.is_idle();
        let phase = match c.codec_state() {
            rotary_proto::State::Body => Phase::ResponseBody,
            rotary_proto::State::Sending => Phase::Write,
            _ => Phase::ResponseHead,
        };
        let exchange = c.exchange();
        // Whatever happens next, it takes no new request.
        c.retire(CloseReason::Credentials);
        match (close_now, exchange, why.revoked) {
            (true, Some(rk), Some(certificate)) => {
                if let Some(req) = self.reqs.get(rk).map(|r| ReqRef {
                    key: rk,
                    id: r.id(),
                }) {
                    let error = Error::Revoked { certificate, phase };
                    self.effects.push(Effect::Abort {
                        req,
                        error: error.into(),
                        close: CloseReason::Credentials,
                    });
                }
            }
            _ if idle => self.effects.push(Effect::Close {
                conn,
                reason: CloseReason::Credentials,
            }),
            // Busy: it closes when its exchange ends; the requests that
            // wait may need another connection.
            _ => self.effects.push(Effect::Dispatch(p)),
        }
    }
}

/// A revocation found by a judgement, of the proxy's chain when `whose`
/// says so.
fn revoked(cert: RevokedCertificate, whose: &str) -> Invalid {
    Invalid {
        reason: CredentialReason::Revoked,
        detail: format!("{whose}{cert}"),
        revoked: Some(cert),
    }
}

/// A chain that verifies no more under the current anchors.
fn untrusted(e: &rustls::Error, whose: &str) -> Invalid {
    Invalid {
        reason: CredentialReason::AnchorRemoved,
        detail: format!("{whose}the chain no longer verifies: {e}"),
        revoked: None,
    }
}
