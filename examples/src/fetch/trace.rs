//! What `-v` shows besides the engine's events: the request and response
//! heads as `> ` and `< ` lines, and rotary's own log records as `* ` lines.
//!
//! `log` has one logger per process. fetch drives its engine on the thread
//! that runs it, and the engine logs from there, so the logger writes a
//! record to the [`Output`] of the `-v` run on the record's thread and
//! drops it on any other thread: runs side by side (the tests) each see
//! their own engine's records only.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use log::{Level, LevelFilter, Log, Metadata, Record};
use rotary_proto::{Codec, Limits, TargetForm};

use crate::Output;

/// The head of `request` as rotary's codec encodes it on a fresh
/// connection, one `> ` line per line and a bare `>` for the blank one.
/// `file_len`: the body is a file of that length (`-T`, `-d @FILE`), sent
/// in pieces, rather than the request's bytes.
pub(super) fn request_head(request: &http::Request<Bytes>, file_len: Option<u64>) -> Vec<String> {
    let mut wire = BytesMut::new();
    let mut codec = Codec::new(Limits::default());
    let (method, uri, headers) = (request.method(), request.uri(), request.headers());
    let encoded = match file_len {
        Some(n) => codec.start_streaming_request(
            method,
            uri,
            headers,
            Some(n),
            TargetForm::Origin,
            &mut wire,
        ),
        None => codec.send_request(
            method,
            uri,
            headers,
            Some(request.body()),
            TargetForm::Origin,
            &mut wire,
        ),
    };
    if let Err(e) = encoded {
        // The engine refuses the same request and says why.
        return vec![format!("* the request cannot be encoded: {e}")];
    }
    let text = String::from_utf8_lossy(&wire);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines: Vec<String> = head.split("\r\n").map(|l| format!("> {l}")).collect();
    lines.push(">".to_owned());
    lines
}

/// The head of `response` as lines: the status line, each header, and a
/// blank line, each after `prefix` (`"< "` for -v, `""` for -i and -I).
pub(super) fn response_head<B>(response: &http::Response<B>, prefix: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "{prefix}{:?} {}",
        response.version(),
        response.status()
    )];
    for (name, value) in response.headers() {
        lines.push(format!(
            "{prefix}{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    lines.push(prefix.trim_end().to_owned());
    lines
}

struct Sink {
    out: Output,
    start: Instant,
}

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// The process's logger, once fetch installed it.
struct EngineRecords;

static ENGINE_RECORDS: EngineRecords = EngineRecords;

/// Whether fetch's logger is the process's (another may have come first).
static OURS: OnceLock<bool> = OnceLock::new();

fn from_rotary(target: &str) -> bool {
    target == "rotary" || target.starts_with("rotary::") || target.starts_with("rotary_proto")
}

impl Log for EngineRecords {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Debug
            && from_rotary(metadata.target())
            && SINK.with(|s| s.borrow().is_some())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        SINK.with(|s| {
            if let Some(sink) = &*s.borrow() {
                sink.out.err_line(format!(
                    "* {:>7.3}s {}",
                    sink.start.elapsed().as_secs_f64(),
                    record.args()
                ));
            }
        });
    }

    fn flush(&self) {}
}

/// While alive, rotary's debug records logged on this thread go to `out`.
pub(super) struct EngineLog(());

impl EngineLog {
    /// Route this thread's rotary records to `out`, with times since
    /// `start`. `Err` says why they cannot be shown (another logger).
    pub(super) fn start(out: &Output, start: Instant) -> Result<EngineLog, &'static str> {
        let ours = *OURS.get_or_init(|| log::set_logger(&ENGINE_RECORDS).is_ok());
        if !ours {
            return Err("another logger is installed; rotary's log records go there");
        }
        // Raised, never lowered: other threads may be showing records too,
        // and `enabled` filters by thread.
        if log::max_level() < LevelFilter::Debug {
            log::set_max_level(LevelFilter::Debug);
        }
        SINK.with(|s| {
            *s.borrow_mut() = Some(Sink {
                out: out.clone(),
                start,
            })
        });
        Ok(EngineLog(()))
    }
}

impl Drop for EngineLog {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_is_the_codecs_with_host_and_framing() {
        let request = http::Request::post("http://a.test:8080/up?x=1")
            .header("x-one", "1")
            .body(Bytes::from_static(b"hello"))
            .expect("request");
        assert_eq!(
            request_head(&request, None),
            [
                "> POST /up?x=1 HTTP/1.1",
                "> host: a.test:8080",
                "> x-one: 1",
                "> content-length: 5",
                ">"
            ]
        );
        // A file body: its length, not the request's (empty) bytes.
        assert_eq!(
            request_head(&request, Some(67_108_864))[3],
            "> content-length: 67108864"
        );
    }

    #[test]
    fn records_reach_the_output_of_this_threads_run_only() {
        let (out, cap) = Output::capture();
        let shown = EngineLog::start(&out, Instant::now()).expect("logger");
        log::debug!(target: "rotary::engine", "trying 192.0.2.1:443");
        log::debug!(target: "rustls::client", "not ours");
        std::thread::spawn(|| log::debug!(target: "rotary", "another thread"))
            .join()
            .expect("thread");
        drop(shown);
        log::debug!(target: "rotary", "after the run");
        let err = cap.stderr();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("* ") && err.ends_with("s trying 192.0.2.1:443\n"),
            "{err}"
        );
    }
}
