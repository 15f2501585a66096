//! Interop against nginx, a real TLS server nobody here wrote.
//!
//! Every test is `#[ignore]`d for plain `cargo test`: it needs an `nginx`
//! binary (Debian's `nginx-light` is enough). CI (`.ci/run`) installs it and
//! runs `cargo test -p rotary --test nginx -- --ignored`; run them the same
//! way by hand. The binary is `$ROTARY_NGINX`, else `nginx` on `PATH`, else
//! `/usr/sbin/nginx`; without one the tests fail saying so.
//!
//! Each test writes its own `nginx.conf` into a temp dir (certificates from a
//! run-time `TestCa`, static files it serves, logs, pid file), runs nginx in
//! the foreground (`daemon off`, with a master process so `nginx -s reload`
//! works) as a child on a free port of 127.0.0.1, and stops it on drop.

mod driver;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driver::*;
use rotary::{CloseReason, Engine, Event, Handshake, RequestId, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- nginx

/// The nginx binary: `$ROTARY_NGINX`, `nginx` on `PATH`, or `/usr/sbin/nginx`.
fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ROTARY_NGINX") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    match on_path {
        Some(path) => path,
        None if Path::new("/usr/sbin/nginx").is_file() => PathBuf::from("/usr/sbin/nginx"),
        None => panic!(
            "nginx not found (not on PATH, not /usr/sbin/nginx, ROTARY_NGINX unset): \
             these interop tests need it; install it with \
             `apt-get install nginx-light` (CI's .ci/run does)"
        ),
    }
}

/// nginx's prefix: a temp directory with `www/` inside, removed (with
/// whatever nginx wrote there) on drop. Opened to 0755 from tempfile's 0700:
/// the workers run as another user and must reach `www/`.
fn nginx_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rotary-nginx-")
        .tempdir()
        .expect("create nginx temp dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open nginx temp dir to its workers");
    }
    std::fs::create_dir(dir.path().join("www")).expect("create nginx www dir");
    dir
}

/// nginx serving TLS on 127.0.0.1:<port> from a temp dir of its own.
struct Nginx {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    // Dropped after the child is stopped (fields drop in order).
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx presenting `leaf`; `server` is spliced into the `server`
    /// block (keep-alive settings, extra locations). `files` go under the
    /// document root.
    fn start(leaf: &Issued, server: &str, files: &[(&str, &[u8])]) -> Nginx {
        let bin = nginx_binary();
        let dir = nginx_dir();
        let mut nginx = Nginx {
            bin,
            port: 0,
            child: None,
            dir,
        };
        nginx.set_cert(leaf);
        for (name, contents) in files {
            nginx.write(name, contents);
        }
        // The free port may be taken again before nginx binds it: retry then.
        for attempt in 1.. {
            nginx.port = free_port();
            match nginx.launch(server) {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("Address already in use") => {}
                Err(log) => panic!("{log}"),
            }
        }
        nginx
    }

