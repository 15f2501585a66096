//! TLS client configuration: the two rustls configs the engine hands out
//! (resumption off, or on with a purgeable session store), built from the
//! current credentials (see `credentials.rs`) and rebuilt whenever one of
//! them has a new valid version; the verified path of a finished
//! handshake's chain; and judging a live connection's chain again under
//! the current anchors and CRLs.
//!
//! Sessions never cross a change: every new version of the anchors, the
//! CRLs or the client identity starts an empty session store, since a
//! resumed session skips the server's certificate (so the new anchors and
//! lists) and carries the old client authentication. A new version of the
//! anchors or the CRLs also starts a new verifier, whose verify cache is
//! empty, so no chain verified under the old ones is taken on trust.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::SingleCertAndKey;
use rustls::ClientConfig;
use rustls::{ConfigBuilder, WantsVerifier};

use crate::config::Trust;
pub(crate) use crate::cred_file::FileError;
use crate::credentials::{Checked, Credentials, Epoch};
use crate::crl::RevokedCertificate;
use crate::store::SystemStore;
use crate::verifier::Verifier;
use crate::PeerChain;

/// How many TLS sessions are kept for resumption (per configuration).
const SESSIONS: usize = 256;

/// How many problems [`TlsState::refresh`] holds for the next
/// [`TlsState::check`] (one per bad version of a file; a host that never
/// checks keeps the first ones).
const HELD: usize = 16;

pub(crate) struct TlsState {
    creds: Credentials,
    provider: Arc<CryptoProvider>,
    /// The provider and protocol versions, accepted when the engine was
    /// built: every later build of the configs starts here and cannot fail.
    builder: ConfigBuilder<ClientConfig, WantsVerifier>,
    configs: Configs,
    /// The epoch the last [`TlsState::check`] reported.
    reported: Epoch,
    /// What [`TlsState::refresh`] found and could not hand on: the problems
    /// after its first, and the identity's notices.
    held: Checked,
}

/// What one version of the credentials builds: the two configs, the
/// verifier both use, and the session store of the resuming one.
struct Configs {
    full: Arc<ClientConfig>,
    resume: Arc<ClientConfig>,
    verifier: Arc<Verifier>,
    sessions: Arc<ClientSessionMemoryCache>,
}

/// A live connection's chain, judged again under the current anchors and
/// CRLs ([`TlsState::judge`]).
#[derive(Debug)]
pub(crate) enum Judgement {
    /// It still verifies: the chain with the path it verifies along now
    /// (the same `Arc` when the path did not change), so the job's CA
    /// bundle follows a root that moved.
    Valid(Arc<PeerChain>),
    /// A certificate of its path is revoked.
    Revoked(RevokedCertificate),
    /// It no longer verifies (an anchor it ended at was removed, or it
    /// expired): rustls's reason.
    Untrusted(rustls::Error),
}

impl TlsState {
    /// Build from the trust settings, reading every file.
    ///
    /// # Errors
    /// The file, and why, when a CA file, CRL file, certificate or key
    /// cannot be read or holds nothing usable, when the key is not the
    /// certificate's, or when no anchor is left.
    pub(crate) fn new(trust: &Trust) -> Result<TlsState, FileError> {
        TlsState::with_store(trust, trust.system.then(SystemStore::locate))
    }

