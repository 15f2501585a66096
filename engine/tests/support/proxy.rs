//! A seeded fault-injecting TCP proxy between a client and an upstream server:
//! per connection it forwards both directions faithfully or injects one fault
//! (reset, close, stall, delay, 1-byte segments, garbage, refused connect) at a
//! chosen byte offset, and counts what it injected.
//!
//! Thread per direction, blocking I/O; dropping the proxy ends every thread.
//! Owns its listener, the two sockets of each link, its RNG and counters;
//! the pumps change a link's sockets and the counters, nothing else.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::threads::Threads;
use super::{lock, Watched};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to upstream server (requests).
    ToServer,
    /// Upstream server to client (responses).
    ToClient,
}

/// The fault injected on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Accept, then reset the client at once without connecting upstream.
    RefuseConnect,
    /// After `at` bytes in `dir`, reset both sides (RST where supported).
    Reset {
        /// Direction whose byte count triggers the fault.
        dir: Dir,
        /// Bytes forwarded in `dir` before the fault.
        at: u64,
    },
    /// After `at` bytes in `dir`, close both sides (FIN).
    Close {
        /// Direction whose byte count triggers the fault.
        dir: Dir,
        /// Bytes forwarded in `dir` before the fault.
        at: u64,
    },
    /// After `at` bytes in `dir`, stop forwarding in `dir` for `for_` (then go on),
    /// or until the proxy drops when `for_` is `None`.
    Stall {
        /// Direction that stalls.
        dir: Dir,
        /// Bytes forwarded in `dir` before the stall.
        at: u64,
        /// How long; `None` means until the proxy drops or the other direction ends.
        for_: Option<Duration>,
    },
    /// Sleep this long before each write in `dir`.
    Delay {
        /// Direction delayed.
        dir: Dir,
        /// Delay before each forwarded write.
        each: Duration,
    },
    /// Forward `dir` one byte per write (with TCP_NODELAY: one byte per segment).
    OneByteSegments {
        /// Direction split.
        dir: Dir,
    },
    /// After `at` bytes in `dir`, insert `bytes`, then go on forwarding.
    Garbage {
        /// Direction corrupted.
        dir: Dir,
        /// Bytes forwarded in `dir` before the insertion.
        at: u64,
        /// The inserted bytes.
        bytes: Vec<u8>,
    },
}

impl Fault {
    fn dir(&self) -> Option<Dir> {
        match self {
            Fault::None | Fault::RefuseConnect => None,
            Fault::Reset { dir, .. }
            | Fault::Close { dir, .. }
            | Fault::Stall { dir, .. }
            | Fault::Delay { dir, .. }
            | Fault::OneByteSegments { dir }
            | Fault::Garbage { dir, .. } => Some(*dir),
        }
    }

    /// A random fault of any kind with offsets below `max_offset` and short
    /// durations (stalls without end included).
    pub fn random(rng: &mut fastrand::Rng, max_offset: u64) -> Fault {
        let dir = if rng.bool() {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        let at = rng.u64(0..max_offset.max(1));
        match rng.u8(0..7) {
            0 => Fault::RefuseConnect,
            1 => Fault::Reset { dir, at },
            2 => Fault::Close { dir, at },
            3 => Fault::Stall {
                dir,
                at,
                for_: if rng.bool() {
                    None
                } else {
                    Some(Duration::from_millis(rng.u64(1..50)))
                },
            },
            4 => Fault::Delay {
                dir,
                each: Duration::from_millis(rng.u64(1..10)),
            },
            5 => Fault::OneByteSegments { dir },
            _ => Fault::Garbage {
                dir,
                at,
                bytes: (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect(),
            },
        }
    }
}

/// Chooses the fault of each new connection, given the proxy's seeded RNG and
/// the connection id (1, 2, … in accept order).
pub type Plan = Arc<dyn Fn(&mut fastrand::Rng, u64) -> Fault + Send + Sync>;

/// What the proxy did, a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections whose fault was not `None`.
    pub faulted: u64,
    /// Faults that actually fired (an offset may never be reached).
    pub fired: u64,
    /// Fired faults by kind.
    pub refused: u64,
    /// Resets fired.
    pub resets: u64,
    /// Closes fired.
    pub closes: u64,
    /// Stalls fired.
    pub stalls: u64,
    /// Connections with delayed writes (counted once, at the first delay).
    pub delays: u64,
    /// Connections split into 1-byte segments (counted once, at the first split).
    pub splits: u64,
    /// Garbage insertions fired.
    pub garbage: u64,
    /// Bytes forwarded client → server.
    pub bytes_to_server: u64,
    /// Bytes forwarded server → client.
    pub bytes_to_client: u64,
    /// Upstream connects that failed.
    pub upstream_errors: u64,
}

/// One connection as the proxy saw it.
#[derive(Clone, Debug)]
pub struct ProxiedConn {
    /// Connection id (1, 2, …).
    pub id: u64,
    /// The fault planned for it.
    pub fault: Fault,
    /// Whether the fault fired.
    pub fired: bool,
}

/// Options for a [`FaultProxy`].
pub struct ProxyBuilder {
    upstream: SocketAddr,
    seed: u64,
    plan: Plan,
}

impl ProxyBuilder {
    /// The seed of the RNG handed to the plan (default: random, see [`FaultProxy::seed`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The plan choosing each connection's fault (default: no faults).
    pub fn plan(
        mut self,
        f: impl Fn(&mut fastrand::Rng, u64) -> Fault + Send + Sync + 'static,
    ) -> Self {
        self.plan = Arc::new(f);
        self
    }

