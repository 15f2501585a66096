//! Through squid, a real proxy nobody here wrote: CONNECT without
//! credentials, with Basic credentials (an htpasswd file made at test time,
//! checked by the `basic_ncsa_auth` helper squid ships), a refused port
//! (403), a certificate rotation at the in-repo server healing within
//! `max_age` through the tunnel, and squid as an `https://` proxy (its
//! `https_port`; Debian builds squid with GnuTLS, which serves it) with the
//! origin's TLS inside squid's.
//!
//! Each test writes a minimal `squid.conf` into a temp dir (its own pid,
//! log and cache paths, no system service) and runs `squid -N` in the
//! foreground on a free port of 127.0.0.1, stopping it on drop. The binary
//! is `$ROTARY_SQUID`, else `squid` on `PATH`, else `/usr/sbin/squid`.
//! Without one (or without `htpasswd` for the auth test) a test is skipped
//! with a message, and fails under `CI=true` (`.ci/run` installs both).

mod driver;
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driver::*;
use rotary::{Error, Event, Handshake, Phase, Proxies, Proxy, ProxyFailure, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `name` at `$env`, on `PATH`, or at one of `fallbacks`; `None` after
/// saying why the test is skipped (a failure in CI).
fn tool(name: &str, env: &str, fallbacks: &[&str], package: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let found = on_path.or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()));
    match found {
        Some(p) => Some(p),
        None if in_ci() => panic!("`{name}` not found; CI (.ci/run) installs {package}"),
        None => {
            eprintln!("SKIPPED: `{name}` not found; install it with `apt-get install {package}`");
            None
        }
    }
}

/// squid's `basic_ncsa_auth` helper, where Debian's package puts it.
fn ncsa_helper() -> Option<PathBuf> {
    let found = [
        "/usr/lib/squid/basic_ncsa_auth",
        "/usr/lib/squid3/basic_ncsa_auth",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None if in_ci() => panic!("squid's basic_ncsa_auth helper not found under /usr/lib/squid"),
        None => {
            eprintln!("SKIPPED: squid's basic_ncsa_auth helper not found under /usr/lib/squid");
            None
        }
    }
}

/// A squid child on 127.0.0.1, with its own temp dir; killed on drop.
struct Squid {
    addr: SocketAddr,
    /// Its `https_port`, when started with a certificate.
    tls_addr: Option<SocketAddr>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Squid {
    /// Starts squid allowing CONNECT only to `allowed_port`, and with
    /// `auth` (user, password) requiring Basic credentials. `None` when
    /// squid (or a helper) is missing outside CI.
    fn start(allowed_port: u16, auth: Option<(&str, &str)>) -> Option<Squid> {
        Squid::start_with(allowed_port, auth, None)
    }

    /// As [`Squid::start`] without credentials, also serving TLS with
    /// `cert` on an `https_port` of its own.
    fn start_tls(allowed_port: u16, cert: &Issued) -> Option<Squid> {
        Squid::start_with(allowed_port, None, Some(cert))
    }

    fn start_with(
        allowed_port: u16,
        auth: Option<(&str, &str)>,
        cert: Option<&Issued>,
    ) -> Option<Squid> {
        let bin = tool("squid", "ROTARY_SQUID", &["/usr/sbin/squid"], "squid")?;
        let dir = tempfile::Builder::new()
            .prefix("rotary-squid-")
            .tempdir()
            .expect("squid temp dir");
        #[cfg(unix)]
        {
            // squid started as root runs as its own user, which writes the logs.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("open squid dir");
        }
        let d = dir.path().display();
        let port = free_port();
        let access = match auth {
            None => "http_access allow localhost\n".to_owned(),
            Some((user, password)) => {
                let htpasswd = tool("htpasswd", "ROTARY_HTPASSWD", &[], "apache2-utils")?;
                let helper = ncsa_helper()?;
                let file = dir.path().join("passwd");
                let made = Command::new(htpasswd)
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run htpasswd");
                assert!(made.success(), "htpasswd failed");
                open_to_all(&file);
                format!(
                    "auth_param basic program {} {}\n\
                     auth_param basic realm rotary-test\n\
                     acl authed proxy_auth REQUIRED\n\
                     http_access allow authed\n",
                    helper.display(),
                    file.display()
                )
            }
        };
        let (tls_addr, https_port) = match cert {
            None => (None, String::new()),
            Some(cert) => {
                let tls_port = free_port();
                let (cert_file, key_file) =
                    (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&cert_file, cert.chain_pem()).expect("write squid cert");
                std::fs::write(&key_file, cert.key_pem()).expect("write squid key");
                open_to_all(&cert_file);
                open_to_all(&key_file);
                (
                    Some(SocketAddr::from(([127, 0, 0, 1], tls_port))),
                    format!(
                        "https_port 127.0.0.1:{tls_port} tls-cert={} tls-key={}\n",
                        cert_file.display(),
                        key_file.display()
                    ),
                )
            }
        };
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             {https_port}\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log stdio:{d}/access.log\n\
             coredump_dir {d}\n\
             cache deny all\n\
             cache_mem 1 MB\n\
             pinger_enable off\n\
             dns_nameservers 127.0.0.1\n\
             shutdown_lifetime 0 seconds\n\
             acl SSL_ports port {allowed_port}\n\
             acl CONNECT method CONNECT\n\
             http_access deny CONNECT !SSL_ports\n\
             {access}\
             http_access deny all\n"
        );
        let conf_path = dir.path().join("squid.conf");
        std::fs::write(&conf_path, conf).expect("write squid.conf");
        open_to_all(&conf_path);
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        // A service name of its own: squids started side by side (tests run in
        // parallel) must not share their shared-memory segments.
        let child = Command::new(&bin)
            .arg("-n")
            .arg(format!("rotary{port}"))
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn squid");
        let mut squid = Squid {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_addr,
            child: Some(child),
            dir,
        };
        squid.wait_ready();
        Some(squid)
    }

