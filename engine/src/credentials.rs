//! The credential files and their epochs: the trust anchors (CA files, the
//! host's store, the compiled-in roots), the CRL files and the client
//! identity, each a set of files watched with cheap `stat` calls, re-read
//! when one changes, and replaced only by a version that is whole and valid
//! (the last-good rule). Each set's epoch counts the valid versions loaded;
//! a connection remembers the [`Epoch`] it was made in, and a later check
//! says which sets have moved on.
//!
//! [`Credentials::check`] looks at every file, loads what changed, and
//! returns what moved, the problems to report (one per bad version of a
//! file) and the identity's expiry notices; `TlsState::check` (in
//! `tls.rs`) wraps it for the engine, rebuilding the TLS configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::{CrlExpiry, Trust};
use crate::cred_file::{bad, FileError};
use crate::crl::Crls;
use crate::identity::Identity;
use crate::store::{Loaded, SystemStore};
use crate::verifier::Anchors;

/// What identifies one version of a file, as `stat` (following symlinks)
/// sees it: modification and change times (the change time moves with any
/// write, even one that puts the modification time back), size, device and
/// inode (a rename over the file brings a new inode), and, for the files
/// of a set that resolves links, the path the symlinks lead to (a
/// Kubernetes secret volume swaps its `..data` link to a new directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    dev: u64,
    ino: u64,
    target: Option<PathBuf>,
}

/// The version of `path` now; `None` when it cannot be read. With
/// `resolve`, one more `realpath` (a `readlink` per link on the way).
pub(crate) fn version(path: &Path, resolve: bool) -> Option<Version> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (changed, dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        ((meta.ctime(), meta.ctime_nsec()), meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (changed, dev, ino) = ((0, 0), 0, 0);
    Some(Version {
        modified: meta.modified().ok(),
        changed,
        len: meta.len(),
        dev,
        ino,
        target: if resolve {
            std::fs::canonicalize(path).ok()
        } else {
            None
        },
    })
}

/// Which credential set has a new valid version each connection was made
/// with: one counter per set, bumped only when a version that passed every
/// check replaced a different one. Stored by each connection when its
/// handshake starts; [`Epoch::changed_since`] tells what moved since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Epoch {
    /// Trust anchors: the CA files, the host's store, the webpki roots.
    pub(crate) anchors: u64,
    /// The CRL files.
    pub(crate) crls: u64,
    /// The client identity.
    pub(crate) identity: u64,
}

impl Epoch {
    /// What moved from `self` (a connection's epoch) to `current`.
    pub(crate) fn changed_since(self, current: Epoch) -> Changed {
        Changed {
            anchors: self.anchors != current.anchors,
            crls: self.crls != current.crls,
            identity: self.identity != current.identity,
        }
    }
}

/// Which sets moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Changed {
    pub(crate) anchors: bool,
    pub(crate) crls: bool,
    pub(crate) identity: bool,
}

impl Changed {
    /// Whether any set moved.
    pub(crate) fn any(self) -> bool {
        self.anchors || self.crls || self.identity
    }
}

/// The client identity's leaf, as an expiry notice names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityNotice {
    /// The identity epoch the notice is about.
    pub(crate) epoch: u64,
    /// The certificate file.
    pub(crate) path: PathBuf,
    /// The leaf's subject and serial (uppercase hex).
    pub(crate) subject: String,
    pub(crate) serial: String,
    pub(crate) not_after: SystemTime,
}

/// What one [`Credentials::check`] found.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// The sets that have a new valid version (from `TlsState::check`:
    /// since the epoch its previous call reported): connections of an
    /// older epoch are judged again.
    pub(crate) changed: Changed,
    /// A file changed and could not be used (once per bad version), or a
    /// CRL went past its nextUpdate (once per list): one `TrustError` each.
    pub(crate) errors: Vec<FileError>,
    /// The identity reached its warning time and nothing newer was loaded
    /// (once per identity): `Event::IdentityExpiring`.
    pub(crate) identity_expiring: Option<IdentityNotice>,
    /// The identity reached its retirement time (once per identity):
    /// connections of this identity epoch retire.
    pub(crate) identity_retiring: Option<IdentityNotice>,
}

/// The version of a set: its files', and for the anchors the store's
/// directory entries (see [`SystemStore::entries_stamp`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Versions {
    files: Vec<Option<Version>>,
    entries: u64,
}

