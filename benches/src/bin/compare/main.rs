//! rotary against hyper, wrk, curl, OpenSSL, reqwest and ureq, side by side in one run.
//!
//! Run: `cargo run --release -p rotary-benches --bin compare` (add `--quick`
//! for a short smoke run, `--help` for the flags).
//!
//! The parent process starts one local TLS server (nginx when installed, else
//! this binary's `server` mode), then runs every workload through rotary and
//! through the client it is compared with (hyper-util's pooled legacy
//! `Client`, wrk, `openssl s_time`, reqwest's and ureq's blocking clients),
//! each client in a child process of its own (`compare client ...`), so
//! `getrusage(RUSAGE_SELF)` CPU and RSS belong to one client. The two
//! alternate (A B, B A, ...) for a number of rounds; the report holds
//! medians and the ratio rotary / other, as a markdown table (stdout and
//! `target/bench-report.md`) and an SVG chart of the ratios
//! (`target/bench-report.svg`).

mod blocking;
mod bodies;
mod hyper_client;
mod instructions;
mod measure;
mod openssl_client;
mod report;
mod rotary_client;
mod server;
mod wrk_client;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use measure::Schedule;
use report::{Outcome, Row, Wheel};

const HELP: &str = "\
compare: rotary against other clients on the same local TLS server

usage: compare [--quick] [--rounds N] [--only a,b,c,d,e] [--server nginx|builtin]
               [--port P] [--idle N] [--no-wheel] [--instructions] [--out DIR]

  --quick          short runs (0.3 s windows, 1,000 idle connections, no wheel
                   bench); for smoke tests, not for numbers
  --rounds N       rounds of A B alternation (default 5; 3 with --quick)
  --only LIST      workloads to run: a keep-alive, b idle, c reconnect,
                   d expiry, e timer wheel, f soak, g bodies (16 and 256 MiB
                   each way, with curl, reqwest and ureq too; needs nginx),
                   h blocking clients (rotary's Client against reqwest
                   and ureq at 1, 16 and 64 threads; idle memory)
                   (default all)
  --server KIND    nginx (default when installed) or builtin (hyper in a
                   child process)
  --port P         the server's port (default: a free one)
  --idle N         idle connections for workload b (default 10000)
  --no-wheel       skip workload e (it runs `cargo bench --bench wheel`)
  --instructions   also count marginal instructions per request under
                   callgrind (valgrind): with a, rotary and hyper, C = 16,
                   5 B and 4 KiB; with h, rotary's Client, ureq and reqwest
                   at one thread: the difference of a 1 s and a 3 s window
                   over the difference of their requests; ~2 min each
  --out DIR        where bench-report.md/.svg go (default: <workspace>/target)

Pieces, for profiling one client by hand (e.g. under perf):
  compare pki DIR                    ca.pem, cert.pem, key.pem, www/{5,4k} in DIR
  compare server --dir DIR [--port P]   the builtin server; prints LISTEN <port>
  compare client rotary|hyper load|idle --url U --ca FILE [--conns C]
      (or `client wrk load`: wrk -t1 -cC, twice, the difference reported)
      [--warm-requests N] [--warm-ms W] [--measure-ms M] [--max-age-ms A]
      [--close] [--idle N] [--max-conns N] [--side-handshakes RATE]
      [--classical]   (rotary: no post-quantum key exchange offered)
  compare client rotary soak --url U --ca FILE --conns 32 --max-conns 64
      --max-age-ms 20 --requests 1000000
  compare client rotary|hyper|curl download|upload --url U --ca FILE
      --bytes N --warm URL [--file F]   (workload g: one body, timed)
";

