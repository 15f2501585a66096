//! A minimal custom CI runner on rotary: long-poll the coordinator for jobs
//! and hand each job, as its CA file, the CA bundle of the connection that
//! delivered it: the intermediates and the root its verified path went
//! through, never the leaf, so the job's `git clone` verifies whichever edge
//! of the coordinator it lands on. It does not run jobs; it shows where a
//! runner hooks into the engine.
//!
//! Against the demo's coordinator:
//!
//! ```text
//! cargo run --example rotation -- --serve 127.0.0.1:8443 --rotate-at 20s
//! cargo run --example runner -- --url https://127.0.0.1:8443 --token demo \
//!     --ca-file <the CA file the coordinator printed> --max-age 5s
//! ```
//!
//! Against GitLab: `--url https://gitlab.example.com --token <runner
//! authentication token>` (no `--ca-file` for a publicly trusted instance).
//! `POST /api/v4/jobs/request` answers `201` with a job or `204` after
//! holding the request up to ~50 s; a real runner would then run the job and
//! report through `PUT /api/v4/jobs/:id`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{Config, Engine, Event, Handshake, PeerChain, RequestId, RequestOptions, Trust};

use crate::args::{show, Args};
use crate::coordinator::json_number;
use crate::{finish, Failure, Output, TempDir};

const HELP: &str = "\
runner: a minimal CI runner skeleton on the rotary engine.

usage: cargo run --example runner -- --url URL --token TOKEN [FLAGS]

  --url URL          the coordinator (https://gitlab.example.com, or the demo's
                     `--example rotation -- --serve ADDR`)
  --token TOKEN      the runner's token, sent in the JSON body of each poll
  --ca-file FILE     trust only the CA certificates in FILE (PEM); default:
                     the Mozilla roots
  --max-age D        connection max age                          [15m]
  --builds-dir DIR   where each job's CA file goes: DIR/job-<id>/ca.pem, the
                     CA bundle (intermediates + root) of the connection that
                     delivered the job; none when the root is a compiled-in
                     one without a certificate (the job then trusts its
                     system's store; the log says so)
                     [a temporary directory, removed at exit]
  --jobs N           stop after N jobs                           [never]
  --duration D       stop after D                                [never]
  -h, --help         this text

Long-polls POST <URL>/api/v4/jobs/request; 201 = a job, 204 = none yet.
Exit code 0 when it stopped as asked; 1 when the coordinator refused the
token or the engine failed; 2 for bad flags; 3 for an unreadable --ca-file.";

/// Run the runner with `args` (without the program name); returns the exit code.
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    finish("runner", out, run(args, out))
}

struct Opts {
    url: String,
    token: String,
    ca_file: Option<PathBuf>,
    max_age: Duration,
    builds_dir: Option<PathBuf>,
    jobs: Option<u64>,
    duration: Option<Duration>,
}

fn parse(args: Vec<String>, out: &Output) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let (mut url, mut token, mut ca_file, mut builds_dir) = (None, None, None, None);
    let (mut max_age, mut jobs, mut duration) = (Duration::from_secs(15 * 60), None, None);
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--url" => url = Some(a.value(&arg)?),
            "--token" => token = Some(a.value(&arg)?),
            "--ca-file" => ca_file = Some(PathBuf::from(a.value(&arg)?)),
            "--max-age" => max_age = a.duration(&arg)?,
            "--builds-dir" => builds_dir = Some(PathBuf::from(a.value(&arg)?)),
            "--jobs" => jobs = Some(a.parse(&arg)?),
            "--duration" => duration = Some(a.duration(&arg)?),
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(None);
            }
            _ => return Err(a.unknown(&arg)),
        }
    }
    let url: String = url.ok_or_else(|| Failure::usage("--url is required"))?;
    let token = token.ok_or_else(|| Failure::usage("--token is required"))?;
    if token.contains(['"', '\\']) || token.chars().any(char::is_control) {
        return Err(Failure::usage("--token holds characters a token never has"));
    }
    if max_age.is_zero() {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    Ok(Some(Opts {
        url: url.trim_end_matches('/').to_owned(),
        token,
        ca_file,
        max_age,
        builds_dir,
        jobs,
        duration,
    }))
}

