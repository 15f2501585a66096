//! The error a failed request ends with, naming the phase that failed.
//!
//! Plain data: the engine and the codec build errors, the host matches on
//! them. Which errors are retried is the engine's (`engine/exchange.rs`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// A deadline that can end a request or a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deadline {
    /// Name resolution took longer than [`Timeouts::dns`](crate::Timeouts::dns).
    Dns,
    /// A TCP connect to one address took longer than [`Timeouts::connect`](crate::Timeouts::connect).
    Connect,
    /// The TLS handshake took longer than [`Timeouts::handshake`](crate::Timeouts::handshake).
    Handshake,
    /// The TLS handshake with an `https://` proxy took longer than
    /// [`Timeouts::handshake`](crate::Timeouts::handshake).
    ProxyHandshake,
    /// The proxy did not answer the `CONNECT` within
    /// [`Timeouts::proxy_connect`](crate::Timeouts::proxy_connect).
    ProxyConnect,
    /// No response byte arrived within [`RequestOptions::first_byte_timeout`](crate::RequestOptions::first_byte_timeout).
    FirstByte,
    /// The final response head did not arrive within
    /// [`RequestOptions::head_timeout`](crate::RequestOptions::head_timeout)
    /// of the request being written (1xx interim responses included).
    Head,
    /// The request did not end within [`RequestOptions::deadline`](crate::RequestOptions::deadline).
    Total,
    /// The connection's max age passed and the in-flight exchange did not
    /// finish within [`Policy::drain_grace`](crate::Policy::drain_grace).
    DrainGrace,
    /// The peer took none of the request's bytes for
    /// [`RequestOptions::send_stall_timeout`](crate::RequestOptions::send_stall_timeout).
    SendStall,
    /// No response byte arrived mid-body for
    /// [`RequestOptions::receive_stall_timeout`](crate::RequestOptions::receive_stall_timeout)
    /// (while the host was not holding the body back).
    ReceiveStall,
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deadline::Dns => "dns",
            Deadline::Connect => "connect",
            Deadline::Handshake => "tls handshake",
            Deadline::ProxyHandshake => "proxy tls handshake",
            Deadline::ProxyConnect => "proxy CONNECT",
            Deadline::FirstByte => "first response byte",
            Deadline::Head => "response head",
            Deadline::Total => "total request",
            Deadline::DrainGrace => "drain grace",
            Deadline::SendStall => "send stall",
            Deadline::ReceiveStall => "receive stall",
        })
    }
}

/// The phase of a request in which it failed; see [`Error::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The request was refused before any I/O (bad URI, bad header, ...).
    Request,
    /// Resolving the origin's host name.
    Resolve,
    /// Establishing the TCP connection.
    Connect,
    /// The TLS handshake.
    Tls,
    /// Writing the request.
    Write,
    /// Reading the response head.
    ResponseHead,
    /// Reading the response body.
    ResponseBody,
    /// A deadline fired.
    Timeout,
    /// The caller cancelled the request.
    Cancelled,
    /// The engine shut down.
    Shutdown,
    /// Reaching the origin through the proxy: reaching the proxy, the TLS
    /// handshake with an `https://` proxy, its `CONNECT` answer.
    Proxy,
}

impl Phase {
    /// Every phase, in order; for counters.
    pub const ALL: [Phase; 11] = [
        Phase::Request,
        Phase::Resolve,
        Phase::Connect,
        Phase::Tls,
        Phase::Write,
        Phase::ResponseHead,
        Phase::ResponseBody,
        Phase::Timeout,
        Phase::Cancelled,
        Phase::Shutdown,
        Phase::Proxy,
    ];

