//! Test PKI made at run time with rcgen: a CA, leaves signed by it, and the bad
//! leaves that verification-failure tests need, with rustls client configs
//! that trust them. Nothing here is ever written to the repository; PEM files
//! go to private temp dirs removed on drop ([`TempFile`]), the only thing
//! this file changes outside its own values.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// One day, the default margin around "now" for validity periods.
pub const DAY: Duration = Duration::from_secs(86_400);

/// `t` truncated to whole seconds, as X.509 stores it.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let d = t
        .duration_since(UNIX_EPOCH)
        .expect("test certificate times are after 1970");
    UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// Sets `params`' validity to [not_before, not_after] (truncated to seconds).
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let since_epoch = |t: SystemTime| {
        whole_seconds(t)
            .duration_since(UNIX_EPOCH)
            .expect("test certificate times are after 1970")
    };
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_before);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
}

/// Parameters of a CA named `name`, valid from a day ago for ten years.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs is valid");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    set_validity(&mut params, now - DAY, now + 3650 * DAY);
    params
}

/// A self-signed certificate authority generated at run time (ECDSA P-256).
pub struct TestCa {
    name: String,
    params: CertificateParams,
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// Intermediates from this CA up to the root, excluding the root (empty for a root).
    above: Vec<(CertificateDer<'static>, String)>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl TestCa {
    /// A new CA whose common name is `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> TestCa {
        let params = ca_params(name);
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            name: name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            above: Vec::new(),
            root_der: cert.der().clone(),
            root_pem: cert.pem(),
            params,
            key,
        }
    }

    /// An intermediate CA signed by this one; its leaves' chains carry it (and
    /// any intermediates above it), while trust stays anchored at the root.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let mut params = ca_params(name);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate intermediate key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign intermediate");
        let mut above = vec![(cert.der().clone(), cert.pem())];
        above.extend(self.above.iter().cloned());
        TestCa {
            name: name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            above,
            root_der: self.root_der.clone(),
            root_pem: self.root_pem.clone(),
            params,
            key,
        }
    }

    /// This CA's certificate (its name and key) signed by `other` as well: a
    /// cross-signed intermediate, as a public CA moving to a new root
    /// presents it. A server that sends both versions verifies under either
    /// root.
    pub fn cross_signed_by(&self, other: &TestCa) -> CertificateDer<'static> {
        let mut params = ca_params(&self.name);
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&other.params, &other.key);
        params
            .signed_by(&self.key, &issuer)
            .expect("cross-sign")
            .der()
            .clone()
    }

    /// A certificate revocation list signed by this CA (v2, with a CRL
    /// number and the CA's key identifier; valid from a day ago until
    /// `next_update`) revoking `revoked`, as PEM.
    pub fn crl_pem(&self, revoked: &[&Issued], next_update: SystemTime) -> String {
        let since_epoch = |t: SystemTime| {
            whole_seconds(t)
                .duration_since(UNIX_EPOCH)
                .expect("test times are after 1970")
        };
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = SystemTime::now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: epoch + since_epoch(now - DAY),
            next_update: epoch + since_epoch(next_update),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&leaf.serial_der()),
                    revocation_time: epoch + since_epoch(now - DAY),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params
            .signed_by(&issuer)
            .expect("sign the CRL")
            .pem()
            .expect("CRL as PEM")
    }

    /// The root (trust anchor) certificate as DER: this CA's own for a root.
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    /// The root (trust anchor) certificate as PEM.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This CA's own certificate as DER (an intermediate's, for an intermediate).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// This CA's own certificate as PEM text.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A root store holding only this CA's root.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.root_der())
            .expect("a freshly generated CA parses");
        roots
    }

    /// A rustls client config (ring provider) trusting only this CA's root, with rustls's
    /// default in-memory resumption.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(self.client_config_builder())
    }

    /// Like [`TestCa::client_config`] but never resuming: every handshake is full.
    pub fn client_config_no_resumption(&self) -> Arc<rustls::ClientConfig> {
        let mut config = self.client_config_builder();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// A client config trusting only this CA that presents `client` (mTLS).
    pub fn client_config_with_cert(&self, client: &Issued) -> Arc<rustls::ClientConfig> {
        Arc::new(
            self.trusting_builder()
                .with_client_auth_cert(client.chain_der(), client.key_der())
                .expect("client certificate and key match"),
        )
    }

    /// A mutable client config trusting only this CA, for tests that tweak it.
    pub fn client_config_builder(&self) -> rustls::ClientConfig {
        self.trusting_builder().with_no_client_auth()
    }

    /// A client config builder on ring's defaults trusting only this CA's root.
    fn trusting_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        rustls::ClientConfig::builder_with_provider(Arc::new(rotary::crypto_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(self.root_store())
    }

    /// Writes the root CA PEM to a unique temp file, removed when the handle drops.
    pub fn write_pem_file(&self) -> TempFile {
        TempFile::new("ca.pem", self.root_pem.as_bytes())
    }

    /// A valid server leaf for `names` (DNS names or IP addresses), with the
    /// server-auth EKU, valid from a day ago for 30 days.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.leaf(names).build()
    }

    /// A leaf builder for `names`, starting from the defaults of [`TestCa::issue`].
    pub fn leaf(&self, names: &[&str]) -> LeafBuilder<'_> {
        let now = SystemTime::now();
        LeafBuilder {
            ca: Some(self),
            names: names.iter().map(|n| n.to_string()).collect(),
            common_name: names.first().map(|n| n.to_string()),
            not_before: now - DAY,
            not_after: now + 30 * DAY,
            server_auth: true,
            client_auth: false,
        }
    }

    /// A client certificate (client-auth EKU only) for mTLS tests.
    pub fn issue_client(&self, common_name: &str) -> Issued {
        self.leaf(&[])
            .common_name(common_name)
            .without_server_auth()
            .client_auth()
            .build()
    }
}