    fn with_store(trust: &Trust, store: Option<SystemStore>) -> Result<TlsState, FileError> {
        let provider = Arc::new(crate::provider::provider(trust.post_quantum));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| FileError {
                path: Default::default(),
                reason: format!("tls configuration: {e}"),
            })?;
        let creds = Credentials::new(trust, store, provider.clone(), Instant::now())?;
        let verifier = verifier(&creds, &provider);
        let configs = configs(&creds, verifier, &builder);
        Ok(TlsState {
            reported: creds.epoch(),
            creds,
            provider,
            builder,
            configs,
            held: Checked::default(),
        })
    }

    /// Look at every credential file and load what changed
    /// ([`Credentials::check`]), rebuilding the verifier (when the anchors
    /// or the CRLs moved) and the configs, with an empty session store.
    /// `changed` is against the epoch the previous call reported, so a
    /// change [`TlsState::refresh`] loaded in between is reported here too,
    /// as are its held problems and notices.
    pub(crate) fn check(&mut self, now: Instant, wall: SystemTime) -> Checked {
        let looked = self.look(now, wall);
        let mut checked = std::mem::take(&mut self.held);
        checked.errors.extend(looked.errors);
        checked.identity_expiring = looked.identity_expiring.or(checked.identity_expiring);
        checked.identity_retiring = looked.identity_retiring.or(checked.identity_retiring);
        let epoch = self.creds.epoch();
        checked.changed = self.reported.changed_since(epoch);
        self.reported = epoch;
        checked
    }

    /// The engine's look before each new connection (as
    /// [`TlsState::check`], without reporting): whether anything changed,
    /// or the first problem. The other problems and the identity's notices
    /// wait for the next [`TlsState::check`].
    pub(crate) fn refresh(&mut self) -> Result<bool, FileError> {
        let looked = self.look(Instant::now(), SystemTime::now());
        let mut errors = looked.errors.into_iter();
        let first = errors.next();
        for e in errors {
            if self.held.errors.len() < HELD {
                self.held.errors.push(e);
            }
        }
        if looked.identity_expiring.is_some() {
            self.held.identity_expiring = looked.identity_expiring;
        }
        if looked.identity_retiring.is_some() {
            self.held.identity_retiring = looked.identity_retiring;
        }
        match first {
            Some(e) => Err(e),
            None => Ok(looked.changed.any()),
        }
    }

    /// One look at the files, and the rebuild a moved set needs.
    fn look(&mut self, now: Instant, wall: SystemTime) -> Checked {
        let looked = self.creds.check(now, wall);
        let changed = looked.changed;
        if changed.any() {
            let verifier = match changed.anchors || changed.crls {
                true => verifier(&self.creds, &self.provider),
                false => self.configs.verifier.clone(),
            };
            self.configs = configs(&self.creds, verifier, &self.builder);
            log::info!(
                "credentials changed (anchors: {}, CRLs: {}, client identity: {}); new \
                 connections use them, without resuming older sessions",
                changed.anchors,
                changed.crls,
                changed.identity
            );
        }
        looked
    }

    /// The epoch of the credentials new connections are made with.
    pub(crate) fn epoch(&self) -> Epoch {
        self.creds.epoch()
    }

    /// The client identity new connections present: its leaf's subject
    /// and serial (uppercase hex).
    pub(crate) fn identity(&self) -> Option<(&str, &str)> {
        self.creds
            .identity()
            .map(|id| (id.subject.as_str(), id.serial.as_str()))
    }

    /// How often [`TlsState::check`] should run ([`Trust::check_interval`]).
    pub(crate) fn check_interval(&self) -> Duration {
        self.creds.trust().check_interval
    }

    /// The config for a connection that must do a full handshake.
    pub(crate) fn full(&self) -> Arc<ClientConfig> {
        self.configs.full.clone()
    }

    /// The config that may resume; with `purge`, first forget the sessions
    /// stored for `host` so this connection does a full handshake too.
    pub(crate) fn resuming(&self, host: &str, purge: bool) -> Arc<ClientConfig> {
        if purge {
            if let Ok(name) = ServerName::try_from(host.to_owned()) {
                let sessions = &self.configs.sessions;
                while sessions.take_tls13_ticket(&name).is_some() {}
                sessions.remove_tls12_session(&name);
            }
        }
        self.configs.resume.clone()
    }

    /// The chain a finished handshake with `host` reported (leaf first),
    /// with the path its verification built: remembered from that
    /// verification, including for a resumed session while it is cached,
    /// else verified again with the current anchors. When the chain and its
    /// path equal `known` (the origin's current chain), `known` is shared.
    pub(crate) fn peer_chain(
        &self,
        presented: &[CertificateDer<'static>],
        host: &str,
        known: Option<&Arc<PeerChain>>,
    ) -> Arc<PeerChain> {
        let path = self.configs.verifier.path_for(presented, host);
        match known {
            Some(k) if k.der() == presented && k.path_arc() == path.as_ref() => k.clone(),
            _ => Arc::new(PeerChain::verified(presented.to_vec(), path)),
        }
    }

    /// Judge a live connection's chain, as verified for `host`, again under
    /// the current anchors and CRLs: local computation (path building and
    /// signature checks, at most one per distinct chain while the verify
    /// cache holds it), no network.
    pub(crate) fn judge(&self, chain: &Arc<PeerChain>, host: &str) -> Judgement {
        match self.configs.verifier.judge(chain.der(), host) {
            Ok(path) if path.as_ref() == chain.path_arc() => Judgement::Valid(chain.clone()),
            Ok(path) => Judgement::Valid(Arc::new(PeerChain::verified(chain.der().to_vec(), path))),
            Err(e) => match crate::crl::revoked_in(&e) {
                Some(revoked) => Judgement::Revoked(revoked.clone()),
                None => Judgement::Untrusted(e),
            },
        }
    }
}

