//! A blocking, thread-per-connection HTTP/1.1 test server, plain or over rustls,
//! whose every reply is scripted by the test: status, headers, body, framing,
//! delays, closes, resets, stalls and garbage. It counts connections, handshakes
//! and requests, records every request, and can rotate its certificate for new
//! handshakes while sessions made under the old one still resume.
//!
//! Independent of the engine's and of rotary-proto's code on purpose.
//!
//! This file owns [`TestServer`], the handle a test holds: what it may ask
//! (counters, records, waits), change while the server runs (handler, hooks,
//! idle timeout, request limit, certificate) and how it stops every thread
//! on drop. The parts, each owning its own piece:
//! - `builder`: [`ServerBuilder`], options until `start`;
//! - `script`: [`Reply`], [`Accept`], [`BodyPlan`], [`Framing`], [`Cut`] (what a test
//!   scripts, pure data);
//! - `request`: [`RecordedRequest`], [`ConnInfo`] and the request reader;
//! - `tls`: rustls config, the rotating resolver, the handshake, [`TlsInfo`];
//! - `shared`: the state every thread shares, [`ServerStats`], the stop flag;
//! - `conn`: the accept loop and serving one connection until it ends.
#![allow(dead_code)]

mod builder;
mod conn;
mod request;
mod script;
mod shared;
mod tls;

use std::fmt;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use super::sockopt::reset_supported;
pub use builder::ServerBuilder;
pub use request::{ConnInfo, RecordedRequest};
pub use script::{Accept, BodyPlan, Cut, Fill, Framing, Reply};
pub use shared::ServerStats;
pub use tls::{Resumption, TlsInfo};

use super::certs::Issued;
use super::lock;
use shared::Shared;

/// One connection's byte stream, plain or TLS.
type Io = super::stream::Stream<rustls::server::ServerConnection>;

/// How long `Drop` waits for the server's threads.
const JOIN_BOUND: Duration = Duration::from_secs(5);

/// The handler deciding each reply.
pub type Handler = Arc<dyn Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync>;
/// The hook deciding what happens to each accepted TCP connection.
pub type AcceptHook = Arc<dyn Fn(&ConnInfo) -> Accept + Send + Sync>;
/// The hook deciding, once a request's head is read, how much of its body
/// to read before answering (see [`BodyPlan`]).
pub type OnHead = Arc<dyn Fn(&RecordedRequest, &ConnInfo) -> BodyPlan + Send + Sync>;

/// A running test server; dropping it stops every thread and closes every connection.
pub struct TestServer {
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.shared.addr)
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

impl TestServer {
    /// A builder for a plain-HTTP server answering `200 ok` (add `.tls(..)` for TLS).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// A plain-HTTP server with this handler.
    pub fn plain(
        handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::builder().handler(handler).start()
    }

    /// A TLS server presenting `leaf`, with this handler.
    pub fn tls(
        leaf: &Issued,
        handler: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::builder().tls(leaf).handler(handler).start()
    }