    /// Waits until squid accepts connections (it binds once configured).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = |addr: &SocketAddr| {
            TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
        };
        loop {
            if up(&self.addr) && self.tls_addr.as_ref().is_none_or(up) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("squid exited with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "squid did not listen within 30 s: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "stderr:\n{}\ncache.log:\n{}",
            read("stderr.log"),
            read("cache.log")
        )
    }

    /// Its URL, with `userinfo@` when given.
    fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn open_to_all(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .expect("make readable");
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn via(url: &str) -> impl FnOnce(&mut rotary::Config) + '_ {
    move |c| c.proxy = Proxies::all(Proxy::parse(url).expect("proxy url"))
}

#[test]
fn squid_tunnels_https_and_the_chain_is_the_origins() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("through squid"));
    let Some(squid) = Squid::start(server.port(), None) else {
        return;
    };
    let (mut engine, _ca) = engine_for(&ca, via(&squid.url(None)));
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(out.response(a).body().as_ref(), b"through squid");
    let opened = out.opened();
    assert_eq!(opened[0].peer_addr, squid.addr);
    assert_eq!(
        opened[0].chain.as_ref().expect("chain").der()[0],
        leaf.cert_der()
    );
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let again = finish(&mut engine, &[b], T);
    assert_eq!(again.response(b).status(), 200);
    assert!(
        again.opened().is_empty(),
        "the tunnel carries the next request"
    );
    assert_eq!(server.stats().connections_accepted, 1);
    assert_drained(&mut engine);
}

#[test]
fn squid_basic_auth_wants_credentials_and_takes_the_right_ones() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("authed"));
    let Some(squid) = Squid::start(server.port(), Some(("runner", "s3cret pw"))) else {
        return;
    };
    for (userinfo, ok, sent) in [
        (None, false, false),
        (Some("runner:wrong"), false, true),
        (Some("runner:s3cret%20pw"), true, true),
    ] {
        let (mut engine, _ca) = engine_for(&ca, via(&squid.url(userinfo)));
        let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        if ok {
            assert_eq!(out.response(id).body().as_ref(), b"authed");
        } else {
            let err = out.error(id);
            eprintln!("row: squid 407 ({userinfo:?}): {err}");
            assert_eq!(err.phase(), Phase::Proxy);
            match err {
                Error::Proxy {
                    failure:
                        ProxyFailure::Refused {
                            status,
                            authenticate,
                            credentials_sent,
                        },
                    ..
                } => {
                    assert_eq!(*status, 407);
                    assert_eq!(*credentials_sent, sent);
                    assert!(
                        authenticate.iter().any(|a| a.contains("rotary-test")),
                        "{authenticate:?}"
                    );
                }
                other => panic!("expected a 407, got {other:?}"),
            }
            assert!(!format!("{err} {err:?}").contains("wrong"));
        }
        assert_drained(&mut engine);
    }
}

#[test]
fn squid_refuses_a_port_it_does_not_allow_with_403() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("never"));
    let Some(squid) = Squid::start(server.port().wrapping_add(1).max(1), None) else {
        return;
    };
    let (mut engine, _ca) = engine_for(&ca, via(&squid.url(None)));
    let id = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    eprintln!("row: squid 403: {err}");
    assert!(
        matches!(
            err,
            Error::Proxy { failure: ProxyFailure::Refused { status, .. }, .. } if *status == 403
        ),
        "{err:?}"
    );
    assert_eq!(server.stats().connections_accepted, 0);
    assert_drained(&mut engine);
}

