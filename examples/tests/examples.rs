//! Each example program, run in-process through its `main_with_args` with
//! short timings and small counts, so none can rot.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rotary_examples::coordinator::{Coordinator, JobSpec, Settings};
use rotary_examples::pki::Ca;
use rotary_examples::{fetch, loadgen, rotation, runner, Output, TempDir};
use support::{response, Peer};

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A coordinator with a fresh root and intermediate (it sends leaf +
/// intermediate), and the root's PEM file.
struct Server {
    coordinator: Coordinator,
    ca_file: PathBuf,
    root: Ca,
    mid: Ca,
    _dir: TempDir,
}

fn server(settings: Settings) -> Server {
    server_named(&["localhost", "127.0.0.1"], settings)
}

/// The same with a leaf for `names`.
fn server_named(names: &[&str], settings: Settings) -> Server {
    let ca = Ca::new("examples test CA").expect("generate CA");
    let mid = ca.intermediate("examples test intermediate").expect("CA");
    let cert = mid.issue(names).expect("issue leaf");
    let dir = TempDir::new("examples-test").expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA file");
    let coordinator = Coordinator::start("127.0.0.1:0", &cert, settings).expect("start");
    Server {
        coordinator,
        ca_file,
        root: ca,
        mid,
        _dir: dir,
    }
}

fn ca(s: &Server) -> &str {
    s.ca_file.to_str().expect("temp paths are UTF-8")
}

/// The rotation demo with short timings (and `extra` flags); its stdout
/// once it exited 0.
fn short_demo(extra: &[&str]) -> String {
    let mut a = args(&[
        "--rotate-at",
        "1.2s",
        "--duration",
        "4s",
        "--max-age",
        "800ms",
        "--hold",
        "300ms",
        "--job-every",
        "150ms",
    ]);
    a.extend(args(extra));
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(a, &out);
    let text = cap.stdout();
    assert_eq!(code, 0, "demo failed:\n{text}\n{}", cap.stderr());
    text
}

/// The demo's summary row for `runner` (its name, then the counts).
fn table_row<'a>(text: &'a str, runner: &str) -> &'a str {
    text.lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(runner) && words.next().is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .unwrap_or_else(|| panic!("no table row for {runner}:\n{text}"))
}

#[test]
fn rotation_demo_with_short_timings_heals_rotary_and_shows_pinned_failing() {
    let started = Instant::now();
    let text = short_demo(&[]);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(text.contains("ROTATED"), "{text}");
    let row = |name: &str| table_row(&text, name).to_owned();
    let pinned = row("pinned");
    assert!(pinned.ends_with("never"), "pinned must not heal: {pinned}");
    assert!(
        pinned.contains(" 0 / "),
        "no pinned job succeeds after rotation: {pinned}"
    );
    assert!(!row("rotary").ends_with("never"), "{text}");
    assert!(
        text.contains("UnknownIssuer"),
        "the pinned failure is the chain: {text}"
    );
    assert!(text.contains("verdict: rotary healed"), "{text}");
}

/// A credential scenario of the rotation demo with short timings (rotary
/// keeps its default check every second); its stdout once it exited 0.
fn credential_demo(flag: &str) -> String {
    let a = args(&[
        flag,
        "--rotate-at",
        "1.3s",
        "--duration",
        "4.5s",
        "--hold",
        "300ms",
        "--job-every",
        "150ms",
    ]);
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(a, &out);
    let text = cap.stdout();
    assert_eq!(code, 0, "demo failed:\n{text}\n{}", cap.stderr());
    text
}

/// (requests failed, jobs failed) of a credential table row.
fn failures(row: &str) -> (u32, u32) {
    let cols: Vec<&str> = row.split_whitespace().collect();
    let n = |i: usize| cols.get(i).and_then(|c| c.parse().ok()).unwrap_or(u32::MAX);
    // runner, requests failed, jobs ok, "/", jobs failed, ...
    (n(1), n(4))
}

#[test]
fn rotation_demo_identity_renewals_reach_rotarys_live_connection_and_not_pinneds() {
    for flag in ["--identity-rename", "--identity-swap"] {
        let text = credential_demo(flag);
        let (pinned, rotary) = (table_row(&text, "pinned"), table_row(&text, "rotary"));
        assert!(
            pinned.contains("presented runner-1 on"),
            "{flag}: pinned keeps its identity: {text}"
        );
        assert_eq!(failures(rotary).1, 0, "{flag}: no rotary job fails: {text}");
        assert!(text.contains("(identity_rotated)"), "{flag}: {text}");
        assert!(
            text.contains("verdict: rotary: 0 failed jobs, no request with the old identity"),
            "{flag}: {text}"
        );
    }
}

#[test]
fn rotation_demo_remove_root_moves_rotarys_bundles_to_the_other_root_without_a_failed_job() {
    let text = credential_demo("--remove-root");
    let rotary = table_row(&text, "rotary");
    assert_eq!(failures(rotary), (0, 0), "{text}");
    assert!(
        text.contains("rotary      jobs now get the CA bundle of root B"),
        "{text}"
    );
    assert!(
        !text.contains("credentials no longer hold"),
        "the connection still verifies, through root B: {text}"
    );
    assert!(
        table_row(&text, "pinned").contains("got removed root A's bundle"),
        "{text}"
    );
    assert!(text.contains("verdict: rotary: 0 failed jobs"), "{text}");
}

#[test]
fn rotation_demo_revoke_closes_rotarys_connection_and_the_server_sees_nothing_later() {
    let text = credential_demo("--revoke");
    assert!(text.contains("(revoked): certificate revoked"), "{text}");
    assert!(
        table_row(&text, "pinned").contains("on the revoked connection after the change"),
        "{text}"
    );
    assert!(
        text.contains("verdict: rotary: no request on a revoked connection later than 2 s"),
        "{text}"
    );
}

#[test]
fn rotation_demo_takes_one_scenario_at_a_time() {
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(args(&["--revoke", "--remove-root"]), &out);
    assert_eq!(code, 2);
    assert!(cap.stderr().contains("one at a time"), "{}", cap.stderr());
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(args(&["--revoke", "--serve", "127.0.0.1:0"]), &out);
    assert_eq!(code, 2);
    assert!(cap.stderr().contains("--serve"), "{}", cap.stderr());
}

#[test]
fn rotation_demo_refresh_runner_fails_no_job_before_or_after_the_rotation() {
    let text = short_demo(&[]);
    let row = table_row(&text, "refresh");
    let cols: Vec<&str> = row.split_whitespace().collect();
    // refresh, ok, failed, after-ok, "/", after-failed, handshakes/job, heal time...
    assert_eq!(
        cols.get(2),
        Some(&"0"),
        "no refresh job fails: {row}\n{text}"
    );
    assert_ne!(cols.get(1), Some(&"0"), "refresh ran jobs: {row}");
    assert_ne!(cols.get(3), Some(&"0"), "some after the rotation: {row}");
    assert_eq!(cols.get(5), Some(&"0"), "none failed after it: {row}");
    let per_job: f64 = cols
        .get(6)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a handshakes/job column: {row}"));
    assert!(per_job >= 1.0, "a fresh handshake per job: {row}");
    assert!(
        text.contains("with a fresh chain (chain B): git clone ok"),
        "{text}"
    );
    assert!(text.contains("refresh failed no job (OK)"), "{text}");
}

#[test]
fn rotation_demo_pinned_runner_resumes_the_old_session_when_the_edge_closes() {
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(
        args(&[
            "--rotate-at",
            "1s",
            "--duration",
            "3.5s",
            "--max-age",
            "800ms",
            "--hold",
            "300ms",
            "--job-every",
            "100ms",
            "--edge-max-requests",
            "3",
        ]),
        &out,
    );
    let text = cap.stdout();
    assert_eq!(code, 0, "demo failed:\n{text}\n{}", cap.stderr());
    // Reconnecting is not enough: the pinned runner resumes and keeps chain A.
    assert!(
        text.lines()
            .any(|l| l.contains("pinned") && l.contains("RESUMED session, chain A")),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("pinned") && l.contains("chain B")),
        "{text}"
    );
}

