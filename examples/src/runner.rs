//! A custom CI runner on rotary that does GitLab's job loop: long-poll for
//! a job, mark it running, download its dependency artifacts (following the
//! coordinator's redirect to object storage without the job token), `git
//! clone` with the CA bundle of the connection that delivered the job (the
//! intermediates and the root its verified path went through, never the
//! leaf), send the trace in `Content-Range` increments at the interval the
//! server asks for, upload a generated artifact as multipart, and report
//! `success` or `failed`. Permanent errors (a URL rotary cannot use, a CA
//! file that cannot verify the server) stop it with one line; transient ones
//! back off exponentially with jitter. SIGINT and SIGTERM fail the current
//! job, remove the temporary builds dir and exit.
//!
//! Against the demo's coordinator:
//!
//! ```text
//! cargo run --example rotation -- --serve 127.0.0.1:8443 --rotate-at 20s --ca-out CA.pem
//! cargo run --example runner -- --url https://127.0.0.1:8443 --token demo \
//!     --ca-file CA.pem --max-age 5s --max-jobs 5
//! ```
//!
//! Against GitLab: `--url https://gitlab.example.com --token <runner
//! authentication token>` (no `--ca-file` for a publicly trusted instance).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use rotary::{Config, PeerChain, RequestOptions, ServedBy, Trust};

use crate::args::{show, Args};
use crate::coordinator::{hex, json_number, json_string};
use crate::{finish, git, Failure, Output, TempDir};

mod api;
mod backoff;
mod url;

use api::{signal_name, Answer, ApiError};
use backoff::Backoff;

const HELP: &str = "\
runner: a CI runner on the rotary engine doing GitLab's job loop.

usage: cargo run --example runner -- --url URL --token TOKEN [FLAGS]

  --url URL            the coordinator (https://gitlab.example.com, a path
                       prefix such as https://h/gitlab, or the demo's
                       `--example rotation -- --serve ADDR`)
  --token TOKEN        the runner's token, sent in the JSON body of each poll
  --ca-file FILE       trust only the CA certificates in FILE (PEM); default:
                       the host's trust store
  --max-age D          connection max age                          [15m]
  --builds-dir DIR     each job's files go to DIR/job-<id>/: ca.pem, the CA
                       bundle (intermediates + root) of the coordinator's
                       chain as it is when the job runs, for its git clone;
                       trace.log, the job's log (each increment is sent
                       from it, streamed);
                       the artifacts while they are used
                       [a temporary directory, removed at exit]
  --chain-freshness D  ca.pem comes from a full handshake at most D old
                       (one made for the job when none is)            [0s]
  --artifact-size N    bytes of the artifact each job uploads      [4194304]
  --max-jobs N         stop after N jobs                           [never]
  --duration D         stop after D                                [never]
  -h, --help           this text

Per job: PUT /api/v4/jobs/:id running; GET .../artifacts of its dependency
(following the redirect to object storage, without JOB-TOKEN); the git clone
check with the job's CA file; PATCH .../trace increments; POST .../artifacts
(multipart); PUT success or failed. One line per job says how it ended.

Exit code 0 when it stopped as asked and every job succeeded; 1 when a job
failed, the coordinator refused the token or the engine failed; 2 for bad
flags or a URL it cannot use; 3 for a CA file it cannot read or that cannot
verify the server; 128+N after signal N (SIGINT, SIGTERM).";

/// Run the runner with `args` (without the program name); returns the exit
/// code. SIGINT and SIGTERM stop it (the current job fails, temp files go).
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    let stop = Arc::new(AtomicUsize::new(0));
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A handler that cannot be installed leaves the default (exit).
        if let Ok(sig_id) = signal_hook::flag::register_usize(sig, stop.clone(), sig as usize) {
            ids.push(sig_id);
        }
    }
    let code = run_with_stop(args, out, stop);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    code
}

/// As [`main_with_args`], with the stop flag given: a test sets it to a
/// signal's number to act as that signal.
pub fn run_with_stop(args: Vec<String>, out: &Output, stop: Arc<AtomicUsize>) -> i32 {
    finish("runner", out, run(args, out, stop))
}

struct Opts {
    url: String,
    token: String,
    ca_file: Option<PathBuf>,
    max_age: Duration,
    chain_freshness: Duration,
    builds_dir: Option<PathBuf>,
    artifact_size: u64,
    max_jobs: Option<u64>,
    duration: Option<Duration>,
}

