//! Engine configuration: timeouts, connection-lifetime policy, trust and limits.
//!
//! Plain data with documented defaults and checks of their own (`check`, run by
//! the engine's constructor). Knows the types it names (proxies, the
//! resolver, the network seam) and nothing of the engine that reads it.

mod request;
mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::Resolver;
use crate::proxy::Proxies;

pub use request::RequestOptions;
pub use trust::{ClientIdentity, CrlExpiry, IdentityExpiry, Trust};

/// Connect-phase deadlines, each a timer on the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Name resolution of one new connection. Default 10 s.
    pub dns: Duration,
    /// TCP connect, per address (the next address gets a fresh deadline). Default 10 s.
    pub connect: Duration,
    /// TLS handshake. Default 10 s.
    pub handshake: Duration,
    /// Happy Eyeballs (RFC 8305): how long a connect attempt runs alone
    /// before the next address's attempt starts beside it (an attempt that
    /// fails starts the next at once). The first to connect wins; the others
    /// close. Default 250 ms, the RFC's recommendation; `Duration::MAX`
    /// tries the addresses strictly one after another.
    pub happy_eyeballs_delay: Duration,
    /// The proxy's answer to `CONNECT`, from the moment TCP to the proxy is
    /// up (for an `https://` proxy: from the end of the TLS handshake with
    /// it, which [`Timeouts::handshake`] bounds,
    /// [`Deadline::ProxyHandshake`](crate::Deadline::ProxyHandshake)).
    /// Default 10 s.
    pub proxy_connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            dns: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            happy_eyeballs_delay: Duration::from_millis(250),
            proxy_connect: Duration::from_secs(10),
        }
    }
}

/// Whether a new connection may resume an earlier TLS session.
///
/// A resumed TLS 1.3 session skips the server's Certificate message, and rustls
/// then reports the chain of the *original* session: exactly the stale chain
/// rotary exists to drop. Hence the default is [`Resumption::Never`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resumption {
    /// Every connection does a full handshake (default).
    #[default]
    Never,
    /// Resume only while the session's original full handshake is younger than
    /// the origin's `max_age` (without a `max_age`, always: today's ordinary
    /// clients). Connections replacing one retired for age, chain change or
    /// certificate expiry still do a full handshake.
    WithinMaxAge,
}

/// What to do with older connections when a full handshake shows a new chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnChainChange {
    /// Drain every older connection to the origin, so all converge on the new
    /// chain (default).
    #[default]
    RetireOld,
    /// Report [`Event::ChainChanged`](crate::Event::ChainChanged) only.
    Keep,
}

/// What a live connection does when a new revocation list
/// ([`Trust::crl_files`]) revokes a certificate of its verified path (the
/// origin's, or an `https://` proxy's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnRevocation {
    /// Close it at once, failing the request on it with
    /// [`Error::Revoked`](crate::Error::Revoked) (default): a revoked key
    /// may be in an attacker's hands, and the exchange may be theirs.
    /// Requests waiting for a connection get a new one, which verifies the
    /// server afresh.
    #[default]
    Close,
    /// Retire it gently: it takes no new request and closes when the
    /// exchange on it ends (an idle one closes at once), as for a removed
    /// trust anchor.
    Retire,
}

