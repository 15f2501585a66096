//! Per-request options: deadlines, windows, limits and redirects, each
//! with its default.

use std::time::Duration;

use super::ConfigError;

/// Per-request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Total deadline from submission. Default `None`, so a long poll may wait
    /// minutes.
    pub deadline: Option<Duration>,
    /// Maximum wait for the first response byte once the request is on a
    /// connection. Default `None` ([`head_timeout`](Self::head_timeout)
    /// bounds the same wait by default).
    pub first_byte_timeout: Option<Duration>,
    /// Maximum wait for the final response head once the request (head and
    /// body) is written: the server's think time, any 1xx interim responses
    /// and the head's own bytes. Fails with
    /// [`Deadline::Head`](crate::Deadline::Head). Default 10 min, GitLab
    /// Runner's response-header timeout: a long poll held for minutes
    /// works, and a server that accepts a request and never answers, or
    /// sends interim responses forever, cannot hold it for ever. `None`
    /// disables it (then only [`deadline`](Self::deadline) bounds that wait).
    pub head_timeout: Option<Duration>,
    /// May be sent again after a failure before any response byte arrived,
    /// even if the method is not idempotent. Default false.
    pub retry_safe: bool,
    /// Largest response body held in memory whole: for
    /// [`Event::Response`](crate::Event::Response) (not streaming) and for
    /// [`ResponseBody::bytes`](crate::ResponseBody::bytes). Default 16 MiB;
    /// bigger bodies fail with
    /// [`Error::BodyTooLarge`](crate::Error::BodyTooLarge). A streamed body
    /// ([`Event::Body`](crate::Event::Body), a `Read` of a
    /// [`ResponseBody`](crate::ResponseBody), `execute_into`) has no such
    /// limit: it is held to [`receive_window`](Self::receive_window).
    pub max_buffered_body: usize,
    /// Deliver the body as [`Event::Body`](crate::Event::Body) chunks instead of
    /// buffering it. Default false.
    pub streaming: bool,
    /// Redirects (301, 302, 303, 307, 308 with a `Location`) followed before
    /// the response is the answer. Default 0: a redirect is the response.
    /// 301/302 turn a POST into a GET and 303 anything but HEAD; 307/308 keep
    /// method and body. A hop to another origin drops `Authorization`,
    /// `Cookie`, `Proxy-Authorization` and [`Config::sensitive_headers`](super::Config::sensitive_headers);
    /// [`RequestOptions::deadline`] covers every hop. More hops than this, or
    /// a loop, end with [`Error::Redirect`](crate::Error::Redirect).
    pub max_redirects: usize,
    /// Follow a redirect from `https://` to `http://`. Default false: such a
    /// hop ends with [`Error::Redirect`](crate::Error::Redirect).
    pub allow_https_to_http: bool,
    /// Most bytes of a file or streamed request body the engine holds at
    /// once: a file is read this much at a time as the socket takes it, and
    /// a host feeding a [`Body::stream`](crate::Body::stream) may queue this
    /// much ahead ([`Event::BodyWanted`](crate::Event::BodyWanted)). Default
    /// 256 KiB: enough to keep a loopback or LAN socket busy between two
    /// readiness events, small beside a runner's budget. 0 is refused
    /// ([`RequestOptions::check`]).
    pub send_window: usize,
    /// Streaming mode: body bytes delivered as [`Event::Body`](crate::Event::Body)
    /// and not yet consumed before the engine stops reading the connection
    /// (so a slow consumer throttles the server through TCP). Bytes count as
    /// consumed when [`Engine::next_event`](crate::Engine::next_event) hands
    /// out their event, or, with `manual_consume`, when the host calls
    /// [`Engine::consume`](crate::Engine::consume). A read takes at most
    /// what is left of the window (and one socket read, 64 KiB, past it at
    /// most), so the window bounds what a body holds in the engine.
    /// [`Engine::execute_into`](crate::Engine::execute_into) and
    /// [`Client`](crate::Client) use at most 128 KiB. Default 1 MiB; 0 is
    /// refused ([`RequestOptions::check`]).
    pub receive_window: usize,
    /// Body bytes are consumed only through [`Engine::consume`](crate::Engine::consume)
    /// (a host that hands events to another thread, which writes them out).
    /// Default false.
    pub manual_consume: bool,
    /// Fail with [`Deadline::SendStall`](crate::Deadline::SendStall) when the
    /// peer takes none of the request's bytes for this long while some are
    /// waiting (curl's `--speed-time` habit). Default 60 s; `None` disables.
    pub send_stall_timeout: Option<Duration>,
    /// Fail with [`Deadline::ReceiveStall`](crate::Deadline::ReceiveStall)
    /// when a started response stops: no further byte of a head whose first
    /// bytes arrived, or of the body, for this long (time the host holds the
    /// body back, or the request body is still going out, does not count).
    /// The wait for a head to start is [`head_timeout`](Self::head_timeout)'s.
    /// Default 60 s; `None` disables.
    pub receive_stall_timeout: Option<Duration>,
    /// With `Expect: 100-continue` among the request's headers, how long to
    /// wait for the `100` before sending the body anyway (curl waits 1 s).
    /// A final response instead of the `100` ends the exchange with the body
    /// unsent. Default 1 s.
    pub continue_timeout: Duration,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            deadline: None,
            first_byte_timeout: None,
            head_timeout: Some(Duration::from_secs(10 * 60)),
            retry_safe: false,
            max_buffered_body: 16 * 1024 * 1024,
            streaming: false,
            max_redirects: 0,
            allow_https_to_http: false,
            send_window: 256 * 1024,
            receive_window: 1024 * 1024,
            manual_consume: false,
            send_stall_timeout: Some(Duration::from_secs(60)),
            receive_stall_timeout: Some(Duration::from_secs(60)),
            continue_timeout: Duration::from_secs(1),
        }
    }
}

