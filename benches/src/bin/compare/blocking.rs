//! Workload h: rotary's blocking `Client` against the blocking clients a
//! runner author would otherwise pick, reqwest (`blocking`) and ureq: N
//! threads sharing one client, each making keep-alive `GET`s one after
//! another; and idle memory per connection.
//!
//! All three use rustls with `rotary::crypto_provider()` (ring, AES-128-GCM
//! first: the suite nginx is limited to anyway), trust the run's CA alone,
//! and keep connections alive (nginx allows any number of requests on one).

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::measure::{self, Clock, Latencies, Phase, Report};
use crate::ClientArgs;

/// The clients of this workload, as `compare client <name> ...` knows them.
pub(crate) const CLIENTS: [&str; 3] = ["rotary-client", "reqwest", "ureq"];

/// Versions the report names (kept in step with benches/Cargo.toml and
/// Cargo.lock).
pub(crate) const VERSIONS: &str = "reqwest 0.13 (blocking), ureq 3.5";

/// One blocking client shared by every thread.
pub(crate) enum Blocking {
    Rotary(rotary::Client),
    Reqwest(reqwest::blocking::Client),
    Ureq(ureq::Agent),
}

/// rustls for reqwest and ureq: the engine's provider, the run's CA.
fn rustls_config(ca: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| format!("CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("rustls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl Blocking {
    /// Client `which` for up to `conns` connections to one origin.
    pub(crate) fn new(which: &str, ca: &std::path::Path, conns: usize) -> Result<Blocking, String> {
        match which {
            "rotary-client" => {
                let mut config = rotary::Config::default();
                config.trust = rotary::Trust::pem_file(ca);
                config.policy.max_connections = conns.max(1);
                config.policy.max_age = None;
                config.policy.idle_timeout = Some(Duration::from_secs(600));
                rotary::Client::new(config)
                    .map(Blocking::Rotary)
                    .map_err(|e| format!("rotary client: {e}"))
            }
            "reqwest" => {
                let config = rustls_config(ca)?;
                reqwest::blocking::Client::builder()
                    .tls_backend_preconfigured(config)
                    .pool_max_idle_per_host(conns.max(1))
                    .pool_idle_timeout(Duration::from_secs(600))
                    .no_proxy()
                    .build()
                    .map(Blocking::Reqwest)
                    .map_err(|e| format!("reqwest: {e}"))
            }
            "ureq" => {
                let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
                let cert =
                    ureq::tls::Certificate::from_pem(&pem).map_err(|e| format!("ureq CA: {e}"))?;
                let tls = ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
                    .unversioned_rustls_crypto_provider(Arc::new(rotary::crypto_provider()))
                    .build();
                let agent = ureq::Agent::config_builder()
                    .tls_config(tls)
                    .max_idle_connections(conns.max(1))
                    .max_idle_connections_per_host(conns.max(1))
                    .max_idle_age(Duration::from_secs(600))
                    .proxy(None)
                    .build()
                    .new_agent();
                Ok(Blocking::Ureq(agent))
            }
            other => Err(format!("unknown blocking client {other:?}")),
        }
    }

    /// `GET url`, the whole body read into `buf` (reused); its length.
    pub(crate) fn get(&self, url: &str, buf: &mut Vec<u8>) -> Result<usize, String> {
        buf.clear();
        match self {
            Blocking::Rotary(c) => {
                let req = http::Request::get(url)
                    .body(())
                    .map_err(|e| e.to_string())?;
                let mut resp = c.send(req).map_err(|e| e.to_string())?;
                resp.body_mut()
                    .read_to_end(buf)
                    .map_err(|e| e.to_string())?;
            }
            Blocking::Reqwest(c) => {
                let mut resp = c.get(url).send().map_err(|e| e.to_string())?;
                resp.read_to_end(buf).map_err(|e| e.to_string())?;
            }
            Blocking::Ureq(a) => {
                let mut resp = a.get(url).call().map_err(|e| e.to_string())?;
                resp.body_mut()
                    .as_reader()
                    .read_to_end(buf)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(buf.len())
    }

    /// Connections this client opened, where it says.
    fn opened(&self) -> Option<u64> {
        match self {
            Blocking::Rotary(c) => c.stats().ok().map(|s| s.connections_opened),
            _ => None,
        }
    }
}

/// `conns` threads, one shared client, closed-loop `GET`s; the load keys
/// of the other workloads.
pub(crate) fn load(which: &str, a: &ClientArgs) -> Result<Report, String> {
    let client = Arc::new(Blocking::new(which, &a.ca, a.conns)?);
    // 0 warm, 1 measure, 2 done.
    let phase = Arc::new(AtomicU8::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let broken = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..a.conns {
        let (client, url) = (client.clone(), a.url.clone());
        let (phase, completed, failed) = (phase.clone(), completed.clone(), failed.clone());
        let (first_error, broken) = (first_error.clone(), broken.clone());
        threads.push(std::thread::spawn(move || {
            let mut lat = Latencies::default();
            let (mut measured, mut measured_failed) = (0u64, 0u64);
            let mut buf = Vec::with_capacity(8 * 1024);
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p == 2 || broken.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let ok = match client.get(&url, &mut buf) {
                    Ok(_) => true,
                    Err(e) => {
                        let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert(e);
                        failed.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                };
                if p == 1 && phase.load(Ordering::Relaxed) == 1 {
                    measured += 1;
                    if ok {
                        lat.record_since(t0);
                    } else {
                        measured_failed += 1;
                    }
                }
                completed.fetch_add(1, Ordering::Relaxed);
            }
            (lat, measured, measured_failed)
        }));
    }
    let mut clock = Clock::new(a.schedule);
    let result = loop {
        std::thread::sleep(Duration::from_millis(1));
        let done = completed.load(Ordering::Relaxed);
        if done > 100 && failed.load(Ordering::Relaxed) == done {
            break Err("every request failed".to_owned());
        }
        match clock.tick(done) {
            Ok(Phase::Warm) => {}
            Ok(Phase::Measure) => phase.store(1, Ordering::Relaxed),
            Ok(Phase::Done) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    phase.store(2, Ordering::Relaxed);
    if result.is_err() {
        broken.store(true, Ordering::Relaxed);
    }
    let mut latencies = Latencies::default();
    let (mut requests, mut failed_window) = (0, 0);
    for t in threads {
        let (lat, n, f) = t.join().map_err(|_| "a client thread panicked")?;
        latencies.add(&lat);
        requests += n;
        failed_window += f;
    }
    if let Err(e) = result {
        let first = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
        return Err(format!("{e}; first error: {}", first.unwrap_or_default()));
    }
    let mut w = clock.window();
    w.requests = requests;
    w.failed = failed_window;
    w.latencies_us = latencies;
    let mut r = Report::default();
    r.window(w)
        .put("threads", a.conns)
        .put("completed", completed.load(Ordering::Relaxed));
    if let Some(n) = client.opened() {
        r.put("opened", n);
    }
    Ok(r)
}

/// `idle` connections held idle by one client: as many threads each make
/// one request at once (so the pool holds that many connections), then
/// the client sits idle for 0.5 s; RSS per connection, as what dropping
/// the client gives back (and, for reference, the growth since one warm
/// connection, which also counts the threads' glibc arenas).
pub(crate) fn idle(which: &str, a: &ClientArgs) -> Result<Report, String> {
    let client = Arc::new(Blocking::new(which, &a.ca, a.idle)?);
    let mut buf = Vec::new();
    client.get(&a.url, &mut buf)?;
    measure::trim_heap();
    let before = measure::vm_rss_kib().ok_or("no VmRSS")?;
    let gate = Arc::new(std::sync::Barrier::new(a.idle));
    let threads: Vec<_> = (0..a.idle)
        .map(|_| {
            let (client, url, gate) = (client.clone(), a.url.clone(), gate.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    gate.wait();
                    client.get(&url, &mut Vec::new())
                })
                .map_err(|e| format!("spawn: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for t in threads {
        t.join().map_err(|_| "a client thread panicked")??;
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = measure::vm_rss_kib().ok_or("no VmRSS")?;
    measure::trim_heap();
    let trimmed = measure::vm_rss_kib().ok_or("no VmRSS")?;
    let opened = client.opened();
    // The client, and every connection with it, goes: what that gives back
    // is what the connections held. The threads' own traces (stacks are
    // unmapped at join, but each thread may have left glibc an arena) stay
    // on both sides of the difference, so they cancel out.
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
    measure::trim_heap();
    let gone = measure::vm_rss_kib().ok_or("no VmRSS")?;
    let n = a.idle.max(1) as f64;
    let per = |rss: u64| format!("{:.2}", (rss as f64 - gone as f64) / n);
    let mut r = Report::default();
    r.put("idle", a.idle)
        .put("kib_per_conn", per(after))
        .put("kib_per_conn_trimmed", per(trimmed))
        .put(
            "kib_growth_per_conn",
            format!("{:.2}", (after as f64 - before as f64) / n),
        );
    if let Some(n) = opened {
        r.put("opened", n);
    }
    Ok(r)
}

impl Blocking {
    /// One body each way, as workload g moves it: a download read into a
    /// 64 KiB buffer and counted, or an upload streamed from `file`; the
    /// bytes moved.
    pub(crate) fn transfer(
        &self,
        url: &str,
        file: Option<&std::path::Path>,
    ) -> Result<u64, String> {
        let Some(file) = file else {
            let mut body: Box<dyn std::io::Read> = match self {
                Blocking::Rotary(c) => {
                    let req = http::Request::get(url)
                        .body(())
                        .map_err(|e| e.to_string())?;
                    Box::new(c.send(req).map_err(|e| e.to_string())?.into_body())
                }
                Blocking::Reqwest(c) => Box::new(c.get(url).send().map_err(|e| e.to_string())?),
                Blocking::Ureq(a) => Box::new(
                    a.get(url)
                        .call()
                        .map_err(|e| e.to_string())?
                        .into_body()
                        .into_reader(),
                ),
            };
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match body.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("download: {e}")),
                }
            }
        };
        let len = std::fs::metadata(file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .len();
        let open = || std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()));
        let status = match self {
            Blocking::Rotary(c) => {
                let body = rotary::Body::file(file).map_err(|e| e.to_string())?;
                let req = http::Request::put(url)
                    .body(body)
                    .map_err(|e| e.to_string())?;
                let mut resp = c.send(req).map_err(|e| e.to_string())?;
                resp.body_mut()
                    .read_to_end(&mut Vec::new())
                    .map_err(|e| e.to_string())?;
                resp.status().as_u16()
            }
            Blocking::Reqwest(c) => {
                let resp = c
                    .put(url)
                    .body(reqwest::blocking::Body::sized(open()?, len))
                    .send()
                    .map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                resp.bytes().map_err(|e| e.to_string())?;
                status
            }
            Blocking::Ureq(a) => {
                let mut f = open()?;
                let mut resp = a
                    .put(url)
                    .header("content-length", len.to_string())
                    .send(ureq::SendBody::from_reader(&mut f))
                    .map_err(|e| e.to_string())?;
                resp.body_mut().read_to_vec().map_err(|e| e.to_string())?;
                resp.status().as_u16()
            }
        };
        if !(200..300).contains(&status) {
            return Err(format!("upload answered {status}"));
        }
        Ok(len)
    }
}