    /// Faults a fraction `rate` of connections with [`Fault::random`].
    pub fn random_faults(self, rate: f64, max_offset: u64) -> Self {
        self.plan(move |rng, _| {
            if rng.f64() < rate {
                Fault::random(rng, max_offset)
            } else {
                Fault::None
            }
        })
    }

    /// Every connection gets this fault.
    pub fn always(self, fault: Fault) -> Self {
        self.plan(move |_, _| fault.clone())
    }

    /// Binds 127.0.0.1:0 and starts accepting.
    pub fn start(self) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        super::sockopt::raise_backlog(&listener);
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            plan: Mutex::new(self.plan),
            rng: Mutex::new(fastrand::Rng::with_seed(self.seed)),
            stopping: AtomicBool::new(false),
            state: Watched::default(),
            links: Mutex::new(HashMap::new()),
            threads: Threads::default(),
            next_id: AtomicU64::new(1),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("fault-proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(s, listener))
            .expect("spawn proxy accept thread");
        FaultProxy {
            addr,
            seed: self.seed,
            shared,
            accept: Some(accept),
        }
    }
}

#[derive(Default)]
struct State {
    stats: ProxyStats,
    conns: Vec<ProxiedConn>,
}

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    rng: Mutex<fastrand::Rng>,
    stopping: AtomicBool,
    state: Watched<State>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    threads: Threads,
    next_id: AtomicU64,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        self.state.update(f);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A running fault proxy; dropping it closes every connection and joins its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to `upstream`, forwarding faithfully until given a plan; its seed
    /// is random unless set (print [`FaultProxy::seed`] on failure).
    pub fn builder(upstream: SocketAddr) -> ProxyBuilder {
        ProxyBuilder {
            upstream,
            seed: fastrand::u64(..),
            plan: Arc::new(|_, _| Fault::None),
        }
    }

    /// The proxy's listening address (connect the client here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The seed of the plan's RNG.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Replaces the plan for connections accepted from now on.
    pub fn set_plan(&self, f: impl Fn(&mut fastrand::Rng, u64) -> Fault + Send + Sync + 'static) {
        *lock(&self.shared.plan) = Arc::new(f);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.state.lock().stats.clone()
    }

    /// Every connection with its planned fault and whether it fired.
    pub fn connections(&self) -> Vec<ProxiedConn> {
        self.shared.state.lock().conns.clone()
    }

    /// Waits until `pred` holds on the counters; false on timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&ProxyStats) -> bool) -> bool {
        self.shared.state.wait_until(timeout, |s| pred(&s.stats))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let stuck =
            self.shared
                .threads
                .join_within(Duration::from_secs(5), self.accept.take(), || {
                    for link in lock(&self.shared.links).values() {
                        link.shutdown_both();
                    }
                });
        if stuck > 0 {
            eprintln!(
                "fault proxy {}: {stuck} thread(s) still running; detached",
                self.addr
            );
        }
    }
}

/// Both sockets of one proxied connection, shared by its two pump threads (one
/// fd each, so the last pump to finish closes them: that close carries an RST
/// when linger 0 was set).
struct Link {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    fault: Fault,
    /// Set when a fault ended the connection: pumps must not half-close.
    aborted: AtomicBool,
    /// Pumps still running.
    pumps: AtomicU64,
    fired: AtomicBool,
}

impl Link {
    fn shutdown_both(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn ends(&self, dir: Dir) -> (&TcpStream, &TcpStream) {
        match dir {
            Dir::ToServer => (&self.client, &self.server),
            Dir::ToClient => (&self.server, &self.client),
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) if shared.stopping() => return,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stopping() {
            return;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let plan = lock(&shared.plan).clone();
        let fault = plan(&mut lock(&shared.rng), id);
        shared.update(|st| {
            st.stats.connections += 1;
            if fault != Fault::None {
                st.stats.faulted += 1;
            }
            st.conns.push(ProxiedConn {
                id,
                fault: fault.clone(),
                fired: fault == Fault::RefuseConnect,
            });
        });
        if fault == Fault::RefuseConnect {
            // Count first: the client may look at the counters as soon as it fails.
            shared.update(|st| {
                st.stats.fired += 1;
                st.stats.refused += 1;
            });
            super::sockopt::set_linger_zero(&client);
            drop(client);
            continue;
        }
        let server = match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                shared.update(|st| st.stats.upstream_errors += 1);
                super::sockopt::set_linger_zero(&client);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let link = Arc::new(Link {
            id,
            client,
            server,
            fault,
            aborted: AtomicBool::new(false),
            pumps: AtomicU64::new(2),
            fired: AtomicBool::new(false),
        });
        {
            let mut links = lock(&shared.links);
            if shared.stopping() {
                link.shutdown_both();
                return;
            }
            links.insert(id, link.clone());
        }
        for dir in [Dir::ToServer, Dir::ToClient] {
            let (s, l) = (shared.clone(), link.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fault-proxy-{id}-{dir:?}"))
                .stack_size(128 * 1024)
                .spawn(move || pump(&s, &l, dir));
            match spawned {
                Ok(h) => shared.threads.add(h),
                Err(_) => link.shutdown_both(),
            }
        }
    }
}

fn fire(shared: &Shared, link: &Link, count: impl FnOnce(&mut ProxyStats)) {
    let first = !link.fired.swap(true, Ordering::SeqCst);
    shared.update(|st| {
        count(&mut st.stats);
        if first {
            st.stats.fired += 1;
            if let Some(c) = st.conns.iter_mut().find(|c| c.id == link.id) {
                c.fired = true;
            }
        }
    });
}

/// Sleeps up to `d` in small steps; false if the proxy or the link is ending
/// (including the other direction having finished).
fn nap(shared: &Shared, link: &Link, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if shared.stopping()
            || link.aborted.load(Ordering::SeqCst)
            || link.pumps.load(Ordering::SeqCst) < 2
        {
            return false;
        }
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(5)));
    }
    true
}

