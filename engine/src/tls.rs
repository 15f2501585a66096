//! TLS client configuration: trust anchors and client identity from PEM
//! files that are re-read when they change, the two rustls configs the
//! engine hands out (resumption off, or on with a purgeable session store),
//! and the verified path of a finished handshake's chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;

use crate::config::{ClientIdentity, Trust};
use crate::store::{Loaded, SystemStore};
use crate::verifier::{Anchors, Verifier};
use crate::PeerChain;

/// What identifies one version of a file: modification time, size and (on
/// Unix) inode, so a file replaced by rename is seen even when the two
/// versions share a timestamp tick and a size.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// A file that could not be used; the previous configuration stays.
#[derive(Debug, Clone)]
pub(crate) struct FileError {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> FileError {
    FileError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// How often the files inside the store's directories are looked at: one
/// `stat` per certificate (hundreds in `/etc/ssl/certs`) is too much for
/// every new connection, and a second is soon enough for a CA rotated on
/// the host. The files and directories themselves are looked at every time.
const ENTRIES_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct TlsState {
    trust: Trust,
    /// The host's store, located when the engine was built.
    store: Option<SystemStore>,
    stamps: Vec<Stamp>,
    /// [`SystemStore::entries_stamp`] as last seen, and when.
    entries: u64,
    entries_at: Instant,
    entries_every: Duration,
    configs: Configs,
    sessions: Arc<ClientSessionMemoryCache>,
}

/// What one version of the trust settings builds: the two configs and the
/// verifier both use.
struct Configs {
    full: Arc<ClientConfig>,
    resume: Arc<ClientConfig>,
    verifier: Arc<Verifier>,
}

impl TlsState {
    /// Build from the trust settings, reading every file.
    ///
    /// # Errors
    /// The file, and why, when a CA file, certificate or key cannot be read
    /// or holds nothing usable, or when no anchor is left.
    pub(crate) fn new(trust: &Trust) -> Result<TlsState, FileError> {
        TlsState::with_store(trust, trust.system.then(SystemStore::locate))
    }

    fn with_store(trust: &Trust, store: Option<SystemStore>) -> Result<TlsState, FileError> {
        let sessions = Arc::new(ClientSessionMemoryCache::new(256));
        let entries = store.as_ref().map_or(0, SystemStore::entries_stamp);
        let stamps = stamps(trust, store.as_ref());
        let configs = build(trust, store.as_ref(), &sessions)?;
        Ok(TlsState {
            stamps,
            entries,
            entries_at: Instant::now(),
            entries_every: ENTRIES_EVERY,
            trust: trust.clone(),
            store,
            configs,
            sessions,
        })
    }

    /// Re-read the files if any changed since the last look (the files in
    /// the store's directories: at most every [`ENTRIES_EVERY`]). On
    /// failure the previous configuration stays and the error is returned
    /// once per change.
    pub(crate) fn refresh(&mut self) -> Result<bool, FileError> {
        let now = stamps(&self.trust, self.store.as_ref());
        let changed = now != self.stamps;
        let mut entries = self.entries;
        if let Some(store) = &self.store {
            if changed || self.entries_at.elapsed() >= self.entries_every {
                entries = store.entries_stamp();
                self.entries_at = Instant::now();
            }
        }
        if !changed && entries == self.entries {
            return Ok(false);
        }
        self.stamps = now;
        self.entries = entries;
        self.configs = build(&self.trust, self.store.as_ref(), &self.sessions)?;
        Ok(true)
    }

    /// The config for a connection that must do a full handshake.
    pub(crate) fn full(&self) -> Arc<ClientConfig> {
        self.configs.full.clone()
    }

    /// The config that may resume; with `purge`, first forget the sessions
    /// stored for `host` so this connection does a full handshake too.
    pub(crate) fn resuming(&self, host: &str, purge: bool) -> Arc<ClientConfig> {
        if purge {
            if let Ok(name) = ServerName::try_from(host.to_owned()) {
                while self.sessions.take_tls13_ticket(&name).is_some() {}
                self.sessions.remove_tls12_session(&name);
            }
        }
        self.configs.resume.clone()
    }

