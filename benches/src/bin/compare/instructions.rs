//! `compare --instructions`: marginal instructions per request under
//! callgrind, the number user CPU is judged by.
//!
//! Each client runs twice under `valgrind --tool=callgrind`, with a short and
//! a long measured window. Both runs pay the same set-up (process start, TLS
//! config, C handshakes, warm-up, shutdown), so the difference of their total
//! instruction counts over the difference of their completed requests is what
//! one more request costs, free of set-up. Instruction counts do not move with
//! the machine's load as times do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::report::Run;

/// The two window lengths, ms.
pub(crate) const SHORT_MS: u64 = 1000;
pub(crate) const LONG_MS: u64 = 3000;

/// valgrind's binary: `$ROTARY_VALGRIND`, `valgrind` on `PATH`, or
/// `/usr/bin/valgrind`.
pub(crate) fn find_valgrind() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROTARY_VALGRIND") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("valgrind"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            let p = PathBuf::from("/usr/bin/valgrind");
            p.is_file().then_some(p)
        })
}

/// The words valgrind puts before a client's own arguments: callgrind,
/// its output file in `dir` (not the working directory), no cache simulation.
pub(crate) fn wrapper(valgrind: &Path, dir: &Path) -> Vec<String> {
    vec![
        valgrind.display().to_string(),
        "--tool=callgrind".into(),
        format!(
            "--callgrind-out-file={}",
            dir.join("callgrind.out.%p").display()
        ),
    ]
}

/// The instruction count callgrind prints at exit (`==pid== Collected : N`).
pub(crate) fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once("Collected :")?;
        rest.trim().parse().ok()
    })
}

/// One client's marginal instructions per request from its short and long
/// run (each the `RESULT` keys plus `instructions`), as a run with the key
/// `instr_per_req`.
pub(crate) fn marginal(short: &Run, long: &Run) -> Run {
    let (short, long) = (short.as_ref()?, long.as_ref().map_err(Clone::clone)?);
    let get = |m: &BTreeMap<String, String>, k: &str| -> Result<f64, String> {
        m.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("the run did not report {k}"))
    };
    let requests = get(long, "completed")? - get(short, "completed")?;
    let instructions = get(long, "instructions")? - get(short, "instructions")?;
    if requests < 1.0 {
        return Err(format!(
            "the long run completed no more requests than the short one ({requests})"
        ));
    }
    Ok(BTreeMap::from([
        (
            "instr_per_req".to_owned(),
            format!("{:.0}", instructions / requests),
        ),
        ("marginal_requests".to_owned(), format!("{requests:.0}")),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(completed: u64, instructions: u64) -> Run {
        Ok(BTreeMap::from([
            ("completed".to_owned(), completed.to_string()),
            ("instructions".to_owned(), instructions.to_string()),
        ]))
    }

    #[test]
    fn the_set_up_cancels_in_the_difference_of_two_windows() {
        // 50M of set-up, then 18k per request.
        let short = run(1_000, 50_000_000 + 1_000 * 18_000);
        let long = run(3_500, 50_000_000 + 3_500 * 18_000);
        let m = marginal(&short, &long).expect("a marginal count");
        assert_eq!(m["instr_per_req"], "18000");
        assert_eq!(m["marginal_requests"], "2500");
        assert!(marginal(&long, &long).is_err());
        let failed: Run = Err("valgrind: not installed".into());
        assert_eq!(marginal(&failed, &long), failed);
    }

    #[test]
    fn callgrinds_count_is_read_from_its_exit_summary() {
        let stderr = "==41== Callgrind, a call-graph generating cache profiler\n\
                      ==41== Events    : Ir\n==41== Collected : 123456789\n==41==\n\
                      ==41== I   refs:      123,456,789\n";
        assert_eq!(collected(stderr), Some(123_456_789));
        assert_eq!(collected("ERROR something else\n"), None);
    }
}
