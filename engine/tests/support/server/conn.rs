//! Serving connections: the accept loop (one thread per connection), the
//! accept hook's verdict, the TLS handshake, then requests read (the head,
//! the on-head hook's plan, the body), handed to the handler and answered
//! until one side closes, or answered early as the plan says; and every way a
//! connection ends (graceful with a linger, FIN, RST, stall). Changes the
//! shared state only through `update` and `untrack`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::{ConnInfo, ReadError, RequestReader};
use super::script::{Accept, BodyPlan, Cut, End, Reply, ReplyKind};
use super::shared::Shared;
use super::tls::handshake;
use super::Io;
use crate::support::lock;
use crate::support::sockopt::set_linger_zero;

/// How long a graceful close waits for the client's EOF before dropping.
const LINGER: Duration = Duration::from_secs(1);
/// Stack of the per-connection threads (hundreds may run at once).
const CONN_STACK: usize = 256 * 1024;

pub(super) fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(_) if shared.stopping() => return,
            Err(_) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if !shared.sleep(Duration::from_millis(10)) {
                    return;
                }
                continue;
            }
        };
        let accepted_at = Instant::now();
        if shared.stopping() {
            return;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        {
            let mut conns = lock(&shared.conns);
            if shared.stopping() {
                return;
            }
            conns.insert(id, clone);
        }
        let _ = stream.set_nodelay(true);
        shared.update(|st| {
            st.stats.connections_accepted += 1;
            st.stats.connections_open += 1;
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("test-server-conn-{id}"))
            .stack_size(CONN_STACK)
            .spawn(move || {
                let guard = ConnGuard {
                    shared: s.clone(),
                    id,
                    closed: AtomicBool::new(false),
                };
                serve_conn(&s, stream, &guard, peer, accepted_at);
            });
        match spawned {
            Ok(h) => shared.threads.add(h),
            Err(_) => {
                shared.untrack(id);
                shared.update(|st| st.stats.connections_open -= 1);
            }
        }
    }
}

/// Untracks the connection and updates the gauge when the server has closed it
/// (before any lingering drain) or its thread ends, even by panic.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    closed: AtomicBool,
}

impl ConnGuard {
    /// Counts the connection as closed (once).
    fn closed(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.shared.update(|st| st.stats.connections_open -= 1);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.untrack(self.id);
        self.closed();
    }
}

