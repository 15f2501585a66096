//! The practical floor: `wrk -t1 -cC` (one thread, C keep-alive
//! connections, OpenSSL) against the same server, run as a child of this
//! client process so `getrusage(RUSAGE_CHILDREN)` counts wrk's CPU alone.
//!
//! wrk has no warm-up and takes whole seconds, so it runs twice, for a short
//! and a long duration, and the report is the difference of the two: the
//! marginal requests, wall time and CPU of the extra seconds. Process start,
//! the C handshakes and the ramp-up cancel, as a warm-up would remove them.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::measure::Report;
use crate::ClientArgs;

/// wrk's binary: `$ROTARY_WRK`, `wrk` on `PATH`, or `/usr/bin/wrk`.
pub(crate) fn find_wrk() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROTARY_WRK") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("wrk"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin/wrk");
        p.is_file().then_some(p)
    })
}

/// What one wrk run printed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct WrkRun {
    requests: u64,
    /// The duration wrk says it ran, seconds.
    secs: f64,
    /// Non-2xx/3xx responses plus socket errors.
    errors: u64,
    p50_us: f64,
    p99_us: f64,
}

/// A wrk duration or latency (`310.00us`, `1.20ms`, `3.00s`, `1.00m`) in µs.
fn micros(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

/// Parses wrk's `--latency` output; `None` without its summary line.
fn parse(out: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut summary = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "123456 requests in 3.00s, 30.00MB read"
            [n, "requests", "in", t, ..] => {
                run.requests = n.parse().ok()?;
                run.secs = micros(t.trim_end_matches(','))? / 1e6;
                summary = true;
            }
            ["50%", v] => run.p50_us = micros(v)?,
            ["99%", v] => run.p99_us = micros(v)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>().ok()?,
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            ["Socket", "errors:", rest @ ..] => {
                for n in rest.iter().skip(1).step_by(2) {
                    run.errors += n.trim_end_matches(',').parse::<u64>().ok()?;
                }
            }
            _ => {}
        }
    }
    summary.then_some(run)
}

/// CPU of waited-for children (user, system), µs.
fn children_cpu_us() -> (f64, f64) {
    // SAFETY: zeroed `rusage` is valid (plain integers); getrusage writes
    // one into memory we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// Runs wrk for `secs` whole seconds; its parsed output and CPU.
fn run_wrk(wrk: &PathBuf, a: &ClientArgs, secs: u64) -> Result<(WrkRun, f64, f64), String> {
    let (u0, s0) = children_cpu_us();
    let out = Command::new(wrk)
        .args(["-t1", "-c", &a.conns.to_string(), "-d"])
        .arg(format!("{secs}s"))
        .args(["--timeout", "10s", "--latency", &a.url])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| format!("run {}: {e}", wrk.display()))?;
    let (u1, s1) = children_cpu_us();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "wrk exited with {}: {}",
            out.status,
            err.lines().next().unwrap_or("")
        ));
    }
    let run = parse(&text).ok_or_else(|| {
        format!(
            "wrk printed no summary: {}",
            text.lines().next().unwrap_or("")
        )
    })?;
    Ok((run, u1 - u0, s1 - s0))
}

/// The short and the long run's lengths, whole seconds, from the schedule:
/// the short one covers the warm-up, the long one adds at least the window.
fn durations(a: &ClientArgs) -> (u64, u64) {
    let short = a.schedule.warm_min.as_secs_f64().ceil().max(1.0) as u64;
    let extra = a.schedule.measure.as_secs_f64().ceil().max(1.0) as u64;
    (short, short + extra)
}

/// wrk's marginal load numbers, as a `RESULT` with the load-window keys.
pub(crate) fn load(a: &ClientArgs) -> Result<Report, String> {
    if a.close || a.max_age.is_some() || a.side_handshakes > 0.0 {
        return Err("wrk runs keep-alive load only".into());
    }
    let wrk = find_wrk().ok_or("wrk is not installed (apt-get install wrk)")?;
    let (short, long) = durations(a);
    let (s, s_user, s_sys) = run_wrk(&wrk, a, short)?;
    let (l, l_user, l_sys) = run_wrk(&wrk, a, long)?;
    let requests = l.requests.saturating_sub(s.requests);
    let secs = l.secs - s.secs;
    if requests == 0 || secs <= 0.0 {
        return Err(format!(
            "wrk's long run did no more than its short one ({} in {:.2} s, {} in {:.2} s)",
            s.requests, s.secs, l.requests, l.secs
        ));
    }
    if l.errors > 0 {
        return Err(format!(
            "wrk saw {} failed requests (non-2xx or socket errors)",
            l.errors
        ));
    }
    let n = requests as f64;
    let (user, sys) = ((l_user - s_user).max(0.0), (l_sys - s_sys).max(0.0));
    let mut r = Report::default();
    r.put("requests", requests)
        .put("failed", 0)
        .put("failed_total", l.errors + s.errors)
        .put("wall_s", format!("{secs:.4}"))
        .put("req_per_s", format!("{:.1}", n / secs))
        .put("user_us_per_req", format!("{:.3}", user / n))
        .put("sys_us_per_req", format!("{:.3}", sys / n))
        .put("cpu_s", format!("{:.4}", (user + sys) / 1e6))
        // Latencies of the long run as a whole (wrk reports no others).
        .put("p50_us", format!("{:.0}", l.p50_us))
        .put("p99_us", format!("{:.0}", l.p99_us))
        .put("opened", a.conns);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
Running 3s test @ https://127.0.0.1:4433/5
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   380.12us  120.40us   5.01ms   90.12%
    Req/Sec    42.10k     1.20k   44.00k    70.00%
  Latency Distribution
     50%  350.00us
     75%  410.00us
     90%  480.00us
     99%    1.20ms
  126300 requests in 3.00s, 30.11MB read
  Non-2xx or 3xx responses: 2
  Socket errors: connect 0, read 1, write 0, timeout 3
Requests/sec:  42100.00
Transfer/sec:     10.04MB
";

    #[test]
    fn wrk_output_is_parsed_with_its_units() {
        let run = parse(OUT).expect("summary");
        assert_eq!(
            run,
            WrkRun {
                requests: 126_300,
                secs: 3.0,
                errors: 6,
                p50_us: 350.0,
                p99_us: 1200.0,
            }
        );
        assert_eq!(micros("1.50m"), Some(90e6));
        assert_eq!(micros("12"), None);
        assert_eq!(micros("-1.0ms"), None);
        // No summary line (wrk could not connect at all): no run.
        assert_eq!(parse("Running 1s test @ https://x/\n"), None);
    }
}
