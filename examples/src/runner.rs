//! A small but real shell-executor GitLab runner on `rotary::Client`.
//!
//! It long-polls for jobs as GitLab expects (`last_update` sent back, the
//! check interval after an answer the server did not hold, a `system_id`,
//! a `User-Agent`, and `info.features` true only for what it does), and
//! runs each job: a fresh CA file from the coordinator's chain as it is
//! now, a real `git` fetch and checkout of the job's commit with the job
//! token and that CA file, its dependencies' artifacts (each with its own
//! token, through the redirect to object storage) unpacked, its steps in
//! `bash` with its variables (file variables written to files, masked
//! values never in the trace), the trace sent in increments of at most
//! 1 MiB as it is produced, its artifacts zipped and streamed up, and the
//! final state (with the exit code) sent until the coordinator takes it.
//! Every API call follows GitLab Runner's retry rules (408, 429 and 5xx,
//! honouring `RateLimit-ResetTime` and `Retry-After`), and `Job-Status:
//! canceled` (or a 403) ends the running job. Permanent errors (a URL
//! rotary cannot use, a CA file that cannot verify the server) stop it
//! with one line; SIGINT and SIGTERM fail the current job, remove the
//! temporary builds dir and exit.
//!
//! Against the demo's coordinator:
//!
//! ```text
//! cargo run --example rotation -- --serve 127.0.0.1:8443 --rotate-at 20s --ca-out CA.pem
//! cargo run --example runner -- --url https://127.0.0.1:8443 --token demo \
//!     --ca-file CA.pem --max-age 5s --max-jobs 5
//! ```
//!
//! Against GitLab: `--url https://gitlab.example.com --token glrt-...`
//! (no `--ca-file` for a publicly trusted instance); see the README's
//! "Pointing the runner at a real GitLab".

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{Config, PeerChain, RequestOptions, Trust};

use crate::args::{show, Args};
use crate::{finish, Failure, Output, TempDir};

mod api;
mod artifacts;
mod backoff;
mod checkout;
mod exec;
pub mod job;
mod mask;
mod retry;
mod trace;
mod url;

use api::{signal_name, ApiError};
use backoff::Backoff;
use exec::{Ended, Stop};
use job::Job;
use trace::Trace;

const HELP: &str = "\
runner: a shell-executor GitLab runner on the rotary engine.

usage: cargo run --example runner -- --url URL --token TOKEN [FLAGS]

  --url URL            the coordinator (https://gitlab.example.com, a path
                       prefix such as https://h/gitlab, or the demo's
                       `--example rotation -- --serve ADDR`)
  --token TOKEN        the runner authentication token (glrt-...), sent in
                       the JSON body of each poll
  --ca-file FILE       trust only the CA certificates in FILE (PEM); default:
                       the host's trust store
  --max-age D          connection max age                          [15m]
  --check-interval D   the least time between two polls; a poll the
                       server held longer is followed at once      [3s]
  --retry-backoff D    the first wait before retrying a failed API call
                       (doubling, with jitter, up to 60 s), unless the
                       server says how long                        [1s]
  --builds-dir DIR     each job runs in DIR/job-<id>/: project/ (the
                       checkout, where the steps run), ca.pem (the CA
                       bundle of the coordinator's chain as it is when the
                       job runs: GIT_SSL_CAINFO, CI_SERVER_TLS_CA_FILE),
                       trace.log (the job's log as sent), tmp/
                       [a temporary directory, removed at exit]
  --chain-freshness D  ca.pem comes from a full handshake at most D old
                       (one made for the job when none is)            [0s]
  --output-limit N     bytes of a job's log kept and sent         [4194304]
  --artifact-size N    export ROTARY_DEMO_ARTIFACT_SIZE=N to every job: the
                       demo coordinator's jobs write an artifact that size
  --max-jobs N         stop after N jobs                           [never]
  --duration D         stop after D                                [never]
  -h, --help           this text

Per job: the CA file; git fetch and checkout of the job's commit; its
dependencies' artifacts (GET .../artifacts with each one's token, through
the redirect to object storage); each step in bash (when, allow_failure,
timeouts; masked variables never in the trace); the trace in PATCH
increments of at most 1 MiB; the artifacts zipped and POSTed (multipart,
streamed); PUT success or failed with the exit code. One line per job says
how it ended.

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
    check_interval: Duration,
    retry_backoff: Duration,
    chain_freshness: Duration,
    builds_dir: Option<PathBuf>,
    output_limit: u64,
    artifact_size: Option<u64>,
    max_jobs: Option<u64>,
    duration: Option<Duration>,
}