/// Connection-lifetime policy, set for the engine and overridable per origin
/// with [`Engine::set_origin_policy`](crate::Engine::set_origin_policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// Maximum open connections per origin, counting those connecting and
    /// draining. Default 8. Requests beyond it wait in a FIFO queue.
    pub max_connections: usize,
    /// Close a connection unused for this long. Default 90 s; `None` disables.
    /// A server's `Keep-Alive: timeout=N` lowers it to `N - keep_alive_margin`.
    pub idle_timeout: Option<Duration>,
    /// A connection takes no new request once this old, counted from TCP
    /// connect. Default 15 min (GitLab Runner's `connection_max_age`); `None`
    /// lets connections live forever, as ordinary clients do.
    pub max_age: Option<Duration>,
    /// Each connection's max age is shortened by its own random amount in
    /// `[0, jitter]`, so a fleet does not reconnect in lockstep. `None` (the
    /// default) means 10 % of `max_age`; `Some(Duration::ZERO)` disables jitter.
    pub max_age_jitter: Option<Duration>,
    /// At expiry, a busy connection may finish its exchange within this grace;
    /// past it the exchange fails with [`Deadline::DrainGrace`](crate::Deadline::DrainGrace)
    /// (and is retried on a fresh connection when retry-safe). Default `None`:
    /// wait for the exchange however long it takes.
    pub drain_grace: Option<Duration>,
    /// Open the replacement shortly before expiry (make-before-break) for
    /// origins used within the last `max_age`, within `max_connections`.
    /// Default on.
    pub prewarm: bool,
    /// Retire a connection after this many exchanges. Default `None`.
    pub max_requests: Option<u32>,
    /// TLS session resumption; default [`Resumption::Never`].
    pub resumption: Resumption,
    /// Reaction to a changed peer chain; default [`OnChainChange::RetireOld`].
    pub on_chain_change: OnChainChange,
    /// Reaction of a live connection to a revocation of its chain; default
    /// [`OnRevocation::Close`].
    pub on_revocation: OnRevocation,
    /// Every this often, while the origin has connections, open a TLS-only
    /// connection (full handshake, no request) and compare its chain with the
    /// origin's; a change raises [`Event::ChainChanged`](crate::Event::ChainChanged)
    /// and applies `on_chain_change`, so even young connections heal. Default
    /// `None` (off).
    ///
    /// Probes are jittered as max age is (see [`Policy::chain_probe_jitter`]):
    /// the first probe after the origin gains a connection (with no probe
    /// armed) fires at a random point of its first interval, and each later
    /// interval is shortened by its own random amount, so a fleet restarted
    /// at once does not probe the edge in the same second of every interval.
    /// A probe is never later than one interval after the previous one.
    pub chain_probe_interval: Option<Duration>,
    /// Each chain probe interval is shortened by its own random amount in
    /// `[0, jitter]`, and the first probe of an origin is drawn uniformly
    /// over its whole first interval. `None` (the default) means 1 % of
    /// `chain_probe_interval` (the fleet simulation in BENCHMARKS.md: the
    /// first probe's spread is what breaks a restarted fleet's lockstep, and
    /// a larger share only adds probes); `Some(Duration::ZERO)` disables both, so every
    /// probe comes exactly one interval after the last (lockstep across a
    /// fleet restarted together).
    pub chain_probe_jitter: Option<Duration>,
    /// Safety margin subtracted from a server's `Keep-Alive: timeout=N`, so our
    /// idle close wins the race against the server's. Default 1 s.
    pub keep_alive_margin: Duration,
    /// Go straight to this origin, whatever the engine's proxies
    /// ([`Config::proxy`]) say. Default false. Set per origin with
    /// [`Engine::set_origin_policy`](crate::Engine::set_origin_policy);
    /// connections made under one setting are never handed requests under
    /// the other.
    pub direct: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_connections: 8,
            idle_timeout: Some(Duration::from_secs(90)),
            max_age: Some(Duration::from_secs(15 * 60)),
            max_age_jitter: None,
            drain_grace: None,
            prewarm: true,
            max_requests: None,
            resumption: Resumption::Never,
            on_chain_change: OnChainChange::RetireOld,
            on_revocation: OnRevocation::Close,
            chain_probe_interval: None,
            chain_probe_jitter: None,
            keep_alive_margin: Duration::from_secs(1),
            direct: false,
        }
    }
}

impl Policy {
    /// The jitter window actually applied: `max_age_jitter`, or 10 % of `max_age`.
    pub fn effective_jitter(&self) -> Duration {
        match (self.max_age_jitter, self.max_age) {
            (Some(j), Some(age)) => j.min(age),
            (None, Some(age)) => age / 10,
            (_, None) => Duration::ZERO,
        }
    }

    /// The chain probe's jitter actually applied: `chain_probe_jitter`
    /// (at most the interval), or 1 % of `chain_probe_interval`; zero
    /// without an interval.
    pub fn effective_probe_jitter(&self) -> Duration {
        match (self.chain_probe_jitter, self.chain_probe_interval) {
            (Some(j), Some(every)) => j.min(every),
            (None, Some(every)) => every / 100,
            (_, None) => Duration::ZERO,
        }
    }
}

