//! Certificate bytes as people and files see them: SHA-256 fingerprints,
//! colon hex, PEM blocks, and a leaf's notAfter. Pure functions over DER,
//! shared by the peer chain ([`crate::chain`]), the verified path
//! ([`crate::path`]) and the verify cache.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    crate::provider::sha256(data)
}

/// Colon-separated uppercase hex (`AB:CD:...`).
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Certificates as PEM blocks with 64-column base64, in the given order.
pub(crate) fn to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for cert in certs {
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

/// A certificate's notAfter in seconds since the epoch; `None` when it does
/// not parse or lies before 1970.
pub(crate) fn not_after_secs(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}
