//! The rotation demo's credential scenarios: the runner's own client
//! certificate renewed (by a rename over its files, or by a Kubernetes
//! secret volume swapping its `..data` link), one of the two roots it
//! trusts removed, and the edge's leaf revoked through a CRL it is given.
//!
//! Two runners long-poll one coordinator and run each job (a `git clone`
//! stand-in trusting the CA bundle of the connection that delivered it, at
//! a second edge): "pinned" looks at its credential files only for new
//! connections (as ordinary clients do) and keeps its one connection;
//! "rotary" has the defaults, a look every second and every live
//! connection judged again when something changed. The coordinator logs,
//! per request, the serial of the client certificate and of the server
//! leaf its connection has, so what each runner sent after the change is
//! counted from the server's side.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rotary::{ClientIdentity, Config, Engine, Event, Policy, RequestOptions, Resumption, Trust};
use rustls::pki_types::CertificateDer;

use super::{label, poll_body, run_job, show, Plan, Timeline};
use crate::coordinator::{Coordinator, RequestSeen};
use crate::pki::{Ca, ClientCert, ServerCert};
use crate::{Failure, Output, TempDir};

/// The bound rotary promises with its defaults: no request on a connection
/// that no longer qualifies later than this after the change.
const BOUND: Duration = Duration::from_secs(2);

/// Which credential changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scenario {
    /// The runner's client certificate and key are renewed, each file
    /// renamed over the old one.
    IdentityRename,
    /// The same, as a Kubernetes secret volume does it: the files are links
    /// into `..data`, which is swapped to a new directory in one rename.
    IdentitySwap,
    /// Root A, one of the two roots the runner trusts, is removed; the
    /// edge's intermediate is cross-signed by both.
    RemoveRoot,
    /// The edge moves to a new leaf and a CRL the runner is given revokes
    /// the old one.
    Revoke,
}

impl Scenario {
    /// The flag that asks for it.
    pub(super) fn flag(self) -> &'static str {
        match self {
            Scenario::IdentityRename => "--identity-rename",
            Scenario::IdentitySwap => "--identity-swap",
            Scenario::RemoveRoot => "--remove-root",
            Scenario::Revoke => "--revoke",
        }
    }

    pub(super) fn from_flag(flag: &str) -> Option<Scenario> {
        [
            Scenario::IdentityRename,
            Scenario::IdentitySwap,
            Scenario::RemoveRoot,
            Scenario::Revoke,
        ]
        .into_iter()
        .find(|s| s.flag() == flag)
    }

    fn identity(self) -> bool {
        matches!(self, Scenario::IdentityRename | Scenario::IdentitySwap)
    }
}

/// The certificates of one run, and the runner's files.
struct Pki {
    root_a: Ca,
    root_b: Ca,
    mid_a: Ca,
    edge: ServerCert,
    git_edge: ServerCert,
    /// The edge's next leaf (revocation).
    edge_next: ServerCert,
    clients: Ca,
    runner_ids: [ClientCert; 2],
    dir: TempDir,
    trust: PathBuf,
    crl: PathBuf,
    identity: ClientIdentity,
}

fn pki(scenario: Scenario) -> Result<Pki, Failure> {
    let fail = |e: String| Failure::new(1, format!("generating certificates: {e}"));
    let root_a = Ca::new("rotary demo root A").map_err(fail)?;
    let root_b = Ca::new("rotary demo root B").map_err(fail)?;
    let mid_a = root_a
        .intermediate("rotary demo intermediate")
        .map_err(fail)?;
    let names = ["localhost", "127.0.0.1"];
    let (mut edge, mut git_edge) = (
        mid_a.issue(&names).map_err(fail)?,
        mid_a.issue(&names).map_err(fail)?,
    );
    if scenario == Scenario::RemoveRoot {
        // The intermediate signed by root B too, sent beside the other.
        let cross = mid_a.cross_signed_by(&root_b).map_err(fail)?;
        edge = edge.with_extra(cross.clone());
        git_edge = git_edge.with_extra(cross);
    }
    let edge_next = mid_a.issue(&names).map_err(fail)?;
    let clients = Ca::new("rotary demo runner CA").map_err(fail)?;
    let runner_ids = [
        clients.issue_client("runner-1").map_err(fail)?,
        clients.issue_client("runner-2").map_err(fail)?,
    ];
    let dir = TempDir::new("rotation-credentials")
        .map_err(|e| Failure::new(1, format!("temp dir: {e}")))?;
    let trust = dir.path().join("runner-ca.pem");
    let roots = match scenario {
        Scenario::RemoveRoot => format!("{}{}", root_a.pem(), root_b.pem()),
        _ => root_a.pem().to_owned(),
    };
    write(&trust, roots.as_bytes())?;
    let crl = dir.path().join("edge.crl");
    let list = mid_a.crl_pem(&[], 30).map_err(fail)?;
    write(&crl, list.as_bytes())?;
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).map_err(|e| io_failure(&secret, &e))?;
    let identity = ClientIdentity {
        cert_chain: secret.join("tls.crt"),
        key: secret.join("tls.key"),
    };
    let pki = Pki {
        root_a,
        root_b,
        mid_a,
        edge,
        git_edge,
        edge_next,
        clients,
        runner_ids,
        dir,
        trust,
        crl,
        identity,
    };
    install_identity(&pki, scenario, 0)?;
    Ok(pki)
}

