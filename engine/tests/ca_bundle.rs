//! The CA bundle a job gets (`PeerChain::ca_bundle`): made from the verified
//! path, it must let a *different* leaf from the same CA verify, whatever
//! chain the first server presented.
//!
//! The PKI is made at run time: root → intermediate → two leaves, one per
//! "edge". Edge A presents one of four chains; the engine connects to it and
//! hands out the bundle; edge B presents the other leaf, and a fresh client
//! trusting only the bundle must verify it: rustls here, and in the interop
//! tests at the bottom strict OpenSSL (`s_client -verify_return_error`) and
//! git over GnuTLS (`git ls-remote` with `GIT_SSL_CAINFO`). Those need the
//! `openssl` and `git` binaries: with `CI=true` (set by `.ci/run`, which
//! installs both) a missing one fails the test; elsewhere it is skipped with
//! a message on stderr.

mod driver;
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use driver::*;
use rotary::{Anchor, Config, Engine, Event, PathRole, PeerChain, RequestOptions, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::*;

const T: Duration = Duration::from_secs(10);
const NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// Root → intermediate → two leaves, and an unrelated CA.
struct Pki {
    root: TestCa,
    mid: TestCa,
    leaf_a: Issued,
    leaf_b: Issued,
    stray: TestCa,
}

fn pki() -> Pki {
    let root = TestCa::new("bundle test root");
    let mid = root.intermediate("bundle test intermediate");
    Pki {
        leaf_a: mid.issue(NAMES),
        leaf_b: mid.issue(NAMES),
        root,
        mid,
        stray: TestCa::new("unrelated CA"),
    }
}

/// What edge A presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// nginx with a private CA.
    LeafOnly,
    /// Most public sites.
    LeafAndIntermediate,
    /// Some servers send the root too.
    WithRoot,
    /// Misconfigured: out of order, with a certificate nothing needs.
    UnorderedWithStray,
}

const SHAPES: [Shape; 4] = [
    Shape::LeafOnly,
    Shape::LeafAndIntermediate,
    Shape::WithRoot,
    Shape::UnorderedWithStray,
];

impl Shape {
    fn chain(self, pki: &Pki) -> Vec<CertificateDer<'static>> {
        let (leaf, mid, root) = (
            pki.leaf_a.cert_der(),
            pki.mid.cert_der(),
            pki.root.cert_der(),
        );
        match self {
            Shape::LeafOnly => vec![leaf],
            Shape::LeafAndIntermediate => vec![leaf, mid],
            Shape::WithRoot => vec![leaf, mid, root],
            Shape::UnorderedWithStray => vec![leaf, root, pki.stray.cert_der(), mid],
        }
    }

    /// What the runner trusts: the root, and with a leaf-only server the
    /// intermediate too (how else could it verify?).
    fn runner_trust(self, pki: &Pki) -> String {
        match self {
            Shape::LeafOnly => format!("{}{}", pki.mid.cert_pem(), pki.root.cert_pem()),
            _ => pki.root.cert_pem(),
        }
    }
}

fn edge(chain: Vec<CertificateDer<'static>>, leaf: &Issued) -> TestServer {
    TestServer::builder()
        .tls_chain(chain, leaf.key_der())
        .handler(|req, _| match req.path() {
            "/repo.git/info/refs" => Reply::ok(git_advertisement()).header(
                "content-type",
                "application/x-git-upload-pack-advertisement",
            ),
            _ => Reply::ok("edge"),
        })
        .start()
}

fn engine_trusting(pem: &str, tweak: impl FnOnce(&mut Config)) -> (Engine, TempFile) {
    let file = TempFile::new("runner-ca.pem", pem.as_bytes());
    let mut config = Config::default();
    config.trust = Trust::pem_file(file.path());
    tweak(&mut config);
    (Engine::new(config).expect("engine builds"), file)
}

