//! Workload g: one large body each way, through rotary,
//! hyper and curl, against the bench's nginx (a static file to download, a
//! WebDAV `PUT` sink to upload to).
//!
//! Each transfer runs in a client process of its own. rotary and hyper
//! first make one small request on their connection, read their RSS, then
//! time the transfer: wall time, CPU (`getrusage` before and after) and peak
//! RSS (`ru_maxrss`), so the handshake and start-up are outside the window
//! and "RSS growth" is what the transfer added. curl is timed whole from
//! this process (`RUSAGE_CHILDREN`); its start-up and handshake are inside
//! its numbers, and it has no "before" reading.
//!
//! * rotary downloads with `Engine::execute_into` into `io::sink()` (the
//!   streamed, flow-controlled path) and uploads the file nginx serves with
//!   `Body::file` (read a send window at a time).
//! * `rotary-fed` uploads from memory as hyper does: a `Body::stream` fed
//!   one shared 64 KiB `Bytes` slice per `BodyWanted` room (the same CPU
//!   work as hyper's body, without reading a file).
//! * hyper (one `http1` connection, current-thread tokio, tokio-rustls on
//!   ring) drops each body frame as it arrives and uploads a body that
//!   yields one 64 KiB `Bytes` over and over: streamed from memory, no copy.
//! * curl: `curl -o /dev/null` and `curl -T FILE`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;

use crate::measure::{self, Report};

/// The sizes measured: a small one and a large one, so that RSS growth
/// can be seen not to depend on the body's size.
pub(crate) const SIZES: [u64; 2] = [16 << 20, 256 << 20];

/// Where nginx serves a body of `len` bytes.
pub(crate) fn file_path(len: u64) -> String {
    format!("/big-{}m", len >> 20)
}

/// Where uploads go (nginx's dav location).
pub(crate) const SINK: &str = "/sink/";

/// Write the static files of every size into `www`: a repeated 1 MiB
/// pattern (nginx sends it with sendfile, whatever it holds).
pub(crate) fn write_files(www: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 131 % 251) as u8).collect();
    for len in SIZES {
        let path = www.join(file_path(len).trim_start_matches('/'));
        let mut f =
            std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        for _ in 0..len >> 20 {
            f.write_all(&block)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// What one transfer client is asked.
struct Args {
    url: String,
    ca: PathBuf,
    /// For uploads: the file to send (rotary, curl) and its length.
    file: Option<PathBuf>,
    bytes: u64,
    /// A small URL fetched first on the same connection.
    warm: String,
    /// rotary's receive window (`--receive-window`, for trying by hand;
    /// the engine's default otherwise).
    receive_window: Option<usize>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        ca: PathBuf::new(),
        file: None,
        bytes: 0,
        warm: String::new(),
        receive_window: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--url" => a.url = v,
            "--ca" => a.ca = PathBuf::from(v),
            "--file" => a.file = Some(PathBuf::from(v)),
            "--bytes" => a.bytes = v.parse().map_err(|_| format!("--bytes: {v:?}"))?,
            "--warm" => a.warm = v,
            "--receive-window" => {
                a.receive_window = Some(v.parse().map_err(|_| format!("--receive-window: {v:?}"))?)
            }
            _ => return Err(format!("client: unknown flag {flag:?}")),
        }
    }
    Ok(a)
}

/// Before and after a transfer, in this process.
struct Window {
    t0: Instant,
    cpu0: measure::Cpu,
    rss0: u64,
}

impl Window {
    fn start() -> Window {
        measure::trim_heap();
        Window {
            rss0: measure::vm_rss_kib().unwrap_or(0),
            cpu0: measure::cpu(),
            t0: Instant::now(),
        }
    }

    fn report(self, bytes: u64) -> Report {
        let wall = self.t0.elapsed();
        let cpu = measure::cpu();
        let mut r = Report::default();
        r.put("bytes", bytes)
            .put("wall_s", format!("{:.4}", wall.as_secs_f64()))
            .put(
                "cpu_s",
                format!(
                    "{:.4}",
                    (cpu.user_us + cpu.sys_us - self.cpu0.user_us - self.cpu0.sys_us) / 1e6
                ),
            )
            .put("peak_rss_kib", cpu.max_rss_kib)
            .put("base_rss_kib", self.rss0);
        r
    }
}

