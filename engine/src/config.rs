//! Engine configuration: timeouts, connection-lifetime policy, trust and limits.
//!
//! Plain data with documented defaults and checks of their own (`check`, run by
//! the engine's constructor). Knows the types it names (proxies, the
//! resolver, the network seam) and nothing of the engine that reads it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::Resolver;
use crate::proxy::Proxies;

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

/// Where trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Trust {
    /// Trust the host's store, as OpenSSL, curl and Go find it:
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` when either is set, else the
    /// platform's bundle and certificate directory (on Debian
    /// `/etc/ssl/certs/ca-certificates.crt` and `/etc/ssl/certs`, which
    /// `update-ca-certificates` writes). Located when the engine is built, read
    /// through `rustls-native-certs`, and re-read before a new connection when
    /// one of those files or directories changed, like [`Trust::pem_files`]
    /// (a certificate rewritten in place inside a directory, which leaves the
    /// directory's time alone, is seen within a second: the files inside are
    /// looked at, one `stat` each, at most once a second).
    /// When no store is found (and neither variable is set), the
    /// `webpki-roots` are used instead, with a warning; a store named by
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` that holds no certificate is an error.
    /// Default true.
    pub system: bool,
    /// Trust the Mozilla roots compiled in from `webpki-roots` (anchors
    /// without a certificate: a job's CA bundle cannot name them). Default
    /// false; the fallback when the host has no store.
    pub webpki_roots: bool,
    /// PEM bundles of trust anchors: added to the host's store
    /// ([`Trust::system`](Trust#structfield.system)) and the webpki roots
    /// when those are on, the only anchors when both are off (as with
    /// [`Trust::pem_file`]). Read when the engine is built, and re-read before a new
    /// connection whenever a file's modification time, size or inode changed; a
    /// version that fails to parse keeps the previous anchors and raises
    /// [`Event::TrustError`](crate::Event::TrustError). Default none.
    pub pem_files: Vec<PathBuf>,
    /// A client certificate for mutual TLS, re-read the same way (live
    /// connections that presented an older one are replaced,
    /// make-before-break). A new
    /// version is used only when the chain parses, the key parses and the
    /// key belongs to the leaf (so a renewal written in two steps, the
    /// certificate first, is never used half-way); until then the previous
    /// identity stays, and one [`Event::TrustError`](crate::Event::TrustError)
    /// names the problem. A version is the files' modification and change
    /// times, sizes, inodes and the paths their symlinks resolve to, so a
    /// rename over the file, a rewrite in place and a Kubernetes secret
    /// volume's swap of its `..data` symlink are all seen. Default none.
    pub client_identity: Option<ClientIdentity>,
    /// Offer the hybrid post-quantum key exchange X25519MLKEM768 first, as
    /// rustls, Chrome and Go 1.24 do (a server that does not know it picks
    /// X25519 from the same hello). Only the `aws-lc-rs` crypto provider has
    /// it; *ring* offers X25519, P-256 and P-384 either way. Turn it off for
    /// a middlebox that cannot take the larger (1.2 KiB) hello. Default true.
    pub post_quantum: bool,
    /// Certificate revocation lists, as curl's `--crlfile`: PEM files with
    /// `X509 CRL` blocks, or one DER list per file. Read when the engine is
    /// built (a file without a usable list is a [`BuildError::Trust`]) and
    /// re-read like the CA files, with the same last-good rule. Every
    /// handshake checks the leaf and each intermediate of the path it builds
    /// against the list of that certificate's issuer (signed by it); a
    /// listed certificate refuses the handshake, naming it
    /// ([`RevokedCertificate`](crate::RevokedCertificate)). A certificate whose issuer has
    /// no list here is not judged, so the host's store can still reach CAs
    /// whose lists nobody handed over. A list past its nextUpdate follows
    /// [`Trust::crl_expiry`]. Default none.
    pub crl_files: Vec<PathBuf>,
    /// What a revocation list past its nextUpdate means. Default
    /// [`CrlExpiry::Warn`].
    pub crl_expiry: CrlExpiry,
    /// When connections that presented the client identity retire, and
    /// when the host is warned, ahead of the identity leaf's notAfter.
    pub identity_expiry: IdentityExpiry,
    /// How often every credential file (CA files, the host's store, the
    /// client identity, the CRL files) is looked at for a new version: one
    /// `stat` per file (with its symlinks resolved), the files inside the
    /// store's directories at most once a second. A timer on the engine's
    /// wheel, armed only while the engine holds connections (they are also
    /// looked at before every new connection); when a set has a new valid
    /// version, every live connection made before it is judged again (see
    /// [`Event::CredentialsInvalid`](crate::Event::CredentialsInvalid)), so
    /// this bounds how long a connection that no longer qualifies may take
    /// a request. The engine's interval also paces the files of proxies with
    /// a trust of their own. Default 1 s; zero is refused
    /// ([`Config::check`]).
    pub check_interval: Duration,
    /// Accept any server certificate. Only with the off-by-default cargo
    /// feature `dangerous-skip-verification`, for lab setups; every
    /// connection logs a warning. Handshake signatures are still checked.
    /// Default false.
    #[cfg(feature = "dangerous-skip-verification")]
    pub dangerous_skip_verification: bool,
}