/// One credential set: its current valid value and what it was read from.
struct Watched<T> {
    value: T,
    epoch: u64,
    /// The version the value was read from (or last read as the same).
    seen: Versions,
    /// A version that failed, already reported.
    failed: Option<Versions>,
}

/// What looking at one set gave.
enum Looked {
    /// No file changed (or the change is one already reported).
    Same,
    /// A new valid version, different from the last: the epoch moved.
    Changed,
    /// A file changed and the new version cannot be used.
    Failed(FileError),
}

impl<T> Watched<T> {
    fn new(value: T, seen: Versions) -> Watched<T> {
        Watched {
            value,
            epoch: 1,
            seen,
            failed: None,
        }
    }

    /// Look at the set's version `now`; when it moved, `read` it and take
    /// it if it is valid and whole: the files must be the same version
    /// after the read as before (`again`), else a writer is still at work
    /// and the next look reads it. A version whose value equals the
    /// current one is remembered without moving the epoch.
    fn look(
        &mut self,
        now: Versions,
        read: impl FnOnce() -> Result<T, FileError>,
        again: impl FnOnce() -> Versions,
        same: impl FnOnce(&T, &T) -> bool,
    ) -> Looked {
        if now == self.seen || self.failed.as_ref() == Some(&now) {
            return Looked::Same;
        }
        let read = read();
        if again() != now {
            log::debug!("a credential file is being written; reading it again at the next check");
            return Looked::Same;
        }
        match read {
            Ok(value) => {
                self.seen = now;
                self.failed = None;
                if same(&self.value, &value) {
                    return Looked::Same;
                }
                self.value = value;
                self.epoch += 1;
                Looked::Changed
            }
            Err(e) => {
                self.failed = Some(now);
                Looked::Failed(e)
            }
        }
    }
}

/// How often the files inside the store's directories are looked at: one
/// `stat` per certificate (hundreds in `/etc/ssl/certs`) is too much for
/// every new connection, and a second is soon enough for a CA rotated on
/// the host. The files and directories themselves are looked at every time.
pub(crate) const ENTRIES_EVERY: Duration = Duration::from_secs(1);

/// Every credential set of one trust configuration.
pub(crate) struct Credentials {
    trust: Trust,
    /// The host's store, located when the engine was built.
    store: Option<SystemStore>,
    provider: Arc<CryptoProvider>,
    anchors: Watched<Arc<Anchors>>,
    crls: Watched<Arc<Crls>>,
    identity: Watched<Option<Arc<Identity>>>,
    /// When the store's directory entries were last looked at.
    entries_at: Instant,
    pub(crate) entries_every: Duration,
    /// The CRL epoch and the lists of it already reported as expired.
    crls_reported: (u64, Vec<usize>),
    /// The identity epochs already warned about and retired.
    identity_warned: u64,
    identity_retired: u64,
}

impl Credentials {
    /// Read every set.
    ///
    /// # Errors
    /// The file, and why, when a CA file, CRL file, certificate or key
    /// cannot be read or holds nothing usable, when the key is not the
    /// certificate's, or when no anchor is left.
    pub(crate) fn new(
        trust: &Trust,
        store: Option<SystemStore>,
        provider: Arc<CryptoProvider>,
        now: Instant,
    ) -> Result<Credentials, FileError> {
        let store_ref = store.as_ref();
        let anchor_versions = Versions {
            files: anchor_files(trust, store_ref)
                .iter()
                .map(|p| version(p, false))
                .collect(),
            entries: store_ref.map_or(0, SystemStore::entries_stamp),
        };
        let crl_versions = files_version(&trust.crl_files);
        let identity_versions = files_version(&identity_files(trust));
        let anchors = Arc::new(read_anchors(trust, store_ref)?);
        let crls = Arc::new(Crls::load(&trust.crl_files)?);
        let identity = match &trust.client_identity {
            Some(files) => Some(Arc::new(Identity::load(files, &provider)?)),
            None => None,
        };
        Ok(Credentials {
            anchors: Watched::new(anchors, anchor_versions),
            crls: Watched::new(crls, crl_versions),
            identity: Watched::new(identity, identity_versions),
            trust: trust.clone(),
            store,
            provider,
            entries_at: now,
            entries_every: ENTRIES_EVERY,
            crls_reported: (0, Vec::new()),
            identity_warned: 0,
            identity_retired: 0,
        })
    }

