//! The crypto provider every TLS session of the engine runs on, chosen at
//! build time by the `ring` (default) or `aws-lc-rs` cargo feature, and
//! SHA-256 from the same library.
//!
//! With `aws-lc-rs` the hybrid post-quantum key exchange X25519MLKEM768 is
//! offered first (the order rustls, Chrome, Firefox and Go 1.24 use), unless
//! [`Trust::post_quantum`](crate::Trust#structfield.post_quantum) is off; a
//! server that does not know it picks X25519 from the same hello, so it
//! costs no round trip. The classical groups follow, fastest first: X25519,
//! P-256, P-384. *ring* has no ML-KEM. With `fips`, rustls's FIPS provider
//! is used as it comes.
//!
//! Either way AES-128-GCM is offered first: TLS 1.3's key schedule and
//! transcript then run on SHA-256, which x86-64 and ARMv8 compute in
//! hardware (SHA-384 runs in software: 7 % of a handshake's CPU in the
//! profile), and AES-128 takes 10 rounds per block against AES-256's 14.
//! 128-bit keys are the suite TLS 1.3 requires every peer to implement;
//! servers that enforce their own order still choose.

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, NamedGroup};

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("rotary needs a crypto provider: enable the `ring` or the `aws-lc-rs` feature");

/// The name of the provider in use, for logs and reports: `"ring"`,
/// `"aws-lc-rs"` or `"aws-lc-rs (FIPS)"`.
pub const CRYPTO_PROVIDER: &str = if cfg!(feature = "fips") {
    "aws-lc-rs (FIPS)"
} else if cfg!(feature = "aws-lc-rs") {
    "aws-lc-rs"
} else {
    "ring"
};

/// The crypto provider rotary's TLS runs on, as rotary configures it: the
/// provider of the enabled feature (`aws-lc-rs` when both are on), with
/// AES-128-GCM first and, with `aws-lc-rs`, X25519MLKEM768 first. Hosts
/// that build TLS servers or clients of their own (a test peer, a `git`
/// stand-in) can use it to match the engine.
pub fn crypto_provider() -> CryptoProvider {
    provider(true)
}

/// The engine's provider; `post_quantum` false leaves the post-quantum
/// key exchange groups out.
pub(crate) fn provider(post_quantum: bool) -> CryptoProvider {
    let mut provider = base();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    if !post_quantum {
        // Hybrid and pure ML-KEM groups alike (all carry "MLKEM" in their name).
        provider
            .kx_groups
            .retain(|g| !format!("{:?}", g.name()).contains("MLKEM"));
    }
    if !cfg!(feature = "fips") {
        // The hybrid first, then the fastest classical group: aws-lc-rs's
        // own order puts P-384 before X25519.
        provider.kx_groups.sort_by_key(|g| match g.name() {
            NamedGroup::X25519MLKEM768 => 0,
            NamedGroup::X25519 => 1,
            NamedGroup::secp256r1 => 2,
            NamedGroup::secp384r1 => 3,
            _ => 4,
        });
    }
    provider
}

/// rustls's FIPS provider.
#[cfg(feature = "fips")]
fn base() -> CryptoProvider {
    rustls::crypto::default_fips_provider()
}

/// aws-lc-rs's provider: its default groups already put X25519MLKEM768 first.
#[cfg(all(feature = "aws-lc-rs", not(feature = "fips")))]
fn base() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// *ring*'s provider, put together from rustls's public parts: rustls
/// 0.23.48 deprecated its ready-made one because *ring* has no
/// post-quantum key exchange, which this build does without.
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn base() -> CryptoProvider {
    use rustls::crypto::ring as r;
    CryptoProvider {
        cipher_suites: r::ALL_CIPHER_SUITES.to_vec(),
        kx_groups: vec![
            r::kx_group::X25519,
            r::kx_group::SECP256R1,
            r::kx_group::SECP384R1,
        ],
        signature_verification_algorithms: ring_provider::ALGORITHMS,
        secure_random: &ring_provider::Random,
        key_provider: &ring_provider::Keys,
    }
}

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
mod ring_provider {
    use std::sync::Arc;

    use rustls::crypto::{GetRandomFailed, KeyProvider, SecureRandom, WebPkiSupportedAlgorithms};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::sign::SigningKey;
    use rustls::SignatureScheme as S;
    use webpki::ring as alg;

    /// The signature algorithms a server's handshake and certificates may
    /// use: ECDSA, Ed25519 and RSA (PSS and PKCS#1, 2048 to 8192 bits), by
    /// the TLS scheme that names each.
    pub(super) static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        // TLS 1.3 fixes the curve with the scheme; TLS 1.2 does not, so
        // each ECDSA scheme accepts either curve's key.
        mapping: &[
            (
                S::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (
                S::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (S::ED25519, &[alg::ED25519]),
            (
                S::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (S::RSA_PKCS1_SHA256, &[alg::RSA_PKCS1_2048_8192_SHA256]),
            (S::RSA_PKCS1_SHA384, &[alg::RSA_PKCS1_2048_8192_SHA384]),
            (S::RSA_PKCS1_SHA512, &[alg::RSA_PKCS1_2048_8192_SHA512]),
        ],
    };

    /// The system's random source, through *ring*.
    #[derive(Debug)]
    pub(super) struct Random;

    impl SecureRandom for Random {
        fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
            use ring::rand::SecureRandom as _;
            ring::rand::SystemRandom::new()
                .fill(buf)
                .map_err(|_| GetRandomFailed)
        }
    }

    /// Private keys (a client identity's) loaded by rustls's *ring* signer.
    #[derive(Debug)]
    pub(super) struct Keys;

    impl KeyProvider for Keys {
        fn load_private_key(
            &self,
            key_der: PrivateKeyDer<'static>,
        ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
            rustls::crypto::ring::sign::any_supported_type(&key_der)
        }
    }
}

/// SHA-256 of `data`, by the provider's library.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    #[cfg(feature = "aws-lc-rs")]
    use aws_lc_rs::digest;
    #[cfg(not(feature = "aws-lc-rs"))]
    use ring::digest;
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(p: &CryptoProvider) -> Vec<String> {
        p.kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect()
    }

    #[test]
    fn aes_128_gcm_is_offered_first() {
        for pq in [true, false] {
            let p = provider(pq);
            assert_eq!(
                p.cipher_suites[0].suite(),
                CipherSuite::TLS13_AES_128_GCM_SHA256
            );
        }
    }

    #[test]
    fn the_post_quantum_hybrid_leads_with_aws_lc_rs_and_goes_when_turned_off() {
        let on = groups(&provider(true));
        let off = groups(&provider(false));
        assert!(off.iter().all(|g| !g.contains("MLKEM")), "{off:?}");
        assert_eq!(off[0], "X25519", "{off:?}");
        if cfg!(all(feature = "aws-lc-rs", not(feature = "fips"))) {
            assert_eq!(on[0], "X25519MLKEM768", "{on:?}");
        } else if cfg!(not(feature = "aws-lc-rs")) {
            assert_eq!(on, off, "ring has no post-quantum group");
        }
    }

    #[test]
    fn sha256_is_sha256() {
        let hex: String = sha256(&[1, 2, 3, 4, 5])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "74f81fe167d99b4cb41d6d0ccda82278caee9f3e2f25d5e5a3936ff3dcec60d0"
        );
    }
}
