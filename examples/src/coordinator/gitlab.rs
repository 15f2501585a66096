//! GitLab's job API as the coordinator serves it, held to GitLab's rules:
//! the long poll (held only for a current `last_update`, as Workhorse
//! does; `X-GitLab-Last-Update` on every `204`), jobs dropped when they
//! need a feature the runner did not announce (`runner_unsupported`), job
//! state (`PUT /api/v4/jobs/:id`, `403` once canceled), incremental traces
//! (`PATCH .../trace` with `Content-Range`, a wrong offset refused with 416
//! and the server's `Range`, `Job-Status` in every answer), artifact
//! uploads (multipart, measured and stored as they stream in) and
//! downloads (a dependency's token, then a `302` to the object storage
//! origin, which refuses requests that carry a job token, as S3 refuses a
//! presigned URL with a second credential).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ring::digest::{Context, SHA256};
use serde::Deserialize;

use super::http1::{Body, Head};
use super::multipart::{hex, FilePart, Multipart};
use super::{sleep_unless_stopped, Reply, Shared};
use crate::runner::job::{self as payload, When};

/// The variable the demo job's script reads its artifact's size from
/// (the runner's `--artifact-size` sets it).
pub const DEMO_ARTIFACT_SIZE_VARIABLE: &str = "ROTARY_DEMO_ARTIFACT_SIZE";

/// Job records kept (oldest dropped first): a long `--serve` stays bounded.
const MAX_RECORDS: usize = 4096;
/// Finished-job reports kept until someone takes them.
const MAX_REPORTS: usize = 1024;
/// Largest JSON body (job request, job update).
const MAX_JSON: usize = 64 * 1024;
/// Largest trace increment.
const MAX_TRACE_PATCH: usize = 4 * 1024 * 1024;
/// Trace bytes of each job kept for its report (moved into the report
/// when the job ends, so finished records hold none).
const MAX_KEPT_TRACE: usize = 256 * 1024;
/// Polls remembered for [`super::Coordinator::polls`].
const MAX_POLLS: usize = 256;
/// Queued job specs.
const MAX_QUEUE: usize = 1024;

/// A job to hand out, queued with [`super::Coordinator::enqueue`].
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// Its name (`job_info.name`).
    pub name: String,
    /// Its steps, in order.
    pub steps: Vec<payload::Step>,
    /// Its variables (after the predefined `CI_*` ones).
    pub variables: Vec<payload::Variable>,
    /// What it uploads.
    pub artifacts: Vec<payload::Artifact>,
    /// Earlier jobs whose artifacts it needs: each is listed as a
    /// dependency with a download token of its own, and with its archive
    /// when it kept one.
    pub dependencies: Vec<u64>,
    /// `runner_info.timeout` in seconds; 0: an hour.
    pub timeout: u64,
    /// Features the runner must announce. Beside these, as GitLab decides:
    /// a report artifact needs `upload_multiple_artifacts`, a step other
    /// than `script` and `after_script` needs `multi_build_steps`.
    pub requires: Vec<String>,
}

impl JobSpec {
    /// A job named `test` with one `script` step of `lines`.
    pub fn script(lines: &[&str]) -> JobSpec {
        JobSpec {
            name: "test".into(),
            steps: vec![payload::Step {
                name: "script".into(),
                script: lines.iter().map(|l| l.to_string()).collect(),
                timeout: 3600,
                when: When::OnSuccess,
                allow_failure: false,
            }],
            ..JobSpec::default()
        }
    }

    /// Add a step run whatever happened, whose failure fails nothing.
    pub fn after_script(mut self, lines: &[&str]) -> JobSpec {
        self.steps.push(payload::Step {
            name: "after_script".into(),
            script: lines.iter().map(|l| l.to_string()).collect(),
            timeout: 300,
            when: When::Always,
            allow_failure: true,
        });
        self
    }

    /// Add a variable (`masked`: never in the trace).
    pub fn variable(mut self, key: &str, value: &str, masked: bool) -> JobSpec {
        self.variables.push(payload::Variable {
            key: key.into(),
            value: value.into(),
            public: !masked,
            masked,
            file: false,
        });
        self
    }

    /// Add a file variable: the value in a file, the variable its path.
    pub fn file_variable(mut self, key: &str, value: &str) -> JobSpec {
        self.variables.push(payload::Variable {
            key: key.into(),
            value: value.into(),
            public: false,
            masked: false,
            file: true,
        });
        self
    }

    /// Upload `paths` as the job's zip archive, `when` it ended so.
    pub fn archive(mut self, paths: &[&str], when: When) -> JobSpec {
        self.artifacts.push(payload::Artifact {
            name: "artifacts".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            when,
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
            expire_in: "1 day".into(),
            ..payload::Artifact::default()
        });
        self
    }