/// What a certificate revocation list past its nextUpdate means
/// ([`Trust::crl_files`]).
///
/// Revocation is final, so an expired list still proves that what it lists
/// is revoked; what it no longer proves is that nothing else has been
/// revoked since. The default keeps applying it and tells the host, once
/// per list: refusing would turn a stalled CRL publisher into every
/// connection to that CA failing, while the lists in hand stay enforced
/// either way. Hosts that prefer OpenSSL's and curl's answer choose
/// [`CrlExpiry::Refuse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CrlExpiry {
    /// Keep applying the list, and raise one
    /// [`Event::TrustError`](crate::Event::TrustError) naming it and its
    /// nextUpdate (default; rustls-webpki's default too).
    #[default]
    Warn,
    /// Refuse every certificate whose issuer's list has expired, until a
    /// newer list is loaded: the handshake fails with
    /// `CertificateError::ExpiredRevocationListContext`, as OpenSSL and curl
    /// fail with "CRL has expired". The same event is raised.
    Refuse,
}

/// When connections that presented the client identity retire, and when
/// the host is warned, ahead of the identity leaf's notAfter
/// ([`Trust::identity_expiry`]). Both count back from notAfter; their
/// defaults scale with the leaf's lifetime (notAfter − notBefore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IdentityExpiry {
    /// Connections that presented the identity take no new request this
    /// long before its leaf's notAfter, and close when their exchange
    /// ends. `None` (default): one minute (a handshake and the clock skew
    /// between runner and server), or a tenth of the lifetime when that is
    /// shorter, so a five-minute certificate is not retired for a fifth of
    /// its life. See [`IdentityExpiry::retire_margin`].
    pub retire_before: Option<Duration>,
    /// If no newer identity has been loaded this long before the leaf's
    /// notAfter, one [`Event::IdentityExpiring`](crate::Event::IdentityExpiring)
    /// warns the host. `None` (default): a sixth of the lifetime. cert-manager
    /// renews at two thirds of the lifetime and SPIFFE at half, so with a
    /// sixth left a renewal is late by half of cert-manager's window at
    /// least: 10 minutes before a one-hour SVID expires, 15 days before a
    /// 90-day certificate does. See [`IdentityExpiry::warn_lead`].
    pub warn_before: Option<Duration>,
}

impl IdentityExpiry {
    /// How long before notAfter a leaf valid for `lifetime` retires its
    /// connections: `retire_before`, or the default rule.
    pub fn retire_margin(&self, lifetime: Duration) -> Duration {
        self.retire_before
            .unwrap_or_else(|| Duration::from_secs(60).min(lifetime / 10))
    }

    /// How long before notAfter the host is warned about a leaf valid for
    /// `lifetime` that nothing newer has replaced: `warn_before`, or the
    /// default rule.
    pub fn warn_lead(&self, lifetime: Duration) -> Duration {
        self.warn_before.unwrap_or(lifetime / 6)
    }
}

/// A client certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for Trust {
    /// [`Trust::system`].
    fn default() -> Self {
        Trust::system()
    }
}

impl Trust {
    /// Trust the host's store (see [`Trust::system`](Trust#structfield.system)):
    /// the default.
    pub fn system() -> Trust {
        Trust {
            system: true,
            webpki_roots: false,
            pem_files: Vec::new(),
            client_identity: None,
            post_quantum: true,
            crl_files: Vec::new(),
            crl_expiry: CrlExpiry::Warn,
            identity_expiry: IdentityExpiry::default(),
            check_interval: Duration::from_secs(1),
            #[cfg(feature = "dangerous-skip-verification")]
            dangerous_skip_verification: false,
        }
    }

