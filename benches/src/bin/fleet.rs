//! The fleet simulation: N runners against one edge in
//! virtual time, with the engine's own lifetime decisions; see
//! `rotary_benches::fleet`.
//!
//! Run: `cargo run --release -p rotary-benches --bin fleet` (N = 100,000,
//! 4 virtual hours, a few seconds). Prints markdown tables and writes
//! `fleet.svg` (handshakes per second over time) into `--out` (default
//! `<workspace>/target`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rotary::Policy;
use rotary_benches::fleet::{edge_cores, simulate, Load, Scenario, Summary};

const HELP: &str = "\
fleet: N runners against one edge in virtual time, handshakes per second

usage: fleet [--runners N] [--hours H] [--out DIR]

  --runners N   runners (default 100000)
  --hours H     virtual hours per scenario (default 4)
  --out DIR     where fleet.svg goes (default <workspace>/target)
";

const MINUTE: Duration = Duration::from_secs(60);

struct Opts {
    runners: u32,
    hours: u64,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut o = Opts {
        runners: 100_000,
        hours: 4,
        out: workspace.join("target"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runners" => {
                o.runners = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or("--runners takes 1 to 10000000")?
            }
            "--hours" => {
                o.hours = value()?
                    .parse()
                    .ok()
                    .filter(|h| (1..=48).contains(h))
                    .ok_or("--hours takes 1 to 48")?
            }
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            _ => return Err(format!("unknown flag {flag:?}\n{HELP}")),
        }
    }
    Ok(Some(o))
}

fn policy(jitter_share: Option<f64>, probe: Option<Duration>) -> Policy {
    let mut p = Policy::default();
    if let (Some(share), Some(age)) = (jitter_share, p.max_age) {
        p.max_age_jitter = Some(age.mul_f64(share));
    }
    p.chain_probe_interval = probe;
    p
}

/// `p` with the chain probe's jitter set to `share` of its interval.
fn probe_jitter(mut p: Policy, share: f64) -> Policy {
    p.chain_probe_jitter = p.chain_probe_interval.map(|every| every.mul_f64(share));
    p
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Some(o)) => match run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleet: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::from(2)
        }
    }
}

fn row(s: &mut String, name: &str, sum: &Summary) {
    let _ = writeln!(
        s,
        "| {name} | {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.3} |",
        sum.restart,
        sum.peak,
        sum.p99,
        sum.mean,
        edge_cores(f64::from(sum.peak)),
        edge_cores(f64::from(sum.p99)),
        edge_cores(sum.mean),
    );
}

const HEAD: &str = "| scenario | handshakes during the restart | peak / s after it | p99 / s | mean / s | edge cores at peak | at p99 | at mean |\n|---|---:|---:|---:|---:|---:|---:|---:|";

