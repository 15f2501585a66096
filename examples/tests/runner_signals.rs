//! A real SIGTERM to a runner running in this process (a test binary of its
//! own, so no other test shares the signal): the current job fails and is
//! reported, the temporary builds dir goes, the exit code says which signal.

use std::time::{Duration, Instant};

use rotary_examples::coordinator::{Coordinator, Settings};
use rotary_examples::pki::Ca;
use rotary_examples::{runner, Output, TempDir};

#[test]
fn sigterm_fails_the_current_job_removes_the_builds_dir_and_exits_143() {
    let ca = Ca::new("signals test CA").expect("CA");
    let cert = ca.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let coordinator = Coordinator::start(
        "127.0.0.1:0",
        &cert,
        Settings {
            hold: Duration::from_millis(100),
            job_every: Duration::from_millis(20),
            trace_update_interval: Duration::from_millis(10),
            ..Settings::default()
        },
    )
    .expect("coordinator");
    let dir = TempDir::new("signals-test").expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(
        &ca_file,
        format!("{}{}", ca.pem(), coordinator.storage_ca_pem()),
    )
    .expect("CA file");
    let (out, cap) = Output::capture();
    let url = coordinator.url("");
    let ca_arg = ca_file.to_str().expect("utf-8").to_owned();
    let runner = std::thread::spawn(move || {
        let a = [
            "--url",
            &url,
            "--token",
            "t",
            "--ca-file",
            &ca_arg,
            "--artifact-size",
            "1000",
            "--duration",
            "30s",
        ];
        runner::main_with_args(a.iter().map(|s| s.to_string()).collect(), &out)
    });
    let until = Instant::now() + Duration::from_secs(20);
    while !cap.stdout().contains("dependency artifacts") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        cap.stdout().contains("dependency artifacts"),
        "{}",
        cap.stdout()
    );
    // Without the runner's handler this would end the test process.
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).expect("raise");
    let code = runner.join().expect("runner thread");
    let text = cap.stdout();
    assert_eq!(code, 128 + 15, "{text}\n{}", cap.stderr());
    assert!(text.contains("stopped by SIGTERM"), "{text}");
    let builds = text
        .lines()
        .find_map(|l| l.split("job files go to ").nth(1))
        .expect("the builds dir is logged");
    assert!(
        !std::path::Path::new(builds).exists(),
        "{builds} left behind"
    );
    let reports = coordinator.take_job_reports();
    assert_eq!(
        reports.len() as u64,
        coordinator.counters().jobs,
        "{reports:?}\n{text}"
    );
}