    /// A short lowercase name (`"tls"`, `"response_head"`, ...), used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Write => "write",
            Phase::ResponseHead => "response_head",
            Phase::ResponseBody => "response_body",
            Phase::Timeout => "timeout",
            Phase::Cancelled => "cancelled",
            Phase::Shutdown => "shutdown",
            Phase::Proxy => "proxy",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a redirect was not followed; see [`Error::Redirect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedirectError {
    /// More than [`RequestOptions::max_redirects`](crate::RequestOptions::max_redirects) hops.
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The hop leads to a URI already requested.
    Loop {
        /// The URI seen twice, its userinfo and query shown as
        /// `[redacted]` (they may hold credentials or a signature).
        uri: String,
    },
    /// An `https://` request redirected to `http://`, which was not allowed
    /// ([`RequestOptions::allow_https_to_http`](crate::RequestOptions::allow_https_to_http)).
    Downgrade {
        /// The `http://` target, redacted as in `Loop`.
        uri: String,
    },
    /// `Location` is no URI reference, or names a target no request can go
    /// to (a scheme other than `http`/`https`, no host, a port past 65535):
    /// the `Location` (redacted as in `Loop`) and why.
    BadLocation(String),
    /// A 307 or 308 asks for the body again, and it was a stream
    /// ([`Body::stream`](crate::Body::stream)) that cannot be replayed.
    BodyNotReplayable,
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectError::TooMany { max } => write!(f, "more than {max} redirects"),
            RedirectError::Loop { uri } => write!(f, "redirect loop back to {uri}"),
            RedirectError::Downgrade { uri } => {
                write!(f, "refused to follow https to {uri} (plain http)")
            }
            RedirectError::BadLocation(why) => write!(f, "bad Location header {why}"),
            RedirectError::BodyNotReplayable => {
                write!(f, "a 307/308 redirect needs the body again, and a streamed body cannot be replayed")
            }
        }
    }
}

/// What went wrong with the proxy; see [`Error::Proxy`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProxyFailure {
    /// The proxy's name did not resolve or no address of it connected.
    Unreachable(Box<Error>),
    /// The TLS handshake with an `https://` proxy failed (`reason` is
    /// rustls's verdict: for example the proxy's certificate is not trusted
    /// by the proxy's trust settings, or names another host), or the proxy
    /// broke TLS before the tunnel was up.
    Tls(rustls::Error),
    /// The proxy answered the `CONNECT` with a status other than 2xx.
    Refused {
        /// The proxy's status (407: it wants credentials, or refused ours;
        /// 403: its policy forbids the destination; 502/503: it could not
        /// reach the origin).
        status: http::StatusCode,
        /// The `Proxy-Authenticate` challenges of a 407, as sent.
        authenticate: Vec<String>,
        /// Whether we had sent credentials (`Proxy-Authorization`).
        credentials_sent: bool,
    },
    /// The proxy closed the connection before its `CONNECT` answer was complete.
    Closed,
    /// The `CONNECT` answer broke HTTP/1.1 or a codec limit (an oversized
    /// head, a malformed status line, ...).
    BadResponse(rotary_proto::Error),
    /// Reading or writing the proxy connection failed before the tunnel was up.
    Io(Arc<io::Error>),
}

impl fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyFailure::Unreachable(e) => write!(f, "unreachable: {e}"),
            ProxyFailure::Tls(reason) => {
                write!(f, "tls with the proxy failed: {}", TlsReason(reason))
            }
            ProxyFailure::Refused {
                status,
                authenticate,
                credentials_sent,
            } => {
                write!(f, "CONNECT answered {status}")?;
                if *status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                    f.write_str(if *credentials_sent {
                        ": the proxy rejected the credentials"
                    } else {
                        ": the proxy wants credentials and none were given"
                    })?;
                    if !authenticate.is_empty() {
                        write!(f, " (Proxy-Authenticate: {})", authenticate.join(", "))?;
                    }
                }
                Ok(())
            }
            ProxyFailure::Closed => f.write_str("closed the connection during CONNECT"),
            ProxyFailure::BadResponse(e) => write!(f, "bad CONNECT answer: {e}"),
            ProxyFailure::Io(e) => write!(f, "i/o error during CONNECT: {e}"),
        }
    }
}

/// rustls's reason as text, but a revocation found by rotary's verifier
/// (which rustls can only carry, and print, as an opaque `Other`) as the
/// certificate it names.
struct TlsReason<'a>(&'a rustls::Error);