/// Ends the connection: untrack first so that our close is the last reference.
fn finish(shared: &Shared, guard: &ConnGuard, mut io: Io, how: End) {
    let id = guard.id;
    match how {
        End::Graceful => {
            if let Io::Tls(t) = &mut io {
                t.conn.send_close_notify();
            }
            let _ = io.flush();
            let tcp = io.tcp();
            let _ = tcp.shutdown(Shutdown::Write);
            guard.closed();
            // Drain until the client's EOF so that unread bytes do not turn our
            // close into an RST that could destroy the response in flight.
            let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
            let deadline = Instant::now() + LINGER;
            let mut buf = [0u8; 4096];
            let mut raw = tcp;
            while Instant::now() < deadline && !shared.stopping() {
                match raw.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            shared.untrack(id);
        }
        End::Abort(Cut::Close) => {
            let _ = io.tcp().shutdown(Shutdown::Both);
            shared.untrack(id);
        }
        End::Abort(Cut::Reset) => {
            set_linger_zero(io.tcp());
            shared.untrack(id);
        }
        End::Abort(Cut::Stall) => {
            shared.stall();
            let _ = io.tcp().shutdown(Shutdown::Both);
            shared.untrack(id);
        }
    }
    drop(io);
}

fn serve_conn(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    guard: &ConnGuard,
    peer: SocketAddr,
    accepted_at: Instant,
) {
    let id = guard.id;
    let mut info = ConnInfo {
        id,
        peer,
        tls: None,
        accepted_at,
        ready_at: None,
    };
    let hook = shared
        .accept
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let action = hook.map_or(Accept::Serve, |h| h(&info));
    match action {
        Accept::Serve => {}
        Accept::DelayThenServe(d) => {
            if !shared.sleep(d) {
                return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Close));
            }
        }
        Accept::Close => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Close)),
        Accept::Reset => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Reset)),
        Accept::Stall => return finish(shared, guard, Io::Plain(tcp), End::Abort(Cut::Stall)),
        Accept::SendRawThenClose(bytes) => {
            let mut tcp = tcp;
            let _ = tcp.write_all(&bytes);
            return finish(shared, guard, Io::Plain(tcp), End::Graceful);
        }
    }

    let mut io = match &shared.tls {
        None => Io::Plain(tcp),
        Some(config) => match handshake(shared, config, tcp) {
            Ok((io, tls)) => {
                info.tls = Some(tls);
                io
            }
            Err(()) => {
                shared.untrack(id);
                return;
            }
        },
    };
    info.ready_at = Some(Instant::now());
    shared.update(|st| st.conn_infos.push(info.clone()));

    let mut reader = RequestReader::default();
    let mut index_on_conn = 0;
    loop {
        let _ = io.tcp().set_read_timeout(shared.idle_timeout());
        let parsed = reader.read_head(&mut io);
        let _ = io.tcp().set_read_timeout(None);
        let (mut req, framing) = match parsed {
            Ok(Some(head)) => head,
            Ok(None) => return finish(shared, guard, io, End::Graceful),
            Err(e) => return refuse(shared, guard, io, e),
        };
        req.conn_id = id;
        req.index_on_conn = index_on_conn;
        index_on_conn += 1;

        let on_head = shared
            .on_head
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (limit, early) = match on_head.map_or(BodyPlan::Read, |h| h(&req, &info)) {
            BodyPlan::Read => (None, None),
            BodyPlan::Early(n, reply) => (Some(n), Some(*reply)),
        };
        // `Expect: 100-continue` is answered when the body is to be read.
        if limit != Some(0)
            && req.minor_version == 1
            && req.has_token("expect", "100-continue")
            && io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|_| io.flush())
                .is_err()
        {
            return finish(shared, guard, io, End::Abort(Cut::Close));
        }
        let keep = shared.keep_bodies.load(Ordering::SeqCst);
        if let Err(e) = reader.read_body(&mut io, &mut req, framing, limit, keep) {
            return refuse(shared, guard, io, e);
        }
        shared.update(|st| {
            req.seq = st.stats.requests;
            st.stats.requests += 1;
            st.requests.push(req.clone());
        });

        let head_request = req.method.eq_ignore_ascii_case("HEAD");
        if let Some(reply) = early {
            // The body was not read to its end: the connection cannot carry
            // another request.
            return match write_reply(shared, &mut io, &reply, head_request) {
                Written::Complete => {
                    shared.update(|st| st.stats.replies_completed += 1);
                    finish(shared, guard, io, End::Graceful)
                }
                Written::End(end) => finish(shared, guard, io, end),
            };
        }
        let handler = shared
            .handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut reply = handler(&req, &info);
        let limit = shared.keepalive_requests.load(Ordering::SeqCst);
        if limit != 0 && index_on_conn as u64 >= limit && matches!(reply.kind, ReplyKind::Respond) {
            // Like nginx's keepalive_requests: the last exchange says so and closes.
            reply = reply.header("Connection", "close").close_after();
        }
        match write_reply(shared, &mut io, &reply, head_request) {
            Written::Complete => {
                shared.update(|st| st.stats.replies_completed += 1);
                if reply.wants_close(&req) {
                    return finish(shared, guard, io, End::Graceful);
                }
            }
            Written::End(end) => return finish(shared, guard, io, end),
        }
    }
}

/// A request that could not be read: an idle timeout closes gracefully, a
/// malformed one is answered 400 and closed, a broken stream is dropped.
fn refuse(shared: &Shared, guard: &ConnGuard, mut io: Io, e: ReadError) {
    match e {
        ReadError::Idle => {
            shared.update(|st| st.stats.idle_closed += 1);
            finish(shared, guard, io, End::Graceful)
        }
        ReadError::Bad(why) => {
            shared.update(|st| st.stats.bad_requests += 1);
            let body = format!("bad request: {why}\n");
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = io.write_all(reply.as_bytes());
            finish(shared, guard, io, End::Graceful)
        }
        ReadError::Io => finish(shared, guard, io, End::Abort(Cut::Close)),
    }
}

enum Written {
    Complete,
    End(End),
}

fn write_reply(shared: &Shared, io: &mut Io, reply: &Reply, head_request: bool) -> Written {
    match reply.kind {
        ReplyKind::End(end) => return Written::End(end),
        ReplyKind::Respond | ReplyKind::Raw(_) => {}
    }
    let mut written = 0usize;
    for (delay, seg) in reply.segments(head_request) {
        if !delay.is_zero() && !shared.sleep(delay) {
            return Written::End(End::Abort(Cut::Close));
        }
        for bytes in seg.pieces() {
            if let Some((at, cut)) = reply.cut {
                if at <= written + bytes.len() {
                    let n = at.saturating_sub(written);
                    if io.write_all(&bytes[..n]).and_then(|_| io.flush()).is_err() {
                        return Written::End(End::Abort(Cut::Close));
                    }
                    return Written::End(End::Abort(cut));
                }
            }
            if io.write_all(&bytes).and_then(|_| io.flush()).is_err() {
                return Written::End(End::Abort(Cut::Close));
            }
            written += bytes.len();
        }
    }
    if let Some((_, cut)) = reply.cut {
        // The offset lies beyond the reply: cut right after it.
        return Written::End(End::Abort(cut));
    }
    Written::Complete
}
