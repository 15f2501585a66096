//! GitLab's job API as the coordinator serves it: jobs handed out by the
//! long poll, their state (`PUT /api/v4/jobs/:id`), incremental traces
//! (`PATCH .../trace` with `Content-Range`, a wrong offset refused with 416
//! and the server's `Range`), artifact uploads (multipart, measured as they
//! stream in) and downloads (a `302` to the object storage origin, which
//! refuses requests that carry a job token, as S3 refuses a presigned URL
//! with a second credential).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

use super::http1::{Body, Head};
use super::multipart::{hex, FilePart, Multipart};
use super::{json_string, sleep_unless_stopped, Reply, Shared};

/// Job records kept (oldest dropped first): a long `--serve` stays bounded.
const MAX_RECORDS: usize = 4096;
/// Finished-job reports kept until someone takes them.
const MAX_REPORTS: usize = 1024;
/// Largest JSON body (job request, job update).
const MAX_JSON: usize = 64 * 1024;
/// Largest trace increment.
const MAX_TRACE_PATCH: usize = 4 * 1024 * 1024;

/// A job's end as the coordinator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job's id.
    pub id: u64,
    /// `success` or `failed`, as the runner set it.
    pub state: String,
    /// The runner's `failure_reason`, if it gave one.
    pub failure_reason: Option<String>,
    /// Trace bytes received, in order (each increment started where the
    /// previous ended).
    pub trace_bytes: u64,
    /// Trace increments accepted.
    pub trace_patches: u32,
    /// Trace increments refused with 416 (wrong `Content-Range` start).
    pub trace_refused: u32,
    /// SHA-256 of the whole trace, lowercase hex.
    pub trace_sha256: String,
    /// The uploaded artifact's `file` part, as received.
    pub artifact: Option<FilePart>,
    /// Artifact downloads redirected to object storage.
    pub downloads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Success,
    Failed,
}

struct Record {
    token: String,
    state: State,
    trace_len: u64,
    trace_patches: u32,
    trace_refused: u32,
    trace_hash: Context,
    artifact: Option<FilePart>,
    downloads: u32,
}

/// Every job handed out (bounded) and the reports of finished ones.
#[derive(Default)]
pub(super) struct Jobs {
    records: BTreeMap<u64, Record>,
    reports: VecDeque<JobReport>,
}