fn io_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure::new(1, format!("{}: {e}", path.display()))
}

/// Replace `path` whole: write a sibling, rename it over.
fn write(path: &Path, contents: &[u8]) -> Result<(), Failure> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).map_err(|e| io_failure(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_failure(path, &e))
}

/// Install runner identity `i` the scenario's way (the first: as files, or
/// links into `..data`).
fn install_identity(pki: &Pki, scenario: Scenario, i: usize) -> Result<(), Failure> {
    let id = &pki.runner_ids[i];
    let secret = pki.dir.path().join("secret");
    if scenario != Scenario::IdentitySwap {
        write(&pki.identity.cert_chain, id.cert_pem.as_bytes())?;
        return write(&pki.identity.key, id.key_pem.as_bytes());
    }
    let data = secret.join(format!("..{i}"));
    std::fs::create_dir(&data).map_err(|e| io_failure(&data, &e))?;
    for (name, text) in [("tls.crt", &id.cert_pem), ("tls.key", &id.key_pem)] {
        std::fs::write(data.join(name), text).map_err(|e| io_failure(&data, &e))?;
    }
    let tmp = secret.join("..data_tmp");
    std::os::unix::fs::symlink(&data, &tmp).map_err(|e| io_failure(&tmp, &e))?;
    std::fs::rename(&tmp, secret.join("..data")).map_err(|e| io_failure(&secret, &e))?;
    for name in ["tls.crt", "tls.key"] {
        let link = secret.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(|e| io_failure(&link, &e))?;
        }
    }
    Ok(())
}

/// Make the change; the coordinator moves first when the runner's files
/// would otherwise refuse what it presents.
fn change(scenario: Scenario, pki: &Pki, coordinator: &Coordinator) -> Result<(), Failure> {
    match scenario {
        Scenario::IdentityRename | Scenario::IdentitySwap => install_identity(pki, scenario, 1),
        Scenario::RemoveRoot => write(&pki.trust, pki.root_b.pem().as_bytes()),
        Scenario::Revoke => {
            coordinator
                .rotate(&pki.edge_next)
                .map_err(|e| Failure::new(1, e))?;
            let list = pki
                .mid_a
                .crl_pem(&[&pki.edge], 30)
                .map_err(|e| Failure::new(1, format!("signing the CRL: {e}")))?;
            write(&pki.crl, list.as_bytes())
        }
    }
}

/// One job as a runner saw it.
struct Job {
    /// Since the start.
    at: Duration,
    /// "A" or "B": the root its CA bundle ends at.
    root: &'static str,
    ok: bool,
}

/// What one runner did.
#[derive(Default)]
struct Report {
    jobs: Vec<Job>,
    requests_failed: u64,
    error: Option<String>,
}

/// Everything a runner thread needs.
struct Env {
    name: &'static str,
    url: String,
    git_addr: std::net::SocketAddr,
    config: Config,
    stop_at: Instant,
    hold: Duration,
    cas: Vec<(&'static str, CertificateDer<'static>)>,
    jobs_dir: PathBuf,
    timeline: Timeline,
    verbose: bool,
}

