//! fetch: a curl-like client on one rotary engine, showing which connection
//! served each request, how it was established and when the chain changed.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{
    Body, BuildError, ClientIdentity, CloseReason, Config, Engine, Error, Event, Handshake, Phase,
    Proxies, RequestOptions, ServedBy, Trust,
};

use crate::args::show;
use crate::{finish, Failure, Output};

mod opts;
mod progress;
mod request;
mod resolve;
mod trace;

use opts::Opts;

/// Exit code for a response whose status `-f` fails (as curl).
const FAILED_STATUS: i32 = 22;
/// Exit code for a redirect `-L` could not follow (curl's "too many").
const REDIRECT: i32 = 47;
/// Exit code for a proxy failure (curl's for a refused CONNECT).
const PROXY: i32 = 56;

/// Exit code for `error` (see the help text).
pub fn exit_code(error: &Error) -> i32 {
    if let Error::Redirect(_) = error {
        return REDIRECT;
    }
    match error.phase() {
        Phase::Request => 2,
        Phase::Resolve => 4,
        Phase::Connect => 5,
        Phase::Tls => 6,
        Phase::Write | Phase::ResponseHead | Phase::ResponseBody => 7,
        Phase::Timeout => 8,
        Phase::Proxy => PROXY,
        _ => 1,
    }
}

/// Run fetch with `args` (without the program name), reading the process's
/// stdin for `-d @-`; returns the exit code.
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    main_with_stdin(args, out, &mut std::io::stdin().lock())
}

/// Run fetch with `args`, reading `stdin` for `-d @-`; returns the exit code.
pub fn main_with_stdin(args: Vec<String>, out: &Output, stdin: &mut dyn Read) -> i32 {
    let o = match opts::parse(args, out, stdin) {
        Ok(Some(o)) => o,
        Ok(None) => return 0,
        Err(f) => return finish("fetch", out, Err(f)),
    };
    match run(&o, out) {
        // curl -s hides a failure's message too, unless -S.
        Err(f) if o.silent && !o.show_error => f.code,
        result => finish("fetch", out, result),
    }
}

/// The engine configuration the flags ask for.
fn config(o: &Opts) -> Result<Config, Failure> {
    // Without --cacert the engine's default trust: the host's store.
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
    if let Some(cert) = &o.cert {
        config.trust.client_identity = Some(ClientIdentity {
            cert_chain: cert.clone(),
            key: o.key.clone().unwrap_or_else(|| cert.clone()),
        });
    }
    if let Some(crl) = &o.crlfile {
        config.trust.crl_files.push(crl.clone());
    }
    if !o.resolve.is_empty() {
        config.resolver = Some(Arc::new(resolve::Pinned::new(o.resolve.clone())));
    }
    if let Some(age) = o.max_age {
        config.policy.max_age = Some(age);
    }
    config.proxy = proxies(o)?;
    config.timeouts.connect = config.timeouts.connect.min(o.timeout);
    config.timeouts.handshake = config.timeouts.handshake.min(o.timeout);
    config.timeouts.dns = config.timeouts.dns.min(o.timeout);
    config.dns_threads = 1;
    Ok(config)
}

/// The proxies: the environment's with curl's rules, `-x` standing in for
/// its proxy variables and `--noproxy` for its `no_proxy`.
fn proxies(o: &Opts) -> Result<Proxies, Failure> {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "https_proxy" | "http_proxy" if o.proxy.is_some() => o.proxy.clone(),
            "HTTPS_PROXY" | "all_proxy" | "ALL_PROXY" if o.proxy.is_some() => None,
            "no_proxy" if o.noproxy.is_some() => o.noproxy.clone(),
            "NO_PROXY" if o.noproxy.is_some() => None,
            other => std::env::var(other).ok(),
        }
    };
    let proxies = Proxies::from_lookup(lookup).map_err(|e| {
        let e = e.to_string();
        let e = e.strip_prefix("invalid request: ").unwrap_or(&e);
        let from = if o.proxy.is_some() {
            "-x"
        } else {
            "environment"
        };
        let e = match o.proxy {
            Some(_) => e.split_once("_proxy: ").map_or(e, |(_, why)| why),
            None => e,
        };
        Failure::usage(format!("{from}: {e}"))
    })?;
    let proxies = match &o.proxy_cacert {
        None => proxies,
        Some(file) => proxies.trust(Trust::pem_file(file)),
    };
    match &o.proxy_user {
        None => Ok(proxies),
        Some(up) => match up.split_once(':') {
            Some((user, pass)) => Ok(proxies.credentials(user, pass)),
            None => Err(Failure::usage("--proxy-user needs USER:PASS")),
        },
    }
}