impl Jobs {
    /// Reports of jobs finished since the last call.
    pub(super) fn take_reports(&mut self) -> Vec<JobReport> {
        self.reports.drain(..).collect()
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Jobs> {
    shared.jobs.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bytes object storage serves as job `job`'s dependency artifact: a
/// `prepare` stage's output the coordinator makes up, `size` bytes that
/// differ per job.
pub fn dependency_artifact(job: u64, size: usize) -> Vec<u8> {
    let mut x = job.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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

fn secret_signature(shared: &Shared, job: u64) -> String {
    let mut c = Context::new(&SHA256);
    c.update(shared.secret.as_bytes());
    c.update(format!("job-{job}").as_bytes());
    hex(c.finish().as_ref()).chars().take(32).collect()
}

/// `POST /api/v4/jobs/request`: hold the poll until a job is due for the
/// token or `hold` passes.
pub(super) fn job_request(body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let Ok(json_body) = body.read_all(MAX_JSON)? else {
        return Ok(message("413 Payload Too Large"));
    };
    let token = json_string(&json_body, "token").unwrap_or_default();
    if token.is_empty() {
        return Ok(json(
            "403 Forbidden",
            r#"{"message":"403 Forbidden - no runner token"}"#.into(),
        ));
    }
    let start = Instant::now();
    let hold_end = start + shared.settings.hold;
    loop {
        let now = Instant::now();
        let mut last = shared.last_job.lock().unwrap_or_else(|p| p.into_inner());
        let next_due = last
            .get(&token)
            .map_or(now, |t| *t + shared.settings.job_every);
        if next_due <= now {
            last.insert(token, now);
            drop(last);
            return Ok(new_job(shared));
        }
        drop(last);
        if now >= hold_end || shared.stopping() {
            return Ok(Reply::new("204 No Content", "", Vec::new()));
        }
        sleep_unless_stopped(next_due.min(hold_end) - now, shared);
    }
}

fn new_job(shared: &Shared) -> Reply {
    let id = shared.jobs_handed.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("job-token-{id}-{}", &secret_signature(shared, id)[..8]);
    let mut jobs = lock(shared);
    jobs.records.insert(
        id,
        Record {
            token: token.clone(),
            state: State::Running,
            trace_len: 0,
            trace_patches: 0,
            trace_refused: 0,
            trace_hash: Context::new(&SHA256),
            artifact: None,
            downloads: 0,
        },
    );
    while jobs.records.len() > MAX_RECORDS {
        jobs.records.pop_first();
    }
    drop(jobs);
    let addr = shared.addr;
    let size = shared.settings.dependency_size;
    // The top-level "id" and "token" come first: the runner's flat JSON
    // reader takes the first occurrence of a key.
    json(
        "201 Created",
        format!(
            concat!(
                r#"{{"id":{id},"token":"{token}","allow_git_fetch":true,"#,
                r#""job_info":{{"name":"build","stage":"test","project_name":"demo"}},"#,
                r#""git_info":{{"repo_url":"https://{addr}/demo/project.git","ref":"main"}},"#,
                r#""dependencies":[{{"id":{id},"name":"prepare","#,
                r#""artifacts_file":{{"filename":"artifacts.zip","size":{size}}}}}]}}"#
            ),
            id = id,
            token = token,
            addr = addr,
            size = size
        ),
    )
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

/// Check the job exists, the token is its token and it is running.
fn check(jobs: &Jobs, id: u64, token: Option<&str>) -> Result<(), Reply> {
    let Some(r) = jobs.records.get(&id) else {
        return Err(message("404 Not Found"));
    };
    if token != Some(r.token.as_str()) {
        return Err(message("403 Forbidden"));
    }
    if r.state != State::Running {
        return Err(json(
            "403 Forbidden",
            r#"{"message":"403 Forbidden - Job is not running"}"#.into(),
        ));
    }
    Ok(())
}

/// `PUT /api/v4/jobs/:id` with `{"token":..,"state":"running|success|failed"}`.
fn update_job(id: u64, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let Ok(b) = body.read_all(MAX_JSON)? else {
        return Ok(message("413 Payload Too Large"));
    };
    let token = json_string(&b, "token");
    let mut jobs = lock(shared);
    if let Err(refused) = check(&jobs, id, token.as_deref()) {
        return Ok(refused);
    }
    let state = match json_string(&b, "state").as_deref() {
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
    let interval = seconds(shared.settings.trace_update_interval);
    let Some(r) = jobs.records.get_mut(&id) else {
        return Ok(message("404 Not Found"));
    };
    r.state = state;
    let name = match state {
        State::Running => "running",
        State::Success => "success",
        State::Failed => "failed",
    };
    if state != State::Running {
        let report = JobReport {
            id,
            state: name.to_owned(),
            failure_reason: json_string(&b, "failure_reason"),
            trace_bytes: r.trace_len,
            trace_patches: r.trace_patches,
            trace_refused: r.trace_refused,
            trace_sha256: hex(r.trace_hash.clone().finish().as_ref()),
            artifact: r.artifact.clone(),
            downloads: r.downloads,
        };
        jobs.reports.push_back(report);
        while jobs.reports.len() > MAX_REPORTS {
            jobs.reports.pop_front();
        }
    }
    Ok(
        json("200 OK", format!(r#"{{"id":{id},"status":"{name}"}}"#))
            .header("Job-Status", name)
            .header("X-GitLab-Trace-Update-Interval", interval),
    )
}

/// `Content-Range: START-END` (inclusive, as gitlab-runner sends it).
fn content_range(head: &Head) -> Option<(u64, u64)> {
    let v = head.header("content-range")?.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

/// `PATCH /api/v4/jobs/:id/trace`: the next increment of the job's log.
fn patch_trace(id: u64, head: &Head, body: &mut Body<'_>, shared: &Shared) -> io::Result<Reply> {
    let token = head.header("job-token");
    if let Err(refused) = check(&lock(shared), id, token) {
        return Ok(refused);
    }
    let Ok(data) = body.read_all(MAX_TRACE_PATCH)? else {
        return Ok(message("413 Payload Too Large"));
    };
    let mut jobs = lock(shared);
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
    let len = r.trace_len;
    drop(jobs);
    Ok(Reply::new("202 Accepted", "text/plain", Vec::new())
        .header("Job-Status", "running")
        .header("Range", format!("0-{len}"))
        .header(
            "X-GitLab-Trace-Update-Interval",
            seconds(shared.settings.trace_update_interval),
        ))
}

/// `POST /api/v4/jobs/:id/artifacts`: a multipart body whose `file` part is
/// hashed as it streams in, never held.
fn upload_artifacts(
    id: u64,
    head: &Head,
    body: &mut Body<'_>,
    shared: &Shared,
) -> io::Result<Reply> {
    if let Err(refused) = check(&lock(shared), id, head.header("job-token")) {
        return Ok(refused.close());
    }
    let limit = shared.settings.max_artifact_size;
    if body.declared_len().is_some_and(|n| n > limit) {
        return Ok(message("413 Payload Too Large").close());
    }
    let mut parts = match Multipart::new(head.header("content-type").unwrap_or_default()) {
        Ok(m) => m,
        Err(why) => return Ok(json("400 Bad Request", format!(r#"{{"message":"{why}"}}"#)).close()),
    };
    let mut broken = None;
    while body.next(&mut |b| {
        if broken.is_none() {
            if let Err(e) = parts.feed(b) {
                broken = Some(e);
            }
        }
    })? {
        if body.bytes_read() > limit {
            return Ok(message("413 Payload Too Large").close());
        }
        if broken.is_some() {
            break;
        }
    }
    let file = match broken.map_or_else(|| parts.finish(), Err) {
        Ok(f) => f,
        Err(why) => {
            let why = why.replace('"', "'");
            return Ok(json("400 Bad Request", format!(r#"{{"message":"{why}"}}"#)).close());
        }
    };
    let mut jobs = lock(shared);
    let Some(r) = jobs.records.get_mut(&id) else {
        return Ok(message("404 Not Found"));
    };
    let answer = format!(
        r#"{{"id":{id},"artifacts_file":{{"filename":"{}","size":{}}}}}"#,
        file.filename.replace(['"', '\\'], "_"),
        file.size
    );
    r.artifact = Some(file);
    Ok(json("201 Created", answer))
}

/// `GET /api/v4/jobs/:id/artifacts`: a `302` to object storage.
fn download_artifacts(id: u64, head: &Head, shared: &Shared) -> Reply {
    let mut jobs = lock(shared);
    if let Err(refused) = check(&jobs, id, head.header("job-token")) {
        return refused;
    }
    if let Some(r) = jobs.records.get_mut(&id) {
        r.downloads += 1;
    }
    drop(jobs);
    let location = format!(
        "https://{}/objects/job-{id}/artifacts.zip?X-Amz-Expires=300&X-Amz-Signature={}",
        shared.storage_addr,
        secret_signature(shared, id)
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
    let job = head
        .path()
        .strip_prefix("/objects/job-")
        .and_then(|r| r.strip_suffix("/artifacts.zip"))
        .and_then(|id| id.parse::<u64>().ok());
    let Some(job) = job else {
        return xml(
            "404 Not Found",
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let signature = head
        .target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("X-Amz-Signature="));
    if signature != Some(secret_signature(shared, job).as_str()) {
        return xml(
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    Reply::new(
        "200 OK",
        "application/zip",
        dependency_artifact(job, shared.settings.dependency_size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_and_content_ranges_parse_strictly() {
        assert_eq!(job_path("/api/v4/jobs/12"), Some((12, "")));
        assert_eq!(job_path("/api/v4/jobs/12/trace"), Some((12, "trace")));
        assert_eq!(job_path("/api/v4/jobs/request"), None);
        assert_eq!(job_path("/api/v4/jobs/-1/trace"), None);
        assert_eq!(seconds(Duration::from_secs(3)), "3");
        assert_eq!(seconds(Duration::from_millis(50)), "0.050");
        assert_eq!(dependency_artifact(7, 64), dependency_artifact(7, 64));
        assert_ne!(dependency_artifact(7, 64), dependency_artifact(8, 64));
    }
}