impl Policy {
    /// Refuse settings that cannot work: `max_connections` of 0 (no request
    /// could ever be sent), a `max_age` of zero (every connection retires
    /// as it opens: hundreds of handshakes a second, no request served), a
    /// `max_age_jitter` not below `max_age` (a connection's limit could be
    /// zero), `max_requests` of 0, a `chain_probe_interval` of zero (a
    /// probe storm) and a `chain_probe_jitter` not below it.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first such setting (under `policy.`).
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |setting, reason: &str| Err(ConfigError::new(setting, reason));
        if self.max_connections == 0 {
            return bad(
                "policy.max_connections",
                "0 connections can carry no request",
            );
        }
        if self.max_age == Some(Duration::ZERO) {
            return bad(
                "policy.max_age",
                "zero retires every connection as it opens (None: no limit)",
            );
        }
        if let (Some(jitter), Some(age)) = (self.max_age_jitter, self.max_age) {
            if jitter >= age {
                return bad(
                    "policy.max_age_jitter",
                    &format!(
                        "{jitter:?} is not below max_age {age:?}: a connection's limit could be zero"
                    ),
                );
            }
        }
        if self.max_requests == Some(0) {
            return bad(
                "policy.max_requests",
                "0 exchanges per connection serves nothing (None: no limit)",
            );
        }
        if self.chain_probe_interval == Some(Duration::ZERO) {
            return bad(
                "policy.chain_probe_interval",
                "zero probes without pause (None: no probes)",
            );
        }
        if let (Some(jitter), Some(every)) = (self.chain_probe_jitter, self.chain_probe_interval) {
            if jitter >= every {
                return bad(
                    "policy.chain_probe_jitter",
                    &format!(
                        "{jitter:?} is not below chain_probe_interval {every:?}: \
                         a probe could follow the last at once"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A setting that cannot work, found by [`Config::check`] (when an engine
/// is built) or [`Policy::check`] (also when a per-origin policy is set).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting, as a path from [`Config`]: `"policy.max_age"`,
    /// `"timeouts.dns"`, `"dns_threads"` (or `"token_count"` for
    /// [`Engine::embedded`](crate::Engine::embedded)'s argument).
    pub setting: &'static str,
    /// Why it cannot work, and what to use instead.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why an [`Engine`](crate::Engine) or a [`Client`](crate::Client) could
/// not be built. Match on it to tell a setting to fix from a file to
/// repair; `Display` is one lowercase line naming what is wrong. Converts
/// into an `io::Error` (kind `InvalidInput` but for [`BuildError::Io`]) for
/// callers that return `io::Result`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting of the [`Config`] cannot work (see [`Config::check`]).
    Config(ConfigError),
    /// A trust file cannot be read or holds nothing usable: a CA file of
    /// [`Trust::pem_files`], the client certificate or key (or a key that
    /// does not belong to the certificate), a CRL file of
    /// [`Trust::crl_files`], the host's store when
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` name it, or an `https://` proxy's own
    /// trust; or no trust anchor is left at all.
    Trust {
        /// The file (empty when no single file is to blame).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Creating the poll, the waker or the client's thread failed.
    Io(Arc<std::io::Error>),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Config(e) => write!(f, "{e}"),
            BuildError::Trust { path, reason } if path.as_os_str().is_empty() => {
                f.write_str(reason)
            }
            BuildError::Trust { path, reason } => write!(f, "{}: {reason}", path.display()),
            BuildError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Config(e) => Some(e),
            BuildError::Io(e) => Some(&**e),
            BuildError::Trust { .. } => None,
        }
    }
}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> BuildError {
        BuildError::Io(Arc::new(e))
    }
}

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> BuildError {
        BuildError::Config(e)
    }
}

impl From<BuildError> for std::io::Error {
    fn from(e: BuildError) -> std::io::Error {
        match e {
            BuildError::Io(e) => {
                Arc::try_unwrap(e).unwrap_or_else(|e| std::io::Error::new(e.kind(), e.to_string()))
            }
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

/// Engine configuration. Start from `Config::default()` and change fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Connect-phase deadlines.
    pub timeouts: Timeouts,
    /// Default connection-lifetime policy for every origin.
    pub policy: Policy,
    /// Trust anchors for `https://` origins.
    pub trust: Trust,
    /// Codec limits (head bytes, header count, chunk line, trailers).
    pub limits: rotary_proto::Limits,
    /// Threads of the built-in resolver pool: how many names are looked
    /// up at once (connections asking for a name already being looked up
    /// wait for that lookup, so one slow name holds one thread). Default 2.
    pub dns_threads: usize,
    /// A resolver of the embedder's own, used instead of `ToSocketAddrs`.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Dial this network instead of TCP (the fuzzer's in-memory pipes;
    /// only with the `test-hooks` feature). Default none.
    #[cfg(feature = "test-hooks")]
    pub network: Option<Arc<dyn crate::sock::Network>>,
    /// Headers of the host's own that carry credentials (a runner's
    /// `JOB-TOKEN`, `PRIVATE-TOKEN`): like `Authorization`, they are dropped
    /// when a followed redirect leaves the origin. Default none.
    pub sensitive_headers: Vec<http::HeaderName>,
    /// Forward proxies: none by default; the environment's with
    /// [`Proxies::from_env`] (curl's rules, read when called), or given
    /// ones. See [`Proxies`].
    pub proxy: Proxies,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeouts: Timeouts::default(),
            policy: Policy::default(),
            trust: Trust::default(),
            limits: rotary_proto::Limits::default(),
            dns_threads: 2,
            resolver: None,
            #[cfg(feature = "test-hooks")]
            network: None,
            sensitive_headers: Vec::new(),
            proxy: Proxies::none(),
        }
    }
}

impl Config {
    /// Refuse settings that cannot work, as [`Engine::new`](crate::Engine::new)
    /// and [`Client::new`](crate::Client::new) do: the policy's (see
    /// [`Policy::check`]), a `dns`, `connect`, `handshake` or `proxy_connect`
    /// timeout of zero (every connection would fail as it starts),
    /// a `trust.check_interval` of zero, `dns_threads` of 0, and a
    /// `max_head_bytes` or `max_chunk_line` limit
    /// of 0 (no response could be read).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first such setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.policy.check()?;
        if self.trust.check_interval.is_zero() {
            return Err(ConfigError::new(
                "trust.check_interval",
                "zero looks at the credential files without pause (1 s is the default)",
            ));
        }
        let t = &self.timeouts;
        for (setting, value) in [
            ("timeouts.dns", t.dns),
            ("timeouts.connect", t.connect),
            ("timeouts.handshake", t.handshake),
            ("timeouts.proxy_connect", t.proxy_connect),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(
                    setting,
                    "zero fails every connection as it starts",
                ));
            }
        }
        if self.dns_threads == 0 {
            return Err(ConfigError::new(
                "dns_threads",
                "0 threads look up no name (1 or more)",
            ));
        }
        if self.limits.max_head_bytes == 0 || self.limits.max_chunk_line == 0 {
            let setting = match self.limits.max_head_bytes {
                0 => "limits.max_head_bytes",
                _ => "limits.max_chunk_line",
            };
            return Err(ConfigError::new(setting, "0 bytes reads no response"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("timeouts", &self.timeouts)
            .field("policy", &self.policy)
            .field("trust", &self.trust)
            .field("limits", &self.limits)
            .field("dns_threads", &self.dns_threads)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .field("sensitive_headers", &self.sensitive_headers)
            .field("proxy", &self.proxy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_check_interval_of_zero_is_refused() {
        let mut config = Config::default();
        assert_eq!(config.trust.check_interval, Duration::from_secs(1));
        config.check().expect("the defaults work");
        config.trust.check_interval = Duration::ZERO;
        let err = config.check().expect_err("zero");
        assert_eq!(err.setting, "trust.check_interval");
    }

    #[test]
    fn identity_expiry_defaults_scale_with_the_lifetime() {
        let d = IdentityExpiry::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(d.retire_margin(hour), Duration::from_secs(60));
        assert_eq!(d.warn_lead(hour), Duration::from_secs(600));
        let five_minutes = Duration::from_secs(300);
        assert_eq!(d.retire_margin(five_minutes), Duration::from_secs(30));
        let ninety_days = Duration::from_secs(90 * 86_400);
        assert_eq!(d.warn_lead(ninety_days), Duration::from_secs(15 * 86_400));
        assert_eq!(d.retire_margin(ninety_days), Duration::from_secs(60));
    }
}