    /// Writes `nginx.conf` for `self.port`, spawns nginx and waits until it listens.
    fn launch(&mut self, server: &str) -> Result<(), String> {
        let (d, port) = (self.dir.path().display(), self.port);
        let conf = format!(
            "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    types {{ text/html html; text/plain txt; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {d}/www;
        location = /hello {{ return 200 \"hello\"; }}
{server}
    }}
}}
"
        );
        std::fs::write(self.conf_path(), conf).expect("write nginx.conf");
        let child = Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.conf_path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_listening()
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the port accepts; `Err` with the error log if
    /// nginx exits first, a panic if it never listens.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + T;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "nginx exited with {status} before listening on {addr}; error.log:\n{}",
                    self.error_log()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr} within {T:?}; error.log:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn write(&self, name: &str, contents: &[u8]) {
        let path = self.dir.path().join("www").join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create www subdir");
        }
        std::fs::write(path, contents).expect("write www file");
    }

    /// (Re)writes the certificate chain and key nginx loads (at start and on reload).
    fn set_cert(&self, leaf: &Issued) {
        for (name, contents) in [("cert.pem", leaf.chain_pem()), ("key.pem", leaf.key_pem())] {
            let path = self.dir.path().join(name);
            let tmp = self.dir.path().join(format!("{name}.new"));
            std::fs::write(&tmp, contents).expect("write certificate file");
            std::fs::rename(&tmp, &path).expect("move certificate file in place");
        }
    }

    /// `nginx -s <signal>` against this instance's pid file.
    fn signal(&self, signal: &str) -> std::process::Output {
        Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.conf_path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .args(["-s", signal])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} -s {signal}: {e}", self.bin.display()))
    }

    /// Re-reads the configuration and certificates: new workers, old ones
    /// finish gracefully.
    fn reload(&self) {
        let out = self.signal("reload");
        assert!(
            out.status.success(),
            "nginx -s reload failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.error_log()
        );
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Fast shutdown through the pid file: the master stops its workers.
        let _ = self.signal("stop");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A port that was free a moment ago (bound to :0, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------- helpers

/// `len` bytes of a pattern whose period (251) no power-of-two split lines up with.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `len` bytes of printable text (SSI processes text).
fn text(len: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789\n";
    (0..len)
        .map(|i| alphabet[(i * 7 + i / 37) % alphabet.len()] as char)
        .collect()
}

fn served_by(out: &Outcome, id: RequestId) -> &rotary::ServedBy {
    match out.event(id) {
        Event::Response { served_by, .. } => served_by,
        other => panic!("request {id:?} did not succeed: {other:#?}"),
    }
}

/// Polls the engine (not a sleep outside it) for `d`, keeping its events.
fn idle_for(engine: &mut Engine, d: Duration, events: &mut Vec<Event>) {
    let until = Instant::now() + d;
    loop {
        while let Some(e) = engine.next_event() {
            events.push(e);
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        engine.poll(Some(until - now)).expect("poll does not fail");
    }
}

fn get_ok(engine: &mut Engine, url: &str) -> (RequestId, Outcome) {
    let id = engine.submit(get(url), RequestOptions::default().deadline(T));
    let out = finish(engine, &[id], T);
    assert_eq!(out.response(id).status(), 200, "{url}");
    (id, out)
}

// ---------------------------------------------------------------- tests

#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn tls_keep_alive_reuses_one_connection() {
    let (ca, leaf) = ca_and_leaf();
    let nginx = Nginx::start(&leaf, "", &[]);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let mut conns = Vec::new();
    for i in 0..5 {
        let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
        assert_eq!(out.response(id).body(), "hello");
        let by = served_by(&out, id);
        assert_eq!(by.reused, i > 0);
        assert_eq!(
            by.chain.as_ref().expect("TLS chain").der(),
            &leaf.chain_der()[..]
        );
        if i == 0 {
            let opened = out.opened();
            assert_eq!(opened.len(), 1);
            assert_eq!(opened[0].handshake, Some(Handshake::Full));
            assert!(opened[0].tls_version.is_some());
        }
        conns.push(by.conn);
    }
    conns.dedup();
    assert_eq!(conns.len(), 1, "one connection carried every request");
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.connections_reused, 4);
    assert_eq!(stats.requests_failed(), 0);
    assert_drained(&mut engine);
}

#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn keepalive_requests_3_server_closes_after_three_exchanges_and_no_request_fails() {
    let (ca, leaf) = ca_and_leaf();
    let nginx = Nginx::start(&leaf, "        keepalive_requests 3;", &[]);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let mut per_conn: Vec<(rotary::ConnId, usize)> = Vec::new();
    for i in 0..10 {
        let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
        let response = out.response(id);
        // nginx announces the close on the third response of each connection.
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v == "close");
        assert_eq!(close, i % 3 == 2, "request {i}: {:?}", response.headers());
        let conn = served_by(&out, id).conn;
        match per_conn.last_mut() {
            Some((c, n)) if *c == conn => *n += 1,
            _ => per_conn.push((conn, 1)),
        }
    }
    let counts: Vec<usize> = per_conn.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [3, 3, 3, 1]);
    let stats = engine.stats();
    assert_eq!(stats.requests_failed(), 0);
    assert_eq!(stats.connections_opened, 4);
    assert_eq!(stats.closed(CloseReason::ServerClose), 3);
    assert_eq!(
        stats.retries, 0,
        "a Connection: close is honoured, never raced"
    );
    assert_drained(&mut engine);
}

/// The reuse race: nginx closes a connection idle for 1 s, and requests come
/// 0.9 to 1.1 s apart, so some land on a connection nginx is closing at that
/// very moment. Idempotent GETs may be retried on a fresh connection; none
/// may fail.
#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn keepalive_timeout_1s_with_requests_spaced_around_one_second_none_fails() {
    let (ca, leaf) = ca_and_leaf();
    let nginx = Nginx::start(&leaf, "        keepalive_timeout 1s;", &[]);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let mut events = Vec::new();
    let waits_ms = [900, 950, 980, 1000, 1020, 1050, 1100];
    let mut ids = Vec::new();
    let (first, out) = get_ok(&mut engine, &nginx.url("/hello"));
    ids.push(first);
    events.extend(out.events);
    for ms in waits_ms {
        idle_for(&mut engine, Duration::from_millis(ms), &mut events);
        let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
        assert_eq!(out.response(id).body(), "hello");
        ids.push(id);
        events.extend(out.events);
    }
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let stats = engine.stats();
    assert_eq!(stats.requests_ok, ids.len() as u64);
    assert_eq!(stats.requests_failed(), 0);
    eprintln!(
        "keepalive_timeout race: {} requests, {} connections, {} reused, {} retries, \
         {} closed by peer",
        ids.len(),
        stats.connections_opened,
        stats.connections_reused,
        stats.retries,
        stats.closed(CloseReason::PeerClose)
    );
    assert_drained(&mut engine);
}

