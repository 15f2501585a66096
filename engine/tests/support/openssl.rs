//! OpenSSL as a peer nobody here wrote: a certificate authority run by
//! `openssl ca` (its configuration, database, serial and CRL number files
//! written at test time into a private temp dir) that issues server and
//! client certificates, revokes them and publishes CRLs; and `openssl
//! s_server` on a free port of 127.0.0.1, answering `GET /` with its status
//! page (which names the client certificate) and, with a CA file, requiring
//! client certificates (`-Verify`).
//!
//! [`openssl`] finds the binary: with `CI=true` (set by `.ci/run`, which
//! installs it) a missing one fails the test; elsewhere the test is skipped
//! with a message saying what to install. Every child process started here
//! is killed and reaped on drop; every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child gets to start listening.
const START: Duration = Duration::from_secs(10);

/// The `openssl` binary on `PATH`, or `None` after saying why the test is
/// skipped; in CI (`CI=true`) a missing binary fails the test instead.
pub fn openssl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("openssl"))
        .find(|p| p.is_file());
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    match found {
        Some(path) => Some(path),
        None if in_ci => panic!("`openssl` is not on PATH; CI (.ci/run) installs it"),
        None => {
            eprintln!(
                "SKIPPED: `openssl` is not on PATH (CI installs it; apt-get install openssl)"
            );
            None
        }
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A certificate `openssl ca` issued, with its key.
#[derive(Debug, Clone)]
pub struct OpensslCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Its serial as `openssl x509 -serial` prints it (`1000`).
    pub serial: String,
    /// Its subject's common name.
    pub common_name: String,
}

/// A CA that `openssl ca` runs: ECDSA P-256, valid for two days, whose
/// certificates and CRLs are issued by OpenSSL itself.
pub struct OpensslCa {
    bin: PathBuf,
    dir: tempfile::TempDir,
    issued: std::cell::Cell<u32>,
}

