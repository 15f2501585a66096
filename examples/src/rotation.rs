//! The rotation demo: a local coordinator rotates its certificate from CA "A"
//! to CA "B" while two runners long-poll it for jobs. Each job gets the CA
//! bundle of the connection that delivered it (the verified path's
//! intermediate and root) as its CA file and `git clone`s with it from a
//! second edge, which serves another leaf from the same CA. The "pinned"
//! runner (a connection that never ages, resumption on, as ordinary clients
//! behave) keeps handing jobs CA A and every clone fails; the "rotary" runner
//! (max age of a few seconds, full handshakes) heals within one max age; the
//! "refresh" runner (rotary, plus `Engine::fresh_chain` for every job) hands
//! each job the chain of a handshake made when the job arrived, so no job
//! fails.
//!
//! With a scenario flag it shows, instead, a change of the runners' own
//! credentials reaching their live connections (see `credentials`): the
//! client certificate renewed, a root removed, the edge's leaf revoked.

mod credentials;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{
    ChainRequestId, CloseReason, Config, ConnId, Engine, Event, Handshake, Origin, PeerChain,
    Policy, RequestOptions, Resumption, Trust,
};
use rustls::pki_types::CertificateDer;

use crate::args::{show, Args};
use crate::coordinator::{Coordinator, Settings};
use crate::pki::{Ca, ServerCert};
use crate::{finish, git, Failure, Output, TempDir};

const HELP: &str = "\
rotation: a certificate rotation seen by two CI runners, side by side.

usage: cargo run --release --example rotation [-- FLAGS]

A local TLS coordinator (loopback only) serves long-polled jobs with a
certificate from CA A (root A -> intermediate A -> leaf; the edge sends leaf
+ intermediate, as public sites do), and at --rotate-at switches new
handshakes to a certificate from CA B; live sessions and session tickets stay
valid, as at a CDN edge. Three runners poll it:
  pinned   one connection that never ages, TLS resumption on (ordinary clients)
  rotary   connections retire at --max-age and reconnect with a full handshake
  refresh  rotary, and a fresh chain (a TLS-only full handshake) for every job
Each job's CA file is the CA bundle of the connection that delivered it (for
refresh: of the handshake made when the job arrived): the verified path's
intermediate and root, never the leaf. The job then does what `git clone`
would: a fresh TLS connection trusting only that file, to a second edge of the
coordinator serving another leaf from the same CA. Exit code 0 when the rotary
runner healed, the pinned one kept failing and the refresh one failed no job;
1 otherwise; 2 for bad flags.

flags (durations: 500ms, 3s, 1.5):
  --rotate-at D          when the coordinator rotates            [5s]
  --duration D           total run time                          [13s]
  --max-age D            the rotary runner's connection max age  [3s]
  --hold D               how long the coordinator holds a poll   [1s]
  --job-every D          a runner gets a job at most this often  [500ms]
  --edge-max-requests N  the coordinator closes each connection after N
                         requests (the pinned runner then resumes its old
                         session and still sees chain A)         [off]
  --inject-faults N      with --serve: answer the 1st of every N requests
                         to each API endpoint 429, the 2nd 502, so a
                         runner's retry rules show                [off]
  --send-leaf-only       the edges send their leaf alone (nginx with a
                         private CA); the runners' CA file then holds the
                         intermediates beside the roots, and jobs still get
                         intermediate + root
  -v, --verbose          one timeline line per job, not only per change

scenarios (one at a time; instead of the certificate rotation, at --rotate-at
the runners' own credentials change; pinned reads its credential files only
for new connections and keeps its one connection, rotary has the defaults):
  --identity-rename      the coordinator requires client certificates, and the
                         runners' certificate and key are renewed, each file
                         renamed over the old one
  --identity-swap        the same, by swapping the `..data` link of a
                         Kubernetes-style secret volume
  --remove-root          root A, one of the runners' two roots, is removed; the
                         edge's intermediate is cross-signed by root B
  --revoke               the edge moves to a new leaf and a CRL the runners are
                         given revokes the old one
  The table shows, per runner, the requests that failed, the jobs, and (from
  the coordinator's log of each request's client and server certificate
  serials) the time from the change to the last request sent on a connection
  that no longer qualifies (--remove-root: to the last job handed root A's
  bundle). Exit code 0 when rotary stayed within 2 s (and, but for --revoke,
  failed no job) while pinned kept its stale connection.
  --serve ADDR           run only the coordinator on ADDR (e.g. 127.0.0.1:8443)
                         and print the runners' CA file, for `--example runner`;
                         with --rotate-at it rotates then, with --duration it
                         stops; it logs each finished job's trace bytes and
                         artifact size and SHA-256; SIGINT/SIGTERM stop it
                         and remove its CA dir
  --ca-out FILE          with --serve: also write the runners' CA file (roots
                         A and B and object storage's) to FILE, for
                         `--cacert FILE` / `--ca-file FILE`
  -h, --help             this text";

