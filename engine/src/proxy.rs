//! Forward proxies: which proxy (if any) a connection to an origin goes
//! through, read from the configuration or from the environment with curl's
//! rules, and the `no_proxy` list that exempts hosts.
//!
//! Owns [`Proxy`], [`NoProxy`] and [`Proxies`]. How a
//! connection goes through the proxy (CONNECT, absolute-form) is the
//! engine's (`engine/tunnel.rs`).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::HeaderValue;

use crate::{Error, Origin, Trust};

/// Port of an `http://` proxy URL without one, as curl uses.
const DEFAULT_PROXY_PORT: u16 = 1080;
/// Port of an `https://` proxy URL without one, as curl uses.
const DEFAULT_TLS_PROXY_PORT: u16 = 443;

/// A forward proxy: `http://` or `https://`, its host, port, optional
/// Basic credentials and, for `https://`, the trust settings its own
/// certificate is checked against.
///
/// `https://` origins go through it in a `CONNECT` tunnel (TLS to the origin
/// inside it); `http://` origins are sent to it in absolute-form. With an
/// `https://` proxy all of that runs inside a TLS session with the proxy
/// first: two TLS sessions on one socket for an `https://` origin.
/// Credentials never appear in `Debug`, `Display`, logs or errors.
///
/// Two proxies are equal when scheme, host, port, credentials and trust
/// are; connections through unequal proxies are never pooled together.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    tls: bool,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
    /// The trust for the proxy's certificate; `None`: the engine's.
    trust: Option<Box<Trust>>,
}

impl std::hash::Hash for Proxy {
    /// Scheme, host, port and credentials (equal proxies hash equal; the
    /// trust settings only ever tell apart proxies that share all four).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.tls, &self.host, self.port, &self.credentials).hash(state);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Credentials {
    user: String,
    password: String,
}

