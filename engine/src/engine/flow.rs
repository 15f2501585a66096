//! A response's transfer counters and receive window: pure accounting that
//! each request attempt carries ([`Flow`]), and what a host reads of it
//! ([`Progress`]).
//!
//! A streamed request counts body bytes delivered as events and not yet
//! consumed; at its window the connection stops reading, so the server is
//! held back by TCP instead of the engine's memory growing. Which
//! connection that is, and when it reads on, is the engine's.

/// An attempt's transfer counters and flow-control state.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Flow {
    /// Streamed body bytes delivered and not yet consumed.
    pub(super) unconsumed: usize,
    /// Response body bytes received.
    pub(super) received: u64,
    /// The response's `Content-Length`, when it has one.
    pub(super) receive_total: Option<u64>,
    /// The final response head arrived (what follows is the body's phase,
    /// streamed or buffered).
    pub(super) head_seen: bool,
    /// The connection's byte counters when the stall timers were armed.
    pub(super) tx_mark: u64,
    pub(super) rx_mark: u64,
}

impl Flow {
    /// `n` streamed bytes were delivered: true when that fills `window`.
    #[inline]
    pub(super) fn delivered(&mut self, n: usize, window: usize) -> bool {
        self.unconsumed = self.unconsumed.saturating_add(n);
        self.unconsumed >= window.max(1)
    }

    /// The host consumed `n`: true when the window has room again.
    #[inline]
    pub(super) fn consumed(&mut self, n: usize, window: usize) -> bool {
        self.unconsumed = self.unconsumed.saturating_sub(n);
        self.unconsumed < window.max(1)
    }

    /// Below the window: the connection may read.
    #[inline]
    pub(super) fn has_room(&self, window: usize) -> bool {
        self.unconsumed < window.max(1)
    }
}

/// How far a request's transfer has got; see [`Engine::progress`](crate::Engine::progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Request body bytes handed to the connection.
    pub sent: u64,
    /// The request body's length, when known.
    pub send_total: Option<u64>,
    /// Response body bytes received.
    pub received: u64,
    /// The response body's length (`Content-Length`), when known.
    pub receive_total: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::Flow;

    #[test]
    fn the_window_fills_and_empties() {
        let mut f = Flow::default();
        assert!(!f.delivered(600, 1000));
        assert!(f.delivered(400, 1000), "full at the window");
        assert!(!f.has_room(1000));
        assert!(f.consumed(1, 1000));
        assert!(f.has_room(1000));
        assert!(f.delivered(1, 0), "a zero window reads as one byte");
    }
}
