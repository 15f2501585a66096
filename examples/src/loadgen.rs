//! loadgen: C concurrent keep-alive streams of sequential requests through
//! one engine on one thread, reported as one JSON line; or, with `--idle C`,
//! the memory each idle warmed connection costs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rotary::{Config, Engine, Event, RequestOptions, Trust};

use crate::args::Args;
use crate::coordinator::{Coordinator, Settings};
use crate::pki::Ca;
use crate::usage::{rusage, vm_rss_kib};
use crate::{finish, Failure, Output, TempDir};

const HELP: &str = "\
loadgen: load through one rotary engine on one thread, as one JSON line.

usage: cargo run --release --example loadgen -- [FLAGS]

  --url URL            target; without it, a local TLS server starts in this
                       process and URL is its /bytes/5 (5-byte bodies). Its
                       CPU and memory then count too: for client-only numbers
                       point --url at `--example rotation -- --serve ADDR`
  --cacert FILE        trust only the CA certificates in FILE (PEM)
  --proxy URL          go through this http:// or https:// proxy (CONNECT
                       tunnels for https://); its own CPU is not loadgen's
  --conns C            concurrent keep-alive streams (= max connections) [1]
  --requests N         requests in total, spread over the streams     [1000]
  --max-age D          connection max age                             [15m]
  --idle-timeout D     connection idle timeout                        [90s]
  --method M           request method                                 [GET]
  --body-bytes B       request body bytes sent with each request      [0]
  --idle C             instead: open C connections, warm each with one
                       request, hold them idle, report VmRSS per connection
  --hold-secs S        how long --idle holds the connections          [2]
  -h, --help           this text

Load output keys: client, conns, requests (completed, failed ones too),
errors (requests that failed or got a status >= 400), wall_s, req_per_s
(successful requests per second), cpu_user_s, cpu_sys_s, cpu_us_per_req
(per completed request), max_rss_kib (getrusage of the whole process at the
end), connections_opened, body_bytes (response body bytes received in
total), p50_us, p99_us (latency of the successful requests, from an HDR
histogram with 3 significant digits).
Idle output keys: client, idle_conns, rss_before_kib, rss_after_kib, kib_per_conn.
Exit code 0; 1 when any request failed (the JSON line is still printed);
2 for bad flags or a --url that is not an absolute http(s) URL; 3 for an
unreadable --cacert.";

/// Most connections loadgen opens at once.
const MAX_CONNS: usize = 100_000;
/// Largest request body.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest latency the histogram tells apart, µs (longer ones count as this):
/// above the 30 s request deadline.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Run loadgen with `args` (without the program name); returns the exit code.
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    finish("loadgen", out, run(args, out))
}

#[derive(Clone)]
struct Opts {
    url: Option<String>,
    cacert: Option<PathBuf>,
    proxy: Option<rotary::Proxy>,
    conns: usize,
    requests: u64,
    max_age: Option<Duration>,
    idle_timeout: Option<Duration>,
    method: http::Method,
    body_bytes: usize,
    idle: Option<usize>,
    hold: Duration,
}

fn parse(args: Vec<String>, out: &Output) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let mut o = Opts {
        url: None,
        cacert: None,
        proxy: None,
        conns: 1,
        requests: 1000,
        max_age: None,
        idle_timeout: None,
        method: http::Method::GET,
        body_bytes: 0,
        idle: None,
        hold: Duration::from_secs(2),
    };
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--url" => o.url = Some(a.value(&arg)?),
            "--cacert" => o.cacert = Some(PathBuf::from(a.value(&arg)?)),
            "--proxy" => {
                let url = a.value(&arg)?;
                let proxy = rotary::Proxy::parse(&url)
                    .map_err(|e| Failure::usage(format!("--proxy: {e}")))?;
                o.proxy = Some(proxy);
            }
            "--conns" => o.conns = a.parse(&arg)?,
            "--requests" => o.requests = a.parse(&arg)?,
            "--max-age" => o.max_age = Some(a.duration(&arg)?),
            "--idle-timeout" => o.idle_timeout = Some(a.duration(&arg)?),
            "--method" => {
                let m = a.value(&arg)?;
                o.method = http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| Failure::usage(format!("--method: bad method {m:?}")))?;
            }
            "--body-bytes" => o.body_bytes = a.parse(&arg)?,
            "--idle" => o.idle = Some(a.parse(&arg)?),
            "--hold-secs" => o.hold = a.duration(&arg)?,
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(None);
            }
            _ => return Err(a.unknown(&arg)),
        }
    }
    if !(1..=MAX_CONNS).contains(&o.conns) || o.idle.is_some_and(|c| !(1..=MAX_CONNS).contains(&c))
    {
        return Err(Failure::usage(format!(
            "--conns and --idle take 1 to {MAX_CONNS}"
        )));
    }
    if o.body_bytes > MAX_BODY {
        return Err(Failure::usage(format!(
            "--body-bytes is at most {MAX_BODY}"
        )));
    }
    if o.max_age.is_some_and(|d| d.is_zero()) {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    if let Some(url) = &o.url {
        check_url(url)?;
    }
    Ok(Some(o))
}

