//! The TLS server both clients talk to: nginx when installed (a neutral
//! server), else this binary's own `server` mode (hyper on tokio) in a
//! process of its own. Certificates are made at run time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Paths the clients request, and the body sizes behind them.
pub(crate) const SMALL: &str = "/5";
pub(crate) const LARGE: &str = "/4k";
const SMALL_BODY: &[u8] = b"hello";
const LARGE_LEN: usize = 4096;

/// A temp directory removed (with its contents) on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<TempDir, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("rotary-compare-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(path.join("www"))
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA (`ca.pem`, what clients trust) and a leaf for 127.0.0.1 and
/// localhost (`cert.pem`, `key.pem`), ECDSA P-256, written into `dir`.
pub(crate) fn write_pki(dir: &Path) -> Result<(), String> {
    let err = |e: rcgen::Error| format!("certificate generation: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rotary compare CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(err)?;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(err)?;
    for (name, contents) in [
        ("ca.pem", ca_cert.pem()),
        ("cert.pem", leaf.pem() + &ca_cert.pem()),
        ("key.pem", leaf_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), contents).map_err(|e| format!("write {name}: {e}"))?;
    }
    for (name, contents) in [("5", SMALL_BODY.to_vec()), ("4k", vec![b'x'; LARGE_LEN])] {
        std::fs::write(dir.join("www").join(name), contents)
            .map_err(|e| format!("write www/{name}: {e}"))?;
    }
    Ok(())
}

/// Which server to run.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Nginx(PathBuf),
    /// This binary's `server` mode.
    Builtin,
}

/// nginx: `$ROTARY_NGINX`, `nginx` on `PATH`, or `/usr/sbin/nginx`.
pub(crate) fn find_nginx() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROTARY_NGINX") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// Children get SIGTERM when this process dies (even by a signal that skips
/// `Drop`), so no nginx or client outlives an interrupted run.
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork
    // and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

/// A running server process, stopped on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    pub(crate) description: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its workers ("fast shutdown"); the
        // builtin server just exits.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Starts the server on `port` (a free one when `None`).
pub(crate) fn start(kind: &Kind, dir: &Path, port: Option<u16>) -> Result<Server, String> {
    // Something else listening there would answer our readiness probe and
    // then hang every client: refuse a taken port up front.
    if let Some(p) = port {
        std::net::TcpListener::bind(("127.0.0.1", p))
            .map_err(|e| format!("port {p} on 127.0.0.1 is not free: {e}"))?;
    }
    match kind {
        Kind::Nginx(bin) => {
            // A free port may be taken again before nginx binds it: retry then.
            let mut last = String::new();
            for _ in 0..3 {
                let p = match port {
                    Some(p) => p,
                    None => free_port()?,
                };
                match start_nginx(bin, dir, p) {
                    Ok(s) => return Ok(s),
                    Err(e) if port.is_none() && e.contains("Address already in use") => last = e,
                    Err(e) => return Err(e),
                }
            }
            Err(last)
        }
        Kind::Builtin => start_builtin(dir, port.unwrap_or(0)),
    }
}

fn start_nginx(bin: &Path, dir: &Path, port: u16) -> Result<Server, String> {
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
worker_rlimit_nofile 30000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 25000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port} ssl backlog=8192;
        server_name localhost;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.3;
        # One suite for every client: rotary and hyper offer AES-128-GCM
        # first, wrk (OpenSSL) AES-256-GCM-SHA384, which nginx would grant
        # it. X25519 is every client's first key share.
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        # OpenSSL sends two TLS 1.3 session tickets after every handshake
        # even with tickets and the cache off; no ticket is offered at all.
        ssl_conf_command NumTickets 0;
        ssl_session_cache off;
        ssl_session_tickets off;
        root {d}/www;
        # Workload g: uploads of any size land here (the dav module's PUT).
        client_max_body_size 0;
        location /sink/ {{
            root {d}/dav;
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"
    );
    // nginx's workers drop root (to nobody) and must write the uploads.
    let dav = dir.join("dav");
    std::fs::create_dir_all(&dav).map_err(|e| format!("create dav dir: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dav, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod dav dir: {e}"))?;
    }
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write nginx.conf: {e}"))?;
    let _ = std::fs::remove_file(dir.join("error.log"));
    let child = die_with_parent(&mut Command::new(bin))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let version = Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    let mut server = Server {
        child,
        port,
        description: format!(
            "{} (1 worker, TLS 1.3 AES-128-GCM only, no session cache or tickets)",
            version.trim_start_matches("nginx version: ")
        ),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            // nginx that lost a bind race exits; make sure ours is the listener.
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(Some(status)) = server.child.try_wait() {
                let last = log().lines().last().unwrap_or("").trim().to_owned();
                return Err(format!("nginx exited ({status}) on {addr}: {last}"));
            }
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = log();
            let last = log.lines().last().unwrap_or("").trim().to_owned();
            return Err(format!(
                "nginx exited ({status}) before listening on {addr}: {last}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("nginx did not listen on {addr} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_builtin(dir: &Path, port: u16) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = die_with_parent(&mut Command::new(exe))
        .args(["server", "--port", &port.to_string(), "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn builtin server: {e}"))?;
    let stdout = child.stdout.take().ok_or("builtin server: no stdout")?;
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let Some(port) = line
        .strip_prefix("LISTEN ")
        .and_then(|p| p.trim().parse().ok())
    else {
        let _ = child.kill();
        let out = child
            .wait_with_output()
            .map(|o| o.stderr)
            .unwrap_or_default();
        let err = String::from_utf8_lossy(&out);
        return Err(format!("builtin server did not start: {}", err.trim()));
    };
    Ok(Server {
        child,
        port,
        description: "builtin hyper 1 server (tokio, 1 worker thread)".into(),
    })
}

/// `compare server --port P --dir D`: serve `SMALL` and `LARGE` over TLS
/// until killed. Prints `LISTEN <port>` once bound.
pub(crate) fn serve(port: u16, dir: &Path) -> Result<(), String> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert.pem: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| format!("key.pem: {e}"))?;
    let provider = Arc::new(rotary::crypto_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("rustls: {e}"))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let small = Bytes::from_static(SMALL_BODY);
    let large = Bytes::from(vec![b'x'; LARGE_LEN]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
            .port();
        println!("LISTEN {port}");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, small, large) = (acceptor.clone(), small.clone(), large.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = match req.uri().path() {
                        SMALL => Some(small.clone()),
                        LARGE => Some(large.clone()),
                        _ => None,
                    };
                    async move {
                        let resp = match body {
                            Some(b) => hyper::Response::new(Full::new(b)),
                            None => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}