#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn static_bodies_of_4_kib_and_1_mib_arrive_whole_on_one_connection() {
    let (ca, leaf) = ca_and_leaf();
    let small = pattern(4 * 1024);
    let large = pattern(1024 * 1024);
    let nginx = Nginx::start(&leaf, "", &[("4k.bin", &small), ("1m.bin", &large)]);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let mut conns = Vec::new();
    for (path, body) in [
        ("/4k.bin", &small),
        ("/1m.bin", &large),
        ("/4k.bin", &small),
    ] {
        let (id, out) = get_ok(&mut engine, &nginx.url(path));
        let response = out.response(id);
        assert_eq!(
            response.headers()[http::header::CONTENT_LENGTH],
            body.len().to_string(),
            "{path}"
        );
        assert!(response.body() == &body[..], "{path}: body differs");
        conns.push(served_by(&out, id).conn);
    }
    conns.dedup();
    assert_eq!(conns.len(), 1);
    // The same 1 MiB streamed as body events.
    let id = engine.submit(
        get(&nginx.url("/1m.bin")),
        RequestOptions::default().streaming(true),
    );
    let out = finish(&mut engine, &[id], T);
    let streamed: Vec<u8> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Body { id: b, data } if *b == id => Some(&data[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    assert!(matches!(out.event(id), Event::End { .. }));
    assert!(streamed == large, "streamed body differs");
    assert_eq!(engine.stats().connections_opened, 1);
    assert_drained(&mut engine);
}

/// nginx's SSI filter drops Content-Length, so an HTTP/1.1 response through
/// it is chunked. The page includes a second file (a subrequest), so the
/// body comes in several chunks.
#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn chunked_responses_through_ssi_arrive_whole() {
    let (ca, leaf) = ca_and_leaf();
    let (head, part, tail) = (text(1000), text(300 * 1024), text(70_000));
    let page = format!("{head}<!--# include file=\"/part.txt\" -->{tail}");
    let nginx = Nginx::start(
        &leaf,
        "        location /ssi/ { ssi on; }",
        &[
            ("ssi/page.html", page.as_bytes()),
            (
                "ssi/small.html",
                b"<!--# echo var=\"ssi_missing\" default=\"ok\" -->",
            ),
            ("part.txt", part.as_bytes()),
        ],
    );
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let expected = format!("{head}{part}{tail}");
    for (path, body) in [
        ("/ssi/page.html", expected.as_bytes()),
        ("/ssi/small.html", b"ok".as_slice()),
        ("/ssi/page.html", expected.as_bytes()),
    ] {
        let (id, out) = get_ok(&mut engine, &nginx.url(path));
        let response = out.response(id);
        assert_eq!(
            response
                .headers()
                .get(http::header::TRANSFER_ENCODING)
                .map(|v| v.to_str().unwrap()),
            Some("chunked"),
            "{path}: {:?}",
            response.headers()
        );
        assert!(
            response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .is_none(),
            "{path}: a chunked response has no Content-Length"
        );
        assert!(response.body() == body, "{path}: body differs");
    }
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 1, "chunked framing ended cleanly");
    assert_eq!(stats.connections_reused, 2);
    assert_drained(&mut engine);
}

