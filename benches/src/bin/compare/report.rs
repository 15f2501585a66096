//! Medians, ratios and targets, rendered as a markdown
//! table and an SVG bar chart of the ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The parsed `RESULT` line of one client run, or why there is none.
pub(crate) type Run = Result<BTreeMap<String, String>, String>;

/// A target a ratio is judged by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// ratio A / B at most this.
    AtMost(f64),
    /// ratio A / B at least this.
    AtLeast(f64),
    /// A's own value equals this.
    Equals(f64),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::AtMost(r) => format!("≤ {r}×"),
            Target::AtLeast(r) => format!("≥ {r}×"),
            Target::Equals(v) => format!("= {v}"),
        }
    }

    fn check(self, a: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::AtMost(r) => ratio.map(|x| x <= r),
            Target::AtLeast(r) => ratio.map(|x| x >= r),
            Target::Equals(v) => Some((a - v).abs() < 0.5),
        }
    }
}

/// Where a row's number comes from in one run.
#[derive(Debug, Clone, Copy)]
enum Value {
    Key(&'static str),
    /// user + system CPU µs per request.
    TotalCpu,
    /// requests (each a full handshake) per CPU second.
    HandshakesPerCpuSecond,
}

impl Value {
    fn of(self, run: &BTreeMap<String, String>) -> Option<f64> {
        let get = |k: &str| run.get(k).and_then(|v| v.parse::<f64>().ok());
        match self {
            Value::Key(k) => get(k),
            Value::TotalCpu => Some(get("user_us_per_req")? + get("sys_us_per_req")?),
            Value::HandshakesPerCpuSecond => {
                let cpu = get("cpu_s")?;
                (cpu > 0.0).then(|| get("requests").unwrap_or(0.0) / cpu)
            }
        }
    }
}

/// One metric of a workload.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    metric: String,
    value: Value,
    target: Option<Target>,
    /// Shown in the chart.
    chart: bool,
    decimals: usize,
}

impl Row {
    fn new(metric: impl Into<String>, value: Value, decimals: usize) -> Row {
        Row {
            metric: metric.into(),
            value,
            target: None,
            chart: false,
            decimals,
        }
    }

    fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self.chart = true;
        self
    }

    fn chart(mut self) -> Row {
        self.chart = true;
        self
    }

    pub(crate) fn keep_alive(conns: usize) -> Vec<Row> {
        let busy = conns >= 16;
        // Reported, not judged: user CPU is judged by instructions per
        // request (`--instructions`), which do not move with the load.
        let mut user = Row::new("user CPU µs / request", Value::Key("user_us_per_req"), 2);
        if busy {
            user = user.chart();
        }
        let total = Row::new("user+sys CPU µs / request", Value::TotalCpu, 2)
            .target(Target::AtMost(if busy { 0.85 } else { 1.0 }));
        vec![
            Row::new("requests / s", Value::Key("req_per_s"), 0).chart(),
            user,
            Row::new("sys CPU µs / request", Value::Key("sys_us_per_req"), 2),
            total,
            Row::new("p50 latency µs", Value::Key("p50_us"), 0),
            Row::new("p99 latency µs", Value::Key("p99_us"), 0),
            Row::new(
                format!("connections opened (C = {conns})"),
                Value::Key("opened"),
                0,
            )
            .target(Target::Equals(conns as f64)),
        ]
    }

    /// rotary against wrk: total client CPU per request
    /// ≤ 0.9× wrk's at C = 16 and 256, requests/s ≥ wrk's at C = 256.
    pub(crate) fn wrk_floor(conns: usize) -> Vec<Row> {
        let mut rate = Row::new("requests / s", Value::Key("req_per_s"), 0).chart();
        if conns >= 256 {
            rate = rate.target(Target::AtLeast(1.0));
        }
        vec![
            rate,
            Row::new("user CPU µs / request", Value::Key("user_us_per_req"), 2),
            Row::new("sys CPU µs / request", Value::Key("sys_us_per_req"), 2),
            Row::new("user+sys CPU µs / request", Value::TotalCpu, 2).target(Target::AtMost(0.9)),
            Row::new("p50 latency µs", Value::Key("p50_us"), 0),
            Row::new("p99 latency µs", Value::Key("p99_us"), 0),
        ]
    }

    /// `compare --instructions`: marginal instructions per request, the
    /// number user CPU is judged by (≤ 0.45× hyper at C = 16).
    pub(crate) fn instructions() -> Vec<Row> {
        vec![
            Row::new(
                "marginal instructions / request",
                Value::Key("instr_per_req"),
                0,
            )
            .target(Target::AtMost(0.45)),
            Row::new(
                "requests between the two windows",
                Value::Key("marginal_requests"),
                0,
            ),
        ]
    }

    /// Marginal instructions per request of the blocking clients at one
    /// thread, judged as CPU per request is there (≤ 1× ureq).
    pub(crate) fn instructions_blocking() -> Vec<Row> {
        vec![
            Row::new(
                "marginal instructions / request",
                Value::Key("instr_per_req"),
                0,
            )
            .target(Target::AtMost(1.0)),
            Row::new(
                "requests between the two windows",
                Value::Key("marginal_requests"),
                0,
            ),
        ]
    }

    pub(crate) fn idle(asked: usize) -> Vec<Row> {
        vec![
            Row::new("KiB RSS / idle connection", Value::Key("kib_per_conn"), 2)
                .target(Target::AtMost(0.35)),
            Row::new(
                "KiB RSS / idle connection after malloc_trim(0)",
                Value::Key("kib_per_conn_trimmed"),
                2,
            ),
            Row::new(
                format!("idle connections reached (asked {asked})"),
                Value::Key("conns"),
                0,
            ),
        ]
    }

    /// rotary's blocking `Client` against `against` (ureq or reqwest) at
    /// `threads` threads sharing one client. The targets: against ureq,
    /// CPU per request ≤ 1× at 1 and 16 threads and p50 ≤ 1× at 1 thread;
    /// against both, CPU ≤ 0.9× at 64 threads.
    pub(crate) fn blocking(threads: usize, against: &str) -> Vec<Row> {
        let ureq = against == "ureq";
        let mut total = Row::new("user+sys CPU µs / request", Value::TotalCpu, 2).chart();
        if threads >= 64 {
            total = total.target(Target::AtMost(0.9));
        } else if ureq {
            total = total.target(Target::AtMost(1.0));
        }
        let mut p50 = Row::new("p50 latency µs", Value::Key("p50_us"), 0);
        if threads == 1 && ureq {
            p50 = p50.target(Target::AtMost(1.0));
        }
        vec![
            Row::new("requests / s", Value::Key("req_per_s"), 0).chart(),
            Row::new("user CPU µs / request", Value::Key("user_us_per_req"), 2),
            Row::new("sys CPU µs / request", Value::Key("sys_us_per_req"), 2),
            total,
            p50,
            Row::new("p99 latency µs", Value::Key("p99_us"), 0),
        ]
    }

    /// Idle memory of the blocking clients (reported, no target).
    pub(crate) fn blocking_idle() -> Vec<Row> {
        vec![
            Row::new("KiB RSS / idle connection", Value::Key("kib_per_conn"), 2).chart(),
            Row::new(
                "KiB RSS / idle connection after malloc_trim(0)",
                Value::Key("kib_per_conn_trimmed"),
                2,
            ),
            Row::new(
                "KiB RSS growth / connection, threads' arenas included",
                Value::Key("kib_growth_per_conn"),
                2,
            ),
        ]
    }

    pub(crate) fn reconnect() -> Vec<Row> {
        vec![
            Row::new(
                "full handshakes / client CPU second",
                Value::HandshakesPerCpuSecond,
                0,
            )
            .target(Target::AtLeast(1.0)),
            Row::new("handshakes (requests) / s", Value::Key("req_per_s"), 0),
            Row::new("user+sys CPU µs / handshake", Value::TotalCpu, 1),
        ]
    }

    /// Workload c against `openssl s_time -new`: reported, no target.
    pub(crate) fn reconnect_floor() -> Vec<Row> {
        vec![
            Row::new(
                "full handshakes / client CPU second",
                Value::HandshakesPerCpuSecond,
                0,
            )
            .chart(),
            Row::new("handshakes (requests) / s", Value::Key("req_per_s"), 0),
            Row::new("user+sys CPU µs / handshake", Value::TotalCpu, 1),
        ]
    }

    pub(crate) fn side_handshakes() -> Vec<Row> {
        vec![
            Row::new("failed requests", Value::Key("failed_total"), 0),
            Row::new("p99 latency µs", Value::Key("p99_us"), 0),
            Row::new("p50 latency µs", Value::Key("p50_us"), 0),
            Row::new("requests / s", Value::Key("req_per_s"), 0),
            Row::new("side handshakes / s", Value::Key("side_per_s"), 0),
        ]
    }

    pub(crate) fn expiry() -> Vec<Row> {
        vec![
            Row::new("failed requests", Value::Key("failed_total"), 0).target(Target::Equals(0.0)),
            // Judged against the reference run (`expiry_against_reference`).
            Row::new("p99 latency µs", Value::Key("p99_us"), 0).chart(),
            Row::new("p50 latency µs", Value::Key("p50_us"), 0),
            Row::new("requests / s", Value::Key("req_per_s"), 0),
            Row::new("connections opened", Value::Key("opened"), 0),
        ]
    }
}

