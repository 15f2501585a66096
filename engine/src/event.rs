//! What the engine reports: request outcomes and connection lifecycle.
//!
//! Plain data handed to the host by `Engine::poll`; the engine alone builds
//! events, and each request's last one is its only terminal event.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use crate::{Error, Origin, PeerChain};

/// Identifies a submitted request. Unique for the engine's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The numeric id (allocation order).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies a call to [`Engine::fresh_chain`](crate::Engine::fresh_chain);
/// its answer is the [`Event::FreshChain`] with this id. Drawn from the same
/// sequence as [`RequestId`]s, so the two never share a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainRequestId(pub(crate) u64);

impl ChainRequestId {
    /// The numeric id (allocation order).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies a connection. Unique for the engine's lifetime (never reused,
/// unlike the slab slot behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The numeric id (opening order).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Trailers of a chunked response, stored in the response's extensions.
#[derive(Debug, Clone)]
pub struct Trailers(pub HeaderMap);

/// How a TLS connection was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handshake {
    /// A full handshake: the server sent (and we verified) its chain.
    Full,
    /// A resumed session: no Certificate message; the chain reported is the
    /// one of the session's original full handshake.
    Resumed,
}

/// Why a connection was closed (or retired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// It reached its max age.
    MaxAge,
    /// It was idle longer than the idle timeout.
    Idle,
    /// It carried `max_requests` exchanges (or the server's `Keep-Alive: max`).
    MaxRequests,
    /// The server asked for it (`Connection: close`, HTTP/1.0, close-delimited body).
    ServerClose,
    /// A newer connection to the origin showed a different chain.
    ChainChange,
    /// The leaf certificate's notAfter passed.
    CertExpiry,
    /// The peer closed it, or sent unsolicited bytes while it was idle.
    PeerClose,
    /// Opening it failed (resolve, connect or TLS handshake).
    ConnectFailed,
    /// An I/O or protocol error, or a deadline, ended the exchange on it.
    Error,
    /// The request on it was cancelled mid-exchange; or it was still
    /// waiting for its host name's lookup when the request it was opened
    /// for ended (the lookup is then not run).
    Cancelled,
    /// The engine shut down or was asked to close idle connections.
    Shutdown,
    /// A chain probe finished its handshake (probes carry no request).
    Probe,
    /// The credentials it was made with no longer hold: its
    /// [`Event::CredentialsInvalid`] says why.
    Credentials,
}

impl CloseReason {
    /// Every reason, in order; for counters.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::MaxAge,
        CloseReason::Idle,
        CloseReason::MaxRequests,
        CloseReason::ServerClose,
        CloseReason::ChainChange,
        CloseReason::CertExpiry,
        CloseReason::PeerClose,
        CloseReason::ConnectFailed,
        CloseReason::Error,
        CloseReason::Cancelled,
        CloseReason::Shutdown,
        CloseReason::Probe,
        CloseReason::Credentials,
    ];

    /// A short lowercase name (`"max_age"`, `"peer_close"`, ...), used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::MaxAge => "max_age",
            CloseReason::Idle => "idle",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::ServerClose => "server_close",
            CloseReason::ChainChange => "chain_change",
            CloseReason::CertExpiry => "cert_expiry",
            CloseReason::PeerClose => "peer_close",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::Error => "error",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Probe => "probe",
            CloseReason::Credentials => "credentials",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection's credentials no longer hold; see
/// [`Event::CredentialsInvalid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialReason {
    /// A newer client identity was loaded
    /// ([`Trust::client_identity`](crate::Trust::client_identity)) and the
    /// connection presented an older one. It takes no new request once a
    /// connection with the new identity is ready, and closes when its
    /// exchange ends (in-flight requests and long polls finish).
    IdentityRotated,
    /// The client identity it presented is within
    /// [`IdentityExpiry::retire_margin`](crate::IdentityExpiry::retire_margin)
    /// of its leaf's notAfter. It drains as for `IdentityRotated`.
    IdentityExpiring,
    /// The trust anchors changed and its chain verifies no more (the
    /// anchor its path ended at was removed, and no other path leads to
    /// one that is left). It takes no new request; the exchange on it
    /// finishes.
    AnchorRemoved,
    /// A new certificate revocation list revokes a certificate of its
    /// verified path. It closes at once; its in-flight request fails with
    /// [`Error::Revoked`](crate::Error::Revoked).
    Revoked,
}

impl CredentialReason {
    /// Every reason, in order; for counters.
    pub const ALL: [CredentialReason; 4] = [
        CredentialReason::IdentityRotated,
        CredentialReason::IdentityExpiring,
        CredentialReason::AnchorRemoved,
        CredentialReason::Revoked,
    ];

