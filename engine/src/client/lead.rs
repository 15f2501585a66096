//! The lead: the state behind the client's mutex (the engine, the poll
//! while nobody holds it, each request's mailbox), the loop whoever leads
//! runs, the client's own thread that leads when no caller does, and the
//! routing of the engine's events to the callers that wait for them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mio::{Events, Poll, Waker};

use crate::{Body, ChainRequestId, Engine, Error, Event, PeerChain, RequestId, RequestOptions};

use super::LINGER;

/// What every thread of a client shares.
pub(super) struct Shared {
    pub(super) core: Mutex<Core>,
    /// The engine's waker: wakes whoever leads out of its poll.
    pub(super) waker: Arc<Waker>,
    pub(super) dropped: AtomicU64,
    /// Requests sent while another thread held `core`: whoever holds it
    /// submits them before it lets go (see [`Shared::unlock`]), so a
    /// caller that finds the mutex busy queues its request and parks,
    /// instead of sleeping on the mutex and then again on its answer.
    pub(super) inbox: Mutex<Vec<Queued>>,
    /// The engine's request ids, taken by a caller before it queues.
    pub(super) ids: Arc<AtomicU64>,
}

/// A request waiting in [`Shared::inbox`].
pub(super) struct Queued {
    pub(super) id: RequestId,
    pub(super) request: http::Request<Body>,
    pub(super) opts: RequestOptions,
    pub(super) mailbox: Arc<Mailbox>,
    /// The caller, parked on the request when it is submitted (`None`:
    /// the caller submits it itself and waits with the mutex in hand).
    pub(super) caller: Option<Thread>,
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

/// One request's entry in the client's table, while the engine may still
/// have news for it.
pub(super) struct Route {
    pub(super) mailbox: Arc<Mailbox>,
    /// Body bytes the engine took from the caller's reader.
    pub(super) fed: u64,
}

/// One request's messages. The leader puts them in under the client's
/// mutex; the caller takes them out under the mailbox's own lock alone, so
/// reading an answer never waits for the leader's pass over every
/// connection (with many callers, that wait was most of a request's
/// system time). Lock order: the client's mutex, then a mailbox.
#[derive(Default)]
pub(super) struct Mailbox(Mutex<Mail>);

#[derive(Default)]
pub(super) struct Mail {
    pub(super) msgs: VecDeque<Msg>,
    /// The request's last message is in and its route is gone from the
    /// client's table: the engine has nothing more to say about it.
    pub(super) closed: bool,
}

impl Mailbox {
    pub(super) fn lock(&self) -> MutexGuard<'_, Mail> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The oldest message, if any.
    pub(super) fn take(&self) -> Option<Msg> {
        self.lock().msgs.pop_front()
    }
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
    /// The mutex, with the queued requests submitted.
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        core.drain(self);
        core
    }

