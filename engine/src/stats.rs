//! Counters and gauges: what the engine did and what it holds now.
//!
//! Owns the counters; the engine bumps them (one call for engine-wide and
//! per-origin) and fills the gauges when the host asks for a snapshot.

use std::fmt::Write as _;

use crate::{CloseReason, CredentialReason, Origin, Phase};

/// A lifetime counter kept both engine-wide ([`Stats`]) and per origin
/// ([`OriginStats`]); the engine bumps both with one call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Opened,
    Closed(CloseReason),
    HandshakeFull,
    HandshakeResumed,
    ChainChange,
    Probe,
    FreshHandshake,
    Retry,
    DrainHitGrace,
}

/// `counter(c)`: the field that counts `c`, on both stats types (they name
/// their shared counters alike).
macro_rules! counters {
    ($($t:ty),*) => {$(
        impl $t {
            pub(crate) fn counter(&mut self, c: Counter) -> &mut u64 {
                match c {
                    Counter::Opened => &mut self.connections_opened,
                    Counter::Closed(reason) => &mut self.closed_by_reason[reason.index()],
                    Counter::HandshakeFull => &mut self.handshakes_full,
                    Counter::HandshakeResumed => &mut self.handshakes_resumed,
                    Counter::ChainChange => &mut self.chain_changes,
                    Counter::Probe => &mut self.probes,
                    Counter::FreshHandshake => &mut self.fresh_chain_handshakes,
                    Counter::Retry => &mut self.retries,
                    Counter::DrainHitGrace => &mut self.drains_hit_grace,
                }
            }
        }
    )*};
}

counters!(Stats, OriginStats);

/// Lifetime counters of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OriginStats {
    /// The origin.
    pub origin: Origin,
    /// Connections that finished their handshake.
    pub connections_opened: u64,
    /// Connections closed, indexed by [`CloseReason::ALL`] order.
    pub closed_by_reason: [u64; CloseReason::ALL.len()],
    /// Full TLS handshakes.
    pub handshakes_full: u64,
    /// Resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// Chain changes seen.
    pub chain_changes: u64,
    /// Chain probes started.
    pub probes: u64,
    /// Fresh-chain handshakes finished ([`Engine::fresh_chain`](crate::Engine::fresh_chain)).
    pub fresh_chain_handshakes: u64,
    /// Requests retried on a fresh connection.
    pub retries: u64,
    /// Drains whose `drain_grace` passed before the exchange finished.
    pub drains_hit_grace: u64,
}

impl OriginStats {
    /// Add `other`'s counters (another route's pool of the same origin).
    pub(crate) fn absorb(&mut self, other: &OriginStats) {
        self.connections_opened += other.connections_opened;
        for (mine, theirs) in self.closed_by_reason.iter_mut().zip(other.closed_by_reason) {
            *mine += theirs;
        }
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        self.chain_changes += other.chain_changes;
        self.probes += other.probes;
        self.retries += other.retries;
        self.drains_hit_grace += other.drains_hit_grace;
    }

    pub(crate) fn new(origin: Origin) -> OriginStats {
        OriginStats {
            origin,
            connections_opened: 0,
            closed_by_reason: [0; CloseReason::ALL.len()],
            handshakes_full: 0,
            handshakes_resumed: 0,
            chain_changes: 0,
            probes: 0,
            fresh_chain_handshakes: 0,
            retries: 0,
            drains_hit_grace: 0,
        }
    }

    /// Connections of this origin closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed_by_reason[reason.index()]
    }
}

