//! Where trust comes from and who the client is: the anchors (the host's
//! store, PEM files, the compiled-in roots), the revocation lists, the
//! client identity, and how often and how strictly they are watched.

use std::path::PathBuf;
use std::time::Duration;

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
    /// built (a file without a usable list is a [`BuildError::Trust`](super::BuildError::Trust)) and
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
    /// ([`Config::check`](super::Config::check)).
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
