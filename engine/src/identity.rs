//! The client identity for mutual TLS: a certificate chain and its private
//! key read from files, accepted only when the key belongs to the leaf, and
//! the leaf's validity, from which its retirement and warning times follow.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::{ClientIdentity, IdentityExpiry};
use crate::cred_file::{bad, FileError};
use crate::crl::serial_hex;
use crate::der::sha256;

/// One version of the client identity that passed every check.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The chain and signing key rustls presents.
    pub(crate) certified: Arc<CertifiedKey>,
    /// Where it was read from (the key file names it in messages).
    pub(crate) files: ClientIdentity,
    /// The leaf's subject as text, and its serial in uppercase hex.
    pub(crate) subject: String,
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// SHA-256 over the chain's DER and the key's: two reads of the same
    /// certificate and key are one version.
    digest: [u8; 32],
}

impl Identity {
    /// Read the chain and the key, and check that they belong together.
    ///
    /// # Errors
    /// The file and why: the chain cannot be read or holds no certificate,
    /// the leaf is no X.509 certificate, the key cannot be read or `provider`
    /// cannot sign with it, or the key is not the leaf's (a renewal written
    /// half-way: the certificate of the new identity with the key of the
    /// old, or the other way round).
    pub(crate) fn load(
        files: &ClientIdentity,
        provider: &CryptoProvider,
    ) -> Result<Identity, FileError> {
        let cert = &files.cert_chain;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, format!("cannot read client certificate: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, format!("bad PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad(cert, "no certificate in client certificate file"));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| bad(cert, format!("client certificate does not parse: {e}")))?;
        let subject = parsed.subject().to_string();
        let serial = serial_hex(parsed.raw_serial());
        let validity = parsed.validity();
        let (not_before, not_after) = (
            system_time(validity.not_before.timestamp()),
            system_time(validity.not_after.timestamp()),
        );
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| bad(&files.key, format!("cannot read client key: {e}")))?;
        let mut digest_input: Vec<u8> = chain.iter().flat_map(|c| c.to_vec()).collect();
        digest_input.extend_from_slice(key.secret_der());
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(&files.key, format!("unusable client key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        // rustls's own check (`CertifiedKey::from_der`) lets a key whose
        // public half it cannot tell pass; here it must match.
        certified.keys_match().map_err(|e| {
            bad(
                &files.key,
                format!(
                    "the key does not belong to the certificate in {} ({e}): a renewal written \
                     half-way? the previous identity stays",
                    cert.display()
                ),
            )
        })?;
        Ok(Identity {
            certified: Arc::new(certified),
            files: files.clone(),
            subject,
            serial,
            not_before,
            not_after,
            digest: sha256(&digest_input),
        })
    }

    /// Whether the two are the same certificate chain and key.
    pub(crate) fn same(&self, other: &Identity) -> bool {
        self.digest == other.digest
    }

    fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// When connections that presented this identity retire.
    pub(crate) fn retire_at(&self, expiry: &IdentityExpiry) -> SystemTime {
        earlier(self.not_after, expiry.retire_margin(self.lifetime()))
    }

    /// When the host is warned if nothing newer has been loaded.
    pub(crate) fn warn_at(&self, expiry: &IdentityExpiry) -> SystemTime {
        earlier(self.not_after, expiry.warn_lead(self.lifetime()))
    }

    /// The certificate file, for messages.
    pub(crate) fn cert_path(&self) -> PathBuf {
        self.files.cert_chain.clone()
    }
}

fn earlier(t: SystemTime, by: Duration) -> SystemTime {
    t.checked_sub(by).unwrap_or(UNIX_EPOCH)
}

/// Seconds since the epoch as a time (before 1970: the epoch).
fn system_time(secs: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    /// A self-signed client certificate for `cn`, valid for `lifetime`
    /// from 2030-01-01, and its key, both PEM.
    pub(crate) fn client_pem(cn: &str, lifetime: Duration) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        p.not_after = p.not_before + lifetime;
        (
            p.self_signed(&key).expect("cert").pem(),
            key.serialize_pem(),
        )
    }

    pub(crate) fn provider() -> CryptoProvider {
        crate::crypto_provider()
    }

    fn files(dir: &std::path::Path, cert: &str, key: &str) -> ClientIdentity {
        let files = ClientIdentity {
            cert_chain: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert_chain, cert).expect("write");
        std::fs::write(&files.key, key).expect("write");
        files
    }

    #[test]
    fn a_key_that_is_not_the_leafs_is_refused_naming_the_key_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (old_cert, old_key) = client_pem("runner-old", Duration::from_secs(3600));
        let (new_cert, _) = client_pem("runner-new", Duration::from_secs(3600));
        let good = files(dir.path(), &old_cert, &old_key);
        let id = Identity::load(&good, &provider()).expect("matches");
        assert_eq!(id.subject, "CN=runner-old");
        // The renewal's certificate is written, its key not yet.
        let half = files(dir.path(), &new_cert, &old_key);
        let err = Identity::load(&half, &provider()).expect_err("half a renewal");
        assert_eq!(err.path, half.key);
        assert!(err.reason.contains("does not belong"), "{}", err.reason);

        std::fs::write(
            &good.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = Identity::load(&good, &provider()).expect_err("bad key");
        assert_eq!(err.path, good.key);
        std::fs::write(&good.cert_chain, "").expect("write");
        let err = Identity::load(&good, &provider()).expect_err("no certificate");
        assert_eq!(err.path, good.cert_chain);
    }

    #[test]
    fn retire_and_warn_times_count_back_from_not_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hour = Duration::from_secs(3600);
        let (cert, key) = client_pem("runner", hour);
        let id = Identity::load(&files(dir.path(), &cert, &key), &provider()).expect("loads");
        assert_eq!(id.not_after.duration_since(id.not_before).ok(), Some(hour));
        let defaults = IdentityExpiry::default();
        assert_eq!(
            id.retire_at(&defaults),
            id.not_after - Duration::from_secs(60)
        );
        assert_eq!(
            id.warn_at(&defaults),
            id.not_after - Duration::from_secs(600)
        );
        let set = IdentityExpiry {
            retire_before: Some(Duration::from_secs(5)),
            warn_before: Some(Duration::from_secs(7)),
        };
        assert_eq!(id.retire_at(&set), id.not_after - Duration::from_secs(5));
        assert_eq!(id.warn_at(&set), id.not_after - Duration::from_secs(7));
        // A five-minute certificate retires a tenth of its life early.
        let (cert, key) = client_pem("short", Duration::from_secs(300));
        let short = Identity::load(&files(dir.path(), &cert, &key), &provider()).expect("loads");
        assert_eq!(
            short.retire_at(&defaults),
            short.not_after - Duration::from_secs(30)
        );
        assert!(!short.same(&id));
        let again = Identity::load(&short.files, &provider()).expect("loads");
        assert!(again.same(&short), "same files, same identity");
    }
}
