//! Drives an engine in tests: waits on events with deadlines (never fixed
//! sleeps) and checks the leak invariants.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{Config, Engine, Event, RequestId, Trust};

use crate::support::{TempFile, TestCa};

/// An engine trusting only `ca`, with test-friendly defaults; keep the
/// returned file alive while the engine may re-read it.
pub fn engine_for(ca: &TestCa, tweak: impl FnOnce(&mut Config)) -> (Engine, TempFile) {
    let file = ca.write_pem_file();
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    tweak(&mut config);
    (Engine::new(config).expect("engine builds"), file)
}

/// A resolver that answers every name with these addresses, in order.
pub struct FixedAddrs(pub Vec<std::net::SocketAddr>);

impl rotary::Resolver for FixedAddrs {
    fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        Ok(self.0.clone())
    }
}

/// An engine that resolves every name to `addrs`.
pub fn engine_resolving_to(
    addrs: Vec<std::net::SocketAddr>,
    tweak: impl FnOnce(&mut Config),
) -> Engine {
    plain_engine(|c| {
        c.resolver = Some(std::sync::Arc::new(FixedAddrs(addrs)));
        tweak(c);
    })
}

/// A plain engine (webpki roots; fine for http:// tests).
pub fn plain_engine(tweak: impl FnOnce(&mut Config)) -> Engine {
    let mut config = Config::default();
    tweak(&mut config);
    Engine::new(config).expect("engine builds")
}

pub fn get(url: &str) -> http::Request<Bytes> {
    http::Request::get(url)
        .body(Bytes::new())
        .expect("valid request")
}

pub fn post(url: &str, body: &'static [u8]) -> http::Request<Bytes> {
    http::Request::post(url)
        .body(Bytes::from_static(body))
        .expect("valid request")
}

/// Poll until `done` says so, collecting every event; panics after `timeout`.
pub fn run_until(
    engine: &mut Engine,
    timeout: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        while let Some(ev) = engine.next_event() {
            events.push(ev);
        }
        if done(&events) {
            return events;
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "timed out after {timeout:?}; events so far: {events:#?}"
        );
        engine
            .poll(Some(deadline - now))
            .expect("poll does not fail");
    }
}

/// Wait for the terminal events of `ids`; asserts each gets exactly one
/// (also checking no second terminal event is already queued).
pub fn finish(engine: &mut Engine, ids: &[RequestId], timeout: Duration) -> Outcome {
    let events = run_until(engine, timeout, |evs| {
        ids.iter().all(|id| {
            evs.iter()
                .any(|e| e.is_terminal() && e.request_id() == Some(*id))
        })
    });
    Outcome::new(events, ids)
}

/// The events of a run, with the terminal event of each request at hand.
pub struct Outcome {
    pub events: Vec<Event>,
    pub terminal: HashMap<RequestId, usize>,
}

impl Outcome {
    fn new(events: Vec<Event>, ids: &[RequestId]) -> Outcome {
        let mut terminal = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            if e.is_terminal() {
                let id = e.request_id().expect("terminal events carry an id");
                assert!(
                    terminal.insert(id, i).is_none(),
                    "request {id:?} got two terminal events"
                );
            }
        }
        for id in ids {
            assert!(terminal.contains_key(id), "request {id:?} did not end");
        }
        Outcome { events, terminal }
    }

    pub fn event(&self, id: RequestId) -> &Event {
        &self.events[self.terminal[&id]]
    }

    /// The response of `id`; panics (with the error) if it failed.
    pub fn response(&self, id: RequestId) -> &http::Response<Bytes> {
        match self.event(id) {
            Event::Response { response, .. } => response,
            other => panic!("request {id:?} did not succeed: {other:#?}"),
        }
    }

    /// The error of `id`; panics if it succeeded.
    pub fn error(&self, id: RequestId) -> &rotary::Error {
        match self.event(id) {
            Event::Failed { error, .. } => error,
            other => panic!("request {id:?} did not fail: {other:#?}"),
        }
    }

    pub fn opened(&self) -> Vec<&rotary::ConnectionInfo> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Opened(info) => Some(info),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self) -> Vec<rotary::CloseReason> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Closed { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }
}

/// Close idle connections, let the engine settle, and assert it holds
/// nothing: zero connections, timers, queued and in-flight requests.
pub fn assert_drained(engine: &mut Engine) {
    engine.close_idle();
    let _ = run_until(engine, Duration::from_secs(5), |_| true);
    let stats = engine.stats();
    assert!(
        stats.is_idle(),
        "engine not idle after draining: {stats:#?}"
    );
}

/// Poll the engine (in slices of at most 5 ms) until `cond` holds, for
/// conditions outside the engine such as what a server has seen; returns the
/// events collected meanwhile. Panics after `timeout`.
pub fn pump_until(
    engine: &mut Engine,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        engine
            .poll(Some(Duration::from_millis(5)))
            .expect("poll does not fail");
        while let Some(ev) = engine.next_event() {
            events.push(ev);
        }
    }
    events
}

/// Wait until some event in `seen` (events already collected) or a later
/// one matches `pred`; later events are appended to `seen`.
pub fn until_seen(
    engine: &mut Engine,
    seen: &mut Vec<Event>,
    timeout: Duration,
    pred: impl Fn(&Event) -> bool,
) {
    if seen.iter().any(&pred) {
        return;
    }
    let more = run_until(engine, timeout, |evs| evs.iter().any(&pred));
    seen.extend(more);
}

/// Keep sending GETs to `url`, as a runner polls, until one is answered over
/// a chain whose leaf is `leaf`; how long that took from `since` and every
/// event seen. Panics after `timeout` (or 1,000 requests).
pub fn poll_until_leaf(
    engine: &mut Engine,
    url: &str,
    leaf: &rustls::pki_types::CertificateDer<'static>,
    since: Instant,
    timeout: Duration,
) -> (Duration, Vec<Event>) {
    let mut events = Vec::new();
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(
            since.elapsed() < timeout && polls < 1000,
            "no response over the new chain within {timeout:?}"
        );
        let id = engine.submit(get(url), rotary::RequestOptions::default());
        let out = finish(engine, &[id], timeout);
        let Event::Response { served_by, .. } = out.event(id) else {
            panic!("not a response: {:?}", out.event(id));
        };
        let got = served_by.chain.as_ref().expect("chain").der()[0].clone();
        events.extend(out.events);
        if &got == leaf {
            return (since.elapsed(), events);
        }
    }
}
