//! Certificate revocation lists: CRL files (PEM or DER) read into the set
//! the verifier checks every path against, when each list stops being
//! current, and naming the certificate a list revokes.
//!
//! Checking itself is rustls-webpki's (see `verifier.rs`): the leaf and
//! every intermediate of the path, against a list from the certificate's
//! own issuer whose signature that issuer made. A certificate whose issuer
//! has no list among the files is not judged (the host's store reaches
//! public CAs whose lists nobody hands rotary).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use webpki::{CertRevocationList, OwnedCertRevocationList};

use crate::cred_file::{bad, FileError};
use crate::der::sha256;

/// A certificate that a certificate revocation list revokes: what
/// [`Error::Revoked`](crate::Error::Revoked) and a refused handshake name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RevokedCertificate {
    /// The certificate's subject as text (`CN=edge.example.com, O=Example`).
    pub subject: String,
    /// Its serial number in uppercase hex, as `openssl x509 -serial` and
    /// `openssl ca`'s index print it (`1001`, `3A0F9C...`).
    pub serial: String,
}

impl RevokedCertificate {
    /// Name `cert` (subject and serial); `None` when it does not parse.
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Option<RevokedCertificate> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        Some(RevokedCertificate {
            subject: parsed.subject().to_string(),
            serial: serial_hex(parsed.raw_serial()),
        })
    }
}

impl fmt::Display for RevokedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate revoked: {} (serial {})",
            self.subject, self.serial
        )
    }
}

impl std::error::Error for RevokedCertificate {}

/// The verifier's error for a revoked certificate: rustls has no variant
/// that names one, so it travels as `CertificateError::Other`, from which
/// [`revoked_in`] takes it again.
pub(crate) fn revoked_error(revoked: RevokedCertificate) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        std::sync::Arc::new(revoked),
    )))
}

/// The revoked certificate a verifier's error names, if it is one.
pub(crate) fn revoked_in(error: &rustls::Error) -> Option<&RevokedCertificate> {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<RevokedCertificate>()
        }
        _ => None,
    }
}

/// A serial number's magnitude (the DER integer without its sign byte) in
/// uppercase hex.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[start..];
    if digits.is_empty() {
        return "00".into();
    }
    digits.iter().map(|b| format!("{b:02X}")).collect()
}

/// One list and where it came from.
#[derive(Debug)]
struct Crl {
    path: PathBuf,
    list: CertRevocationList<'static>,
    /// Its nextUpdate in seconds since the epoch (`None`: not given or
    /// before 1970).
    next_update: Option<u64>,
}

/// Every list of the CRL files, in file order.
#[derive(Debug)]
pub(crate) struct Crls {
    lists: Vec<Crl>,
    /// SHA-256 over every list's DER: two reads with the same lists are
    /// one version, whatever the files' stamps say.
    digest: [u8; 32],
}

impl Crls {
    /// Read every file: PEM (any number of `X509 CRL` blocks, at least one)
    /// or one DER list.
    ///
    /// # Errors
    /// The first file that cannot be read, holds no list, or holds one
    /// rustls-webpki cannot use (a delta or indirect CRL, a v1 list, one
    /// without nextUpdate, a malformed entry).
    pub(crate) fn load(paths: &[PathBuf]) -> Result<Crls, FileError> {
        let mut lists = Vec::new();
        let mut all_der = Vec::new();
        for path in paths {
            let bytes =
                std::fs::read(path).map_err(|e| bad(path, format!("cannot read CRL file: {e}")))?;
            for der in ders(path, &bytes)? {
                let list = OwnedCertRevocationList::from_der(der.as_ref())
                    .map_err(|e| bad(path, format!("unusable CRL: {e:?}")))?;
                let next_update = x509_parser::parse_x509_crl(der.as_ref())
                    .ok()
                    .and_then(|(_, crl)| crl.next_update())
                    .and_then(|t| u64::try_from(t.timestamp()).ok());
                all_der.extend_from_slice(der.as_ref());
                lists.push(Crl {
                    path: path.clone(),
                    list: list.into(),
                    next_update,
                });
            }
        }
        Ok(Crls {
            lists,
            digest: sha256(&all_der),
        })
    }

    /// Whether the two hold the very same lists.
    pub(crate) fn same(&self, other: &Crls) -> bool {
        self.digest == other.digest
    }

    /// The lists, for rustls-webpki's revocation options.
    pub(crate) fn lists(&self) -> Vec<&CertRevocationList<'static>> {
        self.lists.iter().map(|c| &c.list).collect()
    }

    /// How many lists there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lists.len()
    }

    /// The first of `certs` that a list from its issuer names, if any.
    /// This names what rustls-webpki found revoked (which checked the
    /// list's signature); it checks no signature itself.
    pub(crate) fn revoked<'a>(
        &self,
        certs: impl IntoIterator<Item = &'a CertificateDer<'a>>,
    ) -> Option<RevokedCertificate> {
        certs.into_iter().find_map(|der| {
            let cert = webpki::EndEntityCert::try_from(der).ok()?;
            let listed = self.lists.iter().any(|crl| {
                crl.list.issuer() == cert.issuer()
                    && crl
                        .list
                        .find_serial(cert.serial())
                        .is_ok_and(|hit| hit.is_some())
            });
            listed.then(|| RevokedCertificate::of(der)).flatten()
        })
    }

    /// Each list past its nextUpdate at `now` (seconds since the epoch):
    /// its index, file and nextUpdate.
    pub(crate) fn expired(&self, now: u64) -> impl Iterator<Item = (usize, &Path, u64)> {
        self.lists.iter().enumerate().filter_map(move |(i, c)| {
            c.next_update
                .filter(|t| *t <= now)
                .map(|t| (i, c.path.as_path(), t))
        })
    }
}

