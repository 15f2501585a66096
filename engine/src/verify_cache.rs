//! Remember which certificate chains verified and the path each one
//! verified along, so a reconnect to a server presenting the very same chain
//! skips re-checking it, and the engine can ask which path a connection's
//! chain took.
//!
//! A full TLS 1.3 handshake verifies two signatures: the issuer's over each
//! certificate of the chain (`verify_server_cert`) and the server's over the
//! handshake transcript (`verify_tls13_signature`, which proves the server
//! holds the leaf's key). Every max-age replacement presents the chain the
//! previous connection already verified, so the first check repeats work
//! whose answer cannot have changed, while the second must run every time.
//!
//! [`VerifyCache`] keeps successful path builds for a byte-identical chain,
//! server name and OCSP response, until the earliest notAfter of the path's
//! leaf and intermediates or [`TTL`] after the check, whichever is first.
//! Failures are never kept (each one reports its own reason), signatures
//! over the transcript are always verified, and a new trust configuration
//! builds a new verifier with an empty cache. A rotated chain differs in its
//! bytes and is verified in full.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::der::not_after_secs;
use crate::path::VerifiedPath;

/// How long a verified chain is trusted without a new check.
pub(crate) const TTL: Duration = Duration::from_secs(10 * 60);
/// How many distinct chains are remembered (the oldest is forgotten first).
pub(crate) const CAPACITY: usize = 16;

/// A chain as rustls hands it to a verifier: the leaf and what followed it.
#[derive(Clone, Copy)]
pub(crate) struct Presented<'a> {
    pub(crate) end_entity: &'a CertificateDer<'a>,
    pub(crate) intermediates: &'a [CertificateDer<'a>],
}

impl<'a> Presented<'a> {
    /// Split a chain reported leaf first; `None` when it is empty.
    pub(crate) fn from_chain(chain: &'a [CertificateDer<'a>]) -> Option<Presented<'a>> {
        let (end_entity, intermediates) = chain.split_first()?;
        Some(Presented {
            end_entity,
            intermediates,
        })
    }

    pub(crate) fn certs(self) -> impl Iterator<Item = &'a CertificateDer<'a>> {
        std::iter::once(self.end_entity).chain(self.intermediates)
    }
}

struct Entry {
    certs: Vec<CertificateDer<'static>>,
    name: ServerName<'static>,
    ocsp: Vec<u8>,
    /// Seconds since the epoch: when the chain verified, and when that
    /// answer stops being reused.
    verified_at: u64,
    until: u64,
    path: Arc<VerifiedPath>,
}

impl Entry {
    /// The same chain and name; the same OCSP response unless `ocsp` is
    /// `None` (a lookup that has none to give, as for a finished handshake).
    fn matches(&self, chain: Presented<'_>, name: &ServerName<'_>, ocsp: Option<&[u8]>) -> bool {
        self.certs.len() == chain.intermediates.len() + 1
            && self.name == *name
            && ocsp.is_none_or(|o| self.ocsp == o)
            && chain
                .certs()
                .zip(&self.certs)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    }

    fn good_at(&self, t: u64) -> bool {
        self.verified_at <= t && t < self.until
    }
}

/// Successful verifications, newest last, at most [`CAPACITY`].
#[derive(Default)]
pub(crate) struct VerifyCache {
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("VerifyCache").field("entries", &n).finish()
    }
}

impl VerifyCache {
    /// The path of an earlier verification of `chain` for `name` that is
    /// still good at `now` (seconds since the epoch). `ocsp: None` matches
    /// any OCSP response.
    pub(crate) fn get(
        &self,
        chain: Presented<'_>,
        name: &ServerName<'_>,
        ocsp: Option<&[u8]>,
        now: u64,
    ) -> Option<Arc<VerifiedPath>> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .rev()
            .find(|e| e.good_at(now) && e.matches(chain, name, ocsp))
            .map(|e| e.path.clone())
    }

    /// Remember that `chain` verified for `name` at `now` along `path`.
    /// A path whose notAfter does not parse is not remembered.
    pub(crate) fn insert(
        &self,
        chain: Presented<'_>,
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: u64,
        path: Arc<VerifiedPath>,
    ) {
        let Some(not_after) = earliest_not_after(&path) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|e| !e.matches(chain, name, Some(ocsp)));
        if entries.len() >= CAPACITY {
            entries.remove(0);
        }
        entries.push(Entry {
            certs: chain.certs().map(|c| c.clone().into_owned()).collect(),
            name: name.to_owned(),
            ocsp: ocsp.to_vec(),
            verified_at: now,
            until: not_after.min(now.saturating_add(TTL.as_secs())),
            path,
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }
}

