//! Certificate authorities and server certificates generated at run time
//! (rcgen, ECDSA P-256). Keys stay in memory; only certificates are written.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// A self-signed certificate authority.
pub struct Ca {
    name: String,
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
    pem: String,
}

/// A server certificate chain (leaf, then its CA) and the leaf's key.
#[derive(Clone)]
pub struct ServerCert {
    /// The chain the server presents, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
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
        let key = KeyPair::generate().map_err(|e| err("ca key", e))?;
        let cert = params.self_signed(&key).map_err(|e| err("ca cert", e))?;
        Ok(Ca {
            name: name.to_owned(),
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
        })
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
    /// by this CA; the chain carries the CA certificate after the leaf, as
    /// public edges send their intermediates.
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
        let key = KeyPair::generate().map_err(|e| err("leaf key", e))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| err("leaf cert", e))?;
        Ok(ServerCert {
            chain: vec![cert.der().clone(), self.der.clone()],
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

impl ServerCert {
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