/// A snapshot from [`Engine::stats`](crate::Engine::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections that finished their handshake.
    pub connections_opened: u64,
    /// Connection attempts started (including failed ones).
    pub connections_attempted: u64,
    /// Requests put on a connection that had carried an earlier exchange.
    pub connections_reused: u64,
    /// Connections closed, indexed by [`CloseReason::ALL`] order; see [`Stats::closed`].
    pub closed_by_reason: [u64; CloseReason::ALL.len()],
    /// Requests that ended with a response.
    pub requests_ok: u64,
    /// Failed requests, indexed by [`Phase::ALL`] order; see [`Stats::failed`].
    pub failed_by_phase: [u64; Phase::ALL.len()],
    /// Full TLS handshakes.
    pub handshakes_full: u64,
    /// Resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// Requests sent again after a stale reused connection failed.
    pub retries: u64,
    /// Chain changes seen.
    pub chain_changes: u64,
    /// Chain probes started.
    pub probes: u64,
    /// Fresh-chain handshakes finished ([`Engine::fresh_chain`](crate::Engine::fresh_chain)).
    pub fresh_chain_handshakes: u64,
    /// Drains whose `drain_grace` passed before the exchange finished.
    pub drains_hit_grace: u64,
    /// Connections whose credentials stopped holding, indexed by
    /// [`CredentialReason::ALL`] order; see [`Stats::credentials_invalid`].
    pub credentials_invalid_by_reason: [u64; CredentialReason::ALL.len()],
    /// [`Event::IdentityExpiring`](crate::Event::IdentityExpiring) warnings raised.
    pub identity_expiry_warnings: u64,
    /// Gauge: open connections (connecting, ready or draining).
    pub connections: usize,
    /// Gauge: timers on the wheel.
    pub timers: usize,
    /// Gauge: requests waiting for a connection.
    pub queued: usize,
    /// Gauge: requests on a connection.
    pub in_flight: usize,
    /// Gauge: [`Engine::fresh_chain`](crate::Engine::fresh_chain) calls
    /// waiting for their handshake.
    pub fresh_chains_pending: usize,
    /// Gauge: connection pools kept, one per origin and route in use (with
    /// a connection, a waiting request or a waiting fresh-chain call). A
    /// pool out of use is dropped at the end of the loop's turn, with its
    /// entry in `origins`.
    pub pools: usize,
    /// The lifetime counters of each origin in use (see `pools`) and of the
    /// 64 origins whose pools were dropped last (an origin's next pool
    /// carries its counters on).
    pub origins: Vec<OriginStats>,
}

impl Stats {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed_by_reason[reason.index()]
    }

    /// Connections whose credentials stopped holding for `reason`.
    pub fn credentials_invalid(&self, reason: CredentialReason) -> u64 {
        self.credentials_invalid_by_reason[reason.index()]
    }

    /// Requests that failed in `phase`.
    pub fn failed(&self, phase: Phase) -> u64 {
        self.failed_by_phase[phase.index()]
    }

    /// All failed requests.
    pub fn requests_failed(&self) -> u64 {
        self.failed_by_phase.iter().sum()
    }

    /// True when the engine holds no connection, timer, request, pending
    /// fresh-chain call or pool.
    pub fn is_idle(&self) -> bool {
        self.connections == 0
            && self.timers == 0
            && self.queued == 0
            && self.in_flight == 0
            && self.fresh_chains_pending == 0
            && self.pools == 0
    }

    /// Render in the Prometheus text exposition format, names prefixed `rotary_`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, rows: &[(Option<(&str, &str)>, u64)]| {
            let _ = writeln!(out, "# HELP rotary_{name} {help}");
            let _ = writeln!(out, "# TYPE rotary_{name} counter");
            for (label, v) in rows {
                match label {
                    Some((k, l)) => {
                        let _ = writeln!(out, "rotary_{name}{{{k}=\"{l}\"}} {v}");
                    }
                    None => {
                        let _ = writeln!(out, "rotary_{name} {v}");
                    }
                }
            }
        };
        counter(
            "connections_opened_total",
            "Connections that finished their handshake.",
            &[(None, self.connections_opened)],
        );
        counter(
            "connections_reused_total",
            "Requests sent on a reused connection.",
            &[(None, self.connections_reused)],
        );
        let closed: Vec<_> = CloseReason::ALL
            .iter()
            .map(|r| (Some(("reason", r.name())), self.closed(*r)))
            .collect();
        counter(
            "connections_closed_total",
            "Connections closed, by reason.",
            &closed,
        );
        counter(
            "requests_ok_total",
            "Requests that ended with a response.",
            &[(None, self.requests_ok)],
        );
        let failed: Vec<_> = Phase::ALL
            .iter()
            .map(|p| (Some(("phase", p.name())), self.failed(*p)))
            .collect();
        counter(
            "requests_failed_total",
            "Failed requests, by phase.",
            &failed,
        );
        counter(
            "handshakes_total",
            "TLS handshakes, by kind.",
            &[
                (Some(("kind", "full")), self.handshakes_full),
                (Some(("kind", "resumed")), self.handshakes_resumed),
            ],
        );
        counter(
            "retries_total",
            "Requests retried after a stale connection.",
            &[(None, self.retries)],
        );
        counter(
            "chain_changes_total",
            "Peer chain changes seen.",
            &[(None, self.chain_changes)],
        );
        counter(
            "probes_total",
            "Chain probes started.",
            &[(None, self.probes)],
        );
        counter(
            "fresh_chain_handshakes_total",
            "Fresh-chain handshakes finished.",
            &[(None, self.fresh_chain_handshakes)],
        );
        counter(
            "drains_hit_grace_total",
            "Drains that ran out of drain grace.",
            &[(None, self.drains_hit_grace)],
        );
        let invalid: Vec<_> = CredentialReason::ALL
            .iter()
            .map(|r| (Some(("reason", r.name())), self.credentials_invalid(*r)))
            .collect();
        counter(
            "credentials_invalid_total",
            "Connections whose credentials stopped holding, by reason.",
            &invalid,
        );
        counter(
            "identity_expiry_warnings_total",
            "Warnings that the client identity nears its notAfter with no renewal loaded.",
            &[(None, self.identity_expiry_warnings)],
        );
        for (name, help, pick) in ORIGIN_COUNTERS {
            let _ = writeln!(out, "# HELP rotary_origin_{name} {help}");
            let _ = writeln!(out, "# TYPE rotary_origin_{name} counter");
            for o in &self.origins {
                let origin = escape(&o.origin.to_string());
                let _ = writeln!(
                    out,
                    "rotary_origin_{name}{{origin=\"{origin}\"}} {}",
                    pick(o)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP rotary_origin_retirements_total Connections closed, by origin and reason."
        );
        let _ = writeln!(out, "# TYPE rotary_origin_retirements_total counter");
        for o in &self.origins {
            let origin = escape(&o.origin.to_string());
            for r in CloseReason::ALL {
                let _ = writeln!(
                    out,
                    "rotary_origin_retirements_total{{origin=\"{origin}\",reason=\"{}\"}} {}",
                    r.name(),
                    o.closed(r)
                );
            }
        }
        for (name, help, v) in [
            ("connections", "Open connections.", self.connections),
            ("timers", "Timers on the wheel.", self.timers),
            (
                "queued_requests",
                "Requests waiting for a connection.",
                self.queued,
            ),
            (
                "in_flight_requests",
                "Requests on a connection.",
                self.in_flight,
            ),
            (
                "fresh_chains_pending",
                "Fresh-chain calls waiting for their handshake.",
                self.fresh_chains_pending,
            ),
            (
                "pools",
                "Connection pools kept (origins and routes in use).",
                self.pools,
            ),
        ] {
            let _ = writeln!(out, "# HELP rotary_{name} {help}");
            let _ = writeln!(out, "# TYPE rotary_{name} gauge");
            let _ = writeln!(out, "rotary_{name} {v}");
        }
        out
    }
}

