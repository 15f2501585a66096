//! Logs and errors carry no secrets: the userinfo and the query of URIs
//! rotary did not build (the caller's, a server's `Location`) never reach a
//! log line or an error message. Pre-signed object-storage URLs carry their
//! signature in the query; a runner following a redirect to one must not
//! write it to its log.
//!
//! This file installs a process-wide `log` logger that keeps every record,
//! so it holds the tests that read it and nothing else.

mod driver;
mod support;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use driver::*;
use rotary::{Error, Event, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

/// The secret every URI below carries, in its userinfo and its query.
const SECRET: &str = "hunter2-s3cr3t";

/// Every log record of the process, formatted as `level target: message`.
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
    fn flush(&self) {}
}

fn captured() -> &'static Captured {
    static LOGGER: OnceLock<&'static Captured> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static Captured = Box::leak(Box::new(Captured(Mutex::new(Vec::new()))));
        log::set_logger(logger).expect("the only logger of this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        logger
    })
}

fn lines() -> Vec<String> {
    captured()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the secret: {text}");
}

#[test]
fn redirect_hops_and_their_errors_are_logged_without_userinfo_or_query() {
    captured();
    let server = TestServer::plain(|req, _| {
        let port = req
            .header("host")
            .and_then(|h| h.rsplit(':').next())
            .unwrap_or("0");
        let at = |path: &str| {
            format!("http://user:{SECRET}@127.0.0.1:{port}{path}?X-Amz-Signature={SECRET}")
        };
        match req.path() {
            // A followed hop to a pre-signed URL with userinfo.
            "/start" => Reply::status(302).header("Location", &at("/object")),
            "/object" => Reply::ok("the object"),
            // A loop back to the same signed URL.
            "/loop" => Reply::status(302).header("Location", &at("/loop")),
            // A target no request can go to.
            "/bad" => Reply::status(302).header(
                "Location",
                &format!("ftp://user:{SECRET}@files.test/x?sig={SECRET}"),
            ),
            // A Location that is no URI at all.
            "/garbage" => {
                Reply::status(302).header("Location", &format!("http://[::1?sig={SECRET}"))
            }
            _ => Reply::status(404),
        }
    });
    let mut engine = plain_engine(|_| {});
    let port = server.addr().port();
    let url = |path: &str| format!("http://user:{SECRET}@127.0.0.1:{port}{path}?token={SECRET}");
    let follow = RequestOptions::default().follow_redirects(5);
    let ok = engine.submit(get(&url("/start")), follow);
    let looped = engine.submit(get(&url("/loop")), follow);
    let bad = engine.submit(get(&url("/bad")), follow);
    let garbage = engine.submit(get(&url("/garbage")), follow);
    let out = finish(&mut engine, &[ok, looped, bad, garbage], T);

    let Event::Response {
        response,
        served_by,
        ..
    } = out.event(ok)
    else {
        panic!("{:?}", out.event(ok));
    };
    assert_eq!(response.body(), "the object");
    // The host still gets the URI it asked for, whole: only what rotary
    // writes to logs and errors is redacted.
    let target = served_by.redirected_to.as_ref().expect("redirected");
    assert!(target.to_string().contains(SECRET));
    for id in [looped, bad, garbage] {
        let err = out.error(id);
        assert!(matches!(err, Error::Redirect(_)), "{err:?}");
        assert_no_secret("an error's Display", &err.to_string());
        assert_no_secret("an error's Debug", &format!("{err:?}"));
        assert!(err.to_string().contains("[redacted]"), "{err}");
    }
    assert_drained(&mut engine);

    let log = lines();
    assert!(
        log.iter()
            .any(|l| l.contains("follows a 302 to http://[redacted]@127.0.0.1")),
        "the hop is logged: {log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("redirect loop")), "{log:#?}");
    for line in &log {
        assert_no_secret("a log line", line);
    }
}
