//! The lead: the state behind the client's mutex (the engine, the poll
//! while nobody holds it, each request's mailbox), the loop whoever leads
//! runs, the client's own thread that leads when no caller does, and the
//! routing of the engine's events to the callers that wait for them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mio::{Events, Poll, Waker};

use crate::{ChainRequestId, Engine, Error, Event, PeerChain, RequestId};

use super::LINGER;

/// What every thread of a client shares.
pub(super) struct Shared {
    pub(super) core: Mutex<Core>,
    /// The engine's waker: wakes whoever leads out of its poll.
    pub(super) waker: Arc<Waker>,
    pub(super) dropped: AtomicU64,
}

/// The poll and its events buffer: whoever holds them leads.
pub(super) struct Lead {
    pub(super) poll: Poll,
    pub(super) events: Events,
    /// `events` came out of a poll and the engine has not seen them yet:
    /// the client's thread hands them over with the lead, so a waiting
    /// caller does that I/O on its own thread (see [`Shared::lead`]).
    pub(super) unhandled: bool,
    /// That poll waited and saw nothing.
    pub(super) quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leader {
    Nobody,
    Caller,
    Background,
}

/// What a parked thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Req(RequestId),
    Chain(ChainRequestId),
}

/// The state behind the client's mutex.
pub(super) struct Core {
    pub(super) engine: Engine,
    /// The lead, while nobody holds it.
    pub(super) lead: Option<Box<Lead>>,
    pub(super) leader: Leader,
    /// The leader is inside its poll until this instant (`Some(None)`:
    /// until woken); `None` while it is not polling.
    pub(super) sleeping: Option<Option<Instant>>,
    /// A wake is on its way to the leader.
    pub(super) woken: bool,
    /// When the lead was last put down.
    pub(super) released: Instant,
    pub(super) routes: HashMap<RequestId, Route>,
    pub(super) chains: HashMap<ChainRequestId, Option<Result<Arc<PeerChain>, Error>>>,
    /// Callers waiting without the lead.
    pub(super) parked: Vec<(Key, Thread)>,
    /// Parked callers to wake once the mutex is let go (so they do not
    /// wake only to wait for it).
    pub(super) wake: Vec<Thread>,
    /// The client's thread.
    pub(super) background: Option<Thread>,
    pub(super) stopping: bool,
    /// Dropped when the client stops, so the host's receiver sees the end.
    pub(super) lifecycle: Option<mpsc::SyncSender<Event>>,
}

/// One request's mailbox.
pub(super) struct Route {
    pub(super) mail: VecDeque<Msg>,
    /// Body bytes the engine took from the caller's reader.
    pub(super) fed: u64,
}

/// What the engine tells the caller of one request.
pub(super) enum Msg {
    /// The engine has room for the request body up to this many bytes in
    /// all, counted from the body's start: the bytes it has taken plus the
    /// room of its window as it was handed out. An absolute limit, so asks
    /// that overlap with pieces still being read never add up to more than
    /// the window (a room relative to "now" would count those pieces twice).
    Wanted(u64),
    Head(http::Response<()>),
    Body(Bytes),
    End(Option<HeaderMap>),
    Failed(Error),
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Let the mutex go, then wake the callers that got mail meanwhile.
    pub(super) fn unlock(mut core: MutexGuard<'_, Core>) {
        let wake = std::mem::take(&mut core.wake);
        drop(core);
        for t in wake {
            t.unpark();
        }
    }