#[test]
fn rotation_demo_refuses_bad_flags_with_one_line_and_code_2() {
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(args(&["--rotate-at", "soon"]), &out);
    assert_eq!(code, 2);
    assert!(cap
        .stderr()
        .starts_with("rotation: --rotate-at: bad duration"));
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(args(&["--rotate-at", "9s", "--duration", "5s"]), &out);
    assert_eq!(code, 2, "{}", cap.stderr());
    let (out, _) = Output::capture();
    assert_eq!(rotation::main_with_args(args(&["--bogus"]), &out), 2);
}

#[test]
fn fetch_prints_the_body_and_verbose_connection_events() {
    let s = server(Settings::default());
    let dir = TempDir::new("fetch-chain").expect("temp dir");
    let dump = dir.path().join("chain.pem");
    let (out, cap) = Output::capture();
    let code = fetch::main_with_args(
        args(&[
            "-v",
            "-i",
            "--cacert",
            ca(&s),
            "--dump-chain",
            dump.to_str().expect("utf-8"),
            &s.coordinator.url("/hello"),
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
    let text = cap.stdout();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("rotary demo coordinator: GET /hello"),
        "{text}"
    );
    let err = cap.stderr();
    assert!(err.contains("full handshake"), "{err}");
    assert!(err.contains("leaf SHA-256"), "{err}");
    let pem = std::fs::read_to_string(&dump).expect("chain dumped");
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn fetch_repeat_reports_the_serving_connection_and_posts_data() {
    let s = server(Settings::default());
    let (out, cap) = Output::capture();
    let code = fetch::main_with_args(
        args(&[
            "--cacert",
            ca(&s),
            "--repeat",
            "3",
            "--interval",
            "10ms",
            "-d",
            "hello",
            &s.coordinator.url("/echo"),
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
    assert_eq!(
        cap.stdout().matches("POST /echo (5 body bytes)").count(),
        3,
        "{}",
        cap.stdout()
    );
    let err = cap.stderr();
    assert!(
        err.contains("request 1/3: 200 OK via connection #1 (new)"),
        "{err}"
    );
    assert!(
        err.contains("request 3/3: 200 OK via connection #1 (reused)"),
        "{err}"
    );
}

#[test]
fn fetch_failures_exit_with_the_documented_code_and_one_line() {
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--cacert", "/nonexistent/ca.pem", "https://127.0.0.1:9/"],
            3,
            "cannot read CA file",
        ),
        (&["--frobnicate", "https://127.0.0.1:9/"], 2, "unknown flag"),
        (&["ftp://example.com/"], 2, "bad URL"),
        (&["http://127.0.0.1:9/"], 5, "could not connect"),
    ];
    for (a, want, says) in cases {
        let (out, cap) = Output::capture();
        let code = fetch::main_with_args(args(a), &out);
        let err = cap.stderr();
        assert_eq!(code, want, "{a:?}: {err}");
        assert!(err.starts_with("fetch: "), "{a:?}: {err}");
        assert!(err.contains(says), "{a:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{a:?}: {err}");
    }
    // A server whose chain the CA file does not trust: the TLS phase.
    let s = server(Settings::default());
    let other = Ca::new("someone else").expect("CA");
    let dir = TempDir::new("fetch-untrusted").expect("temp dir");
    let file = dir.path().join("other.pem");
    std::fs::write(&file, other.pem()).expect("write");
    let (out, cap) = Output::capture();
    let code = fetch::main_with_args(
        args(&[
            "--cacert",
            file.to_str().expect("utf-8"),
            &s.coordinator.url("/"),
        ]),
        &out,
    );
    assert_eq!(code, 6, "{}", cap.stderr());
    assert!(cap.stderr().contains("UnknownIssuer"), "{}", cap.stderr());
}

#[test]
fn fetch_crlfile_refuses_a_revoked_leaf_naming_it_and_exits_6() {
    let root = Ca::new("crl test CA").expect("CA");
    let mid = root.intermediate("crl test intermediate").expect("CA");
    let leaf = mid.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let other = mid.issue(&["other.test"]).expect("leaf");
    let coordinator = Coordinator::start("127.0.0.1:0", &leaf, Settings::default()).expect("start");
    let dir = TempDir::new("fetch-crl").expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let ca_file = write("ca.pem", root.pem());
    let revoking = write(
        "revoking.crl",
        &mid.crl_pem(&[&other, &leaf], 1).expect("crl"),
    );
    let sparing = write("sparing.crl", &mid.crl_pem(&[&other], 1).expect("crl"));
    let url = coordinator.url("/hello");

    let (code, _, err) = fetch_run(&["--cacert", &ca_file, "--crlfile", &sparing, &url]);
    assert_eq!(code, 0, "{err}");
    assert_fails(
        fetch_run(&["--cacert", &ca_file, "--crlfile", &revoking, &url]),
        6,
        &format!(
            "certificate revoked: CN=localhost (serial {})",
            leaf.serial_hex()
        ),
    );
    let broken = write(
        "broken.crl",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    assert_fails(
        fetch_run(&["--cacert", &ca_file, "--crlfile", &broken, &url]),
        3,
        "broken.crl",
    );
}

/// The keys of a flat JSON object line, in order.
fn keys(line: &str) -> Vec<String> {
    let inner = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not one JSON object: {line}"));
    inner
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').expect("key: value");
            assert!(!v.is_empty(), "{line}");
            k.trim_matches('"').to_owned()
        })
        .collect()
}

#[test]
fn loadgen_prints_one_json_line_with_exactly_the_required_keys() {
    let s = server(Settings::default());
    let (out, cap) = Output::capture();
    let code = loadgen::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url("/bytes/5"),
            "--cacert",
            ca(&s),
            "--conns",
            "4",
            "--requests",
            "200",
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
    let text = cap.stdout();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(
        keys(&text),
        [
            "client",
            "conns",
            "requests",
            "errors",
            "wall_s",
            "req_per_s",
            "cpu_user_s",
            "cpu_sys_s",
            "cpu_us_per_req",
            "max_rss_kib",
            "connections_opened",
            "body_bytes",
            "p50_us",
            "p99_us"
        ]
    );
    assert!(text.contains(r#""client":"rotary""#), "{text}");
    assert!(text.contains(r#""requests":200,"errors":0"#), "{text}");
    assert!(
        text.contains(r#""connections_opened":4,"body_bytes":1000"#),
        "{text}"
    );
}

#[test]
fn loadgen_idle_mode_reports_memory_per_connection() {
    let s = server(Settings::default());
    let (out, cap) = Output::capture();
    let code = loadgen::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url("/bytes/5"),
            "--cacert",
            ca(&s),
            "--idle",
            "8",
            "--hold-secs",
            "100ms",
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
    let text = cap.stdout();
    assert_eq!(
        keys(&text),
        [
            "client",
            "idle_conns",
            "rss_before_kib",
            "rss_after_kib",
            "kib_per_conn"
        ]
    );
    assert!(text.contains(r#""idle_conns":8,"#), "{text}");
}

#[test]
fn loadgen_against_an_unreachable_url_fails_with_one_line() {
    let (out, cap) = Output::capture();
    let code = loadgen::main_with_args(
        args(&["--url", "http://127.0.0.1:9/", "--requests", "3"]),
        &out,
    );
    assert_eq!(code, 1);
    let err = cap.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("3 of 3 requests failed"), "{err}");
}

/// The runner's trust: the coordinator's root and object storage's.
fn runner_ca(s: &Server) -> PathBuf {
    let file = s._dir.path().join("runner-ca.pem");
    let pem = format!("{}{}", s.root.pem(), s.coordinator.storage_ca_pem());
    std::fs::write(&file, pem).expect("write runner CA file");
    file
}

/// The value of a numeric key in loadgen's JSON line.
fn number(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line}"))
}

#[test]
fn loadgen_counts_an_error_status_as_a_failed_request_and_not_as_load() {
    let s = server(Settings::default());
    let (out, cap) = Output::capture();
    // /bytes/x: the coordinator answers 400 Bad Request to every request.
    let code = loadgen::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url("/bytes/x"),
            "--cacert",
            ca(&s),
            "--conns",
            "2",
            "--requests",
            "20",
        ]),
        &out,
    );
    assert_eq!(code, 1, "{}", cap.stderr());
    let line = cap.stdout();
    assert_eq!(number(&line, "requests"), 20.0, "{line}");
    assert_eq!(number(&line, "errors"), 20.0, "{line}");
    // Failed requests are no throughput, and have no latency to report.
    assert_eq!(number(&line, "req_per_s"), 0.0, "{line}");
    assert_eq!(number(&line, "p99_us"), 0.0, "{line}");
    let err = cap.stderr();
    assert!(
        err.contains("20 of 20 requests failed") && err.contains("400"),
        "{err}"
    );
}

#[test]
fn loadgen_reports_latency_percentiles_of_the_successful_requests() {
    let s = server(Settings::default());
    let (out, cap) = Output::capture();
    let started = Instant::now();
    let code = loadgen::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url("/bytes/5"),
            "--cacert",
            ca(&s),
            "--conns",
            "2",
            "--requests",
            "100",
        ]),
        &out,
    );
    let wall_us = started.elapsed().as_micros() as f64;
    assert_eq!(code, 0, "{}", cap.stderr());
    let line = cap.stdout();
    let (p50, p99) = (number(&line, "p50_us"), number(&line, "p99_us"));
    // Every request took some time, none longer than the whole run.
    assert!(p50 >= 1.0 && p50 <= p99 && p99 <= wall_us, "{line}");
    let rate = number(&line, "req_per_s");
    let expected = 100.0 / number(&line, "wall_s");
    assert!((rate - expected).abs() <= expected * 0.01 + 0.1, "{line}");
}

#[test]
fn loadgen_refuses_a_url_it_cannot_send_to_as_a_usage_error() {
    for url in [
        "not a url",
        "example.com/bytes/5",
        "ftp://127.0.0.1/x",
        "/bytes/5",
    ] {
        let (out, cap) = Output::capture();
        let code = loadgen::main_with_args(args(&["--url", url, "--requests", "1000"]), &out);
        assert_eq!(code, 2, "{url}: {}", cap.stderr());
        let err = cap.stderr();
        assert_eq!(err.lines().count(), 1, "{url}: {err}");
        assert!(
            err.contains("--url") && !err.contains("failed"),
            "{url}: {err}"
        );
        assert!(cap.stdout().is_empty(), "{url}: no load was run");
    }
}

/// The runner's line for job `id` that starts with `what`.
fn job_line<'a>(text: &'a str, id: u64, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(&format!("job {id}: {what}")))
        .unwrap_or_else(|| panic!("no \"job {id}: {what}\" line:\n{text}"))
}