/// Workload d's target: the p99 the expiry
/// run adds is judged against what the same handshakes cost when another
/// engine makes them, p99(expiry) / p99(no expiry) ≤ 1.1 × p99(reference) /
/// p99(no expiry). Each round's two ratios come from that round's runs, so
/// the median and the range are over rounds.
pub(crate) fn expiry_against_reference(
    expiry: &(Vec<Run>, Vec<Run>),
    reference: &(Vec<Run>, Vec<Run>),
) -> Outcome {
    let ratios = |(with, without): &(Vec<Run>, Vec<Run>)| -> Vec<Run> {
        with.iter()
            .zip(without)
            .map(|(w, wo)| {
                let p99 = Value::Key("p99_us");
                let (w, wo) = (w.as_ref()?, wo.as_ref()?);
                match (p99.of(w), p99.of(wo)) {
                    (Some(a), Some(b)) if b > 0.0 => Ok(BTreeMap::from([(
                        "p99_ratio".to_owned(),
                        (a / b).to_string(),
                    )])),
                    _ => Err("a run did not report p99_us".to_owned()),
                }
            })
            .collect()
    };
    Outcome::new(
        "d. expiry p99 judged against its reference".into(),
        ("expiry p99 / no expiry", "reference p99 / no expiry"),
        vec![
            Row::new("p99 ratio (per round, median)", Value::Key("p99_ratio"), 3)
                .target(Target::AtMost(1.1)),
        ],
        ratios(expiry),
        ratios(reference),
    )
}

/// A side's median, or why there is none.
type Cell = Result<f64, String>;

fn median(runs: &[Run], value: Value) -> Cell {
    let failed: Vec<&String> = runs.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        return Err(if runs.len() > 1 {
            format!("{first} ({} of {} runs failed)", failed.len(), runs.len())
        } else {
            (*first).clone()
        });
    }
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|m| value.of(m)))
        .collect();
    if v.len() != runs.len() || v.is_empty() {
        return Err("a run did not report this value".into());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// The smallest and largest ratio of one round's A to the same round's B,
/// when every round measured both: how far one round strays from another
/// on this machine, next to the ratio of the medians that is judged.
fn round_range(a_runs: &[Run], b_runs: &[Run], value: Value) -> Option<(f64, f64)> {
    if a_runs.len() != b_runs.len() || a_runs.len() < 2 {
        return None;
    }
    let mut range: Option<(f64, f64)> = None;
    for (a, b) in a_runs.iter().zip(b_runs) {
        let (a, b) = (value.of(a.as_ref().ok()?)?, value.of(b.as_ref().ok()?)?);
        if b == 0.0 {
            return None;
        }
        let r = a / b;
        range = Some(range.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))));
    }
    range
}

/// A computed row.
struct Line {
    row: Row,
    a: Cell,
    b: Cell,
    ratio: Option<f64>,
    /// Per-round ratios, for rows judged by a ratio.
    rounds: Option<(f64, f64)>,
    pass: Option<bool>,
}