impl OpensslCa {
    /// A new CA named `name`, in a private temp dir.
    pub fn new(bin: &Path, name: &str) -> OpensslCa {
        let dir = tempfile::Builder::new()
            .prefix("rotary-openssl-ca-")
            .tempdir()
            .expect("create a temp dir for the CA");
        let d = dir.path().to_owned();
        let d = d.as_path();
        std::fs::create_dir(d.join("newcerts")).expect("mkdir newcerts");
        std::fs::write(d.join("index.txt"), "").expect("write index.txt");
        std::fs::write(d.join("serial"), "1000\n").expect("write serial");
        std::fs::write(d.join("crlnumber"), "01\n").expect("write crlnumber");
        std::fs::write(d.join("openssl.cnf"), config(d)).expect("write openssl.cnf");
        let ca = OpensslCa {
            bin: bin.to_owned(),
            dir,
            issued: std::cell::Cell::new(0),
        };
        run(ca
            .cmd("req")
            .args([
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-extensions", "v3_ca"])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(d.join("ca.key"))
            .arg("-out")
            .arg(ca.cert_path()));
        ca
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(sub)
            .arg("-config")
            .arg(self.dir.path().join("openssl.cnf"));
        cmd
    }

    /// The CA's certificate (PEM): the trust anchor for what it issues.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `localhost` and `127.0.0.1`, common name `cn`.
    pub fn issue_server(&self, cn: &str) -> OpensslCert {
        self.issue(cn, "server")
    }

    /// A client certificate (clientAuth), common name `cn`.
    pub fn issue_client(&self, cn: &str) -> OpensslCert {
        self.issue(cn, "client")
    }

    fn issue(&self, cn: &str, extensions: &str) -> OpensslCert {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let d = self.dir.path();
        let (key, csr, cert) = (
            d.join(format!("{n}.key")),
            d.join(format!("{n}.csr")),
            d.join(format!("{n}.pem")),
        );
        run(self
            .cmd("req")
            .args([
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(self
            .cmd("ca")
            .args(["-batch", "-notext", "-extensions", extensions])
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert));
        let serial = run(Command::new(&self.bin)
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&cert));
        let serial = serial
            .trim()
            .strip_prefix("serial=")
            .unwrap_or_else(|| panic!("openssl x509 -serial printed {serial:?}"))
            .to_owned();
        OpensslCert {
            cert,
            key,
            serial,
            common_name: cn.to_owned(),
        }
    }

    /// Revokes `cert` in the CA's database (the next CRL lists it).
    pub fn revoke(&self, cert: &OpensslCert) {
        run(self.cmd("ca").arg("-revoke").arg(&cert.cert));
    }

    /// A CRL of the database as it is now (PEM), written to `out`.
    pub fn crl_pem(&self, out: &Path) {
        run(self.cmd("ca").arg("-gencrl").arg("-out").arg(out));
    }

    /// The same CRL as DER, written to `out`.
    pub fn crl_der(&self, out: &Path) {
        let pem = self.dir.path().join("for-der.crl.pem");
        self.crl_pem(&pem);
        run(Command::new(&self.bin)
            .args(["crl", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(out));
    }
}

/// `openssl ca`'s configuration for a CA in `d`: policy "anything with a
/// common name", v2 CRLs with a CRL number and the CA's key identifier (as
/// rustls-webpki requires), and the extensions each kind of certificate
/// gets.
fn config(d: &Path) -> String {
    let d = d.display();
    format!(
        "[ ca ]
default_ca = test_ca

[ test_ca ]
dir = {d}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
crl_extensions = crl_ext
default_md = sha256
default_days = 2
default_crl_days = 2
policy = policy_any
unique_subject = no

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ server ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ crl_ext ]
authorityKeyIdentifier = keyid
"
    )
}

/// `openssl s_server` on 127.0.0.1: with `-www` ([`SServer::start`]) a new
/// connection per request (HTTP/1.0, closed with `close_notify` after the
/// status page); interactive ([`SServer::interactive`]) one connection at a
/// time, kept open, whose requests are printed to its log and answered with
/// whatever the test sends ([`SServer::send`]).
pub struct SServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SServer {
    /// Serves `cert` with `-www`; with `client_ca`, requires a client
    /// certificate issued by it (`-Verify 1 -CAfile`).
    pub fn start(bin: &Path, cert: &OpensslCert, client_ca: Option<&Path>) -> SServer {
        SServer::spawn(bin, cert, client_ca, true)
    }

    /// Serves `cert` interactively (no `-www`): what the client sends goes
    /// to the log, what [`SServer::send`] writes goes to the client, and the
    /// connection stays open until the client closes it (the log then says
    /// `DONE`). With `client_ca`, as [`SServer::start`].
    pub fn interactive(bin: &Path, cert: &OpensslCert, client_ca: Option<&Path>) -> SServer {
        SServer::spawn(bin, cert, client_ca, false)
    }

    /// Write `bytes` to the client of the current connection.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self
            .child
            .as_mut()
            .and_then(|c| c.stdin.as_mut())
            .expect("s_server runs with a piped stdin");
        stdin.write_all(bytes).expect("write to s_server");
        stdin.flush().expect("flush to s_server");
    }

    fn spawn(bin: &Path, cert: &OpensslCert, client_ca: Option<&Path>, www: bool) -> SServer {
        let dir = tempfile::Builder::new()
            .prefix("rotary-s-server-")
            .tempdir()
            .expect("create a temp dir for s_server");
        let log = dir.path().join("s_server.log");
        // The free port may be taken again before s_server binds it: retry then.
        for attempt in 1.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port();
            let out = std::fs::File::create(&log).expect("create the log");
            let err = out.try_clone().expect("clone the log");
            let mut cmd = Command::new(bin);
            cmd.arg("s_server")
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .args(if www { &["-www"][..] } else { &[][..] })
                .arg("-cert")
                .arg(&cert.cert)
                .arg("-key")
                .arg(&cert.key);
            if let Some(ca) = client_ca {
                cmd.args(["-Verify", "1", "-CAfile"]).arg(ca);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            match wait_listening(&mut child, &log, port) {
                Ok(()) => {
                    return SServer {
                        port,
                        child: Some(child),
                        log,
                        _dir: dir,
                    }
                }
                Err(text) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if attempt >= 3 || !text.contains("in use") {
                        panic!("{text}");
                    }
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// What s_server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `https://127.0.0.1:<port><path>` (the certificate names the address).
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// Waits (bounded) until s_server says it accepts (connecting to find out
/// would cost it a failed handshake); `Err` with its log if it exits first
/// or never does.
fn wait_listening(child: &mut Child, log: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START;
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Err(format!(
                "openssl s_server exited with {status} before listening on port {port}:\n{}",
                text()
            ));
        }
        if text().contains("ACCEPT") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "openssl s_server did not listen on port {port} within {START:?}:\n{}",
                text()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
