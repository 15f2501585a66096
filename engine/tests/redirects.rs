//! Following redirects: opt-in per request, same-origin hops on the same
//! connection, cross-origin hops without credentials, method and body rules,
//! limits, loops, downgrades, and the total deadline over every hop.

mod driver;
mod support;

use std::time::Duration;

use bytes::Bytes;
use driver::*;
use rotary::{Deadline, Error, Event, RedirectError, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

fn redirect(status: u16, to: &str) -> Reply {
    Reply::status(status).header("location", to)
}

#[test]
fn a_redirect_is_the_response_unless_the_request_follows() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/old" => redirect(302, "/new"),
        _ => Reply::ok("new"),
    });
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(get(&server.url_ip("/old")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).status(), 302);
    assert_eq!(server.requests().len(), 1);
    assert_drained(&mut engine);
}

#[test]
fn a_same_origin_redirect_is_followed_on_the_same_connection() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/a" => redirect(301, "b?x=1").body("moved"),
        _ => Reply::ok("final"),
    });
    let mut engine = plain_engine(|_| {});
    let opts = RequestOptions::default().follow_redirects(5);
    let id = engine.submit(get(&server.url_ip("/a")), opts);
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"final");
    let Event::Response { served_by, .. } = out.event(id) else {
        panic!("{:?}", out.event(id));
    };
    assert_eq!(
        served_by.redirected_to.as_ref().map(|u| u.to_string()),
        Some(server.url_ip("/b?x=1"))
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].target, "/b?x=1");
    assert_eq!(requests[1].conn_id, requests[0].conn_id, "one connection");
    assert_eq!(engine.stats().connections_opened, 1);
    assert_drained(&mut engine);
}

#[test]
fn a_cross_origin_hop_drops_credentials_and_sensitive_headers() {
    let storage = TestServer::plain(|_, _| Reply::ok("blob"));
    let to = storage.url_ip("/blob");
    let coordinator = TestServer::plain(move |_, _| redirect(307, &to));
    let mut engine = plain_engine(|c| {
        c.sensitive_headers = vec![http::HeaderName::from_static("job-token")];
    });
    let req = http::Request::post(coordinator.url_ip("/artifacts"))
        .header("authorization", "Bearer secret")
        .header("cookie", "session=1")
        .header("job-token", "jt")
        .header("x-trace", "kept")
        .body(Bytes::from_static(b"artifact"))
        .expect("request");
    let id = engine.submit(req, RequestOptions::default().follow_redirects(3));
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"blob");
    let seen = coordinator.requests();
    assert_eq!(
        seen[0].header("job-token"),
        Some("jt"),
        "sent to its origin"
    );
    let hop = &storage.requests()[0];
    assert_eq!(hop.method, "POST", "307 keeps the method");
    assert_eq!(hop.body, b"artifact", "and the body");
    for gone in ["authorization", "cookie", "job-token"] {
        assert_eq!(hop.header(gone), None, "{gone} must not leave its origin");
    }
    assert_eq!(hop.header("x-trace"), Some("kept"));
    assert_drained(&mut engine);
}

#[test]
fn see_other_turns_a_post_into_a_get_without_its_body() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/submit" => redirect(303, "/result"),
        _ => Reply::ok(req.method.clone()),
    });
    let mut engine = plain_engine(|_| {});
    let id = engine.submit(
        post(&server.url_ip("/submit"), b"form"),
        RequestOptions::default().follow_redirects(1),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"GET");
    let hop = &server.requests()[1];
    assert!(hop.body.is_empty());
    assert_eq!(hop.header("content-length"), None);
    assert_drained(&mut engine);
}

#[test]
fn too_many_hops_and_loops_are_named_errors() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/loop" => redirect(302, "/loop"),
        p => {
            let n: u32 = p.trim_start_matches("/n").parse().unwrap_or(0);
            redirect(302, &format!("/n{}", n + 1))
        }
    });
    let mut engine = plain_engine(|_| {});
    let opts = RequestOptions::default().follow_redirects(3);
    let chain = engine.submit(get(&server.url_ip("/n0")), opts);
    let looping = engine.submit(get(&server.url_ip("/loop")), opts);
    let out = finish(&mut engine, &[chain, looping], T);
    assert!(
        matches!(
            out.error(chain),
            Error::Redirect(RedirectError::TooMany { max: 3 })
        ),
        "{:?}",
        out.error(chain)
    );
    assert!(
        matches!(
            out.error(looping),
            Error::Redirect(RedirectError::Loop { .. })
        ),
        "{:?}",
        out.error(looping)
    );
    assert_eq!(
        out.error(chain).to_string(),
        "redirect not followed: more than 3 redirects"
    );
    assert_drained(&mut engine);
}

#[test]
fn https_to_http_is_refused_unless_allowed() {
    let plain = TestServer::plain(|_, _| Reply::ok("plain"));
    let to = plain.url_ip("/");
    let (ca, leaf) = ca_and_leaf();
    let secure = TestServer::tls(&leaf, move |_, _| redirect(302, &to));
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let opts = RequestOptions::default().follow_redirects(2);
    let refused = engine.submit(get(&secure.url("/")), opts);
    let allowed = engine.submit(get(&secure.url("/")), opts.allow_https_to_http(true));
    let out = finish(&mut engine, &[refused, allowed], T);
    assert!(
        matches!(
            out.error(refused),
            Error::Redirect(RedirectError::Downgrade { .. })
        ),
        "{:?}",
        out.error(refused)
    );
    assert_eq!(out.response(allowed).body().as_ref(), b"plain");
    assert_eq!(plain.requests().len(), 1);
    assert_drained(&mut engine);
}

#[test]
fn the_total_deadline_covers_every_hop() {
    let slow = TestServer::plain(|_, _| Reply::ok("late").delay(Duration::from_secs(5)));
    let to = slow.url_ip("/");
    let first = TestServer::plain(move |_, _| redirect(302, &to));
    let mut engine = plain_engine(|_| {});
    let deadline = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let id = engine.submit(
        get(&first.url_ip("/")),
        RequestOptions::default()
            .follow_redirects(2)
            .deadline(deadline),
    );
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.error(id).deadline(), Some(Deadline::Total));
    assert!(started.elapsed() >= deadline);
    assert_eq!(slow.requests().len(), 1, "the second hop was sent");
    assert_drained(&mut engine);
}

#[test]
fn a_streamed_response_shows_only_the_final_head() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/a" => redirect(308, "/b").body("not for the host"),
        _ => Reply::ok("streamed"),
    });
    let mut engine = plain_engine(|_| {});
    let opts = RequestOptions::default()
        .follow_redirects(1)
        .streaming(true);
    let id = engine.submit(get(&server.url_ip("/a")), opts);
    let events = run_until(&mut engine, T, |evs| {
        evs.iter()
            .any(|e| e.is_terminal() && e.request_id() == Some(id))
    });
    let mut heads = Vec::new();
    let mut body = Vec::new();
    for e in &events {
        match e {
            Event::Head { response, .. } => heads.push(response.status()),
            Event::Body { data, .. } => body.extend_from_slice(data),
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    assert_eq!(heads, [http::StatusCode::OK]);
    assert_eq!(body, b"streamed");
    assert_drained(&mut engine);
}