    /// Every feature the runner must announce for this job.
    pub fn required_features(&self) -> Vec<String> {
        let mut f = self.requires.clone();
        let report =
            |a: &payload::Artifact| !a.artifact_type.is_empty() && a.artifact_type != "archive";
        if self.artifacts.iter().any(report) {
            f.push("upload_multiple_artifacts".into());
        }
        if self
            .steps
            .iter()
            .any(|s| s.name != "script" && s.name != "after_script")
        {
            f.push("multi_build_steps".into());
        }
        f.sort();
        f.dedup();
        f
    }
}

/// One `POST /api/v4/jobs/request` as the coordinator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSeen {
    /// The runner's token.
    pub token: String,
    /// The `last_update` it sent.
    pub last_update: Option<String>,
    /// The `X-GitLab-Last-Update` it got back (on a `204`).
    pub next_update: Option<String>,
    /// It was held.
    pub held: bool,
    /// The answer's status.
    pub status: u16,
    /// The job handed out, if any.
    pub job: Option<u64>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `system_id`.
    pub system_id: Option<String>,
    /// `info.features`, as announced.
    pub features: BTreeMap<String, bool>,
}

/// One artifact upload as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactUpload {
    /// The `file` part.
    pub file: FilePart,
    /// `artifact_type` of the query (`archive` when absent).
    pub artifact_type: String,
    /// `artifact_format` of the query (`zip` when absent).
    pub artifact_format: String,
    /// `expire_in` of the query.
    pub expire_in: Option<String>,
}

/// A job's end as the coordinator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `success` or `failed` as the runner set it, or `canceled`.
    pub state: String,
    /// The runner's `failure_reason` (or `runner_unsupported` for a job
    /// dropped before any runner took it).
    pub failure_reason: Option<String>,
    /// The runner's `exit_code`.
    pub exit_code: Option<i64>,
    /// Trace bytes received, in order (each increment started where the
    /// previous ended).
    pub trace_bytes: u64,
    /// Trace increments accepted.
    pub trace_patches: u32,
    /// The largest increment.
    pub trace_largest_patch: u64,
    /// Trace increments refused with 416 (wrong `Content-Range` start).
    pub trace_refused: u32,
    /// SHA-256 of the whole trace, lowercase hex.
    pub trace_sha256: String,
    /// The trace's first 256 KiB.
    pub trace: Vec<u8>,
    /// The uploaded archive's `file` part, as received.
    pub artifact: Option<FilePart>,
    /// Every upload (archive and reports).
    pub uploads: Vec<ArtifactUpload>,
    /// The dependencies whose artifacts it downloaded, in order.
    pub downloads: Vec<u64>,
    /// Final state updates received (more than one after a `202`).
    pub final_updates: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Success,
    Failed,
    Canceled,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Success => "success",
            State::Failed => "failed",
            State::Canceled => "canceled",
        }
    }
}

struct Record {
    name: String,
    token: String,
    state: State,
    trace_len: u64,
    trace_patches: u32,
    trace_largest: u64,
    trace_refused: u32,
    trace_hash: Context,
    trace: Vec<u8>,
    artifact: Option<FilePart>,
    /// The archive on disk and its size, while kept.
    stored: Option<(PathBuf, u64)>,
    uploads: Vec<ArtifactUpload>,
    downloads: Vec<u64>,
    /// (dependency id, the token this job downloads it with).
    dep_tokens: Vec<(u64, String)>,
    final_updates: u32,
    reported: bool,
}

impl Record {
    /// The job's report; the kept trace moves into it.
    fn report(
        &mut self,
        id: u64,
        state: &str,
        reason: Option<String>,
        exit: Option<i64>,
    ) -> JobReport {
        JobReport {
            id,
            name: self.name.clone(),
            state: state.to_owned(),
            failure_reason: reason,
            exit_code: exit,
            trace_bytes: self.trace_len,
            trace_patches: self.trace_patches,
            trace_largest_patch: self.trace_largest,
            trace_refused: self.trace_refused,
            trace_sha256: hex(self.trace_hash.clone().finish().as_ref()),
            trace: std::mem::take(&mut self.trace),
            artifact: self.artifact.clone(),
            uploads: self.uploads.clone(),
            downloads: self.downloads.clone(),
            final_updates: self.final_updates,
        }
    }
}

/// Endpoints faults are injected on.
const ENDPOINTS: [&str; 5] = ["request", "update", "trace", "upload", "download"];

/// Every job handed out (bounded), the queue and the reports.
#[derive(Default)]
pub(super) struct Jobs {
    records: BTreeMap<u64, Record>,
    reports: VecDeque<JobReport>,
    queue: VecDeque<(u64, JobSpec)>,
    pub(super) polls: VecDeque<PollSeen>,
    last_id: u64,
    /// Bumped whenever the queue changes; part of every `last_update`.
    queue_gen: u64,
    /// Per endpoint: requests, 429s, 502s.
    faults: BTreeMap<&'static str, (u64, u64, u64)>,
    /// Jobs whose archive is on disk, oldest first.
    stored: VecDeque<u64>,
    /// The last job that kept an archive (the demo job's dependency).
    last_archive: Option<u64>,
}