#[test]
fn runner_does_the_whole_job_loop_and_the_server_sees_every_artifact_byte() {
    let s = server(Settings {
        hold: Duration::from_millis(200),
        job_every: Duration::from_millis(20),
        trace_update_interval: Duration::from_millis(10),
        ..Settings::default()
    });
    let dir = TempDir::new("runner-builds").expect("temp dir");
    let ca_file = runner_ca(&s);
    let (out, cap) = Output::capture();
    let code = runner::main_with_args(
        args(&[
            "--url",
            &format!("{}?x=1", s.coordinator.url("/")),
            "--token",
            "t0ken",
            "--ca-file",
            ca_file.to_str().expect("utf-8"),
            "--builds-dir",
            dir.path().to_str().expect("utf-8"),
            "--artifact-size",
            "300000",
            "--check-interval",
            "20ms",
            "--max-jobs",
            "3",
            "--duration",
            "30s",
        ]),
        &out,
    );
    let text = cap.stdout();
    assert_eq!(code, 0, "{text}\n{}", cap.stderr());
    assert!(
        text.contains("stopped after 3 jobs: 3 succeeded, 0 failed"),
        "{text}"
    );
    let reports = s.coordinator.take_job_reports();
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        assert_eq!(r.state, "success", "{r:?}");
        // The runner's line for the job names the SHA-256 of the archive
        // it made; the server's comes from the bytes received.
        let art = r.artifact.as_ref().expect("an artifact per job");
        let line = job_line(&text, r.id, "artifact ");
        assert!(
            line.contains(&format!("{} bytes sha256 {}", art.size, art.sha256)),
            "{line}\n{r:?}"
        );
        // The job's script wrote 300000 random bytes: stored, not deflated.
        assert!(art.size > 300_000 && art.size < 301_000, "{r:?}");
        assert_eq!(r.uploads[0].expire_in.as_deref(), Some("1 day"), "{r:?}");
        // Increments: the trace went up in more than one PATCH, none refused.
        assert!(r.trace_patches >= 2, "{r:?}");
        assert_eq!(r.trace_refused, 0, "{r:?}");
        assert!(
            job_line(&text, r.id, "success").contains(&format!("trace {} bytes", r.trace_bytes)),
            "{text}"
        );
        // Sent from the job's trace.log, which holds what the server got.
        let log = std::fs::read(dir.path().join(format!("job-{}/trace.log", r.id)))
            .expect("the job's trace.log");
        assert_eq!(sha256_hex(&log), r.trace_sha256, "{r:?}");
        // Each demo job depends on the one before it, and fetched its
        // archive from object storage, byte for byte.
        if r.id > 1 {
            assert_eq!(r.downloads, [r.id - 1], "{r:?}");
            let dep = reports
                .iter()
                .find(|d| d.id == r.id - 1)
                .and_then(|d| d.artifact.as_ref())
                .expect("the dependency's archive");
            assert!(
                job_line(&text, r.id, "dependency artifacts")
                    .contains(&format!("{} bytes sha256 {}", dep.size, dep.sha256)),
                "{text}"
            );
        }
    }
    let c = s.coordinator.counters();
    // The redirect to object storage went without JOB-TOKEN.
    assert_eq!(c.storage_requests, 2, "{c:?}");
    assert_eq!(c.storage_credentials_refused, 0, "{c:?}");
    // Each job kept its CA file: the bundle of the coordinator's chain.
    let bundle = format!("{}{}", s.mid.pem(), s.root.pem());
    let mut seen = 0;
    for e in std::fs::read_dir(dir.path()).expect("builds dir") {
        let job_dir = e.expect("entry").path();
        let pem = std::fs::read_to_string(job_dir.join("ca.pem")).expect("CA file");
        assert_eq!(pem, bundle, "{}", job_dir.display());
        // The packed archives are gone once uploaded.
        assert!(!job_dir.join("tmp").exists());
        seen += 1;
    }
    assert_eq!(seen, 3);
    assert!(text.contains("root CN=examples test CA"), "{text}");
}