impl Proxy {
    /// A proxy from a URL as curl takes it:
    /// `http[s]://[user:password@]host[:port]`, the scheme optional
    /// (`host:3128` means `http://host:3128`), the port when absent 1080
    /// for `http://` and 443 for `https://` (curl's defaults), user and
    /// password percent-decoded. A path after the authority is ignored. An
    /// `https://` proxy's certificate is checked against the engine's
    /// [`Config::trust`](crate::Config::trust) unless
    /// [`Proxy::with_trust`] says otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidProxy`] for another scheme (SOCKS proxies are not
    /// supported), an empty host or a bad port. The message never repeats
    /// the credentials.
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        let bad = |why: &str| Error::InvalidProxy(format!("bad proxy url: {why}"));
        let url = url.trim();
        let (tls, rest) = match url.find("://") {
            Some(i) => {
                let scheme = &url[..i];
                let tls = if scheme.eq_ignore_ascii_case("http") {
                    false
                } else if scheme.eq_ignore_ascii_case("https") {
                    true
                } else {
                    return Err(bad(&format!(
                        "unsupported scheme {:?} (only http:// and https:// proxies)",
                        scheme.to_ascii_lowercase()
                    )));
                };
                (tls, &url[i + 3..])
            }
            None => (false, url),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(bad("no host"));
        }
        let credentials = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                Some(Credentials {
                    user: percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?,
                    password: percent_decode(password)
                        .ok_or_else(|| bad("bad %-escape in the password"))?,
                })
            }
        };
        let default_port = if tls {
            DEFAULT_TLS_PROXY_PORT
        } else {
            DEFAULT_PROXY_PORT
        };
        Ok(Proxy {
            tls,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
            credentials,
            trust: None,
        })
    }

    /// The same proxy, its certificate checked against `trust` instead of
    /// the engine's [`Config::trust`](crate::Config::trust) (as curl's
    /// `--proxy-cacert`). Only an `https://` proxy has a certificate; for
    /// an `http://` one this changes nothing but equality. The files are
    /// read when the engine is built and re-read when they change, as the
    /// engine's own trust files are; a client identity in `trust` is
    /// presented to the proxy.
    pub fn with_trust(mut self, trust: Trust) -> Proxy {
        self.trust = Some(Box::new(trust));
        self
    }

    /// Whether the connection to the proxy itself is TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The trust settings for the proxy's certificate, when not the
    /// engine's ([`Proxy::with_trust`]).
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_deref()
    }

    /// The same proxy with Basic credentials (as curl's `--proxy-user`),
    /// replacing any from the URL.
    pub fn with_credentials(mut self, user: &str, password: &str) -> Proxy {
        self.credentials = Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// The proxy's host (an IPv6 literal without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether credentials are sent to the proxy.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// `Proxy-Authorization: Basic ...`, marked sensitive.
    pub(crate) fn authorization(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref()?;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.user, c.password).as_bytes());
        let mut value = HeaderValue::try_from(format!("Basic {token}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Display for Proxy {
    /// `http://host:port` or `https://host:port`, never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("trust", &self.trust)
            .finish()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for a bad port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 literal has colons and no port.
        Some(_) if s.parse::<IpAddr>().is_ok() => Some((s, None)),
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// Percent-decode `s` as UTF-8; `None` for a broken escape or bad UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Hosts that are reached directly, never through a proxy: curl's
/// `no_proxy` rules.
///
/// A comma (or space) separated list. `*` alone exempts every host. A name
/// matches itself and every subdomain (`example.com` matches `example.com`
/// and `a.example.com`, not `notexample.com`); a leading dot is ignored
/// (`.example.com` is `example.com`). An IP literal (IPv6 with or without
/// brackets) matches that address, a CIDR range (`10.0.0.0/8`, `fd00::/8`)
/// every address in it; names are never resolved to match them, and a host
/// that is an IP literal is matched by such entries only (the entry `0.0.1`
/// is a name, not a suffix of `10.0.0.1`). An entry may end in `:port` and
/// then matches only that port (curl has no such rule: it compares the
/// whole entry with the host, so it never matches). Spaces and tabs
/// separate entries as commas do (curl stops reading the list at a space
/// that is not followed by a comma; Go keeps it inside the entry). Case is
/// ignored. Loopback is not special: `localhost` and `127.0.0.1` go
/// through the proxy unless listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    entries: Vec<Exempt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Exempt {
    Name {
        name: String,
        port: Option<u16>,
    },
    Net {
        addr: IpAddr,
        bits: u8,
        port: Option<u16>,
    },
}

impl NoProxy {
    /// Parse a `no_proxy` list (see [`NoProxy`]). Entries that fit no rule
    /// (a bad port, a prefix longer than the address) are ignored.
    pub fn parse(list: &str) -> NoProxy {
        let list = list.trim();
        if list == "*" {
            return NoProxy {
                all: true,
                entries: Vec::new(),
            };
        }
        let entries = list
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(parse_exempt)
            .collect();
        NoProxy {
            all: false,
            entries,
        }
    }

    /// Whether `host` (a name, or an IP literal without brackets) on `port`
    /// is reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| match e {
            // An address is matched by address entries only: as a name,
            // `0.0.1` would be a suffix of `10.0.0.1` (curl matches an IP
            // host against IP and CIDR entries alone, too).
            Exempt::Name { name, port: p } => {
                ip.is_none()
                    && p.is_none_or(|p| p == port)
                    && (host == *name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
            Exempt::Net {
                addr,
                bits,
                port: p,
            } => p.is_none_or(|p| p == port) && ip.is_some_and(|ip| in_net(ip, *addr, *bits)),
        })
    }
}

fn parse_exempt(entry: &str) -> Option<Exempt> {
    let entry = entry.to_ascii_lowercase();
    let (net, bits) = match entry.split_once('/') {
        Some((net, bits)) => (net, Some(bits.parse::<u8>().ok()?)),
        None => (entry.as_str(), None),
    };
    let (host, port) = split_host_port(net)?;
    if let Ok(addr) = host.parse::<IpAddr>() {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        return (bits <= max).then_some(Exempt::Net { addr, bits, port });
    }
    if bits.is_some() {
        return None;
    }
    let name = host.trim_start_matches('.').trim_end_matches('.');
    (!name.is_empty()).then(|| Exempt::Name {
        name: name.to_owned(),
        port,
    })
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The proxies an engine uses ([`Config::proxy`](crate::Config::proxy)): one
/// for `http://` origins, one for `https://` origins, and the hosts exempt
/// from both. Default: none, every connection goes straight to its origin.
/// Build it from the environment with [`Proxies::from_env`] (curl's rules),
/// or from [`Proxies::all`] and the setters; one origin can go direct anyway
/// with [`Policy::direct`](crate::Policy::direct).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    http: Option<Arc<Proxy>>,
    https: Option<Arc<Proxy>>,
    no_proxy: NoProxy,
}

