//! Running one request to completion on an engine that owns its poll:
//! [`Engine::execute`] (the response, buffered) and
//! [`Engine::execute_into`] (the body written to a sink as it arrives).
//! Other events stay queued for the host.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Body, Error, Event, Phase, RequestId, RequestOptions};

use super::Engine;

/// The largest receive window of [`Engine::execute_into`].
const EXECUTE_INTO_WINDOW: usize = 256 * 1024;

impl Engine {
    /// Run the loop until the request ends; returns its response. Events
    /// about other requests and connections stay queued for `next_event`.
    ///
    /// # Errors
    /// The request's error; [`Error::Unsupported`] for an embedded engine
    /// (the host owns the loop there) and for a [`Body::stream`] (nothing
    /// would feed it); a failing poll ends the request (no event about it
    /// is left queued) with [`Error::Io`] of [`Phase::Request`].
    pub fn execute(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
    ) -> Result<http::Response<Bytes>, Error> {
        if self.mio.poll.is_none() {
            return Err(Error::Unsupported(
                "execute needs an engine that owns its poll".into(),
            ));
        }
        let request = request.map(Into::into);
        if matches!(request.body().kind, crate::body::Kind::Stream { .. }) {
            return Err(Error::Unsupported(
                "execute cannot feed a streamed request body".into(),
            ));
        }
        let id = self.submit(request, opts.streaming(false));
        loop {
            let found = self
                .out
                .iter()
                .position(|e| e.is_terminal() && e.request_id() == Some(id));
            if let Some(pos) = found {
                return match self.out.remove(pos) {
                    Some(Event::Response { response, .. }) => Ok(response),
                    Some(Event::Failed { error, .. }) => Err(error),
                    _ => Err(Error::Shutdown),
                };
            }
            if let Err(e) = self.poll_with(None, false) {
                self.abandon(id);
                return Err(Error::io(Phase::Request, e));
            }
        }
    }

    /// Run the loop until the request ends, writing its body to `sink` as
    /// it arrives (streamed, so `max_buffered_body` does not apply and memory stays
    /// within the receive window whatever the size). Each piece is written
    /// before the loop reads on, so a large window buys nothing here: the
    /// window is the smaller of [`RequestOptions::receive_window`] and
    /// 256 KiB (with the 1 MiB default, a 256 MiB download's RSS grew by
    /// 2 MiB; with 256 KiB by 0.6 MiB, at the same speed). Returns the
    /// response head, with [`Trailers`](crate::Trailers) in its extensions
    /// for a chunked body with trailers. Other events stay queued.
    ///
    /// # Errors
    /// The request's error; [`Error::Sink`] when writing to `sink` fails
    /// (the request is cancelled); [`Error::Unsupported`] for an embedded
    /// engine; a request body fed by the host cannot be used here (nothing
    /// would feed it) and ends with [`Error::Unsupported`].
    pub fn execute_into(
        &mut self,
        request: http::Request<impl Into<Body>>,
        opts: RequestOptions,
        sink: &mut impl std::io::Write,
    ) -> Result<http::Response<()>, Error> {
        if self.mio.poll.is_none() {
            return Err(Error::Unsupported(
                "execute_into needs an engine that owns its poll".into(),
            ));
        }
        let request = request.map(Into::into);
        if matches!(request.body().kind, crate::body::Kind::Stream { .. }) {
            return Err(Error::Unsupported(
                "execute_into cannot feed a streamed request body".into(),
            ));
        }
        let opts = opts
            .streaming(true)
            .manual_consume(true)
            .receive_window(opts.receive_window.min(EXECUTE_INTO_WINDOW));
        let id = self.submit(request, opts);
        let mut head = None;
        loop {
            while let Some(pos) = self.out.iter().position(|e| e.request_id() == Some(id)) {
                match self.out.remove(pos) {
                    Some(Event::Head { response, .. }) => head = Some(response),
                    Some(Event::Body { data, .. }) => {
                        if let Err(e) = sink.write_all(&data) {
                            self.abandon(id);
                            return Err(Error::Sink(Arc::new(e)));
                        }
                        self.consume(id, data.len());
                    }
                    Some(Event::End { trailers, .. }) => {
                        let mut response = head.unwrap_or_default();
                        if let Some(t) = trailers {
                            response.extensions_mut().insert(crate::Trailers(t));
                        }
                        return Ok(response);
                    }
                    Some(Event::Failed { error, .. }) => return Err(error),
                    _ => {}
                }
            }
            if let Err(e) = self.poll_with(None, false) {
                self.abandon(id);
                return Err(Error::io(Phase::Request, e));
            }
        }
    }

    /// End request `id` whose outcome `execute` or `execute_into` has
    /// already returned: its events, the cancel's included, are dropped, so
    /// the host never sees a second outcome.
    fn abandon(&mut self, id: RequestId) {
        self.cancel(id);
        self.out.retain(|e| e.request_id() != Some(id));
    }
}
