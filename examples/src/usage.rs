//! What this process has used: CPU time and peak RSS from
//! `getrusage(RUSAGE_SELF)`, current RSS from `/proc/self/status`.

/// CPU time and peak resident set size of this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rusage {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// Peak RSS in KiB (Linux reports `ru_maxrss` in KiB).
    pub max_rss_kib: u64,
}

/// `getrusage(RUSAGE_SELF)`; zeros if the call fails.
pub fn rusage() -> Rusage {
    // SAFETY: `getrusage` only writes the `rusage` struct we pass, which is
    // plain old data and may start zeroed.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (rc, ru)
    };
    if rc != 0 {
        return Rusage::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Rusage {
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// Current resident set size in KiB (`VmRSS` in `/proc/self/status`);
/// `None` where there is no procfs.
pub fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_memory() {
        assert!(rusage().max_rss_kib > 0);
        if cfg!(target_os = "linux") {
            assert!(vm_rss_kib().unwrap_or(0) > 0);
        }
    }
}