fn run(o: &Opts, out: &Output) -> Result<i32, Failure> {
    let request = request::build(o)?;
    let mut engine = Engine::new(config(o)?).map_err(|e| match e {
        // A trust file (--cacert, --cert, --key or the host's store): the
        // engine names it and what is wrong with it.
        BuildError::Trust { .. } => Failure::new(3, format!("cannot load the TLS files: {e}")),
        // A flag's value no engine can work with (--max-age 0, say).
        BuildError::Config(_) => Failure::usage(e.to_string()),
        _ => Failure::new(1, format!("cannot start the engine: {e}")),
    })?;
    let start = Instant::now();
    let note = |s: String| out.err_line(format!("* {:>7.3}s {s}", start.elapsed().as_secs_f64()));
    let _engine_log = if o.verbose {
        trace::EngineLog::start(out, start)
            .map_err(|why| note(why.to_owned()))
            .ok()
    } else {
        None
    };
    if o.verbose {
        let origin = o
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| rotary::Origin::from_uri(&u).ok());
        if let (Ok(p), Some(origin)) = (proxies(o), origin) {
            match p.for_origin(&origin) {
                Some(proxy) if origin.is_tls() && proxy.is_tls() => note(format!(
                    "proxy {proxy}: TLS to the proxy, then a CONNECT tunnel to {origin}"
                )),
                Some(proxy) if origin.is_tls() => {
                    note(format!("proxy {proxy}: CONNECT tunnel to {origin}"))
                }
                Some(proxy) => note(format!("proxy {proxy}: {origin} in absolute-form")),
                None => {}
            }
        }
        for pin in &o.resolve {
            note(format!("--resolve: {pin}"));
        }
    }
    // -s silences what fetch says on its own; -v still shows what it asks.
    let chatty = !o.silent && (o.verbose || o.repeat > 1);
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
                    show_event(&ev, o, chatty, &note);
                }
            }
        }
        let (response, served_by) = match exchange(&mut engine, &request, o, out, chatty, &note)? {
            Ok(r) => r,
            Err(error) => {
                engine.shutdown();
                return Err(Failure::new(exit_code(&error), error.to_string()));
            }
        };
        let fp = served_by
            .chain
            .as_ref()
            .map(|c| c.fingerprint_hex())
            .unwrap_or_else(|| "-".into());
        if o.repeat > 1 && !o.silent {
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
        if o.fail && response.status().as_u16() >= 400 {
            engine.shutdown();
            return Err(Failure::new(
                FAILED_STATUS,
                format!("the server answered {} (--fail)", response.status()),
            ));
        }
        dumps(o, &served_by, &note)?;
    }
    engine.shutdown();
    while let Some(ev) = engine.next_event() {
        show_event(&ev, o, false, &note);
    }
    if o.repeat > 1 && !o.silent {
        note(format!(
            "{} requests in {}",
            o.repeat,
            show(start.elapsed())
        ));
    }
    Ok(0)
}