/// Options for one leaf certificate; [`LeafBuilder::build`] signs it.
pub struct LeafBuilder<'a> {
    ca: Option<&'a TestCa>,
    names: Vec<String>,
    common_name: Option<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    server_auth: bool,
    client_auth: bool,
}

impl LeafBuilder<'_> {
    /// Validity period [not_before, not_after] (whole seconds).
    pub fn valid_between(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired: valid from 30 days ago until yesterday.
    pub fn expired(self) -> Self {
        let now = SystemTime::now();
        self.valid_between(now - 30 * DAY, now - DAY)
    }

    /// Not yet valid: valid from tomorrow for 30 days.
    pub fn not_yet_valid(self) -> Self {
        let now = SystemTime::now();
        self.valid_between(now + DAY, now + 31 * DAY)
    }

    /// Valid from a day ago until `now + d` (for notAfter-driven retirement tests).
    pub fn expires_in(self, d: Duration) -> Self {
        let now = SystemTime::now();
        self.valid_between(now - DAY, now + d)
    }

    /// Names only `wrong-host.invalid`, so a client connecting to localhost fails.
    pub fn wrong_host(mut self) -> Self {
        self.names = vec!["wrong-host.invalid".to_owned()];
        self.common_name = Some("wrong-host.invalid".to_owned());
        self
    }

    /// Self-signed leaf (signed by its own key, not by the CA).
    pub fn self_signed(mut self) -> Self {
        self.ca = None;
        self
    }

    /// Drops the server-auth EKU; the certificate keeps an EKU extension (client
    /// auth) so that verifiers reject it for a server.
    pub fn without_server_auth(mut self) -> Self {
        self.server_auth = false;
        self.client_auth = true;
        self
    }

    /// Adds the client-auth EKU.
    pub fn client_auth(mut self) -> Self {
        self.client_auth = true;
        self
    }

    /// Sets the subject common name (default: the first name).
    pub fn common_name(mut self, cn: &str) -> Self {
        self.common_name = Some(cn.to_owned());
        self
    }

    /// Generates a key and signs the leaf.
    pub fn build(self) -> Issued {
        let mut params = CertificateParams::new(self.names.clone()).expect("valid SAN names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &self.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages.clear();
        if self.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = self.ca.is_some();
        set_validity(&mut params, self.not_before, self.not_after);
        let key = KeyPair::generate().expect("generate leaf key");
        let (cert, ca_pem, ca_der, above) = match self.ca {
            Some(ca) => {
                let issuer = Issuer::from_params(&ca.params, &ca.key);
                let cert = params.signed_by(&key, &issuer).expect("sign leaf");
                (
                    cert,
                    ca.root_pem.clone(),
                    ca.root_der.clone(),
                    ca.above.clone(),
                )
            }
            None => {
                let cert = params.self_signed(&key).expect("self-sign leaf");
                let (pem, der) = (cert.pem(), cert.der().clone());
                (cert, pem, der, Vec::new())
            }
        };
        Issued {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            above,
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            ca_der,
            ca_pem,
            names: self.names,
            not_after: whole_seconds(self.not_after),
        }
    }
}

/// An issued leaf: certificate, key, intermediates, and the root that anchors it.
#[derive(Clone)]
pub struct Issued {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    above: Vec<(CertificateDer<'static>, String)>,
    key_der: Vec<u8>,
    key_pem: String,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    names: Vec<String>,
    not_after: SystemTime,
}

impl Issued {
    /// The leaf's serial number as its DER integer's bytes.
    pub fn serial_der(&self) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.cert_der.as_ref())
            .expect("a leaf made here parses");
        cert.raw_serial().to_vec()
    }

    /// The leaf's serial in uppercase hex without a sign byte, as
    /// `openssl x509 -serial` prints it (and rotary names a revoked one).
    pub fn serial_hex(&self) -> String {
        let der = self.serial_der();
        let start = der.iter().position(|b| *b != 0).unwrap_or(der.len());
        match &der[start..] {
            [] => "00".into(),
            digits => digits.iter().map(|b| format!("{b:02X}")).collect(),
        }
    }

    /// The leaf certificate as DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The chain a server presents: the leaf, then any intermediates (never the root).
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.cert_der.clone()];
        chain.extend(self.above.iter().map(|(der, _)| der.clone()));
        chain
    }

    /// The leaf alone as PEM text.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The chain as PEM text (leaf first).
    pub fn chain_pem(&self) -> String {
        let mut pem = self.cert_pem.clone();
        for (_, p) in &self.above {
            pem.push_str(p);
        }
        pem
    }

    /// The private key (PKCS#8) as rustls DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The private key as PKCS#8 PEM text.
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// Install this chain and key in `root` as a Kubernetes secret volume
    /// does: both files in a new `..{version}` directory, the `..data`
    /// symlink swapped to it by a rename, and `tls.crt`/`tls.key` links
    /// through `..data` (made the first time).
    pub fn install_as_secret(&self, root: &Path, version: &str) {
        let data = root.join(format!("..{version}"));
        std::fs::create_dir(&data).expect("data dir");
        std::fs::write(data.join("tls.crt"), self.chain_pem()).expect("write");
        std::fs::write(data.join("tls.key"), self.key_pem()).expect("write");
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).expect("symlink");
        std::fs::rename(&tmp, root.join("..data")).expect("swap ..data");
        for name in ["tls.crt", "tls.key"] {
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("symlink");
            }
        }
    }

    /// The trust anchor's certificate as DER: the root (the leaf itself when self-signed).
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// The trust anchor's certificate as PEM: the root (the leaf itself when self-signed).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// SHA-256 of the leaf's DER.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// The SAN names the leaf was issued for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The leaf's notAfter, as encoded (whole seconds).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Writes the chain PEM to a temp file (for client-certificate tests).
    pub fn write_chain_pem_file(&self) -> TempFile {
        TempFile::new("chain.pem", self.chain_pem().as_bytes())
    }

    /// Writes the key PEM to a temp file (for client-certificate tests).
    pub fn write_key_pem_file(&self) -> TempFile {
        TempFile::new("key.pem", self.key_pem.as_bytes())
    }
}

