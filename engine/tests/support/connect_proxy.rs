//! A scripted forward proxy on 127.0.0.1: each connection's request head is
//! read and recorded, then answered as the script says — a real tunnel to
//! one upstream address, an answer of its own for absolute-form requests,
//! canned bytes, silence, or a close — so every proxy fault row of
//! `docs/failures.md` has a peer that produces it on cue.
//!
//! Thread per connection (two while tunnelling), blocking I/O with read
//! timeouts, so every thread ends within seconds of its peer going away;
//! dropping the proxy stops the accept loop. Owns its listener and the
//! recorded heads.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long an idle thread waits before giving up on its peer.
const IDLE: Duration = Duration::from_secs(5);

/// What the proxy does with each connection, after reading its head.
#[derive(Clone, Debug)]
pub enum ProxyScript {
    /// `CONNECT`: answer 200 and relay to `upstream` both ways. Any other
    /// method (absolute-form): answer `200` with body `via proxy`.
    Tunnel { upstream: SocketAddr },
    /// As `Tunnel`, answering each `CONNECT` only after `delay`.
    SlowTunnel {
        upstream: SocketAddr,
        delay: Duration,
    },
    /// Write these bytes, then close.
    Answer(Vec<u8>),
    /// Write these bytes, then keep the connection open without a word
    /// until the client closes it.
    AnswerThenHold(Vec<u8>),
    /// Read the head and close without answering.
    Close,
}

/// The proxy; stops accepting on drop.
pub struct ConnectProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    /// A proxy following `script` for every connection.
    pub fn start(script: ProxyScript) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (script, heads) = (script.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &script, &heads);
                });
            }
        });
        ConnectProxy {
            addr,
            heads,
            stop,
            accept: Some(accept),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, `http://127.0.0.1:PORT`, with `userinfo@` when given.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The request heads received so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, script: &ProxyScript, heads: &Mutex<Vec<String>>) -> io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let (head, rest) = read_head(&mut conn)?;
    heads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(head.clone());
    match script {
        ProxyScript::Answer(bytes) => {
            conn.write_all(bytes)?;
            conn.shutdown(Shutdown::Write)?;
            drain(&mut conn);
        }
        ProxyScript::AnswerThenHold(bytes) => {
            conn.write_all(bytes)?;
            drain(&mut conn);
        }
        ProxyScript::Close => {
            conn.shutdown(Shutdown::Both)?;
        }
        ProxyScript::SlowTunnel { upstream, delay } => {
            std::thread::sleep(*delay);
            let tunnel = ProxyScript::Tunnel {
                upstream: *upstream,
            };
            return relay(conn, &tunnel, head, rest);
        }
        ProxyScript::Tunnel { .. } => return relay(conn, script, head, rest),
    }
    Ok(())
}

/// `Tunnel`: a CONNECT is answered 200 and relayed; anything else is
/// answered by the proxy itself.
fn relay(mut conn: TcpStream, script: &ProxyScript, head: String, rest: Vec<u8>) -> io::Result<()> {
    let ProxyScript::Tunnel { upstream } = script else {
        return Ok(());
    };
    match () {
        () if head.starts_with("CONNECT ") => {
            let up = TcpStream::connect(upstream)?;
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            let mut up_w = up.try_clone()?;
            up_w.write_all(&rest)?;
            let mut client_r = conn.try_clone()?;
            let to_server = std::thread::spawn(move || {
                let _ = io::copy(&mut client_r, &mut up_w);
                let _ = up_w.shutdown(Shutdown::Write);
            });
            let mut up_r = up;
            let _ = io::copy(&mut up_r, &mut conn);
            let _ = conn.shutdown(Shutdown::Write);
            let _ = to_server.join();
        }
        () => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nvia proxy")?;
            drain(&mut conn);
        }
    }
    Ok(())
}

/// Read up to the end of the request head; returns it as text and the
/// bytes read past it.
fn read_head(conn: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read and discard until the peer closes (or goes quiet for `IDLE`).
fn drain(conn: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}
