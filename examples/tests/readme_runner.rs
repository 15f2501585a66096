//! The README's runner sketch ("Writing a runner") is
//! `examples/src/readme_runner.rs` line for line, and it runs: against the
//! bundled coordinator, two jobs, the second depending on the first, its
//! artifact uploaded as the multipart form the coordinator (like GitLab)
//! requires.

use std::time::{Duration, Instant};

use rotary_examples::coordinator::{Coordinator, JobSpec, Settings};
use rotary_examples::pki::Ca;
use rotary_examples::{readme_runner, TempDir};

/// The first ```rust block after `heading`, with rustdoc's hidden-line
/// markers (`# `, a lone `#`) taken off.
fn block_after(readme: &str, heading: &str) -> String {
    let from = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the README"));
    let rest = &readme[from..];
    let start = rest.find("```rust").expect("a rust block");
    let body = &rest[start..];
    let body = &body[body.find('\n').expect("the fence line ends") + 1..];
    let end = body.find("\n```").expect("the block ends");
    body[..end]
        .lines()
        .map(|l| match l {
            "#" => "",
            l => l.strip_prefix("# ").unwrap_or(l),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_sketch_is_the_module_line_for_line() {
    let readme = include_str!("../../README.md");
    let module = include_str!("../src/readme_runner.rs");
    let sketch = block_after(readme, "## Writing a runner");
    let want = module.trim_end();
    if sketch != want {
        let diff = sketch
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}:\n README: {a}\n module: {b}", i + 1))
            .unwrap_or_else(|| "one is longer".into());
        panic!("the README's runner sketch and examples/src/readme_runner.rs differ at {diff}");
    }
}

#[test]
fn the_readme_sketch_runs_two_jobs_against_the_bundled_coordinator() {
    let ca = Ca::new("readme sketch CA").expect("CA");
    let cert = ca.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let coordinator = Coordinator::start(
        "127.0.0.1:0",
        &cert,
        Settings {
            hold: Duration::from_millis(100),
            demo_jobs: false,
            repository: false,
            ..Settings::default()
        },
    )
    .expect("coordinator");
    let dir = TempDir::new("readme-sketch").expect("temp dir");
    let ca_file = dir.path().join("trust.pem");
    std::fs::write(
        &ca_file,
        format!("{}{}", ca.pem(), coordinator.storage_ca_pem()),
    )
    .expect("CA file");
    let first = coordinator.enqueue(JobSpec::script(&["true"]));
    let mut spec = JobSpec::script(&["true"]);
    spec.dependencies = vec![first];
    let second = coordinator.enqueue(spec);
    // The sketch's own configuration, with the test's CA in place of the
    // host's store.
    let mut config = rotary::Config::default();
    config.trust = rotary::Trust::pem_file(&ca_file);
    config.sensitive_headers = vec![http::HeaderName::from_static("job-token")];
    let client = rotary::Client::new(config).expect("client");
    let base = coordinator.url("");
    let base = base.trim_end_matches('/');
    let until = Instant::now() + Duration::from_secs(20);
    let mut ran = 0;
    while ran < 2 {
        assert!(Instant::now() < until, "two jobs within 20 s");
        match readme_runner::run_one_job(&client, base, "glrt-sketch", dir.path()) {
            Ok(true) => ran += 1,
            Ok(false) => {}
            Err(e) => panic!("the sketch failed: {e}"),
        }
    }
    client.shutdown();
    let reports = coordinator.take_job_reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in &reports {
        assert_eq!(r.state, "success", "{r:?}");
        // The upload was a multipart form whose file part the coordinator
        // found and measured.
        let art = r.artifact.as_ref().expect("the sketch's artifact");
        assert_eq!(art.filename, "artifacts.zip");
        assert_eq!(art.size, b"PK\x05\x06 a stand-in archive".len() as u64);
    }
    let r = reports.iter().find(|r| r.id == second).expect("second");
    assert_eq!(r.downloads, [first], "{r:?}");
    // With the dependency's own token, through object storage, which saw
    // no JOB-TOKEN.
    let c = coordinator.counters();
    assert_eq!((c.storage_requests, c.storage_credentials_refused), (1, 0));
    let dep = std::fs::read(dir.path().join(format!("dep-{first}.zip"))).expect("downloaded");
    assert_eq!(dep, b"PK\x05\x06 a stand-in archive");
}
