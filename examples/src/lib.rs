//! The logic of rotary's example programs, one module per program, plus what
//! they share: a local coordinator that rotates its certificate, run-time
//! PKI, a `git clone` stand-in, flag parsing and resource readers.
//!
//! Each program in `examples/*.rs` is a thin `main` around
//! `<module>::main_with_args`, which returns the exit code and writes through
//! an [`Output`], so the integration tests run the programs in-process.
#![warn(missing_docs, unreachable_pub)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

pub mod args;
pub mod coordinator;
pub mod fetch;
pub mod git;
pub mod loadgen;
pub mod pki;
/// The README's runner sketch ("Writing a runner"), line for line: a test
/// keeps the two identical and runs it against the bundled coordinator.
pub mod readme_runner;
pub mod rotation;
pub mod runner;
pub mod usage;

/// Where a program writes: stdout and stderr, or buffers in tests. Clone it
/// freely; every clone writes to the same place, whole lines at a time.
#[derive(Clone)]
pub struct Output {
    out: Arc<Mutex<dyn Write + Send>>,
    err: Arc<Mutex<dyn Write + Send>>,
}

/// What a captured [`Output`] received.
#[derive(Clone, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A writer that panicked mid-line leaves at worst a torn line.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Output {
    /// The process's stdout and stderr.
    pub fn stdio() -> Output {
        Output {
            out: Arc::new(Mutex::new(io::stdout())),
            err: Arc::new(Mutex::new(io::stderr())),
        }
    }

    /// Buffers, read back through the returned [`Captured`].
    pub fn capture() -> (Output, Captured) {
        let c = Captured::default();
        let o = Output {
            out: Arc::new(Mutex::new(Shared(c.out.clone()))),
            err: Arc::new(Mutex::new(Shared(c.err.clone()))),
        };
        (o, c)
    }

    /// One line on stdout.
    pub fn line(&self, s: impl AsRef<str>) {
        let mut w = lock(&self.out);
        let _ = writeln!(w, "{}", s.as_ref());
        let _ = w.flush();
    }

    /// Raw bytes on stdout (a response body).
    pub fn bytes(&self, b: &[u8]) {
        let _ = self.try_bytes(b);
    }

    /// Raw bytes on stdout, saying whether they were written (a closed
    /// pipe, a full disk behind a redirect).
    pub fn try_bytes(&self, b: &[u8]) -> io::Result<()> {
        let mut w = lock(&self.out);
        w.write_all(b)?;
        w.flush()
    }

    /// Text on stderr without a newline (a progress bar redrawn with `\r`).
    pub fn err_part(&self, s: impl AsRef<str>) {
        let mut w = lock(&self.err);
        let _ = write!(w, "{}", s.as_ref());
        let _ = w.flush();
    }

    /// One line on stderr.
    pub fn err_line(&self, s: impl AsRef<str>) {
        let mut w = lock(&self.err);
        let _ = writeln!(w, "{}", s.as_ref());
        let _ = w.flush();
    }
}

impl Captured {
    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.out)).into_owned()
    }
    /// Everything written to stdout so far, as bytes (a binary body).
    pub fn stdout_bytes(&self) -> Vec<u8> {
        lock(&self.out).clone()
    }
    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.err)).into_owned()
    }
}

/// A failure a program reports: one line for stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit code (never 0).
    pub code: i32,
    /// What went wrong, one line a user can act on.
    pub message: String,
}

impl Failure {
    /// A failure with exit code `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Bad flags or arguments: exit code 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(2, message)
    }
}

/// Run a program body: `Ok(code)` is returned as is; a [`Failure`] prints
/// one line, `<program>: <message>`, on stderr and returns its code.
pub fn finish(program: &str, out: &Output, result: Result<i32, Failure>) -> i32 {
    match result {
        Ok(code) => code,
        Err(f) => {
            if f.code == 2 {
                out.err_line(format!("{program}: {} (see --help)", f.message));
            } else {
                out.err_line(format!("{program}: {}", f.message));
            }
            f.code
        }
    }
}

/// A scratch directory under the system temp dir, removed with its contents
/// on drop: created exclusively with a random name and mode 0700, so that
/// the CA files a program writes there for the engine to trust can neither
/// land in a directory someone else made nor be swapped by another user.
pub struct TempDir {
    dir: tempfile::TempDir,
}

impl TempDir {
    /// Create `<tmp>/rotary-<what>-<random>`.
    pub fn new(what: &str) -> io::Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rotary-{what}-"))
            .tempdir()?;
        Ok(TempDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}