impl fmt::Display for TlsReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::crl::revoked_in(self.0) {
            Some(revoked) => write!(f, "{revoked}"),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Why a request failed.
///
/// Every variant names its phase ([`Error::phase`]); `Display` is a lowercase
/// sentence a user can act on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The request's URI cannot be used: not `http`/`https`, not absolute,
    /// no host, a port that is no number, a host that cannot name a TLS
    /// server. The caller's URI is at fault.
    InvalidUri(String),
    /// A header of the request would break its framing (CR, LF or NUL in a
    /// name or value, a name that is no token).
    InvalidHeader(String),
    /// [`RequestOptions`](crate::RequestOptions) that cannot work (see
    /// [`RequestOptions::check`](crate::RequestOptions::check)).
    InvalidOptions(crate::ConfigError),
    /// A proxy URL that cannot be used ([`Proxy::parse`](crate::Proxy::parse),
    /// [`Proxies::from_env`](crate::Proxies::from_env)), naming it.
    InvalidProxy(String),
    /// The call cannot work where it was made: `execute` on an embedded
    /// engine, a [`Body::stream`](crate::Body::stream) where nothing would
    /// feed it, a fresh chain of an `http://` origin, an answer taken twice.
    Unsupported(String),
    /// [`Engine::send_body`](crate::Engine::send_body) or `end_body` for a
    /// request that has ended, has no streamed body, or whose body was
    /// ended already: stop feeding it.
    NotFeeding(crate::RequestId),
    /// The host name did not resolve (or resolved to no address).
    Resolve {
        /// The host that was looked up.
        host: String,
        /// What the resolver said.
        cause: Arc<io::Error>,
    },
    /// A redirect could not be followed (the response was a redirect the
    /// request asked to follow).
    Redirect(RedirectError),
    /// Every address refused or failed the TCP connect; this is the last
    /// failure, and `earlier` names the others.
    Connect {
        /// The address of the last attempt.
        addr: SocketAddr,
        /// What the socket said.
        cause: Arc<io::Error>,
        /// The addresses that failed before, each with why, in the order
        /// they failed (empty when only one address was tried).
        earlier: Vec<(SocketAddr, String)>,
    },
    /// TLS failed; `reason` is rustls's verdict (for example an unknown
    /// issuer, an expired certificate or a name mismatch in the handshake, or
    /// a bad record or an alert later).
    Tls {
        /// rustls's reason.
        reason: rustls::Error,
        /// [`Phase::Tls`] for the handshake; the exchange's phase for a TLS
        /// failure afterwards (a bad record, an alert mid-response).
        phase: Phase,
    },
    /// Reading or writing the socket failed.
    Io {
        /// The phase the exchange was in.
        phase: Phase,
        /// What the socket said.
        cause: Arc<io::Error>,
    },
    /// The peer closed the connection before the response was complete.
    PeerClosed {
        /// The phase the exchange was in.
        phase: Phase,
        /// The connection had carried an earlier exchange (a stale keep-alive
        /// connection the server closed); such a request is retried once on a
        /// fresh connection when it is idempotent or retry-safe.
        reused: bool,
    },
    /// The peer's response broke HTTP/1.1 framing or a codec limit.
    Protocol {
        /// The phase the exchange was in.
        phase: Phase,
        /// The codec's error.
        cause: rotary_proto::Error,
    },
    /// The response body exceeded [`RequestOptions::max_buffered_body`](crate::RequestOptions::max_buffered_body).
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body's source failed: a file could not be read or
    /// shrank while it was sent, or a streamed body ended short of its
    /// declared length or went past it. The connection is closed, never
    /// reused mid-body.
    BodySource {
        /// What went wrong, with the byte counts.
        reason: String,
        /// Body bytes sent before it failed.
        sent: u64,
    },
    /// [`Engine::send_body`](crate::Engine::send_body) was handed more than
    /// the request's [`RequestOptions::send_window`](crate::RequestOptions::send_window)
    /// holds: wait for [`Event::BodyWanted`](crate::Event::BodyWanted). From a
    /// [`Handle`](crate::Handle), where the chunk cannot be handed back, the
    /// request fails with it.
    WindowFull {
        /// The window in bytes.
        window: usize,
    },
    /// Writing a response body to the caller's sink failed
    /// ([`Engine::execute_into`](crate::Engine::execute_into)).
    Sink(Arc<io::Error>),
    /// The origin could not be reached through its proxy.
    Proxy {
        /// The proxy, as `http://host:port` or `https://host:port` (never
        /// with credentials).
        proxy: String,
        /// What went wrong.
        failure: ProxyFailure,
    },
    /// A fresh-chain handshake had no room: the origin already has
    /// [`Policy::max_connections`](crate::Policy::max_connections)
    /// connections and none is idle to close (or an embedded engine's token
    /// range is full).
    ConnectionLimit {
        /// The limit that was reached.
        limit: usize,
    },
    /// A certificate of the server's verified path is revoked by one of
    /// [`Trust::crl_files`](crate::Trust::crl_files): at the handshake
    /// ([`Phase::Tls`]), or on a live connection closed at once when a new
    /// list revokes its chain (the exchange's phase). The request is not
    /// retried on that connection; a new one verifies the server afresh.
    Revoked {
        /// The certificate, by subject and serial.
        certificate: crate::RevokedCertificate,
        /// [`Phase::Tls`] for the handshake; the exchange's phase for a
        /// connection closed mid-exchange.
        phase: Phase,
    },
    /// A deadline fired.
    Timeout(Deadline),
    /// The request was cancelled by the caller.
    Cancelled,
    /// The engine shut down before the request ended.
    Shutdown,
}

