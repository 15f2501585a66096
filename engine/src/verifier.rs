//! rotary's server certificate verifier: rustls-webpki's path building with
//! the same checks as rustls's `WebPkiServerVerifier` (the chain up to a
//! trust anchor for the server-auth purpose, the leaf and each intermediate
//! against the CRLs of their issuers, then the server name; handshake
//! signatures with the provider's algorithms), keeping the path it built so
//! a job can be handed the CA bundle that path ends in. The same check
//! judges a live connection's chain again when the anchors or CRLs change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, RootCertStore, SignatureScheme,
};

use crate::config::CrlExpiry;
use crate::crl::Crls;
use crate::path::{Anchor, VerifiedPath};
use crate::verify_cache::{Presented, VerifyCache};

/// Trust anchors, each with the certificate it was read from when there
/// was one (CA files), so a path's anchor can be handed on as a certificate.
///
/// Every CA-file certificate is an anchor, as with rustls's own verifier.
/// Those that are not self-issued (intermediates a CA file carries above
/// its root, or instead of one) are also kept as links: a path is first
/// built through them to a root, which is what a job's bundle must end in
/// for OpenSSL and GnuTLS, and only when none is reachable does it end at
/// such an intermediate.
#[derive(Debug)]
pub(crate) struct Anchors {
    /// Every anchor.
    store: RootCertStore,
    /// `certs[i]` is the certificate of `store.roots[i]`, if any.
    certs: Vec<Option<CertificateDer<'static>>>,
    /// The anchors without the links.
    roots: RootCertStore,
    /// CA-file certificates that are not self-issued.
    links: Vec<CertificateDer<'static>>,
}

impl Anchors {
    /// No anchors yet.
    pub(crate) fn empty() -> Anchors {
        Anchors {
            store: RootCertStore::empty(),
            certs: Vec::new(),
            roots: RootCertStore::empty(),
            links: Vec::new(),
        }
    }

    /// Add compiled-in anchors (webpki-roots): names and keys, no certificates.
    pub(crate) fn add_compiled_in(
        &mut self,
        anchors: impl IntoIterator<Item = TrustAnchor<'static>>,
    ) {
        for anchor in anchors {
            self.store.roots.push(anchor.clone());
            self.roots.roots.push(anchor);
            self.certs.push(None);
        }
    }