    /// The epoch of the current versions.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch {
            anchors: self.anchors.epoch,
            crls: self.crls.epoch,
            identity: self.identity.epoch,
        }
    }

    pub(crate) fn anchors(&self) -> &Arc<Anchors> {
        &self.anchors.value
    }

    pub(crate) fn crls(&self) -> &Arc<Crls> {
        &self.crls.value
    }

    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.value.as_ref()
    }

    /// The settings the sets are read from.
    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Look at every file (the store's directory entries at most every
    /// `entries_every`, unless its files changed), load every set that
    /// changed, and report. `now` paces the entries; `wall` is the time
    /// certificates and lists are read against.
    pub(crate) fn check(&mut self, now: Instant, wall: SystemTime) -> Checked {
        let mut checked = Checked::default();
        let trust = &self.trust;
        let store = self.store.as_ref();

        let files: Vec<Option<Version>> = anchor_files(trust, store)
            .iter()
            .map(|p| version(p, false))
            .collect();
        let mut entries = self.anchors.seen.entries;
        if let Some(store) = store {
            let due = now.saturating_duration_since(self.entries_at) >= self.entries_every;
            if due || files != self.anchors.seen.files {
                entries = store.entries_stamp();
                self.entries_at = now;
            }
        }
        let looked = self.anchors.look(
            Versions { files, entries },
            || read_anchors(trust, store).map(Arc::new),
            // The entries are not looked at twice: the files and the
            // directories' own times settle a rewrite of the bundle.
            || Versions {
                files: anchor_files(trust, store)
                    .iter()
                    .map(|p| version(p, false))
                    .collect(),
                entries,
            },
            |a, b| a.same(b),
        );
        note(looked, &mut checked.changed.anchors, &mut checked.errors);

        let crl_files = &trust.crl_files;
        let looked = self.crls.look(
            files_version(crl_files),
            || Crls::load(crl_files).map(Arc::new),
            || files_version(crl_files),
            |a, b| a.same(b),
        );
        note(looked, &mut checked.changed.crls, &mut checked.errors);

        if let Some(id) = &trust.client_identity {
            let provider = &self.provider;
            let id_files = identity_files(trust);
            let looked = self.identity.look(
                files_version(&id_files),
                || Identity::load(id, provider).map(|i| Some(Arc::new(i))),
                || files_version(&id_files),
                |a, b| match (a, b) {
                    (Some(a), Some(b)) => a.same(b),
                    _ => false,
                },
            );
            note(looked, &mut checked.changed.identity, &mut checked.errors);
        }

        self.report_expired_crls(wall, &mut checked.errors);
        self.identity_notices(wall, &mut checked);
        checked
    }

    /// One error per list of the current CRL version past its nextUpdate.
    fn report_expired_crls(&mut self, wall: SystemTime, errors: &mut Vec<FileError>) {
        if self.crls_reported.0 != self.crls.epoch {
            self.crls_reported = (self.crls.epoch, Vec::new());
        }
        let secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let refuse = self.trust.crl_expiry == CrlExpiry::Refuse;
        for (i, path, next_update) in self.crls.value.expired(secs) {
            if self.crls_reported.1.contains(&i) {
                continue;
            }
            self.crls_reported.1.push(i);
            let when = secs.saturating_sub(next_update);
            let what = if refuse {
                "certificates of its issuer are refused until a newer list is loaded"
            } else {
                "its revocations still apply; revocations since are unknown until a newer list is loaded"
            };
            errors.push(bad(
                path,
                format!("CRL past its nextUpdate ({when} s ago): {what}"),
            ));
        }
    }

    /// The identity's warning and retirement, each once per identity.
    fn identity_notices(&mut self, wall: SystemTime, checked: &mut Checked) {
        let Some(id) = &self.identity.value else {
            return;
        };
        let epoch = self.identity.epoch;
        let notice = || IdentityNotice {
            epoch,
            path: id.cert_path(),
            subject: id.subject.clone(),
            serial: id.serial.clone(),
            not_after: id.not_after,
        };
        let expiry = &self.trust.identity_expiry;
        if self.identity_warned != epoch && wall >= id.warn_at(expiry) {
            self.identity_warned = epoch;
            checked.identity_expiring = Some(notice());
        }
        if self.identity_retired != epoch && wall >= id.retire_at(expiry) {
            self.identity_retired = epoch;
            checked.identity_retiring = Some(notice());
        }
    }
}