fn run(o: &Opts) -> Result<(), String> {
    let horizon = Duration::from_secs(o.hours * 3600);
    let probe = 5 * MINUTE;
    let rotation = Duration::from_secs(2 * 3600 + 7);
    let base = Scenario {
        runners: o.runners,
        policy: policy(None, None),
        restart_spread: Duration::from_secs(1),
        rotation_at: None,
        horizon,
        seed: 18,
        spread_first_probe: true,
    };
    let after_restart = |s: &Scenario| s.restart_spread.max(Duration::from_secs(1));
    let scenarios: Vec<(String, Scenario)> = vec![
        (
            "mass restart, default policy (max age 15 min, jitter 10 %, prewarm)".into(),
            base.clone(),
        ),
        (
            "mass restart, jitter off (lockstep)".into(),
            Scenario {
                policy: policy(Some(0.0), None),
                ..base.clone()
            },
        ),
        (
            format!(
                "mass restart, chain_probe_interval 5 min (default probe jitter), chain rotated at {} s",
                rotation.as_secs()
            ),
            Scenario {
                policy: policy(None, Some(probe)),
                rotation_at: Some(rotation),
                ..base.clone()
            },
        ),
        (
            "the same, probe jitter off (the engine before the probe was jittered)".into(),
            Scenario {
                policy: probe_jitter(policy(None, Some(probe)), 0.0),
                rotation_at: Some(rotation),
                ..base.clone()
            },
        ),
        (
            "the same, every probe one interval less 10 % jitter (no first-probe spread)".into(),
            Scenario {
                policy: probe_jitter(policy(None, Some(probe)), 0.10),
                rotation_at: Some(rotation),
                spread_first_probe: false,
                ..base.clone()
            },
        ),
    ];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} runners, one connection each, {} virtual hours; edge cores at 430 µs of nginx CPU per full handshake\n",
        o.runners, o.hours
    );
    let _ = writeln!(md, "{HEAD}");
    let mut loads: Vec<(String, Load)> = Vec::new();
    for (name, s) in &scenarios {
        eprintln!("fleet: {name}");
        let load = simulate(s);
        row(&mut md, name, &load.summary(after_restart(s)));
        loads.push((name.clone(), load));
    }
    // Which jitter: the mass restart again, with the jitter as a share of max age.
    let _ = writeln!(md, "\nmass restart, default policy but the jitter:\n");
    let _ = writeln!(md, "{HEAD}");
    for share in [0.0, 0.01, 0.05, 0.10, 0.20, 0.50] {
        let s = Scenario {
            policy: policy(Some(share), None),
            ..base.clone()
        };
        let load = simulate(&s);
        let sum = load.summary(after_restart(&s));
        row(&mut md, &format!("jitter {:.0} %", share * 100.0), &sum);
        // The waves after the first: how fast the jitter flattens them.
        let hour = |h: u64| load.between(h * 3600, (h + 1) * 3600);
        let peak_in = |from: u64, to: u64| {
            load.per_second
                .get(from as usize..(to as usize).min(load.per_second.len()))
                .and_then(|w| w.iter().max().copied())
                .unwrap_or(0)
        };
        eprintln!(
            "jitter {:.0} %: peak in hour 1 {}, in hour 4 {}; handshakes in hour 1 {}, hour 4 {}",
            share * 100.0,
            peak_in(1, 3600),
            peak_in(3 * 3600, 4 * 3600),
            hour(0),
            hour(3)
        );
    }
    // Which probe jitter: the probing scenario with the rotation, the
    // probe's jitter as a share of its interval, with and without the
    // first probe drawn over the whole interval.
    let _ = writeln!(
        md,
        "\nmass restart, chain_probe_interval 5 min, chain rotated at {} s, but the probe's jitter:\n",
        rotation.as_secs()
    );
    let _ = writeln!(md, "{HEAD}");
    for spread_first_probe in [false, true] {
        for share in [0.0, 0.01, 0.05, 0.10, 0.25, 0.50] {
            if share == 0.0 && spread_first_probe {
                continue; // jitter off turns the first probe's spread off too
            }
            let s = Scenario {
                policy: probe_jitter(policy(None, Some(probe)), share),
                rotation_at: Some(rotation),
                spread_first_probe,
                ..base.clone()
            };
            let load = simulate(&s);
            let first = if spread_first_probe {
                "first probe spread over its interval"
            } else {
                "first probe one interval less its jitter"
            };
            let name = format!("probe jitter {:.0} %, {first}", share * 100.0);
            row(&mut md, &name, &load.summary(after_restart(&s)));
        }
    }
    println!("{md}");
    let svg = chart(&loads, horizon, o.runners);
    std::fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    let path = o.out.join("fleet.svg");
    std::fs::write(&path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Handshakes per second over time, one polyline per scenario (the highest
/// second of each 30 s), on a log scale from 1 to N.
fn chart(loads: &[(String, Load)], horizon: Duration, runners: u32) -> String {
    let (left, top, w, h) = (70.0, 40.0, 860.0, 320.0);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    let top_v = f64::from(runners.max(10)).log10().ceil();
    let y = |v: u32| {
        let l = f64::from(v.max(1)).log10().min(top_v);
        top + h - h * l / top_v
    };
    let secs = horizon.as_secs().max(1) as f64;
    let x = |s: f64| left + w * s / secs;
    let mut s = String::new();
    let legend_h = 18.0 * loads.len() as f64;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        left + w + 20.0,
        top + h + 50.0 + legend_h
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">Edge full handshakes per second, {runners} runners (highest second of each 30 s, log scale)</text>"#
    );
    for e in 0..=(top_v as u32) {
        let v = 10u32.pow(e);
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            left + w,
            left - 6.0,
            yy + 4.0
        );
    }
    let hours = horizon.as_secs() / 3600;
    for hr in 0..=hours {
        let xx = x(hr as f64 * 3600.0);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="#ddd"/><text x="{xx:.1}" y="{}" text-anchor="middle">{hr} h</text>"##,
            top + h,
            top + h + 16.0
        );
    }
    for (i, (name, load)) in loads.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let mut points = String::new();
        // Whole 30 s bins only, each drawn at its middle: a partial last
        // bin would drop the line to zero at the right edge.
        let seconds = load.per_second.len().min(horizon.as_secs() as usize);
        for (bin, chunk) in load.per_second[..seconds].chunks_exact(30).enumerate() {
            let peak = chunk.iter().max().copied().unwrap_or(0);
            let _ = write!(points, "{:.1},{:.1} ", x(bin as f64 * 30.0 + 15.0), y(peak));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = top + h + 36.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{ly:.1}">{}</text>"#,
            left + 24.0,
            ly - 4.0,
            ly - 4.0,
            left + 30.0,
            name.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    s.push_str("</svg>\n");
    s
}