#[test]
fn coordinator_refuses_a_trace_gap_with_416_and_storage_refuses_a_job_token() {
    let s = server(Settings {
        hold: Duration::from_millis(50),
        job_every: Duration::from_millis(1),
        demo_jobs: false,
        repository: false,
        ..Settings::default()
    });
    let mut config = rotary::Config::default();
    config.trust = rotary::Trust::pem_file(runner_ca(&s));
    let mut engine = rotary::Engine::new(config).expect("engine");
    let opts = rotary::RequestOptions::default().deadline(Duration::from_secs(10));
    let mut send = |req: http::Request<bytes::Bytes>| engine.execute(req, opts).expect("answer");
    let poll = || {
        http::Request::post(s.coordinator.url("/api/v4/jobs/request"))
            .body(bytes::Bytes::from_static(br#"{"token":"r"}"#))
            .expect("request")
    };
    let first = s.coordinator.enqueue(JobSpec::script(&["true"]));
    let job = send(poll());
    assert_eq!(job.status(), 201);
    let job = rotary_examples::runner::job::Job::parse(job.body()).expect("a job");
    assert_eq!(job.id, first);
    let (id, token) = (job.id, job.token);
    let patch = |range: &str, data: &'static [u8]| {
        http::Request::patch(s.coordinator.url(&format!("/api/v4/jobs/{id}/trace")))
            .header("job-token", token.as_str())
            .header("content-range", range)
            .body(bytes::Bytes::from_static(data))
            .expect("request")
    };
    let ok = send(patch("0-4", b"hello"));
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.headers()["range"], "0-5");
    assert_eq!(ok.headers()["job-status"], "running");
    assert_eq!(ok.headers()["x-gitlab-trace-update-interval"], "3");
    // A gap (or a repeat) is refused with the range the server holds.
    let gap = send(patch("7-9", b"abc"));
    assert_eq!(gap.status(), 416);
    assert_eq!(gap.headers()["range"], "0-5");
    assert_eq!(send(patch("0-4", b"hello")).status(), 416);
    // A range that does not match the body is a bad request.
    assert_eq!(send(patch("5-9", b"abc")).status(), 400);
    // An archive, then the job's end: a later job that depends on it gets
    // a token of its own for the download.
    let archive = b"PK fake archive bytes".to_vec();
    let mut form =
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n\r\n"
            .to_vec();
    form.extend_from_slice(&archive);
    form.extend_from_slice(b"\r\n--B--\r\n");
    let up = send(
        http::Request::post(s.coordinator.url(&format!(
            "/api/v4/jobs/{id}/artifacts?artifact_format=zip&artifact_type=archive"
        )))
        .header("job-token", token.as_str())
        .header("content-type", "multipart/form-data; boundary=B")
        .body(bytes::Bytes::from(form))
        .expect("request"),
    );
    assert_eq!(up.status(), 201);
    let done = send(
        http::Request::put(s.coordinator.url(&format!("/api/v4/jobs/{id}")))
            .body(bytes::Bytes::from(format!(
                r#"{{"token":"{token}","state":"success"}}"#
            )))
            .expect("request"),
    );
    assert_eq!(done.status(), 200);
    let mut spec = JobSpec::script(&["true"]);
    spec.dependencies = vec![id];
    s.coordinator.enqueue(spec);
    let next = rotary_examples::runner::job::Job::parse(send(poll()).body()).expect("a job");
    let dep = &next.dependencies[0];
    assert_eq!(dep.id, id);
    assert_ne!(dep.token, next.token, "a download token of its own");
    assert_eq!(
        dep.artifacts_file.as_ref().map(|f| f.size),
        Some(archive.len() as u64)
    );
    let get = |t: &str| {
        http::Request::get(s.coordinator.url(&format!("/api/v4/jobs/{id}/artifacts")))
            .header("job-token", t)
            .body(bytes::Bytes::new())
            .expect("request")
    };
    // The job's own token is not the dependency's.
    assert_eq!(send(get(&next.token)).status(), 403);
    // The artifact download redirects to object storage, which refuses a
    // request that still carries the job token.
    let found = send(get(&dep.token));
    assert_eq!(found.status(), 302);
    let location = found.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.starts_with(&format!("https://{}/", s.coordinator.storage_addr())));
    let leaked = send(
        http::Request::get(location.as_str())
            .header("job-token", dep.token.as_str())
            .body(bytes::Bytes::new())
            .expect("request"),
    );
    assert_eq!(leaked.status(), 400);
    let clean = send(
        http::Request::get(location.as_str())
            .body(bytes::Bytes::new())
            .expect("r"),
    );
    assert_eq!(clean.status(), 200);
    assert_eq!(clean.body().as_ref(), archive.as_slice());
    assert_eq!(s.coordinator.counters().storage_credentials_refused, 1);
    engine.shutdown();
}

#[test]
fn rotation_serve_writes_the_runners_ca_file_where_ca_out_says() {
    let dir = TempDir::new("serve-ca-out").expect("temp dir");
    let file = dir.path().join("CA.pem");
    let (out, cap) = Output::capture();
    let code = rotation::main_with_args(
        args(&[
            "--serve",
            "127.0.0.1:0",
            "--duration",
            "200ms",
            "--ca-out",
            file.to_str().expect("utf-8"),
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}\n{}", cap.stdout(), cap.stderr());
    let pem = std::fs::read_to_string(&file).expect("--ca-out file");
    // Roots A and B, and object storage's.
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3, "{pem}");
    let text = cap.stdout();
    assert!(
        text.contains(&format!("--ca-file {}", file.display())),
        "{text}"
    );
    // The line it prints names that file.
    let own = text
        .lines()
        .find_map(|l| l.split("object storage's): ").nth(1))
        .expect("the CA file line");
    assert_eq!(own, file.display().to_string());
    let (out, cap) = Output::capture();
    assert_eq!(rotation::main_with_args(args(&["--ca-out", "x"]), &out), 2);
    assert!(cap.stderr().contains("--ca-out goes with --serve"));
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn runner_stops_at_once_with_code_3_when_the_ca_file_cannot_verify_the_server() {
    let s = server(Settings::default());
    let other = Ca::new("some other CA").expect("CA");
    let dir = TempDir::new("runner-wrong-ca").expect("temp dir");
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, other.pem()).expect("write");
    let (out, cap) = Output::capture();
    let started = Instant::now();
    let code = runner::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url(""),
            "--token",
            "t",
            "--ca-file",
            wrong.to_str().expect("utf-8"),
            "--duration",
            "20s",
        ]),
        &out,
    );
    assert_eq!(code, 3, "{}\n{}", cap.stdout(), cap.stderr());
    let err = cap.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot be verified with --ca-file"), "{err}");
    // It did not retry until --duration.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn runner_refuses_an_unsupported_scheme_with_one_line_and_code_2() {
    let (out, cap) = Output::capture();
    let code = runner::main_with_args(args(&["--url", "ftp://127.0.0.1:9/", "--token", "t"]), &out);
    assert_eq!(code, 2, "{}", cap.stderr());
    assert_eq!(cap.stderr().lines().count(), 1);
    assert!(
        cap.stderr().contains("unsupported scheme \"ftp\""),
        "{}",
        cap.stderr()
    );
}

#[test]
fn runner_on_a_stop_signal_fails_the_current_job_and_removes_its_temp_dir() {
    let s = server(Settings {
        hold: Duration::from_millis(100),
        job_every: Duration::from_millis(20),
        trace_update_interval: Duration::from_millis(10),
        ..Settings::default()
    });
    let ca_file = runner_ca(&s);
    let (out, cap) = Output::capture();
    let stop = Arc::new(AtomicUsize::new(0));
    let flag = stop.clone();
    let url = s.coordinator.url("");
    let ca = ca_file.to_str().expect("utf-8").to_owned();
    let runner = std::thread::spawn(move || {
        runner::run_with_stop(
            args(&[
                "--url",
                &url,
                "--token",
                "t",
                "--ca-file",
                &ca,
                "--artifact-size",
                "1000",
                "--duration",
                "30s",
            ]),
            &out,
            flag,
        )
    });
    // Act as SIGTERM once the first job is under way.
    let until = Instant::now() + Duration::from_secs(20);
    while !cap.stdout().contains("dependency artifacts") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(15, Ordering::SeqCst);
    let code = runner.join().expect("runner thread");
    let text = cap.stdout();
    assert_eq!(code, 128 + 15, "{text}\n{}", cap.stderr());
    assert!(text.contains("stopped by SIGTERM"), "{text}");
    let temp = text
        .lines()
        .find_map(|l| l.split("job files go to ").nth(1))
        .expect("the builds dir is logged");
    assert!(!std::path::Path::new(temp).exists(), "{temp} left behind");
    // Every job it took ended reported: the interrupted one as failed.
    let reports = s.coordinator.take_job_reports();
    assert!(!reports.is_empty(), "{text}");
    let handed = s.coordinator.counters().jobs;
    assert_eq!(reports.len() as u64, handed, "{reports:?}\n{text}");
    if let Some(last) = reports.last() {
        if last.state == "failed" {
            assert_eq!(
                last.failure_reason.as_deref(),
                Some("runner_system_failure")
            );
            assert!(text.contains("interrupted by SIGTERM"), "{text}");
        }
    }
}