fn parse(args: Vec<String>, out: &Output) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let (mut url, mut token, mut ca_file, mut builds_dir) = (None, None, None, None);
    let (mut max_age, mut max_jobs, mut duration) = (Duration::from_secs(15 * 60), None, None);
    let mut artifact_size = 4 * 1024 * 1024;
    let mut chain_freshness = Duration::ZERO;
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--url" => url = Some(a.value(&arg)?),
            "--token" => token = Some(a.value(&arg)?),
            "--ca-file" => ca_file = Some(PathBuf::from(a.value(&arg)?)),
            "--max-age" => max_age = a.duration(&arg)?,
            "--chain-freshness" => chain_freshness = a.duration(&arg)?,
            "--builds-dir" => builds_dir = Some(PathBuf::from(a.value(&arg)?)),
            "--artifact-size" => artifact_size = a.parse(&arg)?,
            "--max-jobs" | "--jobs" => max_jobs = Some(a.parse(&arg)?),
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
    // A URL that can never work is refused now, not retried forever.
    url::join(&url, "/").map_err(|e| Failure::usage(format!("--url {e}")))?;
    Ok(Some(Opts {
        url,
        token,
        ca_file,
        max_age,
        chain_freshness,
        builds_dir,
        artifact_size,
        max_jobs,
        duration,
    }))
}

/// Jobs so far.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
}