/// Run the demo with `args` (without the program name); returns the exit code.
pub fn main_with_args(args: Vec<String>, out: &Output) -> i32 {
    finish("rotation", out, run(args, out))
}

/// The demo's timings.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rotate_at: Duration,
    duration: Duration,
    max_age: Duration,
    settings: Settings,
    verbose: bool,
    leaf_only: bool,
}

fn run(args: Vec<String>, out: &Output) -> Result<i32, Failure> {
    let mut a = Args::new(args);
    let mut rotate_at = None;
    let mut duration = None;
    let mut max_age = Duration::from_secs(3);
    let mut settings = Settings::default();
    let mut serve = None;
    let mut ca_out = None;
    let mut verbose = false;
    let mut leaf_only = false;
    let mut scenario = None;
    while let Some(arg) = a.next() {
        if let Some(s) = credentials::Scenario::from_flag(&arg) {
            if let Some(other) = scenario.replace(s) {
                if other != s {
                    return Err(Failure::usage(format!(
                        "{} and {} are two scenarios: one at a time",
                        credentials::Scenario::flag(other),
                        s.flag()
                    )));
                }
            }
            continue;
        }
        match arg.as_str() {
            "--rotate-at" => rotate_at = Some(a.duration("--rotate-at")?),
            "--duration" => duration = Some(a.duration("--duration")?),
            "--max-age" => max_age = a.duration("--max-age")?,
            "--hold" => settings.hold = a.duration("--hold")?,
            "--job-every" => settings.job_every = a.duration("--job-every")?,
            "--edge-max-requests" => {
                let n: u32 = a.parse("--edge-max-requests")?;
                settings.max_requests_per_conn = (n > 0).then_some(n);
            }
            "--inject-faults" => settings.fault_every = a.parse("--inject-faults")?,
            "--serve" => serve = Some(a.value("--serve")?),
            "--ca-out" => ca_out = Some(PathBuf::from(a.value("--ca-out")?)),
            "-v" | "--verbose" => verbose = true,
            "--send-leaf-only" => leaf_only = true,
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(0);
            }
            _ => return Err(a.unknown(&arg)),
        }
    }
    if let (Some(_), Some(s)) = (&serve, scenario) {
        return Err(Failure::usage(format!(
            "{} does not go with --serve",
            s.flag()
        )));
    }
    if let Some(addr) = serve {
        let serve = Serve {
            rotate_at,
            duration,
            settings,
            leaf_only,
            ca_out,
        };
        return serve_only(&addr, &serve, out);
    }
    if ca_out.is_some() {
        return Err(Failure::usage("--ca-out goes with --serve"));
    }
    let plan = Plan {
        rotate_at: rotate_at.unwrap_or(Duration::from_secs(5)),
        duration: duration.unwrap_or(Duration::from_secs(13)),
        max_age,
        settings,
        verbose,
        leaf_only,
    };
    if plan.max_age.is_zero() {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    if plan.rotate_at >= plan.duration {
        return Err(Failure::usage(format!(
            "--rotate-at ({}) must come before the end of --duration ({})",
            show(plan.rotate_at),
            show(plan.duration)
        )));
    }
    if plan.duration > Duration::from_secs(600) {
        return Err(Failure::usage("--duration is capped at 10 minutes"));
    }
    if let Some(s) = scenario {
        return credentials::demo(s, plan, out);
    }
    demo(plan, out)
}

/// One issuer: a root and the intermediate that signs the leaves.
struct Issuer {
    root: Ca,
    mid: Ca,
}