/// `compare client rotary|hyper|curl download|upload ...`: the RESULT line.
pub(crate) fn client(which: &str, mode: &str, args: &[String]) -> Result<Report, String> {
    let a = parse(args)?;
    let upload = match mode {
        "download" => false,
        "upload" => true,
        _ => return Err(format!("client: unknown mode {mode:?}")),
    };
    match which {
        "rotary" => rotary(&a, upload),
        "rotary-fed" if upload => rotary_fed(&a),
        "hyper" => hyper(&a, upload),
        "curl" => curl(&a, upload),
        which if crate::blocking::CLIENTS.contains(&which) => blocking(which, &a, upload),
        _ => Err(format!("client: unknown {which:?}")),
    }
}

fn rotary(a: &Args, upload: bool) -> Result<Report, String> {
    use rotary::{Body, Config, Engine, RequestOptions, Trust};
    let mut config = Config::default();
    config.trust = Trust::pem_file(&a.ca);
    config.dns_threads = 1;
    let mut engine = Engine::new(config).map_err(|e| format!("rotary engine: {e}"))?;
    let mut opts = RequestOptions::default().deadline(Duration::from_secs(120));
    if let Some(w) = a.receive_window {
        opts = opts.receive_window(w);
    }
    let warm = http::Request::get(&a.warm)
        .body(())
        .map_err(|e| e.to_string())?;
    engine
        .execute(warm, opts)
        .map_err(|e| format!("warm-up: {e}"))?;
    let w = Window::start();
    let got = if upload {
        let file = a.file.as_ref().ok_or("upload: --file needed")?;
        let body = Body::file(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let req = http::Request::put(&a.url)
            .body(body)
            .map_err(|e| e.to_string())?;
        let resp = engine
            .execute(req, opts)
            .map_err(|e| format!("upload: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("upload answered {}", resp.status()));
        }
        a.bytes
    } else {
        let mut sink = Counted(0);
        let req = http::Request::get(&a.url)
            .body(())
            .map_err(|e| e.to_string())?;
        let head = engine
            .execute_into(req, opts, &mut sink)
            .map_err(|e| format!("download: {e}"))?;
        if !head.status().is_success() {
            return Err(format!("download answered {}", head.status()));
        }
        sink.0
    };
    if got != a.bytes {
        return Err(format!("moved {got} bytes, {} expected", a.bytes));
    }
    Ok(w.report(got))
}

/// A blocking client (workload h's): the warm-up request on the
/// connection, then one body each way through its `Read`/`File` API.
fn blocking(which: &str, a: &Args, upload: bool) -> Result<Report, String> {
    let client = crate::blocking::Blocking::new(which, &a.ca, 1)?;
    client
        .get(&a.warm, &mut Vec::new())
        .map_err(|e| format!("warm-up: {e}"))?;
    let w = Window::start();
    let file = if upload {
        Some(a.file.as_deref().ok_or("upload: --file needed")?)
    } else {
        None
    };
    let got = client.transfer(&a.url, file)?;
    if got != a.bytes {
        return Err(format!("moved {got} bytes, {} expected", a.bytes));
    }
    Ok(w.report(got))
}

/// rotary's upload from memory: a fed stream of one repeated chunk.
fn rotary_fed(a: &Args) -> Result<Report, String> {
    use rotary::{Body, Config, Engine, Event, RequestOptions, Trust};
    let mut config = Config::default();
    config.trust = Trust::pem_file(&a.ca);
    config.dns_threads = 1;
    let mut engine = Engine::new(config).map_err(|e| format!("rotary engine: {e}"))?;
    let opts = RequestOptions::default().deadline(Duration::from_secs(120));
    let warm = http::Request::get(&a.warm)
        .body(())
        .map_err(|e| e.to_string())?;
    engine
        .execute(warm, opts)
        .map_err(|e| format!("warm-up: {e}"))?;
    while engine.next_event().is_some() {}
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let w = Window::start();
    let req = http::Request::put(&a.url)
        .body(Body::stream(Some(a.bytes)))
        .map_err(|e| e.to_string())?;
    let id = engine.submit(req, opts);
    let mut left = a.bytes;
    loop {
        engine.poll(None).map_err(|e| format!("poll: {e}"))?;
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::BodyWanted { room, .. } => {
                    let mut room = room;
                    while room > 0 && left > 0 {
                        let n = room.min(chunk.len()).min(left as usize);
                        engine
                            .send_body(id, chunk.slice(..n))
                            .map_err(|e| format!("send_body: {e}"))?;
                        room -= n;
                        left -= n as u64;
                    }
                    if left == 0 {
                        // A later ask after the end is refused: harmless.
                        let _ = engine.end_body(id, None);
                    }
                }
                Event::Response { response, .. } => {
                    if !response.status().is_success() {
                        return Err(format!("upload answered {}", response.status()));
                    }
                    return Ok(w.report(a.bytes));
                }
                Event::Failed { error, .. } => return Err(format!("upload: {error}")),
                _ => {}
            }
        }
    }
}

