//! Under default options no request waits for ever: a server that accepts a
//! request and never answers, one that starts a head and stops, and one that
//! sends interim responses for ever each end the request with a named
//! deadline, while a long poll held for minutes still gets its answer.
//!
//! The defaults are minutes long, so these tests move the engine's clock
//! instead of waiting: an embedded engine takes `now` from its host
//! (`handle_timeouts(now)`), and the host here passes an instant minutes
//! ahead once the server has the request. Only the options and policy are
//! the defaults; nothing is shortened.

mod support;

use std::time::{Duration, Instant};

use rotary::{Config, Deadline, Engine, Error, Event, RequestId, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

/// An embedded engine with the default configuration, in a mio loop of the
/// test's own.
struct Host {
    poll: mio::Poll,
    events: mio::Events,
    engine: Engine,
    /// Every event seen, in order.
    seen: Vec<Event>,
}

impl Host {
    fn new() -> Host {
        let poll = mio::Poll::new().expect("poll");
        let engine =
            Engine::embedded(poll.registry(), 1000, 100, Config::default()).expect("engine");
        Host {
            poll,
            events: mio::Events::with_capacity(64),
            engine,
            seen: Vec::new(),
        }
    }

    /// One turn of the loop: readiness, then timers judged at `clock`.
    fn turn(&mut self, clock: Instant) {
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(5)))
            .expect("poll");
        for ev in self.events.iter() {
            self.engine.handle_event(ev);
        }
        self.engine.handle_timeouts(clock);
        self.seen
            .extend(std::iter::from_fn(|| self.engine.next_event()));
    }

    /// Turn (at real time) until `done`, asserting on every turn that a
    /// live request always has a deadline the host will be woken for.
    fn until(&mut self, what: &str, id: RequestId, mut done: impl FnMut(&Host) -> bool) {
        let until = Instant::now() + T;
        while !done(self) {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            self.turn(Instant::now());
            if !self.ended(id) {
                assert!(
                    self.engine.next_timeout(Instant::now()).is_some(),
                    "request {id:?} in flight with no deadline: it could wait for ever"
                );
            }
        }
    }

    /// Turn until a turn brings no readiness: what the server wrote is read.
    fn settle(&mut self) {
        let until = Instant::now() + T;
        loop {
            assert!(Instant::now() < until, "the sockets never went quiet");
            self.turn(Instant::now());
            if self.events.is_empty() {
                return;
            }
        }
    }

    /// The clock jumps to `at`: every deadline due by then fires.
    fn jump_to(&mut self, at: Instant) {
        self.engine.handle_timeouts(at);
        self.seen
            .extend(std::iter::from_fn(|| self.engine.next_event()));
    }

    fn ended(&self, id: RequestId) -> bool {
        self.seen
            .iter()
            .any(|e| e.is_terminal() && e.request_id() == Some(id))
    }

    fn failure(&self, id: RequestId) -> Option<&Error> {
        self.seen.iter().find_map(|e| match e {
            Event::Failed { id: got, error, .. } if *got == id => Some(error),
            _ => None,
        })
    }

    fn assert_drained(&mut self) {
        self.engine.close_idle();
        let stats = self.engine.stats();
        assert!(stats.is_idle(), "engine not idle: {stats:#?}");
    }
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Submit a GET with default options and turn until the server has it.
fn submit_and_wait_for_the_server(host: &mut Host, server: &TestServer) -> (RequestId, Instant) {
    let before = Instant::now();
    let get = http::Request::get(server.url_ip("/"))
        .body(())
        .expect("request");
    let id = host.engine.submit(get, RequestOptions::default());
    host.until("the server to get the request", id, |_| {
        !server.requests().is_empty()
    });
    (id, before)
}

#[test]
fn a_server_that_never_answers_ends_the_request_at_the_head_deadline() {
    let server = TestServer::plain(|_, _| Reply::stall());
    let mut host = Host::new();
    let (id, before) = submit_and_wait_for_the_server(&mut host, &server);
    // Nine minutes of silence is a long poll, not a failure.
    host.jump_to(before + minutes(9));
    assert!(!host.ended(id), "ended early: {:?}", host.failure(id));
    host.jump_to(Instant::now() + minutes(10) + Duration::from_secs(1));
    assert!(
        matches!(host.failure(id), Some(Error::Timeout(Deadline::Head))),
        "got {:?}",
        host.failure(id)
    );
    host.assert_drained();
}

#[test]
fn a_head_that_starts_and_stops_ends_at_the_receive_stall_deadline() {
    let server = TestServer::plain(|_, _| Reply::raw(b"HTTP/1.1 200 OK\r\n".to_vec()));
    let mut host = Host::new();
    let (id, before) = submit_and_wait_for_the_server(&mut host, &server);
    // The first line has arrived: the response is under way.
    host.until("the head's first line", id, |_| {
        server.stats().replies_completed > 0
    });
    host.settle();
    host.jump_to(before + Duration::from_secs(30));
    assert!(!host.ended(id), "ended early: {:?}", host.failure(id));
    host.jump_to(Instant::now() + Duration::from_secs(61));
    assert!(
        matches!(
            host.failure(id),
            Some(Error::Timeout(Deadline::ReceiveStall))
        ),
        "got {:?}",
        host.failure(id)
    );
    host.assert_drained();
}

#[test]
fn interim_responses_for_ever_end_at_the_head_deadline() {
    // Two 102s, then nothing: a server that keeps the request "processing".
    let interim = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n".to_vec();
    let server = TestServer::plain(move |_, _| Reply::raw(interim.clone()));
    let mut host = Host::new();
    let (id, before) = submit_and_wait_for_the_server(&mut host, &server);
    host.until("the interim responses", id, |_| {
        server.stats().replies_completed > 0
    });
    host.settle();
    // A complete interim response is not a stalled one: minutes later the
    // request still waits, within the head deadline.
    host.jump_to(before + minutes(5));
    assert!(!host.ended(id), "ended early: {:?}", host.failure(id));
    host.jump_to(Instant::now() + minutes(10) + Duration::from_secs(1));
    assert!(
        matches!(host.failure(id), Some(Error::Timeout(Deadline::Head))),
        "got {:?}",
        host.failure(id)
    );
    host.assert_drained();
}

#[test]
fn a_long_poll_held_for_minutes_gets_its_answer_under_defaults() {
    let server = TestServer::plain(|_, _| Reply::ok("job").delay(Duration::from_millis(200)));
    let mut host = Host::new();
    let (id, before) = submit_and_wait_for_the_server(&mut host, &server);
    // The server "holds" the poll: four minutes pass on the engine's clock.
    host.jump_to(before + minutes(4));
    assert!(!host.ended(id), "ended early: {:?}", host.failure(id));
    host.until("the answer", id, |h| h.ended(id));
    let answered = host.seen.iter().any(|e| {
        matches!(e, Event::Response { id: got, response, .. }
            if *got == id && response.body() == "job")
    });
    assert!(answered, "no answer: {:?}", host.failure(id));
    host.assert_drained();
}