/// Replace nginx's certificate files and `nginx -s reload`: with a short max
/// age, the engine's next connections do full handshakes, see the new chain,
/// and report `ChainChanged`; no request fails meanwhile.
#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn certificate_rotation_through_nginx_reload_moves_connections_to_the_new_chain() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let nginx = Nginx::start(&leaf_a, "", &[]);
    let (mut engine, _ca_file) = engine_for(&ca, |c| {
        c.policy.max_age = Some(Duration::from_millis(200));
        c.policy.max_age_jitter = Some(Duration::ZERO);
    });
    let chain_a = leaf_a.chain_der();
    let chain_b = leaf_b.chain_der();
    let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
    assert_eq!(
        served_by(&out, id).chain.as_ref().unwrap().der(),
        &chain_a[..]
    );
    let mut events = out.events;

    nginx.set_cert(&leaf_b);
    nginx.reload();
    let rotated_at = Instant::now();

    // Keep requesting, 20 ms apart, until a response comes over the new chain.
    let deadline = rotated_at + T;
    let mut requests = 1;
    let first_b = loop {
        assert!(
            Instant::now() < deadline,
            "no connection with the new chain within {T:?}: {events:#?}"
        );
        let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
        requests += 1;
        let chain = served_by(&out, id).chain.clone().unwrap();
        events.extend(out.events);
        if chain.der() == &chain_b[..] {
            break Instant::now();
        }
        assert_eq!(chain.der(), &chain_a[..]);
        idle_for(&mut engine, Duration::from_millis(20), &mut events);
    };
    eprintln!(
        "new chain served {:?} after reload, {requests} requests",
        first_b - rotated_at
    );
    // Once moved, every later connection shows the new chain.
    for _ in 0..5 {
        idle_for(&mut engine, Duration::from_millis(50), &mut events);
        let (id, out) = get_ok(&mut engine, &nginx.url("/hello"));
        assert_eq!(
            served_by(&out, id).chain.as_ref().unwrap().der(),
            &chain_b[..]
        );
        events.extend(out.events);
    }
    let changes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ChainChanged {
                previous, current, ..
            } => Some((previous.clone(), current.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 1, "one ChainChanged: {changes:#?}");
    assert_eq!(changes[0].0.der(), &chain_a[..]);
    assert_eq!(changes[0].1.der(), &chain_b[..]);
    let opened_after: Vec<_> = events
        .iter()
        .skip_while(|e| !matches!(e, Event::ChainChanged { .. }))
        .filter_map(|e| match e {
            Event::Opened(info) => Some(info),
            _ => None,
        })
        .collect();
    assert!(opened_after.iter().all(|info| {
        info.handshake == Some(Handshake::Full)
            && info.chain.as_ref().is_some_and(|c| c.der() == &chain_b[..])
    }));
    assert!(events.iter().all(|e| !matches!(e, Event::Failed { .. })));
    let stats = engine.stats();
    assert_eq!(stats.requests_failed(), 0);
    assert_eq!(stats.chain_changes, 1);
    assert!(stats.closed(CloseReason::MaxAge) >= 1);
    assert_eq!(
        engine
            .peer_chain(&rotary::Origin::parse(&nginx.url("")).unwrap())
            .expect("the origin's current chain")
            .der(),
        &chain_b[..]
    );
    assert_drained(&mut engine);
}

#[test]
#[ignore = "needs nginx; run with --ignored (CI does)"]
fn a_leaf_only_nginx_still_gives_jobs_a_bundle_that_trusts_its_other_edges() {
    // nginx with a private CA sends the leaf alone: the presented chain
    // pins that leaf, the bundle is the root it verified up to.
    let (ca, leaf) = ca_and_leaf();
    let edge_a = Nginx::start(&leaf, "", &[]);
    let edge_b = Nginx::start(&ca.issue(&["localhost", "127.0.0.1"]), "", &[]);
    let (mut engine, _ca_file) = engine_for(&ca, |_| {});
    let (id, out) = get_ok(&mut engine, &edge_a.url("/hello"));
    let chain = served_by(&out, id).chain.clone().expect("a TLS chain");
    assert_eq!(
        chain.der(),
        &[leaf.cert_der()][..],
        "nginx sent the leaf alone"
    );
    let bundle = chain.ca_bundle().expect("a bundle");
    use rustls::pki_types::pem::PemObject;
    let in_bundle = rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the bundle is PEM");
    assert_eq!(in_bundle, [ca.cert_der()], "the root, not the leaf");
    assert_drained(&mut engine);

    let trusting = |pem: &str| {
        let file = TempFile::new("job-ca.pem", pem.as_bytes());
        let mut config = rotary::Config::default();
        config.trust = rotary::Trust::pem_file(file.path());
        let mut engine = Engine::new(config).expect("engine builds");
        let id = engine.submit(get(&edge_b.url("/hello")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        let result = match out.event(id) {
            Event::Response { .. } => Ok(()),
            Event::Failed { error, .. } => Err(error.to_string()),
            other => panic!("not terminal: {other:#?}"),
        };
        assert_drained(&mut engine);
        result
    };
    assert_eq!(trusting(&bundle), Ok(()), "the bundle trusts edge B");
    let err = trusting(&chain.to_pem()).expect_err("leaf A does not vouch for leaf B");
    assert!(err.contains("UnknownIssuer"), "{err}");
}