/// One GET through `engine`; the chain of the connection that served it.
fn served_chain(engine: &mut Engine, url: &str) -> Arc<PeerChain> {
    let id = engine.submit(get(url), RequestOptions::default());
    let out = finish(engine, &[id], T);
    match out.event(id) {
        Event::Response { served_by, .. } => served_by.chain.clone().expect("a TLS chain"),
        other => panic!("request failed: {other:#?}"),
    }
}

fn parse_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the bundle is PEM")
}

/// A plain rustls client trusting only `pem` fetches `/` from `server`.
fn rustls_fetch(server: &TestServer, pem: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_pem(pem) {
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = Client::tls(server.addr(), "localhost", Arc::new(config), T)?;
    Ok(client.get("/")?.text())
}

/// Edge A with `shape`, a runner engine, and the bundle it hands a job.
fn bundle_for(pki: &Pki, shape: Shape) -> (String, Arc<PeerChain>) {
    let a = edge(shape.chain(pki), &pki.leaf_a);
    let (mut engine, _file) = engine_trusting(&shape.runner_trust(pki), |_| {});
    let chain = served_chain(&mut engine, &a.url("/"));
    assert_drained(&mut engine);
    let bundle = chain.ca_bundle().expect("a bundle");
    (bundle, chain)
}

#[test]
fn the_bundle_is_intermediate_then_root_and_never_the_leaf_for_every_presented_chain() {
    let pki = pki();
    for shape in SHAPES {
        let (bundle, chain) = bundle_for(&pki, shape);
        assert_eq!(
            chain.der(),
            &shape.chain(&pki)[..],
            "{shape:?}: as presented"
        );
        assert_eq!(
            parse_pem(&bundle),
            [pki.mid.cert_der(), pki.root.cert_der()],
            "{shape:?}"
        );
        let path = chain.verified_path().expect("a verified path");
        assert_eq!(path.leaf(), &pki.leaf_a.cert_der());
        assert_eq!(
            path.intermediates(),
            [pki.mid.cert_der()],
            "{shape:?}: no stray"
        );
        assert_eq!(path.anchor(), &Anchor::Certificate(pki.root.cert_der()));
        let entries = path.entries();
        let roles: Vec<_> = entries.iter().map(|e| e.role).collect();
        assert_eq!(
            roles,
            [PathRole::Leaf, PathRole::Intermediate, PathRole::Anchor]
        );
        assert_eq!(entries[2].subject, "CN=bundle test root");
        assert_eq!(entries[1].issuer.as_deref(), Some("CN=bundle test root"));
        assert_eq!(entries[0].sha256, Some(pki.leaf_a.sha256()));
    }
}

#[test]
fn the_bundle_verifies_the_other_leaf_under_rustls_where_the_presented_chain_may_not() {
    let pki = pki();
    // Edge B sends its leaf alone, or with the intermediate.
    let b_alone = edge(vec![pki.leaf_b.cert_der()], &pki.leaf_b);
    let b_with_mid = edge(pki.leaf_b.chain_der(), &pki.leaf_b);
    for shape in SHAPES {
        let (bundle, chain) = bundle_for(&pki, shape);
        for b in [&b_alone, &b_with_mid] {
            let body = rustls_fetch(b, &bundle)
                .unwrap_or_else(|e| panic!("{shape:?}: the bundle must verify leaf B: {e}"));
            assert_eq!(body, "edge");
        }
        // What the old CA file held, the presented chain, pins leaf A.
        if let Shape::LeafOnly = shape {
            let err = rustls_fetch(&b_alone, &chain.to_pem()).expect_err("leaf A only");
            assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        }
    }
}

#[test]
fn a_resumed_session_reports_the_path_of_its_original_verification() {
    let pki = pki();
    let a = TestServer::builder()
        .tls(&pki.leaf_a)
        .resumption(Resumption::Tickets)
        .start();
    let (mut engine, _file) = engine_trusting(&pki.root.cert_pem(), |c| {
        c.policy.resumption = rotary::Resumption::WithinMaxAge;
        c.policy.max_requests = Some(1);
    });
    let first = served_chain(&mut engine, &a.url("/"));
    let id = engine.submit(get(&a.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let info = out.opened().pop().expect("a second connection").clone();
    assert_eq!(info.handshake, Some(rotary::Handshake::Resumed));
    let resumed = info.chain.expect("a chain");
    assert!(resumed.verified_path().is_some());
    assert_eq!(resumed.ca_bundle(), first.ca_bundle());
    assert_drained(&mut engine);
}

#[test]
fn after_a_rotation_heals_the_jobs_bundle_names_the_new_root() {
    let old_root = TestCa::new("old root");
    let old_mid = old_root.intermediate("old intermediate");
    let new_root = TestCa::new("new root");
    let new_mid = new_root.intermediate("new intermediate");
    let server = TestServer::tls(&old_mid.issue(NAMES), |_, _| Reply::ok("x"));
    // The runner trusts both roots, as a runner trusts the public roots of
    // the old and the new issuer.
    let trust = format!("{}{}", old_root.cert_pem(), new_root.cert_pem());
    let (mut engine, _file) = engine_trusting(&trust, |c| {
        c.policy.max_age = None;
        c.policy.chain_probe_interval = Some(Duration::from_millis(40));
    });
    let before = served_chain(&mut engine, &server.url("/"));
    let old_bundle = before.ca_bundle().expect("a bundle");
    assert_eq!(
        parse_pem(&old_bundle),
        [old_mid.cert_der(), old_root.cert_der()]
    );
    server.rotate_to(&new_mid.issue(NAMES));
    run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| matches!(e, Event::ChainChanged { .. }))
    });
    let after = served_chain(&mut engine, &server.url("/"));
    let bundle = after.ca_bundle().expect("a bundle");
    assert_eq!(
        parse_pem(&bundle),
        [new_mid.cert_der(), new_root.cert_der()]
    );
    // A job's fresh connection to another edge of the rotated service.
    let edge_b = TestServer::tls(&new_mid.issue(NAMES), |_, _| Reply::ok("edge"));
    assert_eq!(rustls_fetch(&edge_b, &bundle).expect("new bundle"), "edge");
    assert!(
        rustls_fetch(&edge_b, &old_bundle).is_err(),
        "the stale bundle"
    );
    assert_drained(&mut engine);
}