    /// Wait until `take` finds what `key`'s owner waits for (then it is
    /// returned) or `until` passes (`None`), leading the engine's loop
    /// whenever nobody else does.
    pub(super) fn wait<T>(
        &self,
        key: Key,
        until: Option<Instant>,
        mut take: impl FnMut(&mut Core) -> Option<T>,
    ) -> Option<T> {
        let mut core = self.lock();
        let found = loop {
            if let Some(found) = take(&mut core) {
                break Some(found);
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                break None;
            }
            if let Some(lead) = core.lead.take() {
                let (c, found) = self.lead(core, lead, Leader::Caller, until, &mut take);
                core = c;
                if found.is_some() {
                    break found;
                }
                continue;
            }
            // Someone else leads: it routes our messages to us and unparks
            // us, or hands us the lead. The client's thread gives it up to
            // any caller that waits.
            core.parked.push((key, std::thread::current()));
            if core.leader == Leader::Background {
                core.wake_leader(self);
            }
            Shared::unlock(core);
            match until {
                Some(u) => std::thread::park_timeout(u.saturating_duration_since(now)),
                None => std::thread::park(),
            }
            core = self.lock();
            if let Some(at) = core.parked.iter().position(|(k, _)| *k == key) {
                core.parked.swap_remove(at);
            }
        };
        Shared::unlock(core);
        found
    }

    /// Drive the engine's loop with `lead` until `done` finds something
    /// (returned), `until` passes, or (for the client's thread) a caller
    /// waits; then put the lead down and hand it to a parked caller.
    pub(super) fn lead<'a, T>(
        &'a self,
        mut core: MutexGuard<'a, Core>,
        mut lead: Box<Lead>,
        who: Leader,
        until: Option<Instant>,
        done: &mut impl FnMut(&mut Core) -> Option<T>,
    ) -> (MutexGuard<'a, Core>, Option<T>) {
        core.leader = who;
        let found = loop {
            if lead.unhandled {
                lead.unhandled = false;
                for event in lead.events.iter() {
                    core.engine.handle_event(event);
                }
                if lead.quiet {
                    core.engine.handle_quiet();
                }
                core.engine.handle_timeouts(Instant::now());
                core.route(self);
                if let Some(found) = done(&mut core) {
                    break Some(found);
                }
            }
            let now = Instant::now();
            if core.stopping
                || (who == Leader::Background && !core.parked.is_empty())
                || until.is_some_and(|u| now >= u)
            {
                break None;
            }
            let mut timeout = core.engine.next_timeout(now);
            if let Some(u) = until {
                let left = u.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            core.sleeping = Some(timeout.map(|t| now + t));
            core.woken = false;
            Shared::unlock(core);
            let Lead { poll, events, .. } = &mut *lead;
            let polled = poll.poll(events, timeout);
            core = self.lock();
            core.sleeping = None;
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("client: poll failed, shutting the engine down: {e}");
                    core.engine.shutdown();
                }
            }
            lead.unhandled = true;
            lead.quiet = lead.events.is_empty() && timeout != Some(Duration::ZERO);
            // A caller came while the client's thread polled: the events go
            // to it with the lead, so their reads, and the buffers those
            // allocate, are the caller's (at the top of the loop otherwise).
            if who == Leader::Background && !core.parked.is_empty() && !core.stopping {
                break None;
            }
        };
        core.lead = Some(lead);
        core.leader = Leader::Nobody;
        core.released = Instant::now();
        core.hand_over();
        (core, found)
    }

    /// The client's thread: lead while no caller does (see the module notes).
    pub(super) fn background(self: Arc<Shared>) {
        let mut core = self.lock();
        loop {
            if core.stopping {
                break;
            }
            let now = Instant::now();
            let wait = if core.lead.is_some() {
                let mut due = core.released + LINGER;
                if let Some(t) = core.engine.next_timeout(now) {
                    due = due.min(now + t);
                }
                if due > now {
                    due - now
                } else if !core.parked.is_empty() {
                    // A caller that waits was handed the lead and has not
                    // taken it up yet: remind one (never needed, as the
                    // hand-over already woke one; a guard against a lost
                    // wake-up leaving callers parked with nobody leading).
                    core.released = now;
                    core.hand_over();
                    LINGER
                } else {
                    if let Some(lead) = core.lead.take() {
                        // No caller for LINGER: the loop is quiet, and idle
                        // connections give back their buffers now rather
                        // than at the next poll that times out, which may be
                        // the next deadline, minutes away.
                        core.engine.handle_quiet();
                        let idle = &mut |_: &mut Core| None::<()>;
                        core = self.lead(core, lead, Leader::Background, None, idle).0;
                    }
                    continue;
                }
            } else {
                // A caller leads: look again later. A deadline that falls
                // due meanwhile is the leader's to handle.
                LINGER
            };
            Shared::unlock(core);
            std::thread::park_timeout(wait);
            core = self.lock();
        }
    }
}