/// What one client process is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ClientArgs {
    pub(crate) url: String,
    pub(crate) ca: PathBuf,
    pub(crate) conns: usize,
    pub(crate) schedule: Schedule,
    pub(crate) max_age: Option<Duration>,
    /// `Connection: close` on every request (and rotary's `max_requests = 1`).
    pub(crate) close: bool,
    pub(crate) idle: usize,
    /// rotary's per-origin `max_connections`; 0 means `conns`.
    pub(crate) max_conns: usize,
    /// Full handshakes per second made meanwhile by a second engine on
    /// another thread of the same process (0: none).
    pub(crate) side_handshakes: f64,
    /// rotary offers no post-quantum key exchange (`Trust::post_quantum`
    /// off; only matters on aws-lc-rs).
    pub(crate) classical: bool,
    /// The soak's requests in total, and its time bound.
    pub(crate) requests: u64,
    pub(crate) soak_limit: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("client") => client_main(&args[1..]),
        Some("server") => server_main(&args[1..]),
        Some("pki") => match args.get(1) {
            Some(dir) => std::fs::create_dir_all(Path::new(dir).join("www"))
                .map_err(|e| format!("create {dir}: {e}"))
                .and_then(|()| server::write_pki(Path::new(dir))),
            None => Err("pki: need a directory".into()),
        },
        _ => parent_main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR {e}");
            ExitCode::FAILURE
        }
    }
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: not a number: {s:?}"))
}

fn client_main(args: &[String]) -> Result<(), String> {
    let (Some(which), Some(mode)) = (args.first(), args.get(1)) else {
        return Err(format!("client: need <rotary|hyper> <load|idle>\n{HELP}"));
    };
    if matches!(mode.as_str(), "download" | "upload") {
        println!("{}", bodies::client(which, mode, &args[2..])?.line());
        return Ok(());
    }
    let mut a = ClientArgs {
        url: String::new(),
        ca: PathBuf::new(),
        conns: 1,
        schedule: Schedule {
            warm_requests: 0,
            warm_min: Duration::from_millis(300),
            measure: Duration::from_millis(1500),
        },
        max_age: None,
        close: false,
        idle: 0,
        max_conns: 0,
        side_handshakes: 0.0,
        classical: false,
        requests: 1_000_000,
        soak_limit: SOAK_LIMIT,
    };
    let mut it = args[2..].iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--url" => a.url = value(&mut it, flag)?.to_owned(),
            "--ca" => a.ca = PathBuf::from(value(&mut it, flag)?),
            "--conns" => a.conns = number(value(&mut it, flag)?, flag)?,
            "--warm-requests" => a.schedule.warm_requests = number(value(&mut it, flag)?, flag)?,
            "--warm-ms" => {
                a.schedule.warm_min = Duration::from_millis(number(value(&mut it, flag)?, flag)?)
            }
            "--measure-ms" => {
                a.schedule.measure = Duration::from_millis(number(value(&mut it, flag)?, flag)?)
            }
            "--max-age-ms" => {
                a.max_age = Some(Duration::from_millis(number(value(&mut it, flag)?, flag)?))
            }
            "--close" => a.close = true,
            "--classical" => a.classical = true,
            "--requests" => a.requests = number(value(&mut it, flag)?, flag)?,
            "--idle" => a.idle = number(value(&mut it, flag)?, flag)?,
            "--max-conns" => a.max_conns = number(value(&mut it, flag)?, flag)?,
            "--side-handshakes" => {
                a.side_handshakes = value(&mut it, flag)?
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r >= 0.0 && *r <= 100_000.0)
                    .ok_or("--side-handshakes: a rate from 0 to 100000 per second")?
            }
            _ => return Err(format!("client: unknown flag {flag:?}")),
        }
    }
    if a.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let nofile = measure::raise_nofile();
    let needed = (a.conns.max(a.idle) + 64) as u64;
    if nofile < needed {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, {needed} needed (raise the hard limit: ulimit -Hn)"
        ));
    }
    let report = match (which.as_str(), mode.as_str()) {
        ("rotary", "load") => rotary_client::load(&a)?,
        ("rotary", "idle") => rotary_client::idle(&a)?,
        ("hyper", "load") => hyper_client::load(a)?,
        ("hyper", "idle") => hyper_client::idle(a)?,
        ("wrk", "load") => wrk_client::load(&a)?,
        ("openssl", "load") => openssl_client::load(&a)?,
        ("rotary", "soak") => rotary_client::soak(&a)?,
        (which, "load") if blocking::CLIENTS.contains(&which) => blocking::load(which, &a)?,
        (which, "idle") if blocking::CLIENTS.contains(&which) => blocking::idle(which, &a)?,
        _ => return Err(format!("client: unknown {which:?} {mode:?}")),
    };
    println!("{}", report.line());
    Ok(())
}

