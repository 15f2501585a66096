//! A verified peer certificate chain: DER, PEM and SHA-256 fingerprint.

use std::fmt;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

/// The certificate chain a server presented on one connection, leaf first.
///
/// Two chains are equal when every certificate is byte-identical.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerChain {
    der: Vec<CertificateDer<'static>>,
    fingerprint: [u8; 32],
}

impl PeerChain {
    /// Build from the DER certificates rustls reports (leaf first). The
    /// fingerprint is SHA-256 over the leaf's DER; empty chains have the
    /// fingerprint of the empty string.
    pub fn new(der: Vec<CertificateDer<'static>>) -> PeerChain {
        let leaf: &[u8] = der.first().map(|c| c.as_ref()).unwrap_or(&[]);
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        PeerChain { der, fingerprint }
    }

    /// The certificates as DER, leaf first.
    pub fn der(&self) -> &[CertificateDer<'static>] {
        &self.der
    }

    /// SHA-256 of the leaf certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The leaf certificate's notAfter, if the leaf parses as X.509.
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        let leaf = self.der.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let secs = cert.validity().not_after.timestamp();
        let secs = u64::try_from(secs).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
    }

    /// The fingerprint as colon-separated uppercase hex (`AB:CD:...`), the
    /// form `openssl x509 -fingerprint -sha256` prints.
    pub fn fingerprint_hex(&self) -> String {
        let mut s = String::with_capacity(95);
        for (i, b) in self.fingerprint.iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            s.push_str(&format!("{b:02X}"));
        }
        s
    }

    /// The chain as PEM text (`-----BEGIN CERTIFICATE-----` blocks, 64-column
    /// base64), suitable as a CA bundle file.
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for cert in &self.der {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in b64.as_bytes().chunks(64) {
                // base64 output is ASCII, so every chunk is valid UTF-8.
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out
    }
}

impl fmt::Debug for PeerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChain")
            .field("certificates", &self.der.len())
            .field("sha256", &self.fingerprint_hex())
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
        let expected = ring::digest::digest(&ring::digest::SHA256, &[1, 2, 3, 4, 5]);
        assert_eq!(&chain.fingerprint()[..], expected.as_ref());
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
}