fn parse(args: Vec<String>, out: &Output) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let mut o = Opts {
        url: String::new(),
        token: String::new(),
        ca_file: None,
        max_age: Duration::from_secs(15 * 60),
        check_interval: Duration::from_secs(3),
        retry_backoff: Duration::from_secs(1),
        chain_freshness: Duration::ZERO,
        builds_dir: None,
        output_limit: 4 * 1024 * 1024,
        artifact_size: None,
        max_jobs: None,
        duration: None,
    };
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--url" => o.url = a.value(&arg)?,
            "--token" => o.token = a.value(&arg)?,
            "--ca-file" => o.ca_file = Some(PathBuf::from(a.value(&arg)?)),
            "--max-age" => o.max_age = a.duration(&arg)?,
            "--check-interval" => o.check_interval = a.duration(&arg)?,
            "--retry-backoff" => o.retry_backoff = a.duration(&arg)?,
            "--chain-freshness" => o.chain_freshness = a.duration(&arg)?,
            "--builds-dir" => o.builds_dir = Some(PathBuf::from(a.value(&arg)?)),
            "--output-limit" => o.output_limit = a.parse(&arg)?,
            "--artifact-size" => o.artifact_size = Some(a.parse(&arg)?),
            "--max-jobs" | "--jobs" => o.max_jobs = Some(a.parse(&arg)?),
            "--duration" => o.duration = Some(a.duration(&arg)?),
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(None);
            }
            _ => return Err(a.unknown(&arg)),
        }
    }
    if o.url.is_empty() {
        return Err(Failure::usage("--url is required"));
    }
    if o.token.is_empty() {
        return Err(Failure::usage("--token is required"));
    }
    if o.token.chars().any(char::is_control) {
        return Err(Failure::usage("--token holds characters a token never has"));
    }
    if o.max_age.is_zero() {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    if o.retry_backoff.is_zero() {
        return Err(Failure::usage("--retry-backoff must be more than zero"));
    }
    // A URL that can never work is refused now, not retried forever.
    url::join(&o.url, "/").map_err(|e| Failure::usage(format!("--url {e}")))?;
    Ok(Some(o))
}

/// Jobs so far.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
}

/// What GitLab reads from the poll's `info.features`: true only for what
/// this runner does.
fn features() -> serde_json::Value {
    serde_json::json!({
        "variables": true,
        "artifacts": true,
        "upload_multiple_artifacts": true,
        "upload_raw_artifacts": true,
        "refspecs": true,
        "masking": true,
        "return_exit_code": true,
        "multi_build_steps": true,
        "cancelable": true,
        "image": false,
        "services": false,
        "cache": false,
        "fallback_cache_keys": false,
        "shared": false,
        "session": false,
        "terminal": false,
        "proxy": false,
        "raw_variables": false,
        "artifacts_exclude": false,
        "trace_reset": false,
        "trace_checksum": false,
        "trace_size": false,
        "vault_secrets": false,
        "cancel_gracefully": false,
    })
}