fn server_main(args: &[String]) -> Result<(), String> {
    let (mut port, mut dir) = (0u16, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--port" => port = number(value(&mut it, flag)?, flag)?,
            "--dir" => dir = Some(PathBuf::from(value(&mut it, flag)?)),
            _ => return Err(format!("server: unknown flag {flag:?}")),
        }
    }
    measure::raise_nofile();
    server::serve(port, &dir.ok_or("server: --dir is required")?)
}

/// The parent's options.
struct Opts {
    quick: bool,
    rounds: usize,
    only: String,
    server: Option<String>,
    port: Option<u16>,
    idle: usize,
    wheel: bool,
    instructions: bool,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut o = Opts {
        quick: false,
        rounds: 5,
        only: "abcdefgh".into(),
        server: None,
        port: None,
        idle: 10_000,
        wheel: true,
        instructions: false,
        out: workspace.join("target"),
    };
    let mut idle_set = false;
    let mut rounds_set = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => {
                o.rounds = number(value(&mut it, flag)?, flag)?;
                rounds_set = true;
            }
            "--only" => o.only = value(&mut it, flag)?.to_owned(),
            "--server" => o.server = Some(value(&mut it, flag)?.to_owned()),
            "--port" => o.port = Some(number(value(&mut it, flag)?, flag)?),
            "--idle" => {
                o.idle = number(value(&mut it, flag)?, flag)?;
                idle_set = true;
            }
            "--no-wheel" => o.wheel = false,
            "--instructions" => o.instructions = true,
            "--out" => o.out = PathBuf::from(value(&mut it, flag)?),
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            _ => return Err(format!("unknown flag {flag:?}\n{HELP}")),
        }
    }
    if o.quick {
        o.wheel = false;
        if !rounds_set {
            o.rounds = 3;
        }
        if !idle_set {
            o.idle = 1_000;
        }
    }
    if o.rounds == 0 || o.idle == 0 {
        return Err("--rounds and --idle must be at least 1".into());
    }
    Ok(Some(o))
}

/// One row group: a workload run through two clients, A and B.
struct Spec {
    title: String,
    /// Column names of A and B.
    labels: (&'static str, &'static str),
    /// Client args after `client`: A's and B's.
    a: Vec<String>,
    b: Vec<String>,
    /// Rows to derive from the two sides' medians.
    rows: Vec<Row>,
}

fn load_args(
    which: &str,
    url: &str,
    ca: &Path,
    conns: usize,
    warm_ms: u64,
    measure_ms: u64,
) -> Vec<String> {
    let mut v: Vec<String> = vec![which.into(), "load".into(), "--url".into(), url.into()];
    v.extend([
        "--ca".into(),
        ca.display().to_string(),
        "--conns".into(),
        conns.to_string(),
        "--warm-requests".into(),
        (4 * conns).to_string(),
        "--warm-ms".into(),
        warm_ms.to_string(),
        "--measure-ms".into(),
        measure_ms.to_string(),
    ]);
    v
}