/// Record what looking at one set gave.
fn note(looked: Looked, changed: &mut bool, errors: &mut Vec<FileError>) {
    match looked {
        Looked::Same => {}
        Looked::Changed => *changed = true,
        Looked::Failed(e) => {
            log::warn!(
                "keeping the previous credentials: {}: {}",
                e.path.display(),
                e.reason
            );
            errors.push(e);
        }
    }
}

/// The versions of `files`, their symlinks resolved.
fn files_version(files: &[PathBuf]) -> Versions {
    Versions {
        files: files.iter().map(|p| version(p, true)).collect(),
        entries: 0,
    }
}

fn identity_files(trust: &Trust) -> Vec<PathBuf> {
    trust
        .client_identity
        .iter()
        .flat_map(|id| [id.cert_chain.clone(), id.key.clone()])
        .collect()
}

/// The files whose versions are the anchors' (CA files, the store's bundle
/// and directories).
fn anchor_files<'a>(trust: &'a Trust, store: Option<&'a SystemStore>) -> Vec<&'a Path> {
    let mut files: Vec<&Path> = trust.pem_files.iter().map(PathBuf::as_path).collect();
    files.extend(
        store
            .into_iter()
            .flat_map(|s| s.watched())
            .map(PathBuf::as_path),
    );
    files
}