fn run(args: Vec<String>, out: &Output, stop: Arc<AtomicUsize>) -> Result<i32, Failure> {
    let Some(o) = parse(args, out)? else {
        return Ok(0);
    };
    let endpoint = url::join(&o.url, "/api/v4/jobs/request").map_err(Failure::usage)?;
    let body = Bytes::from(format!(
        r#"{{"token":"{}","info":{{"name":"rotary-runner","version":"{}"}}}}"#,
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
    // JOB-TOKEN is a credential: never sent past a redirect to another
    // origin (object storage).
    let mut config = Config::default();
    config.policy.max_age = Some(o.max_age);
    // Runners behind a corporate proxy are configured through the
    // environment (https_proxy, no_proxy, ...), read with curl's rules.
    let proxies = rotary::Proxies::from_env()
        .map_err(|e| Failure::new(2, format!("proxy from the environment: {e}")))?;
    config.proxy = rotary::ProxySetting::Use(proxies);
    config.sensitive_headers = vec![http::HeaderName::from_static("job-token")];
    if let Some(ca) = &o.ca_file {
        std::fs::metadata(ca)
            .map_err(|e| Failure::new(3, format!("cannot read CA file {}: {e}", ca.display())))?;
        config.trust = Trust::pem_file(ca);
    }
    let start = Instant::now();
    let log_out = out.clone();
    let log = move |s: String| log_out.line(format!("{:>8.3}s {s}", start.elapsed().as_secs_f64()));
    let mut api =
        api::Api::new(config, stop, Box::new(log.clone())).map_err(|e| match (&e, &o.ca_file) {
            (rotary::BuildError::Trust { .. }, Some(ca)) => {
                Failure::new(3, format!("CA file {}: {e}", ca.display()))
            }
            (rotary::BuildError::Config(_), _) => Failure::usage(e.to_string()),
            _ => Failure::new(1, format!("cannot start the engine: {e}")),
        })?;

    let temp;
    let builds: &Path = match &o.builds_dir {
        Some(d) => d,
        None => {
            temp = TempDir::new("runner").map_err(|e| Failure::new(1, format!("temp dir: {e}")))?;
            temp.path()
        }
    };
    log(format!(
        "polling {endpoint} (max age {}); job files go to {}",
        show(o.max_age),
        builds.display()
    ));

    // A long poll may be held ~50 s by GitLab; allow more than that.
    let opts = RequestOptions::default().deadline(Duration::from_secs(90));
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut tally = Tally::default();
    let mut contact = false;
    // A wait never runs past --duration.
    let left = |wait: Duration| match o.duration {
        Some(d) => wait.min(d.saturating_sub(start.elapsed())),
        None => wait,
    };
    let outcome = loop {
        if o.max_jobs.is_some_and(|n| tally.ok + tally.failed >= n)
            || o.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break Ok(());
        }
        if let Some(sig) = api.stopped() {
            break Err(sig);
        }
        let answer = match api.send_interruptible(poll()?, opts) {
            Ok(a) => a,
            Err(ApiError::Stopped(sig)) => break Err(sig),
            Err(e) => {
                if let Some(f) = permanent(&e, contact, o.ca_file.as_deref(), &endpoint) {
                    api.shutdown();
                    return Err(f);
                }
                let wait = backoff.next();
                log(format!("poll failed: {e}; retrying in {}", show(wait)));
                api.idle(left(wait));
                continue;
            }
        };
        match answer.response.status().as_u16() {
            201 => {
                backoff.reset();
                contact = true;
                let job = Job::parse(&answer, &o)?;
                match run_job(&mut api, &o, builds, &job, &answer.served_by, &log) {
                    Ok(summary) => {
                        tally.ok += 1;
                        log(format!("job {}: success ({summary})", job.id));
                    }
                    Err(why) => {
                        tally.failed += 1;
                        log(format!("job {}: failed: {why}", job.id));
                    }
                }
            }
            204 => {
                backoff.reset();
                contact = true;
            }
            401 | 403 => {
                api.shutdown();
                return Err(Failure::new(
                    1,
                    format!(
                        "the coordinator refused the token ({})",
                        answer.response.status()
                    ),
                ));
            }
            s => {
                let wait = backoff.next();
                log(format!("unexpected status {s}; retrying in {}", show(wait)));
                api.idle(left(wait));
            }
        }
    };
    api.shutdown();
    let done = format!(
        "{} jobs: {} succeeded, {} failed",
        tally.ok + tally.failed,
        tally.ok,
        tally.failed
    );
    match outcome {
        Err(sig) => {
            log(format!("stopped by {} after {done}", signal_name(sig)));
            Ok(128 + i32::try_from(sig).unwrap_or(0))
        }
        Ok(()) => {
            log(format!("stopped after {done}"));
            Ok(if tally.failed == 0 { 0 } else { 1 })
        }
    }
}

/// A failure no retry can fix: the URL is refused by the engine, or the
/// server's certificate does not verify before the runner ever reached it.
fn permanent(e: &ApiError, contact: bool, ca: Option<&Path>, endpoint: &str) -> Option<Failure> {
    let ApiError::Request(err) = e else {
        return None;
    };
    match err {
        rotary::Error::InvalidRequest(why) => {
            Some(Failure::usage(format!("--url: {endpoint}: {why}")))
        }
        rotary::Error::Tls {
            reason,
            phase: rotary::Phase::Tls,
        } if !contact => {
            let trust = ca.map_or_else(
                || "the host's trust store".to_owned(),
                |p| format!("--ca-file {}", p.display()),
            );
            Some(Failure::new(
                3,
                format!("the server's certificate cannot be verified with {trust}: {reason}"),
            ))
        }
        _ => None,
    }
}

/// What the runner needs from a job's JSON.
struct Job {
    id: u64,
    token: String,
    repo_url: Option<String>,
    /// The dependency whose artifacts the job downloads, and their size.
    dependency: Option<(u64, u64)>,
}

impl Job {
    fn parse(answer: &Answer, o: &Opts) -> Result<Job, Failure> {
        let b = answer.response.body();
        let (Some(id), Some(token)) = (json_number(b, "id"), json_string(b, "token")) else {
            return Err(Failure::new(
                1,
                format!("{}: a job without id or token", o.url),
            ));
        };
        let dependency = b
            .windows(b"\"dependencies\"".len())
            .position(|w| w == b"\"dependencies\"")
            .and_then(|at| {
                let deps = &b[at..];
                Some((json_number(deps, "id")?, json_number(deps, "size")?))
            });
        Ok(Job {
            id,
            token,
            repo_url: json_string(b, "repo_url"),
            dependency,
        })
    }
}

/// The job's log, written to `trace.log` in the job's dir and sent from
/// there in `Content-Range` increments, each a file body
/// ([`rotary::Body::from_file`]): streamed a send window at a time, and
/// replayable, so a retry on a fresh connection sends it again.
struct Trace {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes written to the file.
    len: u64,
    /// Bytes the coordinator holds.
    sent: u64,
    interval: Duration,
    last: Option<Instant>,
    patches: u32,
    /// A write to the file failed (the job fails with it).
    broken: Option<String>,
}

impl Trace {
    fn new(dir: &Path) -> Result<Trace, String> {
        let path = dir.join("trace.log");
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Trace {
            path,
            file,
            len: 0,
            sent: 0,
            interval: Duration::from_secs(3),
            last: None,
            patches: 0,
            broken: None,
        })
    }

    fn line(&mut self, s: impl AsRef<str>) {
        use std::io::Write as _;
        let mut line = s.as_ref().as_bytes().to_vec();
        line.push(b'\n');
        match self.file.write_all(&line) {
            Ok(()) => self.len += line.len() as u64,
            Err(e) => {
                self.broken
                    .get_or_insert_with(|| format!("writing {}: {e}", self.path.display()));
            }
        }
    }

    /// The bytes from `sent` on, as a body read from the file.
    fn increment(&self) -> Result<rotary::Body, String> {
        use std::io::{Seek as _, SeekFrom};
        let mut f = std::fs::File::open(&self.path)
            .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.sent))
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        let body = rotary::Body::from_file(f)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        match body.len() {
            Some(n) if n == self.len - self.sent => Ok(body),
            n => Err(format!(
                "{} holds {n:?} bytes past {}, {} expected",
                self.path.display(),
                self.sent,
                self.len - self.sent
            )),
        }
    }
}