fn specs(o: &Opts, base: &str, ca: &Path) -> Vec<Spec> {
    let (warm, window) = if o.quick { (100, 300) } else { (300, 1500) };
    let mut out = Vec::new();
    if o.only.contains('a') {
        for (path, size) in [(server::SMALL, "5 B"), (server::LARGE, "4 KiB")] {
            for conns in [1usize, 16, 256] {
                let url = format!("{base}{path}");
                let warm = if conns == 256 { warm * 2 } else { warm };
                out.push(Spec {
                    title: format!("a. keep-alive GET {size}, C={conns}"),
                    labels: ("rotary", "hyper"),
                    a: load_args("rotary", &url, ca, conns, warm, window),
                    b: load_args("hyper", &url, ca, conns, warm, window),
                    rows: Row::keep_alive(conns),
                });
            }
        }
        // wrk as the practical floor, where its targets are (C = 16, 256).
        // Without wrk these rows say "not measured: wrk is not installed".
        for (path, size) in [(server::SMALL, "5 B"), (server::LARGE, "4 KiB")] {
            for conns in [16usize, 256] {
                let url = format!("{base}{path}");
                let warm = if conns == 256 { warm * 2 } else { warm };
                out.push(Spec {
                    title: format!(
                        "a. keep-alive GET {size}, C={conns}, against wrk -t1 -c{conns}"
                    ),
                    labels: ("rotary", "wrk"),
                    a: load_args("rotary", &url, ca, conns, warm, window),
                    b: load_args("wrk", &url, ca, conns, warm, window),
                    rows: Row::wrk_floor(conns),
                });
            }
        }
    }
    if o.only.contains('b') {
        let idle = |which: &str| -> Vec<String> {
            vec![
                which.into(),
                "idle".into(),
                "--url".into(),
                format!("{base}{}", server::SMALL),
                "--ca".into(),
                ca.display().to_string(),
                "--idle".into(),
                o.idle.to_string(),
            ]
        };
        out.push(Spec {
            title: format!("b. idle: {} warmed TLS connections", o.idle),
            labels: ("rotary", "hyper"),
            a: idle("rotary"),
            b: idle("hyper"),
            rows: Row::idle(o.idle),
        });
    }
    if o.only.contains('c') {
        let url = format!("{base}{}", server::SMALL);
        let close = |which: &str| {
            let mut v = load_args(which, &url, ca, 4, warm, window);
            v.push("--close".into());
            v
        };
        out.push(Spec {
            title: "c. reconnect: full handshake per request, C=4".into(),
            labels: ("rotary", "hyper"),
            a: close("rotary"),
            b: close("hyper"),
            rows: Row::reconnect(),
        });
        // OpenSSL's own client, the floor: one connection at a time, so
        // its window is whole seconds (s_time's -time).
        let s_time_ms = if o.quick { 1000 } else { 2000 };
        out.push(Spec {
            title: "c. reconnect: full handshake per request, against openssl s_time -new".into(),
            labels: ("rotary", "openssl s_time"),
            a: close("rotary"),
            b: load_args("openssl", &url, ca, 1, 0, s_time_ms),
            rows: Row::reconnect_floor(),
        });
    }
    if o.only.contains('d') {
        let url = format!("{base}{}", server::SMALL);
        let window = if o.quick { 500 } else { 2000 };
        // Prewarm never opens beyond max_connections, so make-before-break
        // needs room above the concurrency: both runs allow 2 × C.
        let mut steady = load_args("rotary", &url, ca, 16, warm, window);
        steady.extend(["--max-conns".into(), "32".into()]);
        let mut expiring = steady.clone();
        expiring.extend(["--max-age-ms".into(), "100".into()]);
        out.push(Spec {
            title: "d. expiry under load: rotary C=16 (max_connections 32), GET 5 B".into(),
            labels: ("max_age 100 ms", "no expiry"),
            a: expiring,
            b: steady.clone(),
            rows: Row::expiry(),
        });
        // The same handshake rate, made off the loop: a second engine on
        // another thread of the client opens (and closes) connections at the
        // rate the expiry run replaces them: 16 connections living 100 ms
        // less 5 ms of mean jitter less the 25 ms prewarm lead. What this
        // does to the first engine's tail is what moving handshakes to a
        // worker thread could at best achieve on this machine.
        let rate = 16.0 / (0.100 - 0.005 - 0.025);
        let mut side = steady.clone();
        side.extend(["--side-handshakes".into(), format!("{rate:.0}")]);
        out.push(Spec {
            title: format!(
                "d. reference: no expiry, {rate:.0} handshakes/s by a second engine on another thread"
            ),
            labels: ("with side handshakes", "no expiry"),
            a: side,
            b: steady,
            rows: Row::side_handshakes(),
        });
    }
    if o.only.contains('h') {
        let url = format!("{base}{}", server::SMALL);
        for threads in [1usize, 16, 64] {
            for against in ["ureq", "reqwest"] {
                out.push(Spec {
                    title: format!(
                        "h. blocking clients: keep-alive GET 5 B, {threads} thread{} sharing one client",
                        if threads == 1 { "" } else { "s" }
                    ),
                    labels: ("rotary Client", against),
                    a: load_args("rotary-client", &url, ca, threads, warm, window),
                    b: load_args(against, &url, ca, threads, warm, window),
                    rows: Row::blocking(threads, against),
                });
            }
        }
        let idle = |which: &str| -> Vec<String> {
            vec![
                which.into(),
                "idle".into(),
                "--url".into(),
                url.clone(),
                "--ca".into(),
                ca.display().to_string(),
                "--idle".into(),
                BLOCKING_IDLE.to_string(),
            ]
        };
        for against in ["ureq", "reqwest"] {
            out.push(Spec {
                title: format!("h. blocking clients: {BLOCKING_IDLE} idle connections"),
                labels: ("rotary Client", against),
                a: idle("rotary-client"),
                b: idle(against),
                rows: Row::blocking_idle(),
            });
        }
    }
    out
}