// ------------------------------------------------------------- interop

/// `name` on `PATH`, or `None` after saying why the test is skipped; in CI
/// (`CI=true`) a missing tool fails the test instead.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    match found {
        Some(path) => Some(path),
        None if in_ci => panic!("`{name}` is not on PATH; CI (.ci/run) installs it"),
        None => {
            eprintln!("SKIPPED: `{name}` is not on PATH (CI installs it; apt-get install {name})");
            None
        }
    }
}

/// Run `cmd` to completion within `T`; (exit code, stdout + stderr).
fn run(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        readers.push(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        }));
    }
    let mut status = None;
    let exited = wait_for(T, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("");
    (status.and_then(|s| s.code()), text)
}

fn write(dir: &TempDir, name: &str, pem: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// A scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rotary-bundle-interop-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A way to check that a client trusting only `ca_file` verifies
/// `server`: (verified, what the tool printed). `scratch` is a directory
/// the tool may use as its home.
type Verifies =
    fn(tool: &Path, server: &TestServer, ca_file: &Path, scratch: &Path) -> (bool, String);

/// For every shape edge A can present, `tool` trusting only the bundle must
/// verify edge B (its leaf alone); for the shapes in `presented_fails`, the
/// presented chain must fail with a message `is_tls_failure` accepts.
fn other_leaf_verifies_with_the_bundle(
    tool: &Path,
    verifies: Verifies,
    presented_fails: &[Shape],
    is_tls_failure: fn(&str) -> bool,
) {
    let pki = pki();
    let dir = TempDir::new();
    let b = edge(vec![pki.leaf_b.cert_der()], &pki.leaf_b);
    for shape in SHAPES {
        let (bundle, chain) = bundle_for(&pki, shape);
        let file = write(&dir, "bundle.pem", &bundle);
        let (ok, text) = verifies(tool, &b, &file, dir.path());
        assert!(
            ok,
            "{shape:?}: {} refused the bundle:\n{text}",
            tool.display()
        );
        if presented_fails.iter().any(|s| s == &shape) {
            let presented = write(&dir, "presented.pem", &chain.to_pem());
            let (ok, text) = verifies(tool, &b, &presented, dir.path());
            assert!(!ok, "{shape:?}: the presented chain must not pass:\n{text}");
            assert!(
                is_tls_failure(&text),
                "{shape:?}: a certificate failure, not another one:\n{text}"
            );
        }
    }
}

/// `openssl s_client` against `server` trusting only `ca_file`, strictly:
/// no partial chains, no default CA locations, errors end the handshake.
fn openssl_verifies(
    openssl: &Path,
    server: &TestServer,
    ca_file: &Path,
    _: &Path,
) -> (bool, String) {
    let mut cmd = Command::new(openssl);
    cmd.arg("s_client")
        .arg("-connect")
        .arg(server.addr().to_string())
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(ca_file)
        .args([
            "-no-CApath",
            "-no-CAstore",
            "-verify_return_error",
            "-brief",
        ]);
    let (code, text) = run(cmd);
    (code == Some(0) && text.contains("Verification: OK"), text)
}

#[test]
fn interop_strict_openssl_verifies_the_other_leaf_with_the_bundle() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    // Strict OpenSSL wants a root in the file: leaf + intermediate is no CA
    // file either.
    other_leaf_verifies_with_the_bundle(
        &openssl,
        openssl_verifies,
        &[Shape::LeafOnly, Shape::LeafAndIntermediate],
        // "unable to get local issuer certificate" for the leaf alone,
        // "unable to get issuer certificate" for an intermediate without
        // its root.
        |text| text.contains("verify error") && text.contains("unable to get"),
    );
}

