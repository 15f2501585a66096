//! `--resolve HOST:PORT:ADDR[,ADDR...]`: addresses pinned for a host and
//! port, answered by a [`rotary::Resolver`] that asks the system for the rest.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use rotary::{Resolver, SystemResolver};

/// One `--resolve` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pin {
    /// Lowercase, IPv6 literals without brackets (as the engine asks).
    host: String,
    port: u16,
    addrs: Vec<IpAddr>,
}

impl Pin {
    /// `HOST:PORT:ADDR[,ADDR...]`; a host or address that is an IPv6
    /// literal is written in brackets, as in a URL (`[::1]`). A bare IPv6
    /// address is taken too: after the second colon nothing is ambiguous.
    pub(super) fn parse(s: &str) -> Result<Pin, String> {
        let (host, rest) = match s.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6
                    .split_once(']')
                    .ok_or("an IPv6 host needs its closing ']'")?;
                (
                    host,
                    rest.strip_prefix(':').ok_or("expected ':' after ']'")?,
                )
            }
            None => s.split_once(':').ok_or("expected HOST:PORT:ADDR")?,
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        let (port, addrs) = rest.split_once(':').ok_or("expected HOST:PORT:ADDR")?;
        let port = port
            .parse()
            .ok()
            .filter(|&p: &u16| p != 0)
            .ok_or_else(|| format!("bad port {port:?} (1-65535)"))?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                let bare = a
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(a);
                bare.parse::<IpAddr>()
                    .map_err(|_| format!("{a:?} is not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pin {
            host: host.to_ascii_lowercase(),
            port,
            addrs,
        })
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|a| SocketAddr::new(*a, self.port).to_string())
            .collect();
        write!(f, "{}:{} is {}", self.host, self.port, addrs.join(", "))
    }
}

/// Answers pinned hosts from their pins (the last entry for a host and
/// port wins, as in curl) and every other host from the system resolver.
pub(super) struct Pinned {
    pins: Vec<Pin>,
}

impl Pinned {
    pub(super) fn new(pins: Vec<Pin>) -> Pinned {
        Pinned { pins }
    }
}

impl Resolver for Pinned {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let pinned = self
            .pins
            .iter()
            .rev()
            .find(|p| p.port == port && p.host.eq_ignore_ascii_case(host));
        match pinned {
            Some(pin) => Ok(pin
                .addrs
                .iter()
                .map(|a| SocketAddr::new(*a, port))
                .collect()),
            None => SystemResolver.resolve(host, port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_take_names_v4_and_bracketed_or_bare_v6() {
        let pin = Pin::parse("Fake.Test:8443:127.0.0.1,[::1],::2").expect("parses");
        assert_eq!(pin.host, "fake.test");
        assert_eq!(pin.port, 8443);
        assert_eq!(
            pin.to_string(),
            "fake.test:8443 is 127.0.0.1:8443, [::1]:8443, [::2]:8443"
        );
        let pin = Pin::parse("[::1]:80:127.0.0.1").expect("v6 host");
        assert_eq!(pin.host, "::1");
        for bad in [
            "fake.test",
            "fake.test:80",
            "fake.test:http:127.0.0.1",
            "fake.test:80:localhost",
            "fake.test:0:127.0.0.1",
            "fake.test:80:127.0.0.1,",
            ":80:127.0.0.1",
            "[::1:80:127.0.0.1",
        ] {
            assert!(Pin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pinned_host_and_port_get_their_pins_and_the_last_entry_wins() {
        let r = Pinned::new(vec![
            Pin::parse("a.test:80:10.0.0.1").expect("pin"),
            Pin::parse("a.test:80:10.0.0.2").expect("pin"),
        ]);
        let got = r.resolve("A.test", 80).expect("pinned");
        assert_eq!(got, ["10.0.0.2:80".parse::<SocketAddr>().expect("addr")]);
        // Another port of the same host is not pinned: the system answers.
        let got = r.resolve("127.0.0.1", 81).expect("system resolver");
        assert_eq!(got, ["127.0.0.1:81".parse::<SocketAddr>().expect("addr")]);
    }
}
