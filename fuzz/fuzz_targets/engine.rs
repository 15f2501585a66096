//! The whole engine (pool, timers, TLS, codec) against a scripted peer on
//! in-memory pipes; see `rotary::fuzzing::run_script_with` for the script
//! format and the invariants checked. The engine's credential files (a CA
//! file, a CRL file, a client identity) start each run as the same first
//! versions; the script's credential ops install the versions `writes`
//! lists (the same list as `engine/tests/fuzz_corpus.rs`, so the corpus
//! replays alike).
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rotary::fuzzing::CredentialWrite;

struct Setup {
    server: Arc<rustls::ServerConfig>,
    dir: PathBuf,
    /// (file name, first version) of each credential file.
    first: Vec<(&'static str, String)>,
    writes: Vec<CredentialWrite>,
    trust: rotary::Trust,
}

/// A self-signed CA (it signs leaves and lists).
fn ca(cn: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let pem = params.self_signed(&key).expect("ca").pem();
    (params, key, pem)
}

/// A CRL of `issuer` listing `serials`, as PEM.
fn crl(issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>, serials: &[u64]) -> String {
    let since = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| Duration::from_secs(d.as_secs()))
            .unwrap_or_default()
    };
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    rcgen::CertificateRevocationListParams {
        this_update: epoch + since(now - day),
        next_update: epoch + since(now + 365 * day),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: epoch + since(now - day),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .expect("crl")
    .pem()
    .expect("crl pem")
}

/// A self-signed client certificate and its key, as PEM.
fn identity(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    (
        params.self_signed(&key).expect("cert").pem(),
        key.serialize_pem(),
    )
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (ca_params, ca_key, ca_pem) = ca("rotary fuzz CA");
        let (_, _, other_root) = ca("rotary fuzz other root");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(0x10u64));
        params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        let provider = Arc::new(rotary::crypto_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let dir = std::env::temp_dir().join(format!("rotary-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (crl_empty, crl_revoking) = (crl(&issuer, &[]), crl(&issuer, &[0x10]));
        let (ids, second) = (identity("runner-1"), identity("runner-2"));
        let first = vec![
            ("ca.pem", ca_pem.clone()),
            ("ca.crl", crl_empty.clone()),
            ("tls.crt", ids.0.clone()),
            ("tls.key", ids.1.clone()),
        ];
        let w = |name: &str, text: &str| CredentialWrite {
            path: dir.join(name),
            contents: text.as_bytes().to_vec(),
        };
        let writes = vec![
            w("ca.pem", &format!("{ca_pem}{other_root}")),
            w("ca.pem", &other_root),
            w("ca.pem", &ca_pem),
            w("ca.crl", &crl_revoking),
            w("ca.crl", &crl_empty),
            w(
                "ca.crl",
                "-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n",
            ),
            w("tls.crt", &second.0),
            w("tls.key", &second.1),
            w("tls.crt", &ids.0),
            w("tls.key", &ids.1),
        ];
        for (name, text) in &first {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let mut trust = rotary::Trust::pem_file(dir.join("ca.pem"));
        trust.crl_files = vec![dir.join("ca.crl")];
        trust.client_identity = Some(rotary::ClientIdentity {
            cert_chain: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        });
        trust.check_interval = Duration::from_millis(5);
        Setup {
            server: Arc::new(server),
            dir,
            first,
            writes,
            trust,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = setup();
    // Every run starts from the first versions, so an input replays alike.
    for (name, text) in &s.first {
        let _ = std::fs::write(s.dir.join(name), text);
    }
    rotary::fuzzing::run_script_with(data, Some(s.server.clone()), s.trust.clone(), &s.writes);
});