    /// Add the anchor a CA certificate stands for, keeping the certificate.
    ///
    /// # Errors
    /// rustls's reason when the certificate cannot be an anchor.
    pub(crate) fn add_certificate(&mut self, cert: CertificateDer<'static>) -> Result<(), Error> {
        self.store.add(cert.clone())?;
        let self_issued =
            webpki::EndEntityCert::try_from(&cert).is_ok_and(|c| c.subject() == c.issuer());
        if self_issued {
            self.roots.add(cert.clone())?;
        } else {
            self.links.push(cert.clone());
        }
        self.certs.push(Some(cert));
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Whether the two hold the same anchors, from the same certificates.
    pub(crate) fn same(&self, other: &Anchors) -> bool {
        self.store.roots == other.store.roots && self.certs == other.certs
    }

    /// The certificate of an anchor equal to `anchor` (same name, key and
    /// constraints), if one came from a certificate: a root that is both
    /// compiled in and in a CA file is handed on as that file's certificate.
    fn certificate_for(&self, anchor: &TrustAnchor<'_>) -> Option<&CertificateDer<'static>> {
        self.store
            .roots
            .iter()
            .zip(&self.certs)
            .find_map(|(a, cert)| cert.as_ref().filter(|_| a == anchor))
    }
}

/// The verifier every rotary connection uses; one per trust configuration.
#[derive(Debug)]
pub(crate) struct Verifier {
    anchors: Arc<Anchors>,
    crls: Arc<Crls>,
    crl_expiry: CrlExpiry,
    algs: WebPkiSupportedAlgorithms,
    cache: VerifyCache,
    /// `Trust::dangerous_skip_verification` (only settable with its feature).
    skip: bool,
}

impl Verifier {
    /// Verify against `anchors` and `crls` (an expired list treated as
    /// `crl_expiry` says) with the provider's signature algorithms.
    pub(crate) fn new(
        anchors: Arc<Anchors>,
        crls: Arc<Crls>,
        crl_expiry: CrlExpiry,
        algs: WebPkiSupportedAlgorithms,
    ) -> Verifier {
        Verifier {
            anchors,
            crls,
            crl_expiry,
            algs,
            cache: VerifyCache::default(),
            skip: false,
        }
    }

    /// Accept any chain (handshake signatures are still checked).
    #[cfg(feature = "dangerous-skip-verification")]
    pub(crate) fn skipping(mut self) -> Verifier {
        self.skip = true;
        self
    }

    /// The path a finished handshake's chain verified along, for `host`:
    /// remembered from its verification, or (evicted, not cacheable, or a
    /// resumed session whose entry has expired) verified again now. `None`
    /// when verification is skipped or the chain does not verify now.
    pub(crate) fn path_for(
        &self,
        chain: &[CertificateDer<'_>],
        host: &str,
    ) -> Option<Arc<VerifiedPath>> {
        match self.judge(chain, host) {
            Ok(path) => path,
            Err(e) => {
                log::debug!("no verified path for the chain of {host}: {e}");
                None
            }
        }
    }

    /// Verify a chain reported for `host` (leaf first) now, as a handshake
    /// would (without its OCSP response, which rotary does not check): the
    /// path, remembered or built. `Ok(None)` when verification is skipped.
    ///
    /// # Errors
    /// As the handshake's verification would fail now: a revoked
    /// certificate as [`crate::crl::revoked_error`], an anchor no longer
    /// trusted as `UnknownIssuer`, an expired one as `ExpiredContext`, ...
    pub(crate) fn judge(
        &self,
        chain: &[CertificateDer<'_>],
        host: &str,
    ) -> Result<Option<Arc<VerifiedPath>>, Error> {
        if self.skip {
            return Ok(None);
        }
        let chain = Presented::from_chain(chain).ok_or(Error::NoCertificatesPresented)?;
        let name = ServerName::try_from(host)
            .map_err(|_| Error::General(format!("{host:?} is no server name")))?;
        let now = unix_now();
        if let Some(path) = self.cache.get(chain, &name, None, now.as_secs()) {
            return Ok(Some(path));
        }
        self.verified(chain, &name, &[], now).map(Some)
    }

    /// The path of `chain` for `name` at `now`, remembered or built.
    fn verified(
        &self,
        chain: Presented<'_>,
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<Arc<VerifiedPath>, Error> {
        if let Some(path) = self.cache.get(chain, name, Some(ocsp), now.as_secs()) {
            return Ok(path);
        }
        let path = Arc::new(self.build(chain, name, now)?);
        self.cache
            .insert(chain, name, ocsp, now.as_secs(), path.clone());
        Ok(path)
    }

    /// Build and check the path, in `WebPkiServerVerifier`'s order: parse
    /// the leaf, chain it to an anchor for server auth, then the name.
    fn build(
        &self,
        chain: Presented<'_>,
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<VerifiedPath, Error> {
        let parsed = ParsedCertificate::try_from(chain.end_entity)?;
        let leaf = webpki::EndEntityCert::try_from(chain.end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // Through the CA files' intermediates to a root first (see
        // `Anchors`); else, as rustls's verifier does, to any anchor.
        let to_root = match self.anchors.links.is_empty() {
            true => None,
            false => {
                let mut candidates = chain.intermediates.to_vec();
                candidates.extend(self.anchors.links.iter().cloned());
                self.path(&leaf, &self.anchors.roots, &candidates, chain, now)
                    .ok()
            }
        };
        let path = match to_root {
            Some(path) => path,
            None => match self.path(&leaf, &self.anchors.store, chain.intermediates, chain, now) {
                Ok(path) => path,
                Err(e) => return Err(self.rustls_error(&parsed, chain, now, e)),
            },
        };
        verify_server_name(&parsed, name)?;
        Ok(path)
    }

    /// webpki's path from `leaf` through `intermediates` to one of
    /// `anchors`, for server auth, as owned certificates with the anchor's
    /// certificate when it came from one.
    fn path(
        &self,
        leaf: &webpki::EndEntityCert<'_>,
        anchors: &RootCertStore,
        intermediates: &[CertificateDer<'_>],
        chain: Presented<'_>,
        now: UnixTime,
    ) -> Result<VerifiedPath, webpki::Error> {
        let lists = self.crls.lists();
        // Every certificate of the path whose issuer has a list; those
        // whose issuer has none are not judged (see `crl.rs`).
        let revocation = webpki::RevocationOptionsBuilder::new(&lists)
            .ok()
            .map(|options| {
                options
                    .with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .with_expiration_policy(match self.crl_expiry {
                        CrlExpiry::Warn => webpki::ExpirationPolicy::Ignore,
                        CrlExpiry::Refuse => webpki::ExpirationPolicy::Enforce,
                    })
                    .build()
            });
        let path = leaf.verify_for_usage(
            self.algs.all,
            &anchors.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )?;
        let intermediates = path
            .intermediate_certificates()
            .map(|c| c.der().into_owned())
            .collect();
        let anchor = path.anchor();
        let anchor = match self.anchors.certificate_for(anchor) {
            Some(cert) => Anchor::Certificate(cert.clone()),
            None => Anchor::WithoutCertificate {
                subject: DistinguishedName::in_sequence(anchor.subject.as_ref())
                    .as_ref()
                    .to_vec(),
            },
        };
        Ok(VerifiedPath::new(
            chain.end_entity.clone().into_owned(),
            intermediates,
            anchor,
        ))
    }

    /// rustls names webpki's errors (`UnknownIssuer`, `ExpiredContext`,
    /// `InvalidPurposeContext`, ...) in a private function; its public
    /// `verify_server_cert_signed_by_trust_anchor` runs this same check and
    /// names the failure. Running it again for a chain that just failed
    /// costs one more failed path build, and keeps every error exactly as
    /// `WebPkiServerVerifier` reports it.
    fn rustls_error(
        &self,
        parsed: &ParsedCertificate<'_>,
        chain: Presented<'_>,
        now: UnixTime,
        error: webpki::Error,
    ) -> Error {
        // Revocation is what rustls's check below leaves out.
        match error {
            webpki::Error::CertRevoked => {
                let candidates = chain
                    .certs()
                    .chain(self.anchors.links.iter().map(|c| c as &CertificateDer<'_>));
                return match self.crls.revoked(candidates) {
                    Some(revoked) => crate::crl::revoked_error(revoked),
                    None => Error::InvalidCertificate(CertificateError::Revoked),
                };
            }
            webpki::Error::CrlExpired { time, next_update } => {
                return Error::InvalidCertificate(CertificateError::ExpiredRevocationListContext {
                    time,
                    next_update,
                })
            }
            webpki::Error::UnknownRevocationStatus => {
                return Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)
            }
            webpki::Error::InvalidCrlSignatureForPublicKey => {
                return Error::InvalidCertRevocationList(CertRevocationListError::BadSignature)
            }
            webpki::Error::IssuerNotCrlSigner => {
                return Error::InvalidCertRevocationList(
                    CertRevocationListError::IssuerInvalidForCrl,
                )
            }
            _ => {}
        }
        let again = verify_server_cert_signed_by_trust_anchor(
            parsed,
            &self.anchors.store,
            chain.intermediates,
            now,
            self.algs.all,
        );
        match again {
            Err(named) => named,
            // The same inputs give the same answer; should they not, the
            // chain still failed, with webpki's reason.
            Ok(()) => {
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
            }
        }
    }
}

/// The current time for a lookup after the handshake (a clock before 1970
/// reads as 1970, and then nothing is found in the cache).
fn unix_now() -> UnixTime {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    UnixTime::since_unix_epoch(since)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.skip {
            log::warn!(
                "certificate verification is OFF: accepting any certificate for {server_name:?}"
            );
            return Ok(ServerCertVerified::assertion());
        }
        let chain = Presented {
            end_entity,
            intermediates,
        };
        self.verified(chain, server_name, ocsp_response, now)?;
        if !ocsp_response.is_empty() {
            log::trace!("OCSP response not checked ({} bytes)", ocsp_response.len());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SerialNumber,
    };

    use super::*;
    use crate::crl::tests::crl_by;
    use crate::crl::{revoked_in, RevokedCertificate};

    /// A CA: its certificate, and what signs with it.
    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn params(cn: &str, ca: bool) -> CertificateParams {
        let sans = if ca { Vec::new() } else { vec![cn.to_owned()] };
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        p.use_authority_key_identifier_extension = true;
        p
    }

    fn self_signed(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let p = params(cn, true);
        let der = p.self_signed(&key).expect("self-sign").der().clone();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    fn sub_ca(cn: &str, by: &Ca) -> Ca {
        sub_ca_numbered(cn, None, by)
    }

    fn sub_ca_numbered(cn: &str, serial: Option<u64>, by: &Ca) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = params(cn, true);
        p.serial_number = serial.map(SerialNumber::from);
        let der = p.signed_by(&key, &by.issuer).expect("sign").der().clone();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(host: &str, by: &Ca) -> CertificateDer<'static> {
        leaf_numbered(host, None, by)
    }

    fn leaf_numbered(host: &str, serial: Option<u64>, by: &Ca) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p = params(host, false);
        p.serial_number = serial.map(SerialNumber::from);
        p.signed_by(&key, &by.issuer).expect("sign").der().clone()
    }

    fn algs() -> WebPkiSupportedAlgorithms {
        crate::crypto_provider().signature_verification_algorithms
    }

    fn anchors_of(roots: &[&Ca]) -> Anchors {
        let mut anchors = Anchors::empty();
        for r in roots {
            anchors.add_certificate(r.der.clone()).expect("a CA");
        }
        anchors
    }

    fn trusting(roots: &[&Ca]) -> Verifier {
        with_crls(anchors_of(roots), &[], CrlExpiry::Warn)
    }

    /// A verifier of `anchors` and the lists in `crls` (PEM texts).
    fn with_crls(anchors: Anchors, crls: &[String], expiry: CrlExpiry) -> Verifier {
        let dir = tempfile::tempdir().expect("temp dir");
        let files: Vec<std::path::PathBuf> = crls
            .iter()
            .enumerate()
            .map(|(i, pem)| {
                let file = dir.path().join(format!("{i}.crl"));
                std::fs::write(&file, pem).expect("write");
                file
            })
            .collect();
        let crls = Crls::load(&files).expect("the lists load");
        Verifier::new(Arc::new(anchors), Arc::new(crls), expiry, algs())
    }

    fn check(v: &Verifier, chain: &[CertificateDer<'static>], host: &str) -> Result<(), Error> {
        let name = ServerName::try_from(host.to_owned()).expect("name");
        v.verify_server_cert(&chain[0], &chain[1..], &name, b"", unix_now())
            .map(|_| ())
    }

    #[test]
    fn the_path_keeps_the_intermediates_used_in_order_and_the_anchors_certificate() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let low = sub_ca("Low", &mid);
        let stray = self_signed("Stray");
        let leaf = leaf("a.test", &low);
        let v = trusting(&[&root]);
        // Unordered, with the root and an unrelated certificate thrown in.
        let chain = [
            leaf.clone(),
            stray.der.clone(),
            mid.der.clone(),
            root.der.clone(),
            low.der.clone(),
        ];
        check(&v, &chain, "a.test").expect("verifies");
        let path = v.path_for(&chain, "a.test").expect("a path");
        assert_eq!(path.leaf(), &leaf);
        assert_eq!(path.intermediates(), [low.der.clone(), mid.der.clone()]);
        assert_eq!(path.anchor(), &Anchor::Certificate(root.der.clone()));
    }

    #[test]
    fn the_path_comes_from_the_verification_and_is_looked_up_not_rebuilt() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let chain = [leaf("a.test", &mid), mid.der.clone()];
        let v = trusting(&[&root]);
        check(&v, &chain, "a.test").expect("verifies");
        assert_eq!(v.cache.len(), 1);
        let first = v.path_for(&chain, "a.test").expect("a path");
        let again = v.path_for(&chain, "a.test").expect("a path");
        assert!(Arc::ptr_eq(&first, &again), "the remembered path");
        assert_eq!(v.cache.len(), 1);
        // A chain the handshake did not verify (as after a resumption whose
        // entry expired) is verified on lookup, under the same rules.
        let fresh = trusting(&[&root]);
        assert!(fresh.path_for(&chain, "a.test").is_some());
        assert!(fresh.path_for(&chain, "b.test").is_none(), "wrong name");
        assert!(fresh.path_for(&[], "a.test").is_none());
    }

    #[test]
    fn failures_keep_rustls_error_kinds_and_are_not_remembered() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let leaf = leaf("a.test", &mid);
        let v = trusting(&[&root]);
        let unknown = check(&v, std::slice::from_ref(&leaf), "a.test");
        assert_eq!(
            unknown,
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "no intermediate, no path"
        );
        let wrong = check(&v, &[leaf.clone(), mid.der.clone()], "b.test");
        assert!(
            matches!(
                wrong,
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{wrong:?}"
        );
        let garbage = check(&v, &[CertificateDer::from(vec![1, 2, 3])], "a.test");
        assert_eq!(
            garbage,
            Err(Error::InvalidCertificate(CertificateError::BadEncoding))
        );
        assert_eq!(v.cache.len(), 0);
    }

    #[test]
    fn a_compiled_in_anchor_has_no_certificate_unless_a_ca_file_also_holds_it() {
        let root = self_signed("Compiled Root");
        let chain = [leaf("a.test", &root)];
        let compiled = || {
            webpki::anchor_from_trusted_cert(&root.der)
                .expect("anchor")
                .to_owned()
        };
        let mut anchors = Anchors::empty();
        anchors.add_compiled_in([compiled()]);
        let v = with_crls(anchors, &[], CrlExpiry::Warn);
        let path = v.path_for(&chain, "a.test").expect("a path");
        assert_eq!(path.anchor().certificate(), None);
        assert_eq!(path.anchor().subject(), "CN=Compiled Root");

        let mut anchors = Anchors::empty();
        anchors.add_compiled_in([compiled()]);
        anchors.add_certificate(root.der.clone()).expect("a CA");
        let v = with_crls(anchors, &[], CrlExpiry::Warn);
        let path = v.path_for(&chain, "a.test").expect("a path");
        assert_eq!(path.anchor().certificate(), Some(&root.der));
    }

    #[test]
    fn an_intermediate_in_the_ca_file_leads_the_path_on_to_the_root() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let chain = [leaf("a.test", &mid)];
        // The server sends the leaf alone; the CA file holds the
        // intermediate and the root, in either order.
        for order in [[&mid, &root], [&root, &mid]] {
            let v = trusting(&order);
            let path = v.path_for(&chain, "a.test").expect("a path");
            assert_eq!(path.intermediates(), std::slice::from_ref(&mid.der));
            assert_eq!(path.anchor(), &Anchor::Certificate(root.der.clone()));
        }
        // With the intermediate alone it is the anchor, as in rustls.
        let v = trusting(&[&mid]);
        let path = v.path_for(&chain, "a.test").expect("a path");
        assert!(path.intermediates().is_empty());
        assert_eq!(path.anchor(), &Anchor::Certificate(mid.der.clone()));
    }

    #[test]
    fn a_revoked_leaf_or_intermediate_refuses_the_chain_naming_it() {
        let root = self_signed("Root");
        let mid = sub_ca_numbered("Mid", Some(0x20), &root);
        let chain = [leaf_numbered("a.test", Some(0x10), &mid), mid.der.clone()];
        let named = |v: &Verifier| {
            let err = check(v, &chain, "a.test").expect_err("revoked");
            revoked_in(&err)
                .cloned()
                .unwrap_or_else(|| panic!("not named: {err:?}"))
        };
        let leaf_listed = crl_by(&mid.issuer, &[0x10], (2090, 1, 1));
        let v = with_crls(anchors_of(&[&root]), &[leaf_listed], CrlExpiry::Warn);
        let revoked = named(&v);
        assert_eq!(
            revoked,
            RevokedCertificate {
                subject: "CN=a.test".into(),
                serial: "10".into()
            }
        );
        assert_eq!(v.cache.len(), 0, "a refused chain is not remembered");
        let err = v.judge(&chain, "a.test").expect_err("judged revoked too");
        assert_eq!(revoked_in(&err), Some(&revoked));

        let mid_listed = crl_by(&root.issuer, &[0x20], (2090, 1, 1));
        let v = with_crls(anchors_of(&[&root]), &[mid_listed], CrlExpiry::Warn);
        assert_eq!(named(&v).subject, "CN=Mid");
        assert_eq!(named(&v).serial, "20");

        let others = crl_by(&root.issuer, &[0x21], (2090, 1, 1));
        let v = with_crls(anchors_of(&[&root]), &[others], CrlExpiry::Warn);
        check(&v, &chain, "a.test").expect("nothing of the path is listed");
    }

    #[test]
    fn a_list_the_issuer_did_not_sign_fails_the_chain_it_claims_to_cover() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let chain = [leaf_numbered("a.test", Some(0x10), &mid), mid.der.clone()];
        // Another key's list under Mid's name.
        let impostor = sub_ca("Mid", &self_signed("Elsewhere"));
        let forged = crl_by(&impostor.issuer, &[0x99], (2090, 1, 1));
        let v = with_crls(anchors_of(&[&root]), &[forged], CrlExpiry::Warn);
        assert_eq!(
            check(&v, &chain, "a.test"),
            Err(Error::InvalidCertRevocationList(
                CertRevocationListError::BadSignature
            ))
        );
    }

    #[test]
    fn a_certificate_whose_issuer_has_no_list_is_not_judged() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let chain = [leaf_numbered("a.test", Some(0x10), &mid), mid.der.clone()];
        let other = self_signed("Other CA");
        let unrelated = crl_by(&other.issuer, &[0x10], (2090, 1, 1));
        let v = with_crls(anchors_of(&[&root, &other]), &[unrelated], CrlExpiry::Warn);
        check(&v, &chain, "a.test").expect("no list speaks for this path");
    }

    #[test]
    fn an_expired_list_still_revokes_and_refuse_fails_what_it_covers() {
        let root = self_signed("Root");
        let mid = sub_ca("Mid", &root);
        let fine = [leaf_numbered("a.test", Some(0x10), &mid), mid.der.clone()];
        let listed = [leaf_numbered("a.test", Some(0x11), &mid), mid.der.clone()];
        let expired = crl_by(&mid.issuer, &[0x11], (2021, 6, 1));
        let warn = with_crls(
            anchors_of(&[&root]),
            std::slice::from_ref(&expired),
            CrlExpiry::Warn,
        );
        check(&warn, &fine, "a.test").expect("warn: the list still applies");
        let err = check(&warn, &listed, "a.test").expect_err("still revoked");
        assert_eq!(revoked_in(&err).map(|r| r.serial.as_str()), Some("11"));
        let refuse = with_crls(anchors_of(&[&root]), &[expired], CrlExpiry::Refuse);
        let err = check(&refuse, &fine, "a.test").expect_err("refused");
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::ExpiredRevocationListContext { .. })
            ),
            "{err:?}"
        );
    }
}