/// Submit `request` and drive the engine until it ends: the response head,
/// or the engine's error (a `Failure` only when fetch itself fails). The
/// body is streamed as it arrives, whatever its size, as curl does: to
/// stdout, or to the `-o` file; with `-i` or `-I` the head goes first.
/// With `-f` a status of 400 or more stops the request at its head, body
/// unread. Under -v, the request head before and the response head after.
fn exchange(
    engine: &mut Engine,
    request: &http::Request<Bytes>,
    o: &Opts,
    out: &Output,
    chatty: bool,
    note: &dyn Fn(String),
) -> Result<Result<(http::Response<()>, ServedBy), Error>, Failure> {
    let mut opts = RequestOptions::default()
        .deadline(o.timeout)
        .streaming(true);
    if let Some(max) = o.follow {
        opts = opts.follow_redirects(max);
    }
    let heads = |lines: Vec<String>| {
        if o.verbose {
            lines.into_iter().for_each(|l| out.err_line(l));
        }
    };
    let body = match o.upload.as_ref().or(o.data_file.as_ref()) {
        Some(path) => Body::file(path)
            .map_err(|e| Failure::new(26, format!("cannot read {}: {e}", path.display())))?,
        None => Body::from(request.body().clone()),
    };
    let file_len = o.upload.as_ref().or(o.data_file.as_ref()).and(body.len());
    heads(trace::request_head(request, file_len));
    let mut file = match &o.output {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| Failure::new(23, format!("cannot write {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let bar_on = !o.silent
        && (o.progress
            || ((o.output.is_some() || o.upload.is_some()) && std::io::stderr().is_terminal()));
    let mut bar = bar_on.then(progress::Bar::new);
    let upload_len = body.len().unwrap_or(0);
    // Body bytes written out (stdout or the -o file).
    let mut written = 0u64;
    let id = engine.submit(request.clone().map(|_| body), opts);
    let mut head: Option<(http::Response<()>, ServedBy)> = None;
    loop {
        if let (Some(bar), Some(p)) = (bar.as_mut(), engine.progress(id)) {
            if let Some(line) = bar.of(&p, false) {
                out.err_part(line);
            }
        }
        let mut done = None;
        while let Some(ev) = engine.next_event() {
            show_event(&ev, o, chatty, note);
            match ev {
                Event::Head {
                    id: rid,
                    response,
                    served_by,
                } if rid == id => {
                    if let (true, Some(uri)) = (o.verbose, &served_by.redirected_to) {
                        note(format!("the response answers {uri}"));
                    }
                    heads(trace::response_head(&response, "< "));
                    if o.fail && response.status().as_u16() >= 400 {
                        // curl -f prints no body: the request stops here.
                        engine.cancel(id);
                        return Ok(Ok((response, served_by)));
                    }
                    if o.include || o.head {
                        for line in trace::response_head(&response, "") {
                            out.line(line);
                        }
                    }
                    head = Some((response, served_by));
                }
                Event::Body { id: rid, data } if rid == id => {
                    let wrote = match file.as_mut() {
                        Some(file) => file.write_all(&data),
                        None => out.try_bytes(&data),
                    };
                    if let Err(e) = wrote {
                        engine.cancel(id);
                        return Err(Failure::new(23, format!("writing the body: {e}")));
                    }
                    written += data.len() as u64;
                }
                Event::End { id: rid, .. } if rid == id => {
                    done = head.take().map(Ok);
                }
                Event::Failed { id: rid, error, .. } if rid == id => done = Some(Err(error)),
                _ => {}
            }
        }
        if let Some(d) = done {
            if let Some(bar) = bar.as_mut() {
                let moved = match &d {
                    Ok(_) => written.max(upload_len),
                    Err(_) => 0,
                };
                if let Some(line) = bar.line(moved, None, true) {
                    out.err_line(line);
                }
            }
            return Ok(d);
        }
        engine
            .poll(Some(Duration::from_millis(200)))
            .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
    }
}

/// Write what --dump-chain and --dump-ca ask for.
fn dumps(o: &Opts, served_by: &ServedBy, note: &dyn Fn(String)) -> Result<(), Failure> {
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
    Ok(())
}

fn dump(file: &std::path::Path, pem: &str, what: &str) -> Result<(), Failure> {
    std::fs::write(file, pem)
        .map_err(|e| Failure::new(9, format!("cannot write {what} to {}: {e}", file.display())))
}

fn short(fp: &str) -> &str {
    fp.get(..23).unwrap_or(fp)
}

/// Show `ev` as `* ` lines: everything with -v; with `chatty` the
/// lifecycle (opened, closed but for shutdown, chain changes); a trust file
/// that went bad unless -s.
fn show_event(ev: &Event, o: &Opts, chatty: bool, note: &dyn Fn(String)) {
    let verbose = o.verbose;
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
            if let Some(proxy) = &info.proxy {
                // The TCP peer is the proxy; what follows is the origin's.
                line.push_str(&format!(
                    " (tunnel through proxy {proxy} to {})",
                    info.origin
                ));
            }
            if let (Some(v), Some(c)) = (info.tls_version, info.cipher_suite) {
                line.push_str(&format!(", {v:?}, {c:?}"));
            }
            note(line);
            if let (true, Some(outer)) = (verbose, &info.proxy_tls) {
                // The proxy's own session, under the origin's.
                let mut line = format!(
                    "  proxy tls: full handshake with {}",
                    info.proxy.as_deref().unwrap_or("the proxy")
                );
                if let (Some(v), Some(c)) = (outer.tls_version, outer.cipher_suite) {
                    line.push_str(&format!(", {v:?}, {c:?}"));
                }
                note(line);
                note(format!(
                    "  proxy chain: {} certificates presented, leaf SHA-256 {}",
                    outer.chain.der().len(),
                    outer.chain.fingerprint_hex()
                ));
                if let Some(path) = outer.chain.verified_path() {
                    note("  proxy verified path:".to_owned());
                    for entry in path.entries() {
                        note(format!("    {entry}"));
                    }
                }
            }
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
        Event::TrustError { path, reason } if verbose || !o.silent => {
            note(format!("trust file {}: {reason}", path.display()));
        }
        _ => {}
    }
}
