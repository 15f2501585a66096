//! The runner's whole job loop against the demo coordinator held to
//! GitLab's rules: steps in bash (exit codes, masking, file variables,
//! `when`, `allow_failure`, timeouts), the checkout through `git
//! http-backend` with the job token, cancels, 429/502 on every endpoint,
//! dependencies, the long poll's rules, and a 64 MiB artifact through
//! `Client`. The runner runs in-process; the coordinator records what it
//! got.
//!
//! They need `bash` and, for the checkout, `git` with `git http-backend`:
//! with `CI=true` (set by `.ci/run`, which installs them) a missing tool
//! fails the test; elsewhere the test is skipped, saying what to install.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rotary_examples::coordinator::{Coordinator, JobReport, JobSpec, Settings};
use rotary_examples::pki::Ca;
use rotary_examples::runner::job::When;
use rotary_examples::{runner, Captured, Output, TempDir};

/// True when `name` runs; false after saying why the test is skipped. In
/// CI (`CI=true`) a missing tool fails the test instead.
fn have(name: &str, probe: &[&str]) -> bool {
    let ok = std::process::Command::new(name)
        .args(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    match ok {
        true => true,
        false if in_ci => panic!(
            "`{name} {}` fails; CI (.ci/run) installs it",
            probe.join(" ")
        ),
        false => {
            eprintln!(
                "SKIPPED: `{name} {}` fails (apt-get install {name})",
                probe.join(" ")
            );
            false
        }
    }
}

fn have_bash() -> bool {
    have("bash", &["-c", "true"])
}

/// git with its smart-HTTP server (Debian's `git` package has both).
fn have_git() -> bool {
    if !have("git", &["--version"]) {
        return false;
    }
    let backend = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("git-http-backend"));
    // Named as a command, so the message says what is missing.
    backend.is_some_and(|b| b.is_file()) || have("git-http-backend", &[])
}

/// A coordinator with a fresh CA, and the runner's CA file (its root and
/// object storage's).
struct Server {
    coordinator: Coordinator,
    ca_file: PathBuf,
    dir: TempDir,
}

fn server(settings: Settings) -> Server {
    let ca = Ca::new("runner jobs test CA").expect("CA");
    let cert = ca.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let coordinator = Coordinator::start("127.0.0.1:0", &cert, settings).expect("coordinator");
    let dir = TempDir::new("runner-jobs").expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(
        &ca_file,
        format!("{}{}", ca.pem(), coordinator.storage_ca_pem()),
    )
    .expect("CA file");
    Server {
        coordinator,
        ca_file,
        dir,
    }
}

/// Queued jobs only, fast intervals.
fn settings() -> Settings {
    Settings {
        hold: Duration::from_millis(300),
        trace_update_interval: Duration::from_millis(10),
        demo_jobs: false,
        ..Settings::default()
    }
}