/// Idle connections of the blocking clients (one thread each while they
/// are opened).
const BLOCKING_IDLE: usize = 256;

/// Longest the soak runs before it stops submitting (under CLIENT_LIMIT).
const SOAK_LIMIT: Duration = Duration::from_secs(240);

/// Longest one client run may take before it is killed and reported.
const CLIENT_LIMIT: Duration = Duration::from_secs(300);

/// Runs `compare client <args>`; the parsed `RESULT` line, or why not.
fn run_client(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    run_wrapped(&[], args).map(|(result, _)| result)
}

/// Runs `<wrapper...> compare client <args>` (the wrapper, say valgrind, may
/// be empty); the parsed `RESULT` line and the child's stderr, or why not.
fn run_wrapped(
    wrapper: &[String],
    args: &[String],
) -> Result<(BTreeMap<String, String>, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = server::die_with_parent(&mut command)
        .arg("client")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn client: {e}"))?;
    let (mut stdout, mut stderr) = (
        child.stdout.take().ok_or("client: no stdout")?,
        child.stderr.take().ok_or("client: no stderr")?,
    );
    // Read both pipes off-thread so a chatty child never blocks on them.
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CLIENT_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for client: {e}")),
        }
    };
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(format!(
            "client run exceeded {CLIENT_LIMIT:?} and was killed"
        ));
    };
    let reason = || {
        err.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("ERROR ").to_owned())
            .unwrap_or_else(|| format!("client exited with {status}"))
    };
    if !status.success() {
        return Err(reason());
    }
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(reason)?;
    let result = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok((result, err))
}

/// `--instructions`: rotary and hyper under callgrind at C = 16, 5 B and
/// 4 KiB, each as marginal instructions per request (see `instructions`).
fn instruction_outcomes(base: &str, ca: &Path, scratch: &Path, only: &str) -> Vec<Outcome> {
    let valgrind = instructions::find_valgrind();
    // Marginal instructions per request of `which` at `conns` (threads for
    // the blocking clients): two windows under callgrind.
    let measure = |which: &str, url: &str, size: &str, conns: usize| -> report::Run {
        let valgrind = valgrind
            .as_deref()
            .ok_or("valgrind is not installed (apt-get install valgrind)")?;
        let wrapper = instructions::wrapper(valgrind, scratch);
        let mut runs = Vec::new();
        for window in [instructions::SHORT_MS, instructions::LONG_MS] {
            eprintln!(
                "instructions: {which}, GET {size}, C={conns}, {window} ms window (callgrind)"
            );
            // Under callgrind a request takes ~50× longer: a warm-up of
            // 4 × C requests and 300 ms still holds.
            let args = load_args(which, url, ca, conns, 300, window);
            runs.push(
                run_wrapped(&wrapper, &args).and_then(|(mut result, stderr)| {
                    let n = instructions::collected(&stderr)
                        .ok_or("callgrind printed no instruction count")?;
                    result.insert("instructions".into(), n.to_string());
                    Ok(result)
                }),
            );
        }
        instructions::marginal(&runs[0], &runs[1])
    };
    let mut out = Vec::new();
    if only.contains('a') {
        for (path, size) in [(server::SMALL, "5 B"), (server::LARGE, "4 KiB")] {
            let url = format!("{base}{path}");
            let (a, b) = (
                measure("rotary", &url, size, 16),
                measure("hyper", &url, size, 16),
            );
            out.push(Outcome::new(
                format!("instructions: keep-alive GET {size}, C=16 (callgrind)"),
                ("rotary", "hyper"),
                Row::instructions(),
                vec![a],
                vec![b],
            ));
        }
    }
    if only.contains('h') {
        // The blocking clients at one thread: instructions do not move
        // with the machine's load, so they judge CPU per request there.
        let url = format!("{base}{}", server::SMALL);
        let a = measure("rotary-client", &url, "5 B", 1);
        for against in ["ureq", "reqwest"] {
            let b = measure(against, &url, "5 B", 1);
            out.push(Outcome::new(
                "instructions: blocking clients, keep-alive GET 5 B, 1 thread (callgrind)".into(),
                ("rotary Client", against),
                Row::instructions_blocking(),
                vec![a.clone()],
                vec![b],
            ));
        }
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

/// The workspace's git commit, and whether the engine or codec differ from it.
fn revision() -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--", "engine/src", "proto/src"]) {
            Some(s) if !s.is_empty() => format!("commit {head} + uncommitted engine/proto changes"),
            _ => format!("commit {head}"),
        },
        None => "unknown commit (no git)".into(),
    }
}

