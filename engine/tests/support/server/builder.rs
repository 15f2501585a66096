//! [`ServerBuilder`]: the options of a [`TestServer`] (TLS chain and
//! versions, resumption, mTLS, handler, accept and on-head hooks, whether
//! bodies are kept, idle timeout, request limit) and `start`, which binds
//! the listener, builds the shared state and spawns the accept thread.
//! Owns only the options until `start`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::conn::accept_loop;
use super::request::{ConnInfo, RecordedRequest};
use super::script::BodyPlan;
use super::script::{Accept, Reply};
use super::shared::Shared;
use super::tls::{self, Resumption};
use super::{AcceptHook, Handler, OnHead, TestServer};
use crate::support::certs::Issued;
use crate::support::sockopt::raise_backlog;

/// Options for a [`TestServer`].
pub struct ServerBuilder {
    tls: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    handler: Handler,
    accept: Option<AcceptHook>,
    on_head: Option<OnHead>,
    keep_bodies: bool,
    idle_timeout: Option<Duration>,
    tls_options: tls::Options,
    keepalive_requests: Option<u64>,
}

impl ServerBuilder {
    /// Plain HTTP answering `200 ok`, rustls's TLS defaults once `.tls(..)`.
    pub(super) fn new() -> ServerBuilder {
        ServerBuilder {
            tls: None,
            handler: Arc::new(|_, _| Reply::ok("ok")),
            accept: None,
            on_head: None,
            keep_bodies: true,
            idle_timeout: None,
            tls_options: tls::Options::default(),
            keepalive_requests: None,
        }
    }

    /// Serves TLS with this leaf (and its key).
    pub fn tls(self, leaf: &Issued) -> Self {
        self.tls_chain(leaf.chain_der(), leaf.key_der())
    }

    /// Serves TLS with this chain and key.
    pub fn tls_chain(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.tls = Some((chain, key));
        self
    }

    /// The reply handler (default: `200 ok`).
    pub fn handler(
        mut self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.handler = Arc::new(f);
        self
    }

    /// A hook run on each accepted TCP connection, before TLS.
    pub fn on_accept(mut self, f: impl Fn(&ConnInfo) -> Accept + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// A hook run once each request's head is read, before its body: its
    /// [`BodyPlan`] may answer early, before the body or after part of it.
    pub fn on_head(
        mut self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> BodyPlan + Send + Sync + 'static,
    ) -> Self {
        self.on_head = Some(Arc::new(f));
        self
    }

    /// Whether request bodies are kept in [`RecordedRequest::body`]
    /// (default true). Without, a body of any size is only counted and
    /// hashed as it arrives (`body_len`, `body_sha256`), and the 64 MiB
    /// limit on kept bodies does not apply.
    pub fn keep_bodies(mut self, keep: bool) -> Self {
        self.keep_bodies = keep;
        self
    }

    /// Closes server-side connections idle (between requests) for this long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Serves at most `n` requests per connection; the n-th reply carries
    /// `Connection: close` and the server closes (nginx's `keepalive_requests`).
    pub fn keepalive_requests(mut self, n: u64) -> Self {
        self.keepalive_requests = Some(n.max(1));
        self
    }

    /// Only TLS 1.2.
    pub fn tls12_only(mut self) -> Self {
        self.tls_options.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Only TLS 1.3.
    pub fn tls13_only(mut self) -> Self {
        self.tls_options.versions = vec![&rustls::version::TLS13];
        self
    }

    /// ALPN protocols offered (default none).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.tls_options.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Resumption mode (default [`Resumption::Tickets`]).
    pub fn resumption(mut self, r: Resumption) -> Self {
        self.tls_options.resumption = r;
        self
    }

    /// TLS 1.3 tickets sent per full handshake (default 2, rustls's default).
    pub fn tls13_tickets(mut self, n: usize) -> Self {
        self.tls_options.tls13_tickets = n;
        self
    }

    /// Requires a client certificate issued by this CA (mTLS).
    pub fn require_client_cert(mut self, ca: CertificateDer<'static>) -> Self {
        self.tls_options.client_ca = Some(ca);
        self
    }

    /// Binds 127.0.0.1:0 and starts the accept thread.
    pub fn start(self) -> TestServer {
        let tls_options = self.tls_options;
        let tls = self
            .tls
            .map(|(chain, key)| tls_options.server_config(chain, key));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        raise_backlog(&listener);
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared::new(addr, tls, self.handler, self.accept));
        *shared.on_head.write().unwrap_or_else(|p| p.into_inner()) = self.on_head;
        shared
            .keep_bodies
            .store(self.keep_bodies, std::sync::atomic::Ordering::SeqCst);
        shared.set_idle_timeout(self.idle_timeout);
        shared.set_keepalive_requests(self.keepalive_requests);
        let s = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("test-server-accept-{}", addr.port()))
            .spawn(move || accept_loop(s, listener))
            .expect("spawn accept thread");
        TestServer {
            shared,
            accept_thread: Some(accept_thread),
        }
    }
}
