//! fetch against nginx at real sizes: a 64 MiB download to stdout and a
//! 64 MiB upload (`-T`, a WebDAV `PUT`), every byte checked.
//!
//! `#[ignore]`d for plain `cargo test`: it needs an `nginx` binary with the
//! DAV module (Debian's `nginx`, which `nginx-light` pulls in). CI
//! (`.ci/run`) runs `cargo test -p rotary-examples --test nginx --
//! --ignored`; run it the same way by hand. The binary is `$ROTARY_NGINX`,
//! else `nginx` on `PATH`, else `/usr/sbin/nginx`. Without one the test
//! fails under `CI=true` and says what to install otherwise.
//!
//! nginx runs in the foreground as a child on a free port of 127.0.0.1,
//! from a temp dir holding its `nginx.conf` (written here), a certificate
//! from a CA generated for the run, and the files it serves; it stops on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rotary_examples::pki::Ca;
use rotary_examples::{fetch, Output};

/// How long nginx may take to listen.
const START: Duration = Duration::from_secs(10);

/// 64 MiB and a little, so no window or buffer size divides it.
const SIZE: usize = 64 * 1024 * 1024 + 4099;

/// The nginx binary, or `None` (outside CI) when there is none.
fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROTARY_NGINX") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    let found = on_path.or_else(|| {
        let sbin = Path::new("/usr/sbin/nginx");
        sbin.is_file().then(|| sbin.to_owned())
    });
    if found.is_none() {
        let why = "nginx not found (not on PATH, not /usr/sbin/nginx, ROTARY_NGINX unset); \
                   install it with `apt-get install nginx-light` (CI's .ci/run does)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// PEM text of DER `items` labelled `label`.
fn pem(label: &str, items: &[&[u8]]) -> String {
    let mut out = String::new();
    for der in items {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out
}

struct Nginx {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    // Dropped after the child is stopped (fields drop in order).
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on a free port serving `www/` over TLS with `cert`, and taking
    /// `PUT`s under `/up/`.
    fn start(bin: PathBuf, chain: &[&[u8]], key: &[u8]) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("rotary-fetch-nginx-")
            .tempdir()
            .expect("nginx temp dir");
        let www = dir.path().join("www");
        std::fs::create_dir_all(www.join("up")).expect("www dirs");
        #[cfg(unix)]
        {
            // The workers may run as another user (nobody, when the test
            // runs as root): they read www and write the uploads.
            use std::os::unix::fs::PermissionsExt;
            let open = |p: &Path, mode| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .expect("open the dir to nginx's workers");
            };
            open(dir.path(), 0o755);
            open(&www, 0o755);
            open(&www.join("up"), 0o777);
        }
        std::fs::write(dir.path().join("cert.pem"), pem("CERTIFICATE", chain)).expect("cert");
        std::fs::write(dir.path().join("key.pem"), pem("PRIVATE KEY", &[key])).expect("key");
        let mut nginx = Nginx {
            bin,
            port: 0,
            child: None,
            dir,
        };
        // The free port may be taken again before nginx binds it: retry then.
        for attempt in 1.. {
            nginx.port = free_port();
            match nginx.launch() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("Address already in use") => {}
                Err(log) => panic!("{log}"),
            }
        }
        nginx
    }

    fn launch(&mut self) -> Result<(), String> {
        let (d, port) = (self.dir.path().display(), self.port);
        let conf = format!(
            "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {d}/www;
        location /up/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"
        );
        let conf_path = self.dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let until = Instant::now() + START;
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
                    "nginx exited with {status} before listening; error.log:\n{}",
                    self.error_log()
                ));
            }
            assert!(
                Instant::now() < until,
                "nginx did not listen within {START:?}; error.log:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A fast shutdown through the pid file: the master stops its
        // workers (killing the master alone would leave them running).
        let _ = Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .args(["-s", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// fetch with `args`: its exit code, stdout bytes and stderr.
fn fetch_bytes(args: &[&str]) -> (i32, Vec<u8>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (out, cap) = Output::capture();
    let code = fetch::main_with_stdin(args, &out, &mut &b""[..]);
    (code, cap.stdout_bytes(), cap.stderr())
}

/// `len` bytes nobody could guess the period of.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0; len];
    rng.fill(&mut out);
    out
}

#[test]
#[ignore = "needs nginx: CI runs it with --ignored (see .ci/run)"]
fn fetch_downloads_and_uploads_64_mib_through_nginx_byte_for_byte() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let ca = Ca::new("fetch nginx test CA").expect("CA");
    let leaf = ca.issue(&["localhost"]).expect("leaf");
    let key = match leaf.key() {
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("a PKCS#8 key: {other:?}"),
    };
    let chain: Vec<&[u8]> = leaf.chain.iter().map(|c| c.as_ref()).collect();
    let nginx = Nginx::start(bin, &chain, &key);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let ca_file = scratch.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("CA file");
    let ca_file = ca_file.to_str().expect("UTF-8 temp path").to_owned();

    // Download: 64 MiB to stdout, byte for byte.
    let served = random_bytes(SIZE, 1);
    std::fs::write(nginx.www().join("big.bin"), &served).expect("www file");
    let (code, body, err) = fetch_bytes(&[
        "--max-time",
        "300s",
        "--cacert",
        &ca_file,
        &nginx.url("/big.bin"),
    ]);
    assert_eq!(code, 0, "{err}\n{}", nginx.error_log());
    assert_eq!(body.len(), SIZE);
    assert!(
        body == served,
        "the download differs from the file nginx served"
    );
    drop((body, served));

    // Upload: 64 MiB from a file, streamed with -T, as nginx stored it.
    let sent = random_bytes(SIZE, 2);
    let upload = scratch.path().join("artifact.bin");
    std::fs::write(&upload, &sent).expect("upload file");
    let (code, _, err) = fetch_bytes(&[
        "--max-time",
        "300s",
        "-f",
        "--cacert",
        &ca_file,
        "-T",
        upload.to_str().expect("UTF-8 temp path"),
        &nginx.url("/up/artifact.bin"),
    ]);
    assert_eq!(code, 0, "{err}\n{}", nginx.error_log());
    let stored = std::fs::read(nginx.www().join("up/artifact.bin")).expect("nginx stored it");
    assert_eq!(stored.len(), SIZE);
    assert!(stored == sent, "nginx stored other bytes than fetch sent");
}