fn run_runner(env: &Env) -> Report {
    let mut report = Report::default();
    let tl = &env.timeline;
    let name = env.name;
    let mut engine = match Engine::new(env.config.clone()) {
        Ok(e) => e,
        Err(e) => {
            report.error = Some(format!("engine: {e}"));
            return report;
        }
    };
    let mut last_update: Option<String> = None;
    let mut last_root = None;
    let mut pending = None;
    let mut retry_at = Instant::now();
    while Instant::now() < env.stop_at {
        if pending.is_none() && Instant::now() >= retry_at {
            let req = http::Request::post(&env.url)
                .header("content-type", "application/json")
                .header("x-runner", name)
                .body(poll_body(name, last_update.as_deref()));
            match req {
                Ok(req) => {
                    let opts =
                        RequestOptions::default().deadline(env.hold + Duration::from_secs(10));
                    pending = Some(engine.submit(req, opts));
                }
                Err(e) => {
                    report.error = Some(format!("building the request: {e}"));
                    break;
                }
            }
        }
        let left = env.stop_at.saturating_duration_since(Instant::now());
        if let Err(e) = engine.poll(Some(left.min(Duration::from_millis(100)))) {
            report.error = Some(format!("poll: {e}"));
            break;
        }
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Opened(info) if env.verbose || name == "rotary" => tl.log(
                    name,
                    format!(
                        "connection #{} opened, chain {}",
                        info.conn.get(),
                        label(info.chain.as_deref(), &env.cas)
                    ),
                ),
                Event::CredentialsInvalid {
                    conn,
                    reason,
                    detail,
                    ..
                } => tl.log(
                    name,
                    format!(
                        "connection #{}: credentials no longer hold ({}): {detail}",
                        conn.get(),
                        reason.name()
                    ),
                ),
                Event::Closed {
                    conn,
                    reason: rotary::CloseReason::Credentials,
                    ..
                } => tl.log(name, format!("connection #{} closed", conn.get())),
                Event::TrustError { path, reason } => tl.log(
                    name,
                    format!("kept the previous version of {}: {reason}", path.display()),
                ),
                Event::Response {
                    id,
                    response,
                    served_by,
                } if Some(id) == pending => {
                    pending = None;
                    if let Some(u) = response
                        .headers()
                        .get("x-gitlab-last-update")
                        .and_then(|v| v.to_str().ok())
                    {
                        last_update = Some(u.to_owned());
                    }
                    if response.status().as_u16() == 201 {
                        let at = tl.start.elapsed();
                        let (root, ok, why) = match served_by.chain.as_deref() {
                            Some(chain) => {
                                let (ok, why) = run_job(
                                    &env.jobs_dir,
                                    env.git_addr,
                                    env.name,
                                    report.jobs.len() as u64,
                                    chain,
                                );
                                (label(Some(chain), &env.cas), ok, why)
                            }
                            None => ("?", false, Some("no TLS chain".to_owned())),
                        };
                        if last_root.is_some_and(|r| r != root) {
                            tl.log(name, format!("jobs now get the CA bundle of root {root}"));
                        }
                        last_root = Some(root);
                        if env.verbose || !ok {
                            let result = why.map_or_else(
                                || "git clone ok".to_owned(),
                                |w| format!("git clone FAILED: {w}"),
                            );
                            tl.log(
                                name,
                                format!(
                                    "job via connection #{} (CA bundle of root {root}): {result}",
                                    served_by.conn.get()
                                ),
                            );
                        }
                        report.jobs.push(Job { at, root, ok });
                    }
                }
                Event::Failed { id, error, .. } if Some(id) == pending => {
                    pending = None;
                    report.requests_failed += 1;
                    tl.log(name, format!("job request failed: {error}"));
                    retry_at = Instant::now() + Duration::from_millis(200);
                }
                _ => {}
            }
        }
    }
    if let Some(id) = pending {
        engine.cancel(id);
    }
    engine.shutdown();
    report
}

/// What the server saw of one runner after the change: the requests on a
/// connection whose credentials no longer qualify, and when the last came.
fn after_change<'a>(
    seen: &'a [RequestSeen],
    runner: &str,
    changed: Instant,
    stale: impl Fn(&RequestSeen) -> bool + 'a,
) -> (usize, Option<Duration>) {
    let late: Vec<&RequestSeen> = seen
        .iter()
        .filter(|r| r.runner.as_deref() == Some(runner) && r.at >= changed && stale(r))
        .collect();
    let last = late.iter().map(|r| r.at - changed).max();
    (late.len(), last)
}