    /// Submit the queued requests, let the mutex go, then wake the callers
    /// that got mail meanwhile. A request queued after the drain, while
    /// the mutex was still held, was queued because it was held: it is
    /// this thread's to submit, unless another thread holds the mutex by
    /// then (and so will). The fences pair with the one in
    /// [`Shared::submit_or_queue`]: the queuer's `try_lock` sees the mutex free, or
    /// this look sees its request.
    pub(super) fn unlock<'a>(&'a self, mut core: MutexGuard<'a, Core>) {
        loop {
            core.drain(self);
            let wake = std::mem::take(&mut core.wake);
            drop(core);
            for t in wake {
                t.unpark();
            }
            fence(Ordering::SeqCst);
            if self.inbox().is_empty() {
                return;
            }
            match self.try_lock() {
                Some(c) => core = c,
                None => return,
            }
        }
    }

    pub(super) fn inbox(&self) -> MutexGuard<'_, Vec<Queued>> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Submit `q` and return the mutex, if it is free; else queue `q` for
    /// whoever holds it (`None`).
    pub(super) fn submit_or_queue(&self, mut q: Queued) -> Option<MutexGuard<'_, Core>> {
        if let Some(mut core) = self.try_lock() {
            // Its caller waits with the mutex in hand: not parked.
            q.caller = None;
            core.admit(q, self);
            return Some(core);
        }
        self.inbox().push(q);
        fence(Ordering::SeqCst);
        // Let go meanwhile, maybe before its holder looked: submit it now.
        let mut core = self.try_lock()?;
        core.drain(self);
        Some(core)
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, Core>> {
        match self.core.try_lock() {
            Ok(core) => Some(core),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Wait until `take` finds what `key`'s owner waits for (then it is
    /// returned) or `until` passes (`None`), leading the engine's loop
    /// whenever nobody else does. `quick` looks without the client's mutex
    /// (a request's mailbox), first and after each wake-up; `take` looks
    /// under it, and must find whatever `quick` would. A caller that holds
    /// the mutex already (it just submitted) passes it as `held`.
    pub(super) fn wait<T>(
        &self,
        key: Key,
        until: Option<Instant>,
        held: Option<MutexGuard<'_, Core>>,
        mut quick: impl FnMut() -> Option<T>,
        mut take: impl FnMut(&mut Core) -> Option<T>,
    ) -> Option<T> {
        let mut core = match held {
            Some(core) => core,
            None => match quick() {
                Some(found) => return Some(found),
                None => self.lock(),
            },
        };
        let found = loop {
            // A queued request's caller was parked by the thread that
            // submitted it, and may not have been woken.
            if let Some(at) = core.parked.iter().position(|(k, _)| *k == key) {
                core.parked.swap_remove(at);
            }
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
            self.unlock(core);
            match until {
                Some(u) => std::thread::park_timeout(u.saturating_duration_since(now)),
                None => std::thread::park(),
            }
            // Whoever unparked us took our entry off `parked`: with mail
            // waiting, return without the client's mutex.
            if let Some(found) = quick() {
                return Some(found);
            }
            core = self.lock();
        };
        self.unlock(core);
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
            self.unlock(core);
            let Lead { poll, events, .. } = &mut *lead;
            let polled = poll.poll(events, timeout);
            // Not `lock`: `sleeping` is cleared before the drain, whose
            // kick would take this leader for one still in its poll and
            // wake it for nothing.
            core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
            core.sleeping = None;
            core.drain(self);
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
            self.unlock(core);
            std::thread::park_timeout(wait);
            core = self.lock();
        }
        self.unlock(core);
    }
}

impl Core {
    /// Submit the requests queued in the inbox, each caller parked on it.
    pub(super) fn drain(&mut self, shared: &Shared) {
        let queued = std::mem::take(&mut *shared.inbox());
        if queued.is_empty() {
            return;
        }
        for q in queued {
            self.admit(q, shared);
        }
    }

    /// Submit `q` to the engine with its route and its caller parked on it
    /// (if it has one), and hand out what the engine said at once.
    pub(super) fn admit(&mut self, q: Queued, shared: &Shared) {
        let route = Route {
            mailbox: q.mailbox,
            fed: 0,
        };
        self.routes.insert(q.id, route);
        if let Some(caller) = q.caller {
            self.parked.push((Key::Req(q.id), caller));
        }
        self.engine.submit_as(q.id, q.request, q.opts);
        self.route(shared);
        self.kick(shared);
    }

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
    /// cancelled it on the way out). The last message (the end, a failure)
    /// closes the mailbox and takes the route out of the table.
    pub(super) fn tell(&mut self, id: RequestId, msg: Msg) {
        let last = matches!(msg, Msg::End(_) | Msg::Failed(_));
        let Some(route) = self.routes.get(&id) else {
            return;
        };
        {
            let mut mail = route.mailbox.lock();
            mail.msgs.push_back(msg);
            mail.closed |= last;
        }
        if last {
            self.routes.remove(&id);
        }
        self.unpark(Key::Req(id));
    }

    /// Tell every open request the client stopped.
    pub(super) fn fail_all(&mut self) {
        for (_, route) in self.routes.drain() {
            let mut mail = route.mailbox.lock();
            mail.msgs.push_back(Msg::Failed(Error::Shutdown));
            mail.closed = true;
        }
    }

    /// The lead was put down: wake one parked caller whose mailbox is
    /// empty, so it takes the lead up (those with mail were woken already
    /// and return without leading).
    pub(super) fn hand_over(&mut self) {
        let needy = self.parked.iter().position(|(key, _)| match key {
            Key::Req(id) => self
                .routes
                .get(id)
                .is_some_and(|r| r.mailbox.lock().msgs.is_empty()),
            Key::Chain(id) => self.chains.get(id).is_some_and(Option::is_none),
        });
        if let Some(at) = needy {
            let (_, t) = self.parked.swap_remove(at);
            self.wake.push(t);
        }
    }

    /// Wake the caller parked on `key`, once the mutex is let go. Its entry
    /// goes now, so a caller that finds its mail on waking need not take
    /// the mutex to take the entry out.
    pub(super) fn unpark(&mut self, key: Key) {
        if let Some(at) = self.parked.iter().position(|(k, _)| *k == key) {
            let (_, t) = self.parked.swap_remove(at);
            self.wake.push(t);
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
