//! fetch: a curl-like client on one rotary engine, showing which connection
//! served each request, how it was established and when the chain changed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{CloseReason, Config, Engine, Event, Handshake, Phase, RequestOptions, Trust};

use crate::args::{show, Args};
use crate::{finish, Failure, Output};

const HELP: &str = "\
fetch: a curl-like HTTP/1.1 client on the rotary engine.

usage: cargo run --example fetch -- [FLAGS] URL

  -X, --request METHOD   method                               [GET; POST with -d]
  -H, --header 'N: V'    add a request header (repeatable)
  -d, --data DATA        request body; @FILE reads it from FILE
  --cacert FILE          trust only the CA certificates in FILE (PEM)
  -i, --include          print the status line and headers before the body
  -v, --verbose          connection events on stderr: opened (address, TLS
                         version, cipher, full or resumed handshake, chain
                         SHA-256, and the verified path: subject, issuer and
                         SHA-256 of each certificate, which one is the
                         anchor), closed (reason), chain changes
  --max-age D            connection max age                   [15m]
  --repeat N             send the request N times on one engine [1]
  --interval D           wait D between repeats               [1s]
  --dump-chain FILE      write the chain the server presented (PEM, leaf first,
                         as sent: often no root) to FILE
  --dump-ca FILE         write the CA bundle a client should trust to reach
                         this server and any other with a certificate from
                         the same CA (PEM): the verified path's intermediates
                         and root, without the leaf
  --timeout D            total deadline per request           [30s]
  -h, --help             this text

Status line (with -i) and body go to stdout; with --repeat, one line per
request on stderr says which connection served it and whether it was reused.

exit codes:
  0  a response arrived (whatever its status)
  1  other failure (engine could not start, cancelled)
  2  bad flags or arguments, or a request that cannot be sent
  3  the --cacert file cannot be read or holds no certificate
  4  the host name did not resolve
  5  the TCP connection failed
  6  the TLS handshake failed (untrusted chain, wrong name, ...)
  7  the HTTP exchange failed (write, response head or body, peer closed)
  8  a deadline passed (connect, handshake or --timeout)
  9  --dump-chain or --dump-ca FILE could not be written, or --dump-ca has
     no bundle to write (the root is a compiled-in one without a
     certificate: trust the system's store instead)";

/// Exit code for an error in `phase` (see the help text).
pub fn exit_code(phase: Phase) -> i32 {
    match phase {
        Phase::Request => 2,
        Phase::Resolve => 4,
        Phase::Connect => 5,
        Phase::Tls => 6,
        Phase::Write | Phase::ResponseHead | Phase::ResponseBody => 7,
        Phase::Timeout => 8,
        _ => 1,
    }
}

/// Run fetch with `args` (without the program name); returns the exit code.
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    finish("fetch", out, run(args, out))
}

struct Opts {
    url: String,
    method: Option<String>,
    headers: Vec<(String, String)>,
    data: Option<Bytes>,
    cacert: Option<PathBuf>,
    include: bool,
    verbose: bool,
    max_age: Option<Duration>,
    repeat: u32,
    interval: Duration,
    dump_chain: Option<PathBuf>,
    dump_ca: Option<PathBuf>,
    timeout: Duration,
}

fn parse(args: Vec<String>, out: &Output) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let mut o = Opts {
        url: String::new(),
        method: None,
        headers: Vec::new(),
        data: None,
        cacert: None,
        include: false,
        verbose: false,
        max_age: None,
        repeat: 1,
        interval: Duration::from_secs(1),
        dump_chain: None,
        dump_ca: None,
        timeout: Duration::from_secs(30),
    };
    let mut url = None;
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "-X" | "--request" => o.method = Some(a.value(&arg)?),
            "-H" | "--header" => {
                let h = a.value(&arg)?;
                let Some((n, v)) = h.split_once(':') else {
                    return Err(Failure::usage(format!(
                        "{arg}: expected 'Name: value', got {h:?}"
                    )));
                };
                o.headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            "-d" | "--data" => {
                let d = a.value(&arg)?;
                let body = match d.strip_prefix('@') {
                    Some(file) => std::fs::read(file)
                        .map_err(|e| Failure::usage(format!("{arg}: cannot read {file}: {e}")))?,
                    None => d.into_bytes(),
                };
                o.data = Some(Bytes::from(body));
            }
            "--cacert" => o.cacert = Some(PathBuf::from(a.value(&arg)?)),
            "-i" | "--include" => o.include = true,
            "-v" | "--verbose" => o.verbose = true,
            "--max-age" => o.max_age = Some(a.duration(&arg)?),
            "--repeat" => o.repeat = a.parse(&arg)?,
            "--interval" => o.interval = a.duration(&arg)?,
            "--dump-chain" => o.dump_chain = Some(PathBuf::from(a.value(&arg)?)),
            "--dump-ca" => o.dump_ca = Some(PathBuf::from(a.value(&arg)?)),
            "--timeout" => o.timeout = a.duration(&arg)?,
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(None);
            }
            _ if !arg.starts_with('-') && url.is_none() => url = Some(arg),
            _ => return Err(a.unknown(&arg)),
        }
    }
    o.url = url.ok_or_else(|| Failure::usage("a URL is required"))?;
    if o.repeat == 0 {
        return Err(Failure::usage("--repeat must be at least 1"));
    }
    if o.max_age.is_some_and(|d| d.is_zero()) {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    Ok(Some(o))
}