#[test]
fn runner_requires_url_and_token() {
    let (out, cap) = Output::capture();
    assert_eq!(runner::main_with_args(args(&["--token", "x"]), &out), 2);
    assert!(cap.stderr().starts_with("runner: --url is required"));
    let (out, cap) = Output::capture();
    let code = runner::main_with_args(
        args(&[
            "--url",
            "https://127.0.0.1:9",
            "--token",
            "x",
            "--ca-file",
            "/nope.pem",
        ]),
        &out,
    );
    assert_eq!(code, 3, "{}", cap.stderr());
}

#[test]
fn fetch_dumps_the_ca_bundle_apart_from_the_presented_chain_and_shows_the_path() {
    let s = server(Settings::default());
    let dir = TempDir::new("fetch-ca").expect("temp dir");
    let (chain, bundle) = (dir.path().join("chain.pem"), dir.path().join("ca.pem"));
    let (out, cap) = Output::capture();
    let code = fetch::main_with_args(
        args(&[
            "-v",
            "--cacert",
            ca(&s),
            "--dump-chain",
            chain.to_str().expect("utf-8"),
            "--dump-ca",
            bundle.to_str().expect("utf-8"),
            &s.coordinator.url("/"),
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
    let chain = std::fs::read_to_string(&chain).expect("chain dumped");
    let bundle = std::fs::read_to_string(&bundle).expect("bundle dumped");
    assert!(chain.ends_with(s.mid.pem()), "leaf + intermediate: {chain}");
    assert!(
        !chain.contains(s.root.pem()),
        "the server never sends the root"
    );
    assert_eq!(bundle, format!("{}{}", s.mid.pem(), s.root.pem()));
    let err = cap.stderr();
    assert!(err.contains("verified path:"), "{err}");
    assert!(
        err.contains("leaf CN=localhost, issued by CN=examples test intermediate"),
        "{err}"
    );
    assert!(
        err.contains("anchor CN=examples test CA, issued by CN=examples test CA, SHA-256 "),
        "{err}"
    );
    // The bundle alone lets a second fetch verify the server.
    let (out, cap) = Output::capture();
    let code = fetch::main_with_args(
        args(&[
            "--cacert",
            dir.path().join("ca.pem").to_str().expect("utf-8"),
            &s.coordinator.url("/"),
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}", cap.stderr());
}

#[test]
fn fetch_help_says_what_each_dump_holds() {
    let (out, cap) = Output::capture();
    assert_eq!(fetch::main_with_args(args(&["--help"]), &out), 0);
    let help = cap.stdout();
    assert!(
        help.contains("--dump-chain FILE      write the chain the server presented"),
        "{help}"
    );
    assert!(help.contains("--dump-ca FILE"), "{help}");
}

#[test]
fn rotation_demo_heals_when_the_edges_send_the_leaf_alone() {
    let text = short_demo(&["--send-leaf-only"]);
    assert!(text.contains("The edges send their leaf alone"), "{text}");
    assert!(text.contains("verdict: rotary healed"), "{text}");
    // Before the rotation both runners' jobs clone from the second edge,
    // whose leaf they never saw: their CA files hold intermediate + root.
    for runner in ["pinned", "rotary"] {
        let ok = table_row(&text, runner).split_whitespace().nth(1);
        assert_ne!(ok, Some("0"), "{runner}: no job cloned\n{text}");
    }
}

/// fetch with `a` (after a 10 s `--max-time`, so nothing hangs) and `stdin`:
/// its exit code, stdout and stderr.
fn fetch_with(a: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut all = args(&["--max-time", "10s"]);
    all.extend(args(a));
    let (out, cap) = Output::capture();
    let code = fetch::main_with_stdin(all, &out, &mut &stdin[..]);
    (code, cap.stdout(), cap.stderr())
}

fn fetch_run(a: &[&str]) -> (i32, String, String) {
    fetch_with(a, b"")
}

/// A run that failed with `code`, nothing on stdout and one line on stderr,
/// `fetch: ...`, that says `says`.
fn assert_fails((got, out, err): (i32, String, String), code: i32, says: &str) {
    assert_eq!(got, code, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fetch: ") && err.contains(says), "{err}");
}

/// A peer answering everything `200 OK` with `body`.
fn ok_peer(body: &'static str) -> Peer {
    Peer::plain(move |_| response("200 OK", &[("X-Served", "yes")], body))
}

#[test]
fn fetch_location_follows_a_redirect_to_another_origin_without_its_authorization() {
    let b = ok_peer("from b");
    let target = b.url("/landed");
    let a = Peer::plain(move |_| response("302 Found", &[("Location", &target)], ""));
    let (code, out, err) = fetch_run(&[
        "-L",
        "-v",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "X-Kept: 1",
        &a.url("/start"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from b");
    let (first, second) = (&a.seen()[0], &b.seen()[0]);
    assert_eq!(first.header("authorization"), Some("Bearer secret"));
    assert_eq!(second.request_line(), "GET /landed HTTP/1.1");
    assert_eq!(second.header("authorization"), None, "{}", second.head);
    assert_eq!(second.header("x-kept"), Some("1"));
    // The hop shows under -v, as a `* ` line naming where it led.
    let landed = b.url("/landed");
    assert!(
        err.lines()
            .any(|l| l.starts_with("* ") && l.contains(&landed)),
        "{err}"
    );
}

#[test]
fn fetch_without_location_prints_the_redirect_as_is() {
    let b = ok_peer("from b");
    let target = b.url("/landed");
    let a = Peer::plain(move |_| response("302 Found", &[("Location", &target)], "moved"));
    let (code, out, err) = fetch_run(&["-i", &a.url("/start")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 302 Found\n"), "{out}");
    assert!(
        out.contains(&format!("location: {}", b.url("/landed"))),
        "{out}"
    );
    assert!(out.ends_with("\nmoved"), "{out}");
    assert!(b.seen().is_empty());
}

#[test]
fn fetch_max_redirs_exceeded_exits_47_naming_the_limit() {
    let hops = Arc::new(AtomicUsize::new(0));
    let counter = hops.clone();
    let a = Peer::plain(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        response("302 Found", &[("Location", &format!("/hop/{n}"))], "")
    });
    assert_fails(
        fetch_run(&["-L", "--max-redirs", "2", &a.url("/")]),
        47,
        "more than 2 redirects",
    );
    // The first request and two followed hops; the third hop is refused.
    assert_eq!(a.seen().len(), 3);
}

#[test]
fn fetch_bad_location_exits_47_as_a_redirect_error_not_2() {
    for location in ["http://127.0.0.1:99999/x", "ftp://files.test/x"] {
        let a = Peer::plain(move |_| response("302 Found", &[("Location", location)], ""));
        let (code, out, err) = fetch_run(&["-L", &a.url("/")]);
        assert_fails((code, out, err.clone()), 47, "bad Location");
        assert!(!err.contains("see --help"), "not the caller's fault: {err}");
    }
}

#[test]
fn fetch_prints_a_body_larger_than_16_mib_to_stdout_streamed() {
    let len = 20 * 1024 * 1024 + 7;
    let mut body = "b".repeat(len - 3);
    body.push_str("end");
    let body = Arc::new(body);
    let served = body.clone();
    let peer = Peer::plain(move |_| response("200 OK", &[], &served));
    let (code, out, err) = fetch_run(&[&peer.url("/big")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), len);
    assert!(out == *body, "the body arrived whole and in order");
    // -i puts the head before it, on stdout too.
    let (code, out, err) = fetch_run(&["-i", &peer.url("/big")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 200 OK\n"), "{}", &out[..64]);
    assert!(out.ends_with("bbbend"));
}

#[test]
fn fetch_resolve_reaches_a_local_server_by_a_fake_name() {
    let peer = ok_peer("pinned");
    let port = peer.port().to_string();
    let url = format!("http://fetch.test:{port}/x");
    let pin = format!("fetch.test:{port}:127.0.0.1");
    let (code, out, err) = fetch_run(&["--resolve", &pin, &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "pinned");
    let host = format!("fetch.test:{port}");
    assert_eq!(peer.seen()[0].header("host"), Some(host.as_str()));
}

#[test]
fn fetch_resolve_races_its_addresses_and_tls_checks_the_pinned_name() {
    let s = server_named(&["fetch.test"], Settings::default());
    let port = s.coordinator.addr().port();
    // 127.0.0.2 has no listener on that port: its attempt fails, the next wins.
    let pin = format!("fetch.test:{port}:127.0.0.2,127.0.0.1");
    let (code, out, err) = fetch_run(&[
        "-v",
        "--cacert",
        ca(&s),
        "--resolve",
        &pin,
        &format!("https://fetch.test:{port}/hello"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GET /hello"), "{out}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("* ") && l.contains("127.0.0.2")),
        "the failed attempt shows: {err}"
    );
    assert!(
        err.contains(&format!("opened to 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn fetch_user_and_url_userinfo_become_basic_auth_and_never_reach_the_target() {
    let peer = ok_peer("");
    let (code, _, err) = fetch_run(&["-u", "alice:s3cret", &peer.url("/a")]);
    assert_eq!(code, 0, "{err}");
    let url = peer.url("/b").replace("://", "://bob:p%40ss@");
    let (code, _, err) = fetch_run(&[&url]);
    assert_eq!(code, 0, "{err}");
    let seen = peer.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some("Basic YWxpY2U6czNjcmV0")
    );
    // bob:p@ss, decoded from the URL.
    assert_eq!(seen[1].header("authorization"), Some("Basic Ym9iOnBAc3M="));
    assert_eq!(seen[1].request_line(), "GET /b HTTP/1.1");
    let host = format!("127.0.0.1:{}", peer.port());
    assert_eq!(seen[1].header("host"), Some(host.as_str()));
    assert!(!seen[1].head.contains("bob"), "{}", seen[1].head);
    // A user without a password would need a prompt: refused, as a usage error.
    assert_fails(fetch_run(&["-u", "alice", &peer.url("/c")]), 2, "USER:PASS");
}

#[test]
fn fetch_fail_exits_22_without_the_body_and_silent_hides_the_message_unless_show_error() {
    let peer = Peer::plain(|_| response("404 Not Found", &[], "not here"));
    assert_fails(
        fetch_run(&["-f", &peer.url("/missing")]),
        22,
        "404 Not Found",
    );
    let (code, out, err) = fetch_run(&["-fs", &peer.url("/missing")]);
    assert_eq!((code, out.as_str(), err.as_str()), (22, "", ""));
    let (code, _, err) = fetch_run(&["-fsS", &peer.url("/missing")]);
    assert_eq!(code, 22);
    assert!(err.contains("404 Not Found"), "{err}");
    // Without -f the status is an answer like any other.
    let (code, out, _) = fetch_run(&[&peer.url("/missing")]);
    assert_eq!((code, out.as_str()), (0, "not here"));
}

#[test]
fn fetch_head_sends_head_and_prints_the_response_head() {
    let peer =
        Peer::plain(|_| "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Y: z\r\n\r\n".to_owned());
    let (code, out, err) = fetch_run(&["-I", &peer.url("/doc")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(peer.seen()[0].request_line(), "HEAD /doc HTTP/1.1");
    assert_eq!(out, "HTTP/1.1 200 OK\ncontent-length: 10\nx-y: z\n\n");
}

#[test]
fn fetch_data_at_dash_posts_stdin_as_a_form() {
    let peer = ok_peer("");
    let (code, _, err) = fetch_with(&["-d", "@-", &peer.url("/up")], b"piped=body");
    assert_eq!(code, 0, "{err}");
    let seen = &peer.seen()[0];
    assert_eq!(seen.request_line(), "POST /up HTTP/1.1");
    assert_eq!(seen.body, b"piped=body");
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    // -H names its own type, and bundled `-d@-` reads stdin too.
    let (code, _, err) = fetch_with(
        &["-H", "Content-Type: text/plain", "-d@-", &peer.url("/up")],
        b"raw",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(peer.seen()[1].header("content-type"), Some("text/plain"));
    assert_eq!(peer.seen()[1].body, b"raw");
}

#[test]
fn fetch_data_at_file_streams_the_file_with_its_length() {
    let peer = ok_peer("");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("form.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&path, &data).expect("write");
    let at = format!("@{}", path.display());
    let (code, _, err) = fetch_run(&["--data-binary", &at, &peer.url("/up")]);
    assert_eq!(code, 0, "{err}");
    let seen = &peer.seen()[0];
    assert_eq!(seen.request_line(), "POST /up HTTP/1.1");
    assert_eq!(seen.header("content-length"), Some("300000"));
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(seen.body == data, "the file arrived damaged");
    // With another -d the pieces are joined with '&', as curl does.
    let (code, _, err) = fetch_run(&["-d", "a=1", "-d", &at, &peer.url("/up")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(peer.seen()[1].body.len(), 4 + data.len());
    // A file that is not there fails as curl's read error does.
    let missing = format!("@{}", dir.path().join("none").display());
    let (code, _, _) = fetch_run(&["-d", &missing, &peer.url("/up")]);
    assert_eq!(code, 26);
}

#[test]
fn fetch_verbose_shows_the_request_and_response_heads_as_curl_does() {
    let peer = ok_peer("body");
    let (code, out, err) = fetch_run(&["-v", "-H", "X-One: 1", &peer.url("/v?q=1")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "body", "heads go to stderr");
    let lines: Vec<&str> = err.lines().collect();
    let request = [
        "> GET /v?q=1 HTTP/1.1".to_owned(),
        format!("> host: 127.0.0.1:{}", peer.port()),
        "> x-one: 1".to_owned(),
        ">".to_owned(),
    ];
    let at = lines
        .iter()
        .position(|l| *l == request[0])
        .unwrap_or_else(|| panic!("no request line: {err}"));
    assert_eq!(lines[at..at + 4], request, "{err}");
    let response = [
        "< HTTP/1.1 200 OK",
        "< x-served: yes",
        "< content-length: 4",
        "<",
    ];
    let at = lines
        .iter()
        .position(|l| *l == response[0])
        .unwrap_or_else(|| panic!("no status line: {err}"));
    assert_eq!(lines[at..at + 4], response, "{err}");
    // What the peer received is what the `> ` lines said.
    let seen = &peer.seen()[0];
    assert_eq!(seen.request_line(), "GET /v?q=1 HTTP/1.1");
    assert_eq!(seen.header("x-one"), Some("1"));
}

/// A client CA and a client certificate from it, as PEM files in `dir`:
/// (the CA's DER, the certificate file, the key file, one file with both).
fn client_identity(dir: &std::path::Path) -> (Vec<u8>, PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("client CA");
    let mut params = CertificateParams::new(vec!["runner-7".to_owned()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .expect("client certificate");
    let (cert_file, key_file, both) = (
        dir.join("client.pem"),
        dir.join("client.key"),
        dir.join("client-both.pem"),
    );
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    std::fs::write(&both, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write");
    (ca.der().to_vec(), cert_file, key_file, both)
}

#[test]
fn fetch_cert_and_key_present_a_client_certificate_the_server_requires() {
    let dir = TempDir::new("fetch-mtls").expect("temp dir");
    let (client_ca, cert_file, key_file, both) = client_identity(dir.path());
    let server_ca = Ca::new("mtls server CA").expect("CA");
    let server_cert = server_ca.issue(&["127.0.0.1"]).expect("leaf");
    let ca_file = dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, server_ca.pem()).expect("write");
    let provider = Arc::new(rotary::crypto_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.into()).expect("client CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_cert.chain.clone(), server_cert.key())
        .expect("server config");
    let peer = Peer::tls(Arc::new(config), |_| {
        response("200 OK", &[], "hello, runner")
    });
    let path = |p: &PathBuf| p.to_str().expect("utf-8").to_owned();
    let (ca, cert, key, both) = (
        path(&ca_file),
        path(&cert_file),
        path(&key_file),
        path(&both),
    );
    let (code, out, err) = fetch_run(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        &peer.url("/"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello, runner");
    assert!(peer.seen()[0].client_cert);
    // As in curl, --cert alone may hold the key too.
    let (code, _, err) = fetch_run(&["--cacert", &ca, "-E", &both, &peer.url("/")]);
    assert_eq!(code, 0, "{err}");
    // Without a certificate the server refuses the connection.
    let (code, _, err) = fetch_run(&["--cacert", &ca, &peer.url("/")]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(
        peer.seen().len(),
        2,
        "no request got through without a certificate"
    );
    // An unreadable key is the local-file exit code, naming the file.
    let bad_key = [
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        "/nonexistent.key",
        &peer.url("/"),
    ];
    assert_fails(fetch_run(&bad_key), 3, "/nonexistent.key");
}

#[test]
fn fetch_help_lists_every_flag_and_where_fetch_differs_from_curl() {
    let (code, help, _) = fetch_run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "-X, --request",
        "-H, --header",
        "-d, --data",
        "--data-binary",
        "-u, --user",
        "-I, --head",
        "-L, --location",
        "--max-redirs",
        "--resolve",
        "-m, --max-time",
        "--timeout",
        "--cacert",
        "-E, --cert",
        "--key",
        "-i, --include",
        "-f, --fail",
        "-s, --silent",
        "-S, --show-error",
        "-v, --verbose",
        "--dump-chain",
        "--dump-ca",
        "--max-age",
        "--repeat",
        "--interval",
        "-h, --help",
    ] {
        assert!(
            help.contains(&format!("  {flag} ")),
            "{flag} missing:\n{help}"
        );
    }
    assert!(help.contains("where fetch differs from curl:"), "{help}");
    assert!(help.contains("the host's trust store"), "{help}");
    for code in ["22 ", "47 "] {
        assert!(
            help.contains(&format!("\n  {code}")),
            "exit code {code}:\n{help}"
        );
    }
}

/// A one-purpose CONNECT proxy on 127.0.0.1: answers each CONNECT with 200
/// and relays both ways; returns its address and the heads it read.
fn tunnel_proxy() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match client.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().expect("heads").push(text);
                let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                let (mut up_r, mut up_w) = (upstream.try_clone().expect("clone"), upstream);
                let mut client_r = client.try_clone().expect("clone");
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_r, &mut up_w);
                    let _ = up_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut up_r, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    (addr, heads)
}

#[test]
fn fetch_x_tunnels_https_with_proxy_user_and_v_shows_the_tunnel() {
    let s = server(Settings::default());
    let (proxy, heads) = tunnel_proxy();
    let (code, out, err) = fetch_run(&[
        "-v",
        "-x",
        &format!("{proxy}"),
        "--proxy-user",
        "ops:pw",
        "--cacert",
        ca(&s),
        &s.coordinator.url("/hello"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rotary demo coordinator: GET /hello"), "{out}");
    let origin = s.coordinator.url("");
    let origin = origin.trim_end_matches('/');
    assert!(
        err.contains(&format!("proxy http://{proxy}: CONNECT tunnel to {origin}")),
        "{err}"
    );
    assert!(err.contains("tunnel up (200 OK)"), "{err}");
    assert!(
        err.contains(&format!("opened to {proxy}: full handshake")),
        "{err}"
    );
    assert!(err.contains("(tunnel through proxy"), "{err}");
    assert!(
        !err.contains("ops:pw") && !err.contains("b3BzOnB3"),
        "{err}"
    );
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("CONNECT 127.0.0.1:"), "{}", heads[0]);
    // base64("ops:pw")
    assert!(
        heads[0].contains("proxy-authorization: Basic b3BzOnB3\r\n"),
        "{}",
        heads[0]
    );
}

/// An https:// proxy on 127.0.0.1: TLS with `cert` terminated, the
/// plaintext relayed to the plain proxy at `backend` both ways (one thread
/// decrypts, one encrypts; the session is shared under a lock never held
/// across a blocking read). Returns its address.
fn tls_front(
    cert: &rotary_examples::pki::ServerCert,
    backend: std::net::SocketAddr,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let key = cert.certified_key().expect("certified key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { return };
            let config = config.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let session =
                    rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                let session = Arc::new(std::sync::Mutex::new(session));
                let back = std::net::TcpStream::connect(backend)?;
                let (mut tcp_r, mut tcp_w) = (tcp.try_clone()?, tcp);
                let (mut back_r, mut back_w) = (back.try_clone()?, back);
                let (s, mut tcp_w2) = (session.clone(), tcp_w.try_clone()?);
                let inbound = std::thread::spawn(move || -> std::io::Result<()> {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = tcp_r.read(&mut buf)?;
                        if n == 0 {
                            let _ = back_w.shutdown(std::net::Shutdown::Write);
                            return Ok(());
                        }
                        let mut plain = Vec::new();
                        {
                            let mut s = s.lock().expect("session");
                            let mut input = &buf[..n];
                            while !input.is_empty() {
                                s.read_tls(&mut input)?;
                                let state = s.process_new_packets().map_err(std::io::Error::other);
                                while s.wants_write() {
                                    s.write_tls(&mut tcp_w2)?;
                                }
                                let _ = state?;
                                let _ = s.reader().read_to_end(&mut plain);
                            }
                        }
                        back_w.write_all(&plain)?;
                    }
                });
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = back_r.read(&mut buf).unwrap_or(0);
                    let mut s = session.lock().expect("session");
                    if n == 0 {
                        s.send_close_notify();
                    } else {
                        s.writer().write_all(&buf[..n])?;
                    }
                    while s.wants_write() {
                        s.write_tls(&mut tcp_w)?;
                    }
                    if n == 0 {
                        break;
                    }
                }
                let _ = tcp_w.shutdown(std::net::Shutdown::Both);
                let _ = inbound.join();
                Ok(())
            });
        }
    });
    addr
}

#[test]
fn fetch_x_https_proxy_with_proxy_cacert_and_v_shows_both_handshakes() {
    let s = server(Settings::default());
    let (plain, heads) = tunnel_proxy();
    let proxy_ca = Ca::new("examples proxy CA").expect("proxy CA");
    let proxy_cert = proxy_ca.issue(&["127.0.0.1"]).expect("proxy leaf");
    let front = tls_front(&proxy_cert, plain);
    let dir = TempDir::new("examples-proxy-ca").expect("temp dir");
    let proxy_ca_file = dir.path().join("proxy-ca.pem");
    std::fs::write(&proxy_ca_file, proxy_ca.pem()).expect("write proxy CA");
    let proxy_url = format!("https://{front}");
    let (code, out, err) = fetch_run(&[
        "-v",
        "-x",
        &proxy_url,
        "--proxy-cacert",
        proxy_ca_file.to_str().expect("utf-8"),
        "--cacert",
        ca(&s),
        &s.coordinator.url("/hello"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rotary demo coordinator: GET /hello"), "{out}");
    assert!(
        err.contains(&format!(
            "proxy {proxy_url}: TLS to the proxy, then a CONNECT tunnel"
        )),
        "{err}"
    );
    assert!(err.contains("tls with proxy"), "{err}");
    assert!(err.contains("tunnel up (200 OK)"), "{err}");
    assert!(
        err.contains(&format!("  proxy tls: full handshake with {proxy_url}")),
        "{err}"
    );
    assert!(
        err.contains("  proxy chain: 1 certificates presented"),
        "{err}"
    );
    assert!(err.contains("examples proxy CA"), "the proxy's path: {err}");
    // The origin's chain is its own: leaf and intermediate, not the proxy's.
    assert!(err.contains("  chain: 2 certificates presented"), "{err}");
    assert_eq!(heads.lock().expect("heads").len(), 1);

    // Without --proxy-cacert the origin's CA file does not vouch for the
    // proxy: exit 56, a proxy TLS failure.
    let (code, _, err) = fetch_run(&[
        "-x",
        &proxy_url,
        "--cacert",
        ca(&s),
        &s.coordinator.url("/hello"),
    ]);
    assert_eq!(code, 56, "{err}");
    assert!(err.contains("tls with the proxy failed"), "{err}");
}

#[test]
fn fetch_x_sends_plain_http_in_absolute_form_and_noproxy_goes_direct() {
    let proxy = ok_peer("from the proxy");
    let (code, out, err) = fetch_run(&[
        "-x",
        &format!("http://u%40corp:p@127.0.0.1:{}", proxy.port()),
        "http://origin.invalid:8080/x?y=1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from the proxy");
    let seen = &proxy.seen()[0];
    assert_eq!(
        seen.request_line(),
        "GET http://origin.invalid:8080/x?y=1 HTTP/1.1"
    );
    // base64("u@corp:p")
    assert_eq!(
        seen.header("proxy-authorization"),
        Some("Basic dUBjb3JwOnA=")
    );

    let direct = ok_peer("direct");
    let (code, out, err) = fetch_run(&[
        "-x",
        &format!("127.0.0.1:{}", proxy.port()),
        "--noproxy",
        "127.0.0.0/8",
        &direct.url("/"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "direct");
    assert_eq!(proxy.seen().len(), 1, "the proxy saw nothing more");
}

#[test]
fn fetch_proxy_failures_exit_56_or_2_without_the_credentials() {
    let refusing = Peer::plain(|_| {
        response(
            "407 Proxy Authentication Required",
            &[("Proxy-Authenticate", "Basic realm=\"corp\"")],
            "",
        )
    });
    let got = fetch_run(&[
        "-x",
        &format!("http://ops:hunter2@127.0.0.1:{}", refusing.port()),
        "https://origin.invalid/",
    ]);
    assert!(!got.2.contains("hunter2"), "{}", got.2);
    assert_fails(got, 56, "the proxy rejected the credentials");
    assert_fails(
        fetch_run(&["-x", "socks5://127.0.0.1:1080", "https://origin.invalid/"]),
        2,
        "-x: bad proxy url: unsupported scheme \"socks5\"",
    );
    assert_fails(
        fetch_run(&[
            "-x",
            "127.0.0.1:1",
            "--proxy-user",
            "nocolon",
            "https://a.invalid/",
        ]),
        2,
        "--proxy-user needs USER:PASS",
    );
}

/// The whole job loop through a relay that cuts connections mid-upload,
/// across a rotation to a chain from another CA: an upload cut short is
/// sent again (a fresh body, a fresh connection) and the job succeeds,
/// every artifact the server got is the runner's archive byte for byte,
/// and every job handed out after the rotation got the new chain in its CA
/// file, from a handshake made for the job rather than from the connection
/// that delivered it, and cloned with it.
#[test]
fn runner_jobs_through_faults_and_a_rotation_never_see_a_stale_chain() {
    let s = server(Settings {
        hold: Duration::from_millis(200),
        job_every: Duration::from_millis(20),
        trace_update_interval: Duration::from_millis(10),
        ..Settings::default()
    });
    // Each connection through the relay dies inside its third artifact.
    let relay = support::FaultRelay::start(s.coordinator.addr(), 700_000);
    let root_b = Ca::new("examples rotated CA").expect("CA");
    let mid_b = root_b
        .intermediate("examples rotated intermediate")
        .expect("CA");
    let leaf_b = mid_b.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let dir = TempDir::new("runner-faults").expect("temp dir");
    let ca_file = s._dir.path().join("runner-ca-ab.pem");
    let pem = format!(
        "{}{}{}",
        s.root.pem(),
        root_b.pem(),
        s.coordinator.storage_ca_pem()
    );
    std::fs::write(&ca_file, pem).expect("CA file");
    let jobs = 6;
    let (out, cap) = Output::capture();
    let runner_args = args(&[
        "--url",
        &relay.url("/"),
        "--token",
        "t0ken",
        "--ca-file",
        ca_file.to_str().expect("utf-8"),
        "--builds-dir",
        dir.path().to_str().expect("utf-8"),
        "--artifact-size",
        "300000",
        "--check-interval",
        "20ms",
        "--retry-backoff",
        "10ms",
        "--max-jobs",
        &jobs.to_string(),
        "--duration",
        "60s",
    ]);
    let runner = std::thread::spawn(move || runner::main_with_args(runner_args, &out));
    let until = Instant::now() + Duration::from_secs(30);
    while s.coordinator.counters().jobs < 2 {
        assert!(Instant::now() < until, "no second job");
        std::thread::sleep(Duration::from_millis(1));
    }
    s.coordinator.rotate(&leaf_b).expect("rotate");
    let handed_before = s.coordinator.counters().jobs;
    let code = runner.join().expect("runner thread");
    let text = cap.stdout();

    let reports = s.coordinator.take_job_reports();
    assert_eq!(reports.len() as u64, jobs, "{reports:?}\n{text}");
    assert!(relay.cuts() >= 1, "the relay cut a connection:\n{text}");
    assert!(
        text.contains("uploading artifacts.zip: try 2 of"),
        "a cut upload was tried again:\n{text}"
    );
    let mut failed = 0;
    for r in &reports {
        let line = text
            .lines()
            .find(|l| {
                l.contains(&format!("job {}: success", r.id))
                    || l.contains(&format!("job {}: failed: ", r.id))
            })
            .unwrap_or_else(|| panic!("no verdict line for job {}:\n{text}", r.id));
        if r.state != "success" {
            // Only the job running across the rotation may fail (its CA
            // file can predate the rotation), and it says why.
            failed += 1;
            assert!(r.id <= handed_before, "{r:?}\n{text}");
            let why = line.split("failed: ").nth(1).unwrap_or_default();
            assert!(why.len() > 10, "a named reason: {line}");
            continue;
        }
        // The artifact that arrived is the runner's archive, whole.
        let art = r.artifact.as_ref().expect("a success has its artifact");
        assert!(
            job_line(&text, r.id, "artifact ")
                .contains(&format!("{} bytes sha256 {}", art.size, art.sha256)),
            "{r:?}\n{text}"
        );
        // A job handed out after the rotation trusts the new chain only.
        if r.id > handed_before {
            let pem = std::fs::read_to_string(dir.path().join(format!("job-{}/ca.pem", r.id)))
                .expect("the job's CA file");
            assert_eq!(
                pem,
                format!("{}{}", mid_b.pem(), root_b.pem()),
                "job {}",
                r.id
            );
        }
    }
    assert!(failed <= 1, "{failed} failed:\n{text}");
    assert_eq!(code, i32::from(failed > 0), "{text}");
    assert!(
        text.contains(&format!(
            "stopped after {jobs} jobs: {} succeeded, {failed} failed",
            jobs - failed
        )),
        "{text}"
    );
}