    /// Trust only the Mozilla roots compiled in from `webpki-roots`.
    pub fn webpki() -> Trust {
        Trust {
            system: false,
            webpki_roots: true,
            ..Trust::system()
        }
    }

    /// Trust only the CA certificates in this PEM file.
    pub fn pem_file(path: impl Into<PathBuf>) -> Trust {
        Trust {
            system: false,
            webpki_roots: false,
            pem_files: vec![path.into()],
            ..Trust::system()
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

/// Per-request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Total deadline from submission. Default `None`, so a long poll may wait
    /// minutes.
    pub deadline: Option<Duration>,
    /// Maximum wait for the first response byte once the request is on a
    /// connection. Default `None` ([`head_timeout`](Self::head_timeout)
    /// bounds the same wait by default).
    pub first_byte_timeout: Option<Duration>,
    /// Maximum wait for the final response head once the request (head and
    /// body) is written: the server's think time, any 1xx interim responses
    /// and the head's own bytes. Fails with
    /// [`Deadline::Head`](crate::Deadline::Head). Default 10 min, GitLab
    /// Runner's response-header timeout: a long poll held for minutes
    /// works, and a server that accepts a request and never answers, or
    /// sends interim responses forever, cannot hold it for ever. `None`
    /// disables it (then only [`deadline`](Self::deadline) bounds that wait).
    pub head_timeout: Option<Duration>,
    /// May be sent again after a failure before any response byte arrived,
    /// even if the method is not idempotent. Default false.
    pub retry_safe: bool,
    /// Largest response body held in memory whole: for
    /// [`Event::Response`](crate::Event::Response) (not streaming) and for
    /// [`ResponseBody::bytes`](crate::ResponseBody::bytes). Default 16 MiB;
    /// bigger bodies fail with
    /// [`Error::BodyTooLarge`](crate::Error::BodyTooLarge). A streamed body
    /// ([`Event::Body`](crate::Event::Body), a `Read` of a
    /// [`ResponseBody`](crate::ResponseBody), `execute_into`) has no such
    /// limit: it is held to [`receive_window`](Self::receive_window).
    pub max_buffered_body: usize,
    /// Deliver the body as [`Event::Body`](crate::Event::Body) chunks instead of
    /// buffering it. Default false.
    pub streaming: bool,
    /// Redirects (301, 302, 303, 307, 308 with a `Location`) followed before
    /// the response is the answer. Default 0: a redirect is the response.
    /// 301/302 turn a POST into a GET and 303 anything but HEAD; 307/308 keep
    /// method and body. A hop to another origin drops `Authorization`,
    /// `Cookie`, `Proxy-Authorization` and [`Config::sensitive_headers`];
    /// [`RequestOptions::deadline`] covers every hop. More hops than this, or
    /// a loop, end with [`Error::Redirect`](crate::Error::Redirect).
    pub max_redirects: usize,
    /// Follow a redirect from `https://` to `http://`. Default false: such a
    /// hop ends with [`Error::Redirect`](crate::Error::Redirect).
    pub allow_https_to_http: bool,
    /// Most bytes of a file or streamed request body the engine holds at
    /// once: a file is read this much at a time as the socket takes it, and
    /// a host feeding a [`Body::stream`](crate::Body::stream) may queue this
    /// much ahead ([`Event::BodyWanted`](crate::Event::BodyWanted)). Default
    /// 256 KiB: enough to keep a loopback or LAN socket busy between two
    /// readiness events, small beside a runner's budget. 0 is refused
    /// ([`RequestOptions::check`]).
    pub send_window: usize,
    /// Streaming mode: body bytes delivered as [`Event::Body`](crate::Event::Body)
    /// and not yet consumed before the engine stops reading the connection
    /// (so a slow consumer throttles the server through TCP). Bytes count as
    /// consumed when [`Engine::next_event`](crate::Engine::next_event) hands
    /// out their event, or, with `manual_consume`, when the host calls
    /// [`Engine::consume`](crate::Engine::consume). A read takes at most
    /// what is left of the window (and one socket read, 64 KiB, past it at
    /// most), so the window bounds what a body holds in the engine.
    /// [`Engine::execute_into`](crate::Engine::execute_into) and
    /// [`Client`](crate::Client) use at most 128 KiB. Default 1 MiB; 0 is
    /// refused ([`RequestOptions::check`]).
    pub receive_window: usize,
    /// Body bytes are consumed only through [`Engine::consume`](crate::Engine::consume)
    /// (a host that hands events to another thread, which writes them out).
    /// Default false.
    pub manual_consume: bool,
    /// Fail with [`Deadline::SendStall`](crate::Deadline::SendStall) when the
    /// peer takes none of the request's bytes for this long while some are
    /// waiting (curl's `--speed-time` habit). Default 60 s; `None` disables.
    pub send_stall_timeout: Option<Duration>,
    /// Fail with [`Deadline::ReceiveStall`](crate::Deadline::ReceiveStall)
    /// when a started response stops: no further byte of a head whose first
    /// bytes arrived, or of the body, for this long (time the host holds the
    /// body back, or the request body is still going out, does not count).
    /// The wait for a head to start is [`head_timeout`](Self::head_timeout)'s.
    /// Default 60 s; `None` disables.
    pub receive_stall_timeout: Option<Duration>,
    /// With `Expect: 100-continue` among the request's headers, how long to
    /// wait for the `100` before sending the body anyway (curl waits 1 s).
    /// A final response instead of the `100` ends the exchange with the body
    /// unsent. Default 1 s.
    pub continue_timeout: Duration,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            deadline: None,
            first_byte_timeout: None,
            head_timeout: Some(Duration::from_secs(10 * 60)),
            retry_safe: false,
            max_buffered_body: 16 * 1024 * 1024,
            streaming: false,
            max_redirects: 0,
            allow_https_to_http: false,
            send_window: 256 * 1024,
            receive_window: 1024 * 1024,
            manual_consume: false,
            send_stall_timeout: Some(Duration::from_secs(60)),
            receive_stall_timeout: Some(Duration::from_secs(60)),
            continue_timeout: Duration::from_secs(1),
        }
    }
}