fn build(o: &Opts) -> Result<http::Request<Bytes>, Failure> {
    let method = match (&o.method, &o.data) {
        (Some(m), _) => m.clone(),
        (None, Some(_)) => "POST".to_owned(),
        (None, None) => "GET".to_owned(),
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::usage(format!("bad method {method:?}")))?;
    let uri: http::Uri = o
        .url
        .parse()
        .map_err(|e| Failure::usage(format!("bad URL {:?}: {e}", o.url)))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => {}
        _ => {
            return Err(Failure::usage(format!(
                "bad URL {:?}: it needs http:// or https:// and a host",
                o.url
            )))
        }
    }
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in &o.headers {
        let name = http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| Failure::usage(format!("bad header name {n:?}")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| Failure::usage(format!("bad value for header {n}")))?;
        b = b.header(name, value);
    }
    b.body(o.data.clone().unwrap_or_default())
        .map_err(|e| Failure::usage(format!("bad request: {e}")))
}

fn run(args: Vec<String>, out: &Output) -> Result<i32, Failure> {
    let Some(o) = parse(args, out)? else {
        return Ok(0);
    };
    let request = build(&o)?;
    let mut config = Config::default();
    if let Some(ca) = &o.cacert {
        match std::fs::read(ca) {
            Ok(pem) if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
                return Err(Failure::new(
                    3,
                    format!("CA file {} holds no PEM certificate", ca.display()),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::new(
                    3,
                    format!("cannot read CA file {}: {e}", ca.display()),
                ))
            }
        }
        config.trust = Trust::pem_file(ca);
    }
    if let Some(age) = o.max_age {
        config.policy.max_age = Some(age);
    }
    config.timeouts.connect = config.timeouts.connect.min(o.timeout);
    config.timeouts.handshake = config.timeouts.handshake.min(o.timeout);
    config.timeouts.dns = config.timeouts.dns.min(o.timeout);
    config.dns_threads = 1;
    let mut engine = Engine::new(config).map_err(|e| match &o.cacert {
        Some(ca) => Failure::new(3, format!("CA file {}: {e}", ca.display())),
        None => Failure::new(1, format!("cannot start the engine: {e}")),
    })?;
    let start = Instant::now();
    let note = |s: String| out.err_line(format!("* {:>7.3}s {s}", start.elapsed().as_secs_f64()));
    let chatty = o.verbose || o.repeat > 1;
    let mut last_chain: Option<String> = None;
    for n in 1..=o.repeat {
        if n > 1 {
            // Keep the engine turning while we wait, so expiry, prewarm and
            // idle events happen (and show) on time.
            let until = Instant::now() + o.interval;
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                engine
                    .poll(Some(left))
                    .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
                while let Some(ev) = engine.next_event() {
                    show_event(&ev, o.verbose, chatty, &note);
                }
            }
        }
        let opts = RequestOptions::default().deadline(o.timeout);
        let id = engine.submit(request.clone(), opts);
        let outcome = loop {
            let mut done = None;
            while let Some(ev) = engine.next_event() {
                show_event(&ev, o.verbose, chatty, &note);
                match ev {
                    Event::Response {
                        id: rid,
                        response,
                        served_by,
                    } if rid == id => done = Some(Ok((response, served_by))),
                    Event::Failed { id: rid, error, .. } if rid == id => done = Some(Err(error)),
                    _ => {}
                }
            }
            if let Some(d) = done {
                break d;
            }
            engine
                .poll(Some(Duration::from_millis(200)))
                .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
        };
        let (response, served_by) = match outcome {
            Ok(r) => r,
            Err(error) => {
                engine.shutdown();
                return Err(Failure::new(exit_code(error.phase()), error.to_string()));
            }
        };
        let fp = served_by
            .chain
            .as_ref()
            .map(|c| c.fingerprint_hex())
            .unwrap_or_else(|| "-".into());
        if o.repeat > 1 {
            let changed = match &last_chain {
                Some(prev) if *prev != fp => " (CHAIN CHANGED)",
                _ => "",
            };
            note(format!(
                "request {n}/{}: {} via connection #{}{}, chain {}{changed}",
                o.repeat,
                response.status(),
                served_by.conn.get(),
                if served_by.reused {
                    " (reused)"
                } else {
                    " (new)"
                },
                short(&fp),
            ));
        }
        last_chain = Some(fp);
        if o.include {
            out.line(format!("{:?} {}", response.version(), response.status()));
            for (name, value) in response.headers() {
                out.line(format!(
                    "{name}: {}",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            out.line("");
        }
        out.bytes(response.body());
        if let (Some(file), Some(chain)) = (&o.dump_chain, &served_by.chain) {
            dump(file, &chain.to_pem(), "the presented chain")?;
            if o.verbose {
                note(format!(
                    "wrote the presented chain ({} certificates) to {}",
                    chain.der().len(),
                    file.display()
                ));
            }
        }
        if let Some(file) = &o.dump_ca {
            let Some(chain) = &served_by.chain else {
                return Err(Failure::new(
                    9,
                    "--dump-ca: a plain http:// URL has no chain",
                ));
            };
            let bundle = chain
                .ca_bundle()
                .map_err(|e| Failure::new(9, format!("--dump-ca {}: {e}", file.display())))?;
            dump(file, &bundle, "the CA bundle")?;
            if o.verbose {
                note(format!(
                    "wrote the CA bundle ({} certificates) to {}",
                    bundle.matches("-----BEGIN CERTIFICATE-----").count(),
                    file.display()
                ));
            }
        }
    }
    engine.shutdown();
    while let Some(ev) = engine.next_event() {
        show_event(&ev, o.verbose, false, &note);
    }
    if o.repeat > 1 {
        note(format!(
            "{} requests in {}",
            o.repeat,
            show(start.elapsed())
        ));
    }
    Ok(0)
}

fn dump(file: &std::path::Path, pem: &str, what: &str) -> Result<(), Failure> {
    std::fs::write(file, pem)
        .map_err(|e| Failure::new(9, format!("cannot write {what} to {}: {e}", file.display())))
}

fn short(fp: &str) -> &str {
    fp.get(..23).unwrap_or(fp)
}

fn show_event(ev: &Event, verbose: bool, chatty: bool, note: &dyn Fn(String)) {
    match ev {
        Event::Opened(info) if verbose || chatty => {
            let kind = match info.handshake {
                Some(Handshake::Full) => "full handshake",
                Some(Handshake::Resumed) => "resumed session",
                None => "plain TCP",
            };
            let mut line = format!(
                "connection #{} opened to {}: {kind}",
                info.conn.get(),
                info.peer_addr
            );
            if let (Some(v), Some(c)) = (info.tls_version, info.cipher_suite) {
                line.push_str(&format!(", {v:?}, {c:?}"));
            }
            note(line);
            if let (true, Some(chain)) = (verbose, &info.chain) {
                note(format!(
                    "  chain: {} certificates presented, leaf SHA-256 {}",
                    chain.der().len(),
                    chain.fingerprint_hex()
                ));
                match chain.verified_path() {
                    Some(path) => {
                        note("  verified path:".to_owned());
                        for entry in path.entries() {
                            note(format!("    {entry}"));
                        }
                    }
                    None => note("  verified path: none (not verified by rotary)".to_owned()),
                }
            }
        }
        Event::Closed { conn, reason, .. }
            if verbose || (chatty && *reason != CloseReason::Shutdown) =>
        {
            note(format!(
                "connection #{} closed: {}",
                conn.get(),
                reason.name()
            ));
        }
        Event::ChainChanged {
            previous, current, ..
        } if verbose || chatty => note(format!(
            "chain changed: {} -> {}",
            short(&previous.fingerprint_hex()),
            short(&current.fingerprint_hex())
        )),
        Event::ConnectFailed { conn, error, .. } if verbose => {
            note(format!("connection #{} failed: {error}", conn.get()));
        }
        Event::TrustError { path, reason } => {
            note(format!("trust file {}: {reason}", path.display()));
        }
        _ => {}
    }
}
