//! The certification path a verification built — the leaf, the
//! intermediates it used and the trust anchor that ended it — and the CA
//! bundle a job should trust, made from that path.
//!
//! A server's presented chain is the wrong thing to hand a job: servers send
//! the leaf alone (nginx with a private CA) or leaf + intermediate (most
//! public sites), never a root, so a file of the presented chain pins one
//! leaf and fails strict verifiers (OpenSSL: "unable to get local issuer
//! certificate") and every other edge of the same service. The path's
//! issuers, ending at the anchor's own certificate, verify any leaf issued
//! under that anchor.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::der::{colon_hex, sha256, to_pem};

/// The path rotary's verifier built from a server's chain: the leaf, the
/// intermediates it used (the leaf's issuer first; taken from the server's
/// chain or from a CA file that carries intermediates beside its root;
/// certificates the server sent but the path did not need are left out) and
/// the trust anchor.
///
/// Made by the verification itself (rustls-webpki's path building), never by
/// a second search; see [`PeerChain::verified_path`](crate::PeerChain::verified_path).
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedPath {
    leaf: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    anchor: Anchor,
}

/// The trust anchor that ended a [`VerifiedPath`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Anchor {
    /// The anchor came from a certificate (a CA file of
    /// [`Trust::pem_files`](crate::Trust::pem_files)); this is that certificate.
    Certificate(CertificateDer<'static>),
    /// The anchor is a compiled-in root ([`Trust::webpki_roots`](crate::Trust::webpki_roots)):
    /// a name and a key, without a certificate to hand on.
    WithoutCertificate {
        /// The anchor's subject, a DER-encoded X.501 `Name`.
        subject: Vec<u8>,
    },
}

impl Anchor {
    /// The anchor's certificate, when it came from one.
    pub fn certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Anchor::Certificate(cert) => Some(cert),
            Anchor::WithoutCertificate { .. } => None,
        }
    }

    /// The anchor's subject as text (`CN=..., O=...`).
    pub fn subject(&self) -> String {
        match self {
            Anchor::Certificate(cert) => names(cert).0,
            Anchor::WithoutCertificate { subject } => name_text(subject),
        }
    }
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anchor::Certificate(cert) => f
                .debug_tuple("Certificate")
                .field(&colon_hex(&sha256(cert.as_ref())))
                .finish(),
            Anchor::WithoutCertificate { .. } => f
                .debug_struct("WithoutCertificate")
                .field("subject", &self.subject())
                .finish(),
        }
    }
}

/// Why [`VerifiedPath::ca_bundle`] (or
/// [`PeerChain::ca_bundle`](crate::PeerChain::ca_bundle)) has no bundle to give.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoCaBundle {
    /// The path ends at a compiled-in root, which has no certificate to
    /// write. A job should then trust its system's store (which holds the
    /// public roots): a file of the intermediates alone fails strict
    /// verifiers, and one of the leaf fails on every other server.
    AnchorWithoutCertificate {
        /// The root's subject, as text.
        anchor: String,
    },
    /// rotary built no path for this chain: verification was skipped, or
    /// the chain of a resumed session no longer verifies.
    NotVerified,
}

impl fmt::Display for NoCaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoCaBundle::AnchorWithoutCertificate { anchor } => write!(
                f,
                "no CA bundle: the chain ends at the compiled-in root {anchor:?}, \
                 which has no certificate to write; trust the system's store instead"
            ),
            NoCaBundle::NotVerified => {
                write!(f, "no CA bundle: rotary did not verify this chain")
            }
        }
    }
}

impl std::error::Error for NoCaBundle {}

/// What a certificate is in a [`VerifiedPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathRole {
    /// The server's own certificate.
    Leaf,
    /// A CA between the leaf and the anchor.
    Intermediate,
    /// The trust anchor.
    Anchor,
}

/// One certificate of a [`VerifiedPath`], described for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathEntry {
    /// Leaf, intermediate or anchor.
    pub role: PathRole,
    /// The subject (`CN=..., O=...`).
    pub subject: String,
    /// The issuer's name; `None` for an anchor without a certificate.
    pub issuer: Option<String>,
    /// SHA-256 of the certificate's DER; `None` for an anchor without a
    /// certificate.
    pub sha256: Option<[u8; 32]>,
}

impl fmt::Display for PathEntry {
    /// `anchor CN=Root, issued by CN=Root, SHA-256 AB:CD:...`; an anchor
    /// without a certificate says so instead of an issuer and a digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            PathRole::Leaf => "leaf",
            PathRole::Intermediate => "intermediate",
            PathRole::Anchor => "anchor",
        };
        write!(f, "{role} {}", self.subject)?;
        match (&self.issuer, &self.sha256) {
            (Some(issuer), Some(digest)) => {
                write!(f, ", issued by {issuer}, SHA-256 {}", colon_hex(digest))
            }
            _ => write!(f, " (compiled-in root, no certificate)"),
        }
    }
}

impl VerifiedPath {
    pub(crate) fn new(
        leaf: CertificateDer<'static>,
        intermediates: Vec<CertificateDer<'static>>,
        anchor: Anchor,
    ) -> VerifiedPath {
        VerifiedPath {
            leaf,
            intermediates,
            anchor,
        }
    }

    /// The server's certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The intermediates the path went through, the leaf's issuer first.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The trust anchor that ended the path.
    pub fn anchor(&self) -> &Anchor {
        &self.anchor
    }