impl Proxies {
    /// No proxy at all.
    pub fn none() -> Proxies {
        Proxies::default()
    }

    /// `proxy` for every origin (as curl's `-x`), with no exemption.
    pub fn all(proxy: Proxy) -> Proxies {
        let proxy = Arc::new(proxy);
        Proxies {
            http: Some(proxy.clone()),
            https: Some(proxy),
            no_proxy: NoProxy::default(),
        }
    }

    /// Set the proxy for `http://` origins.
    pub fn http(mut self, proxy: Option<Proxy>) -> Proxies {
        self.http = proxy.map(Arc::new);
        self
    }

    /// Set the proxy for `https://` origins.
    pub fn https(mut self, proxy: Option<Proxy>) -> Proxies {
        self.https = proxy.map(Arc::new);
        self
    }

    /// Set the hosts reached directly.
    pub fn no_proxy(mut self, no_proxy: NoProxy) -> Proxies {
        self.no_proxy = no_proxy;
        self
    }

    /// Give every proxy these Basic credentials (as curl's `--proxy-user`).
    pub fn credentials(mut self, user: &str, password: &str) -> Proxies {
        for p in [&mut self.http, &mut self.https].into_iter().flatten() {
            *p = Arc::new((**p).clone().with_credentials(user, password));
        }
        self
    }

    /// Check every `https://` proxy's certificate against `trust` (as
    /// curl's `--proxy-cacert`); see [`Proxy::with_trust`].
    pub fn trust(mut self, trust: Trust) -> Proxies {
        for p in [&mut self.http, &mut self.https].into_iter().flatten() {
            *p = Arc::new((**p).clone().with_trust(trust.clone()));
        }
        self
    }

    /// Every proxy named (one may be named twice).
    pub(crate) fn each(&self) -> impl Iterator<Item = &Arc<Proxy>> {
        self.http.iter().chain(self.https.iter())
    }

    /// The proxies the process environment names; see
    /// [`Proxies::from_lookup`].
    ///
    /// # Errors
    /// As [`Proxies::from_lookup`].
    pub fn from_env() -> Result<Proxies, Error> {
        Proxies::from_lookup(|name| std::env::var(name).ok())
    }