impl Jobs {
    /// Reports of jobs finished since the last call.
    pub(super) fn take_reports(&mut self) -> Vec<JobReport> {
        self.reports.drain(..).collect()
    }

    /// `(endpoint, 429s, 502s)`.
    pub(super) fn faults(&self) -> Vec<(&'static str, u64, u64)> {
        ENDPOINTS
            .iter()
            .map(|e| {
                let (_, a, b) = self.faults.get(e).copied().unwrap_or_default();
                (*e, a, b)
            })
            .collect()
    }

    fn push_report(&mut self, report: JobReport) {
        self.reports.push_back(report);
        while self.reports.len() > MAX_REPORTS {
            self.reports.pop_front();
        }
    }
}

pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Jobs> {
    shared.jobs.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn enqueue(shared: &Shared, spec: JobSpec) -> u64 {
    let mut jobs = lock(shared);
    jobs.last_id += 1;
    let id = jobs.last_id;
    jobs.queue.push_back((id, spec));
    while jobs.queue.len() > MAX_QUEUE {
        jobs.queue.pop_front();
    }
    jobs.queue_gen += 1;
    id
}

pub(super) fn cancel(shared: &Shared, id: u64) -> bool {
    let mut jobs = lock(shared);
    match jobs.records.get_mut(&id) {
        Some(r) if r.state == State::Running => {
            r.state = State::Canceled;
            true
        }
        _ => false,
    }
}

/// `token` is a running job's (the git repository's credentials).
pub(super) fn running_token(shared: &Shared, token: &str) -> bool {
    lock(shared)
        .records
        .values()
        .any(|r| r.state == State::Running && r.token == token)
}

pub(super) fn trace(shared: &Shared, id: u64) -> Option<Vec<u8>> {
    lock(shared).records.get(&id).map(|r| r.trace.clone())
}

pub(super) fn state(shared: &Shared, id: u64) -> Option<&'static str> {
    let jobs = lock(shared);
    if jobs.queue.iter().any(|(q, _)| *q == id) {
        return Some("pending");
    }
    jobs.records.get(&id).map(|r| r.state.name())
}

fn json(status: &'static str, body: String) -> Reply {
    Reply::new(status, "application/json", body.into_bytes())
}