/// Everything a job step needs.
struct Ctx<'a> {
    api: &'a mut api::Api,
    o: &'a Opts,
    job: &'a Job,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn url(&self, endpoint: &str) -> Result<String, String> {
        url::join(&self.o.url, endpoint)
    }

    fn check_stop(&self) -> Result<(), String> {
        match self.api.stopped() {
            Some(sig) => Err(format!("interrupted by {}", signal_name(sig))),
            None => Ok(()),
        }
    }

    /// PUT the job's state.
    fn update(&mut self, state: &str, reason: Option<&str>) -> Result<(), String> {
        let mut body = format!(r#"{{"token":"{}","state":"{state}""#, self.job.token);
        if let Some(r) = reason {
            body.push_str(&format!(r#","failure_reason":"{r}""#));
        }
        body.push('}');
        let url = self.url(&format!("/api/v4/jobs/{}", self.job.id))?;
        let req = http::Request::put(url)
            .header("content-type", "application/json")
            .body(Bytes::from(body))
            .map_err(|e| e.to_string())?;
        let a = self
            .api
            .send(req, job_call())
            .map_err(|e| format!("PUT state {state}: {e}"))?;
        match a.response.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(format!("PUT state {state}: coordinator answered {s}")),
        }
    }

    /// Send the trace bytes not yet sent; on 416 resume from the server's
    /// `Range`.
    fn flush(&mut self, trace: &mut Trace) -> Result<(), String> {
        if let Some(why) = &trace.broken {
            return Err(format!("PATCH trace: {why}"));
        }
        for _ in 0..3 {
            if trace.sent >= trace.len {
                return Ok(());
            }
            let end = trace.len;
            let chunk = trace.increment()?;
            let url = self.url(&format!("/api/v4/jobs/{}/trace", self.job.id))?;
            let req = http::Request::patch(url)
                .header("job-token", self.job.token.as_str())
                .header("content-type", "text/plain")
                .header("content-range", format!("{}-{}", trace.sent, end - 1))
                .body(chunk)
                .map_err(|e| e.to_string())?;
            let a = self
                .api
                .send(req, job_call())
                .map_err(|e| format!("PATCH trace: {e}"))?;
            let h = a.response.headers();
            if let Some(secs) = h
                .get("x-gitlab-trace-update-interval")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
            {
                trace.interval = Duration::from_secs_f64(secs.min(3600.0));
            }
            let remote = h
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("0-"))
                .and_then(|n| n.parse::<u64>().ok());
            match a.response.status().as_u16() {
                202 => {
                    trace.sent = end;
                    trace.patches += 1;
                    trace.last = Some(Instant::now());
                }
                416 => match remote {
                    // The server holds a different prefix: resend from there.
                    Some(n) if n <= end => trace.sent = n,
                    _ => return Err("PATCH trace: 416 without a usable Range".into()),
                },
                s => return Err(format!("PATCH trace: coordinator answered {s}")),
            }
        }
        if trace.sent >= trace.len {
            Ok(())
        } else {
            Err("PATCH trace: refused three times".into())
        }
    }

    /// Flush when the server's interval has passed since the last increment.
    fn maybe_flush(&mut self, trace: &mut Trace) -> Result<(), String> {
        if trace.last.is_none_or(|t| t.elapsed() >= trace.interval) {
            self.flush(trace)?;
        }
        Ok(())
    }
}