impl Core {
    /// Hand every waiting event to whoever waits for it.
    pub(super) fn route(&mut self, shared: &Shared) {
        while let Some(event) = self.engine.next_event() {
            match event {
                Event::Head {
                    id,
                    mut response,
                    served_by,
                } => {
                    response.extensions_mut().insert(served_by);
                    self.tell(id, Msg::Head(response));
                }
                Event::Body { id, data } => self.tell(id, Msg::Body(data)),
                Event::End { id, trailers } => self.tell(id, Msg::End(trailers)),
                Event::BodyWanted { id, room } => {
                    let fed = self.routes.get(&id).map_or(0, |r| r.fed);
                    self.tell(id, Msg::Wanted(fed + room as u64));
                }
                Event::Failed { id, error, .. } => self.tell(id, Msg::Failed(error)),
                Event::Response {
                    id,
                    response,
                    served_by,
                } => {
                    // Not raised in streaming mode; delivered whole if it is.
                    let (mut parts, body) = response.into_parts();
                    parts.extensions.insert(served_by);
                    self.tell(id, Msg::Head(http::Response::from_parts(parts, ())));
                    if !body.is_empty() {
                        self.tell(id, Msg::Body(body));
                    }
                    self.tell(id, Msg::End(None));
                }
                Event::FreshChain { id, result, .. } => {
                    if let Some(slot) = self.chains.get_mut(&id) {
                        *slot = Some(result);
                        self.unpark(Key::Chain(id));
                    }
                }
                other => {
                    let full = match &self.lifecycle {
                        Some(tx) => tx.try_send(other).is_err(),
                        None => false,
                    };
                    if full {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Put `msg` in request `id`'s mailbox and wake its caller if it is
    /// parked. A request whose owner has gone has no route (its owner
    /// cancelled it on the way out).
    pub(super) fn tell(&mut self, id: RequestId, msg: Msg) {
        if let Some(route) = self.routes.get_mut(&id) {
            route.mail.push_back(msg);
            self.unpark(Key::Req(id));
        }
    }

    /// The lead was put down: wake one parked caller whose mailbox is
    /// empty, so it takes the lead up (those with mail were woken already
    /// and return without leading).
    pub(super) fn hand_over(&mut self) {
        let needy = self.parked.iter().find(|(key, _)| match key {
            Key::Req(id) => self.routes.get(id).is_some_and(|r| r.mail.is_empty()),
            Key::Chain(id) => self.chains.get(id).is_some_and(Option::is_none),
        });
        if let Some((_, t)) = needy {
            self.wake.push(t.clone());
        }
    }

    /// Wake the caller parked on `key`, once the mutex is let go.
    pub(super) fn unpark(&mut self, key: Key) {
        if let Some((_, t)) = self.parked.iter().find(|(k, _)| *k == key) {
            self.wake.push(t.clone());
        }
    }

    /// The engine changed outside the leader's loop (a submission, a
    /// cancel, bytes consumed): a leader asleep in its poll must look again
    /// if the engine's next deadline came before the one it sleeps until.
    /// With nobody leading, the client's thread looks within [`LINGER`].
    pub(super) fn kick(&mut self, shared: &Shared) {
        let Some(until) = self.sleeping else {
            return;
        };
        let now = Instant::now();
        let Some(next) = self.engine.next_timeout(now).map(|t| now + t) else {
            return;
        };
        if until.is_none_or(|u| next < u) {
            self.wake_leader(shared);
        }
    }

    pub(super) fn wake_leader(&mut self, shared: &Shared) {
        if self.sleeping.is_some() && !self.woken {
            self.woken = true;
            let _ = shared.waker.wake();
        }
    }
}
