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