fn message(status: &'static str) -> Reply {
    json(status, format!(r#"{{"message":"{status}"}}"#))
}

/// `"3"` for whole seconds, `"0.050"` otherwise: GitLab sends whole
/// seconds; the tests want tens of milliseconds.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

fn signature(shared: &Shared, what: &str) -> String {
    let mut c = Context::new(&SHA256);
    c.update(shared.secret.as_bytes());
    c.update(what.as_bytes());
    hex(c.finish().as_ref()).chars().take(32).collect()
}

/// Read what is left of a body (within its route's limit), so an early
/// answer leaves the connection usable.
fn drain(body: &mut Body<'_>, limit: u64) -> io::Result<()> {
    while body.next(&mut |_| {})? {
        if body.bytes_read() > limit {
            break;
        }
    }
    Ok(())
}

/// The injected fault for this request to `endpoint`, if one is due: the
/// 1st of every `fault_every` is a `429`, the 2nd a `502`.
fn fault(shared: &Shared, endpoint: &'static str) -> Option<Reply> {
    let every = u64::from(shared.settings.fault_every);
    if every == 0 {
        return None;
    }
    let mut jobs = lock(shared);
    let f = jobs.faults.entry(endpoint).or_default();
    f.0 += 1;
    match (f.0 - 1) % every {
        0 => {
            f.1 += 1;
            let reset = SystemTime::now() + shared.settings.rate_limit_reset;
            Some(
                message("429 Too Many Requests")
                    .header("RateLimit-ResetTime", httpdate::fmt_http_date(reset))
                    .header(
                        "Retry-After",
                        shared.settings.rate_limit_reset.as_secs().to_string(),
                    ),
            )
        }
        1 => {
            f.2 += 1;
            Some(Reply::new(
                "502 Bad Gateway",
                "text/html",
                b"<html><body><h1>502 Bad Gateway</h1></body></html>\n".to_vec(),
            ))
        }
        _ => None,
    }
}

/// The poll's JSON body, as far as the coordinator reads it.
#[derive(Deserialize, Default)]
struct PollBody {
    #[serde(default)]
    token: String,
    #[serde(default)]
    last_update: Option<String>,
    #[serde(default)]
    system_id: Option<String>,
    #[serde(default)]
    info: Option<PollInfo>,
}

#[derive(Deserialize, Default)]
struct PollInfo {
    #[serde(default)]
    features: BTreeMap<String, serde_json::Value>,
}

/// The token's queue state: changes when a job is queued or handed out,
/// and when the token's demo job falls due.
fn queue_state(shared: &Shared, token: &str, now: Instant) -> String {
    let due = shared.settings.demo_jobs && demo_due(shared, token, now);
    let jobs = lock(shared);
    format!("{}-{}", jobs.queue_gen, u8::from(due))
}

fn demo_due(shared: &Shared, token: &str, now: Instant) -> bool {
    let last = shared.last_job.lock().unwrap_or_else(|p| p.into_inner());
    last.get(token)
        .is_none_or(|t| *t + shared.settings.job_every <= now)
}

/// `POST /api/v4/jobs/request`: answered at once unless `last_update` is
/// the token's current queue state; then held until it changes or `hold`
/// passes, as Workhorse holds it.
pub(super) fn job_request(head: &Head, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let Ok(raw) = body.read_all(MAX_JSON)? else {
        return Ok(message("413 Payload Too Large"));
    };
    if let Some(f) = fault(shared, "request") {
        return Ok(f);
    }
    let poll: PollBody = match serde_json::from_slice(&raw) {
        Ok(p) => p,
        Err(e) => {
            return Ok(json(
                "400 Bad Request",
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ))
        }
    };
    if poll.token.is_empty() {
        return Ok(json(
            "403 Forbidden",
            r#"{"message":"403 Forbidden - no runner token"}"#.into(),
        ));
    }
    shared.polls.fetch_add(1, Ordering::Relaxed);
    let features: BTreeMap<String, bool> = poll
        .info
        .map(|i| i.features)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.as_bool().unwrap_or(false)))
        .collect();
    let mut seen = PollSeen {
        token: poll.token.clone(),
        last_update: poll.last_update.clone(),
        next_update: None,
        held: false,
        status: 204,
        job: None,
        user_agent: head.header("user-agent").map(str::to_owned),
        system_id: poll.system_id,
        features,
    };
    let token = poll.token;
    let start = Instant::now();
    if poll.last_update.as_deref() == Some(queue_state(shared, &token, start).as_str()) {
        seen.held = true;
        shared.polls_held.fetch_add(1, Ordering::Relaxed);
        let hold_end = start + shared.settings.hold;
        loop {
            let now = Instant::now();
            if poll.last_update.as_deref() != Some(queue_state(shared, &token, now).as_str()) {
                break;
            }
            if now >= hold_end || shared.stopping() {
                break;
            }
            sleep_unless_stopped((hold_end - now).min(Duration::from_millis(10)), shared);
        }
    }
    let reply = match next_job(shared, &token, &seen.features) {
        Some((id, job)) => {
            seen.status = 201;
            seen.job = Some(id);
            json("201 Created", job)
        }
        None => {
            let state = queue_state(shared, &token, Instant::now());
            seen.next_update = Some(state.clone());
            Reply::new("204 No Content", "", Vec::new()).header("X-GitLab-Last-Update", state)
        }
    };
    let mut jobs = lock(shared);
    jobs.polls.push_back(seen);
    while jobs.polls.len() > MAX_POLLS {
        jobs.polls.pop_front();
    }
    Ok(reply)
}

/// The demo job: one line writing an artifact, which depends on the last
/// job that kept an archive.
fn demo_spec(last_archive: Option<u64>) -> JobSpec {
    let line = format!(
        "head -c \"${{{DEMO_ARTIFACT_SIZE_VARIABLE}:-4194304}}\" /dev/urandom > artifact.bin"
    );
    let mut spec = JobSpec::script(&[line.as_str()]).archive(&["artifact.bin"], When::OnSuccess);
    spec.name = "build".into();
    spec.dependencies = last_archive.into_iter().collect();
    spec
}

