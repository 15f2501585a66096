//! Workload c's physical limit: `openssl s_time -new`, OpenSSL's own
//! client, making one full handshake (and one `GET`) per connection,
//! certificate verified against the run's CA, as rotary does.
//!
//! s_time runs as a child of this client process, so its CPU comes from
//! `getrusage(RUSAGE_CHILDREN)` (user + system), the same measure as the
//! other clients' `RUSAGE_SELF`. It makes one connection at a time.

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::measure::Report;
use crate::ClientArgs;

/// The `openssl` binary, when installed.
pub(crate) fn find_openssl() -> Option<std::path::PathBuf> {
    ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

/// User + system CPU of this process's waited-for children, µs.
fn children_cpu_us() -> f64 {
    // SAFETY: zeroed `rusage` is valid; getrusage writes one we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// `openssl s_time -new` for the run's measure window (whole seconds, at
/// least one); the keys of workload c: requests, cpu_s, req_per_s and
/// CPU µs per handshake.
pub(crate) fn load(a: &ClientArgs) -> Result<Report, String> {
    let openssl = find_openssl().ok_or("openssl is not installed")?;
    let rest = a
        .url
        .strip_prefix("https://")
        .ok_or("s_time: an https:// URL")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let secs = a.schedule.measure.as_secs().max(1);
    let cpu0 = children_cpu_us();
    let t0 = Instant::now();
    let out = Command::new(openssl)
        .args([
            "s_time", "-new", "-tls1_3", "-verify", "1", "-connect", host,
        ])
        .arg("-CAfile")
        .arg(&a.ca)
        .args(["-www", &format!("/{path}"), "-time", &secs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("openssl s_time: {e}"))?;
    let wall = t0.elapsed();
    let cpu_us = children_cpu_us() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "openssl s_time exited with {}: {}",
            out.status,
            err.lines().next().unwrap_or("")
        ));
    }
    // "N connections in 2.00s; M connections/user sec, bytes read B"
    let n: u64 = text
        .lines()
        .find(|l| l.contains("connections in") && l.contains("user sec"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("s_time printed no count: {}", text.trim()))?;
    if n == 0 {
        return Err("s_time made no connection".into());
    }
    let per = cpu_us / n as f64;
    let mut r = Report::default();
    r.put("requests", n)
        .put("failed", 0)
        .put("wall_s", format!("{:.4}", wall.as_secs_f64()))
        .put("req_per_s", format!("{:.1}", n as f64 / wall.as_secs_f64()))
        .put("cpu_s", format!("{:.4}", cpu_us / 1e6))
        // s_time's CPU is not split here: all of it counts as user.
        .put("user_us_per_req", format!("{per:.3}"))
        .put("sys_us_per_req", "0");
    Ok(r)
}