/// The earliest notAfter of the path's leaf and intermediates, in seconds
/// since the epoch; `None` when one does not parse.
fn earliest_not_after(path: &VerifiedPath) -> Option<u64> {
    path.checked()
        .map(not_after_secs)
        .try_fold(u64::MAX, |min, t| t.map(|t| min.min(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::Anchor;

    /// A real certificate (so its notAfter parses) valid until `not_after`.
    fn cert(not_after: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    /// A path through every certificate of `chain`, anchored at its last.
    fn path(chain: &[CertificateDer<'static>]) -> Arc<VerifiedPath> {
        let anchor = Anchor::Certificate(chain[chain.len() - 1].clone());
        Arc::new(VerifiedPath::new(
            chain[0].clone(),
            chain[1..].to_vec(),
            anchor,
        ))
    }

    fn name(n: &str) -> ServerName<'static> {
        ServerName::try_from(n.to_owned()).expect("name")
    }

    fn presented<'a>(chain: &'a [CertificateDer<'static>]) -> Presented<'a> {
        Presented::from_chain(chain).expect("not empty")
    }

    #[test]
    fn a_chain_is_remembered_for_its_name_until_ttl_or_not_after() {
        let cache = VerifyCache::default();
        let leaf = cert((2090, 1, 1));
        let mid = cert((2090, 1, 1));
        let chain = [leaf.clone(), mid.clone()];
        let t0 = 2_000_000_000;
        let verified = path(&chain);
        cache.insert(
            presented(&chain),
            &name("a.test"),
            b"",
            t0,
            verified.clone(),
        );
        let hit = cache.get(presented(&chain), &name("a.test"), Some(b""), t0 + 1);
        assert!(hit.is_some_and(|p| Arc::ptr_eq(&p, &verified)));
        assert!(
            cache
                .get(presented(&chain), &name("a.test"), None, t0)
                .is_some(),
            "a lookup without an OCSP response matches any"
        );
        // Another name, OCSP response, intermediate, or the chain without it.
        let other = [leaf.clone(), cert((2090, 1, 1))];
        assert!(cache
            .get(presented(&chain), &name("b.test"), None, t0)
            .is_none());
        assert!(cache
            .get(presented(&chain), &name("a.test"), Some(b"ocsp"), t0)
            .is_none());
        assert!(cache
            .get(presented(&other), &name("a.test"), None, t0)
            .is_none());
        assert!(cache
            .get(presented(&chain[..1]), &name("a.test"), None, t0)
            .is_none());
        // After the TTL, or with a clock that went back: forgotten.
        let at = |t| cache.get(presented(&chain), &name("a.test"), None, t);
        assert!(at(t0 + TTL.as_secs()).is_none());
        assert!(at(t0 - 1).is_none());
        // An intermediate expiring within the TTL bounds the entry.
        let short = [leaf, cert((2033, 5, 18))];
        let not_after = 1_999_987_200; // 2033-05-18T00:00:00Z
        cache.insert(
            presented(&short),
            &name("a.test"),
            b"",
            not_after - 300,
            path(&short),
        );
        let at = |t| cache.get(presented(&short), &name("a.test"), None, t);
        assert!(at(not_after - 1).is_some());
        assert!(at(not_after).is_none(), "past the intermediate's notAfter");
    }

    #[test]
    fn unparsable_paths_are_not_kept_and_the_cache_is_bounded() {
        let cache = VerifyCache::default();
        let opaque = [CertificateDer::from(b"opaque".to_vec())];
        cache.insert(
            presented(&opaque),
            &name("a.test"),
            b"",
            2_000_000_000,
            path(&opaque),
        );
        assert_eq!(cache.len(), 0, "no notAfter, not remembered");
        let names: Vec<String> = (0..=CAPACITY).map(|i| format!("n{i}.test")).collect();
        let chain = [cert((2090, 1, 1))];
        for n in &names {
            cache.insert(
                presented(&chain),
                &name(n),
                b"",
                2_000_000_000,
                path(&chain),
            );
        }
        assert_eq!(cache.len(), CAPACITY);
        let get = |n: &str| cache.get(presented(&chain), &name(n), None, 2_000_000_000);
        assert!(get(&names[0]).is_none(), "the oldest was forgotten");
        assert!(get(&names[CAPACITY]).is_some());
        // The same chain again replaces its entry instead of adding one.
        cache.insert(
            presented(&chain),
            &name(&names[CAPACITY]),
            b"",
            2_000_000_001,
            path(&chain),
        );
        assert_eq!(cache.len(), CAPACITY);
    }
}