/// Run `scenario` with `plan`'s timings; the exit code.
pub(super) fn demo(scenario: Scenario, mut plan: Plan, out: &Output) -> Result<i32, Failure> {
    plan.settings.repository = false;
    let pki = pki(scenario)?;
    let client_roots = if scenario.identity() {
        vec![pki.clients.der().clone()]
    } else {
        Vec::new()
    };
    let coordinator =
        Coordinator::start_with_client_auth("127.0.0.1:0", &pki.edge, plan.settings, &client_roots)
            .map_err(|e| Failure::new(1, format!("starting the coordinator: {e}")))?;
    let git_edge = Coordinator::start("127.0.0.1:0", &pki.git_edge, plan.settings)
        .map_err(|e| Failure::new(1, format!("starting the git edge: {e}")))?;
    let jobs_dir = pki.dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir).map_err(|e| io_failure(&jobs_dir, &e))?;

    let what = match scenario {
        Scenario::IdentityRename => {
            "the runners' client certificate and key are renewed, each file renamed over the old \
             one (the coordinator requires client certificates)"
        }
        Scenario::IdentitySwap => {
            "the runners' client certificate and key are renewed by swapping the `..data` link of \
             a Kubernetes-style secret volume (the coordinator requires client certificates)"
        }
        Scenario::RemoveRoot => {
            "root A is removed from the runners' two roots; the edge's intermediate is \
             cross-signed by root B"
        }
        Scenario::Revoke => {
            "the edge moves to a new leaf, and the CRL the runners are given revokes the old one"
        }
    };
    out.line(format!(
        "rotary credentials demo ({}): at {} {what}.",
        scenario.flag(),
        show(plan.rotate_at)
    ));
    out.line("  pinned  looks at its credential files only for new connections, keeps its one connection");
    out.line("  rotary  defaults: every credential file looked at each second, live connections judged again");
    out.line(format!(
        "Jobs clone from a second edge ({}) trusting the CA bundle of the connection that \
         delivered them.",
        git_edge.url("")
    ));
    out.line("");

    let start = Instant::now();
    let timeline = Timeline {
        start,
        out: out.clone(),
    };
    let mut handles = Vec::new();
    for name in ["pinned", "rotary"] {
        let mut config = Config::default();
        config.dns_threads = 1;
        config.trust = Trust::pem_file(&pki.trust);
        if scenario == Scenario::Revoke {
            config.trust.crl_files = vec![pki.crl.clone()];
        }
        if scenario.identity() {
            config.trust.client_identity = Some(pki.identity.clone());
        }
        if name == "pinned" {
            // As ordinary clients: one connection that never ages out,
            // resumption on, credential files read for new connections only.
            let mut p = Policy::default();
            p.max_age = Some(Duration::from_secs(24 * 3600));
            p.max_age_jitter = Some(Duration::ZERO);
            p.resumption = Resumption::WithinMaxAge;
            config.policy = p;
            config.trust.check_interval = Duration::from_secs(24 * 3600);
        }
        let env = Env {
            name,
            url: coordinator.url("/api/v4/jobs/request"),
            git_addr: git_edge.addr(),
            config,
            stop_at: start + plan.duration,
            hold: plan.settings.hold,
            cas: vec![
                ("A", pki.root_a.der().clone()),
                ("B", pki.root_b.der().clone()),
            ],
            jobs_dir: jobs_dir.clone(),
            timeline: timeline.clone(),
            verbose: plan.verbose,
        };
        let h = thread::Builder::new()
            .name(format!("{name}-runner"))
            .spawn(move || run_runner(&env))
            .map_err(|e| Failure::new(1, format!("starting a runner thread: {e}")))?;
        handles.push((name, h));
    }

    thread::sleep((start + plan.rotate_at).saturating_duration_since(Instant::now()));
    change(scenario, &pki, &coordinator)?;
    let changed = Instant::now();
    timeline.log("host", format!("CHANGED: {what}"));

    let mut reports = Vec::new();
    for (name, h) in handles {
        let r = h.join().unwrap_or_else(|_| Report {
            error: Some("runner thread panicked".into()),
            ..Report::default()
        });
        reports.push((name, r));
    }
    let seen = coordinator.requests_seen();
    drop(coordinator);
    drop(git_edge);
    let since = changed - start;

    let old_identity = pki.runner_ids[0].serial_hex();
    let revoked = pki.edge.serial_hex();
    let metric = match scenario {
        Scenario::RemoveRoot => "last root-A bundle after the change",
        _ => "last request on a stale connection",
    };
    out.line("");
    out.line(format!(
        "{:<7} {:>15} {:>12}   {:>36}   what it did",
        "runner", "requests failed", "jobs ok/fail", metric
    ));
    let mut verdict = Ok(());
    let mut pinned_showed = false;
    for (name, r) in &reports {
        let ok = r.jobs.iter().filter(|j| j.ok).count();
        let failed = r.jobs.len() - ok;
        let (count, last) = match scenario {
            Scenario::RemoveRoot => {
                let late: Vec<&Job> = r
                    .jobs
                    .iter()
                    .filter(|j| j.at >= since && j.root == "A")
                    .collect();
                (late.len(), late.iter().map(|j| j.at - since).max())
            }
            Scenario::Revoke => after_change(&seen, name, changed, |q| {
                q.server_serial.as_deref() == Some(revoked.as_str())
            }),
            _ => after_change(&seen, name, changed, |q| {
                q.client_serial.as_deref() == Some(old_identity.as_str())
            }),
        };
        let s = |n: usize| if n == 1 { "" } else { "s" };
        let did = match (scenario, count) {
            (Scenario::RemoveRoot, 0) => {
                "kept its connection (it verifies through root B); every job got root B's bundle"
                    .to_owned()
            }
            (Scenario::RemoveRoot, n) => format!(
                "kept its connection; {n} job{} after the change got removed root A's bundle",
                s(n)
            ),
            (Scenario::Revoke, 0) => "sent nothing on the revoked connection".to_owned(),
            (Scenario::Revoke, n) => format!(
                "sent {n} request{} on the revoked connection after the change",
                s(n)
            ),
            (_, 0) => "presented runner-2 only".to_owned(),
            (_, n) => format!("presented runner-1 on {n} request{} after the change", s(n)),
        };
        let last_text = last.map_or_else(|| "-".to_owned(), |d| format!("+{}", show(d)));
        out.line(format!(
            "{name:<7} {:>15} {:>12}   {last_text:>36}   {did}",
            r.requests_failed,
            format!("{ok} / {failed}")
        ));
        if let Some(e) = &r.error {
            out.line(format!("        ({name} runner stopped early: {e})"));
            verdict = Err(format!("the {name} runner stopped early"));
            continue;
        }
        let jobs_after = r.jobs.iter().filter(|j| j.at >= since).count();
        if *name == "pinned" {
            pinned_showed = last.is_some_and(|d| d > BOUND);
            continue;
        }
        let in_bound = last.is_none_or(|d| d <= BOUND);
        let problem = match scenario {
            _ if !in_bound => Some(format!(
                "rotary's last request on a connection that no longer qualifies came {} after the change (bound {})",
                last.map(show).unwrap_or_default(),
                show(BOUND)
            )),
            Scenario::Revoke => None,
            _ if failed > 0 => Some(format!("rotary failed {failed} jobs")),
            _ if jobs_after == 0 => Some("rotary ran no job after the change".to_owned()),
            _ => None,
        };
        if let Some(p) = problem {
            verdict = Err(p);
        }
    }
    out.line(format!(
        "the change came at {}; rotary looks at its credential files every second, so it sees a change \
         within one; the coordinator logged {} requests with their client and server certificate serials",
        show(since),
        seen.len()
    ));
    Ok(match (verdict, pinned_showed) {
        (Ok(()), true) => {
            let claim = match scenario {
                Scenario::Revoke => "no request on a revoked connection later than 2 s after the change",
                Scenario::RemoveRoot => "0 failed jobs, every job's bundle on root B within 2 s",
                _ => "0 failed jobs, no request with the old identity later than 2 s after the change",
            };
            out.line(format!(
                "verdict: rotary: {claim}; pinned kept its stale connection (OK)"
            ));
            0
        }
        (Err(why), _) => {
            out.line(format!("verdict: {why} (FAIL)"));
            1
        }
        (Ok(()), false) => {
            out.line("verdict: the pinned runner did not keep its stale connection, so the demo showed nothing (FAIL)");
            1
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scenario_has_its_flag() {
        for s in [
            Scenario::IdentityRename,
            Scenario::IdentitySwap,
            Scenario::RemoveRoot,
            Scenario::Revoke,
        ] {
            assert_eq!(Scenario::from_flag(s.flag()), Some(s));
        }
        assert_eq!(Scenario::from_flag("--rotate-at"), None);
    }
}