impl Issuer {
    fn new(label: &str) -> Result<Issuer, String> {
        let root = Ca::new(&format!("rotary demo root {label}"))?;
        let mid = root.intermediate(&format!("rotary demo intermediate {label}"))?;
        Ok(Issuer { root, mid })
    }

    /// A leaf for `names`, presented with its intermediate unless `leaf_only`.
    fn leaf(&self, names: &[&str], leaf_only: bool) -> Result<ServerCert, String> {
        let cert = self.mid.issue(names)?;
        Ok(if leaf_only { cert.leaf_only() } else { cert })
    }
}

/// The two issuers and the runners' trust bundle on disk.
struct Pki {
    a: Issuer,
    b: Issuer,
    dir: TempDir,
    trust: PathBuf,
}

fn pki(leaf_only: bool) -> Result<Pki, Failure> {
    let fail = |e: String| Failure::new(1, format!("generating certificates: {e}"));
    let a = Issuer::new("A").map_err(fail)?;
    let b = Issuer::new("B").map_err(fail)?;
    let dir = TempDir::new("rotation").map_err(|e| Failure::new(1, format!("temp dir: {e}")))?;
    // The runners themselves trust both roots, as a real runner trusts the
    // public roots of both the old and the new issuer; edges that send the
    // leaf alone can only be verified with the intermediates at hand too.
    let trust = dir.path().join("runner-ca.pem");
    let mut pem = format!("{}{}", a.root.pem(), b.root.pem());
    if leaf_only {
        pem.push_str(a.mid.pem());
        pem.push_str(b.mid.pem());
    }
    std::fs::write(&trust, pem)
        .map_err(|e| Failure::new(1, format!("writing {}: {e}", trust.display())))?;
    Ok(Pki { a, b, dir, trust })
}

fn names(extra: Option<&str>) -> Vec<&str> {
    let mut n = vec!["localhost", "127.0.0.1"];
    if let Some(e) = extra {
        if !n.contains(&e) {
            n.push(e);
        }
    }
    n
}

/// `--serve`'s flags.
struct Serve {
    rotate_at: Option<Duration>,
    duration: Option<Duration>,
    settings: Settings,
    leaf_only: bool,
    ca_out: Option<PathBuf>,
}

fn serve_only(addr: &str, serve: &Serve, out: &Output) -> Result<i32, Failure> {
    let stop = Arc::new(AtomicUsize::new(0));
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Ok(id) = signal_hook::flag::register_usize(sig, stop.clone(), sig as usize) {
            ids.push(id);
        }
    }
    let r = serve_until(addr, serve, out, &stop);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    r
}