/// Run one job; `Ok(summary)` when it succeeded, `Err(why)` when it failed
/// (after reporting `failed`).
fn run_job(
    api: &mut api::Api,
    o: &Opts,
    builds: &Path,
    job: &Job,
    served_by: &ServedBy,
    log: &dyn Fn(String),
) -> Result<String, String> {
    let dir = builds.join(format!("job-{}", job.id));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut ctx = Ctx { api, o, job, dir };
    let mut trace = Trace::new(&ctx.dir)?;
    ctx.update("running", None)?;
    let result = steps(&mut ctx, &mut trace, served_by, log);
    for f in ["artifacts.bin", "dependency.zip"] {
        let _ = std::fs::remove_file(ctx.dir.join(f));
    }
    match result {
        Ok(summary) => {
            trace.line("Job succeeded");
            ctx.flush(&mut trace)?;
            ctx.update("success", None)?;
            Ok(format!(
                "{summary}; trace {} bytes in {} increments",
                trace.len, trace.patches
            ))
        }
        Err(why) => {
            trace.line(format!("ERROR: Job failed: {why}"));
            // Report it even when stopping; what fails here is secondary.
            let _ = ctx.flush(&mut trace);
            let reason = if ctx.api.stopped().is_some() {
                "runner_system_failure"
            } else {
                "script_failure"
            };
            let _ = ctx.update("failed", Some(reason));
            Err(why)
        }
    }
}