/// `io::sink()` that counts.
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A body of `left` bytes, one shared 64 KiB `Bytes` at a time.
struct Repeat {
    chunk: Bytes,
    left: u64,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = (self.chunk.len() as u64).min(self.left) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// hyper's request body: empty for the GETs, [`Repeat`] for the upload.
enum Out {
    Empty,
    Repeat(Repeat),
}

impl hyper::body::Body for Out {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Out::Empty => Poll::Ready(None),
            Out::Repeat(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Out::Empty => true,
            Out::Repeat(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Out::Empty => hyper::body::SizeHint::with_exact(0),
            Out::Repeat(r) => r.size_hint(),
        }
    }
}

fn hyper(a: &Args, upload: bool) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    rt.block_on(async {
        let uri: hyper::Uri = a.url.parse().map_err(|e| format!("{}: {e}", a.url))?;
        let host = uri.host().ok_or("url without host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&a.ca)
            .map_err(|e| format!("{}: {e}", a.ca.display()))?
        {
            roots
                .add(cert.map_err(|e| format!("{}: {e}", a.ca.display()))?)
                .map_err(|e| format!("{}: {e}", a.ca.display()))?;
        }
        let provider = Arc::new(rotary::crypto_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("rustls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Out>(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        let request = |method: &str, url: &str, body: Out| {
            http::Request::builder()
                .method(method)
                .uri(url)
                .header(http::header::HOST, format!("{host}:{port}"))
                .body(body)
                .map_err(|e| e.to_string())
        };
        // Drain a response body frame by frame; its length.
        async fn drain(resp: hyper::Response<hyper::body::Incoming>) -> Result<u64, String> {
            let mut body = resp.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("body: {e}"))?;
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                }
            }
            Ok(n)
        }
        let warm = send
            .send_request(request("GET", &a.warm, Out::Empty)?)
            .await
            .map_err(|e| format!("warm-up: {e}"))?;
        drain(warm).await?;
        let w = Window::start();
        let got = if upload {
            let body = Out::Repeat(Repeat {
                chunk: Bytes::from(vec![b'u'; 64 * 1024]),
                left: a.bytes,
            });
            let resp = send
                .send_request(request("PUT", &a.url, body)?)
                .await
                .map_err(|e| format!("upload: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("upload answered {}", resp.status()));
            }
            drain(resp).await?;
            a.bytes
        } else {
            let resp = send
                .send_request(request("GET", &a.url, Out::Empty)?)
                .await
                .map_err(|e| format!("download: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("download answered {}", resp.status()));
            }
            drain(resp).await?
        };
        if got != a.bytes {
            return Err(format!("moved {got} bytes, {} expected", a.bytes));
        }
        Ok(w.report(got))
    })
}

/// curl, if installed.
pub(crate) fn find_curl() -> Option<PathBuf> {
    ["/usr/bin/curl", "/usr/local/bin/curl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn curl(a: &Args, upload: bool) -> Result<Report, String> {
    let bin = find_curl().ok_or("curl is not installed (apt-get install curl)")?;
    let mut cmd = Command::new(bin);
    cmd.arg("-sS")
        .arg("--fail")
        .arg("--cacert")
        .arg(&a.ca)
        .arg("-o")
        .arg("/dev/null")
        .arg("-w")
        .arg("%{size_download} %{size_upload}");
    if upload {
        cmd.arg("-T")
            .arg(a.file.as_ref().ok_or("upload: --file needed")?);
    }
    cmd.arg(&a.url).stdin(Stdio::null());
    let t0 = Instant::now();
    let out = cmd.output().map_err(|e| format!("spawn curl: {e}"))?;
    let wall = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let moved: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    let got = if upload { moved.get(1) } else { moved.first() }
        .copied()
        .unwrap_or(0);
    if got != a.bytes {
        return Err(format!("curl moved {got} bytes, {} expected", a.bytes));
    }
    // SAFETY: getrusage writes one `rusage` into memory we own; zeroed is a
    // valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Err("getrusage(RUSAGE_CHILDREN) failed".into());
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let mut r = Report::default();
    r.put("bytes", got)
        .put("wall_s", format!("{:.4}", wall.as_secs_f64()))
        .put("cpu_s", format!("{:.4}", s(ru.ru_utime) + s(ru.ru_stime)))
        .put("peak_rss_kib", ru.ru_maxrss)
        .put("base_rss_kib", 0);
    Ok(r)
}

/// The clients in the order they run (and appear in the table).
pub(crate) const CLIENTS: [&str; 7] = [
    "rotary",
    "rotary-fed",
    "hyper",
    "curl",
    "rotary-client",
    "reqwest",
    "ureq",
];

/// One transfer's runs (a result or why not), by (direction, size, client).
pub(crate) type Runs =
    BTreeMap<(bool, u64, &'static str), Vec<Result<BTreeMap<String, String>, String>>>;

/// The client arguments for one transfer.
pub(crate) fn args(
    which: &str,
    upload: bool,
    len: u64,
    base: &str,
    ca: &Path,
    www: &Path,
) -> Vec<String> {
    let mut v = vec![
        which.to_owned(),
        if upload { "upload" } else { "download" }.to_owned(),
        "--ca".into(),
        ca.display().to_string(),
        "--bytes".into(),
        len.to_string(),
        "--warm".into(),
        format!("{base}{}", crate::server::SMALL),
        "--url".into(),
    ];
    if upload {
        v.push(format!("{base}{SINK}{which}-{}m", len >> 20));
        v.push("--file".into());
        v.push(
            www.join(file_path(len).trim_start_matches('/'))
                .display()
                .to_string(),
        );
    } else {
        v.push(format!("{base}{}", file_path(len)));
    }
    v
}

/// Medians of one transfer's successful runs.
#[derive(Debug, Clone, Copy)]
struct Medians {
    mb_s: f64,
    cpu_per_gib: f64,
    peak_mib: f64,
    growth_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn medians(
    which: &str,
    runs: &[Result<BTreeMap<String, String>, String>],
) -> Result<Medians, String> {
    let ok: Vec<&BTreeMap<String, String>> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    if ok.is_empty() {
        return Err(runs
            .iter()
            .find_map(|r| r.as_ref().err().cloned())
            .unwrap_or_else(|| "no run".into()));
    }
    let num = |m: &BTreeMap<String, String>, k: &str| -> f64 {
        m.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    let each =
        |f: &dyn Fn(&BTreeMap<String, String>) -> f64| median(ok.iter().map(|m| f(m)).collect());
    Ok(Medians {
        mb_s: each(&|m| num(m, "bytes") / num(m, "wall_s") / 1e6),
        cpu_per_gib: each(&|m| num(m, "cpu_s") / (num(m, "bytes") / f64::from(1u32 << 30))),
        peak_mib: each(&|m| num(m, "peak_rss_kib") / 1024.0),
        growth_mib: (which != "curl")
            .then(|| each(&|m| (num(m, "peak_rss_kib") - num(m, "base_rss_kib")) / 1024.0)),
    })
}

/// The markdown section: one row per transfer and client, then verdicts.
pub(crate) fn markdown(runs: &Runs, rounds: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## g. bodies: one large body each way (medians of {rounds} runs)\n"
    );
    md.push_str("| transfer | client | MB/s | client CPU s/GiB | peak RSS MiB | RSS growth MiB |\n|---|---|---|---|---|---|\n");
    let mut found: BTreeMap<(bool, u64, &str), Medians> = BTreeMap::new();
    for ((upload, len, which), r) in runs {
        let what = format!(
            "{} {} MiB",
            if *upload { "upload" } else { "download" },
            len >> 20
        );
        match medians(which, r) {
            Ok(m) => {
                found.insert((*upload, *len, which), m);
                let growth = m
                    .growth_mib
                    .map_or("n/a (whole process)".into(), |g| format!("{g:.2}"));
                let _ = writeln!(
                    md,
                    "| {what} | {which} | {:.0} | {:.3} | {:.1} | {growth} |",
                    m.mb_s, m.cpu_per_gib, m.peak_mib
                );
            }
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {what} | {which} | not measured: {} | | | |",
                    e.replace('|', "/")
                );
            }
        }
    }
    md.push_str("\n| target | transfer | rotary | against | verdict |\n|---|---|---|---|---|\n");
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    for upload in [false, true] {
        let dir = if upload { "upload" } else { "download" };
        let big = SIZES[1];
        let what = format!("{dir} {} MiB", big >> 20);
        let r = found.get(&(upload, big, "rotary"));
        match (r, found.get(&(upload, big, "curl"))) {
            (Some(r), Some(c)) => {
                let _ = writeln!(
                    md,
                    "| throughput ≥ curl's | {what} | {:.0} MB/s | curl {:.0} MB/s | {} |",
                    r.mb_s,
                    c.mb_s,
                    verdict(r.mb_s >= c.mb_s)
                );
            }
            _ => {
                let _ = writeln!(md, "| throughput ≥ curl's | {what} | | | not measured |");
            }
        }
        let mut sides = vec![("rotary", r)];
        if upload {
            sides.push(("rotary-fed", found.get(&(upload, big, "rotary-fed"))));
        }
        for (label, r) in sides {
            match (r, found.get(&(upload, big, "hyper"))) {
                (Some(r), Some(h)) => {
                    let _ = writeln!(
                        md,
                        "| CPU/GiB ≤ 0.8× hyper's | {what} | {label} {:.3} s | hyper {:.3} s ({:.2}×) | {} |",
                        r.cpu_per_gib,
                        h.cpu_per_gib,
                        r.cpu_per_gib / h.cpu_per_gib,
                        verdict(r.cpu_per_gib <= 0.8 * h.cpu_per_gib)
                    );
                }
                _ => {
                    let _ = writeln!(
                        md,
                        "| CPU/GiB ≤ 0.8× hyper's | {what} | {label} | | not measured |"
                    );
                }
            }
        }
        if !upload {
            match found
                .get(&(upload, big, "rotary-client"))
                .and_then(|m| m.growth_mib)
            {
                Some(g) => {
                    let _ = writeln!(
                        md,
                        "| RSS growth ≤ 0.5 MiB through `Client` | {what} | {g:.2} MiB | | {} |",
                        verdict(g <= 0.5)
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| RSS growth ≤ 0.5 MiB through `Client` | {what} | | | not measured |"
                    );
                }
            }
        }
        for len in SIZES {
            let what = format!("{dir} {} MiB", len >> 20);
            match found
                .get(&(upload, len, "rotary"))
                .and_then(|m| m.growth_mib)
            {
                Some(g) => {
                    let _ = writeln!(
                        md,
                        "| RSS growth ≤ 2 MiB | {what} | {g:.1} MiB | | {} |",
                        verdict(g <= 2.0)
                    );
                }
                None => {
                    let _ = writeln!(md, "| RSS growth ≤ 2 MiB | {what} | | | not measured |");
                }
            }
        }
    }
    md
}