fn parent_main(args: &[String]) -> Result<(), String> {
    let Some(o) = parse(args)? else {
        return Ok(());
    };
    let started = Instant::now();
    // Read now, not at the end: others may commit while the run goes on.
    let revision = revision();
    let dir = server::TempDir::new()?;
    server::write_pki(dir.path())?;
    let kind = match o.server.as_deref() {
        Some("builtin") => server::Kind::Builtin,
        Some("nginx") => server::Kind::Nginx(
            server::find_nginx().ok_or("--server nginx: nginx not found (PATH, /usr/sbin)")?,
        ),
        Some(other) => return Err(format!("--server: unknown {other:?}")),
        None => server::find_nginx().map_or(server::Kind::Builtin, server::Kind::Nginx),
    };
    let mut notes = Vec::new();
    if matches!(kind, server::Kind::Builtin) && o.server.is_none() {
        notes.push("nginx not found: using the builtin hyper server instead".to_owned());
    }
    let bodies_on = o.only.contains('g');
    if bodies_on {
        eprintln!("g. bodies: writing the static files");
        bodies::write_files(&dir.path().join("www"))?;
    }
    let need_server = o.only.contains(['a', 'b', 'c', 'd', 'f', 'g', 'h']) || o.instructions;
    let server = if need_server {
        match server::start(&kind, dir.path(), o.port) {
            Ok(s) => {
                eprintln!("server: {} on 127.0.0.1:{}", s.description, s.port);
                Ok(s)
            }
            Err(e) => {
                eprintln!("server: {e}");
                Err(format!("server did not start: {e}"))
            }
        }
    } else {
        Err("no server needed".into())
    };
    let (base, server_desc) = match &server {
        Ok(s) => (
            format!("https://127.0.0.1:{}", s.port),
            s.description.clone(),
        ),
        Err(e) => (String::new(), e.clone()),
    };
    let ca = dir.path().join("ca.pem");
    let mut outcomes = Vec::new();
    // Workload d's expiry run is judged against its reference run.
    let (mut expiry, mut reference) = (None, None);
    for spec in specs(&o, &base, &ca) {
        let mut a_runs = Vec::new();
        let mut b_runs = Vec::new();
        if let Err(e) = &server {
            a_runs.push(Err(e.clone()));
            b_runs.push(Err(e.clone()));
        } else {
            for round in 0..o.rounds {
                eprintln!("{} [round {}/{}]", spec.title, round + 1, o.rounds);
                // A B, then B A: drift in the machine's load hits both alike.
                if round % 2 == 0 {
                    a_runs.push(run_client(&spec.a));
                    b_runs.push(run_client(&spec.b));
                } else {
                    b_runs.push(run_client(&spec.b));
                    a_runs.push(run_client(&spec.a));
                }
            }
        }
        if spec.title.starts_with("d. expiry") {
            expiry = Some((a_runs.clone(), b_runs.clone()));
        } else if spec.title.starts_with("d. reference") {
            reference = Some((a_runs.clone(), b_runs.clone()));
        }
        outcomes.push(Outcome::new(
            spec.title,
            spec.labels,
            spec.rows,
            a_runs,
            b_runs,
        ));
    }
    if let (Some(e), Some(r)) = (&expiry, &reference) {
        outcomes.push(report::expiry_against_reference(e, r));
    }
    if o.instructions {
        outcomes.extend(match &server {
            Ok(_) => instruction_outcomes(&base, &ca, dir.path(), &o.only),
            Err(e) => vec![Outcome::new(
                "instructions: keep-alive GET, C=16 (callgrind)".into(),
                ("rotary", "hyper"),
                Row::instructions(),
                vec![Err(e.clone())],
                vec![Err(e.clone())],
            )],
        });
    }
    let soak = o.only.contains('f').then(|| {
        let run = match &server {
            Err(e) => Err(e.clone()),
            Ok(_) => {
                let requests: u64 = if o.quick { 50_000 } else { 1_000_000 };
                eprintln!("f. soak: rotary C=32, max_age 20 ms, {requests} requests");
                let mut args =
                    load_args("rotary", &format!("{base}{}", server::SMALL), &ca, 32, 0, 0);
                args[1] = "soak".into();
                args.extend([
                    "--max-conns".into(),
                    "64".into(),
                    "--max-age-ms".into(),
                    "20".into(),
                    "--requests".into(),
                    requests.to_string(),
                ]);
                run_client(&args)
            }
        };
        report::Soak { run }
    });
    let bodies_md = bodies_on.then(|| {
        let mut runs = bodies::Runs::new();
        let why_not = match (&server, &kind) {
            (Err(e), _) => Some(e.clone()),
            (Ok(_), server::Kind::Builtin) => {
                Some("needs nginx (a static file and a dav PUT sink)".to_owned())
            }
            _ => None,
        };
        for upload in [false, true] {
            for len in bodies::SIZES {
                for which in bodies::CLIENTS {
                    if which == "rotary-fed" && !upload {
                        continue;
                    }
                    let entry = runs.entry((upload, len, which)).or_default();
                    if let Some(e) = &why_not {
                        entry.push(Err(e.clone()));
                        continue;
                    }
                    if which == "curl" && bodies::find_curl().is_none() {
                        entry.push(Err("curl is not installed".into()));
                        continue;
                    }
                    for round in 0..o.rounds {
                        eprintln!(
                            "g. bodies: {which} {} {} MiB [round {}/{}]",
                            if upload { "upload" } else { "download" },
                            len >> 20,
                            round + 1,
                            o.rounds
                        );
                        let args =
                            bodies::args(which, upload, len, &base, &ca, &dir.path().join("www"));
                        entry.push(run_client(&args));
                    }
                }
            }
        }
        bodies::markdown(&runs, o.rounds)
    });
    drop(server);
    let wheel = if o.only.contains('e') {
        Some(if o.wheel {
            eprintln!("e. timer wheel: cargo bench -p rotary-benches --bench wheel (summary)");
            Wheel::run()
        } else {
            Wheel::skipped("skipped (--no-wheel or --quick)")
        })
    } else {
        None
    };
    let header = report::Header {
        machine: machine(),
        revision,
        server: server_desc,
        rounds: o.rounds,
        quick: o.quick,
        elapsed: started.elapsed(),
        notes,
    };
    let mut md = report::markdown(&header, &outcomes, wheel.as_ref());
    if let Some(soak) = &soak {
        md.push_str(&soak.markdown());
    }
    if let Some(b) = &bodies_md {
        md.push_str(b);
    }
    println!("{md}");
    let svg = report::svg(&outcomes, wheel.as_ref());
    std::fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    let mut files = vec![("bench-report.md", md), ("bench-report.svg", svg)];
    if let Some(soak) = &soak {
        files.push(("soak.svg", soak.svg()));
    }
    for (name, contents) in files {
        let path = o.out.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