/// One workload's rows, for sides A and B.
pub(crate) struct Outcome {
    title: String,
    labels: (&'static str, &'static str),
    lines: Vec<Line>,
}

impl Outcome {
    pub(crate) fn new(
        title: String,
        labels: (&'static str, &'static str),
        rows: Vec<Row>,
        a_runs: Vec<Run>,
        b_runs: Vec<Run>,
    ) -> Outcome {
        let lines = rows
            .into_iter()
            .map(|row| {
                let a = median(&a_runs, row.value);
                let b = median(&b_runs, row.value);
                let ratio = match (&a, &b) {
                    (Ok(x), Ok(y)) if *y != 0.0 => Some(x / y),
                    _ => None,
                };
                let pass = match (&a, row.target) {
                    (Ok(x), Some(t)) => t.check(*x, ratio),
                    _ => None,
                };
                let rounds = match row.target {
                    Some(Target::AtMost(_) | Target::AtLeast(_)) => {
                        round_range(&a_runs, &b_runs, row.value)
                    }
                    _ => None,
                };
                Line {
                    row,
                    a,
                    b,
                    ratio,
                    rounds,
                    pass,
                }
            })
            .collect();
        Outcome {
            title,
            labels,
            lines,
        }
    }
}

/// Workload e: the numbers of `cargo bench -p rotary-benches --bench wheel`.
pub(crate) struct Wheel {
    /// (structure, median ms, ratio to btree_map, per-round ratio range)
    rows: Result<Vec<(String, f64, f64, String)>, String>,
}

impl Wheel {
    pub(crate) fn skipped(why: &str) -> Wheel {
        Wheel {
            rows: Err(why.to_owned()),
        }
    }

    /// Runs the wheel bench through cargo and parses its alternated summary
    /// (5 rounds of wheel, heap, btree). The criterion filter matches none of
    /// criterion's own measurements, which take minutes; run
    /// `cargo bench -p rotary-benches --bench wheel` for those.
    pub(crate) fn run() -> Wheel {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(std::path::Path::new("."));
        let out = Command::new(cargo)
            .args(["bench", "-p", "rotary-benches", "--bench", "wheel", "--"])
            .arg(CRITERION_NONE)
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => return Wheel::skipped(&format!("cargo bench --bench wheel: {}", o.status)),
            Err(e) => return Wheel::skipped(&format!("cannot run cargo: {e}")),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<_> = text.lines().filter_map(summary_row).collect();
        if rows.is_empty() {
            return Wheel::skipped("the wheel bench printed no summary table");
        }
        Wheel { rows: Ok(rows) }
    }
}

/// One row of the wheel bench's summary: `| name | ms | ratio | lo–hi |`.
fn summary_row(line: &str) -> Option<(String, f64, f64, String)> {
    let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
    let [name, ms, ratio, range] = cells.as_slice() else {
        return None;
    };
    Some((
        name.trim().to_owned(),
        ms.trim().parse().ok()?,
        ratio.trim().parse().ok()?,
        range.trim().to_owned(),
    ))
}

/// A criterion filter no benchmark name contains.
const CRITERION_NONE: &str = "only-the-alternated-summary";

/// Workload f, the soak: one rotary run, judged by its
/// own numbers.
pub(crate) struct Soak {
    pub(crate) run: Run,
}

/// RSS may grow at most this much after the warm-up, KiB.
const SOAK_RSS_GROWTH_KIB: f64 = 1024.0;

impl Soak {
    fn get(&self, key: &str) -> Option<f64> {
        self.run.as_ref().ok()?.get(key)?.parse().ok()
    }