/// Run the runner against `s` until `jobs` jobs ran (or 60 s); its exit
/// code and output.
fn run_runner(s: &Server, jobs: u32, extra: &[&str]) -> (i32, Captured) {
    let builds = s.dir.path().join("builds");
    let mut a: Vec<String> = [
        "--url",
        &s.coordinator.url(""),
        "--token",
        "glrt-test",
        "--ca-file",
        s.ca_file.to_str().expect("utf-8"),
        "--builds-dir",
        builds.to_str().expect("utf-8"),
        "--check-interval",
        "20ms",
        "--retry-backoff",
        "10ms",
        "--max-jobs",
        &jobs.to_string(),
        "--duration",
        "60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    let (out, cap) = Output::capture();
    let code = runner::main_with_args(a, &out);
    (code, cap)
}

fn report(reports: &[JobReport], id: u64) -> &JobReport {
    reports
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no report for job {id}: {reports:?}"))
}

fn trace(r: &JobReport) -> String {
    String::from_utf8_lossy(&r.trace).into_owned()
}

#[test]
fn steps_run_in_bash_with_exit_codes_masking_file_variables_when_and_timeouts() {
    if !have_bash() {
        return;
    }
    let s = server(Settings {
        repository: false,
        ..settings()
    });
    let secret = "s3cr3t-v4lue-0042";
    // A failing script: its exit code reported, the after_script run, the
    // on_failure artifact uploaded and the on_success one not.
    let failing = s.coordinator.enqueue(
        JobSpec::script(&[
            "echo secret is $MY_SECRET",
            "printf '%s' \"$MY_SECRET\" | tr 'a-z' 'A-Z'; echo",
            "echo \"file says: $(cat \"$MY_FILE\")\"",
            "echo to-keep > out.txt",
            "exit 3",
            "echo never printed",
        ])
        .after_script(&["echo after ran with $MY_SECRET"])
        .variable("MY_SECRET", secret, true)
        .file_variable("MY_FILE", "content 42")
        .archive(&["out.txt"], When::OnFailure)
        .archive(&["out.txt"], When::OnSuccess),
    );
    // Steps by `when`, a failing step allowed to fail, no artifacts.
    let mut spec = JobSpec::script(&["echo main ok"]).after_script(&["exit 7"]);
    spec.steps.push(rotary_examples::runner::job::Step {
        name: "notify".into(),
        script: vec!["echo should not run".into()],
        when: When::OnFailure,
        ..Default::default()
    });
    let allowed = s.coordinator.enqueue(spec);
    // The job's timeout ends a sleeper.
    let mut slow = JobSpec::script(&["echo sleeping", "sleep 30"]);
    slow.timeout = 1;
    let timed_out = s.coordinator.enqueue(slow);
    // 3 MB of output: sent in increments of at most 1 MiB.
    let chatty = s.coordinator.enqueue(JobSpec::script(&[
        "head -c 3000000 /dev/zero | tr '\\0' x",
        "echo; echo end of output",
    ]));
    let started = Instant::now();
    let (code, cap) = run_runner(&s, 4, &[]);
    let text = cap.stdout();
    assert_eq!(code, 1, "{text}\n{}", cap.stderr());
    assert!(started.elapsed() < Duration::from_secs(25), "{text}");
    let reports = s.coordinator.take_job_reports();

    let r = report(&reports, failing);
    assert_eq!(r.state, "failed", "{r:?}");
    assert_eq!(r.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(r.exit_code, Some(3), "{r:?}");
    let t = trace(r);
    assert!(
        !t.contains(secret),
        "a masked value reached the trace:\n{t}"
    );
    assert!(t.contains("secret is [MASKED]"), "{t}");
    assert!(
        t.contains("S3CR3T-V4LUE-0042"),
        "only the exact value is masked:\n{t}"
    );
    assert!(t.contains("$ echo secret is $MY_SECRET"), "{t}");
    assert!(t.contains("file says: content 42"), "{t}");
    assert!(t.contains("after ran with [MASKED]"), "{t}");
    assert!(!t.contains("never printed"), "{t}");
    assert!(t.contains("ERROR: Job failed: exit code 3"), "{t}");
    assert_eq!(r.uploads.len(), 1, "only the on_failure artifact: {r:?}");
    assert!(
        text.contains(&format!("job {failing}: failed: exit code 3")),
        "{text}"
    );
    // The file variable's file was removed with the job's tmp/.
    assert!(!s
        .dir
        .path()
        .join(format!("builds/job-{failing}/tmp"))
        .exists());

    let r = report(&reports, allowed);
    assert_eq!(r.state, "success", "{r:?}");
    let t = trace(r);
    assert!(
        t.contains("main ok") && !t.contains("should not run"),
        "{t}"
    );
    assert!(
        t.contains("WARNING: step after_script failed (allowed to fail): exit code 7"),
        "{t}"
    );
    assert!(r.uploads.is_empty(), "no artifacts, no upload: {r:?}");

    let r = report(&reports, timed_out);
    assert_eq!(r.state, "failed", "{r:?}");
    assert_eq!(r.failure_reason.as_deref(), Some("job_execution_timeout"));
    assert!(trace(r).contains("sleeping"), "{r:?}");

    let r = report(&reports, chatty);
    assert_eq!(r.state, "success", "{r:?}");
    assert!(r.trace_bytes > 3_000_000, "{r:?}");
    assert!(
        r.trace_largest_patch <= 1024 * 1024,
        "{}",
        r.trace_largest_patch
    );
    assert!(r.trace_patches >= 3, "{}", r.trace_patches);
    let log = std::fs::read(s.dir.path().join(format!("builds/job-{chatty}/trace.log")))
        .expect("trace.log");
    assert!(String::from_utf8_lossy(&log).ends_with("end of output\nJob succeeded\n"));
}

#[test]
fn the_checkout_fetches_the_private_repository_with_the_job_token_and_the_jobs_ca_file() {
    if !have_bash() || !have_git() {
        return;
    }
    let s = server(settings());
    let id = s.coordinator.enqueue(JobSpec::script(&[
        "git rev-parse HEAD",
        "cat greeting.txt",
        "test \"$CI_SERVER_TLS_CA_FILE\" = \"$CI_BUILDS_DIR/ca.pem\" && echo ca file exported",
        "git config --get remote.origin.url",
    ]));
    let (code, cap) = run_runner(&s, 1, &[]);
    let text = cap.stdout();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    let reports = s.coordinator.take_job_reports();
    let r = report(&reports, id);
    let t = trace(r);
    let sha = s
        .coordinator
        .repository_sha()
        .expect("the repository was made");
    assert!(t.contains(&sha), "checked out {sha}:\n{t}");
    assert!(t.contains("hello from the demo repository"), "{t}");
    assert!(t.contains("ca file exported"), "{t}");
    // The token went as a header, never into the remote's URL or config.
    let config = std::fs::read_to_string(
        s.dir
            .path()
            .join(format!("builds/job-{id}/project/.git/config")),
    )
    .expect("the checkout's config");
    assert!(
        !config.contains("glcbt") && !config.contains('@'),
        "{config}"
    );
    assert!(!t.contains("glcbt"), "{t}");
    let c = s.coordinator.counters();
    assert!(c.git_requests >= 2, "{c:?}");
    assert_eq!(c.git_refused, 0, "{c:?}");
    // Without a running job's token the repository is closed.
    let mut config = rotary::Config::default();
    config.trust = rotary::Trust::pem_file(&s.ca_file);
    let client = rotary::Client::new(config).expect("client");
    let url = s
        .coordinator
        .url("/demo/project.git/info/refs?service=git-upload-pack");
    let anon = client
        .send(http::Request::get(url.as_str()).body(()).expect("request"))
        .expect("an answer");
    assert_eq!(anon.status(), 401);
    assert_eq!(anon.headers()["www-authenticate"], "Basic realm=\"GitLab\"");
    let finished = client
        .send(
            http::Request::get(url.as_str())
                .header(
                    "authorization",
                    format!("Basic {}", b64(&format!("gitlab-ci-token:{}", "glcbt-1"))),
                )
                .body(())
                .expect("request"),
        )
        .expect("an answer");
    assert_eq!(
        finished.status(),
        401,
        "a finished job's token is refused too"
    );
    client.shutdown();
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn a_cancel_from_the_coordinator_ends_the_running_job_by_job_status_or_403() {
    if !have_bash() {
        return;
    }
    let s = server(Settings {
        repository: false,
        ..settings()
    });
    // Chatty: its trace answers carry `Job-Status: canceled`. Silent: only
    // the keep-alive `PUT running` learns of it, with a 403.
    let chatty = s.coordinator.enqueue(JobSpec::script(&[
        "for i in $(seq 600); do echo tick $i; sleep 0.05; done",
    ]));
    let silent = s.coordinator.enqueue(JobSpec::script(&["sleep 30"]));
    let started = Instant::now();
    let coordinator = &s.coordinator;
    let (code, cap) = std::thread::scope(|scope| {
        let runner = scope.spawn(|| run_runner(&s, 2, &[]));
        // Each is canceled once its trace shows its script running.
        for (id, shows) in [(chatty, "tick 1"), (silent, "$ sleep 30")] {
            let until = Instant::now() + Duration::from_secs(20);
            while !coordinator
                .trace(id)
                .is_some_and(|t| String::from_utf8_lossy(&t).contains(shows))
            {
                assert!(Instant::now() < until, "job {id} never ran");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(coordinator.cancel(id), "job {id} was running");
        }
        runner.join().expect("runner thread")
    });
    let text = cap.stdout();
    assert_eq!(code, 1, "{text}\n{}", cap.stderr());
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");
    let reports = s.coordinator.take_job_reports();
    for id in [chatty, silent] {
        let r = report(&reports, id);
        assert_eq!(r.state, "canceled", "{r:?}");
        assert!(
            text.contains(&format!("job {id}: failed: canceled by the coordinator")),
            "{text}"
        );
        // Nothing was uploaded for a canceled job, and its last words came.
        assert!(r.uploads.is_empty(), "{r:?}");
    }
    let t = trace(report(&reports, chatty));
    assert!(t.contains("tick 1") && !t.contains("tick 600"), "{t}");
}

#[test]
fn injected_429s_and_502s_on_every_endpoint_are_retried_until_the_jobs_succeed() {
    if !have_bash() {
        return;
    }
    let s = server(Settings {
        repository: false,
        fault_every: 3,
        rate_limit_reset: Duration::ZERO,
        accept_final_later: true,
        ..settings()
    });
    let first = s.coordinator.enqueue(
        JobSpec::script(&["echo built > built.txt"]).archive(&["built.txt"], When::OnSuccess),
    );
    let mut spec = JobSpec::script(&["cat built.txt"]);
    spec.dependencies = vec![first];
    let second = s.coordinator.enqueue(spec);
    let (code, cap) = run_runner(&s, 2, &[]);
    let text = cap.stdout();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    let reports = s.coordinator.take_job_reports();
    for id in [first, second] {
        let r = report(&reports, id);
        assert_eq!(r.state, "success", "{r:?}\n{text}");
        // The first final PUT got a 202 and was sent again.
        assert!(r.final_updates >= 2, "{r:?}");
    }
    assert!(trace(report(&reports, second)).contains("built"));
    assert_eq!(report(&reports, second).downloads, [first]);
    for (endpoint, n429, n502) in s.coordinator.faults() {
        assert!(
            n429 >= 1 && n502 >= 1,
            "{endpoint}: {n429} 429s, {n502} 502s\n{text}"
        );
    }
    assert!(
        text.contains("poll answered 429 Too Many Requests"),
        "{text}"
    );
    assert!(
        text.contains("PATCH trace answered 502 Bad Gateway"),
        "{text}"
    );
}

#[test]
fn only_dependencies_with_artifacts_are_fetched_each_with_its_own_token() {
    if !have_bash() {
        return;
    }
    let s = server(Settings {
        repository: false,
        ..settings()
    });
    let bare = s
        .coordinator
        .enqueue(JobSpec::script(&["echo nothing kept"]));
    let kept = s.coordinator.enqueue(
        JobSpec::script(&["mkdir -p out", "echo from-kept > out/b.txt"])
            .archive(&["out/"], When::OnSuccess),
    );
    let mut spec = JobSpec::script(&["cat out/b.txt"]);
    spec.dependencies = vec![bare, kept];
    let user = s.coordinator.enqueue(spec);
    let (code, cap) = run_runner(&s, 3, &[]);
    let text = cap.stdout();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    let reports = s.coordinator.take_job_reports();
    let r = report(&reports, user);
    assert_eq!(r.state, "success", "{r:?}");
    // Only the second, with the token the coordinator gave for it (the
    // coordinator refuses any other).
    assert_eq!(r.downloads, [kept], "{r:?}");
    let t = trace(r);
    assert!(
        t.contains(&format!(
            "Skipping artifacts of test ({bare}): it kept none"
        )),
        "{t}"
    );
    assert!(t.contains("from-kept"), "{t}");
    assert_eq!(s.coordinator.counters().storage_requests, 1);
}

#[test]
fn polls_follow_gitlabs_rules_and_a_job_needing_an_unannounced_feature_is_dropped() {
    let s = server(Settings {
        hold: Duration::from_millis(400),
        ..settings()
    });
    let mut unsupported = JobSpec::script(&["true"]);
    unsupported.requires = vec!["cancel_gracefully".into()];
    let dropped = s.coordinator.enqueue(unsupported);
    let started = Instant::now();
    let (code, cap) = run_runner(&s, 1, &["--duration", "1.5s", "--check-interval", "200ms"]);
    let text = cap.stdout();
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    let reports = s.coordinator.take_job_reports();
    let r = report(&reports, dropped);
    assert_eq!(
        (r.state.as_str(), r.failure_reason.as_deref()),
        ("failed", Some("runner_unsupported"))
    );
    let polls = s.coordinator.polls();
    // No tight loop: at most one poll per check interval, more only when held.
    let most = (elapsed.as_secs_f64() / 0.2).ceil() as usize + 1;
    assert!(
        polls.len() >= 3 && polls.len() <= most,
        "{} polls: {polls:?}",
        polls.len()
    );
    assert_eq!(polls[0].last_update, None, "the first poll knows no state");
    for w in polls.windows(2) {
        // Each poll sends back the state the previous answer named.
        assert_eq!(w[1].last_update, w[0].next_update, "{polls:?}");
    }
    assert!(polls.iter().skip(1).all(|p| p.held), "{polls:?}");
    let p = &polls[0];
    let agent = p.user_agent.as_deref().unwrap_or_default();
    assert!(
        agent.starts_with("rotary-runner/") && agent.contains("(rotary "),
        "{agent}"
    );
    let id = p.system_id.as_deref().unwrap_or_default();
    assert!(
        id.len() == 14
            && (id.starts_with("s_") || id.starts_with("r_"))
            && id[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let on: BTreeSet<&str> = p
        .features
        .iter()
        .filter(|(_, v)| **v)
        .map(|(k, _)| k.as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "variables",
        "artifacts",
        "upload_multiple_artifacts",
        "upload_raw_artifacts",
        "refspecs",
        "masking",
        "return_exit_code",
        "multi_build_steps",
        "cancelable",
    ]
    .into();
    assert_eq!(on, want);
    for off in [
        "image",
        "services",
        "cache",
        "fallback_cache_keys",
        "artifacts_exclude",
    ] {
        assert_eq!(p.features.get(off), Some(&false), "{off}");
    }
}

/// The runner's whole job loop with a 64 MiB artifact through `Client`,
/// streamed from the file: the coordinator's SHA-256 of what it received is
/// the runner's of what it packed.
#[test]
fn a_64_mib_artifact_goes_up_whole_through_client() {
    if !have_bash() {
        return;
    }
    let s = server(Settings {
        repository: false,
        demo_jobs: true,
        job_every: Duration::from_millis(10),
        ..settings()
    });
    let size = 64 * 1024 * 1024;
    let (code, cap) = run_runner(&s, 1, &["--artifact-size", &size.to_string()]);
    let text = cap.stdout();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    let reports = s.coordinator.take_job_reports();
    let r = &reports[0];
    assert_eq!(r.state, "success", "{r:?}");
    let art = r.artifact.as_ref().expect("the artifact");
    assert!(art.size > size, "{art:?}");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("job {}: artifact ", r.id)))
        .unwrap_or_else(|| panic!("no artifact line:\n{text}"));
    assert!(
        line.contains(&format!("{} bytes sha256 {}", art.size, art.sha256)),
        "{line}\n{art:?}"
    );
}