impl Error {
    /// The phase in which the request failed.
    pub fn phase(&self) -> Phase {
        match self {
            Error::InvalidUri(_)
            | Error::InvalidHeader(_)
            | Error::InvalidOptions(_)
            | Error::InvalidProxy(_)
            | Error::Unsupported(_)
            | Error::NotFeeding(_) => Phase::Request,
            Error::Resolve { .. } => Phase::Resolve,
            Error::Connect { .. } | Error::ConnectionLimit { .. } => Phase::Connect,
            Error::Redirect(_) => Phase::ResponseHead,
            Error::Tls { phase, .. } | Error::Revoked { phase, .. } => *phase,
            Error::Io { phase, .. }
            | Error::PeerClosed { phase, .. }
            | Error::Protocol { phase, .. } => *phase,
            Error::BodyTooLarge { .. } | Error::Sink(_) => Phase::ResponseBody,
            Error::BodySource { .. } | Error::WindowFull { .. } => Phase::Write,
            Error::Proxy { .. } => Phase::Proxy,
            Error::Timeout(_) => Phase::Timeout,
            Error::Cancelled => Phase::Cancelled,
            Error::Shutdown => Phase::Shutdown,
        }
    }

    /// The deadline that fired, for [`Error::Timeout`].
    pub fn deadline(&self) -> Option<Deadline> {
        match self {
            Error::Timeout(d) => Some(*d),
            _ => None,
        }
    }

    /// The revoked certificate that ended the request: from
    /// [`Error::Revoked`], or from a TLS failure whose reason is a
    /// revocation (the handshake's `rustls::Error`, which carries it as
    /// `CertificateError::Other`), the origin's or an `https://` proxy's.
    pub fn revoked(&self) -> Option<&crate::RevokedCertificate> {
        match self {
            Error::Revoked { certificate, .. } => Some(certificate),
            Error::Tls { reason, .. }
            | Error::Proxy {
                failure: ProxyFailure::Tls(reason),
                ..
            } => crate::crl::revoked_in(reason),
            _ => None,
        }
    }

    /// The error for a TLS failure in `phase`: [`Error::Revoked`] when
    /// rotary's verifier found a certificate revoked, else [`Error::Tls`].
    pub(crate) fn tls(reason: rustls::Error, phase: Phase) -> Error {
        match crate::crl::revoked_in(&reason) {
            Some(certificate) => Error::Revoked {
                certificate: certificate.clone(),
                phase,
            },
            None => Error::Tls { reason, phase },
        }
    }

    /// A failed connect to `addr` (naming no other address).
    pub(crate) fn connect(addr: SocketAddr, e: io::Error) -> Error {
        Error::Connect {
            addr,
            cause: Arc::new(e),
            earlier: Vec::new(),
        }
    }