impl RequestOptions {
    /// Refuse options that cannot work, as [`Engine::submit`](crate::Engine::submit)
    /// does: a `send_window` or `receive_window` of 0 bytes (no body byte
    /// could move).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) naming the
    /// option.
    pub fn check(&self) -> Result<(), crate::Error> {
        let zero = |name: &'static str| {
            Err(crate::Error::InvalidOptions(ConfigError::new(
                name,
                "0 bytes: no body byte could move (at least 1)",
            )))
        };
        if self.send_window == 0 {
            return zero("send_window");
        }
        if self.receive_window == 0 {
            return zero("receive_window");
        }
        Ok(())
    }

    /// Follow up to `max` redirects (see [`RequestOptions::max_redirects`]).
    pub fn follow_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }
    /// Allow redirects from `https://` to `http://`.
    pub fn allow_https_to_http(mut self, allow: bool) -> Self {
        self.allow_https_to_http = allow;
        self
    }
    /// Set the total deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Set the first-byte deadline.
    pub fn first_byte_timeout(mut self, d: Duration) -> Self {
        self.first_byte_timeout = Some(d);
        self
    }

    /// Set (or with `None` disable) the wait for the final response head
    /// (see [`RequestOptions::head_timeout`]).
    pub fn head_timeout(mut self, d: Option<Duration>) -> Self {
        self.head_timeout = d;
        self
    }
    /// Mark the request safe to retry.
    pub fn retry_safe(mut self, yes: bool) -> Self {
        self.retry_safe = yes;
        self
    }
    /// Set the buffered-body limit.
    pub fn max_buffered_body(mut self, bytes: usize) -> Self {
        self.max_buffered_body = bytes;
        self
    }
    /// Stream the body as events.
    pub fn streaming(mut self, yes: bool) -> Self {
        self.streaming = yes;
        self
    }

    /// Set the request body window (see [`RequestOptions::send_window`]).
    pub fn send_window(mut self, bytes: usize) -> Self {
        self.send_window = bytes;
        self
    }

    /// Set the streamed response window (see [`RequestOptions::receive_window`]).
    pub fn receive_window(mut self, bytes: usize) -> Self {
        self.receive_window = bytes;
        self
    }

    /// Consume streamed body bytes only through `Engine::consume`.
    pub fn manual_consume(mut self, yes: bool) -> Self {
        self.manual_consume = yes;
        self
    }

    /// Set (or with `None` disable) both stall timeouts.
    pub fn stall_timeouts(mut self, send: Option<Duration>, receive: Option<Duration>) -> Self {
        self.send_stall_timeout = send;
        self.receive_stall_timeout = receive;
        self
    }

    /// Set the wait for `100 Continue`.
    pub fn continue_timeout(mut self, d: Duration) -> Self {
        self.continue_timeout = d;
        self
    }
}
