//! Running one program of a job (a step's `bash`, a `git` command) in a
//! process group of its own: its output (stdout and stderr) is handed on
//! as it comes, through a bounded channel, so a chatty program waits for
//! the runner rather than filling its memory; a deadline, a cancel from the
//! coordinator or a signal ends the whole group (SIGTERM, then SIGKILL
//! after a grace), and so does the step's end (nothing it started in the
//! background outlives it).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the runner looks up from a running program.
const SLICE: Duration = Duration::from_millis(20);
/// Between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output may still arrive once the program exited (something
/// it started in the background may hold the pipe).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Why the runner ended a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its deadline passed.
    Timeout,
    /// The coordinator canceled the job.
    Canceled,
    /// The runner is stopping (the signal's name).
    Signal(String),
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code (a signal's death is 128+N, as in a shell).
    Exited(i32),
    /// The runner ended it.
    Stopped(Stop),
}

/// What the runner does while a program runs.
pub(crate) trait Watch {
    /// Output arrived.
    fn output(&mut self, data: &[u8]);
    /// Called every few milliseconds: a reason to end the program, if any.
    fn tick(&mut self) -> Option<Stop>;
}

/// Run `cmd` until it ends, `deadline` passes or `watch` says stop.
///
/// # Errors
/// The program cannot be started.
pub(crate) fn run(
    mut cmd: Command,
    deadline: Instant,
    watch: &mut dyn Watch,
) -> Result<Ended, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pgid = i32::try_from(child.id()).unwrap_or(0);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16);
    let mut readers = 0;
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let mut open = readers > 0;
    let mut status = None;
    let mut exited_at = None;
    let mut stop: Option<Stop> = None;
    let mut termed_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        if open {
            match rx.recv_timeout(SLICE) {
                Ok(data) => watch.output(&data),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            std::thread::sleep(SLICE);
        }
        if status.is_none() {
            status = child
                .try_wait()
                .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
            if status.is_some() {
                exited_at = Some(Instant::now());
                // Whatever it left running in the background goes too.
                signal_group(pgid, libc::SIGKILL);
            }
        }
        if status.is_some() && (!open || exited_at.is_some_and(|t| t.elapsed() >= DRAIN_GRACE)) {
            break;
        }
        if stop.is_none() && status.is_none() {
            stop = if Instant::now() >= deadline {
                Some(Stop::Timeout)
            } else {
                watch.tick()
            };
            if stop.is_some() {
                signal_group(pgid, libc::SIGTERM);
                termed_at = Some(Instant::now());
            }
        }
        if !killed && termed_at.is_some_and(|t| t.elapsed() >= KILL_GRACE) {
            signal_group(pgid, libc::SIGKILL);
            killed = true;
        }
    }
    // Output that came after the exit, within the grace.
    while let Ok(data) = rx.try_recv() {
        watch.output(&data);
    }
    if let Some(s) = stop {
        return Ok(Ended::Stopped(s));
    }
    let code = status.map_or(1, |s| {
        use std::os::unix::process::ExitStatusExt;
        s.code()
            .or_else(|| s.signal().map(|n| 128 + n))
            .unwrap_or(1)
    });
    Ok(Ended::Exited(code))
}

/// Send `sig` to process group `pgid` (never to group 0 or 1).
fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) takes plain integers and touches no memory; a
        // negative pid names the group this module made for the child.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        out: Vec<u8>,
        stop_after: Option<Instant>,
    }

    impl Watch for Collect {
        fn output(&mut self, data: &[u8]) {
            self.out.extend_from_slice(data);
        }
        fn tick(&mut self) -> Option<Stop> {
            self.stop_after
                .filter(|t| Instant::now() >= *t)
                .map(|_| Stop::Canceled)
        }
    }

    fn bash(script: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["--noprofile", "--norc", "-c", script]);
        c
    }

    #[test]
    fn output_and_exit_codes_come_back_and_stops_end_the_whole_group() {
        if std::process::Command::new("bash")
            .arg("-c")
            .arg("true")
            .status()
            .is_err()
        {
            eprintln!("SKIPPED: bash is not installed");
            return;
        }
        let far = Instant::now() + Duration::from_secs(20);
        let mut w = Collect::default();
        let end = run(bash("echo out; echo err >&2; exit 3"), far, &mut w).expect("run");
        assert_eq!(end, Ended::Exited(3));
        let text = String::from_utf8_lossy(&w.out);
        assert!(text.contains("out") && text.contains("err"), "{text}");
        // A deadline ends a sleeper and the child it started, promptly.
        let started = Instant::now();
        let mut w = Collect::default();
        let soon = Instant::now() + Duration::from_millis(100);
        let end = run(bash("sleep 30 & sleep 30; wait"), soon, &mut w).expect("run");
        assert_eq!(end, Ended::Stopped(Stop::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // A stop from the watcher.
        let mut w = Collect {
            stop_after: Some(Instant::now() + Duration::from_millis(50)),
            ..Collect::default()
        };
        let end = run(bash("while :; do echo tick; sleep 0.01; done"), far, &mut w).expect("run");
        assert_eq!(end, Ended::Stopped(Stop::Canceled));
        assert!(String::from_utf8_lossy(&w.out).contains("tick"));
    }
}
