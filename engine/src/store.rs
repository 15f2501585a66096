//! The host's trust store: where it lives (`SSL_CERT_FILE`, `SSL_CERT_DIR`,
//! else the platform's usual bundle and directory, as OpenSSL would look),
//! and reading it through `rustls-native-certs`.
//!
//! The locations are found once, when the engine is built; their files are
//! watched like PEM files (`tls.rs` re-reads them when one changes).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

/// One version of a file: modification time, size and inode (as `tls.rs`
/// stamps the files it watches); `None` when it cannot be read.
type Version = Option<(SystemTime, u64, u64)>;

/// Where the host's trust store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemStore {
    file: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    /// The locations came from `SSL_CERT_FILE`/`SSL_CERT_DIR`: the user asked
    /// for them, so a broken one is an error, never a silent fallback.
    from_env: bool,
}

/// What reading the store gave.
pub(crate) enum Loaded {
    /// Certificates, and the problems met on the way (a file in the
    /// directory that is no PEM, say), if any.
    Certs(Vec<CertificateDer<'static>>, Vec<String>),
    /// Nothing usable, and why.
    Empty(String),
}

impl SystemStore {
    /// The store's locations: `SSL_CERT_FILE` and `SSL_CERT_DIR` (a
    /// `:`-separated list) when either is set, as OpenSSL, curl and Go read
    /// them; otherwise the bundle and directories OpenSSL would use here.
    pub(crate) fn locate() -> SystemStore {
        let file = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        let dirs: Vec<PathBuf> = std::env::var_os("SSL_CERT_DIR")
            .map(|d| {
                std::env::split_paths(&d)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if file.is_some() || !dirs.is_empty() {
            return SystemStore {
                file,
                dirs,
                from_env: true,
            };
        }
        let probed = openssl_probe::probe();
        SystemStore {
            file: probed.cert_file,
            dirs: probed.cert_dir,
            from_env: false,
        }
    }

    /// A store at these locations (for tests).
    #[cfg(test)]
    pub(crate) fn at(file: Option<PathBuf>, dirs: Vec<PathBuf>, from_env: bool) -> SystemStore {
        SystemStore {
            file,
            dirs,
            from_env,
        }
    }

    /// Whether the user named the locations (`SSL_CERT_FILE`, `SSL_CERT_DIR`).
    pub(crate) fn named_by_env(&self) -> bool {
        self.from_env
    }

    /// The paths whose changes mean the store changed: the bundle, and each
    /// directory (whose modification time moves when a certificate is added
    /// or removed, as `update-ca-certificates` does). A file edited in place
    /// inside a directory leaves the directory's time alone: see
    /// [`SystemStore::entries_stamp`].
    pub(crate) fn watched(&self) -> impl Iterator<Item = &PathBuf> {
        self.file.iter().chain(&self.dirs)
    }

    /// One number for the versions of every file in the store's
    /// directories: each entry's name with the modification time, size and
    /// inode of what it names (symlinks followed, as the loader follows
    /// them). It changes when a certificate in a directory is rewritten in
    /// place, which the directory's own time does not show. Costs one
    /// `readdir` per directory and one `stat` per entry.
    pub(crate) fn entries_stamp(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for dir in &self.dirs {
            dir.hash(&mut hasher);
            let Ok(list) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut entries: Vec<(std::ffi::OsString, Version)> = list
                .filter_map(Result::ok)
                .map(|entry| {
                    let version = std::fs::metadata(entry.path()).ok().and_then(|meta| {
                        #[cfg(unix)]
                        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
                        #[cfg(not(unix))]
                        let inode = 0;
                        Some((meta.modified().ok()?, meta.len(), inode))
                    });
                    (entry.file_name(), version)
                })
                .collect();
            entries.sort_unstable();
            entries.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// A short name for messages: the bundle's path, else the first directory's.
    pub(crate) fn describe(&self) -> String {
        match (&self.file, self.dirs.first()) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => "the system trust store (none found)".into(),
        }
    }

    /// Read every certificate of the store (each file once, duplicates
    /// removed).
    pub(crate) fn load(&self) -> Loaded {
        let mut certs = Vec::new();
        let mut problems = Vec::new();
        let mut file = self.file.as_deref();
        let mut dirs = self.dirs.iter().map(|d| Some(d.as_path()));
        loop {
            let dir = dirs.next().flatten();
            if file.is_none() && dir.is_none() {
                break;
            }
            let result = rustls_native_certs::load_certs_from_paths(file.take(), dir);
            certs.extend(result.certs);
            problems.extend(result.errors.iter().map(|e| e.to_string()));
        }
        certs.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        certs.dedup();
        if certs.is_empty() {
            let why = match problems.first() {
                Some(p) => p.clone(),
                None => "no certificate found".into(),
            };
            return Loaded::Empty(why);
        }
        Loaded::Certs(certs, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(n: u8) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![format!("ca{n}.test")]).expect("params");
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn a_bundle_and_a_directory_are_read_once_each_without_duplicates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bundle.pem");
        let (a, b) = (pem(1), pem(2));
        std::fs::write(&bundle, format!("{a}{b}")).expect("write bundle");
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir(&certs_dir).expect("mkdir");
        std::fs::write(certs_dir.join("b.pem"), &b).expect("write b");
        std::fs::write(certs_dir.join("c.pem"), pem(3)).expect("write c");
        let store = SystemStore {
            file: Some(bundle.clone()),
            dirs: vec![certs_dir.clone()],
            from_env: true,
        };
        let Loaded::Certs(certs, problems) = store.load() else {
            panic!("the store has certificates");
        };
        assert_eq!(certs.len(), 3, "a, b (twice) and c: {problems:?}");
        let watched: Vec<&PathBuf> = store.watched().collect();
        assert_eq!(watched, [&bundle, &certs_dir]);
    }

    #[test]
    fn a_store_without_certificates_says_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = SystemStore {
            file: Some(dir.path().join("absent.pem")),
            dirs: Vec::new(),
            from_env: true,
        };
        assert!(matches!(missing.load(), Loaded::Empty(why) if why.contains("absent.pem")));
        let nothing = SystemStore {
            file: None,
            dirs: Vec::new(),
            from_env: false,
        };
        assert!(matches!(nothing.load(), Loaded::Empty(_)));
    }
}