    /// The chain a finished handshake with `host` reported (leaf first),
    /// with the path its verification built: remembered from that
    /// verification, including for a resumed session while it is cached,
    /// else verified again with the current anchors. When the chain and its
    /// path equal `known` (the origin's current chain), `known` is shared.
    pub(crate) fn peer_chain(
        &self,
        presented: &[CertificateDer<'static>],
        host: &str,
        known: Option<&Arc<PeerChain>>,
    ) -> Arc<PeerChain> {
        let path = self.configs.verifier.path_for(presented, host);
        match known {
            Some(k) if k.der() == presented && k.path_arc() == path.as_ref() => k.clone(),
            _ => Arc::new(PeerChain::verified(presented.to_vec(), path)),
        }
    }
}

/// The current version of every file the trust settings read.
fn stamps(trust: &Trust, store: Option<&SystemStore>) -> Vec<Stamp> {
    let mut files: Vec<&Path> = trust.pem_files.iter().map(PathBuf::as_path).collect();
    if let Some(id) = &trust.client_identity {
        files.push(&id.cert_chain);
        files.push(&id.key);
    }
    files.extend(
        store
            .into_iter()
            .flat_map(|s| s.watched())
            .map(PathBuf::as_path),
    );
    files.into_iter().map(stamp).collect()
}

fn read_anchors(trust: &Trust, store: Option<&SystemStore>) -> Result<Anchors, FileError> {
    let mut anchors = Anchors::empty();
    let mut webpki = trust.webpki_roots;
    if let Some(store) = store {
        match store.load() {
            // A store the user named must read cleanly: a half-written
            // bundle keeps the previous anchors (the caller's rule for files).
            Loaded::Certs(_, problems) if store.named_by_env() && !problems.is_empty() => {
                return Err(bad(Path::new(&store.describe()), problems.join("; ")));
            }
            Loaded::Certs(certs, problems) => {
                for p in &problems {
                    log::warn!("system trust store {}: {p}", store.describe());
                }
                let mut added = 0;
                for cert in certs {
                    match anchors.add_certificate(cert) {
                        Ok(()) => added += 1,
                        // One odd certificate in a store of hundreds is
                        // skipped, as OpenSSL and rustls-native-certs users do.
                        Err(e) => log::debug!("system trust store: skipped a certificate: {e}"),
                    }
                }
                if added == 0 {
                    return Err(bad(
                        Path::new(&store.describe()),
                        "no usable certificate in the system trust store",
                    ));
                }
            }
            Loaded::Empty(why) if store.named_by_env() => {
                return Err(bad(
                    Path::new(&store.describe()),
                    format!("SSL_CERT_FILE/SSL_CERT_DIR hold no usable certificate: {why}"),
                ));
            }
            Loaded::Empty(why) => {
                log::warn!("no system trust store ({why}); trusting the compiled-in webpki roots");
                webpki = true;
            }
        }
    }
    if webpki {
        anchors.add_compiled_in(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for path in &trust.pem_files {
        let mut found = 0;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(path, format!("cannot read CA file: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| bad(path, format!("bad PEM: {e}")))?;
            anchors
                .add_certificate(cert)
                .map_err(|e| bad(path, format!("bad CA certificate: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(bad(path, "no certificate in CA file"));
        }
    }
    if anchors.is_empty() {
        return Err(FileError {
            path: PathBuf::new(),
            reason: "no trust anchors: use the system store, the webpki roots or a CA file".into(),
        });
    }
    Ok(anchors)
}

fn read_identity(
    id: &ClientIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), FileError> {
    let chain = CertificateDer::pem_file_iter(&id.cert_chain)
        .map_err(|e| {
            bad(
                &id.cert_chain,
                format!("cannot read client certificate: {e}"),
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&id.cert_chain, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            &id.cert_chain,
            "no certificate in client certificate file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&id.key)
        .map_err(|e| bad(&id.key, format!("cannot read client key: {e}")))?;
    Ok((chain, key))
}

fn build(
    trust: &Trust,
    store: Option<&SystemStore>,
    sessions: &Arc<ClientSessionMemoryCache>,
) -> Result<Configs, FileError> {
    let anchors = read_anchors(trust, store)?;
    let provider = Arc::new(crate::provider::provider(trust.post_quantum));
    let config = |e: &dyn std::fmt::Display| bad(Path::new(""), format!("tls configuration: {e}"));
    // Verification of a byte-identical chain, and the path it took, is
    // remembered (see verify_cache.rs); a new trust configuration starts a
    // new verifier with an empty cache.
    let verifier = Verifier::new(anchors, provider.signature_verification_algorithms);
    #[cfg(feature = "dangerous-skip-verification")]
    let verifier = match trust.dangerous_skip_verification {
        true => verifier.skipping(),
        false => verifier,
    };
    let verifier = Arc::new(verifier);
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut full = match &trust.client_identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let (chain, key) = read_identity(id)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                bad(
                    &id.key,
                    format!("client certificate and key do not match: {e}"),
                )
            })?
        }
    };
    full.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut resume = full.clone();
    full.resumption = Resumption::disabled();
    resume.resumption = Resumption::store(sessions.clone());
    Ok(Configs {
        full: Arc::new(full),
        resume: Arc::new(resume),
        verifier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn a_certificate_rewritten_in_place_inside_ssl_cert_dir_is_picked_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir");
        let ca = certs.join("internal-ca.pem");
        std::fs::write(&ca, ca_pem("internal CA 1")).expect("write");
        let store = SystemStore::at(None, vec![certs.clone()], true);
        let mut state = TlsState::with_store(&Trust::system(), Some(store)).expect("builds");
        state.entries_every = Duration::ZERO;
        assert!(!state.refresh().expect("unchanged"), "nothing changed yet");

        // Rewritten in place (same inode, no rename): the directory's own
        // stamp stays as it was, the file's moves.
        let dir_before = stamp(&certs);
        let modified = std::fs::metadata(&ca)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&ca)
            .expect("open in place");
        std::io::Write::write_all(&mut file, ca_pem("internal CA 2").as_bytes()).expect("rewrite");
        // A coarse clock may not move within the test: move it as an editor would.
        file.set_modified(modified + Duration::from_secs(2))
            .expect("set mtime");
        drop(file);
        assert_eq!(
            stamp(&certs),
            dir_before,
            "an edit in place leaves the dir alone"
        );
        assert!(state.refresh().expect("reloads"), "the edit is seen");
        assert!(!state.refresh().expect("unchanged"), "and seen once");

        // Looked at once per interval only: an edit within it waits for the next.
        state.entries_every = Duration::from_secs(3600);
        std::fs::write(&ca, ca_pem("internal CA 3")).expect("rewrite");
        std::fs::File::options()
            .write(true)
            .open(&ca)
            .and_then(|f| f.set_modified(modified + Duration::from_secs(4)))
            .expect("set mtime");
        assert!(!state.refresh().expect("not looked at yet"));
        state.entries_every = Duration::ZERO;
        assert!(state.refresh().expect("reloads"));
    }

    #[test]
    fn without_a_system_store_the_webpki_roots_are_the_fallback_unless_one_was_named() {
        let trust = Trust::system();
        let nowhere = PathBuf::from("/nonexistent/rotary/ca-certificates.crt");
        let probed = SystemStore::at(Some(nowhere.clone()), Vec::new(), false);
        let anchors = read_anchors(&trust, Some(&probed)).expect("webpki fallback");
        assert!(!anchors.is_empty());
        let named = SystemStore::at(Some(nowhere), Vec::new(), true);
        let Err(err) = read_anchors(&trust, Some(&named)) else {
            panic!("a named store must load");
        };
        assert!(err.reason.contains("SSL_CERT_FILE"), "{}", err.reason);
    }
}
