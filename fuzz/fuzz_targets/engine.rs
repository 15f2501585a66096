//! The whole engine (pool, timers, TLS, codec) against a scripted peer on
//! in-memory pipes; see `rotary::fuzzing::run_script` for the script format
//! and the invariants checked.
#![no_main]

use std::sync::{Arc, OnceLock};

struct Setup {
    server: Arc<rustls::ServerConfig>,
    trust: rotary::Trust,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
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
        let path = std::env::temp_dir().join(format!("rotary-fuzz-ca-{}.pem", std::process::id()));
        std::fs::write(&path, ca.pem()).expect("write CA file");
        Setup {
            server: Arc::new(server),
            trust: rotary::Trust::pem_file(path),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = setup();
    rotary::fuzzing::run_script(data, Some(s.server.clone()), s.trust.clone());
});
