//! A peer's certificate chain: what the server presented (DER, PEM, SHA-256
//! fingerprint) and the path its verification built.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::der::{colon_hex, not_after_secs, sha256, to_pem};
use crate::path::{NoCaBundle, VerifiedPath};

/// The certificate chain a server presented on one connection, leaf first,
/// and the path rotary's verifier built from it.
///
/// The presented chain is exactly what the server sent: it may lack the
/// root, carry certificates the verifier did not use, or come in any order.
/// Hand a job [`PeerChain::ca_bundle`] instead, which comes from the
/// verified path.
///
/// Two chains are equal when every presented certificate is byte-identical
/// and they verified along the same path.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerChain {
    der: Vec<CertificateDer<'static>>,
    fingerprint: [u8; 32],
    path: Option<Arc<VerifiedPath>>,
    /// The leaf's notAfter (seconds since the epoch), parsed once here: the
    /// engine asks on every handshake, and a handshake that presents the
    /// origin's current chain again shares this value instead of parsing
    /// the leaf (x509 parsing was 1 % of a full handshake's instructions).
    not_after: Option<u64>,
}

impl PeerChain {
    /// Build from the DER certificates rustls reports (leaf first), without
    /// a verified path. The fingerprint is SHA-256 over the leaf's DER;
    /// empty chains have the fingerprint of the empty string.
    pub fn new(der: Vec<CertificateDer<'static>>) -> PeerChain {
        PeerChain::verified(der, None)
    }

    /// The presented chain with the path its verification built.
    pub(crate) fn verified(
        der: Vec<CertificateDer<'static>>,
        path: Option<Arc<VerifiedPath>>,
    ) -> PeerChain {
        let leaf: &[u8] = der.first().map(|c| c.as_ref()).unwrap_or(&[]);
        PeerChain {
            fingerprint: sha256(leaf),
            not_after: der.first().and_then(not_after_secs),
            der,
            path,
        }
    }

    /// The certificates as the server presented them (DER, leaf first).
    pub fn der(&self) -> &[CertificateDer<'static>] {
        &self.der
    }

    /// The path rotary's verifier built for this chain: leaf, the
    /// intermediates it used, and the trust anchor. `None` when rotary did
    /// not verify the chain (`Trust::dangerous_skip_verification`), or for a
    /// resumed session whose chain no longer verifies.
    pub fn verified_path(&self) -> Option<&VerifiedPath> {
        self.path.as_deref()
    }

    /// The shared path, for comparing without dereferencing.
    pub(crate) fn path_arc(&self) -> Option<&Arc<VerifiedPath>> {
        self.path.as_ref()
    }

    /// The PEM a job should trust to reach this server, or any other server
    /// with a certificate from the same CA: the verified path's
    /// intermediates, then the trust anchor's certificate, without the leaf.
    /// See [`VerifiedPath::ca_bundle`].
    ///
    /// # Errors
    /// [`NoCaBundle::AnchorWithoutCertificate`] when the path ends at a
    /// compiled-in root, [`NoCaBundle::NotVerified`] when there is no path.
    pub fn ca_bundle(&self) -> Result<String, NoCaBundle> {
        match &self.path {
            Some(path) => path.ca_bundle(),
            None => Err(NoCaBundle::NotVerified),
        }
    }

    /// SHA-256 of the leaf certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The leaf certificate's notAfter, if the leaf parses as X.509.
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        let secs = self.not_after?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
    }

    /// The fingerprint as colon-separated uppercase hex (`AB:CD:...`), the
    /// form `openssl x509 -fingerprint -sha256` prints.
    pub fn fingerprint_hex(&self) -> String {
        colon_hex(&self.fingerprint)
    }

    /// The presented chain as PEM text (`-----BEGIN CERTIFICATE-----`
    /// blocks, 64-column base64), leaf first. This is what the server sent,
    /// not a CA bundle: see [`PeerChain::ca_bundle`].
    pub fn to_pem(&self) -> String {
        to_pem(&self.der)
    }
}

impl fmt::Debug for PeerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChain")
            .field("certificates", &self.der.len())
            .field("sha256", &self.fingerprint_hex())
            .field("verified_path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_leaf_and_pem_round_trips() {
        let leaf = CertificateDer::from(vec![1u8, 2, 3, 4, 5]);
        let chain = PeerChain::new(vec![leaf.clone(), CertificateDer::from(vec![9u8; 100])]);
        // SHA-256 of 01 02 03 04 05.
        assert!(chain
            .fingerprint_hex()
            .starts_with("74:F8:1F:E1:67:D9:9B:4C:B4:1D:6D:0C:CD:A8:22:78"));
        assert_eq!(chain.fingerprint_hex().len(), 95);
        let pem = chain.to_pem();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        let parsed: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()
            .expect("our own pem parses");
        assert_eq!(parsed, chain.der());
    }

    #[test]
    fn chains_differing_in_an_intermediate_are_unequal() {
        let a = PeerChain::new(vec![vec![1u8].into(), vec![2u8].into()]);
        let b = PeerChain::new(vec![vec![1u8].into(), vec![3u8].into()]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a, b);
    }

    #[test]
    fn a_chain_without_a_path_has_no_ca_bundle() {
        let chain = PeerChain::new(vec![vec![1u8].into()]);
        assert!(chain.verified_path().is_none());
        assert_eq!(chain.ca_bundle(), Err(NoCaBundle::NotVerified));
    }
}
