//! The progress bar of `-#` (and of `-o`/`-T` on a terminal): bytes so far,
//! the total when known, and the rate, redrawn at most every 200 ms on one
//! stderr line, as curl draws its own.

use std::time::{Duration, Instant};

use rotary::Progress;

use crate::args::show;

/// Draws one transfer's progress.
pub(super) struct Bar {
    start: Instant,
    drawn: Option<Instant>,
}

impl Bar {
    pub(super) fn new() -> Bar {
        Bar {
            start: Instant::now(),
            drawn: None,
        }
    }

    /// The line for a transfer's progress, if it is time for one (`last`:
    /// the final one): the upload's until a response body arrives.
    pub(super) fn of(&mut self, p: &Progress, last: bool) -> Option<String> {
        let uploading = p.send_total.is_some_and(|t| t > 0) && p.received == 0;
        match uploading {
            true => self.line(p.sent, p.send_total, last),
            false => self.line(p.received, p.receive_total, last),
        }
    }

    /// The line for `done` of `total` bytes, if it is time for one.
    pub(super) fn line(&mut self, done: u64, total: Option<u64>, last: bool) -> Option<String> {
        let now = Instant::now();
        if !last
            && self
                .drawn
                .is_some_and(|d| now - d < Duration::from_millis(200))
        {
            return None;
        }
        self.drawn = Some(now);
        let secs = (now - self.start).as_secs_f64().max(1e-3);
        let rate = size(done as f64 / secs);
        let line = match total.filter(|&t| t > 0) {
            Some(t) => {
                let pct = (done as f64 * 100.0 / t as f64).min(100.0);
                let filled = (pct / 5.0) as usize;
                format!(
                    "\r[{:<20}] {pct:5.1}%  {} of {}  {rate}/s  {}",
                    "#".repeat(filled),
                    size(done as f64),
                    size(t as f64),
                    show(now - self.start)
                )
            }
            None => format!(
                "\r{}  {rate}/s  {}",
                size(done as f64),
                show(now - self.start)
            ),
        };
        Some(line)
    }
}

/// Bytes as curl shows them: B, KiB, MiB, GiB with one decimal.
pub(super) fn size(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit + 1 < UNITS.len() {
        n /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n:.0} B"),
        _ => format!("{n:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_curls() {
        assert_eq!(size(512.0), "512 B");
        assert_eq!(size(1536.0), "1.5 KiB");
        assert_eq!(size(256.0 * 1024.0 * 1024.0), "256.0 MiB");
    }

    #[test]
    fn the_bar_shows_the_share_done_and_is_not_redrawn_within_200_ms() {
        let mut bar = Bar::new();
        let line = bar.line(50, Some(100), false).expect("first draw");
        assert!(
            line.contains(" 50.0%") && line.contains("50 B of 100 B"),
            "{line}"
        );
        assert!(bar.line(60, Some(100), false).is_none());
        assert!(
            bar.line(100, Some(100), true).is_some(),
            "the last line is always drawn"
        );
    }
}
