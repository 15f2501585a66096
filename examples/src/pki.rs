//! Certificate authorities and server certificates generated at run time
//! (rcgen, ECDSA P-256): roots, intermediates under them, and leaves whose
//! chains carry what real servers send (the leaf and its intermediates,
//! never the root). Keys stay in memory; only certificates are written.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// A certificate authority: a self-signed root, or an intermediate signed
/// by one.
pub struct Ca {
    name: String,
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
    pem: String,
    /// This CA's certificate and those above it up to the root, excluding
    /// the root: what a server sends after its leaf. Empty for a root.
    above: Vec<CertificateDer<'static>>,
}

/// A server certificate chain (the leaf, then its intermediates) and the
/// leaf's key.
#[derive(Clone)]
pub struct ServerCert {
    /// The chain the server presents, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's serial number (its DER integer's bytes).
    serial: Vec<u8>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Ca {
    /// A new root CA with common name `name`.
    ///
    /// # Errors
    /// rcgen's message when generation fails.
    pub fn new(name: &str) -> Result<Ca, String> {
        let params = ca_params(name)?;
        let key = KeyPair::generate().map_err(|e| err("ca key", e))?;
        let cert = params.self_signed(&key).map_err(|e| err("ca cert", e))?;
        Ok(Ca::made(name, params, key, &cert, Vec::new()))
    }

    /// An intermediate CA with common name `name`, signed by this one. Its
    /// leaves' chains carry it (and any intermediates above it).
    ///
    /// # Errors
    /// rcgen's message when generation fails.
    pub fn intermediate(&self, name: &str) -> Result<Ca, String> {
        let mut params = ca_params(name)?;
        params.use_authority_key_identifier_extension = true;
        let (key, cert) = self.sign(&params, "intermediate")?;
        let mut above = vec![cert.der().clone()];
        above.extend(self.above.iter().cloned());
        Ok(Ca::made(name, params, key, &cert, above))
    }

    fn made(
        name: &str,
        params: CertificateParams,
        key: KeyPair,
        cert: &rcgen::Certificate,
        above: Vec<CertificateDer<'static>>,
    ) -> Ca {
        Ca {
            name: name.to_owned(),
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
            above,
        }
    }

    /// A new key, and `params` signed by this CA for it.
    fn sign(
        &self,
        params: &CertificateParams,
        what: &str,
    ) -> Result<(KeyPair, rcgen::Certificate), String> {
        let key = KeyPair::generate().map_err(|e| err(&format!("{what} key"), e))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| err(&format!("{what} cert"), e))?;
        Ok((key, cert))
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate as DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP literals), signed
    /// by this CA. The chain is the leaf, then this CA and the CAs above it
    /// when it is an intermediate, never the root: what public edges send.
    ///
    /// # Errors
    /// rcgen's message when generation fails.
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert, String> {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|e| err("leaf params", e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // Chosen here, so a revocation list can name it.
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let (key, cert) = self.sign(&params, "leaf")?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.above.iter().cloned());
        Ok(ServerCert {
            chain,
            serial,
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// A client certificate for mutual TLS and its key, both PEM.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    serial: Vec<u8>,
}

impl ClientCert {
    /// The serial in uppercase hex, as a server logs it.
    pub fn serial_hex(&self) -> String {
        hex_serial(&self.serial)
    }
}

fn hex_serial(serial: &[u8]) -> String {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(0);
    serial[start..].iter().map(|b| format!("{b:02X}")).collect()
}

impl Ca {
    /// A client certificate (client-auth only) for common name `cn`, signed
    /// by this CA.
    ///
    /// # Errors
    /// rcgen's message when generation fails.
    pub fn issue_client(&self, cn: &str) -> Result<ClientCert, String> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("client params", e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let (key, cert) = self.sign(&params, "client")?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// This CA's certificate (its name and key) signed by `other` as well:
    /// a cross-signed intermediate, as a CA moving between roots presents
    /// it, so a chain that sends both verifies under either root.
    ///
    /// # Errors
    /// rcgen's message when signing fails.
    pub fn cross_signed_by(&self, other: &Ca) -> Result<CertificateDer<'static>, String> {
        let issuer = Issuer::from_params(&other.params, &other.key);
        self.params
            .signed_by(&self.key, &issuer)
            .map(|c| c.der().clone())
            .map_err(|e| err("cross-signed cert", e))
    }

    /// A certificate revocation list signed by this CA (v2, with a CRL
    /// number and this CA's key identifier, as rustls-webpki requires),
    /// revoking the leaves of `revoked`, valid for `days` from now; PEM.
    ///
    /// # Errors
    /// rcgen's message when signing fails.
    pub fn crl_pem(&self, revoked: &[&ServerCert], days: u32) -> Result<String, String> {
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| err("clock", e))?;
        let mut entries = Vec::new();
        for cert in revoked {
            entries.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&cert.serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + std::time::Duration::from_secs(u64::from(days) * 86_400),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params
            .signed_by(&issuer)
            .and_then(|crl| crl.pem())
            .map_err(|e| err("crl", e))
    }
}

/// A fresh serial number: 16 random bytes (from the standard library's
/// per-process random hash keys), the top bit clear so it stays positive.
fn random_serial() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::with_capacity(16);
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        bytes.extend_from_slice(&h.finish().to_be_bytes());
    }
    bytes[0] &= 0x7f;
    bytes
}

fn ca_params(name: &str) -> Result<CertificateParams, String> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| err("ca params", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl ServerCert {
    /// The same certificate, presented without its intermediates (as nginx
    /// does when given the leaf alone).
    pub fn leaf_only(&self) -> ServerCert {
        ServerCert {
            chain: self.chain.iter().take(1).cloned().collect(),
            serial: self.serial.clone(),
            key: self.key.clone(),
        }
    }

    /// The leaf's serial in uppercase hex, as `openssl x509 -serial`
    /// prints it and rotary names a revoked certificate.
    pub fn serial_hex(&self) -> String {
        hex_serial(&self.serial)
    }

    /// The same certificate presented with `extra` after its chain (a
    /// cross-signed version of its intermediate, say).
    pub fn with_extra(&self, extra: CertificateDer<'static>) -> ServerCert {
        let mut chain = self.chain.clone();
        chain.push(extra);
        ServerCert {
            chain,
            serial: self.serial.clone(),
            key: self.key.clone(),
        }
    }

    /// The leaf's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.as_ref().clone_key())
    }

    /// Chain and key ready for a rustls server.
    ///
    /// # Errors
    /// rustls's message when the key type is unsupported.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&self.key())
            .map_err(|e| err("server key", e))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signer)))
    }
}