#[test]
fn a_rotation_heals_within_max_age_through_squid() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    // A short long poll paces the loop below, as the coordinator does a runner's.
    let server = TestServer::tls(&leaf_a, |_, _| {
        Reply::ok("poll").delay(Duration::from_millis(20))
    });
    let Some(squid) = Squid::start(server.port(), None) else {
        return;
    };
    let max_age = Duration::from_millis(300);
    let (mut engine, _ca) = engine_for(&ca, |c| {
        via(&squid.url(None))(c);
        c.policy.max_age = Some(max_age);
        c.policy.max_age_jitter = Some(Duration::ZERO);
    });
    let first = engine.submit(get(&server.url_ip("/")), RequestOptions::default());
    let out = finish(&mut engine, &[first], T);
    assert_eq!(
        out.opened()[0].chain.as_ref().expect("chain").der()[0],
        leaf_a.cert_der()
    );
    let rotated = Instant::now();
    server.rotate_to(&leaf_b);
    // Keep polling, as a runner does, until a response comes over the new chain.
    let (healed, events) = poll_until_leaf(
        &mut engine,
        &server.url_ip("/"),
        &leaf_b.cert_der(),
        rotated,
        T,
    );
    // Within one max age of the rotation (plus the time a handshake and a
    // CONNECT take on a busy machine).
    assert!(
        healed < max_age + Duration::from_secs(3),
        "healed after {healed:?}"
    );
    // One replacement, opened for age (before the old one broke); its new
    // chain was reported.
    let stats = engine.stats();
    assert_eq!(stats.connections_opened, 2, "{stats:#?}");
    assert_eq!(stats.chain_changes, 1, "{stats:#?}");
    let new = events
        .iter()
        .filter_map(|e| match e {
            Event::Opened(info) => Some(info),
            _ => None,
        })
        .last()
        .expect("a replacement opened");
    assert_eq!(new.handshake, Some(Handshake::Full));
    assert_eq!(new.peer_addr, squid.addr, "the replacement re-tunnelled");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ChainChanged { .. })));
    assert_drained(&mut engine);
}

#[test]
fn squid_as_an_https_proxy_carries_the_origins_tls_inside_its_own() {
    let (ca, leaf) = ca_and_leaf();
    // squid's certificate from a CA of its own, trusted only for the proxy.
    let proxy_ca = TestCa::new("rotary test squid CA");
    let proxy_leaf = proxy_ca.issue(&["127.0.0.1"]);
    let proxy_ca_file = proxy_ca.write_pem_file();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("inside squid's tls"));
    let Some(squid) = Squid::start_tls(server.port(), &proxy_leaf) else {
        return;
    };
    let tls_addr = squid.tls_addr.expect("an https_port");
    let url = format!("https://{tls_addr}");
    let proxy = Proxy::parse(&url)
        .expect("proxy url")
        .with_trust(rotary::Trust::pem_file(proxy_ca_file.path()));
    let (mut engine, _ca) = engine_for(&ca, |c| {
        c.proxy = Proxies::all(proxy);
    });
    let a = engine.submit(get(&server.url_ip("/a")), RequestOptions::default());
    let out = finish(&mut engine, &[a], T);
    assert_eq!(out.response(a).body().as_ref(), b"inside squid's tls");
    let b = engine.submit(get(&server.url_ip("/b")), RequestOptions::default());
    let again = finish(&mut engine, &[b], T);
    assert_eq!(again.response(b).status(), 200);
    assert!(again.opened().is_empty(), "one tunnel, both requests");
    let info = out.opened()[0];
    assert_eq!(info.peer_addr, tls_addr);
    assert_eq!(info.proxy.as_deref(), Some(url.as_str()));
    assert_eq!(
        info.chain.as_ref().expect("origin chain").der()[0],
        leaf.cert_der(),
        "the origin's chain, from inside the tunnel"
    );
    assert_eq!(
        info.proxy_tls.as_ref().expect("squid's tls").chain.der()[0],
        proxy_leaf.cert_der(),
        "squid's chain, apart"
    );
    assert_eq!(server.stats().connections_accepted, 1);
    // The engine's trust alone does not anchor squid's certificate.
    let (mut strict, _ca2) = engine_for(&ca, via(&url));
    let c = strict.submit(get(&server.url_ip("/c")), RequestOptions::default());
    let out = finish(&mut strict, &[c], T);
    let err = out.error(c);
    assert_eq!(err.phase(), Phase::Proxy);
    assert!(
        matches!(
            err,
            Error::Proxy {
                failure: ProxyFailure::Tls(rustls::Error::InvalidCertificate(_)),
                ..
            }
        ),
        "{err:?}"
    );
    assert_drained(&mut strict);
    assert_drained(&mut engine);
}