type Pick = fn(&OriginStats) -> u64;

const ORIGIN_COUNTERS: [(&str, &str, Pick); 7] = [
    (
        "connections_opened_total",
        "Connections opened, by origin.",
        |o| o.connections_opened,
    ),
    (
        "handshakes_full_total",
        "Full TLS handshakes, by origin.",
        |o| o.handshakes_full,
    ),
    (
        "handshakes_resumed_total",
        "Resumed TLS handshakes, by origin.",
        |o| o.handshakes_resumed,
    ),
    (
        "chain_changes_total",
        "Peer chain changes, by origin.",
        |o| o.chain_changes,
    ),
    ("probes_total", "Chain probes, by origin.", |o| o.probes),
    (
        "retries_total",
        "Requests retried on a fresh connection, by origin.",
        |o| o.retries,
    ),
    (
        "drains_hit_grace_total",
        "Drains that ran out of grace, by origin.",
        |o| o.drains_hit_grace,
    ),
];

/// Escape a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_counters_are_rendered_by_reason() {
        let mut stats = Stats::default();
        stats.credentials_invalid_by_reason[CredentialReason::Revoked.index()] = 2;
        stats.identity_expiry_warnings = 1;
        assert_eq!(stats.credentials_invalid(CredentialReason::Revoked), 2);
        let text = stats.to_prometheus();
        for line in [
            "rotary_credentials_invalid_total{reason=\"identity_rotated\"} 0",
            "rotary_credentials_invalid_total{reason=\"identity_expiring\"} 0",
            "rotary_credentials_invalid_total{reason=\"anchor_removed\"} 0",
            "rotary_credentials_invalid_total{reason=\"revoked\"} 2",
            "rotary_identity_expiry_warnings_total 1",
            "rotary_connections_closed_total{reason=\"credentials\"} 0",
            "# TYPE rotary_credentials_invalid_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