fn steps(
    ctx: &mut Ctx<'_>,
    trace: &mut Trace,
    served_by: &ServedBy,
    log: &dyn Fn(String),
) -> Result<String, String> {
    trace.line(format!(
        "Running with rotary-runner {} (job {})",
        env!("CARGO_PKG_VERSION"),
        ctx.job.id
    ));
    ctx.maybe_flush(trace)?;
    ctx.check_stop()?;

    // 1. The dependency's artifacts, through the redirect to object storage.
    if let Some((dep, size)) = ctx.job.dependency {
        let url = ctx.url(&format!("/api/v4/jobs/{dep}/artifacts"))?;
        let req = http::Request::get(url)
            .header("job-token", ctx.job.token.as_str())
            .body(Bytes::new())
            .map_err(|e| e.to_string())?;
        let path = ctx.dir.join("dependency.zip");
        let file = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let mut w = BufWriter::new(file);
        let opts = RequestOptions::default()
            .deadline(Duration::from_secs(120))
            .follow_redirects(5);
        let d = ctx
            .api
            .download(req, opts, &mut w)
            .map_err(|e| format!("downloading artifacts of job {dep}: {e}"))?;
        w.flush()
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        if !d.status.is_success() {
            return Err(format!("downloading artifacts of job {dep}: {}", d.status));
        }
        if d.bytes != size {
            return Err(format!(
                "artifacts of job {dep}: {} bytes, the job said {size}",
                d.bytes
            ));
        }
        let from = d
            .served_by
            .redirected_to
            .as_ref()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "the coordinator".into());
        trace.line(format!(
            "Downloaded artifacts of job {dep} from {from}: {} bytes, sha256 {}",
            d.bytes, d.sha256
        ));
        log(format!(
            "job {}: dependency artifacts {} bytes sha256 {} from {from}",
            ctx.job.id, d.bytes, d.sha256
        ));
    }
    ctx.maybe_flush(trace)?;
    ctx.check_stop()?;

    // 2. git clone with the CA bundle of the coordinator's chain as it is
    // now (a full handshake made for the job), not the long poll's, which
    // may predate a rotation by up to a max age.
    let conn = served_by.conn.get();
    let origin = rotary::Origin::parse(&ctx.o.url).map_err(|e| e.to_string())?;
    if origin.is_tls() {
        let chain = ctx
            .api
            .fresh_chain(&origin, ctx.o.chain_freshness)
            .map_err(|e| format!("the coordinator's chain for the job's CA file: {e}"))?;
        match chain.ca_bundle() {
            Ok(bundle) => {
                let file = write_ca_file(&ctx.dir, &bundle)?;
                log(format!(
                    "job {} (delivered on connection #{conn}): CA file {} (chain {}, root {})",
                    ctx.job.id,
                    file.display(),
                    api::fingerprint(Some(&chain)),
                    root(&chain)
                ));
                if let Some(repo) = &ctx.job.repo_url {
                    clone(repo, &file)?;
                    trace.line(format!("git clone check of {repo}: ok"));
                }
            }
            Err(why) => {
                log(format!("job {}: no CA file written: {why}", ctx.job.id));
                trace.line(format!("no CA file for git: {why}"));
            }
        }
    } else {
        trace.line("job delivered over plain http: no CA file");
    }
    ctx.maybe_flush(trace)?;
    ctx.check_stop()?;

    // 3. The artifact: generated to a file, hashed as it is written.
    let path = ctx.dir.join("artifacts.bin");
    let (size, sha) = generate(&path, ctx.o.artifact_size)?;
    trace.line(format!("Generated artifact: {size} bytes, sha256 {sha}"));
    log(format!(
        "job {}: artifact {size} bytes sha256 {sha}",
        ctx.job.id
    ));
    ctx.flush(trace)?;
    ctx.check_stop()?;

    // 4. Upload it, multipart, streamed from the file a window at a time:
    // memory stays flat whatever the artifact's size.
    let boundary = format!("rotary-{:016x}", fastrand::u64(..));
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"artifacts.zip\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let file = File::open(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let parts = vec![
        api::Part::Bytes(Bytes::from(preamble)),
        api::Part::File(file),
        api::Part::Bytes(Bytes::from(format!("\r\n--{boundary}--\r\n"))),
    ];
    let url = ctx.url(&format!(
        "/api/v4/jobs/{}/artifacts?artifact_format=zip&artifact_type=archive",
        ctx.job.id
    ))?;
    let req = http::Request::post(url)
        .header("job-token", ctx.job.token.as_str())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(())
        .map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs(60 + size / (1024 * 1024));
    let a = ctx
        .api
        .upload(req, parts, RequestOptions::default().deadline(deadline))
        .map_err(|e| format!("uploading the artifact: {e}"))?;
    if a.response.status().as_u16() != 201 {
        return Err(format!(
            "uploading the artifact: coordinator answered {}",
            a.response.status()
        ));
    }
    trace.line(format!("Uploaded artifact: {size} bytes"));
    Ok(format!("artifact {size} bytes sha256 {sha}"))
}

/// Options of a job's state and trace calls: short, and safe to send again
/// (GitLab's job state and trace ranges are idempotent).
fn job_call() -> RequestOptions {
    RequestOptions::default()
        .deadline(Duration::from_secs(30))
        .retry_safe(true)
}

/// `git clone`'s first request against `repo`, trusting only `ca_file`.
fn clone(repo: &str, ca_file: &Path) -> Result<(), String> {
    let uri: http::Uri = repo
        .parse()
        .map_err(|e| format!("repo_url {repo:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("repo_url {repo:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("git clone: cannot resolve {host}"))?;
    git::clone_check(addr, host.trim_matches(['[', ']']), uri.path(), ca_file)
        .map_err(|e| format!("git clone {repo}: {e}"))
}

/// `size` pseudo-random bytes into `path`; their size and SHA-256.
fn generate(path: &Path, size: u64) -> Result<(u64, String), String> {
    let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut w = BufWriter::new(file);
    let mut hash = Context::new(&SHA256);
    let mut rng = fastrand::Rng::new();
    let mut block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        rng.fill(&mut block[..n]);
        hash.update(&block[..n]);
        w.write_all(&block[..n])
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok((size, hex(hash.finish().as_ref())))
}

fn write_ca_file(dir: &Path, bundle: &str) -> Result<PathBuf, String> {
    let file = dir.join("ca.pem");
    std::fs::write(&file, bundle).map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(file)
}

/// The subject of the root the chain's verified path ended at.
fn root(chain: &PeerChain) -> String {
    chain
        .verified_path()
        .map_or_else(|| "-".to_owned(), |p| p.anchor().subject())
}