    pub(crate) fn io(phase: Phase, e: io::Error) -> Error {
        Error::Io {
            phase,
            cause: Arc::new(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUri(why) => write!(f, "invalid uri: {why}"),
            Error::InvalidHeader(why) => write!(f, "invalid header: {why}"),
            Error::InvalidOptions(e) => write!(f, "request options: {e}"),
            Error::InvalidProxy(why) => write!(f, "invalid proxy: {why}"),
            Error::Unsupported(why) => write!(f, "unsupported: {why}"),
            Error::NotFeeding(id) => write!(
                f,
                "request {} has ended, has no streamed body, or its body was ended",
                id.0
            ),
            Error::Resolve { host, cause } => write!(f, "could not resolve {host}: {cause}"),
            Error::Redirect(why) => write!(f, "redirect not followed: {why}"),
            Error::Connect {
                addr,
                cause,
                earlier,
            } => {
                write!(f, "could not connect to {addr}: {cause}")?;
                for (i, (addr, why)) in earlier.iter().enumerate() {
                    let lead = if i == 0 { " (also tried " } else { "; " };
                    write!(f, "{lead}{addr}: {why}")?;
                }
                if earlier.is_empty() {
                    Ok(())
                } else {
                    f.write_str(")")
                }
            }
            Error::Tls {
                reason,
                phase: Phase::Tls,
            } => write!(f, "tls handshake failed: {}", TlsReason(reason)),
            Error::Tls { reason, phase } => {
                write!(f, "tls error during {}: {}", phase.name(), TlsReason(reason))
            }
            Error::Revoked {
                certificate,
                phase: Phase::Tls,
            } => write!(f, "tls handshake failed: {certificate}"),
            Error::Revoked { certificate, phase } => write!(
                f,
                "connection closed during {}: {certificate}",
                phase.name()
            ),
            Error::Io { phase, cause } => write!(f, "i/o error during {}: {cause}", phase.name()),
            Error::PeerClosed {
                phase,
                reused: true,
            } => write!(
                f,
                "reused connection closed by peer during {}",
                phase.name()
            ),
            Error::PeerClosed {
                phase,
                reused: false,
            } => {
                write!(f, "connection closed by peer during {}", phase.name())
            }
            Error::Protocol { phase, cause } => {
                write!(f, "bad response during {}: {cause}", phase.name())
            }
            Error::BodyTooLarge { limit } => {
                write!(f, "response body larger than the {limit}-byte limit")
            }
            Error::BodySource { reason, sent } => {
                write!(f, "request body failed after {sent} bytes: {reason}")
            }
            Error::WindowFull { window } => write!(
                f,
                "request body chunk does not fit the {window}-byte send window (wait for BodyWanted)"
            ),
            Error::Sink(cause) => write!(f, "could not write the response body: {cause}"),
            Error::Proxy { proxy, failure } => write!(f, "proxy {proxy}: {failure}"),
            Error::ConnectionLimit { limit } => write!(
                f,
                "no room for a fresh-chain connection: at the limit of {limit} connections, none idle"
            ),
            Error::Timeout(d) => write!(f, "{d} deadline passed"),
            Error::Cancelled => f.write_str("request cancelled"),
            Error::Shutdown => f.write_str("engine shut down"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { cause, .. }
            | Error::Connect { cause, .. }
            | Error::Io { cause, .. }
            | Error::Sink(cause) => Some(&**cause),
            Error::Tls { reason, .. } => Some(reason),
            Error::Revoked { certificate, .. } => Some(certificate),
            Error::Protocol { cause, .. } => Some(cause),
            Error::Proxy {
                failure: ProxyFailure::Unreachable(e),
                ..
            } => Some(&**e),
            Error::Proxy {
                failure: ProxyFailure::Tls(reason),
                ..
            } => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RevokedCertificate;

    fn edge() -> RevokedCertificate {
        RevokedCertificate {
            subject: "CN=edge.test".into(),
            serial: "1001".into(),
        }
    }

    #[test]
    fn a_revocation_from_the_verifier_becomes_error_revoked_naming_the_certificate() {
        let reason = crate::crl::revoked_error(edge());
        let err = Error::tls(reason.clone(), Phase::Tls);
        assert!(
            matches!(&err, Error::Revoked { certificate, phase: Phase::Tls } if *certificate == edge())
        );
        assert_eq!(
            err.to_string(),
            "tls handshake failed: certificate revoked: CN=edge.test (serial 1001)"
        );
        assert_eq!(err.revoked(), Some(&edge()));
        let live = Error::Revoked {
            certificate: edge(),
            phase: Phase::ResponseHead,
        };
        assert_eq!(
            live.to_string(),
            "connection closed during response_head: certificate revoked: CN=edge.test (serial 1001)"
        );
        assert_eq!(live.phase(), Phase::ResponseHead);

        // Before the engine converts it, the TLS error names it too.
        let tls = Error::Tls {
            reason,
            phase: Phase::Tls,
        };
        assert_eq!(tls.revoked(), Some(&edge()));
        assert_eq!(
            tls.to_string(),
            "tls handshake failed: certificate revoked: CN=edge.test (serial 1001)"
        );
        let other = Error::tls(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            Phase::Tls,
        );
        assert!(matches!(other, Error::Tls { .. }));
        assert_eq!(other.revoked(), None);
    }
}