/// The trust anchors the settings name.
pub(crate) fn read_anchors(
    trust: &Trust,
    store: Option<&SystemStore>,
) -> Result<Anchors, FileError> {
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
        return Err(bad(
            Path::new(""),
            "no trust anchors: use the system store, the webpki roots or a CA file",
        ));
    }
    Ok(anchors)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::config::ClientIdentity;
    use crate::crl::tests::{ca, crl};
    use crate::identity::tests::{client_pem, provider};

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).expect("cert").pem()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A CA file and a client identity in `dir`, as `names` says.
    fn trust_with_identity(dir: &Path, cert: &Path, key: &Path) -> Trust {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem("CA")).expect("write");
        let mut trust = Trust::pem_file(ca);
        trust.client_identity = Some(ClientIdentity {
            cert_chain: cert.to_owned(),
            key: key.to_owned(),
        });
        trust
    }

    fn credentials(trust: &Trust) -> Credentials {
        Credentials::new(trust, None, Arc::new(provider()), Instant::now()).expect("loads")
    }

    fn check(c: &mut Credentials) -> Checked {
        c.check(Instant::now(), SystemTime::now())
    }

    fn subject(c: &Credentials) -> String {
        c.identity().map(|i| i.subject.clone()).unwrap_or_default()
    }

    fn write_pair(dir: &Path, cn: &str) {
        let (cert, key) = client_pem(cn, HOUR);
        std::fs::write(dir.join("tls.crt"), cert).expect("write");
        std::fs::write(dir.join("tls.key"), key).expect("write");
    }

    #[test]
    fn identity_renewals_by_rename_and_by_in_place_rewrite_each_move_the_epoch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let mut c = credentials(&trust_with_identity(dir.path(), &cert, &key));
        assert_eq!(c.epoch().identity, 1);
        assert!(!check(&mut c).changed.any(), "nothing changed yet");

        // Renewed by writing siblings and renaming them over the files.
        let (new_cert, new_key) = client_pem("runner-2", HOUR);
        std::fs::write(dir.path().join("tls.crt.tmp"), &new_cert).expect("write");
        std::fs::write(dir.path().join("tls.key.tmp"), &new_key).expect("write");
        std::fs::rename(dir.path().join("tls.crt.tmp"), &cert).expect("rename");
        std::fs::rename(dir.path().join("tls.key.tmp"), &key).expect("rename");
        let checked = check(&mut c);
        assert!(checked.changed.identity && !checked.changed.anchors && !checked.changed.crls);
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        assert_eq!((c.epoch().identity, subject(&c)), (2, "CN=runner-2".into()));

        // Rewritten in place, same inode and (same name length) same size,
        // and the modification times put back as a coarse clock or a
        // careful tool would leave them: only the change time moves.
        let before = [version(&cert, true), version(&key, true)];
        let (cert3, key3) = client_pem("runner-3", HOUR);
        for (path, pem) in [(&cert, &cert3), (&key, &key3)] {
            let modified = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .expect("mtime");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .expect("open in place");
            file.write_all(pem.as_bytes()).expect("rewrite");
            file.set_modified(modified).expect("put the mtime back");
        }
        let after = [version(&cert, true), version(&key, true)];
        for (b, a) in before.iter().zip(&after) {
            let (b, a) = (b.as_ref().expect("stat"), a.as_ref().expect("stat"));
            assert_eq!(
                (b.ino, b.modified),
                (a.ino, a.modified),
                "same inode, same mtime"
            );
        }
        let checked = check(&mut c);
        assert!(checked.changed.identity, "the change time gave it away");
        assert_eq!((c.epoch().identity, subject(&c)), (3, "CN=runner-3".into()));
        assert!(!check(&mut c).changed.any(), "and it is seen once");
    }

    #[cfg(unix)]
    #[test]
    fn a_kubernetes_secret_volume_swapping_its_data_symlink_is_seen() {
        // The kubelet's atomic writer: files in a timestamped directory,
        // `..data` links to it, and each key file links through `..data`.
        // An update writes a new directory and renames a new `..data` link
        // over the old one.
        let volume = tempfile::tempdir().expect("temp dir");
        let v = volume.path();
        let first = v.join("..2030_01_01_00_00_00.1");
        std::fs::create_dir(&first).expect("mkdir");
        write_pair(&first, "runner-a");
        std::os::unix::fs::symlink(first.file_name().expect("name"), v.join("..data"))
            .expect("link ..data");
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(f), v.join(f)).expect("link");
        }
        let mut c = credentials(&trust_with_identity(
            v,
            &v.join("tls.crt"),
            &v.join("tls.key"),
        ));
        assert_eq!(subject(&c), "CN=runner-a");

        let second = v.join("..2030_01_01_00_30_00.2");
        std::fs::create_dir(&second).expect("mkdir");
        write_pair(&second, "runner-b");
        std::os::unix::fs::symlink(second.file_name().expect("name"), v.join("..data_tmp"))
            .expect("link");
        std::fs::rename(v.join("..data_tmp"), v.join("..data")).expect("swap ..data");
        std::fs::remove_dir_all(&first).expect("the old directory goes");
        let checked = check(&mut c);
        assert!(checked.changed.identity, "{:?}", checked.errors);
        assert_eq!((c.epoch().identity, subject(&c)), (2, "CN=runner-b".into()));
        let resolved = version(&v.join("tls.crt"), true).and_then(|v| v.target);
        assert_eq!(resolved, std::fs::canonicalize(second.join("tls.crt")).ok());
    }

    #[test]
    fn the_same_identity_written_again_moves_no_epoch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let mut c = credentials(&trust_with_identity(dir.path(), &cert, &key));
        let same = std::fs::read(&cert).expect("read");
        std::fs::write(dir.path().join("copy"), &same).expect("write");
        std::fs::rename(dir.path().join("copy"), &cert).expect("rename");
        let checked = check(&mut c);
        assert!(!checked.changed.any() && checked.errors.is_empty());
        assert_eq!(c.epoch().identity, 1);
    }

    #[test]
    fn a_half_written_renewal_keeps_the_old_identity_and_is_reported_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let mut c = credentials(&trust_with_identity(dir.path(), &cert, &key));
        let old = c.identity().cloned().expect("an identity");

        // The new certificate lands first.
        let (new_cert, new_key) = client_pem("runner-2", HOUR);
        std::fs::write(&cert, &new_cert).expect("write");
        let checked = check(&mut c);
        assert!(!checked.changed.any());
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        assert_eq!(checked.errors[0].path, key);
        assert!(checked.errors[0].reason.contains("does not belong"));
        assert!(Arc::ptr_eq(c.identity().expect("kept"), &old));
        assert_eq!(c.epoch().identity, 1);
        assert!(
            check(&mut c).errors.is_empty(),
            "one report per bad version"
        );

        // Then the key: the renewal is whole.
        std::fs::write(&key, &new_key).expect("write");
        let checked = check(&mut c);
        assert!(checked.changed.identity && checked.errors.is_empty());
        assert_eq!((c.epoch().identity, subject(&c)), (2, "CN=runner-2".into()));
    }

    #[test]
    fn a_version_still_being_written_is_read_again_not_taken_or_reported() {
        let v = |n: u64| Versions {
            files: Vec::new(),
            entries: n,
        };
        let mut w = Watched::new(1, v(1));
        // The files moved between the look and the read: wait.
        let looked = w.look(v(2), || Ok(2), || v(3), |a, b| a == b);
        assert!(matches!(looked, Looked::Same));
        assert_eq!((w.value, w.epoch), (1, 1));
        // Settled: taken.
        let looked = w.look(v(3), || Ok(3), || v(3), |a, b| a == b);
        assert!(matches!(looked, Looked::Changed));
        assert_eq!((w.value, w.epoch), (3, 2));
        // A failure mid-write is not reported either.
        let looked = w.look(
            v(4),
            || Err(bad(Path::new("x"), "torn")),
            || v(5),
            |a, b| a == b,
        );
        assert!(matches!(looked, Looked::Same));
        assert!(w.failed.is_none());
    }

    #[test]
    fn a_crl_that_fails_to_parse_keeps_the_last_good_one_and_is_reported_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let authority = ca("CRL CA");
        let file = dir.path().join("ca.crl");
        std::fs::write(&file, crl(&authority, &[7], (2090, 1, 1))).expect("write");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, crate::der::to_pem([&authority.der])).expect("write");
        let mut trust = Trust::pem_file(&ca_file);
        trust.crl_files = vec![file.clone()];
        let mut c = credentials(&trust);
        let good = c.crls().clone();

        std::fs::write(
            &file,
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .expect("write");
        let checked = check(&mut c);
        assert_eq!(checked.errors.len(), 1);
        assert_eq!(checked.errors[0].path, file);
        assert!(!checked.changed.any());
        assert!(Arc::ptr_eq(c.crls(), &good), "the last good lists stay");
        assert!(check(&mut c).errors.is_empty(), "reported once");

        // Removed: still the last good lists, reported once.
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(check(&mut c).errors.len(), 1);
        assert!(Arc::ptr_eq(c.crls(), &good));

        std::fs::write(&file, crl(&authority, &[7, 8], (2090, 1, 1))).expect("write");
        let checked = check(&mut c);
        assert!(checked.changed.crls && checked.errors.is_empty());
        assert_eq!(c.epoch().crls, 2);
    }

    #[test]
    fn two_changes_at_once_move_both_epochs_in_one_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let authority = ca("CRL CA");
        let file = dir.path().join("ca.crl");
        std::fs::write(&file, crl(&authority, &[1], (2090, 1, 1))).expect("write");
        let mut trust = trust_with_identity(dir.path(), &cert, &key);
        trust.crl_files = vec![file.clone()];
        let mut c = credentials(&trust);
        let before = c.epoch();

        write_pair(dir.path(), "runner-2");
        std::fs::write(&file, crl(&authority, &[1, 2], (2090, 1, 1))).expect("write");
        let checked = check(&mut c);
        let moved = before.changed_since(c.epoch());
        assert_eq!(checked.changed, moved);
        assert_eq!(
            moved,
            Changed {
                anchors: false,
                crls: true,
                identity: true
            }
        );
    }

    #[test]
    fn the_identity_warns_and_retires_once_each_and_again_after_a_renewal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let mut c = credentials(&trust_with_identity(dir.path(), &cert, &key));
        let not_after = c.identity().expect("identity").not_after;
        let at = |c: &mut Credentials, before: u64| {
            c.check(Instant::now(), not_after - Duration::from_secs(before))
        };
        // Defaults for one hour: warn 10 min before, retire 1 min before.
        let early = at(&mut c, 601);
        assert!(early.identity_expiring.is_none() && early.identity_retiring.is_none());
        let warned = at(&mut c, 600).identity_expiring.expect("warned");
        assert_eq!(
            (warned.epoch, warned.subject.as_str(), warned.not_after),
            (1, "CN=runner-1", not_after)
        );
        assert_eq!(warned.path, cert);
        assert!(at(&mut c, 300).identity_expiring.is_none(), "once");
        assert!(at(&mut c, 61).identity_retiring.is_none());
        assert_eq!(at(&mut c, 60).identity_retiring.map(|n| n.epoch), Some(1));
        assert!(at(&mut c, 10).identity_retiring.is_none(), "once");

        // The renewal (valid 2030-01-01 for an hour too) has its own notices.
        write_pair(dir.path(), "runner-2");
        let checked = at(&mut c, 10);
        assert!(checked.changed.identity);
        let warned = checked.identity_expiring.expect("warned for the new one");
        assert_eq!((warned.epoch, warned.subject.as_str()), (2, "CN=runner-2"));
    }

    #[test]
    fn a_crl_past_its_next_update_is_reported_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let authority = ca("CRL CA");
        let file = dir.path().join("ca.crl");
        std::fs::write(&file, crl(&authority, &[1], (2030, 1, 1))).expect("write");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, crate::der::to_pem([&authority.der])).expect("write");
        let mut trust = Trust::pem_file(&ca_file);
        trust.crl_files = vec![file.clone()];
        let mut c = credentials(&trust);
        let t2030 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        let before = c.check(Instant::now(), t2030 - Duration::from_secs(1));
        assert!(before.errors.is_empty());
        let after = c.check(Instant::now(), t2030 + Duration::from_secs(5));
        assert_eq!(after.errors.len(), 1);
        assert_eq!(after.errors[0].path, file);
        assert!(
            after.errors[0].reason.contains("still apply"),
            "{}",
            after.errors[0].reason
        );
        assert!(c.check(Instant::now(), t2030 + HOUR).errors.is_empty());
    }

    #[test]
    fn a_certificate_rewritten_in_place_inside_ssl_cert_dir_is_picked_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir");
        let ca = certs.join("internal-ca.pem");
        std::fs::write(&ca, ca_pem("internal CA 1")).expect("write");
        let store = SystemStore::at(None, vec![certs.clone()], true);
        let mut c = Credentials::new(
            &Trust::system(),
            Some(store),
            Arc::new(provider()),
            Instant::now(),
        )
        .expect("builds");
        c.entries_every = Duration::ZERO;
        assert!(!check(&mut c).changed.any(), "nothing changed yet");

        // Rewritten in place (same inode, no rename): the directory's own
        // version stays as it was, the file's moves.
        let dir_before = version(&certs, false);
        let modified = std::fs::metadata(&ca)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&ca)
            .expect("open in place");
        file.write_all(ca_pem("internal CA 2").as_bytes())
            .expect("rewrite");
        file.set_modified(modified + Duration::from_secs(2))
            .expect("set mtime");
        drop(file);
        assert_eq!(
            version(&certs, false),
            dir_before,
            "an edit in place leaves the dir alone"
        );
        assert!(check(&mut c).changed.anchors, "the edit is seen");
        assert!(!check(&mut c).changed.any(), "and seen once");

        // Looked at once per interval only: an edit within it waits for the next.
        c.entries_every = Duration::from_secs(3600);
        std::fs::write(&ca, ca_pem("internal CA 3")).expect("rewrite");
        assert!(!check(&mut c).changed.any(), "not looked at yet");
        c.entries_every = Duration::ZERO;
        assert!(check(&mut c).changed.anchors);
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

    /// What one check costs with the defaults a runner has: the host's
    /// store, one CRL file and a client identity. A measurement, not a
    /// test: `cargo test -p rotary --release --lib -- --ignored
    /// what_a_check_costs --nocapture`.
    #[test]
    #[ignore = "a measurement; run by hand with --release"]
    fn what_a_check_costs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(dir.path(), "runner-1");
        let authority = ca("CRL CA");
        let list = dir.path().join("ca.crl");
        std::fs::write(&list, crl(&authority, &[1, 2, 3], (2090, 1, 1))).expect("write");
        let mut trust = Trust::system();
        trust.crl_files = vec![list];
        trust.client_identity = Some(ClientIdentity {
            cert_chain: cert,
            key,
        });
        let store = SystemStore::locate();
        let mut c = Credentials::new(
            &trust,
            Some(store.clone()),
            Arc::new(provider()),
            Instant::now(),
        )
        .expect("the host's store loads");
        let entries = store.watched().count();
        let rounds = 2000u32;
        for (label, every) in [
            (
                "files only (the store's entries not due)",
                Duration::from_secs(3600),
            ),
            (
                "files and every entry of the store's directories",
                Duration::ZERO,
            ),
        ] {
            c.entries_every = every;
            let start = Instant::now();
            for _ in 0..rounds {
                let checked = check(&mut c);
                assert!(!checked.changed.any() && checked.errors.is_empty());
            }
            let each = start.elapsed() / rounds;
            println!(
                "{label}: {each:?} per check ({entries} store paths: {})",
                store.describe()
            );
        }
    }
}
