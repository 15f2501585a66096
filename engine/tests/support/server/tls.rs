//! The server's TLS: its rustls config (versions, ALPN, resumption, mTLS)
//! built from the builder's options, the resolver that rotates the
//! certificate for new full handshakes while sessions keep resuming, the
//! handshake itself, and the [`TlsInfo`] it yields. Changes the handshake
//! counters and TLS errors in the shared state, nothing else.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ProtocolVersion, SupportedProtocolVersion};

use super::shared::Shared;
use super::Io;

/// TLS facts of one server-side connection.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// Full or resumed.
    pub handshake_kind: Option<HandshakeKind>,
    /// Negotiated protocol version.
    pub version: Option<ProtocolVersion>,
    /// Server name the client indicated.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// Certificate generation presented (1 = initial, +1 per rotation); `None` when
    /// resumed (no certificate was sent).
    pub cert_generation: Option<u64>,
    /// The client's certificate chain (mTLS).
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
    /// The negotiated key exchange group (`X25519`, `X25519MLKEM768`, ...).
    pub key_exchange: Option<String>,
}

/// How the TLS server lets clients resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    /// Stateless tickets under one ticket key for the server's life (a CDN edge).
    Tickets,
    /// Stateful: session ids / TLS 1.3 tickets pointing into a server-side cache.
    SessionCache,
    /// No resumption at all.
    Off,
}

/// The TLS side of a [`ServerBuilder`](super::ServerBuilder)'s options.
pub(super) struct Options {
    /// Protocol versions (empty: rustls's safe defaults).
    pub(super) versions: Vec<&'static SupportedProtocolVersion>,
    /// ALPN protocols offered.
    pub(super) alpn: Vec<Vec<u8>>,
    pub(super) resumption: Resumption,
    /// The CA client certificates must chain to (mTLS), if any.
    pub(super) client_ca: Option<CertificateDer<'static>>,
    /// TLS 1.3 tickets sent per full handshake.
    pub(super) tls13_tickets: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            versions: Vec::new(),
            alpn: Vec::new(),
            resumption: Resumption::Tickets,
            client_ca: None,
            tls13_tickets: 2,
        }
    }
}

impl Options {
    /// A server config presenting `chain` through a [`RotatingResolver`], and
    /// that resolver (to rotate it later).
    pub(super) fn server_config(
        self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> (Arc<ServerConfig>, Arc<RotatingResolver>) {
        let resolver = Arc::new(RotatingResolver::new(chain, key));
        let builder = ServerConfig::builder_with_provider(provider());
        let builder = if self.versions.is_empty() {
            builder.with_safe_default_protocol_versions()
        } else {
            builder.with_protocol_versions(&self.versions)
        }
        .expect("ring supports the chosen versions");
        let builder = match self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).expect("client CA parses");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("client verifier builds");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = self.alpn;
        config.send_tls13_tickets = self.tls13_tickets;
        match self.resumption {
            Resumption::Tickets => {
                config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ring ticketer");
            }
            Resumption::SessionCache => {
                config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
            }
            Resumption::Off => {
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
        }
        (Arc::new(config), resolver)
    }
}

thread_local! {
    /// Generation the resolver last handed out on this (connection) thread.
    static RESOLVED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Serves the current certificate to every full handshake; swapped by `rotate`.
/// Sessions (tickets and cache) live in the one `ServerConfig`, so they outlive it.
#[derive(Debug)]
pub(super) struct RotatingResolver {
    current: RwLock<(u64, Arc<CertifiedKey>)>,
}

impl RotatingResolver {
    /// Presents `chain` as generation 1.
    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> RotatingResolver {
        RotatingResolver {
            current: RwLock::new((1, certified_key(chain, key))),
        }
    }

    /// New full handshakes present `chain` from now on; returns its generation.
    pub(super) fn rotate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> u64 {
        let key = certified_key(chain, key);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.0 += 1;
        current.1 = key;
        current.0
    }

    /// The generation and chain new full handshakes present.
    pub(super) fn current(&self) -> (u64, Vec<CertificateDer<'static>>) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.cert.clone())
    }
}

impl ResolvesServerCert for RotatingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (generation, key) = match self.current.read() {
            Ok(g) => (g.0, g.1.clone()),
            Err(poisoned) => (poisoned.get_ref().0, poisoned.get_ref().1.clone()),
        };
        RESOLVED.with(|c| c.set(Some(generation)));
        Some(key)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rotary::crypto_provider())
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<CertifiedKey> {
    Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).expect("certificate chain and key match"),
    )
}

pub(super) fn handshake(
    shared: &Shared,
    config: &Arc<ServerConfig>,
    mut tcp: TcpStream,
) -> Result<(Io, TlsInfo), ()> {
    let mut conn = match ServerConnection::new(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            shared.update(|st| {
                st.stats.handshakes_failed += 1;
                st.tls_errors.push(e.to_string());
            });
            return Err(());
        }
    };
    RESOLVED.with(|c| c.set(None));
    let _ = tcp.set_read_timeout(shared.idle_timeout());
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                // EOF before the handshake finished.
                shared.update(|st| {
                    st.stats.handshakes_failed += 1;
                    st.tls_errors
                        .push("peer closed during the handshake".to_owned());
                });
                return Err(());
            }
            Ok(_) => {}
            Err(e) => {
                // Best effort: tell the client why (rustls queued an alert).
                while conn.wants_write() {
                    if conn.write_tls(&mut tcp).is_err() {
                        break;
                    }
                }
                shared.update(|st| {
                    st.stats.handshakes_failed += 1;
                    st.tls_errors.push(e.to_string());
                });
                let _ = tcp.shutdown(Shutdown::Both);
                return Err(());
            }
        }
    }
    let _ = tcp.set_read_timeout(None);
    while conn.wants_write() {
        if conn.write_tls(&mut tcp).is_err() {
            break;
        }
    }
    let kind = conn.handshake_kind();
    let resumed = kind == Some(HandshakeKind::Resumed);
    let tls = TlsInfo {
        handshake_kind: kind,
        version: conn.protocol_version(),
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        cert_generation: if resumed {
            None
        } else {
            RESOLVED.with(|c| c.get())
        },
        key_exchange: conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
        client_chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect()),
    };
    shared.update(|st| {
        if resumed {
            st.stats.handshakes_resumed += 1;
        } else {
            st.stats.handshakes_full += 1;
        }
    });
    Ok((Io::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))), tls))
}
