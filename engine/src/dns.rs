//! Name resolution off the event loop: a small thread pool (or the embedder's
//! own [`Resolver`]) whose answers come back through the loop's waker.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::keys::ConnKey;

/// Resolves a host name to the addresses to try, in order.
///
/// Called on one of the engine's resolver threads, never on the loop, so it
/// may block. The engine resolves afresh for every new connection, so DNS
/// changes reach the next connection.
pub trait Resolver: Send + Sync {
    /// Look up `host`; the port is to be set on every returned address.
    ///
    /// # Errors
    /// Any error ends the connection attempt with [`Error::Resolve`](crate::Error::Resolve).
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The default resolver: the system's `getaddrinfo` through `ToSocketAddrs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

struct Job {
    conn: ConnKey,
    serial: u64,
    host: String,
    port: u16,
}

/// One finished lookup, for the connection `conn` with attempt `serial`.
pub(crate) struct Answer {
    pub(crate) conn: ConnKey,
    pub(crate) serial: u64,
    pub(crate) result: io::Result<Vec<SocketAddr>>,
}

/// The resolver thread pool. Threads start on first use.
pub(crate) struct DnsPool {
    resolver: Arc<dyn Resolver>,
    max_threads: usize,
    tx: Option<mpsc::Sender<Job>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    waker: Arc<mio::Waker>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsPool {
    pub(crate) fn new(
        resolver: Arc<dyn Resolver>,
        max_threads: usize,
        waker: Arc<mio::Waker>,
    ) -> DnsPool {
        let (tx, rx) = mpsc::channel();
        DnsPool {
            resolver,
            max_threads: max_threads.max(1),
            tx: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            answers: Arc::new(Mutex::new(Vec::new())),
            waker,
            threads: Vec::new(),
        }
    }

    /// Queue a lookup; the answer arrives through [`DnsPool::take_answers`]
    /// after the waker fires.
    pub(crate) fn submit(&mut self, conn: ConnKey, serial: u64, host: &str, port: u16) {
        if self.threads.len() < self.max_threads {
            self.spawn_thread();
        }
        if let Some(tx) = &self.tx {
            let job = Job {
                conn,
                serial,
                host: host.to_owned(),
                port,
            };
            if tx.send(job).is_err() {
                log::warn!("resolver pool has stopped; lookup of {host} dropped");
            }
        }
    }

    fn spawn_thread(&mut self) {
        let rx = Arc::clone(&self.rx);
        let answers = Arc::clone(&self.answers);
        let waker = Arc::clone(&self.waker);
        let resolver = Arc::clone(&self.resolver);
        let spawned = std::thread::Builder::new()
            .name("rotary-dns".into())
            .spawn(move || loop {
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let result = resolver.resolve(&job.host, job.port).and_then(|addrs| {
                    if addrs.is_empty() {
                        Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"))
                    } else {
                        Ok(addrs)
                    }
                });
                if let Ok(mut a) = answers.lock() {
                    a.push(Answer {
                        conn: job.conn,
                        serial: job.serial,
                        result,
                    });
                }
                let _ = waker.wake();
            });
        match spawned {
            Ok(handle) => self.threads.push(handle),
            Err(e) => log::error!("could not start a resolver thread: {e}"),
        }
    }

    /// Move the finished lookups into `out`.
    pub(crate) fn take_answers(&self, out: &mut Vec<Answer>) {
        if let Ok(mut a) = self.answers.lock() {
            out.append(&mut a);
            shrink_after_burst(&mut a);
        }
    }

    /// Stop the threads. With `join`, wait for them (a lookup in progress
    /// finishes first); without, they exit on their own after it.
    pub(crate) fn stop(&mut self, join: bool) {
        self.tx = None;
        let threads = std::mem::take(&mut self.threads);
        if join {
            for t in threads {
                let _ = t.join();
            }
        }
    }

    /// Live resolver threads.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// An emptied list of answers that a burst of lookups grew gives its memory
/// back (a steady trickle of connections keeps its room).
pub(crate) fn shrink_after_burst(answers: &mut Vec<Answer>) {
    if answers.is_empty() && answers.capacity() > ANSWERS_KEPT {
        *answers = Vec::new();
    }
}

/// Answers an empty list keeps room for.
const ANSWERS_KEPT: usize = 64;
