//! The hyper side: hyper-util's pooled legacy `Client` on a current-thread
//! tokio runtime, TLS through tokio-rustls on the ring provider, behind a
//! connector that counts the connections it opens.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::measure::{self, Clock, Latencies, Phase, Report};
use crate::ClientArgs;

/// TCP connect + TLS handshake, counting every connection it starts.
#[derive(Clone)]
struct Connector {
    tls: tokio_rustls::TlsConnector,
    opened: Arc<AtomicU64>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let tls = self.tls.clone();
        Box::pin(async move {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, "uri without host");
            let host = uri.host().ok_or_else(bad)?.to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tls.connect(name, tcp).await?;
            Ok(TlsIo(TokioIo::new(tls)))
        })
    }
}

/// The TLS stream as hyper sees it.
struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

type HttpClient = Client<Connector, Empty<Bytes>>;

fn tls_config(a: &ClientArgs) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(&a.ca).map_err(|e| format!("read {}: {e}", a.ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    // The provider rotary builds (`rotary::crypto_provider`): the engine's
    // (ring by default), with TLS13_AES_128_GCM_SHA256 offered first, so
    // both clients negotiate the same suite and key exchange and the
    // comparison is of the engines, not of the ciphers.
    let provider = Arc::new(rotary::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Like rotary's default Resumption::Never: every handshake is full.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn client(a: &ClientArgs) -> Result<(HttpClient, Arc<AtomicU64>), String> {
    let opened = Arc::new(AtomicU64::new(0));
    let connector = Connector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(a)?)),
        opened: opened.clone(),
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(600))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    Ok((client, opened))
}

fn request(a: &ClientArgs, uri: &Uri) -> hyper::Request<Empty<Bytes>> {
    let mut req = hyper::Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    if a.close {
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    req
}

async fn exchange(client: &HttpClient, req: hyper::Request<Empty<Bytes>>) -> Result<(), String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn uri(a: &ClientArgs) -> Result<Uri, String> {
    a.url
        .parse()
        .map_err(|e| format!("bad url {:?}: {e}", a.url))
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

struct Shared {
    phase: AtomicU8,
    completed: AtomicU64,
    failed_total: AtomicU64,
    first_error: Mutex<Option<String>>,
}

thread_local! {
    /// The measured window's latencies. The runtime has one thread, which
    /// runs every worker task and `block_on`, so one histogram serves all the
    /// tasks without a lock, as rotary's loop keeps one (a histogram per task
    /// would be ~70 KiB each at C = 256).
    static LATENCIES: RefCell<Latencies> = RefCell::new(Latencies::default());
}

/// One of `conns` closed loops; returns (requests, failed) of the measured
/// window, and records the latencies into `LATENCIES`.
async fn worker(
    client: HttpClient,
    shared: Arc<Shared>,
    a: Arc<ClientArgs>,
    uri: Uri,
) -> (u64, u64) {
    let (mut requests, mut failed) = (0, 0);
    while shared.phase.load(Ordering::Relaxed) != DONE {
        let t0 = Instant::now();
        let result = exchange(&client, request(&a, &uri)).await;
        shared.completed.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            shared.failed_total.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = shared.first_error.lock() {
                first.get_or_insert_with(|| e.clone());
            }
        }
        if shared.phase.load(Ordering::Relaxed) == MEASURE {
            requests += 1;
            match result {
                Ok(()) => LATENCIES.with(|l| l.borrow_mut().record_since(t0)),
                Err(_) => failed += 1,
            }
        }
    }
    (requests, failed)
}

/// Closed loop: `conns` tasks, each sending its next request as the last ends.
pub(crate) fn load(a: ClientArgs) -> Result<Report, String> {
    let uri = uri(&a)?;
    let (client, opened) = client(&a)?;
    let rt = runtime()?;
    let a = Arc::new(a);
    rt.block_on(async move {
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(WARM),
            completed: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            first_error: Mutex::new(None),
        });
        let workers: Vec<_> = (0..a.conns)
            .map(|_| {
                tokio::spawn(worker(
                    client.clone(),
                    shared.clone(),
                    a.clone(),
                    uri.clone(),
                ))
            })
            .collect();
        let mut clock = Clock::new(a.schedule);
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let before = clock.phase();
            let now = clock.tick(shared.completed.load(Ordering::Relaxed));
            let now = match now {
                Ok(p) => p,
                Err(e) => {
                    shared.phase.store(DONE, Ordering::Relaxed);
                    return Err(e);
                }
            };
            if now != before {
                let p = if now == Phase::Measure { MEASURE } else { DONE };
                shared.phase.store(p, Ordering::Relaxed);
            }
            if now == Phase::Done {
                break;
            }
        }
        let mut w = clock.window();
        for h in workers {
            let (requests, failed) = h.await.map_err(|e| format!("worker: {e}"))?;
            w.requests += requests;
            w.failed += failed;
        }
        LATENCIES.with(|l| w.latencies_us.add(&l.borrow()));
        let completed = shared.completed.load(Ordering::Relaxed);
        let failed_total = shared.failed_total.load(Ordering::Relaxed);
        if completed == failed_total {
            let first = shared
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(format!("every request failed; first: {first}"));
        }
        let mut r = Report::default();
        r.window(w)
            .put("failed_total", failed_total)
            .put("completed", completed)
            .put("opened", opened.load(Ordering::Relaxed))
            .put("max_rss_kib", measure::cpu().max_rss_kib);
        Ok(r)
    })
}

/// Opens `idle` connections (each carries one request), holds them idle and
/// reports RSS per connection.
pub(crate) fn idle(a: ClientArgs) -> Result<Report, String> {
    let uri = uri(&a)?;
    let (client, opened) = client(&a)?;
    let rt = runtime()?;
    let a = Arc::new(a);
    rt.block_on(async move {
        // Warm: one connection and one exchange before the baseline.
        exchange(&client, request(&a, &uri))
            .await
            .map_err(|e| format!("warm-up request: {e}"))?;
        let before = measure::vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
        let opened_before = opened.load(Ordering::Relaxed);
        let tasks: Vec<_> = (0..=a.idle)
            .map(|_| {
                let (client, req) = (client.clone(), request(&a, &uri));
                tokio::spawn(async move { exchange(&client, req).await })
            })
            .collect();
        let (mut failed, mut first_error) = (0usize, None);
        for t in tasks {
            if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = measure::vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
        // Connections the pool holds now: every one opened after the
        // baseline (none is closed: no idle timeout, keep-alive server).
        let open = opened.load(Ordering::Relaxed) - opened_before;
        measure::trim_heap();
        let trimmed = measure::vm_rss_kib().unwrap_or(after);
        let mut r = Report::default();
        r.put("conns", open)
            .put("failed", failed)
            .put("rss_before_kib", before)
            .put("rss_after_kib", after)
            .put("rss_trimmed_kib", trimmed)
            .put(
                "kib_per_conn_trimmed",
                format!(
                    "{:.2}",
                    trimmed.saturating_sub(before) as f64 / open.max(1) as f64
                ),
            )
            .put(
                "kib_per_conn",
                format!(
                    "{:.2}",
                    after.saturating_sub(before) as f64 / open.max(1) as f64
                ),
            );
        if let Some(e) = first_error {
            r.put("first_error", e.replace(char::is_whitespace, "_"));
        }
        drop(client);
        Ok(r)
    })
}