    /// A short lowercase name (`"identity_rotated"`, `"revoked"`, ...),
    /// used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            CredentialReason::IdentityRotated => "identity_rotated",
            CredentialReason::IdentityExpiring => "identity_expiring",
            CredentialReason::AnchorRemoved => "anchor_removed",
            CredentialReason::Revoked => "revoked",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What is known about a newly opened connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection.
    pub conn: ConnId,
    /// Its origin.
    pub origin: Origin,
    /// The address it connected to (the proxy's, through a proxy).
    pub peer_addr: SocketAddr,
    /// The proxy it goes through, as `http://host:port` or
    /// `https://host:port` (`None`: direct). The chain and TLS facts below
    /// are the origin's, from inside the tunnel; an `https://` proxy's own
    /// are in [`ConnectionInfo::proxy_tls`].
    pub proxy: Option<String>,
    /// TLS version (`None` for `http://`).
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// Negotiated cipher suite (`None` for `http://`).
    pub cipher_suite: Option<rustls::CipherSuite>,
    /// Negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// Full or resumed (`None` for `http://`).
    pub handshake: Option<Handshake>,
    /// The peer chain as presented, with its verified path and CA bundle
    /// (`None` for `http://`). Always the origin's, also through an
    /// `https://` proxy (whose own is [`ConnectionInfo::proxy_tls`]).
    pub chain: Option<Arc<PeerChain>>,
    /// The TLS session with an `https://` proxy, under the origin's
    /// (`None`: direct, or an `http://` proxy).
    pub proxy_tls: Option<ProxyTlsInfo>,
}

/// The TLS session with an `https://` proxy; see
/// [`ConnectionInfo::proxy_tls`]. Always a full handshake: its chain is
/// the one the proxy presented to this connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyTlsInfo {
    /// TLS version.
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// Negotiated cipher suite.
    pub cipher_suite: Option<rustls::CipherSuite>,
    /// The proxy's chain as presented, with its verified path (checked
    /// against the proxy's trust settings,
    /// [`Proxy::with_trust`](crate::Proxy::with_trust), or the engine's).
    pub chain: Arc<PeerChain>,
}

/// The connection that carried a response.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServedBy {
    /// The connection.
    pub conn: ConnId,
    /// It had carried an earlier exchange.
    pub reused: bool,
    /// Its peer chain, with the verified path; a job this response delivers
    /// should trust [`PeerChain::ca_bundle`] (`None` for `http://`).
    pub chain: Option<Arc<PeerChain>>,
    /// The URI this response answers when redirects were followed to it
    /// (`None` when it answers the submitted URI).
    pub redirected_to: Option<Arc<http::Uri>>,
}

