//! What `git clone` does with the CA file a runner hands a job: a fresh TLS
//! connection (a new process, so no session to resume) that trusts only the
//! certificates in that file, then the first request of a clone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Fetch `<repo>/info/refs?service=git-upload-pack` from `addr`, verifying
/// the server as `host` against only the certificates in `ca_file`.
/// `Ok(())` on a `200`.
///
/// # Errors
/// One line saying what failed: the CA file, the connection, the TLS
/// verification (rustls's reason, such as an unknown issuer) or the status.
pub fn clone_check(
    addr: SocketAddr,
    host: &str,
    repo_path: &str,
    ca_file: &Path,
) -> Result<(), String> {
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("cannot read CA file {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("CA file {}: {e:?}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate",
            ca_file.display()
        ));
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| format!("bad host {host:?}: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let req = format!(
        "GET {repo_path}/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {host}\r\n\
         User-Agent: git/2.43 (rotary demo)\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).map_err(|e| tls_reason(&e))?;
    tls.flush().map_err(|e| tls_reason(&e))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match tls.read(&mut chunk) {
            Ok(0) => return Err("server closed before answering".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(tls_reason(&e)),
        }
    }
    let status = String::from_utf8_lossy(&head);
    let line = status.lines().next().unwrap_or_default();
    if line.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("server answered {line:?}"))
    }
}

/// rustls errors surface as `io::Error`s wrapping a `rustls::Error`.
fn tls_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(r) => format!("tls: {r}"),
        None => e.to_string(),
    }
}
