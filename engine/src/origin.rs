//! The pool key: scheme, host and port of a request's URI.
//!
//! Owns parsing and printing an origin (with the redaction rules of
//! [`crate::redact`]); which pool an origin maps to is the engine's.

use std::fmt;

use http::uri::Scheme;
use http::Uri;

use crate::redact::{self, Redacted};
use crate::Error;

/// Where requests go: `http` or `https`, a host and a port.
///
/// Connections are pooled per origin. The TLS configuration is the engine's
/// (one per engine), so scheme, host and port identify it too.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute URI.
    ///
    /// # Errors
    /// [`Error::InvalidUri`] when the scheme is not `http` or `https` or
    /// the URI has no host.
    pub fn from_uri(uri: &Uri) -> Result<Origin, Error> {
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) => {
                return Err(Error::InvalidUri(format!(
                    "unsupported scheme {s:?} (only http and https)"
                )))
            }
            None => {
                return Err(Error::InvalidUri(format!(
                    "uri {} is not absolute (it needs http:// or https://)",
                    Redacted(uri)
                )))
            }
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => {
                return Err(Error::InvalidUri(format!(
                    "uri {} has no host",
                    Redacted(uri)
                )))
            }
        };
        let port = match port_text(uri) {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            // `Uri` accepts any text after the colon (`:abc`, `:99999`) and
            // then reports no port: refuse rather than use the default.
            Some(p) => p.parse().map_err(|_| {
                Error::InvalidUri(format!("uri {} has an invalid port {p:?}", Redacted(uri)))
            })?,
        };
        Ok(Origin {
            tls,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The origin a string such as `https://example.com:8443` names: a
    /// scheme, a host and a port, nothing more (a `/` path is allowed). To
    /// take the origin of a request's URI, use [`Origin::from_uri`].
    ///
    /// # Errors
    /// [`Error::InvalidUri`] for an unparsable URI, one with a path or a
    /// query (an origin has neither: dropping them silently would hide a
    /// mistake), and as [`Origin::from_uri`].
    pub fn parse(s: &str) -> Result<Origin, Error> {
        let uri: Uri = s
            .parse()
            .map_err(|e| Error::InvalidUri(format!("bad uri {:?}: {e}", redact::text(s))))?;
        let path = uri.path();
        if !(path.is_empty() || path == "/") || uri.query().is_some() {
            return Err(Error::InvalidUri(format!(
                "{:?} is no origin: it has a path or a query (an origin is scheme://host:port; \
                 Origin::from_uri takes the origin of a full URI)",
                redact::text(s)
            )));
        }
        Origin::from_uri(&uri)
    }

    /// True for `https`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host name or IP literal (without brackets), lowercase.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (the scheme's default when the URI had none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"https"` or `"http"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// The text after the authority's port colon, if there is one.
fn port_text(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    match host_port.rfind(']') {
        Some(end) => host_port.get(end + 1..)?.strip_prefix(':'),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme(), self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_defaults_ports_and_lowercases_host() {
        let o = Origin::parse("https://Example.COM/").unwrap();
        assert_eq!((o.is_tls(), o.host(), o.port()), (true, "example.com", 443));
        let uri: Uri = "https://Example.COM/x?y".parse().unwrap();
        assert_eq!(Origin::from_uri(&uri).unwrap(), o, "a full URI's origin");
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((o.is_tls(), o.host(), o.port()), (false, "127.0.0.1", 8080));
        assert_eq!(o.to_string(), "http://127.0.0.1:8080");
        let o = Origin::parse("https://[::1]:9/").unwrap();
        assert_eq!(o.host(), "::1");
        assert_eq!(o.to_string(), "https://[::1]:9");
    }

    #[test]
    fn origin_refuses_ports_that_are_not_16_bit_numbers() {
        for bad in ["http://x:abc/", "https://x:99999/", "http://u@[::1]:7z/"] {
            assert!(
                matches!(Origin::parse(bad), Err(Error::InvalidUri(_))),
                "{bad}"
            );
        }
        // An empty port is the scheme's default (RFC 3986 §6.2.3).
        assert_eq!(Origin::parse("https://x:/").unwrap().port(), 443);
        assert_eq!(
            Origin::parse("http://u:p@[::1]:8080/").unwrap().port(),
            8080
        );
        assert_eq!(Origin::parse("http://[::1]/").unwrap().port(), 80);
    }

    #[test]
    fn an_origin_has_no_path_and_no_query() {
        for bad in [
            "https://a.test/x",
            "https://a.test/?q=1",
            "https://a.test?q",
            "http://a.test:80/x/y",
        ] {
            let err = Origin::parse(bad).expect_err(bad);
            assert!(
                matches!(&err, Error::InvalidUri(why) if why.contains("path or a query")),
                "{err}"
            );
        }
        assert_eq!(
            Origin::parse("https://a.test").unwrap().to_string(),
            "https://a.test:443"
        );
    }

    #[test]
    fn origin_refuses_other_schemes_and_relative_uris() {
        assert!(matches!(
            Origin::parse("ftp://x/"),
            Err(Error::InvalidUri(_))
        ));
        assert!(matches!(
            Origin::parse("/relative"),
            Err(Error::InvalidUri(_))
        ));
    }
}