/// A verifier of the current anchors and CRLs. Verification of a
/// byte-identical chain, and the path it took, is remembered (see
/// `verify_cache.rs`); a new verifier starts with an empty cache.
fn verifier(creds: &Credentials, provider: &CryptoProvider) -> Arc<Verifier> {
    let verifier = Verifier::new(
        creds.anchors().clone(),
        creds.crls().clone(),
        creds.trust().crl_expiry,
        provider.signature_verification_algorithms,
    );
    #[cfg(feature = "dangerous-skip-verification")]
    let verifier = match creds.trust().dangerous_skip_verification {
        true => verifier.skipping(),
        false => verifier,
    };
    Arc::new(verifier)
}

/// The configs of the current credentials around `verifier`, with a new
/// session store.
fn configs(
    creds: &Credentials,
    verifier: Arc<Verifier>,
    builder: &ConfigBuilder<ClientConfig, WantsVerifier>,
) -> Configs {
    let builder = builder
        .clone()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut full = match creds.identity() {
        None => builder.with_no_client_auth(),
        // Checked when loaded: the key is the leaf's.
        Some(id) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            rustls::sign::CertifiedKey::clone(&id.certified),
        ))),
    };
    full.alpn_protocols = vec![b"http/1.1".to_vec()];
    let sessions = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
    let mut resume = full.clone();
    full.resumption = Resumption::disabled();
    resume.resumption = Resumption::store(sessions.clone());
    Configs {
        full: Arc::new(full),
        resume: Arc::new(resume),
        verifier,
        sessions,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::UnixTime;

    use super::*;
    use crate::config::ClientIdentity;
    use crate::crl::tests::{ca, crl, Ca};
    use crate::der::to_pem;
    use crate::path::Anchor;

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    /// One intermediate (name and key) signed by each of `roots`: a
    /// cross-signed CA, as a public CA's move to a new root looks.
    fn cross_signed(cn: &str, roots: &[&Ca]) -> (Vec<CertificateDer<'static>>, Ca) {
        let key = KeyPair::generate().expect("key");
        let certs = roots
            .iter()
            .map(|r| {
                ca_params(cn)
                    .signed_by(&key, &r.issuer)
                    .expect("sign")
                    .der()
                    .clone()
            })
            .collect::<Vec<_>>();
        let ca = Ca {
            der: certs[0].clone(),
            issuer: Issuer::new(ca_params(cn), key),
        };
        (certs, ca)
    }

    fn leaf(host: &str, serial: u64, by: &Ca) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![host.to_owned()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, host);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.serial_number = Some(SerialNumber::from(serial));
        p.signed_by(&key, &by.issuer).expect("sign").der().clone()
    }

    fn write(path: &Path, text: &str) {
        // By rename, as a careful tool writes: the new version is whole.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    fn check(state: &mut TlsState) -> Checked {
        state.check(Instant::now(), SystemTime::now())
    }

    fn verify(state: &TlsState, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("a.test").expect("name");
        let now = UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970"),
        );
        state
            .configs
            .verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, b"", now)
            .map(|_| ())
    }

    #[test]
    fn a_new_crl_starts_an_empty_verify_cache_so_a_chain_verified_before_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = ca("Root");
        let chain = [leaf("a.test", 0x10, &root)];
        let (ca_file, crl_file) = (dir.path().join("ca.pem"), dir.path().join("ca.crl"));
        write(&ca_file, &to_pem([&root.der]));
        write(&crl_file, &crl(&root, &[0x99], (2090, 1, 1)));
        let mut trust = Trust::pem_file(&ca_file);
        trust.crl_files = vec![crl_file.clone()];
        let mut state = TlsState::new(&trust).expect("builds");
        verify(&state, &chain).expect("not revoked yet");
        let before = state.epoch();

        write(&crl_file, &crl(&root, &[0x99, 0x10], (2090, 1, 1)));
        let checked = check(&mut state);
        assert!(checked.changed.crls && !checked.changed.anchors);
        assert_eq!(state.epoch().crls, before.crls + 1);
        // Without a new verifier its cache would answer from before.
        let err = verify(&state, &chain).expect_err("revoked now");
        let revoked = crate::crl::revoked_in(&err).expect("named");
        assert_eq!(revoked.serial, "10");
        let presented = Arc::new(PeerChain::new(chain.to_vec()));
        assert!(
            matches!(state.judge(&presented, "a.test"), Judgement::Revoked(r) if r == *revoked)
        );
    }

    #[test]
    fn sessions_never_cross_a_change_and_the_new_identity_is_presented() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        write(&ca_file, &to_pem([&ca("Root").der]));
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let pair = |cn: &str| {
            let (c, k) = crate::identity::tests::client_pem(cn, Duration::from_secs(3600));
            write(&cert, &c);
            write(&key, &k);
        };
        pair("runner-1");
        let mut trust = Trust::pem_file(&ca_file);
        trust.client_identity = Some(ClientIdentity {
            cert_chain: cert.clone(),
            key: key.clone(),
        });
        let mut state = TlsState::new(&trust).expect("builds");
        let presented = |state: &TlsState| {
            let config = state.resuming("a.test", false);
            let schemes = [rustls::SignatureScheme::ECDSA_NISTP256_SHA256];
            let key = config
                .client_auth_cert_resolver
                .resolve(&[], &schemes)
                .expect("an identity");
            crate::crl::RevokedCertificate::of(&key.cert[0]).map(|c| c.subject)
        };
        assert_eq!(presented(&state).as_deref(), Some("CN=runner-1"));
        let (sessions, verifier) = (
            state.configs.sessions.clone(),
            state.configs.verifier.clone(),
        );
        assert!(!check(&mut state).changed.any());
        assert!(Arc::ptr_eq(&sessions, &state.configs.sessions), "kept");

        pair("runner-2");
        assert!(check(&mut state).changed.identity);
        assert_eq!(presented(&state).as_deref(), Some("CN=runner-2"));
        assert!(
            !Arc::ptr_eq(&sessions, &state.configs.sessions),
            "no session resumes across identities"
        );
        assert!(
            Arc::ptr_eq(&verifier, &state.configs.verifier),
            "the verifier (and its cache) stays: no anchor or list changed"
        );
        assert_eq!(state.check_interval(), Duration::from_secs(1));
    }

    #[test]
    fn judging_after_a_root_is_removed_follows_another_path_or_refuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (old_root, new_root, other) = (ca("Old Root"), ca("New Root"), ca("Other"));
        let (mids, mid) = cross_signed("Mid", &[&old_root, &new_root]);
        // The server sends the leaf and both versions of the intermediate.
        let chain = Arc::new(PeerChain::new(vec![
            leaf("a.test", 0x10, &mid),
            mids[0].clone(),
            mids[1].clone(),
        ]));
        let ca_file = dir.path().join("ca.pem");
        write(&ca_file, &to_pem([&old_root.der, &new_root.der]));
        let mut state = TlsState::new(&Trust::pem_file(&ca_file)).expect("builds");
        let first = state.peer_chain(chain.der(), "a.test", None);
        let anchor = |c: &PeerChain| c.verified_path().map(|p| p.anchor().clone());
        assert_eq!(
            anchor(&first),
            Some(Anchor::Certificate(old_root.der.clone()))
        );
        assert!(
            matches!(state.judge(&first, "a.test"), Judgement::Valid(c) if Arc::ptr_eq(&c, &first))
        );

        // The old root is distrusted: the path moves to the new one.
        write(&ca_file, &to_pem([&new_root.der, &other.der]));
        assert!(check(&mut state).changed.anchors);
        let Judgement::Valid(moved) = state.judge(&first, "a.test") else {
            panic!("still verifies through the new root");
        };
        assert_eq!(
            anchor(&moved),
            Some(Anchor::Certificate(new_root.der.clone()))
        );
        assert_eq!(moved.der(), first.der());

        // And then that one too: no path is left.
        write(&ca_file, &to_pem([&other.der]));
        assert!(check(&mut state).changed.anchors);
        assert!(matches!(
            state.judge(&moved, "a.test"),
            Judgement::Untrusted(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ));
    }

    #[test]
    fn what_the_look_before_a_connection_loaded_is_still_reported_by_the_next_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = ca("Root");
        let (ca_file, crl_file) = (dir.path().join("ca.pem"), dir.path().join("ca.crl"));
        let second_crl = dir.path().join("second.crl");
        write(&ca_file, &to_pem([&root.der]));
        write(&crl_file, &crl(&root, &[1], (2090, 1, 1)));
        write(&second_crl, &crl(&root, &[2], (2090, 1, 1)));
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c, k) = crate::identity::tests::client_pem("runner-1", Duration::from_secs(3600));
        write(&cert, &c);
        write(&key, &k);
        let mut trust = Trust::pem_file(&ca_file);
        trust.crl_files = vec![crl_file.clone(), second_crl.clone()];
        trust.client_identity = Some(ClientIdentity {
            cert_chain: cert,
            key,
        });
        let mut state = TlsState::new(&trust).expect("builds");
        let before = state.epoch();

        // A new list, then two broken ones (one report for the set: the
        // first file that fails), all seen by the look before a connection.
        write(&crl_file, &crl(&root, &[1, 3], (2090, 1, 1)));
        assert_eq!(state.refresh(), Ok(true));
        write(&crl_file, "garbage");
        assert!(state.refresh().is_err());
        assert_eq!(state.refresh(), Ok(false), "reported once");

        // The timer's check still hears of the change (and the identity,
        // valid 2030 for an hour, is past its warning time by 2031).
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_924_992_000);
        let checked = state.check(Instant::now(), wall);
        assert!(checked.changed.crls && !checked.changed.identity);
        assert_eq!(state.epoch().crls, before.crls + 1);
        assert!(checked.identity_expiring.is_some() && checked.identity_retiring.is_some());
        let again = state.check(Instant::now(), wall);
        assert!(!again.changed.any() && again.identity_expiring.is_none());

        // Two problems in one look before a connection: the first is its
        // answer, the second waits for the check.
        write(&second_crl, "also garbage");
        let (c, _) = crate::identity::tests::client_pem("runner-2", Duration::from_secs(3600));
        write(&dir.path().join("tls.crt"), &c);
        let first = state.refresh().expect_err("two problems");
        let checked = state.check(Instant::now(), SystemTime::now());
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        assert_ne!(checked.errors[0].path, first.path);
        assert!(!checked.changed.any());
    }
}
