//! Remember which certificate chains verified, so a reconnect to a server
//! presenting the very same chain skips re-checking it.
//!
//! A full TLS 1.3 handshake verifies two signatures: the issuer's over each
//! certificate of the chain (`verify_server_cert`) and the server's over the
//! handshake transcript (`verify_tls13_signature`, which proves the server
//! holds the leaf's key). Every max-age replacement presents the chain the
//! previous connection already verified, so the first check repeats work
//! whose answer cannot have changed, while the second must run every time.
//!
//! [`CachingVerifier`] memoizes successful `verify_server_cert` calls for a
//! byte-identical chain, server name and OCSP response, until the earliest
//! notAfter in the chain or [`TTL`] after the check, whichever is first.
//! Failures are never cached (each one reports its own reason), signatures
//! over the transcript are always verified, and a new trust configuration
//! builds a new verifier, so a changed CA file starts with an empty cache.
//! A rotated chain differs in its bytes and is verified in full.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// How long a verified chain is trusted without a new check.
pub(crate) const TTL: Duration = Duration::from_secs(10 * 60);
/// How many distinct chains are remembered (the oldest is forgotten first).
pub(crate) const CAPACITY: usize = 16;

struct Entry {
    certs: Vec<CertificateDer<'static>>,
    name: ServerName<'static>,
    ocsp: Vec<u8>,
    /// Seconds since the epoch: when the chain verified, and when that
    /// answer stops being reused.
    verified_at: u64,
    until: u64,
}

impl Entry {
    fn matches(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
    ) -> bool {
        self.certs.len() == intermediates.len() + 1
            && self.name == *name
            && self.ocsp == ocsp
            && std::iter::once(end_entity)
                .chain(intermediates)
                .zip(&self.certs)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    }
}

/// A [`ServerCertVerifier`] that asks `inner` once per distinct chain.
pub(crate) struct CachingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingVerifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CachingVerifier {
    pub(crate) fn new(inner: Arc<dyn ServerCertVerifier>) -> CachingVerifier {
        CachingVerifier {
            inner,
            entries: Mutex::new(Vec::new()),
        }
    }
}

/// The earliest notAfter of the certificates, in seconds since the epoch;
/// `None` when one does not parse (such a chain is not cached).
fn earliest_not_after<'a>(certs: impl Iterator<Item = &'a CertificateDer<'a>>) -> Option<u64> {
    certs
        .map(|c| {
            let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |min, t| t.map(|t| min.min(t)))
}

impl ServerCertVerifier for CachingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let t = now.as_secs();
        if let Ok(entries) = self.entries.lock() {
            let hit = entries.iter().any(|e| {
                e.verified_at <= t
                    && t < e.until
                    && e.matches(end_entity, intermediates, server_name, ocsp_response)
            });
            if hit {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let chain = std::iter::once(end_entity).chain(intermediates);
        if let (Some(not_after), Ok(mut entries)) = (earliest_not_after(chain), self.entries.lock())
        {
            entries.retain(|e| !e.matches(end_entity, intermediates, server_name, ocsp_response));
            if entries.len() >= CAPACITY {
                entries.remove(0);
            }
            entries.push(Entry {
                certs: std::iter::once(end_entity)
                    .chain(intermediates)
                    .map(|c| c.clone().into_owned())
                    .collect(),
                name: server_name.to_owned(),
                ocsp: ocsp_response.to_vec(),
                verified_at: t,
                until: not_after.min(t.saturating_add(TTL.as_secs())),
            });
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Accepts chains whose leaf is not `b"bad"`, counting the calls.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl ServerCertVerifier for Counting {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            self.0.fetch_add(1, Ordering::Relaxed);
            if end_entity.as_ref() == b"bad" {
                return Err(Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ));
            }
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("unused".into()))
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("unused".into()))
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Vec::new()
        }
    }

    /// A real certificate (so its notAfter parses) valid until `not_after`.
    fn cert(not_after: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn verify(
        v: &CachingVerifier,
        chain: &[CertificateDer<'static>],
        name: &str,
        at: u64,
    ) -> Result<ServerCertVerified, Error> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let now = UnixTime::since_unix_epoch(Duration::from_secs(at));
        v.verify_server_cert(&chain[0], &chain[1..], &name, b"", now)
    }

    #[test]
    fn same_chain_and_name_are_verified_once_until_ttl_or_not_after() {
        let inner = Arc::new(Counting::default());
        let v = CachingVerifier::new(inner.clone());
        let calls = || inner.0.load(Ordering::Relaxed);
        let leaf = cert((2090, 1, 1));
        let mid = cert((2090, 1, 1));
        let chain = [leaf.clone(), mid.clone()];
        let t0 = 2_000_000_000;
        verify(&v, &chain, "a.test", t0).expect("verified");
        verify(&v, &chain, "a.test", t0 + 1).expect("verified");
        assert_eq!(calls(), 1, "the second check is remembered");
        // Another name, another intermediate or a chain without it: checked.
        verify(&v, &chain, "b.test", t0).expect("verified");
        verify(&v, &[leaf.clone(), cert((2090, 1, 1))], "a.test", t0).expect("verified");
        verify(&v, &chain[..1], "a.test", t0).expect("verified");
        assert_eq!(calls(), 4);
        // After the TTL, or with a clock that went back: checked again.
        verify(&v, &chain, "a.test", t0 + TTL.as_secs()).expect("verified");
        verify(&v, &chain, "a.test", t0 - 1).expect("verified");
        assert_eq!(calls(), 6);
        // An intermediate expiring within the TTL bounds the entry.
        let short = [leaf, cert((2033, 5, 18))];
        let not_after = 1_999_987_200; // 2033-05-18T00:00:00Z
        verify(&v, &short, "a.test", not_after - 300).expect("verified");
        verify(&v, &short, "a.test", not_after - 1).expect("verified");
        assert_eq!(calls(), 7);
        verify(&v, &short, "a.test", not_after).expect("verified");
        assert_eq!(calls(), 8, "past the intermediate's notAfter");
    }

    #[test]
    fn failures_are_never_remembered_and_the_cache_is_bounded() {
        let inner = Arc::new(Counting::default());
        let v = CachingVerifier::new(inner.clone());
        let bad = [CertificateDer::from(b"bad".to_vec())];
        for _ in 0..3 {
            assert!(verify(&v, &bad, "a.test", 2_000_000_000).is_err());
        }
        assert_eq!(inner.0.load(Ordering::Relaxed), 3);
        // A chain that does not parse is accepted by the inner verifier here
        // but has no notAfter, so it is not remembered either.
        let opaque = [CertificateDer::from(b"opaque".to_vec())];
        verify(&v, &opaque, "a.test", 2_000_000_000).expect("verified");
        verify(&v, &opaque, "a.test", 2_000_000_000).expect("verified");
        assert_eq!(inner.0.load(Ordering::Relaxed), 5);
        let names: Vec<String> = (0..=CAPACITY).map(|i| format!("n{i}.test")).collect();
        let chain = [cert((2090, 1, 1))];
        for name in &names {
            verify(&v, &chain, name, 2_000_000_000).expect("verified");
        }
        assert_eq!(v.entries.lock().expect("lock").len(), CAPACITY);
        // The first name was forgotten; the last is remembered.
        let before = inner.0.load(Ordering::Relaxed);
        verify(&v, &chain, &names[CAPACITY], 2_000_000_000).expect("verified");
        verify(&v, &chain, &names[0], 2_000_000_000).expect("verified");
        assert_eq!(inner.0.load(Ordering::Relaxed), before + 1);
    }
}