    /// The proxies named by environment variables, read through `lookup`,
    /// with curl's rules: `https_proxy` or `HTTPS_PROXY` for `https://`
    /// origins; `http_proxy` for `http://` origins, lowercase only (a CGI
    /// script's environment holds a request's `Proxy:` header as
    /// `HTTP_PROXY`); `all_proxy` or `ALL_PROXY` for either when its own is
    /// unset; `no_proxy` or `NO_PROXY` for the exemptions (see [`NoProxy`]).
    /// The lowercase name wins when both are set; an empty value counts as
    /// unset.
    ///
    /// # Errors
    /// [`Error::InvalidProxy`] naming the variable whose URL does not parse
    /// (see [`Proxy::parse`]), never its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Proxies, Error> {
        let get = |names: &[&'static str]| -> Option<(&'static str, String)> {
            names
                .iter()
                .find_map(|&n| lookup(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        let parse = |found: Option<(&'static str, String)>| -> Result<Option<Arc<Proxy>>, Error> {
            match found {
                None => Ok(None),
                Some((name, value)) => {
                    Proxy::parse(&value)
                        .map(|p| Some(Arc::new(p)))
                        .map_err(|e| {
                            let why = match e {
                                Error::InvalidProxy(why) => why,
                                other => other.to_string(),
                            };
                            Error::InvalidProxy(format!("{name}: {why}"))
                        })
                }
            }
        };
        let all = ["all_proxy", "ALL_PROXY"];
        let https = get(&["https_proxy", "HTTPS_PROXY"]).or_else(|| get(&all));
        let http = get(&["http_proxy"]).or_else(|| get(&all));
        let no_proxy = get(&["no_proxy", "NO_PROXY"])
            .map(|(_, v)| NoProxy::parse(&v))
            .unwrap_or_default();
        Ok(Proxies {
            http: parse(http)?,
            https: parse(https)?,
            no_proxy,
        })
    }

    /// The proxy a connection to `origin` goes through, if any.
    pub fn for_origin(&self, origin: &Origin) -> Option<&Proxy> {
        self.route(origin).map(|p| &**p)
    }

    pub(crate) fn route(&self, origin: &Origin) -> Option<&Arc<Proxy>> {
        let proxy = if origin.is_tls() {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        (!self.no_proxy.matches(origin.host(), origin.port())).then_some(proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn origin(s: &str) -> Origin {
        Origin::parse(s).expect("origin")
    }

    fn via(p: &Proxies, o: &str) -> Option<String> {
        p.for_origin(&origin(o)).map(|p| p.to_string())
    }

    #[test]
    fn proxy_urls_parse_as_curl_takes_them() {
        let p = Proxy::parse("http://proxy.corp:3128").expect("parses");
        assert_eq!(
            (p.host(), p.port(), p.has_credentials()),
            ("proxy.corp", 3128, false)
        );
        let p = Proxy::parse("Proxy.Corp").expect("scheme-less");
        assert_eq!((p.host(), p.port()), ("proxy.corp", 1080));
        let p = Proxy::parse("HTTP://[::1]:8080/ignored").expect("v6");
        assert_eq!((p.host(), p.port()), ("::1", 8080));
        assert_eq!(p.to_string(), "http://[::1]:8080");
        let p = Proxy::parse("HTTPS://proxy.corp").expect("https");
        assert!(p.is_tls());
        assert_eq!(
            (p.port(), p.to_string().as_str()),
            (443, "https://proxy.corp:443")
        );
        let p = Proxy::parse("https://proxy.corp:3129").expect("https port");
        assert_eq!((p.port(), p.trust()), (3129, None));
        let q = p.clone().with_trust(Trust::pem_file("/etc/proxy-ca.pem"));
        assert!(
            q.trust().is_some() && q != p,
            "the trust tells proxies apart"
        );
        for bad in [
            "socks5://proxy:1080",
            "http://:3128",
            "http://proxy:99999",
            "http://proxy:abc",
            "http://u:p%zz@proxy:1",
        ] {
            let err = Proxy::parse(bad).expect_err(bad).to_string();
            assert!(!err.contains("p%zz"), "{err}");
        }
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_shown() {
        let p = Proxy::parse("http://al%40ice:s%3Acr%25et@proxy:3128").expect("parses");
        assert!(p.has_credentials());
        let auth = p.authorization().expect("basic");
        assert!(auth.is_sensitive());
        let token = base64::engine::general_purpose::STANDARD.encode("al@ice:s:cr%et");
        assert_eq!(auth.to_str().expect("ascii"), format!("Basic {token}"));
        for shown in [format!("{p:?}"), p.to_string()] {
            assert!(
                !shown.contains("s%3Acr") && !shown.contains("cr%et"),
                "{shown}"
            );
            assert!(
                !shown.contains("al%40ice") && !shown.contains("al@ice"),
                "{shown}"
            );
        }
        let setting = Proxies::all(p.clone()).credentials("bob", "pw7");
        let shown = format!("{setting:?}");
        assert!(
            !shown.contains("pw7") && !shown.contains("cr%et"),
            "{shown}"
        );
        let p = p.with_credentials("bob", "pw");
        let token = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        assert_eq!(
            p.authorization().expect("basic").to_str().expect("ascii"),
            format!("Basic {token}")
        );
    }

    #[test]
    fn env_follows_curl_https_either_case_http_lowercase_only() {
        let p = Proxies::from_lookup(env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("HTTP_PROXY", "http://cgi-header:2"),
        ]))
        .expect("parses");
        assert_eq!(via(&p, "https://a.test").as_deref(), Some("http://upper:1"));
        assert_eq!(via(&p, "http://a.test"), None, "HTTP_PROXY is not read");
        let p = Proxies::from_lookup(env(&[
            ("https_proxy", "lower:1"),
            ("HTTPS_PROXY", "upper:1"),
            ("http_proxy", "plain:3"),
        ]))
        .expect("parses");
        assert_eq!(via(&p, "https://a.test").as_deref(), Some("http://lower:1"));
        assert_eq!(via(&p, "http://a.test").as_deref(), Some("http://plain:3"));
    }

    #[test]
    fn env_takes_https_proxies_with_their_default_port() {
        let p =
            Proxies::from_lookup(env(&[("https_proxy", "https://u:pw@tls.corp")])).expect("parses");
        let proxy = p.for_origin(&origin("https://a.test")).expect("a proxy");
        assert!(proxy.is_tls() && proxy.has_credentials());
        assert_eq!(proxy.to_string(), "https://tls.corp:443");
        let trust = Trust::pem_file("/etc/proxy-ca.pem");
        let p = p.trust(trust.clone());
        let proxy = p.for_origin(&origin("https://a.test")).expect("a proxy");
        assert_eq!(proxy.trust(), Some(&trust));
    }

    #[test]
    fn all_proxy_fills_in_and_empty_values_are_unset() {
        let p = Proxies::from_lookup(env(&[("https_proxy", ""), ("ALL_PROXY", "http://every:9")]))
            .expect("parses");
        assert_eq!(via(&p, "https://a.test").as_deref(), Some("http://every:9"));
        assert_eq!(via(&p, "http://a.test").as_deref(), Some("http://every:9"));
        let p = Proxies::from_lookup(env(&[])).expect("nothing");
        assert_eq!(p, Proxies::none());
    }

    #[test]
    fn a_bad_env_url_names_the_variable_not_the_secret() {
        let err = Proxies::from_lookup(env(&[("https_proxy", "ftp://u:hunter2@p:1")]))
            .expect_err("ftp")
            .to_string();
        assert!(err.contains("https_proxy"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn no_proxy_matches_suffixes_on_label_boundaries() {
        let n = NoProxy::parse("example.com, .corp.test,Internal.");
        assert!(n.matches("example.com", 443));
        assert!(n.matches("a.b.EXAMPLE.com", 443));
        assert!(!n.matches("notexample.com", 443));
        assert!(
            n.matches("corp.test", 80),
            "a leading dot is ignored, as curl does"
        );
        assert!(n.matches("git.corp.test", 80));
        assert!(n.matches("internal", 80));
        assert!(n.matches("internal.", 80));
        assert!(!n.matches("other.test", 80));
    }

    #[test]
    fn no_proxy_star_alone_exempts_everything_and_loopback_is_not_special() {
        assert!(NoProxy::parse(" * ").matches("anything.test", 1));
        assert!(!NoProxy::parse("").matches("localhost", 1));
        assert!(!NoProxy::parse("example.com").matches("127.0.0.1", 1));
        assert!(NoProxy::parse("localhost").matches("localhost", 1));
    }

    #[test]
    fn no_proxy_ip_literals_cidr_and_ports() {
        let n = NoProxy::parse("10.0.0.0/8 192.168.1.5 ::1 [fd00::]/8 git.test:8443 [::2]:80");
        assert!(n.matches("10.20.30.40", 1));
        assert!(!n.matches("11.0.0.1", 1));
        assert!(n.matches("192.168.1.5", 1));
        assert!(!n.matches("192.168.1.6", 1));
        assert!(n.matches("::1", 1));
        assert!(n.matches("fd12::1", 1));
        assert!(!n.matches("fe80::1", 1));
        assert!(n.matches("git.test", 8443));
        assert!(!n.matches("git.test", 443));
        assert!(n.matches("::2", 80));
        assert!(!n.matches("::2", 81));
        assert!(
            !n.matches("ten.test", 1),
            "a name is never resolved to match a range"
        );
        let bad = NoProxy::parse("1.2.3.4/33, name/8, host:nope");
        assert!(!bad.matches("1.2.3.4", 1));
        assert!(!bad.matches("name", 1));
        assert!(!bad.matches("host", 1));
        let zero = NoProxy::parse("0.0.0.0/0");
        assert!(zero.matches("203.0.113.9", 1));
    }

    #[test]
    fn no_proxy_matches_an_ip_host_by_address_entries_only() {
        let n = NoProxy::parse("0.0.1, 1, 168.1.5, ::1, example.com");
        assert!(
            !n.matches("10.0.0.1", 1),
            "0.0.1 is a name, not a suffix of an address"
        );
        assert!(!n.matches("192.168.1.5", 1));
        assert!(!n.matches("127.0.0.1", 1), "1 is a name too");
        assert!(n.matches("::1", 1));
        // Names still match as names, also ones that look numeric.
        assert!(n.matches("host.0.0.1", 1));
        assert!(n.matches("www.example.com", 1));
    }

    #[test]
    fn no_proxy_applies_to_the_route() {
        let p = Proxies::from_lookup(env(&[
            ("https_proxy", "http://p:1"),
            ("NO_PROXY", "direct.test"),
        ]))
        .expect("parses");
        assert_eq!(via(&p, "https://direct.test"), None);
        assert_eq!(via(&p, "https://www.direct.test"), None);
        assert_eq!(via(&p, "https://other.test").as_deref(), Some("http://p:1"));
    }
}