    /// (seconds, RSS KiB, open fds) once a second.
    fn series(&self) -> Vec<(f64, f64, f64)> {
        let Some(series) = self.run.as_ref().ok().and_then(|m| m.get("series")) else {
            return Vec::new();
        };
        series
            .split(',')
            .filter_map(|p| {
                let mut it = p.split(':').map(|v| v.parse::<f64>().ok());
                Some((it.next()??, it.next()??, it.next()??))
            })
            .collect()
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n| workload | metric | rotary | target | result |\n|---|---|---:|---|---|"
        );
        let title = "f. soak: C=32, max_age 20 ms (max_connections 64), GET 5 B";
        if let Err(e) = &self.run {
            let _ = writeln!(
                s,
                "| {title} | all | not measured: {} | | not measured |",
                e.replace('|', "/")
            );
            return s;
        }
        let v = |k: &str| self.get(k);
        let judge = |ok: Option<bool>| match ok {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "not measured",
        };
        let show = |x: Option<f64>| x.map_or("—".to_owned(), |x| fmt_num(x, 0));
        let gauges = [
            "gauge_connections",
            "gauge_timers",
            "gauge_queued",
            "gauge_in_flight",
        ]
        .map(v);
        let gauges_zero = gauges
            .iter()
            .try_fold(true, |all, g| g.map(|g| all && g == 0.0));
        let rows: Vec<(String, String, &str, Option<bool>)> = vec![
            (
                format!(
                    "requests completed (asked {}){}",
                    show(v("asked")),
                    if v("bounded") == Some(1.0) {
                        ", stopped by the time bound"
                    } else {
                        ""
                    }
                ),
                show(v("requests")),
                "",
                None,
            ),
            (
                "wall s".into(),
                v("wall_s").map_or("—".into(), |x| format!("{x:.1}")),
                "",
                None,
            ),
            ("connections opened".into(), show(v("opened")), "", None),
            (
                "failed requests".into(),
                show(v("failed_total")),
                "= 0",
                v("failed_total").map(|f| f == 0.0),
            ),
            (
                "RSS at the end − RSS after warm-up (10 % of the requests), KiB".into(),
                show(v("rss_growth_kib")),
                "≤ 1024",
                v("rss_growth_kib").map(|g| g <= SOAK_RSS_GROWTH_KIB),
            ),
            (
                "RSS after warm-up → at the end, KiB".into(),
                format!("{} → {}", show(v("rss_warm_kib")), show(v("rss_end_kib"))),
                "",
                None,
            ),
            (
                "open fds at the start → at the end".into(),
                format!("{} → {}", show(v("fds_start")), show(v("fds_end"))),
                "equal",
                v("fds_start").zip(v("fds_end")).map(|(a, b)| a == b),
            ),
            (
                "engine gauges after drain: connections, timers, queued, in flight".into(),
                gauges.map(show).join(", "),
                "all 0",
                gauges_zero,
            ),
        ];
        for (metric, value, target, ok) in rows {
            let verdict = if target.is_empty() { "" } else { judge(ok) };
            let _ = writeln!(s, "| {title} | {metric} | {value} | {target} | {verdict} |");
        }
        s
    }

    /// RSS (MiB, left axis) and open fds (right axis) over the run's seconds.
    pub(crate) fn svg(&self) -> String {
        let series = self.series();
        let (left, top, w, h) = (70.0, 40.0, 760.0, 260.0);
        let t_max = series.iter().map(|p| p.0).fold(1.0f64, f64::max);
        let rss_max = series.iter().map(|p| p.1 / 1024.0).fold(1.0f64, f64::max) * 1.1;
        let fd_max = series.iter().map(|p| p.2).fold(1.0f64, f64::max) * 1.1;
        let x = |t: f64| left + w * t / t_max;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
            left + w + 70.0,
            top + h + 60.0
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">Soak: rotary VmRSS (blue, MiB, left) and open fds (orange, right), sampled every second</text>"#
        );
        for i in 0..=4 {
            let f = f64::from(i) / 4.0;
            let y = top + h - h * f;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" fill="#1f77b4">{:.1}</text><text x="{}" y="{:.1}" fill="#ff7f0e">{:.0}</text>"##,
                left + w,
                left - 6.0,
                y + 4.0,
                rss_max * f,
                left + w + 6.0,
                y + 4.0,
                fd_max * f
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds (0 to {t_max:.0})</text>"#,
            left + w / 2.0,
            top + h + 20.0
        );
        for (colour, pick, max) in [("#1f77b4", 1usize, rss_max), ("#ff7f0e", 2usize, fd_max)] {
            let points: Vec<String> = series
                .iter()
                .map(|p| {
                    let v = if pick == 1 { p.1 / 1024.0 } else { p.2 };
                    format!("{:.1},{:.1}", x(p.0), top + h - h * v / max)
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        if series.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{left}" y="{}" fill="#d0342c">not measured</text>"##,
                top + h / 2.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// What the report says about the run itself.
pub(crate) struct Header {
    pub(crate) machine: String,
    pub(crate) revision: String,
    pub(crate) server: String,
    pub(crate) rounds: usize,
    pub(crate) quick: bool,
    pub(crate) elapsed: Duration,
    pub(crate) notes: Vec<String>,
}

fn fmt_num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // Thousands separators for the integer part.
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn cell(c: &Cell, decimals: usize) -> String {
    match c {
        Ok(v) => fmt_num(*v, decimals),
        Err(e) => format!("not measured: {}", e.replace('|', "/")),
    }
}

fn verdict(pass: Option<bool>, target: Option<Target>) -> &'static str {
    match (target, pass) {
        (None, _) => "",
        (Some(_), Some(true)) => "pass",
        (Some(_), Some(false)) => "**miss**",
        (Some(_), None) => "not measured",
    }
}

pub(crate) fn markdown(h: &Header, outcomes: &[Outcome], wheel: Option<&Wheel>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## rotary against hyper, wrk, OpenSSL, reqwest and ureq\n"
    );
    let _ = writeln!(s, "- machine: {}", h.machine);
    let _ = writeln!(s, "- rotary: {}", h.revision);
    let _ = writeln!(s, "- server: {}", h.server);
    let _ = writeln!(
        s,
        "- crypto provider (rotary, hyper, reqwest, ureq): {}; blocking clients: {}",
        rotary::CRYPTO_PROVIDER,
        crate::blocking::VERSIONS
    );
    let _ = writeln!(
        s,
        "- {} rounds, clients alternated (A B, B A, ...), medians; run took {:.0} s{}",
        h.rounds,
        h.elapsed.as_secs_f64(),
        if h.quick {
            " (--quick: smoke numbers only)"
        } else {
            ""
        }
    );
    for n in &h.notes {
        let _ = writeln!(s, "- {n}");
    }
    let mut labels = None;
    for o in outcomes {
        if labels != Some(o.labels) {
            labels = Some(o.labels);
            let (a, b) = o.labels;
            let _ = writeln!(
                s,
                "\n| workload | metric | {a} | {b} | {a} / {b} | rounds | target | result |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---|");
        }
        for l in &o.lines {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                o.title,
                l.row.metric,
                cell(&l.a, l.row.decimals),
                cell(&l.b, l.row.decimals),
                match (l.ratio, l.row.target) {
                    (None, _) => "—".into(),
                    // Three decimals where a target is judged, so a miss by a
                    // hair does not print as the target itself.
                    (Some(r), Some(_)) => format!("{r:.3}"),
                    (Some(r), None) => format!("{r:.2}"),
                },
                l.rounds
                    .map_or(String::new(), |(lo, hi)| format!("{lo:.2}–{hi:.2}")),
                l.row.target.map_or(String::new(), Target::describe),
                verdict(l.pass, l.row.target),
            );
        }
    }
    if let Some(w) = wheel {
        let _ = writeln!(
            s,
            "\n| workload | structure (1M timers: insert, cancel half, expire rest) | median ms | / btree_map | rounds | target | result |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|---|");
        match &w.rows {
            Ok(rows) => {
                for (name, ms, ratio, range) in rows {
                    let (target, result) = if name == "wheel" {
                        ("≤ 0.3×", if *ratio <= 0.3 { "pass" } else { "**miss**" })
                    } else {
                        ("", "")
                    };
                    let _ = writeln!(
                        s,
                        "| e. timer wheel | {name} | {ms:.1} | {ratio:.2} | {range} | {target} | {result} |"
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "| e. timer wheel | wheel | not measured: {e} | — | | ≤ 0.3× | not measured |"
                );
            }
        }
    }
    s
}

/// Horizontal bars of every charted ratio, a line at 1.0 and a tick at each
/// target; green passes, red misses, grey has no target.
pub(crate) fn svg(outcomes: &[Outcome], wheel: Option<&Wheel>) -> String {
    struct Bar {
        label: String,
        ratio: Option<f64>,
        target: Option<f64>,
        pass: Option<bool>,
    }
    let mut bars = Vec::new();
    for o in outcomes {
        let (a, b) = o.labels;
        for l in o.lines.iter().filter(|l| l.row.chart) {
            let target = match l.row.target {
                Some(Target::AtMost(r) | Target::AtLeast(r)) => Some(r),
                _ => None,
            };
            // An absolute target (connections opened) has no ratio tick, but
            // its bar still shows whether it passed.
            bars.push(Bar {
                label: format!("{} — {} ({a}/{b})", o.title, l.row.metric),
                ratio: l.ratio,
                target,
                pass: l.pass,
            });
        }
    }
    if let Some(Wheel { rows: Ok(rows) }) = wheel {
        for (name, _, ratio, _) in rows.iter().filter(|(n, ..)| n != "btree_map") {
            let is_wheel = name == "wheel";
            bars.push(Bar {
                label: format!("e. timer wheel — {name} / btree_map"),
                ratio: Some(*ratio),
                target: is_wheel.then_some(0.3),
                pass: is_wheel.then_some(*ratio <= 0.3),
            });
        }
    }
    let max = bars
        .iter()
        .filter_map(|b| b.ratio)
        .fold(2.0f64, f64::max)
        .min(10.0);
    let (label_w, plot_w, row_h, top) = (520.0, 420.0, 22.0, 40.0);
    let width = label_w + plot_w + 80.0;
    let height = top + row_h * bars.len() as f64 + 30.0;
    let x = |r: f64| label_w + plot_w * (r.min(max) / max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">rotary / hyper ratios (medians; tick = target; green pass, red miss, grey no target)</text>"#
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 14.0,
            escape(&b.label)
        );
        match b.ratio {
            Some(r) => {
                let colour = match b.pass {
                    Some(true) => "#2e9d4a",
                    Some(false) => "#d0342c",
                    None => "#9a9a9a",
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}">{r:.2}</text>"#,
                    y + 3.0,
                    x(r) - label_w,
                    row_h - 6.0,
                    x(r) + 4.0,
                    y + 14.0
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#d0342c">not measured</text>"##,
                    label_w + 4.0,
                    y + 14.0
                );
            }
        }
        if let Some(t) = b.target {
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="black" stroke-width="2"/>"#,
                x(t),
                y + 1.0,
                y + row_h - 1.0
            );
        }
    }
    let bottom = top + row_h * bars.len() as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{bottom:.1}" stroke="#444" stroke-dasharray="4 3"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle">1.0</text><text x="{2:.1}" y="{1:.1}" text-anchor="end">{max:.1}</text>"##,
        x(1.0),
        bottom + 16.0,
        label_w + plot_w
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(user: &str, sys: &str) -> Run {
        Ok(BTreeMap::from([
            ("user_us_per_req".to_owned(), user.to_owned()),
            ("sys_us_per_req".to_owned(), sys.to_owned()),
        ]))
    }

    #[test]
    fn the_round_range_pairs_each_round_with_its_own_partner() {
        let a = [run("4", "1"), run("6", "1"), run("5", "1")];
        let b = [run("10", "1"), run("10", "1"), run("8", "1")];
        let user = Value::Key("user_us_per_req");
        assert_eq!(round_range(&a, &b, user), Some((0.4, 0.625)));
        // Medians pair 5 with 10 (0.5), inside that range.
        assert_eq!((median(&a, user), median(&b, user)), (Ok(5.0), Ok(10.0)));
        assert_eq!(
            round_range(&a, &b, Value::TotalCpu),
            Some((5.0 / 11.0, 6.0 / 9.0))
        );
    }

    #[test]
    fn the_wheel_summary_rows_are_parsed_and_headings_skipped() {
        let row = summary_row("| wheel | 248.4 | 0.25 | 0.23–0.29 |");
        assert_eq!(row, Some(("wheel".into(), 248.4, 0.25, "0.23–0.29".into())));
        assert_eq!(summary_row("|---|---:|---:|---:|"), None);
        assert_eq!(
            summary_row("| structure | median ms | / btree_map | rounds |"),
            None
        );
        // The summary of an older bench, without the rounds column.
        assert_eq!(summary_row("| wheel | 248.4 | 0.25 |"), None);
    }

    #[test]
    fn a_failed_round_leaves_no_range_and_no_median() {
        let a = [run("4", "1"), Err("hyper: connection refused".into())];
        let b = [run("10", "1"), run("10", "1")];
        let user = Value::Key("user_us_per_req");
        assert_eq!(round_range(&a, &b, user), None);
        let err = median(&a, user).unwrap_err();
        assert!(
            err.contains("connection refused") && err.contains("1 of 2"),
            "{err}"
        );
        // One round is no spread; a zero denominator is no ratio.
        assert_eq!(round_range(&a[..1], &b[..1], user), None);
        let zero = [run("1", "0"), run("1", "0")];
        assert_eq!(
            round_range(&zero, &[run("2", "0"), run("0", "0")], user),
            None
        );
        assert_eq!(
            round_range(&zero, &[run("2", "0"), run("4", "0")], user),
            Some((0.25, 0.5))
        );
    }

    fn p99(us: &str) -> Run {
        Ok(BTreeMap::from([("p99_us".to_owned(), us.to_owned())]))
    }

    #[test]
    fn expiry_is_judged_against_the_reference_round_by_round() {
        // Expiry doubles the p99 in each round; the reference run's side
        // handshakes make it 1.9× and 2.0×: 2.0 ≤ 1.1 × 1.95, a pass.
        let expiry = (vec![p99("1000"), p99("1600")], vec![p99("500"), p99("800")]);
        let reference = (vec![p99("950"), p99("1400")], vec![p99("500"), p99("700")]);
        let o = expiry_against_reference(&expiry, &reference);
        let line = &o.lines[0];
        assert_eq!(line.a, Ok(2.0));
        assert_eq!(line.b, Ok(2.0)); // the upper of two medians: 1.9, 2.0
        assert_eq!(line.pass, Some(true));
        // Three times the p99 against a reference of two: a miss.
        let worse = (vec![p99("1500"), p99("2400")], vec![p99("500"), p99("800")]);
        let o = expiry_against_reference(&worse, &reference);
        assert_eq!(o.lines[0].pass, Some(false));
        // A failed run leaves the verdict unmeasured, with its reason.
        let broken = (
            vec![p99("1000"), Err("nginx died".into())],
            expiry.1.clone(),
        );
        let o = expiry_against_reference(&broken, &reference);
        assert_eq!(o.lines[0].pass, None);
        assert!(o.lines[0].a.as_ref().unwrap_err().contains("nginx died"));
    }

    #[test]
    fn the_soak_is_judged_by_growth_fds_and_gauges() {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("requests", "1000000"),
            ("asked", "1000000"),
            ("failed_total", "0"),
            ("rss_growth_kib", "300"),
            ("rss_warm_kib", "9000"),
            ("rss_end_kib", "9300"),
            ("fds_start", "5"),
            ("fds_end", "5"),
            ("gauge_connections", "0"),
            ("gauge_timers", "0"),
            ("gauge_queued", "0"),
            ("gauge_in_flight", "0"),
            ("series", "0.0:9000:5,1.0:9100:37,2.0:9300:5"),
        ] {
            m.insert(k.to_owned(), v.to_owned());
        }
        let soak = Soak { run: Ok(m.clone()) };
        let md = soak.markdown();
        assert_eq!(md.matches("| pass |").count(), 4, "{md}");
        assert_eq!(soak.series().len(), 3);
        assert!(soak.svg().contains("<polyline"));
        m.insert("fds_end".into(), "6".into());
        m.insert("rss_growth_kib".into(), "2048".into());
        let md = Soak { run: Ok(m) }.markdown();
        assert_eq!(md.matches("**miss**").count(), 2, "{md}");
        let md = Soak {
            run: Err("nginx died".into()),
        }
        .markdown();
        assert!(md.contains("not measured: nginx died"), "{md}");
    }
}