/// The next job for a runner announcing `features`, as JSON: a queued
/// spec (one that needs what the runner lacks is dropped on the way, as
/// GitLab drops it), else a due demo job.
fn next_job(
    shared: &Shared,
    token: &str,
    features: &BTreeMap<String, bool>,
) -> Option<(u64, String)> {
    // The repository first: making it runs git, outside the lock.
    let repo = if shared.settings.repository {
        match shared
            .repo
            .get_or_init(|| super::git::Repo::create(shared.dir.path()))
        {
            Ok(r) => Some(r.sha.clone()),
            Err(_) => None,
        }
    } else {
        None
    };
    let mut jobs = lock(shared);
    let (id, spec) = loop {
        match jobs.queue.pop_front() {
            Some((id, spec)) => {
                jobs.queue_gen += 1;
                let missing: Vec<String> = spec
                    .required_features()
                    .into_iter()
                    .filter(|f| features.get(f) != Some(&true))
                    .collect();
                if missing.is_empty() {
                    break (id, spec);
                }
                let dropped = JobReport {
                    id,
                    name: spec.name.clone(),
                    state: "failed".into(),
                    failure_reason: Some("runner_unsupported".into()),
                    exit_code: None,
                    trace_bytes: 0,
                    trace_patches: 0,
                    trace_largest_patch: 0,
                    trace_refused: 0,
                    trace_sha256: hex(Context::new(&SHA256).finish().as_ref()),
                    trace: Vec::new(),
                    artifact: None,
                    uploads: Vec::new(),
                    downloads: Vec::new(),
                    final_updates: 0,
                };
                jobs.push_report(dropped);
            }
            None => {
                if !shared.settings.demo_jobs {
                    return None;
                }
                let now = Instant::now();
                let mut last = shared.last_job.lock().unwrap_or_else(|p| p.into_inner());
                let due = last
                    .get(token)
                    .is_none_or(|t| *t + shared.settings.job_every <= now);
                if !due {
                    return None;
                }
                last.insert(token.to_owned(), now);
                drop(last);
                jobs.last_id += 1;
                jobs.queue_gen += 1;
                break (jobs.last_id, demo_spec(jobs.last_archive));
            }
        }
    };
    shared.jobs_handed.fetch_add(1, Ordering::Relaxed);
    let token = format!("glcbt-{id}-{}", signature(shared, &format!("job-{id}")));
    let addr = shared.addr;
    let mut variables = vec![
        ("CI", "true".to_owned(), false),
        ("CI_JOB_ID", id.to_string(), false),
        ("CI_JOB_NAME", spec.name.clone(), false),
        ("CI_JOB_TOKEN", token.clone(), true),
        ("CI_SERVER_URL", format!("https://{addr}"), false),
        ("CI_PROJECT_NAME", "project".to_owned(), false),
        ("CI_COMMIT_SHA", repo.clone().unwrap_or_default(), false),
    ];
    if repo.is_none() {
        variables.push(("GIT_STRATEGY", "none".to_owned(), false));
    }
    let mut vars: Vec<payload::Variable> = variables
        .into_iter()
        .map(|(k, v, masked)| payload::Variable {
            key: k.into(),
            value: v,
            public: !masked,
            masked,
            file: false,
        })
        .collect();
    vars.extend(spec.variables.iter().cloned());
    let mut dep_tokens = Vec::new();
    let mut dependencies = Vec::new();
    for dep in &spec.dependencies {
        let Some(r) = jobs.records.get(dep) else {
            continue;
        };
        let dep_token = format!(
            "glcbt-dep-{id}-{dep}-{}",
            signature(shared, &format!("dep-{id}-{dep}"))
        );
        dep_tokens.push((*dep, dep_token.clone()));
        dependencies.push(payload::Dependency {
            id: *dep,
            name: r.name.clone(),
            token: dep_token,
            artifacts_file: r.stored.as_ref().map(|(_, size)| payload::ArtifactFile {
                filename: "artifacts.zip".into(),
                size: *size,
            }),
        });
    }
    let job = payload::Job {
        id,
        token: token.clone(),
        job_info: payload::JobInfo {
            name: spec.name.clone(),
            stage: "test".into(),
            project_name: "project".into(),
        },
        git_info: payload::GitInfo {
            repo_url: format!(
                "https://gitlab-ci-token:{token}@{addr}{}",
                super::git::PREFIX
            ),
            git_ref: "main".into(),
            sha: repo.unwrap_or_default(),
            refspecs: vec!["+refs/heads/main:refs/remotes/origin/main".into()],
            depth: 20,
        },
        runner_info: payload::RunnerInfo {
            timeout: if spec.timeout == 0 {
                3600
            } else {
                spec.timeout
            },
        },
        variables: vars,
        steps: spec.steps.clone(),
        artifacts: spec.artifacts.clone(),
        dependencies,
    };
    jobs.records.insert(
        id,
        Record {
            name: spec.name.clone(),
            token,
            state: State::Running,
            trace_len: 0,
            trace_patches: 0,
            trace_largest: 0,
            trace_refused: 0,
            trace_hash: Context::new(&SHA256),
            trace: Vec::new(),
            artifact: None,
            stored: None,
            uploads: Vec::new(),
            downloads: Vec::new(),
            dep_tokens,
            final_updates: 0,
            reported: false,
        },
    );
    while jobs.records.len() > MAX_RECORDS {
        if let Some((_, r)) = jobs.records.pop_first() {
            if let Some((path, _)) = r.stored {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let text = serde_json::to_string(&job).ok()?;
    Some((id, text))
}

/// `/api/v4/jobs/:id` and what follows it, or `None` for another path.
fn job_path(path: &str) -> Option<(u64, &str)> {
    let rest = path.strip_prefix("/api/v4/jobs/")?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    Some((id.parse().ok()?, tail))
}

/// Route `/api/v4/jobs/:id[/...]`; `None` when the path is no job's.
pub(super) fn route(
    head: &Head,
    body: &mut Body<'_>,
    shared: &Shared,
) -> Option<io::Result<Reply>> {
    let (id, tail) = job_path(head.path())?;
    Some(match (head.method.as_str(), tail) {
        ("PUT", "") => update_job(id, body, shared),
        ("PATCH", "trace") => patch_trace(id, head, body, shared),
        ("POST", "artifacts") => upload_artifacts(id, head, body, shared),
        ("GET", "artifacts") => Ok(download_artifacts(id, head, shared)),
        (_, "" | "trace" | "artifacts") => Ok(message("405 Method Not Allowed")),
        _ => Ok(message("404 Not Found")),
    })
}

/// Check the job exists and `token` is its token: the job's state, or the
/// refusal.
fn check(jobs: &Jobs, id: u64, token: Option<&str>) -> Result<State, Box<Reply>> {
    let Some(r) = jobs.records.get(&id) else {
        return Err(Box::new(message("404 Not Found")));
    };
    if token != Some(r.token.as_str()) {
        return Err(Box::new(message("403 Forbidden")));
    }
    Ok(r.state)
}

fn not_running(state: State) -> Reply {
    json(
        "403 Forbidden",
        r#"{"message":"403 Forbidden - Job is not running"}"#.into(),
    )
    .header("Job-Status", state.name())
}

/// A job update's JSON.
#[derive(Deserialize)]
struct Update {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    failure_reason: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
}

/// `PUT /api/v4/jobs/:id` with `{"token":..,"state":"running|success|failed", ...}`.
fn update_job(id: u64, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let Ok(b) = body.read_all(MAX_JSON)? else {
        return Ok(message("413 Payload Too Large"));
    };
    if let Some(f) = fault(shared, "update") {
        return Ok(f);
    }
    let Ok(update) = serde_json::from_slice::<Update>(&b) else {
        return Ok(json("400 Bad Request", r#"{"error":"not JSON"}"#.into()));
    };
    let interval = seconds(shared.settings.trace_update_interval);
    let mut jobs = lock(shared);
    let state = match check(&jobs, id, update.token.as_deref()) {
        Ok(s) => s,
        Err(refused) => return Ok(*refused),
    };
    let wanted = match update.state.as_deref() {
        Some("running") => State::Running,
        Some("success") => State::Success,
        Some("failed") => State::Failed,
        _ => {
            return Ok(json(
                "400 Bad Request",
                r#"{"error":"state does not have a valid value"}"#.into(),
            ))
        }
    };
    let Some(r) = jobs.records.get_mut(&id) else {
        return Ok(message("404 Not Found"));
    };
    if state != State::Running {
        // A canceled job's final update is its report; any later update
        // is refused as GitLab refuses it.
        if state == State::Canceled && wanted != State::Running && !r.reported {
            r.final_updates += 1;
            r.reported = true;
            let report = r.report(id, "canceled", update.failure_reason, update.exit_code);
            jobs.push_report(report);
        }
        return Ok(not_running(state));
    }
    if wanted == State::Running {
        return Ok(
            json("200 OK", format!(r#"{{"id":{id},"status":"running"}}"#))
                .header("Job-Status", "running")
                .header("X-GitLab-Trace-Update-Interval", interval),
        );
    }
    r.final_updates += 1;
    if shared.settings.accept_final_later && r.final_updates == 1 {
        // GitLab's answer while it still persists the trace: come back.
        return Ok(message("202 Accepted")
            .header("Job-Status", "running")
            .header("X-GitLab-Trace-Update-Interval", interval));
    }
    r.state = wanted;
    r.reported = true;
    let report = r.report(id, wanted.name(), update.failure_reason, update.exit_code);
    if wanted == State::Success && r.stored.is_some() {
        jobs.last_archive = Some(id);
    }
    jobs.push_report(report);
    Ok(json(
        "200 OK",
        format!(r#"{{"id":{id},"status":"{}"}}"#, wanted.name()),
    )
    .header("Job-Status", wanted.name())
    .header("X-GitLab-Trace-Update-Interval", interval))
}

/// `Content-Range: START-END` (inclusive, as gitlab-runner sends it).
fn content_range(head: &Head) -> Option<(u64, u64)> {
    let v = head.header("content-range")?.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

/// `PATCH /api/v4/jobs/:id/trace`: the next increment of the job's log;
/// `Job-Status: canceled` tells the runner to stop.
fn patch_trace(id: u64, head: &Head, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let Ok(data) = body.read_all(MAX_TRACE_PATCH)? else {
        return Ok(message("413 Payload Too Large"));
    };
    if let Some(f) = fault(shared, "trace") {
        return Ok(f);
    }
    let mut jobs = lock(shared);
    let state = match check(&jobs, id, head.header("job-token")) {
        Ok(s) => s,
        Err(refused) => return Ok(*refused),
    };
    if state != State::Running && state != State::Canceled {
        return Ok(not_running(state));
    }
    let Some(r) = jobs.records.get_mut(&id) else {
        return Ok(message("404 Not Found"));
    };
    let len = r.trace_len;
    let Some((start, end)) = content_range(head) else {
        return Ok(json(
            "400 Bad Request",
            r#"{"message":"400 Bad Request - Content-Range START-END required"}"#.into(),
        ));
    };
    if start != len {
        // GitLab's answer to an increment that does not start where the
        // trace ends: 416 and the range it holds, so the runner resends.
        r.trace_refused += 1;
        return Ok(message("416 Range Not Satisfiable").header("Range", format!("0-{len}")));
    }
    if end - start + 1 != data.len() as u64 {
        return Ok(json(
            "400 Bad Request",
            r#"{"message":"400 Bad Request - Content-Range does not match the body"}"#.into(),
        ));
    }
    r.trace_hash.update(&data);
    r.trace_len += data.len() as u64;
    r.trace_patches += 1;
    r.trace_largest = r.trace_largest.max(data.len() as u64);
    let keep = MAX_KEPT_TRACE.saturating_sub(r.trace.len()).min(data.len());
    r.trace.extend_from_slice(&data[..keep]);
    let len = r.trace_len;
    drop(jobs);
    Ok(Reply::new("202 Accepted", "text/plain", Vec::new())
        .header("Job-Status", state.name())
        .header("Range", format!("0-{len}"))
        .header(
            "X-GitLab-Trace-Update-Interval",
            seconds(shared.settings.trace_update_interval),
        ))
}

/// A query parameter of `target`, percent-decoding `+` and `%20` only
/// (all this coordinator reads are words).
fn query_param(target: &str, key: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.replace('+', " ").replace("%20", " "))
}

/// `POST /api/v4/jobs/:id/artifacts`: a multipart body whose `file` part is
/// hashed (and, for the archive, stored) as it streams in, never held.
fn upload_artifacts(
    id: u64,
    head: &Head,
    body: &mut Body<'_>,
    shared: &Shared,
) -> io::Result<Reply> {
    let limit = shared.settings.max_artifact_size;
    if body.declared_len().is_some_and(|n| n > limit) {
        return Ok(message("413 Payload Too Large").close());
    }
    if let Some(f) = fault(shared, "upload") {
        drain(body, limit)?;
        return Ok(if body.is_done() { f } else { f.close() });
    }
    match check(&lock(shared), id, head.header("job-token")) {
        Ok(State::Running) => {}
        Ok(state) => return Ok(not_running(state).close()),
        Err(refused) => return Ok(refused.close()),
    }
    let artifact_type =
        query_param(&head.target, "artifact_type").unwrap_or_else(|| "archive".into());
    let artifact_format =
        query_param(&head.target, "artifact_format").unwrap_or_else(|| "zip".into());
    let expire_in = query_param(&head.target, "expire_in");
    let mut parts = match Multipart::new(head.header("content-type").unwrap_or_default()) {
        Ok(m) => m,
        Err(why) => return Ok(json("400 Bad Request", format!(r#"{{"message":"{why}"}}"#)).close()),
    };
    let archive = artifact_type == "archive";
    let store = shared
        .dir
        .path()
        .join(format!("artifact-{id}-{:08x}.zip", fastrand::u32(..)));
    if archive {
        let file = std::fs::File::create(&store)?;
        parts = parts.with_sink(Box::new(io::BufWriter::new(file)));
    }
    let mut broken = None;
    let mut too_large = false;
    while body.next(&mut |b| {
        if broken.is_none() {
            if let Err(e) = parts.feed(b) {
                broken = Some(e);
            }
        }
    })? {
        if body.bytes_read() > limit {
            too_large = true;
            break;
        }
        if broken.is_some() {
            break;
        }
    }
    let file = match (too_large, broken.map_or_else(|| parts.finish(), Err)) {
        (false, Ok(f)) => f,
        (true, _) => {
            let _ = std::fs::remove_file(&store);
            return Ok(message("413 Payload Too Large").close());
        }
        (false, Err(why)) => {
            let _ = std::fs::remove_file(&store);
            let why = why.replace('"', "'");
            return Ok(json("400 Bad Request", format!(r#"{{"message":"{why}"}}"#)).close());
        }
    };
    let mut jobs = lock(shared);
    let Some(r) = jobs.records.get_mut(&id) else {
        let _ = std::fs::remove_file(&store);
        return Ok(message("404 Not Found"));
    };
    let answer = format!(
        r#"{{"id":{id},"artifacts_file":{{"filename":"{}","size":{}}}}}"#,
        file.filename.replace(['"', '\\'], "_"),
        file.size
    );
    r.uploads.push(ArtifactUpload {
        file: file.clone(),
        artifact_type,
        artifact_format,
        expire_in,
    });
    if archive {
        if let Some((old, _)) = r.stored.replace((store, file.size)) {
            let _ = std::fs::remove_file(old);
        }
        r.artifact = Some(file);
        jobs.stored.retain(|j| *j != id);
        jobs.stored.push_back(id);
        while jobs.stored.len() > shared.settings.stored_artifacts.max(1) {
            let Some(old) = jobs.stored.pop_front() else {
                break;
            };
            if let Some((path, _)) = jobs.records.get_mut(&old).and_then(|r| r.stored.take()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok(json("201 Created", answer))
}

/// `GET /api/v4/jobs/:id/artifacts` with the token a running job was
/// given for dependency `id`: a `302` to object storage.
fn download_artifacts(id: u64, head: &Head, shared: &Shared) -> Reply {
    if let Some(f) = fault(shared, "download") {
        return f;
    }
    let Some(token) = head.header("job-token") else {
        return message("401 Unauthorized");
    };
    let mut jobs = lock(shared);
    let downloader = jobs.records.iter_mut().find(|(_, r)| {
        r.state == State::Running && r.dep_tokens.iter().any(|(d, t)| *d == id && t == token)
    });
    let Some((_, downloader)) = downloader else {
        return message("403 Forbidden");
    };
    downloader.downloads.push(id);
    if jobs
        .records
        .get(&id)
        .and_then(|r| r.stored.as_ref())
        .is_none()
    {
        return message("404 Not Found");
    }
    drop(jobs);
    let location = format!(
        "https://{}/objects/job-{id}/artifacts.zip?X-Amz-Expires=300&X-Amz-Signature={}",
        shared.storage_addr,
        signature(shared, &format!("object-{id}"))
    );
    Reply::new(
        "302 Found",
        "text/plain",
        b"redirecting to object storage\n".to_vec(),
    )
    .header("Location", location)
}

/// Object storage: `GET /objects/job-:id/artifacts.zip?...X-Amz-Signature=..`.
pub(super) fn storage(head: &Head, shared: &Shared) -> Reply {
    shared.storage_requests.fetch_add(1, Ordering::Relaxed);
    let xml = |status, code: &str, msg: &str| {
        Reply::new(
            status,
            "application/xml",
            format!("<Error><Code>{code}</Code><Message>{msg}</Message></Error>").into_bytes(),
        )
    };
    if ["job-token", "authorization", "private-token"]
        .iter()
        .any(|h| head.header(h).is_some())
    {
        shared
            .storage_credentials_refused
            .fetch_add(1, Ordering::Relaxed);
        return xml(
            "400 Bad Request",
            "InvalidArgument",
            "Only one auth mechanism allowed",
        );
    }
    let no_key = || {
        xml(
            "404 Not Found",
            "NoSuchKey",
            "The specified key does not exist.",
        )
    };
    let job = head
        .path()
        .strip_prefix("/objects/job-")
        .and_then(|r| r.strip_suffix("/artifacts.zip"))
        .and_then(|id| id.parse::<u64>().ok());
    let Some(job) = job else {
        return no_key();
    };
    if query_param(&head.target, "X-Amz-Signature")
        != Some(signature(shared, &format!("object-{job}")))
    {
        return xml(
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    let stored = lock(shared)
        .records
        .get(&job)
        .and_then(|r| r.stored.clone());
    match stored {
        Some((path, len)) => Reply::new("200 OK", "application/zip", Vec::new()).file(path, len),
        None => no_key(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_content_ranges_and_queries_parse_strictly() {
        assert_eq!(job_path("/api/v4/jobs/12"), Some((12, "")));
        assert_eq!(job_path("/api/v4/jobs/12/trace"), Some((12, "trace")));
        assert_eq!(job_path("/api/v4/jobs/request"), None);
        assert_eq!(job_path("/api/v4/jobs/-1/trace"), None);
        assert_eq!(seconds(Duration::from_secs(3)), "3");
        assert_eq!(seconds(Duration::from_millis(50)), "0.050");
        let t = "/x?artifact_format=zip&expire_in=1+day&a";
        assert_eq!(query_param(t, "expire_in").as_deref(), Some("1 day"));
        assert_eq!(query_param(t, "artifact_format").as_deref(), Some("zip"));
        assert_eq!(query_param(t, "a"), None);
    }

    #[test]
    fn reports_and_extra_steps_need_the_features_gitlab_requires() {
        let plain = JobSpec::script(&["true"]).archive(&["x"], When::OnSuccess);
        assert!(plain.required_features().is_empty());
        let mut reports = plain.clone();
        reports.artifacts.push(payload::Artifact {
            artifact_type: "junit".into(),
            artifact_format: "gzip".into(),
            ..payload::Artifact::default()
        });
        assert_eq!(reports.required_features(), ["upload_multiple_artifacts"]);
        let mut release = JobSpec::script(&["true"]).after_script(&["true"]);
        assert!(release.required_features().is_empty());
        release.steps.push(payload::Step {
            name: "release".into(),
            ..payload::Step::default()
        });
        release.requires.push("image".into());
        assert_eq!(release.required_features(), ["image", "multi_build_steps"]);
    }
}