/// SHA-256 of `data` (through rustls's ring provider, so no extra dependency).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    let out = suite.common.hash_provider.hash(data);
    out.as_ref()
        .try_into()
        .expect("TLS13_AES_128_GCM_SHA256 hashes with SHA-256")
}

/// Lowercase hex without separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file alone in a private temp directory (random name, mode 0700), which
/// is removed with everything in it on drop, so that nothing written next to
/// the file (a replacement half written when a test panics) outlives it.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    // Declared after `path`, dropped last: removes the file and its siblings.
    _dir: tempfile::TempDir,
}

impl TempFile {
    /// Creates `<tmp>/rotary-test-<random>/<label>` holding `contents`.
    pub fn new(label: &str, contents: &[u8]) -> TempFile {
        let dir = tempfile::Builder::new()
            .prefix("rotary-test-")
            .tempdir()
            .expect("create a private temp dir");
        let path = dir.path().join(label);
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path, _dir: dir }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the contents atomically (write a sibling, then rename over).
    pub fn replace(&self, contents: &[u8]) {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".new");
        std::fs::write(&tmp, contents).expect("write replacement temp file");
        std::fs::rename(&tmp, &self.path).expect("rename replacement over temp file");
    }

    /// Overwrites the contents in place (not atomic: a reader may see a partial file).
    pub fn overwrite(&self, contents: &[u8]) {
        std::fs::write(&self.path, contents).expect("overwrite temp file");
    }
}