    /// The listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// `http(s)://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.port())
    }

    /// `http(s)://127.0.0.1:<port><path>` (certificates from `issue` cover the IP too).
    pub fn url_ip(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port())
    }

    /// Replaces the handler for requests parsed from now on.
    pub fn set_handler(
        &self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> Reply + Send + Sync + 'static,
    ) {
        *self
            .shared
            .handler
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(f);
    }

    /// Replaces the accept hook for connections accepted from now on.
    pub fn set_on_accept(&self, f: impl Fn(&ConnInfo) -> Accept + Send + Sync + 'static) {
        *self
            .shared
            .accept
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Replaces the on-head hook for requests whose head is read from now on
    /// (see [`ServerBuilder::on_head`]).
    pub fn set_on_head(
        &self,
        f: impl Fn(&RecordedRequest, &ConnInfo) -> BodyPlan + Send + Sync + 'static,
    ) {
        *self
            .shared
            .on_head
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Sets (or clears) the idle timeout for waits that start from now on.
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        self.shared.set_idle_timeout(d);
    }

    /// Rotates the certificate: new full handshakes present `chain`; live
    /// connections go on, and sessions issued before still resume (and so still
    /// report the old chain to the client). Returns the new generation (2, 3, …).
    pub fn rotate(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> u64 {
        self.shared
            .resolver
            .as_ref()
            .expect("rotate needs a TLS server")
            .rotate(chain, key)
    }

    /// [`TestServer::rotate`] to an issued leaf.
    pub fn rotate_to(&self, leaf: &Issued) -> u64 {
        self.rotate(leaf.chain_der(), leaf.key_der())
    }

    /// The chain new full handshakes present, and its generation.
    pub fn current_chain(&self) -> (u64, Vec<CertificateDer<'static>>) {
        self.shared
            .resolver
            .as_ref()
            .expect("current_chain needs a TLS server")
            .current()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.state.lock().stats.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Connection facts of every connection that finished its (TLS) setup, in order.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.state.lock().conn_infos.clone()
    }

    /// The facts of connection `id`, once it finished its (TLS) setup.
    pub fn connection(&self, id: u64) -> Option<ConnInfo> {
        self.shared
            .state
            .lock()
            .conn_infos
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// The requests received on connection `id`, in order.
    pub fn requests_on(&self, id: u64) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.conn_id == id)
            .cloned()
            .collect()
    }

    /// Why TLS handshakes failed, as rustls said it.
    pub fn tls_errors(&self) -> Vec<String> {
        self.shared.state.lock().tls_errors.clone()
    }

    /// Waits until `pred` holds on the counters; false on timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&ServerStats) -> bool) -> bool {
        self.shared.state.wait_until(timeout, |s| pred(&s.stats))
    }

    /// Waits until `pred` holds, panicking with `what` and the counters on timeout.
    pub fn expect_until(&self, timeout: Duration, what: &str, pred: impl Fn(&ServerStats) -> bool) {
        if !self.wait_until(timeout, pred) {
            panic!(
                "test server: timed out after {timeout:?} waiting for {what}; stats: {:?}",
                self.stats()
            );
        }
    }

    /// Waits for at least `n` requests and returns all of them; panics on timeout.
    pub fn wait_for_requests(&self, n: u64, timeout: Duration) -> Vec<RecordedRequest> {
        self.expect_until(timeout, &format!("{n} requests"), |s| s.requests >= n);
        self.requests()
    }

    /// Waits until no connection thread is running (all closed); false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.connections_open == 0)
    }

    /// Sets (or clears) the per-connection request limit, see
    /// [`ServerBuilder::keepalive_requests`].
    pub fn set_keepalive_requests(&self, n: Option<u64>) {
        self.shared.set_keepalive_requests(n);
    }

    /// Closes every connection that is waiting for a request the way a server
    /// does at its idle timeout: TLS close_notify, then FIN. (Connections in the
    /// middle of reading a request see an abrupt close.)
    pub fn close_idle_gracefully(&self) {
        // A blocked read returns EOF after SHUT_RD; the connection thread then
        // closes gracefully, since its write side is still open.
        self.shared.shutdown_conns(Shutdown::Read);
    }

    /// Shuts down every live connection (FIN both ways, no close_notify),
    /// keeping the listener.
    pub fn close_all_connections(&self) {
        self.shared.shutdown_conns(Shutdown::Both);
    }

    /// Stops the server (same as dropping it).
    pub fn shutdown(self) {}
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let _g = lock(&shared.stop_lock);
            shared.stopping.store(true, Ordering::SeqCst);
            shared.stop_cv.notify_all();
        }
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&shared.addr, Duration::from_secs(1));
        shared.shutdown_conns(Shutdown::Both);
        // Connections accepted during shutdown may still be registering:
        // shut those down too, until every thread has ended.
        let stuck = shared
            .threads
            .join_within(JOIN_BOUND, self.accept_thread.take(), || {
                shared.shutdown_conns(Shutdown::Both)
            });
        if stuck > 0 {
            eprintln!(
                "test server {}: {stuck} thread(s) still running after {JOIN_BOUND:?}; detached",
                shared.addr
            );
        }
    }
}