/// The DER lists of one file's bytes: PEM blocks when it has any, else the
/// bytes themselves.
fn ders(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, FileError> {
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        if bytes.is_empty() {
            return Err(bad(path, "empty CRL file"));
        }
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let lists = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("bad PEM: {e}")))?;
    if lists.is_empty() {
        return Err(bad(path, "no X509 CRL block in the PEM file"));
    }
    Ok(lists)
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    use super::*;

    /// A CA that can sign leaves and lists.
    pub(crate) struct Ca {
        pub(crate) der: CertificateDer<'static>,
        pub(crate) issuer: Issuer<'static, KeyPair>,
    }

    pub(crate) fn ca(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = p.self_signed(&key).expect("self-sign").der().clone();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    /// A list from `ca` revoking `serials`, valid until `next_update`.
    pub(crate) fn crl(ca: &Ca, serials: &[u64], next_update: (i32, u8, u8)) -> String {
        crl_by(&ca.issuer, serials, next_update)
    }

    /// A list signed by `issuer` revoking `serials`, valid until `next_update`.
    pub(crate) fn crl_by(
        issuer: &Issuer<'_, KeyPair>,
        serials: &[u64],
        next_update: (i32, u8, u8),
    ) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(issuer)
            .expect("sign CRL")
            .pem()
            .expect("PEM")
    }

    fn leaf(cn: &str, serial: u64, by: &Ca) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![cn.to_owned()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        p.signed_by(&key, &by.issuer).expect("sign").der().clone()
    }

    #[test]
    fn pem_and_der_files_load_and_name_what_they_revoke() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (ca("CA A"), ca("CA B"));
        let pem = dir.path().join("a.pem");
        std::fs::write(&pem, crl(&a, &[0x1001, 0x1002], (2090, 1, 1))).expect("write");
        let der_file = dir.path().join("b.crl");
        let b_der = CertificateRevocationListDer::from_pem_slice(
            crl(&b, &[0x2001], (2090, 1, 1)).as_bytes(),
        )
        .expect("pem");
        std::fs::write(&der_file, b_der.as_ref()).expect("write");
        let crls = Crls::load(&[pem.clone(), der_file]).expect("loads");
        assert_eq!(crls.len(), 2);

        let revoked = leaf("edge.test", 0x1002, &a);
        let fine = leaf("other.test", 0x1003, &a);
        let named = crls.revoked([&fine, &revoked]).expect("one is revoked");
        assert_eq!(
            named,
            RevokedCertificate {
                subject: "CN=edge.test".into(),
                serial: "1002".into()
            }
        );
        assert_eq!(
            named.to_string(),
            "certificate revoked: CN=edge.test (serial 1002)"
        );
        // The same serial from another issuer is not revoked by A's list.
        assert!(crls.revoked([&leaf("x.test", 0x1002, &b)]).is_none());
        assert!(crls.revoked([&leaf("y.test", 0x2001, &b)]).is_some());

        let again = Crls::load(&[pem]).expect("loads");
        assert!(!again.same(&crls));
        assert!(again.same(&Crls::load(&[dir.path().join("a.pem")]).expect("loads")));
    }

    #[test]
    fn files_without_a_usable_list_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n",
        )
        .expect("write");
        let err = Crls::load(std::slice::from_ref(&garbage)).expect_err("bad PEM");
        assert_eq!(err.path, garbage);
        let cert_only = dir.path().join("cert.pem");
        std::fs::write(&cert_only, crate::der::to_pem([&ca("CA").der])).expect("write");
        let err = Crls::load(&[cert_only]).expect_err("no CRL block");
        assert!(err.reason.contains("no X509 CRL"), "{}", err.reason);
        let der = dir.path().join("junk.der");
        std::fs::write(&der, [0x30, 0x03, 1, 2, 3]).expect("write");
        let err = Crls::load(&[der]).expect_err("not a CRL");
        assert!(err.reason.contains("unusable CRL"), "{}", err.reason);
        let missing = dir.path().join("missing.crl");
        let err = Crls::load(std::slice::from_ref(&missing)).expect_err("missing");
        assert_eq!(err.path, missing);
    }

    #[test]
    fn a_list_past_its_next_update_is_reported_with_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = ca("CA A");
        let old = dir.path().join("old.pem");
        std::fs::write(&old, crl(&a, &[1], (2030, 1, 1))).expect("write");
        let crls = Crls::load(std::slice::from_ref(&old)).expect("loads");
        let t2030 = 1_893_456_000;
        assert_eq!(crls.expired(t2030 - 1).count(), 0);
        let expired: Vec<_> = crls.expired(t2030).collect();
        assert_eq!(expired, [(0, old.as_path(), t2030)]);
    }

    #[test]
    fn serials_print_as_openssl_does() {
        assert_eq!(serial_hex(&[0x10, 0x00]), "1000");
        assert_eq!(serial_hex(&[0x00, 0x9c, 0x01]), "9C01");
        assert_eq!(serial_hex(&[0x01]), "01");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
