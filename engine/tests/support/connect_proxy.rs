//! A scripted forward proxy on 127.0.0.1: each connection's request head is
//! read and recorded, then answered as the script says — a real tunnel to
//! one upstream address, an answer of its own for absolute-form requests,
//! canned bytes, silence, or a close — so every proxy fault row of
//! `docs/failures.md` has a peer that produces it on cue.
//!
//! [`ConnectProxy::start_tls`] puts a TLS front before it, an `https://`
//! proxy: each connection's TLS (with a certificate the test issues) is
//! terminated and its plaintext relayed to a plain proxy following the
//! script, so the engine runs the origin's TLS inside the proxy's.
//!
//! Thread per connection (two while tunnelling or terminating TLS),
//! blocking I/O with read timeouts, so every thread ends within seconds of
//! its peer going away; dropping the proxy stops the accept loop. Owns its
//! listener, the recorded heads and (for TLS) the plain proxy behind it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::certs::Issued;

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
    /// For a TLS front: the plain proxy it relays to (dropped after it).
    behind: Option<Box<ConnectProxy>>,
    /// TLS handshakes the front completed.
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
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
            behind: None,
            handshakes: Arc::default(),
        }
    }

    /// An `https://` proxy: TLS with `cert` (its chain and key) on its own
    /// port, the plaintext inside following `script` as [`ConnectProxy::start`]
    /// does. [`ConnectProxy::url`] then says `https://`.
    pub fn start_tls(script: ProxyScript, cert: &Issued) -> ConnectProxy {
        let behind = ConnectProxy::start(script);
        let backend = behind.addr;
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_no_client_auth()
                .with_single_cert(cert.chain_der(), cert.key_der())
                .expect("proxy certificate and key match");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tls proxy");
        let addr = listener.local_addr().expect("tls proxy addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, h) = (stop.clone(), handshakes.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (config, h) = (config.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = terminate(conn, config, backend, h);
                });
            }
        });
        ConnectProxy {
            addr,
            heads: behind.heads.clone(),
            stop,
            accept: Some(accept),
            behind: Some(Box::new(behind)),
            handshakes,
        }
    }

    /// TLS handshakes completed by a TLS front (0 for a plain proxy).
    pub fn tls_handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, `http://127.0.0.1:PORT` (`https://` for a TLS front), with
    /// `userinfo@` when given.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        let scheme = if self.behind.is_some() {
            "https"
        } else {
            "http"
        };
        match userinfo {
            Some(u) => format!("{scheme}://{u}@{}", self.addr),
            None => format!("{scheme}://{}", self.addr),
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
        self.behind.take();
    }
}

/// A TLS front's connection: terminate TLS and relay the plaintext to the
/// plain proxy at `backend`, both ways. One thread decrypts what the client
/// sends, this one encrypts what comes back; the session is shared under a
/// lock that is never held across a blocking read.
fn terminate(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    backend: SocketAddr,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
) -> io::Result<()> {
    tcp.set_read_timeout(Some(IDLE))?;
    let session = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let session = Arc::new(Mutex::new(session));
    let back = TcpStream::connect(backend)?;
    back.set_read_timeout(Some(IDLE))?;
    let (mut tcp_r, mut tcp_w) = (tcp.try_clone()?, tcp);
    let (mut back_r, mut back_w) = (back.try_clone()?, back);
    let inbound = {
        let (session, mut tcp_w) = (session.clone(), tcp_w.try_clone()?);
        let back_end = back_w.try_clone()?;
        std::thread::spawn(move || {
            let result = (move || -> io::Result<()> {
                let mut buf = vec![0u8; 16 * 1024];
                let mut plain = Vec::new();
                let mut counted = false;
                loop {
                    let n = tcp_r.read(&mut buf)?;
                    if n == 0 {
                        let _ = back_w.shutdown(Shutdown::Write);
                        return Ok(());
                    }
                    {
                        let mut s = super::lock(&session);
                        let mut input = &buf[..n];
                        while !input.is_empty() {
                            s.read_tls(&mut input)?;
                            let state = s
                                .process_new_packets()
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                            while s.wants_write() {
                                s.write_tls(&mut tcp_w)?;
                            }
                            let state = state?;
                            if !counted && !s.is_handshaking() {
                                counted = true;
                                handshakes.fetch_add(1, Ordering::SeqCst);
                            }
                            // Appended: one read may hold several records.
                            let mut at = plain.len();
                            plain.resize(at + state.plaintext_bytes_to_read(), 0);
                            while at < plain.len() {
                                match s.reader().read(&mut plain[at..])? {
                                    0 => break,
                                    got => at += got,
                                }
                            }
                            plain.truncate(at);
                            if state.peer_has_closed() {
                                input = &[];
                            }
                        }
                    }
                    back_w.write_all(&plain)?;
                    plain.clear();
                }
            })();
            // However it ended, the plain proxy hears of it at once.
            let _ = back_end.shutdown(Shutdown::Both);
            result
        })
    };
    let mut buf = vec![0u8; 16 * 1024];
    let outbound: io::Result<()> = (|| loop {
        let n = back_r.read(&mut buf)?;
        let mut s = super::lock(&session);
        if n == 0 {
            s.send_close_notify();
        } else {
            s.writer().write_all(&buf[..n])?;
        }
        while s.wants_write() {
            s.write_tls(&mut tcp_w)?;
        }
        if n == 0 {
            let _ = tcp_w.shutdown(Shutdown::Write);
            return Ok(());
        }
    })();
    let _ = tcp_w.shutdown(Shutdown::Both);
    let _ = inbound.join();
    outbound
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