fn run(args: Vec<String>, out: &Output) -> Result<i32, Failure> {
    let Some(o) = parse(args, out)? else {
        return Ok(0);
    };
    let endpoint = format!("{}/api/v4/jobs/request", o.url);
    let body = Bytes::from(format!(
        r#"{{"token":"{}","info":{{"name":"rotary-runner-skeleton","version":"{}"}}}}"#,
        o.token,
        env!("CARGO_PKG_VERSION")
    ));
    let poll = || {
        http::Request::post(endpoint.as_str())
            .header("content-type", "application/json")
            .body(body.clone())
            .map_err(|e| Failure::usage(format!("--url {:?}: {e}", o.url)))
    };
    poll()?;

    // The engine: connections retire at max age (with jitter) and are
    // replaced with a full handshake, so a rotated chain reaches the jobs.
    let mut config = Config::default();
    config.policy.max_age = Some(o.max_age);
    // Runners behind a corporate proxy are configured through the
    // environment (https_proxy, no_proxy, ...), read with curl's rules.
    let proxies = rotary::Proxies::from_env()
        .map_err(|e| Failure::new(2, format!("proxy from the environment: {e}")))?;
    config.proxy = rotary::ProxySetting::Use(proxies);
    if let Some(ca) = &o.ca_file {
        std::fs::metadata(ca)
            .map_err(|e| Failure::new(3, format!("cannot read CA file {}: {e}", ca.display())))?;
        config.trust = Trust::pem_file(ca);
    }
    let mut engine = Engine::new(config).map_err(|e| match &o.ca_file {
        Some(ca) => Failure::new(3, format!("CA file {}: {e}", ca.display())),
        None => Failure::new(1, format!("cannot start the engine: {e}")),
    })?;

    let temp;
    let builds: &Path = match &o.builds_dir {
        Some(d) => d,
        None => {
            temp = TempDir::new("runner").map_err(|e| Failure::new(1, format!("temp dir: {e}")))?;
            temp.path()
        }
    };
    let start = Instant::now();
    let log = |s: String| out.line(format!("{:>8.3}s {s}", start.elapsed().as_secs_f64()));
    log(format!(
        "polling {endpoint} (max age {}); job CA files go to {}",
        show(o.max_age),
        builds.display()
    ));

    // A long poll may be held ~50 s by GitLab; allow more than that.
    let opts = RequestOptions::default().deadline(Duration::from_secs(90));
    let mut pending: Option<RequestId> = None;
    let mut next_poll = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut jobs = 0u64;
    loop {
        let now = Instant::now();
        if o.jobs.is_some_and(|n| jobs >= n) || o.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if pending.is_none() && now >= next_poll {
            pending = Some(engine.submit(poll()?, opts));
        }
        let mut wait = Duration::from_millis(500);
        if pending.is_none() {
            wait = wait.min(next_poll.saturating_duration_since(now));
        }
        engine
            .poll(Some(wait))
            .map_err(|e| Failure::new(1, format!("poll: {e}")))?;
        while let Some(event) = engine.next_event() {
            match event {
                // Lifecycle: worth a log line each.
                Event::Opened(info) => log(format!(
                    "connection #{} opened to {} ({}), chain {}",
                    info.conn.get(),
                    info.peer_addr,
                    match info.handshake {
                        Some(Handshake::Full) => "full handshake",
                        Some(Handshake::Resumed) => "resumed session",
                        None => "plain http",
                    },
                    fingerprint(info.chain.as_deref())
                )),
                Event::Closed { conn, reason, .. } => log(format!(
                    "connection #{} closed: {}",
                    conn.get(),
                    reason.name()
                )),
                Event::ChainChanged {
                    previous, current, ..
                } => log(format!(
                    "chain changed: {} -> {}",
                    fingerprint(Some(&previous)),
                    fingerprint(Some(&current))
                )),
                Event::ConnectFailed { error, .. } => log(format!("connect failed: {error}")),
                Event::TrustError { path, reason } => {
                    log(format!("CA file {} unusable: {reason}", path.display()))
                }
                // The poll's answer.
                Event::Response {
                    id,
                    response,
                    served_by,
                } if Some(id) == pending => {
                    pending = None;
                    backoff = Duration::from_secs(1);
                    match response.status().as_u16() {
                        201 => {
                            jobs += 1;
                            let job = json_number(response.body(), "id").unwrap_or(jobs);
                            // The bundle of the connection that delivered this
                            // job, not the pool's newest: its chain is the
                            // one the job's `git clone` will meet.
                            let conn = served_by.conn.get();
                            match served_by.chain.as_deref().map(|c| (c, c.ca_bundle())) {
                                Some((chain, Ok(bundle))) => {
                                    let file = write_ca_file(builds, job, &bundle)?;
                                    log(format!(
                                        "job {job} via connection #{conn}: CA file {} \
                                         (chain {}, root {})",
                                        file.display(),
                                        fingerprint(Some(chain)),
                                        root(chain)
                                    ));
                                }
                                Some((_, Err(why))) => log(format!(
                                    "job {job} via connection #{conn}: no CA file written: {why}"
                                )),
                                None => log(format!("job {job} over plain http: no CA file")),
                            }
                        }
                        204 => {}
                        401 | 403 => {
                            return Err(Failure::new(
                                1,
                                format!(
                                    "the coordinator refused the token ({})",
                                    response.status()
                                ),
                            ))
                        }
                        s => {
                            log(format!(
                                "unexpected status {s}; retrying in {}",
                                show(backoff)
                            ));
                            next_poll = Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                Event::Failed { id, error, .. } if Some(id) == pending => {
                    pending = None;
                    log(format!(
                        "poll failed: {error}; retrying in {}",
                        show(backoff)
                    ));
                    next_poll = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                _ => {}
            }
        }
    }
    if let Some(id) = pending {
        engine.cancel(id);
    }
    engine.shutdown();
    log(format!("stopped after {jobs} jobs"));
    Ok(0)
}

fn write_ca_file(builds: &Path, job: u64, bundle: &str) -> Result<PathBuf, Failure> {
    let dir = builds.join(format!("job-{job}"));
    let file = dir.join("ca.pem");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, bundle))
        .map_err(|e| Failure::new(1, format!("writing {}: {e}", file.display())))?;
    Ok(file)
}

/// The subject of the root the chain's verified path ended at.
fn root(chain: &PeerChain) -> String {
    chain
        .verified_path()
        .map_or_else(|| "-".to_owned(), |p| p.anchor().subject())
}

fn fingerprint(chain: Option<&PeerChain>) -> String {
    match chain {
        Some(c) => {
            let hex = c.fingerprint_hex();
            format!("sha256 {}", hex.get(..23).unwrap_or(&hex))
        }
        None => "-".into(),
    }
}
