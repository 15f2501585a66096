//! The error a failed request ends with, naming the phase that failed.

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
            ProxyFailure::Tls(reason) => write!(f, "tls with the proxy failed: {reason}"),
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

/// Why a request failed.
///
/// Every variant names its phase ([`Error::phase`]); `Display` is a lowercase
/// sentence a user can act on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The request cannot be sent: unsupported scheme, URI without a host,
    /// or a header that would break framing.
    InvalidRequest(String),
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
    /// The response body exceeded [`RequestOptions::max_body`](crate::RequestOptions::max_body).
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
            Error::InvalidRequest(_) => Phase::Request,
            Error::Resolve { .. } => Phase::Resolve,
            Error::Connect { .. } | Error::ConnectionLimit { .. } => Phase::Connect,
            Error::Redirect(_) => Phase::ResponseHead,
            Error::Tls { phase, .. } => *phase,
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
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
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
            } => write!(f, "tls handshake failed: {reason}"),
            Error::Tls { reason, phase } => {
                write!(f, "tls error during {}: {reason}", phase.name())
            }
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
