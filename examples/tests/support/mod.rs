//! A scripted HTTP/1.1 peer for fetch's tests: plain or TLS, answering each
//! request with what a closure returns and keeping every request it saw, so
//! a test asserts on the bytes fetch sent.
//!
//! Blocking std threads, one per connection, each with a read deadline so a
//! test that goes wrong fails instead of hanging.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// How long a connection waits for the next request before the peer drops it.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request line and header lines, CRLF-separated, without the blank line.
    pub head: String,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
    /// The client presented a certificate (TLS only).
    pub client_cert: bool,
}

impl Seen {
    /// `GET /path HTTP/1.1`.
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// The value of header `name` (the first one), case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A response with `status` (`"200 OK"`), `headers` and `body`, framed by
/// `Content-Length`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

type Reply = dyn Fn(&Seen) -> String + Send + Sync;

/// A running peer on 127.0.0.1; stops when dropped.
pub struct Peer {
    addr: SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Peer {
    /// A plain-HTTP peer answering every request with `reply(request)`.
    pub fn plain(reply: impl Fn(&Seen) -> String + Send + Sync + 'static) -> Peer {
        Peer::start(None, Arc::new(reply))
    }

    /// A TLS peer with `config`.
    pub fn tls(
        config: Arc<ServerConfig>,
        reply: impl Fn(&Seen) -> String + Send + Sync + 'static,
    ) -> Peer {
        Peer::start(Some(config), Arc::new(reply))
    }

    fn start(tls: Option<Arc<ServerConfig>>, reply: Arc<Reply>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (s, st) = (seen.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (tls, reply, seen) = (tls.clone(), reply.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, tls, &*reply, &seen);
                });
            }
        });
        Peer {
            addr,
            scheme,
            seen,
            stop,
            accept: Some(accept),
        }
    }

    /// The peer's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>` (or `https://`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    reply: &Reply,
    seen: &Mutex<Vec<Seen>>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_DEADLINE))?;
    match tls {
        None => exchanges(stream, |_| false, reply, seen),
        Some(config) => {
            let conn = ServerConnection::new(config).map_err(io::Error::other)?;
            let tls = StreamOwned::new(conn, stream);
            exchanges(
                tls,
                |s: &StreamOwned<ServerConnection, TcpStream>| s.conn.peer_certificates().is_some(),
                reply,
                seen,
            )
        }
    }
}

/// Answer requests on `stream` until the client closes it.
fn exchanges<S: Read + Write>(
    mut stream: S,
    client_cert: impl Fn(&S) -> bool,
    reply: &Reply,
    seen: &Mutex<Vec<Seen>>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk)? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut request = Seen {
            head,
            body: Vec::new(),
            client_cert: client_cert(&stream),
        };
        let length: usize = request
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk)? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        request.body = buf.drain(..length).collect();
        let answer = reply(&request);
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(request);
        stream.write_all(answer.as_bytes())?;
        stream.flush()?;
    }
}

/// A TCP relay in front of a server that injects one fault: a connection
/// that has carried `cut_after` bytes towards the server is cut (both
/// directions shut), mid-request. Every connection's threads end when
/// either side closes; the relay stops accepting when dropped.
pub struct FaultRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl FaultRelay {
    /// Relay to `target`, cutting each connection past `cut_after` bytes upstream.
    pub fn start(target: SocketAddr, cut_after: u64) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, cu) = (stop.clone(), cuts.clone());
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let cu = cu.clone();
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut up = 0u64;
                    let mut buf = [0u8; 16 * 1024];
                    let (mut from, mut to) = (client, server);
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let room = cut_after.saturating_sub(up);
                        let take = (n as u64).min(room) as usize;
                        if take > 0 && to.write_all(&buf[..take]).is_err() {
                            break;
                        }
                        up += take as u64;
                        if take < n {
                            cu.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = io::copy(&mut from, &mut to);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        FaultRelay {
            addr,
            stop,
            cuts,
            accept: Some(accept),
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