/// An engine event, drained with [`Engine::next_event`](crate::Engine::next_event).
///
/// One enum, in three groups by what an event is about:
///
/// | about | events | carry |
/// |---|---|---|
/// | a request | [`Response`](Event::Response), [`Failed`](Event::Failed); when streaming [`Head`](Event::Head), [`Body`](Event::Body), [`End`](Event::End); for a fed body [`BodyWanted`](Event::BodyWanted) | its [`RequestId`] |
/// | a connection | [`Opened`](Event::Opened), [`Closed`](Event::Closed), [`ConnectFailed`](Event::ConnectFailed), [`CredentialsInvalid`](Event::CredentialsInvalid) | its [`ConnId`] |
/// | an origin or the engine | [`ChainChanged`](Event::ChainChanged), [`FreshChain`](Event::FreshChain) (per call, by [`ChainRequestId`]), [`TrustError`](Event::TrustError), [`IdentityExpiring`](Event::IdentityExpiring) | the origin, or the file |
///
/// Each request ends with exactly one terminal event: [`Event::Response`],
/// [`Event::End`] (streaming mode) or [`Event::Failed`]
/// ([`Event::is_terminal`]); a request's other events come before it. A
/// [`Client`](crate::Client) hands a request's events to its caller and
/// the rest to [`Client::lifecycle`](crate::Client::lifecycle).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A complete response (terminal).
    Response {
        /// The request.
        id: RequestId,
        /// Status, headers and the buffered body.
        response: http::Response<Bytes>,
        /// The connection that served it.
        served_by: ServedBy,
    },
    /// Streaming mode: the response head arrived.
    Head {
        /// The request.
        id: RequestId,
        /// Status and headers.
        response: http::Response<()>,
        /// The connection that serves it.
        served_by: ServedBy,
    },
    /// Streaming mode: a piece of the body.
    Body {
        /// The request.
        id: RequestId,
        /// The bytes.
        data: Bytes,
    },
    /// Streaming mode: the body ended (terminal).
    End {
        /// The request.
        id: RequestId,
        /// Trailers of a chunked body.
        trailers: Option<HeaderMap>,
    },
    /// A request with a [`Body::stream`](crate::Body::stream) can take up
    /// to `room` more bytes: hand them to
    /// [`Engine::send_body`](crate::Engine::send_body) (or end the body with
    /// [`Engine::end_body`](crate::Engine::end_body)). Raised once at
    /// submission and again each time the queued chunks have gone out;
    /// never handed out once the request has ended.
    BodyWanted {
        /// The request.
        id: RequestId,
        /// Bytes the send window has room for.
        room: usize,
    },
    /// The request failed (terminal).
    Failed {
        /// The request.
        id: RequestId,
        /// What failed, naming the phase.
        error: Error,
        /// The request had been put on a reused connection.
        reused: bool,
        /// How far the transfer had got when it failed: request body bytes
        /// sent, response body bytes received (on the last attempt), so a
        /// download cut mid-body says how much of it arrived.
        progress: crate::Progress,
    },
    /// A connection finished its handshake and is ready to carry requests.
    /// Chain probes and fresh-chain handshakes (TLS-only, they carry no
    /// request) raise none.
    Opened(ConnectionInfo),
    /// A connection was closed. Every connection the engine started ends
    /// with one, including those that never had an [`Event::Opened`]: a
    /// chain probe or fresh-chain handshake (`CloseReason::Probe`, or the
    /// reason it was cut short), a failed attempt (`ConnectFailed`, after
    /// its [`Event::ConnectFailed`]), and one closed while still opening
    /// (`Shutdown` from [`Engine::close_idle`](crate::Engine::close_idle)
    /// or a shutdown, `Cancelled` when its lookup was no longer needed). To
    /// count open connections, subtract only the `Closed` of a `conn` seen
    /// in an `Opened`.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its origin.
        origin: Origin,
        /// Why.
        reason: CloseReason,
    },
    /// Opening a connection failed (resolve, connect or TLS handshake, with
    /// rustls's reason). The waiting request it was for, if any, fails with
    /// the same error; this event lets a runner alert on, say, a rotation to
    /// a chain it does not trust, even when no request was waiting.
    ConnectFailed {
        /// The connection attempt.
        conn: ConnId,
        /// Its origin.
        origin: Origin,
        /// What failed.
        error: Error,
    },
    /// A credential file (CA bundle, CRL file, client certificate or key)
    /// changed on disk but could not be used (it does not parse, or the key
    /// does not belong to the certificate); the previous version stays in
    /// force. Raised once per bad version of a file. Also raised once per
    /// revocation list that goes past its nextUpdate (see
    /// [`CrlExpiry`](crate::CrlExpiry)).
    TrustError {
        /// The file (empty when the problem is not one file's).
        path: std::path::PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The answer to one [`Engine::fresh_chain`](crate::Engine::fresh_chain)
    /// call; every call gets exactly one, even when several shared a
    /// handshake. Not a request's event: [`Event::request_id`] is `None`.
    FreshChain {
        /// The call.
        id: ChainRequestId,
        /// The origin asked about.
        origin: Origin,
        /// The chain of a full handshake no older than the freshness asked
        /// for (with its verified path and [`PeerChain::ca_bundle`]), or why
        /// none could be made.
        result: Result<Arc<PeerChain>, Error>,
    },
    /// The credentials a connection was made with no longer hold: a newer
    /// client identity, its identity about to expire, a removed trust
    /// anchor, or a revocation. What follows depends on `reason` (see
    /// [`CredentialReason`]); the connection ends with [`Event::Closed`]
    /// and [`CloseReason::Credentials`] (or the reason it was already
    /// retiring for, such as its max age). Raised once per connection, by
    /// the engine's look at its credential files every
    /// [`Trust::check_interval`](crate::Trust::check_interval), or as a
    /// handshake that ran across a change finishes; a revocation after a
    /// gentler reason raises a second one, as it closes the connection at
    /// once. Counted in [`Stats::credentials_invalid`](crate::Stats::credentials_invalid).
    CredentialsInvalid {
        /// The connection.
        conn: ConnId,
        /// Its origin.
        origin: Origin,
        /// Why.
        reason: CredentialReason,
        /// What changed, for people: the new identity's subject and serial,
        /// rustls's reason the chain no longer verifies, or the revoked
        /// certificate's subject and serial.
        detail: String,
    },
    /// The client identity's leaf is within
    /// [`IdentityExpiry::warn_lead`](crate::IdentityExpiry::warn_lead) of
    /// its notAfter and no newer version of its files has been loaded:
    /// the renewal is late. Raised once per identity.
    IdentityExpiring {
        /// The certificate file.
        path: std::path::PathBuf,
        /// The leaf's subject.
        subject: String,
        /// The leaf's serial, in uppercase hex.
        serial: String,
        /// The leaf's notAfter.
        not_after: std::time::SystemTime,
    },
    /// A full handshake showed a different chain than the origin's previous
    /// connection.
    ChainChanged {
        /// The origin.
        origin: Origin,
        /// The chain seen before.
        previous: Arc<PeerChain>,
        /// The chain now presented.
        current: Arc<PeerChain>,
    },
}

impl Event {
    /// The request this event is about, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Event::Response { id, .. }
            | Event::Head { id, .. }
            | Event::Body { id, .. }
            | Event::End { id, .. }
            | Event::BodyWanted { id, .. }
            | Event::Failed { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// True for the one event that ends a request.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Response { .. } | Event::End { .. } | Event::Failed { .. }
        )
    }
}