/// `User-Agent`: the runner and the engine, as GitLab Runner names itself.
fn user_agent() -> String {
    // The examples are built with the workspace's version, rotary's own.
    let v = env!("CARGO_PKG_VERSION");
    format!(
        "rotary-runner/{v} (rotary {v}; {}/{})",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// GitLab Runner's `system_id`: `s_` and 12 hex digits derived from the
/// machine's id, else `r_` and 12 random ones.
fn system_id() -> String {
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => {
            let d = ring::digest::digest(
                &ring::digest::SHA256,
                format!("rotary-runner:{}", id.trim()).as_bytes(),
            );
            format!("s_{}", &crate::coordinator::hex(d.as_ref())[..12])
        }
        _ => format!("r_{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff),
    }
}

fn run(args: Vec<String>, out: &Output, stop: Arc<AtomicUsize>) -> Result<i32, Failure> {
    let Some(o) = parse(args, out)? else {
        return Ok(0);
    };
    let endpoint = url::join(&o.url, "/api/v4/jobs/request").map_err(Failure::usage)?;
    let system_id = system_id();
    let agent = user_agent();
    let poll = |last_update: Option<&str>| {
        let mut body = serde_json::json!({
            "token": o.token,
            "system_id": system_id,
            "info": {
                "name": "rotary-runner",
                "version": env!("CARGO_PKG_VERSION"),
                "platform": std::env::consts::OS,
                "architecture": std::env::consts::ARCH,
                "executor": "shell",
                "shell": "bash",
                "features": features(),
            },
        });
        if let (Some(u), Some(map)) = (last_update, body.as_object_mut()) {
            map.insert("last_update".into(), u.into());
        }
        http::Request::post(endpoint.as_str())
            .header("content-type", "application/json")
            .header("user-agent", agent.as_str())
            .body(Bytes::from(body.to_string()))
            .map_err(|e| Failure::usage(format!("--url {:?}: {e}", o.url)))
    };
    poll(None)?;

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
    config.proxy = proxies;
    config.sensitive_headers = vec![http::HeaderName::from_static("job-token")];
    if let Some(ca) = &o.ca_file {
        std::fs::metadata(ca)
            .map_err(|e| Failure::new(3, format!("cannot read CA file {}: {e}", ca.display())))?;
        config.trust = Trust::pem_file(ca);
    }
    let start = Instant::now();
    let log_out = out.clone();
    let log = move |s: String| log_out.line(format!("{:>8.3}s {s}", start.elapsed().as_secs_f64()));
    let mut api = api::Api::new(config, stop, Box::new(log.clone()), o.retry_backoff).map_err(
        |e| match (&e, &o.ca_file) {
            (rotary::BuildError::Trust { .. }, Some(ca)) => {
                Failure::new(3, format!("CA file {}: {e}", ca.display()))
            }
            (rotary::BuildError::Config(_), _) => Failure::usage(e.to_string()),
            _ => Failure::new(1, format!("cannot start the engine: {e}")),
        },
    )?;

    let temp;
    let builds: &Path = match &o.builds_dir {
        Some(d) => d,
        None => {
            temp = TempDir::new("runner").map_err(|e| Failure::new(1, format!("temp dir: {e}")))?;
            temp.path()
        }
    };
    log(format!(
        "polling {endpoint} (max age {}, check interval {}, system id {system_id}); job files go to {}",
        show(o.max_age),
        show(o.check_interval),
        builds.display()
    ));

    // GitLab holds a long poll ~50 s; allow more than that.
    let opts = RequestOptions::default().deadline(Duration::from_secs(90));
    let mut backoff = Backoff::new(o.retry_backoff, Duration::from_secs(60));
    let mut tally = Tally::default();
    let mut contact = false;
    let mut last_update: Option<String> = None;
    let mut next_poll = Instant::now();
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
        let wait = next_poll.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            api.idle(left(wait));
            continue;
        }
        // GitLab Runner's rhythm: at most one poll per check interval; a
        // poll the server held longer is followed at once.
        next_poll = Instant::now() + o.check_interval;
        let answer = match api.send_interruptible(poll(last_update.as_deref())?, opts) {
            Ok(a) => a,
            Err(ApiError::Stopped(sig)) => break Err(sig),
            Err(e) => {
                if let Some(f) = permanent(&e, contact, o.ca_file.as_deref(), &endpoint) {
                    api.shutdown();
                    return Err(f);
                }
                let wait = backoff.next();
                log(format!("poll failed: {e}; retrying in {}", show(wait)));
                next_poll = Instant::now() + wait;
                continue;
            }
        };
        let status = answer.response.status();
        match status.as_u16() {
            201 => {
                backoff.reset();
                contact = true;
                let conn = answer.served_by.conn.get();
                let (ok, line) = run_job(&mut api, &o, builds, answer.response.body(), conn, &log);
                if ok {
                    tally.ok += 1;
                } else {
                    tally.failed += 1;
                }
                log(line);
            }
            204 => {
                backoff.reset();
                contact = true;
                // Sent back with the next poll, so GitLab can hold it.
                if let Some(u) = answer
                    .response
                    .headers()
                    .get("x-gitlab-last-update")
                    .and_then(|v| v.to_str().ok())
                {
                    last_update = Some(u.to_owned());
                }
            }
            401 | 403 => {
                api.shutdown();
                return Err(Failure::new(
                    1,
                    format!("the coordinator refused the token ({status})"),
                ));
            }
            // 409: two runners raced for a job; the next poll will do.
            409 => {}
            _ => {
                let wait = if retry::retryable(status) {
                    retry::server_wait(answer.response.headers(), std::time::SystemTime::now())
                        .unwrap_or_else(|| backoff.next())
                } else {
                    backoff.next()
                };
                log(format!(
                    "poll answered {status}; retrying in {}",
                    show(wait)
                ));
                next_poll = Instant::now() + wait;
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
        rotary::Error::InvalidUri(why) | rotary::Error::InvalidHeader(why) => {
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

/// Why a job failed: the reason GitLab gets, the exit code if a program's,
/// and a line for people.
#[derive(Debug, Clone)]
struct JobFailure {
    reason: &'static str,
    exit_code: Option<i32>,
    why: String,
}

impl JobFailure {
    fn system(why: impl Into<String>) -> JobFailure {
        JobFailure {
            reason: "runner_system_failure",
            exit_code: None,
            why: why.into(),
        }
    }
}

/// Everything a job's parts need.
struct Ctx<'a> {
    api: &'a mut api::Api,
    o: &'a Opts,
    job: &'a Job,
    /// `<builds>/job-<id>`.
    dir: PathBuf,
    /// Where the checkout goes and the steps run.
    project: PathBuf,
    trace: Trace,
    /// The job's timeout.
    deadline: Instant,
    /// The coordinator canceled the job (`Job-Status: canceled` or a 403).
    canceled: bool,
    log: &'a dyn Fn(String),
}

impl Ctx<'_> {
    fn url(&self, endpoint: &str) -> Result<String, String> {
        url::join(&self.o.url, endpoint)
    }

    /// Why the job must stop now, if it must.
    fn must_stop(&self) -> Option<Stop> {
        if self.canceled {
            return Some(Stop::Canceled);
        }
        if let Some(sig) = self.api.stopped() {
            return Some(Stop::Signal(signal_name(sig)));
        }
        if Instant::now() >= self.deadline {
            return Some(Stop::Timeout);
        }
        None
    }

    /// The failure a stop means.
    fn stopped(&self, stop: &Stop) -> JobFailure {
        match stop {
            Stop::Canceled => JobFailure {
                reason: "script_failure",
                exit_code: None,
                why: "canceled by the coordinator".into(),
            },
            Stop::Signal(name) => JobFailure::system(format!("interrupted by {name}")),
            Stop::Timeout => JobFailure {
                reason: "job_execution_timeout",
                exit_code: None,
                why: format!(
                    "execution took longer than {} seconds",
                    self.job.runner_info.timeout
                ),
            },
        }
    }

    /// A `Job-Status` that means the job is over for the runner.
    fn note_status(&mut self, headers: &http::HeaderMap) {
        let status = headers.get("job-status").and_then(|v| v.to_str().ok());
        if matches!(
            status,
            Some("canceled" | "canceling" | "failed" | "success")
        ) {
            self.canceled = true;
        }
    }

    /// Send the trace bytes not yet sent, in increments of at most 1 MiB;
    /// on 416 resume from the server's `Range`; a 403 or `Job-Status:
    /// canceled` marks the job canceled.
    fn flush(&mut self) -> Result<(), String> {
        if let Some(why) = &self.trace.broken {
            return Err(format!("PATCH trace: {why}"));
        }
        let url = self.url(&format!("/api/v4/jobs/{}/trace", self.job.id))?;
        // Enough rounds for every MiB, and a few 416s.
        let rounds = (self.trace.len - self.trace.sent.min(self.trace.len)) / trace::MAX_PATCH + 4;
        for _ in 0..rounds {
            let Some((chunk, end)) = self.trace.increment()? else {
                self.trace.last_contact = Some(Instant::now());
                return Ok(());
            };
            let start = self.trace.sent;
            let token = self.job.token.clone();
            let a = self
                .api
                .call("PATCH trace", job_call(), 5, &mut || {
                    http::Request::patch(url.as_str())
                        .header("job-token", token.as_str())
                        .header("content-type", "text/plain")
                        .header("content-range", format!("{start}-{}", end - 1))
                        .body(rotary::Body::from(chunk.clone()))
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| format!("PATCH trace: {e}"))?;
            let h = a.response.headers().clone();
            if let Some(i) = retry::update_interval(&h) {
                self.trace.interval = i;
            }
            self.note_status(&h);
            self.trace.last_contact = Some(Instant::now());
            match a.response.status().as_u16() {
                202 => {
                    self.trace.sent = end;
                    self.trace.patches += 1;
                }
                403 => {
                    self.canceled = true;
                    return Ok(());
                }
                416 => {
                    let remote = h
                        .get("range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().strip_prefix("0-"))
                        .and_then(|n| n.parse::<u64>().ok());
                    match remote {
                        // The server holds a different prefix: resend from there.
                        Some(n) if n <= self.trace.len => self.trace.sent = n,
                        _ => return Err("PATCH trace: 416 without a usable Range".into()),
                    }
                }
                s => return Err(format!("PATCH trace: coordinator answered {s}")),
            }
        }
        if self.trace.sent >= self.trace.len {
            Ok(())
        } else {
            Err("PATCH trace: refused again and again".into())
        }
    }

    /// At the server's interval: send what is new, or, when a job stays
    /// silent ten intervals, tell the coordinator it still runs (`PUT`
    /// `running`), so a cancel reaches it either way.
    fn tick(&mut self) {
        if !self.trace.due() {
            return;
        }
        if self.trace.sent < self.trace.len {
            if let Err(e) = self.flush() {
                (self.log)(format!("job {}: {e}", self.job.id));
                self.trace.last_contact = Some(Instant::now());
            }
            return;
        }
        let silent = self
            .trace
            .last_contact
            .map_or(Duration::MAX, |t| t.elapsed());
        if silent >= self.trace.interval.saturating_mul(10) {
            self.touch();
        }
    }

    /// `PUT` state `running`: a keep-alive that learns of a cancel.
    fn touch(&mut self) {
        self.trace.last_contact = Some(Instant::now());
        let Ok(url) = self.url(&format!("/api/v4/jobs/{}", self.job.id)) else {
            return;
        };
        let body = serde_json::json!({"token": self.job.token, "state": "running"}).to_string();
        let sent = self.api.call("PUT running", job_call(), 3, &mut || {
            http::Request::put(url.as_str())
                .header("content-type", "application/json")
                .body(rotary::Body::from(Bytes::from(body.clone())))
                .map_err(|e| e.to_string())
        });
        if let Ok(a) = sent {
            self.note_status(a.response.headers());
            if a.response.status() == 403 {
                self.canceled = true;
            }
        }
    }
}

impl exec::Watch for Ctx<'_> {
    fn output(&mut self, data: &[u8]) {
        self.trace.write(data);
    }

    fn tick(&mut self) -> Option<Stop> {
        Ctx::tick(self);
        self.must_stop()
    }
}

/// Options of a job's API calls: short, and safe to send again (GitLab's
/// job state and trace ranges are idempotent).
fn job_call() -> RequestOptions {
    RequestOptions::default()
        .deadline(Duration::from_secs(30))
        .retry_safe(true)
}

/// The masked values of the job: its masked variables and every token.
fn secrets(job: &Job) -> Vec<String> {
    let mut s: Vec<String> = job
        .variables
        .iter()
        .filter(|v| v.masked)
        .map(|v| v.value.clone())
        .collect();
    s.push(job.token.clone());
    s.extend(job.dependencies.iter().map(|d| d.token.clone()));
    s
}

/// Run one job from its `201` body; (succeeded, the line saying how it
/// ended).
fn run_job(
    api: &mut api::Api,
    o: &Opts,
    builds: &Path,
    body: &[u8],
    conn: u64,
    log: &dyn Fn(String),
) -> (bool, String) {
    let job = match Job::parse(body) {
        Ok(j) => j,
        Err(why) => return (false, unreadable_job(api, o, body, &why)),
    };
    let id = job.id;
    log(format!(
        "job {id}: started ({}, {} steps), delivered on connection #{conn}",
        if job.job_info.name.is_empty() {
            "unnamed"
        } else {
            &job.job_info.name
        },
        job.steps.len()
    ));
    let dir = builds.join(format!("job-{id}"));
    let setup = std::fs::create_dir_all(dir.join("tmp"))
        .map_err(|e| format!("creating {}: {e}", dir.display()))
        .and_then(|()| Trace::new(&dir, mask::Masker::new(secrets(&job)), o.output_limit));
    let trace = match setup {
        Ok(t) => t,
        Err(why) => {
            let f = JobFailure::system(why);
            let mut ctx_less = FinalUpdate::new(api, o, &job);
            let _ = ctx_less.send(Some(&f), log);
            return (false, format!("job {id}: failed: {}", f.why));
        }
    };
    let timeout = match job.runner_info.timeout {
        0 => Duration::from_secs(3600),
        t => Duration::from_secs(t),
    };
    let mut ctx = Ctx {
        api,
        o,
        job: &job,
        project: dir.join("project"),
        dir,
        trace,
        deadline: Instant::now() + timeout,
        canceled: false,
        log,
    };
    let result = steps(&mut ctx);
    let _ = std::fs::remove_dir_all(ctx.dir.join("tmp"));
    let failure = result.err();
    match &failure {
        None => ctx.trace.line("Job succeeded"),
        Some(f) => ctx.trace.line(format!("ERROR: Job failed: {}", f.why)),
    }
    ctx.trace.settle();
    // Report it even when stopping; what fails here is secondary.
    let flushed = ctx.flush();
    let trace_line = format!(
        "trace {} bytes in {} increments",
        ctx.trace.len, ctx.trace.patches
    );
    let canceled = ctx.canceled;
    let mut update = FinalUpdate::new(ctx.api, o, &job);
    let accepted = update.send(failure.as_ref(), log);
    match failure {
        None => match (flushed, accepted) {
            (Ok(()), Ok(())) => (true, format!("job {id}: success ({trace_line})")),
            (Err(e), _) | (_, Err(e)) => (false, format!("job {id}: failed: {e}")),
        },
        Some(f) if canceled => (
            false,
            format!("job {id}: failed: canceled by the coordinator ({})", f.why),
        ),
        Some(f) => (false, format!("job {id}: failed: {}", f.why)),
    }
}

/// A `201` whose job cannot be read: reported failed when its id and token
/// can be found.
fn unreadable_job(api: &mut api::Api, o: &Opts, body: &[u8], why: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Minimal {
        id: u64,
        token: String,
    }
    match serde_json::from_slice::<Minimal>(body) {
        Ok(m) => {
            let job = Job {
                id: m.id,
                token: m.token,
                ..Job::default()
            };
            let f = JobFailure::system(why);
            let _ = FinalUpdate::new(api, o, &job).send(Some(&f), &|_| {});
            format!("job {}: failed: {why}", job.id)
        }
        Err(_) => format!("job ?: failed: {why}"),
    }
}

/// The job's parts, in GitLab Runner's order.
fn steps(ctx: &mut Ctx<'_>) -> Result<(), JobFailure> {
    let job = ctx.job;
    ctx.trace.line(format!(
        "Running with rotary-runner {} (job {}, {})",
        env!("CARGO_PKG_VERSION"),
        job.id,
        user_agent()
    ));
    ctx.tick();
    if let Some(s) = ctx.must_stop() {
        return Err(ctx.stopped(&s));
    }
    // 1. The CA file: the coordinator's chain as it is now (a full
    // handshake made for the job), not the long poll's, which may predate
    // a rotation by up to a max age.
    let ca_file = ca_file(ctx)?;
    // 2. The checkout, with that CA file and the job token.
    std::fs::create_dir_all(&ctx.project)
        .map_err(|e| JobFailure::system(format!("creating {}: {e}", ctx.project.display())))?;
    checkout::checkout(ctx, ca_file.as_deref())?;
    // 3. The dependencies' artifacts.
    artifacts::download_dependencies(ctx)?;
    // 4. The steps.
    let env = environment(ctx, ca_file.as_deref())?;
    let mut failure: Option<JobFailure> = None;
    for step in &job.steps {
        if !step.when.applies(failure.is_some()) {
            continue;
        }
        if let Some(s) = ctx.must_stop() {
            failure.get_or_insert(ctx.stopped(&s));
            break;
        }
        match run_step(ctx, step, &env) {
            Ok(()) => {}
            Err(f) if step.allow_failure && f.reason == "script_failure" && !ctx.canceled => {
                ctx.trace.line(format!(
                    "WARNING: step {} failed (allowed to fail): {}",
                    step.name, f.why
                ));
            }
            Err(f) => {
                let stop = f.reason != "script_failure" || ctx.canceled;
                failure.get_or_insert(f);
                if stop {
                    break;
                }
            }
        }
    }
    // 5. The artifacts, as the job ended.
    if !ctx.canceled && ctx.api.stopped().is_none() {
        if let Err(f) = artifacts::upload(ctx, failure.is_some()) {
            failure.get_or_insert(f);
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Write `ca.pem` for the job: the CA bundle of a fresh chain.
fn ca_file(ctx: &mut Ctx<'_>) -> Result<Option<PathBuf>, JobFailure> {
    let origin = rotary::Origin::from_uri(
        &ctx.o
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| JobFailure::system(e.to_string()))?,
    )
    .map_err(|e| JobFailure::system(e.to_string()))?;
    if !origin.is_tls() {
        ctx.trace.line("Job delivered over plain http: no CA file");
        return Ok(None);
    }
    let chain = ctx
        .api
        .fresh_chain(&origin, ctx.o.chain_freshness)
        .map_err(|e| {
            JobFailure::system(format!(
                "the coordinator's chain for the job's CA file: {e}"
            ))
        })?;
    match chain.ca_bundle() {
        Ok(bundle) => {
            let file = ctx.dir.join("ca.pem");
            std::fs::write(&file, bundle)
                .map_err(|e| JobFailure::system(format!("writing {}: {e}", file.display())))?;
            (ctx.log)(format!(
                "job {}: CA file {} (chain {}, root {})",
                ctx.job.id,
                file.display(),
                api::fingerprint(Some(&chain)),
                root(&chain)
            ));
            Ok(Some(file))
        }
        Err(why) => {
            ctx.trace.line(format!(
                "No CA file for the job (the system's store applies): {why}"
            ));
            Ok(None)
        }
    }
}

/// The steps' environment: the runner's own, the job's variables (file
/// variables as paths to files holding their values), and the CA file.
fn environment(ctx: &mut Ctx<'_>, ca: Option<&Path>) -> Result<Vec<(String, String)>, JobFailure> {
    let mut env = Vec::new();
    let files = ctx.dir.join("tmp");
    for v in &ctx.job.variables {
        if v.key.is_empty() || v.key.contains(['=', '\0']) || v.value.contains('\0') {
            ctx.trace
                .line(format!("WARNING: variable {:?} cannot be exported", v.key));
            continue;
        }
        if v.file {
            let path = files.join(format!("{}.var", v.key));
            std::fs::write(&path, &v.value)
                .map_err(|e| JobFailure::system(format!("writing {}: {e}", path.display())))?;
            env.push((v.key.clone(), path.display().to_string()));
        } else {
            env.push((v.key.clone(), v.value.clone()));
        }
    }
    if let Some(ca) = ca {
        env.push(("CI_SERVER_TLS_CA_FILE".into(), ca.display().to_string()));
    }
    env.push(("CI_PROJECT_DIR".into(), ctx.project.display().to_string()));
    env.push(("CI_BUILDS_DIR".into(), ctx.dir.display().to_string()));
    if let Some(n) = ctx.o.artifact_size {
        env.push((
            crate::coordinator::DEMO_ARTIFACT_SIZE_VARIABLE.into(),
            n.to_string(),
        ));
    }
    Ok(env)
}

/// One step: its script in `bash` (`set -eo pipefail`, each line shown as
/// `$ line` before it runs), in the project directory, within the step's
/// and the job's timeouts.
fn run_step(
    ctx: &mut Ctx<'_>,
    step: &job::Step,
    env: &[(String, String)],
) -> Result<(), JobFailure> {
    let mut script = String::from("set -eo pipefail\nexec 2>&1\n");
    for line in &step.script {
        script.push_str(&format!(
            "printf '%s\\n' {}\n",
            shell_quote(&format!("$ {line}"))
        ));
        script.push_str(line);
        script.push('\n');
    }
    let path = ctx
        .dir
        .join("tmp")
        .join(format!("step_{}.sh", safe_name(&step.name)));
    std::fs::write(&path, script)
        .map_err(|e| JobFailure::system(format!("writing {}: {e}", path.display())))?;
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["--noprofile", "--norc"])
        .arg(&path)
        .current_dir(&ctx.project)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let deadline = match step.timeout {
        0 => ctx.deadline,
        t => ctx.deadline.min(Instant::now() + Duration::from_secs(t)),
    };
    ctx.trace.line(format!(
        "Executing \"step_{}\" stage of the job script",
        step.name
    ));
    let ended = exec::run(cmd, deadline, ctx).map_err(JobFailure::system);
    ctx.trace.settle();
    match ended? {
        Ended::Exited(0) => Ok(()),
        Ended::Exited(code) => Err(JobFailure {
            reason: "script_failure",
            exit_code: Some(code),
            why: format!("exit code {code}"),
        }),
        Ended::Stopped(Stop::Timeout) if Instant::now() < ctx.deadline => Err(JobFailure {
            reason: "script_failure",
            exit_code: None,
            why: format!(
                "step {} took longer than {} seconds",
                step.name, step.timeout
            ),
        }),
        Ended::Stopped(s) => Err(ctx.stopped(&s)),
    }
}

/// `'...'` for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A step name fit for a file name.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// The final `PUT /api/v4/jobs/:id`, sent until the coordinator answers
/// 200, 403 or 404; a 202 (GitLab still writing the trace) is sent again
/// after the trace interval, other answers after the retry waits.
struct FinalUpdate<'a> {
    api: &'a mut api::Api,
    o: &'a Opts,
    job: &'a Job,
}

/// How long the final update is tried (GitLab Runner tries for an hour).
const FINAL_UPDATE_FOR: Duration = Duration::from_secs(3600);

impl<'a> FinalUpdate<'a> {
    fn new(api: &'a mut api::Api, o: &'a Opts, job: &'a Job) -> FinalUpdate<'a> {
        FinalUpdate { api, o, job }
    }

    fn send(&mut self, failure: Option<&JobFailure>, log: &dyn Fn(String)) -> Result<(), String> {
        let url = url::join(&self.o.url, &format!("/api/v4/jobs/{}", self.job.id))?;
        let mut body = serde_json::json!({
            "token": self.job.token,
            "state": if failure.is_some() { "failed" } else { "success" },
        });
        if let (Some(f), Some(map)) = (failure, body.as_object_mut()) {
            map.insert("failure_reason".into(), f.reason.into());
            if let Some(code) = f.exit_code {
                map.insert("exit_code".into(), code.into());
            }
        }
        let body = Bytes::from(body.to_string());
        let until = Instant::now() + FINAL_UPDATE_FOR;
        let mut backoff = Backoff::new(self.o.retry_backoff, Duration::from_secs(60));
        // Once a signal came, a few more tries at most.
        let mut tries_after_stop = 3;
        loop {
            let req = http::Request::put(url.as_str())
                .header("content-type", "application/json")
                .body(body.clone())
                .map_err(|e| e.to_string())?;
            let wait = match self.api.send(req, job_call()) {
                Ok(a) => {
                    let s = a.response.status();
                    match s.as_u16() {
                        200 | 403 | 404 => return Ok(()),
                        202 => retry::update_interval(a.response.headers())
                            .unwrap_or(Duration::from_secs(3)),
                        _ if retry::retryable(s) => {
                            retry::server_wait(a.response.headers(), std::time::SystemTime::now())
                                .unwrap_or_else(|| backoff.next())
                        }
                        _ => backoff.next(),
                    }
                }
                Err(_) => backoff.next(),
            };
            if self.api.stopped().is_some() {
                tries_after_stop -= 1;
                if tries_after_stop == 0 {
                    return Err("the final state was not taken before the runner stopped".into());
                }
            }
            if Instant::now() + wait > until {
                return Err("the coordinator never took the final state".into());
            }
            log(format!(
                "job {}: final state not taken yet; again in {}",
                self.job.id,
                show(wait)
            ));
            self.api.pause(wait);
        }
    }
}

/// The subject of the root the chain's verified path ended at.
fn root(chain: &PeerChain) -> String {
    chain
        .verified_path()
        .map_or_else(|| "-".to_owned(), |p| p.anchor().subject())
}