/// A smart-HTTP ref advertisement (protocol v0) with one branch, enough
/// for `git ls-remote` to print it.
fn git_advertisement() -> Vec<u8> {
    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }
    let head = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    format!(
        "{}0000{}0000",
        pkt("# service=git-upload-pack\n"),
        pkt(&format!("{head} refs/heads/main\0agent=rotary-test\n"))
    )
    .into_bytes()
}

/// `git ls-remote https://localhost:<port>/repo.git` trusting only
/// `ca_file` (GnuTLS on Debian), isolated from any git or proxy setup. It
/// succeeds only when TLS verified and the advertisement parsed.
fn git_ls_remote(git: &Path, server: &TestServer, ca_file: &Path, home: &Path) -> (bool, String) {
    let mut cmd = Command::new(git);
    cmd.arg("ls-remote")
        .arg(server.url("/repo.git"))
        .env("GIT_SSL_CAINFO", ca_file)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_SSL_NO_VERIFY")
        .env_remove("GIT_SSL_CAPATH");
    for proxy in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    let (code, text) = run(cmd);
    (code == Some(0) && text.contains("refs/heads/main"), text)
}

#[test]
fn interop_git_ls_remote_trusts_the_bundle_for_the_other_leaf() {
    let Some(git) = tool("git") else {
        return;
    };
    // The old CA file: git fails in TLS verification ("server certificate
    // verification failed" from GnuTLS, "SSL certificate problem" from
    // OpenSSL builds), not in HTTP ("returned error", "not valid").
    other_leaf_verifies_with_the_bundle(&git, git_ls_remote, &[Shape::LeafOnly], |text| {
        text.contains("certificate")
            && !text.contains("returned error")
            && !text.contains("not valid")
    });
}