impl RequestOptions {
    /// Refuse options that cannot work, as [`Engine::submit`](crate::Engine::submit)
    /// does: a `send_window` or `receive_window` of 0 bytes (no body byte
    /// could move).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) naming the
    /// option.
    pub fn check(&self) -> Result<(), crate::Error> {
        let zero = |name: &'static str| {
            Err(crate::Error::InvalidOptions(ConfigError::new(
                name,
                "0 bytes: no body byte could move (at least 1)",
            )))
        };
        if self.send_window == 0 {
            return zero("send_window");
        }
        if self.receive_window == 0 {
            return zero("receive_window");
        }
        Ok(())
    }

    /// Follow up to `max` redirects (see [`RequestOptions::max_redirects`]).
    pub fn follow_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }
    /// Allow redirects from `https://` to `http://`.
    pub fn allow_https_to_http(mut self, allow: bool) -> Self {
        self.allow_https_to_http = allow;
        self
    }
    /// Set the total deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Set the first-byte deadline.
    pub fn first_byte_timeout(mut self, d: Duration) -> Self {
        self.first_byte_timeout = Some(d);
        self
    }

    /// Set (or with `None` disable) the wait for the final response head
    /// (see [`RequestOptions::head_timeout`]).
    pub fn head_timeout(mut self, d: Option<Duration>) -> Self {
        self.head_timeout = d;
        self
    }
    /// Mark the request safe to retry.
    pub fn retry_safe(mut self, yes: bool) -> Self {
        self.retry_safe = yes;
        self
    }
    /// Set the buffered-body limit.
    pub fn max_buffered_body(mut self, bytes: usize) -> Self {
        self.max_buffered_body = bytes;
        self
    }
    /// Stream the body as events.
    pub fn streaming(mut self, yes: bool) -> Self {
        self.streaming = yes;
        self
    }

    /// Set the request body window (see [`RequestOptions::send_window`]).
    pub fn send_window(mut self, bytes: usize) -> Self {
        self.send_window = bytes;
        self
    }

    /// Set the streamed response window (see [`RequestOptions::receive_window`]).
    pub fn receive_window(mut self, bytes: usize) -> Self {
        self.receive_window = bytes;
        self
    }

    /// Consume streamed body bytes only through `Engine::consume`.
    pub fn manual_consume(mut self, yes: bool) -> Self {
        self.manual_consume = yes;
        self
    }

    /// Set (or with `None` disable) both stall timeouts.
    pub fn stall_timeouts(mut self, send: Option<Duration>, receive: Option<Duration>) -> Self {
        self.send_stall_timeout = send;
        self.receive_stall_timeout = receive;
        self
    }

    /// Set the wait for `100 Continue`.
    pub fn continue_timeout(mut self, d: Duration) -> Self {
        self.continue_timeout = d;
        self
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