fn pump(shared: &Shared, link: &Link, dir: Dir) {
    let (mut src, mut dst) = link.ends(dir);
    let mine = link.fault.dir() == Some(dir);
    let mut forwarded: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let mut announced = false;
    let outcome: io::Result<()> = (|| loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            if !mine {
                dst.write_all(data)?;
                forwarded += data.len() as u64;
                break;
            }
            // Bytes before the fault's offset go through untouched.
            let at = match &link.fault {
                Fault::Reset { at, .. }
                | Fault::Close { at, .. }
                | Fault::Stall { at, .. }
                | Fault::Garbage { at, .. } => Some(*at),
                _ => None,
            };
            if let Some(at) = at.filter(|_| !link.fired.load(Ordering::SeqCst)) {
                let room = at.saturating_sub(forwarded) as usize;
                if room > 0 {
                    let k = room.min(data.len());
                    dst.write_all(&data[..k])?;
                    forwarded += k as u64;
                    data = &data[k..];
                    continue;
                }
                match &link.fault {
                    Fault::Reset { .. } => {
                        fire(shared, link, |s| s.resets += 1);
                        abort(link, true);
                        return Ok(());
                    }
                    Fault::Close { .. } => {
                        fire(shared, link, |s| s.closes += 1);
                        abort(link, false);
                        return Ok(());
                    }
                    Fault::Stall { for_, .. } => {
                        fire(shared, link, |s| s.stalls += 1);
                        let d = for_.unwrap_or(Duration::from_secs(24 * 3600));
                        if !nap(shared, link, d) {
                            return Ok(());
                        }
                        continue;
                    }
                    Fault::Garbage { bytes, .. } => {
                        fire(shared, link, |s| s.garbage += 1);
                        dst.write_all(bytes)?;
                        continue;
                    }
                    _ => unreachable!("only offset faults have an offset"),
                }
            }
            match &link.fault {
                Fault::Delay { each, .. } => {
                    if !announced {
                        announced = true;
                        fire(shared, link, |s| s.delays += 1);
                    }
                    if !nap(shared, link, *each) {
                        return Ok(());
                    }
                    dst.write_all(data)?;
                    forwarded += data.len() as u64;
                    data = &[];
                }
                Fault::OneByteSegments { .. } => {
                    if !announced {
                        announced = true;
                        fire(shared, link, |s| s.splits += 1);
                    }
                    for b in data {
                        dst.write_all(std::slice::from_ref(b))?;
                        dst.flush()?;
                    }
                    forwarded += data.len() as u64;
                    data = &[];
                }
                _ => {
                    dst.write_all(data)?;
                    forwarded += data.len() as u64;
                    data = &[];
                }
            }
        }
        shared.update(|st| match dir {
            Dir::ToServer => st.stats.bytes_to_server += n as u64,
            Dir::ToClient => st.stats.bytes_to_client += n as u64,
        });
    })();
    if !link.aborted.load(Ordering::SeqCst) {
        match outcome {
            // EOF: pass the half-close on.
            Ok(()) => {
                let _ = dst.shutdown(Shutdown::Write);
            }
            Err(_) => link.shutdown_both(),
        }
    }
    if link.pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
        lock(&shared.links).remove(&link.id);
    }
}

/// Ends the link from a pump: with `reset`, both sockets get linger 0 so that
/// the final close (when both pumps have dropped the link) sends RSTs.
fn abort(link: &Link, reset: bool) {
    link.aborted.store(true, Ordering::SeqCst);
    if reset {
        super::sockopt::set_linger_zero(&link.client);
        super::sockopt::set_linger_zero(&link.server);
        // Wake the other pump (its read returns EOF) without sending anything.
        let _ = link.client.shutdown(Shutdown::Read);
        let _ = link.server.shutdown(Shutdown::Read);
    } else {
        link.shutdown_both();
    }
}
