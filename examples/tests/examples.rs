//! Each example program, run in-process through its `main_with_args` with
//! short timings and small counts, so none can rot.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rotary_examples::coordinator::{Coordinator, Settings};
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

#[test]
fn runner_writes_a_ca_file_per_job_from_the_delivering_connection() {
    let s = server(Settings {
        hold: Duration::from_millis(200),
        job_every: Duration::from_millis(50),
        max_requests_per_conn: None,
    });
    let dir = TempDir::new("runner-builds").expect("temp dir");
    let (out, cap) = Output::capture();
    let code = runner::main_with_args(
        args(&[
            "--url",
            &s.coordinator.url(""),
            "--token",
            "t0ken",
            "--ca-file",
            ca(&s),
            "--builds-dir",
            dir.path().to_str().expect("utf-8"),
            "--jobs",
            "2",
            "--duration",
            "10s",
        ]),
        &out,
    );
    assert_eq!(code, 0, "{}\n{}", cap.stdout(), cap.stderr());
    let text = cap.stdout();
    assert!(text.contains("stopped after 2 jobs"), "{text}");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("builds dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("ca.pem"))
        .collect();
    assert_eq!(files.len(), 2, "{text}");
    // Each job's CA file is the bundle: intermediate then root, no leaf.
    let bundle = format!("{}{}", s.mid.pem(), s.root.pem());
    for f in files {
        let pem = std::fs::read_to_string(&f).expect("CA file");
        assert_eq!(pem, bundle, "{}", f.display());
    }
    assert!(text.contains("root CN=examples test CA"), "{text}");
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