fn serve_until(
    addr: &str,
    serve: &Serve,
    out: &Output,
    stop: &AtomicUsize,
) -> Result<i32, Failure> {
    let Serve {
        rotate_at,
        duration,
        settings,
        leaf_only,
        ..
    } = *serve;
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']));
    let pki = pki(leaf_only)?;
    let all = names(host);
    let fail = |e: String| Failure::new(1, format!("generating certificates: {e}"));
    let leaf_a = pki.a.leaf(&all, leaf_only).map_err(fail)?;
    let leaf_b = pki.b.leaf(&all, leaf_only).map_err(fail)?;
    let coordinator = Coordinator::start(addr, &leaf_a, settings)
        .map_err(|e| Failure::new(1, format!("cannot listen on {addr}: {e}")))?;
    let url = coordinator.url("");
    // The runners download artifacts from object storage: its root too.
    let mut trust_pem = std::fs::read_to_string(&pki.trust)
        .map_err(|e| Failure::new(1, format!("reading {}: {e}", pki.trust.display())))?;
    trust_pem.push_str(coordinator.storage_ca_pem());
    std::fs::write(&pki.trust, &trust_pem)
        .map_err(|e| Failure::new(1, format!("writing {}: {e}", pki.trust.display())))?;
    let trust_file = match &serve.ca_out {
        Some(f) => {
            std::fs::write(f, &trust_pem)
                .map_err(|e| Failure::new(1, format!("--ca-out {}: {e}", f.display())))?;
            f.clone()
        }
        None => pki.trust.clone(),
    };
    let sends = if leaf_only {
        "the leaf alone"
    } else {
        "leaf + intermediate"
    };
    out.line(format!(
        "coordinator listening on {url} (certificate from CA A, sending {sends})"
    ));
    out.line(format!(
        "object storage listening on https://{} (its own CA)",
        coordinator.storage_addr()
    ));
    out.line(format!(
        "runners' CA file (roots A and B{}, and object storage's): {}",
        if leaf_only {
            ", their intermediates"
        } else {
            ""
        },
        trust_file.display()
    ));
    out.line(format!(
        "try: cargo run --example runner -- --url {url} --token demo --ca-file {}",
        trust_file.display()
    ));
    match rotate_at {
        Some(r) => out.line(format!("rotating to CA B at {}", show(r))),
        None => out.line("no rotation planned (--rotate-at D to rotate)"),
    }
    let start = Instant::now();
    let mut rotated = false;
    let mut signal = 0;
    loop {
        let now = start.elapsed();
        if let Some(d) = duration {
            if now >= d {
                break;
            }
        }
        signal = stop.load(std::sync::atomic::Ordering::SeqCst);
        if signal != 0 {
            break;
        }
        for r in coordinator.take_job_reports() {
            out.line(format!("{:>8.3}s {}", now.as_secs_f64(), job_line(&r)));
        }
        if let Some(r) = rotate_at {
            if !rotated && now >= r {
                coordinator
                    .rotate(&leaf_b)
                    .map_err(|e| Failure::new(1, e))?;
                rotated = true;
                out.line(format!(
                    "{:>8.3}s rotated: new handshakes get a certificate from CA B",
                    now.as_secs_f64()
                ));
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    for r in coordinator.take_job_reports() {
        out.line(format!(
            "{:>8.3}s {}",
            start.elapsed().as_secs_f64(),
            job_line(&r)
        ));
    }
    let c = coordinator.counters();
    out.line(format!(
        "stopped: {} connections, {} full and {} resumed handshakes, {} requests, {} jobs",
        c.connections, c.handshakes_full, c.handshakes_resumed, c.requests, c.jobs
    ));
    // The CA dir goes with `pki`; a signal ends the loop above, so it goes
    // then too.
    drop(pki);
    Ok(if signal == 0 { 0 } else { 128 + signal as i32 })
}

/// `job 3 success: trace 812 bytes in 3 increments; artifact artifacts.zip
/// 4194304 bytes sha256 ...`.
fn job_line(r: &crate::coordinator::JobReport) -> String {
    let mut line = format!(
        "job {} {}: trace {} bytes in {} increments",
        r.id, r.state, r.trace_bytes, r.trace_patches
    );
    if r.trace_refused > 0 {
        line.push_str(&format!(" ({} refused with 416)", r.trace_refused));
    }
    match &r.artifact {
        Some(a) => line.push_str(&format!(
            "; artifact {} {} bytes sha256 {}",
            a.filename, a.size, a.sha256
        )),
        None => line.push_str("; no artifact"),
    }
    if let Some(why) = &r.failure_reason {
        line.push_str(&format!("; failure reason {why}"));
    }
    line
}

/// Timestamped lines shared by the runner threads.
#[derive(Clone)]
struct Timeline {
    start: Instant,
    out: Output,
}

impl Timeline {
    fn log(&self, who: &str, msg: impl AsRef<str>) {
        self.out.line(format!(
            "{:>7.3}s  {who:<11} {}",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        ));
    }
}

/// One job as a runner saw it.
#[derive(Debug, Clone)]
struct Job {
    at: Duration,
    chain: &'static str,
    ok: bool,
}

/// What one runner did.
#[derive(Debug, Default)]
struct Report {
    jobs: Vec<Job>,
    /// TLS handshakes its engine made (full and resumed).
    handshakes: u64,
    error: Option<String>,
}

struct RunnerSpec {
    name: &'static str,
    policy: Policy,
    /// Ask for a fresh chain for every job, and write that chain's CA
    /// bundle, not the long poll's.
    fresh: bool,
}

/// Everything a runner thread needs to know.
struct Env {
    url: String,
    /// The second edge, where jobs `git clone` from.
    git_addr: std::net::SocketAddr,
    trust: PathBuf,
    jobs_dir: PathBuf,
    stop_at: Instant,
    hold: Duration,
    cas: Vec<(&'static str, CertificateDer<'static>)>,
    timeline: Timeline,
    verbose: bool,
    /// Held by the refresh runner from a job's fresh chain to its clone, and
    /// by the rotation: the two edges rotate between jobs, never inside one
    /// (a job whose chain predates a rotation that lands before its clone
    /// would fail, however fresh the chain).
    job_gate: Arc<Mutex<()>>,
}

/// "A" or "B": the root the chain's verified path ended at.
fn label(
    chain: Option<&PeerChain>,
    roots: &[(&'static str, CertificateDer<'static>)],
) -> &'static str {
    let Some(root) = chain
        .and_then(|c| c.verified_path())
        .and_then(|p| p.anchor().certificate())
    else {
        return "?";
    };
    roots
        .iter()
        .find(|(_, d)| d == root)
        .map_or("?", |(n, _)| n)
}

fn demo(mut plan: Plan, out: &Output) -> Result<i32, Failure> {
    // The demo's runners check the chain with `git clone`'s first request
    // at the second edge; they run no checkout of the demo repository.
    plan.settings.repository = false;
    let pki = pki(plan.leaf_only)?;
    let fail = |e: String| Failure::new(1, format!("generating certificates: {e}"));
    let leaf = |issuer: &Issuer| issuer.leaf(&names(None), plan.leaf_only).map_err(fail);
    // Two edges of one coordinator, each with a leaf of its own from the
    // same CA: the runners poll the first, jobs clone from the second.
    let (leaf_a, git_leaf_a) = (leaf(&pki.a)?, leaf(&pki.a)?);
    let (leaf_b, git_leaf_b) = (leaf(&pki.b)?, leaf(&pki.b)?);
    let start_edge = |cert: &ServerCert| {
        Coordinator::start("127.0.0.1:0", cert, plan.settings)
            .map_err(|e| Failure::new(1, format!("starting the coordinator: {e}")))
    };
    let coordinator = start_edge(&leaf_a)?;
    let git_edge = start_edge(&git_leaf_a)?;
    let jobs_dir = pki.dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir)
        .map_err(|e| Failure::new(1, format!("creating {}: {e}", jobs_dir.display())))?;

    out.line(format!(
        "rotary rotation demo: the coordinator at {} rotates from CA A to CA B at {}.",
        coordinator.url(""),
        show(plan.rotate_at)
    ));
    out.line("  pinned  no max age, TLS resumption on (what ordinary clients do)");
    out.line(format!(
        "  rotary  max age {}, a full handshake for every new connection",
        show(plan.max_age)
    ));
    out.line("  refresh rotary, and a fresh chain (a TLS-only full handshake) for every job");
    let sends = if plan.leaf_only {
        "their leaf alone"
    } else {
        "leaf + intermediate"
    };
    out.line(format!(
        "The edges send {sends}. Each job's CA file is the CA bundle of the connection"
    ));
    out.line("that delivered it (refresh: of a handshake made when the job arrived), intermediate");
    out.line("+ root, never the leaf; `git clone` trusts only that file, at a second edge");
    out.line(format!(
        "({}) serving another leaf from the same CA.",
        git_edge.url("")
    ));
    out.line("");

    let start = Instant::now();
    let timeline = Timeline {
        start,
        out: out.clone(),
    };
    // Ordinary clients: the connection never ages out (24 h is past the
    // demo), and a reconnect resumes the old TLS session.
    let mut pinned = Policy::default();
    pinned.max_age = Some(Duration::from_secs(24 * 3600));
    pinned.max_age_jitter = Some(Duration::ZERO);
    pinned.resumption = Resumption::WithinMaxAge;
    let mut rotary = Policy::default();
    rotary.max_age = Some(plan.max_age);
    let specs = [
        RunnerSpec {
            name: "pinned",
            policy: pinned,
            fresh: false,
        },
        RunnerSpec {
            name: "rotary",
            policy: rotary,
            fresh: false,
        },
        RunnerSpec {
            name: "refresh",
            policy: rotary,
            fresh: true,
        },
    ];
    let job_gate = Arc::new(Mutex::new(()));
    let mut handles = Vec::new();
    for spec in specs {
        let env = Env {
            url: coordinator.url("/api/v4/jobs/request"),
            git_addr: git_edge.addr(),
            trust: pki.trust.clone(),
            jobs_dir: jobs_dir.clone(),
            stop_at: start + plan.duration,
            hold: plan.settings.hold,
            cas: vec![
                ("A", pki.a.root.der().clone()),
                ("B", pki.b.root.der().clone()),
            ],
            timeline: timeline.clone(),
            verbose: plan.verbose,
            job_gate: job_gate.clone(),
        };
        let name = spec.name;
        let h = thread::Builder::new()
            .name(format!("{name}-runner"))
            .spawn(move || run_runner(&spec, &env))
            .map_err(|e| Failure::new(1, format!("starting a runner thread: {e}")))?;
        handles.push((name, h));
    }

    let rotate_at = start + plan.rotate_at;
    thread::sleep(rotate_at.saturating_duration_since(Instant::now()));
    let between_jobs = lock(&job_gate);
    coordinator
        .rotate(&leaf_b)
        .and_then(|_| git_edge.rotate(&git_leaf_b))
        .map_err(|e| Failure::new(1, e))?;
    drop(between_jobs);
    let rotated = start.elapsed();
    timeline.log(
        "coordinator",
        "ROTATED: new handshakes get a chain from CA B; live sessions and tickets stay valid",
    );

    let mut reports = Vec::new();
    for (name, h) in handles {
        let r = h.join().unwrap_or_else(|_| Report {
            error: Some("runner thread panicked".into()),
            ..Report::default()
        });
        reports.push((name, r));
    }
    let counters = coordinator.counters();
    let git_counters = git_edge.counters();
    drop(coordinator);
    drop(git_edge);
    let wall = start.elapsed();

    out.line("");
    out.line(format!(
        "{:<7} {:>7} {:>7}   {:>22}   {:>14}   {:>10}",
        "runner", "jobs ok", "failed", "after rotation ok/fail", "handshakes/job", "heal time"
    ));
    let mut healed = None;
    let mut pinned_kept_failing = false;
    // Every refresh job cloned, before and after the rotation, and some came after it.
    let mut refresh_never_failed = false;
    for (name, r) in &reports {
        let ok = r.jobs.iter().filter(|j| j.ok).count();
        let failed = r.jobs.len() - ok;
        let after: Vec<&Job> = r.jobs.iter().filter(|j| j.at >= rotated).collect();
        let after_ok = after.iter().filter(|j| j.ok).count();
        let heal = after
            .iter()
            .find(|j| j.ok && j.chain == "B")
            .map(|j| j.at - rotated);
        let per_job = match r.jobs.len() {
            0 => "-".to_owned(),
            n => format!("{:.2}", r.handshakes as f64 / n as f64),
        };
        out.line(format!(
            "{name:<7} {ok:>7} {failed:>7}   {:>22}   {per_job:>14}   {:>10}",
            format!("{after_ok} / {}", after.len() - after_ok),
            heal.map_or_else(|| "never".to_owned(), show)
        ));
        if let Some(e) = &r.error {
            out.line(format!("        ({name} runner stopped early: {e})"));
        }
        match *name {
            "rotary" => healed = heal,
            "refresh" => {
                refresh_never_failed = failed == 0 && !after.is_empty() && r.error.is_none()
            }
            _ => pinned_kept_failing = !after.is_empty() && after_ok == 0,
        }
    }
    out.line(format!(
        "coordinator: {} full and {} resumed handshakes, {} jobs; git edge: {} handshakes; wall time {}",
        counters.handshakes_full,
        counters.handshakes_resumed,
        counters.jobs,
        git_counters.handshakes_full,
        show(wall)
    ));
    let verdict = match (healed, pinned_kept_failing, refresh_never_failed) {
        (Some(h), true, true) => {
            out.line(format!(
                "verdict: rotary healed {} after the rotation; pinned kept failing; refresh failed no job (OK)",
                show(h)
            ));
            0
        }
        (None, _, _) => {
            out.line("verdict: the rotary runner did not heal (FAIL)");
            1
        }
        (Some(_), false, _) => {
            out.line("verdict: the pinned runner did not keep failing, so the demo showed nothing (FAIL)");
            1
        }
        (Some(_), true, false) => {
            out.line(
                "verdict: the refresh runner failed a job or had none after the rotation (FAIL)",
            );
            1
        }
    };
    Ok(verdict)
}

fn run_runner(spec: &RunnerSpec, env: &Env) -> Report {
    let mut report = Report::default();
    let name = spec.name;
    let tl = &env.timeline;
    let mut config = Config::default();
    config.trust = Trust::pem_file(&env.trust);
    config.policy = spec.policy;
    config.dns_threads = 1;
    let mut engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => {
            report.error = Some(format!("engine: {e}"));
            return report;
        }
    };
    // The poll URL's origin (it has a path: the origin is taken from it).
    let origin = match env
        .url
        .parse::<http::Uri>()
        .map_err(|e| e.to_string())
        .and_then(|u| Origin::from_uri(&u).map_err(|e| e.to_string()))
    {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(format!("the coordinator's origin: {e}"));
            return report;
        }
    };
    let mut last_update: Option<String> = None;
    let mut pending = None;
    // A job waiting for its fresh chain (refresh only): the next poll waits too.
    let mut waiting: Option<(ChainRequestId, u64, Duration, MutexGuard<'_, ()>)> = None;
    let mut retry_at = Instant::now();
    let mut log = JobLog::default();
    while Instant::now() < env.stop_at {
        if pending.is_none() && waiting.is_none() && Instant::now() >= retry_at {
            let req = http::Request::post(&env.url)
                .header("content-type", "application/json")
                .body(poll_body(name, last_update.as_deref()));
            match req {
                Ok(req) => {
                    let opts =
                        RequestOptions::default().deadline(env.hold + Duration::from_secs(10));
                    pending = Some(engine.submit(req, opts));
                }
                Err(e) => {
                    report.error = Some(format!("building the request: {e}"));
                    return report;
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
                Event::Opened(info) => {
                    let kind = match info.handshake {
                        Some(Handshake::Resumed) => "RESUMED session",
                        _ => "full handshake",
                    };
                    tl.log(
                        name,
                        format!(
                            "connection #{} opened: {kind}, chain {}",
                            info.conn.get(),
                            label(info.chain.as_deref(), &env.cas)
                        ),
                    );
                }
                // A fresh-chain handshake closes as a probe: one per job, not news.
                Event::Closed { conn, reason, .. }
                    if reason != CloseReason::Shutdown && reason != CloseReason::Probe =>
                {
                    tl.log(
                        name,
                        format!("connection #{} closed: {}", conn.get(), reason.name()),
                    );
                }
                Event::ChainChanged {
                    previous, current, ..
                } => tl.log(
                    name,
                    format!(
                        "chain changed: {} -> {} (older connections retire)",
                        label(Some(&previous), &env.cas),
                        label(Some(&current), &env.cas)
                    ),
                ),
                Event::ConnectFailed { error, .. } => {
                    tl.log(name, format!("connect failed: {error}"));
                }
                Event::Response {
                    id,
                    response,
                    served_by,
                } if Some(id) == pending => {
                    pending = None;
                    match response.status().as_u16() {
                        201 => {
                            let job_id =
                                crate::runner::job::Job::parse(response.body()).map_or(0, |j| j.id);
                            let at = tl.start.elapsed();
                            if spec.fresh {
                                let gate = lock(&env.job_gate);
                                let call = engine.fresh_chain(&origin, Duration::ZERO);
                                waiting = Some((call, job_id, at, gate));
                            } else {
                                let chain = served_by
                                    .chain
                                    .as_deref()
                                    .ok_or_else(|| "the connection had no TLS chain".to_owned());
                                let via = Via::Conn(served_by.conn);
                                log.job(env, name, job_id, via, chain, at, &mut report);
                            }
                        }
                        204 => {
                            if let Some(u) = response
                                .headers()
                                .get("x-gitlab-last-update")
                                .and_then(|v| v.to_str().ok())
                            {
                                last_update = Some(u.to_owned());
                            }
                        }
                        s => {
                            tl.log(name, format!("unexpected status {s}"));
                            retry_at = Instant::now() + Duration::from_millis(200);
                        }
                    }
                }
                Event::FreshChain { id, result, .. }
                    if waiting.as_ref().is_some_and(|(call, ..)| *call == id) =>
                {
                    if let Some((_, job_id, at, gate)) = waiting.take() {
                        let chain = result
                            .as_deref()
                            .map_err(|e| format!("no fresh chain: {e}"));
                        log.job(env, name, job_id, Via::Fresh, chain, at, &mut report);
                        drop(gate);
                    }
                }
                Event::Failed { id, error, .. } if Some(id) == pending => {
                    pending = None;
                    tl.log(name, format!("job request failed: {error}"));
                    retry_at = Instant::now() + Duration::from_millis(200);
                }
                _ => {}
            }
        }
    }
    log.flush(tl, name);
    if let Some(id) = pending {
        engine.cancel(id);
    }
    let stats = engine.stats();
    report.handshakes = stats.handshakes_full + stats.handshakes_resumed;
    engine.shutdown();
    report
}

/// The gate, also after a thread panicked holding it (it guards no data).
fn lock(gate: &Mutex<()>) -> MutexGuard<'_, ()> {
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a job's chain came from.
#[derive(Clone, Copy)]
enum Via {
    /// The connection that delivered the job.
    Conn(ConnId),
    /// A fresh-chain handshake made when the job arrived.
    Fresh,
}

/// A runner's job lines: one per change of outcome (every job with `-v`),
/// the jobs in between summed up.
#[derive(Default)]
struct JobLog {
    last: Option<(bool, &'static str)>,
    same: u32,
}

impl JobLog {
    /// Run job `job_id` with `chain`'s CA bundle, record it in `report` and
    /// log it.
    #[allow(clippy::too_many_arguments)]
    fn job(
        &mut self,
        env: &Env,
        name: &str,
        job_id: u64,
        via: Via,
        chain: Result<&PeerChain, String>,
        at: Duration,
        report: &mut Report,
    ) {
        let tag = label(chain.as_ref().ok().copied(), &env.cas);
        let (ok, why) = match chain {
            Ok(chain) => run_job(&env.jobs_dir, env.git_addr, name, job_id, chain),
            Err(why) => (false, Some(why)),
        };
        report.jobs.push(Job { at, chain: tag, ok });
        let outcome = (ok, tag);
        if !env.verbose && self.last == Some(outcome) {
            self.same += 1;
            return;
        }
        self.flush(&env.timeline, name);
        let result = match why {
            None => "git clone ok".to_owned(),
            Some(w) => format!("git clone FAILED: {w}"),
        };
        let via = match via {
            Via::Conn(conn) => format!("via connection #{}", conn.get()),
            Via::Fresh => "with a fresh chain".to_owned(),
        };
        env.timeline
            .log(name, format!("job {job_id} {via} (chain {tag}): {result}"));
        self.last = Some(outcome);
    }

    /// Log the jobs summed up since the last line, if any.
    fn flush(&mut self, tl: &Timeline, name: &str) {
        if let (Some(prev), true) = (self.last, self.same > 0) {
            tl.log(name, repeats(self.same, prev));
        }
        self.same = 0;
    }
}

/// The line standing for `n` jobs with the same outcome as the last printed.
fn repeats(n: u32, (ok, chain): (bool, &str)) -> String {
    let what = if ok { "ok" } else { "FAILED" };
    format!("... {n} more jobs since, chain {chain}, git clone {what}")
}

/// Write the job's CA file, `chain`'s CA bundle, into `jobs_dir` and clone
/// from the second edge (at `git_addr`) trusting only it. Returns (ok, why
/// not).
fn run_job(
    jobs_dir: &std::path::Path,
    git_addr: std::net::SocketAddr,
    runner: &str,
    job: u64,
    chain: &PeerChain,
) -> (bool, Option<String>) {
    let bundle = match chain.ca_bundle() {
        Ok(pem) => pem,
        Err(e) => return (false, Some(e.to_string())),
    };
    let file = jobs_dir.join(format!("{runner}-job-{job}-ca.pem"));
    if let Err(e) = std::fs::write(&file, bundle) {
        return (false, Some(format!("writing {}: {e}", file.display())));
    }
    let result = git::clone_check(git_addr, "localhost", "/demo/project.git", &file);
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    }
}

/// The body of a runner's `jobs/request`: GitLab's long poll sends back the
/// queue state the coordinator last sent (`X-GitLab-Last-Update`), so the
/// coordinator holds the poll.
fn poll_body(name: &str, last_update: Option<&str>) -> Bytes {
    let mut body = serde_json::json!({
        "token": format!("{name}-runner-token"),
        "info": {"name": format!("{name} runner")},
    });
    if let (Some(u), Some(map)) = (last_update, body.as_object_mut()) {
        map.insert("last_update".into(), u.into());
    }
    Bytes::from(body.to_string())
}