/// A `--url` loadgen can send to: absolute, `http` or `https`, with a host.
/// Anything else would fail every request the same way, so it is refused
/// before the engine starts, as bad flags are.
fn check_url(url: &str) -> Result<(), Failure> {
    let bad = |why: &str| Failure::usage(format!("--url {url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
        None => return Err(bad("not absolute (needs http:// or https://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}

/// A built-in server when no --url is given (kept alive while loadgen runs).
struct Local {
    _server: Coordinator,
    _dir: TempDir,
}

fn local_server(o: &mut Opts, out: &Output) -> Result<Option<Local>, Failure> {
    if o.url.is_some() {
        return Ok(None);
    }
    let fail = |e: String| Failure::new(1, format!("local server: {e}"));
    let ca = Ca::new("rotary loadgen CA").map_err(fail)?;
    let cert = ca.issue(&["localhost", "127.0.0.1"]).map_err(fail)?;
    let dir = TempDir::new("loadgen").map_err(|e| fail(e.to_string()))?;
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, ca.pem()).map_err(|e| fail(e.to_string()))?;
    let server = Coordinator::start("127.0.0.1:0", &cert, Settings::default())
        .map_err(|e| fail(e.to_string()))?;
    out.err_line(
        "loadgen: no --url: using a local server in this process (its CPU and memory count too)",
    );
    o.url = Some(server.url("/bytes/5"));
    o.cacert = Some(file);
    Ok(Some(Local {
        _server: server,
        _dir: dir,
    }))
}

fn engine(o: &Opts, conns: usize) -> Result<Engine, Failure> {
    let mut config = Config::default();
    if let Some(ca) = &o.cacert {
        if let Err(e) = std::fs::metadata(ca) {
            return Err(Failure::new(
                3,
                format!("cannot read CA file {}: {e}", ca.display()),
            ));
        }
        config.trust = Trust::pem_file(ca);
    }
    config.policy.max_connections = conns;
    if let Some(proxy) = &o.proxy {
        config.proxy = rotary::Proxies::all(proxy.clone());
    }
    if o.max_age.is_some() {
        config.policy.max_age = o.max_age;
    }
    if o.idle_timeout.is_some() {
        config.policy.idle_timeout = o.idle_timeout;
    }
    config.dns_threads = 1;
    Engine::new(config).map_err(|e| match (&e, &o.cacert) {
        (rotary::BuildError::Trust { .. }, Some(ca)) => {
            Failure::new(3, format!("CA file {}: {e}", ca.display()))
        }
        (rotary::BuildError::Config(_), _) => Failure::usage(e.to_string()),
        _ => Failure::new(1, format!("cannot start the engine: {e}")),
    })
}

fn request(o: &Opts, url: &str, body: &Bytes) -> Result<http::Request<Bytes>, Failure> {
    http::Request::builder()
        .method(o.method.clone())
        .uri(url)
        .body(body.clone())
        .map_err(|e| Failure::usage(format!("bad request for {url:?}: {e}")))
}

fn run(args: Vec<String>, out: &Output) -> Result<i32, Failure> {
    let Some(mut o) = parse(args, out)? else {
        return Ok(0);
    };
    let _local = local_server(&mut o, out)?;
    let url = o.url.clone().unwrap_or_default();
    if let Some(c) = o.idle {
        return idle(&o, &url, c, out);
    }
    let body = Bytes::from(vec![b'x'; o.body_bytes]);
    // Refuse a bad URL before any load starts.
    request(&o, &url, &body)?;
    let mut engine = engine(&o, o.conns)?;
    let opts = RequestOptions::default().deadline(Duration::from_secs(30));
    let total = o.requests;
    let mut started: HashMap<rotary::RequestId, Instant> = HashMap::with_capacity(o.conns);
    // Fixed memory however many requests run (a vector of samples grew 8
    // bytes a request and hid any real growth in max_rss_kib).
    let mut latencies = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| Failure::new(1, format!("latency histogram: {e}")))?;
    let (mut submitted, mut done, mut errors, mut body_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = Instant::now();
    while submitted < total && started.len() < o.conns {
        started.insert(
            engine.submit(request(&o, &url, &body)?, opts),
            Instant::now(),
        );
        submitted += 1;
    }
    while done < total {
        engine
            .poll(Some(Duration::from_secs(1)))
            .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
        while let Some(ev) = engine.next_event() {
            let (id, ok) = match ev {
                Event::Response { id, response, .. } => {
                    body_bytes += response.body().len() as u64;
                    let status = response.status();
                    // A 404 or a 503 is a failed request, not load served.
                    if status.as_u16() >= 400 {
                        first_error.get_or_insert_with(|| format!("HTTP status {status}"));
                    }
                    (id, status.as_u16() < 400)
                }
                Event::Failed { id, error, .. } => {
                    first_error.get_or_insert_with(|| error.to_string());
                    (id, false)
                }
                _ => continue,
            };
            let Some(t0) = started.remove(&id) else {
                continue;
            };
            done += 1;
            if ok {
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.clamp(1, MAX_LATENCY_US));
            } else {
                errors += 1;
            }
            if submitted < total {
                started.insert(
                    engine.submit(request(&o, &url, &body)?, opts),
                    Instant::now(),
                );
                submitted += 1;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let stats = engine.stats();
    engine.shutdown();
    let ru = rusage();
    // value_at_quantile is 0 on an empty histogram.
    let pct = |p: f64| -> u64 { latencies.value_at_quantile(p) };
    let succeeded = done - errors;
    let per_req = if done > 0 {
        (ru.user_s + ru.sys_s) * 1e6 / done as f64
    } else {
        0.0
    };
    out.line(format!(
        concat!(
            r#"{{"client":"rotary","conns":{},"requests":{},"errors":{},"wall_s":{:.6},"#,
            r#""req_per_s":{:.1},"cpu_user_s":{:.6},"cpu_sys_s":{:.6},"cpu_us_per_req":{:.2},"#,
            r#""max_rss_kib":{},"connections_opened":{},"body_bytes":{},"p50_us":{},"p99_us":{}}}"#
        ),
        o.conns,
        done,
        errors,
        wall,
        if wall > 0.0 {
            succeeded as f64 / wall
        } else {
            0.0
        },
        ru.user_s,
        ru.sys_s,
        per_req,
        ru.max_rss_kib,
        stats.connections_opened,
        body_bytes,
        pct(0.50),
        pct(0.99),
    ));
    match first_error {
        Some(e) => Err(Failure::new(
            1,
            format!("{errors} of {done} requests failed; first: {e}"),
        )),
        None => Ok(0),
    }
}

fn idle(o: &Opts, url: &str, c: usize, out: &Output) -> Result<i32, Failure> {
    let body = Bytes::from(vec![b'x'; o.body_bytes]);
    request(o, url, &body)?;
    let mut idle_opts = o.clone();
    // Held connections must not age or idle out during the hold.
    idle_opts.max_age = o.max_age.or(Some(Duration::from_secs(24 * 3600)));
    idle_opts.idle_timeout = o.idle_timeout.or(Some(Duration::from_secs(24 * 3600)));
    let mut engine = engine(&idle_opts, c)?;
    let before = vm_rss_kib().unwrap_or(0);
    let opts = RequestOptions::default().deadline(Duration::from_secs(60));
    let mut live = 0usize;
    for _ in 0..c {
        engine.submit(request(o, url, &body)?, opts);
        live += 1;
    }
    let mut first_error = None;
    while live > 0 {
        engine
            .poll(Some(Duration::from_secs(1)))
            .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Response { .. } => live -= 1,
                Event::Failed { error, .. } => {
                    live -= 1;
                    first_error.get_or_insert_with(|| error.to_string());
                }
                _ => {}
            }
        }
    }
    let until = Instant::now() + o.hold;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        engine
            .poll(Some(left))
            .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
        while engine.next_event().is_some() {}
    }
    let conns = engine.stats().connections;
    let after = vm_rss_kib().unwrap_or(0);
    let per = if conns > 0 {
        after.saturating_sub(before) as f64 / conns as f64
    } else {
        0.0
    };
    out.line(format!(
        r#"{{"client":"rotary","idle_conns":{conns},"rss_before_kib":{before},"rss_after_kib":{after},"kib_per_conn":{per:.2}}}"#
    ));
    engine.shutdown();
    match first_error {
        Some(e) => Err(Failure::new(
            1,
            format!("warming requests failed; first: {e}"),
        )),
        None => Ok(0),
    }
}