    /// The leaf, then the intermediates: the certificates whose validity
    /// the verification checked.
    pub(crate) fn checked(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        std::iter::once(&self.leaf).chain(&self.intermediates)
    }

    /// The CA bundle for a job, as PEM: the intermediates (the leaf's issuer
    /// first), then the anchor's certificate; never the leaf. It verifies any
    /// leaf issued under this anchor through these intermediates, under
    /// verifiers that insist on a self-signed root in the file (OpenSSL
    /// without `-partial_chain`, GnuTLS) as well as rustls.
    ///
    /// # Errors
    /// [`NoCaBundle::AnchorWithoutCertificate`] when the anchor is a
    /// compiled-in root: writing the intermediates alone would fail those
    /// same verifiers, so no half bundle is returned.
    pub fn ca_bundle(&self) -> Result<String, NoCaBundle> {
        match &self.anchor {
            Anchor::Certificate(root) => Ok(to_pem(self.intermediates.iter().chain([root]))),
            Anchor::WithoutCertificate { .. } => Err(NoCaBundle::AnchorWithoutCertificate {
                anchor: self.anchor.subject(),
            }),
        }
    }

    /// Each certificate of the path described (subject, issuer, SHA-256),
    /// leaf first and the anchor last.
    pub fn entries(&self) -> Vec<PathEntry> {
        let described = |role, cert: &CertificateDer<'_>| {
            let (subject, issuer) = names(cert);
            PathEntry {
                role,
                subject,
                issuer: Some(issuer),
                sha256: Some(sha256(cert.as_ref())),
            }
        };
        let mut out = vec![described(PathRole::Leaf, &self.leaf)];
        for cert in &self.intermediates {
            out.push(described(PathRole::Intermediate, cert));
        }
        out.push(match &self.anchor {
            Anchor::Certificate(cert) => described(PathRole::Anchor, cert),
            Anchor::WithoutCertificate { .. } => PathEntry {
                role: PathRole::Anchor,
                subject: self.anchor.subject(),
                issuer: None,
                sha256: None,
            },
        });
        out
    }
}

impl fmt::Debug for VerifiedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedPath")
            .field("leaf", &colon_hex(&sha256(self.leaf.as_ref())))
            .field("intermediates", &self.intermediates.len())
            .field("anchor", &self.anchor)
            .finish()
    }
}

/// Shown for a name that does not parse (the verifier accepted the
/// certificate, so this is x509-parser being stricter, not a bad path).
const UNREADABLE: &str = "(unreadable name)";

/// A certificate's subject and issuer as text.
fn names(cert: &CertificateDer<'_>) -> (String, String) {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => (c.subject().to_string(), c.issuer().to_string()),
        Err(_) => (UNREADABLE.to_owned(), UNREADABLE.to_owned()),
    }
}

/// A DER-encoded `Name` as text.
fn name_text(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    match x509_parser::x509::X509Name::from_der(der) {
        Ok((_, name)) => name.to_string(),
        Err(_) => UNREADABLE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(
        name: &str,
    ) -> (
        rcgen::CertificateParams,
        rcgen::KeyPair,
        CertificateDer<'static>,
    ) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert").der().clone();
        (params, key, cert)
    }

    #[test]
    fn the_bundle_is_the_intermediates_then_the_anchor_without_the_leaf() {
        let (_, _, root) = ca("Root");
        let (_, _, mid) = ca("Mid");
        let leaf = CertificateDer::from(vec![0x30, 0x00]);
        let path = VerifiedPath::new(
            leaf.clone(),
            vec![mid.clone()],
            Anchor::Certificate(root.clone()),
        );
        let pem = path.ca_bundle().expect("anchor with a certificate");
        let parsed: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()
            .expect("our own pem parses");
        assert_eq!(parsed, [mid, root.clone()]);
        let entries = path.entries();
        let roles: Vec<_> = entries.iter().map(|e| e.role).collect();
        assert_eq!(
            roles,
            [PathRole::Leaf, PathRole::Intermediate, PathRole::Anchor]
        );
        assert_eq!(entries[0].subject, UNREADABLE, "a leaf that does not parse");
        assert_eq!(entries[1].subject, "CN=Mid");
        assert_eq!(entries[2].issuer.as_deref(), Some("CN=Root"));
        assert_eq!(entries[2].sha256, Some(sha256(root.as_ref())));
        assert!(entries[2]
            .to_string()
            .starts_with("anchor CN=Root, issued by CN=Root, SHA-256 "));
    }

    #[test]
    fn an_anchor_without_a_certificate_gives_no_bundle_and_says_so() {
        let (_, _, cert) = ca("Compiled-in Root");
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).expect("parses");
        let anchor = Anchor::WithoutCertificate {
            subject: parsed.subject().as_raw().to_vec(),
        };
        assert_eq!(anchor.subject(), "CN=Compiled-in Root");
        let path = VerifiedPath::new(cert, Vec::new(), anchor);
        let err = path.ca_bundle().expect_err("nothing to write");
        assert_eq!(
            err,
            NoCaBundle::AnchorWithoutCertificate {
                anchor: "CN=Compiled-in Root".into()
            }
        );
        assert!(err.to_string().contains("system's store"), "{err}");
        let last = path.entries().pop().expect("an anchor entry");
        assert_eq!((&last.issuer, last.sha256), (&None, None));
        assert!(last.to_string().contains("no certificate"));
    }
}
