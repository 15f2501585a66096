//! What a handler decided, for the one place that acts on it
//! ([`super::apply`]).
//!
//! A handler of a readiness event, a deadline or a host's command reads and
//! changes only the state it is handed (a connection's bytes and stage, a
//! request's attempt), and hands the host its events in the order they
//! happen; everything its outcome means for others (the exchange or the
//! request ended, the connection is closing, the pool has room, bytes
//! should move) it queues here as an [`Effect`]. [`Effects`] is a queue the
//! engine drains after every entry point, in order, until it is empty: an
//! effect applied may queue more (closing a connection lets its pool
//! dispatch, which puts a request on a connection, which is driven).
//!
//! Keys held in effects are checked against their owner's id before use:
//! a connection or request closed in between may have handed its slot on.

use std::collections::VecDeque;

use http::HeaderMap;
use rotary_proto::Verdict;

use crate::error::Error;
use crate::event::{CloseReason, ConnId, RequestId};
use crate::keys::{ConnKey, PoolKey, ReqKey};

use super::conn::Purpose;

/// How far a drive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// Do not read (only write what is pending).
    Skip,
    /// Stop at a short read: the socket is drained and new data raises a
    /// new edge. Only safe when the event did not report a hang-up, whose
    /// EOF would otherwise never be read.
    UntilShort,
    /// Read until `WouldBlock` or EOF.
    UntilWouldBlock,
}

impl ReadMode {
    /// The mode for a readiness event: a hang-up (or error) reads to its
    /// EOF, readable data up to a short read, and an event that reports
    /// neither (the socket only turned writable) reads nothing: readiness
    /// is reported whole, so no data waits behind it.
    pub(super) fn after_event(event: &mio::event::Event) -> ReadMode {
        if event.is_read_closed() || event.is_error() {
            ReadMode::UntilWouldBlock
        } else if event.is_readable() {
            ReadMode::UntilShort
        } else {
            ReadMode::Skip
        }
    }
}

/// A connection, by slot and by id (the slot may have been handed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnRef {
    pub(super) key: ConnKey,
    pub(super) id: ConnId,
}

/// A request, by slot and by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReqRef {
    pub(super) key: ReqKey,
    pub(super) id: RequestId,
}

/// How an exchange ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Its response arrived whole (`trailers` of a chunked body).
    Done {
        verdict: Verdict,
        trailers: Option<Box<HeaderMap>>,
    },
    /// It failed with this (the retry rules decide whether it is the
    /// request's end).
    Failed(Box<Error>),
}

impl Outcome {
    /// It failed with `error` (boxed: a failure is rare, and an effect small).
    pub(super) fn failed(error: Error) -> Outcome {
        Outcome::Failed(Box::new(error))
    }
}

/// One consequence of a handler, for [`super::apply`].
#[derive(Debug)]
pub(super) enum Effect {
    /// The exchange of `req` on `conn` ended (an effect about an exchange
    /// that ended already, or a request that moved on, is dropped).
    ExchangeEnded {
        conn: ConnRef,
        req: ReqRef,
        outcome: Outcome,
    },
    /// The request ends with `error` wherever it is; a connection carrying
    /// it mid-exchange closes with `close`.
    Abort {
        req: ReqRef,
        error: Box<Error>,
        close: CloseReason,
    },
    /// The connection closes now.
    Close { conn: ConnRef, reason: CloseReason },
    /// Opening the connection failed.
    ConnectFailed { conn: ConnRef, error: Box<Error> },
    /// The connection is ready for requests.
    Ready { conn: ConnRef },
    /// The pool may put waiting requests on connections, or open some.
    Dispatch(PoolKey),
    /// Open a connection for the pool (after the closes queued before it,
    /// which make room).
    Open { pool: PoolKey, purpose: Purpose },
    /// Move the connection's bytes.
    Drive { conn: ConnRef, read: ReadMode },
}

/// The queue of effects not applied yet.
#[derive(Default)]
pub(super) struct Effects {
    queue: VecDeque<Effect>,
}

impl Effects {
    #[inline]
    pub(super) fn push(&mut self, effect: Effect) {
        self.queue.push_back(effect);
    }

    #[inline]
    pub(super) fn pop(&mut self) -> Option<Effect> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_effect_stays_small() {
        // Every exchange moves a few effects through the queue: a failure's
        // error and a response's trailers are boxed to keep them small.
        assert!(
            std::mem::size_of::<super::Effect>() <= 72,
            "{}",
            std::mem::size_of::<super::Effect>()
        );
    }
}
