//! Trust and chain tracking: CA files re-read on change, mTLS, retirement
//! at the leaf's notAfter, chain probes, untrusted rotations, address order.

mod driver;
mod support;

use std::sync::Arc;
use std::time::Duration;

use driver::*;
use rotary::{ClientIdentity, CloseReason, Config, Error, Event, RequestOptions, Trust};
use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn a_ca_file_replaced_on_disk_is_used_by_the_next_connection() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let leaf = new_ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("trusted"));
    let (mut engine, file) = engine_for(&old_ca, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert!(matches!(out.error(id), Error::Tls { .. }));

    file.replace(new_ca.cert_pem().as_bytes());
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "trusted");
    assert_drained(&mut engine);
}

#[test]
fn a_broken_ca_file_keeps_the_previous_roots_and_raises_an_event_once() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .handler(|_, _| Reply::ok("still"))
        .start();
    let (mut engine, file) = engine_for(&ca, |c| c.policy.max_requests = Some(1));
    file.replace(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    let mut trust_errors = 0;
    for _ in 0..2 {
        let id = engine.submit(get(&server.url("/")), RequestOptions::default());
        let out = finish(&mut engine, &[id], T);
        assert_eq!(out.response(id).body(), "still", "never trust nothing");
        trust_errors += out
            .events
            .iter()
            .filter(|e| matches!(e, Event::TrustError { .. }))
            .count();
    }
    assert_eq!(trust_errors, 1, "one event per change of the file");
    assert_drained(&mut engine);
}

#[test]
fn an_unreadable_ca_file_is_refused_when_building() {
    let mut config = Config::default();
    config.trust = Trust::pem_file("/nonexistent/rotary/ca.pem");
    let err = rotary::Engine::new(config).expect_err("no anchors, no engine");
    let rotary::BuildError::Trust { path, .. } = &err else {
        panic!("a trust error: {err:?}");
    };
    assert_eq!(path, std::path::Path::new("/nonexistent/rotary/ca.pem"));
    assert!(
        err.to_string().contains("/nonexistent/rotary/ca.pem"),
        "{err}"
    );
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let (ca, leaf) = ca_and_leaf();
    let client = ca.issue_client("runner-1");
    let server = TestServer::builder()
        .tls(&leaf)
        .require_client_cert(ca.cert_der())
        .handler(|_, conn| {
            let has = conn
                .tls
                .as_ref()
                .and_then(|t| t.client_chain.as_ref())
                .is_some();
            Reply::ok(if has { "with cert" } else { "without" })
        })
        .start();
    let chain = client.write_chain_pem_file();
    let key = client.write_key_pem_file();
    let (mut engine, _f) = engine_for(&ca, |c| {
        c.trust.client_identity = Some(ClientIdentity {
            cert_chain: chain.path().to_owned(),
            key: key.path().to_owned(),
        })
    });
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "with cert");
    assert_drained(&mut engine);

    let (mut anonymous, _f) = engine_for(&ca, |_| {});
    let id = anonymous.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut anonymous, &[id], T);
    assert!(out.event(id).is_terminal());
    assert!(
        matches!(out.event(id), Event::Failed { .. }),
        "the server demands a certificate"
    );
    assert_drained(&mut anonymous);
}

#[test]
fn a_connection_retires_at_its_leafs_not_after_before_max_age() {
    let ca = TestCa::new("rotary test CA");
    let leaf = ca
        .leaf(&["localhost", "127.0.0.1"])
        .expires_in(Duration::from_secs(2))
        .build();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x"));
    let (mut engine, _f) = engine_for(&ca, |_| {});
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    finish(&mut engine, &[id], T);
    run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::CertExpiry,
                    ..
                }
            )
        })
    });
    assert_eq!(engine.stats().closed(CloseReason::CertExpiry), 1);
    assert!(engine.stats().is_idle());
}

#[test]
fn a_chain_probe_heals_a_young_connection_after_rotation() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf_a, |_, _| Reply::ok("x"));
    let (mut engine, _f) = engine_for(&ca, |c| {
        c.policy.max_age = None;
        c.policy.chain_probe_interval = Some(Duration::from_millis(40));
    });
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    finish(&mut engine, &[id], T);
    server.rotate_to(&leaf_b);
    let events = run_until(&mut engine, T, |evs| {
        evs.iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: CloseReason::ChainChange,
                    ..
                }
            )
        })
    });
    let changed = events.iter().find_map(|e| match e {
        Event::ChainChanged { current, .. } => Some(current.clone()),
        _ => None,
    });
    assert_eq!(
        changed.expect("probe saw the change").der(),
        &leaf_b.chain_der()[..]
    );
    let stats = engine.stats();
    assert!(stats.probes >= 1);
    let origin = &stats.origins[0];
    assert_eq!(origin.chain_changes, 1);
    assert!(stats
        .to_prometheus()
        .contains("rotary_origin_chain_changes_total{origin=\"https://localhost:"));
    // No connection left means no probe timer left.
    assert_drained(&mut engine);
}

#[test]
fn rotation_to_an_untrusted_chain_fails_new_connections_with_an_event() {
    let (ca, leaf) = ca_and_leaf();
    let rogue = TestCa::new("rogue CA").issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("x"));
    let (mut engine, _f) = engine_for(&ca, |c| c.policy.max_requests = Some(1));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    finish(&mut engine, &[id], T);
    server.rotate_to(&rogue);
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    let err = out.error(id);
    assert!(err.to_string().to_lowercase().contains("issuer"), "{err}");
    assert!(out.events.iter().any(|e| matches!(
        e,
        Event::ConnectFailed {
            error: Error::Tls { .. },
            ..
        }
    )));
    assert_drained(&mut engine);
}

#[test]
fn addresses_are_tried_in_order_until_one_connects() {
    let server = TestServer::plain(|_, _| Reply::ok("second address"));
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut engine = engine_resolving_to(vec![refused, server.addr()], |_| {});
    let url = format!("http://coordinator.test:{}/", server.port());
    let id = engine.submit(get(&url), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "second address");
    assert_eq!(out.opened()[0].peer_addr, server.addr());
    assert_drained(&mut engine);
}

#[cfg(feature = "dangerous-skip-verification")]
#[test]
fn skipping_verification_needs_the_feature_and_accepts_an_unknown_ca() {
    let (_ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("unverified"));
    let stranger = TestCa::new("unrelated CA");
    let (mut engine, _f) = engine_for(&stranger, |c| c.trust.dangerous_skip_verification = true);
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body(), "unverified");
    assert_drained(&mut engine);
}

#[test]
fn on_chain_change_keep_reports_but_does_not_retire() {
    let (ca, leaf_a) = ca_and_leaf();
    let leaf_b = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&leaf_a, |req, _| {
        if req.path() == "/slow" {
            Reply::ok("slow").delay(Duration::from_millis(150))
        } else {
            Reply::ok("fast")
        }
    });
    let (mut engine, _f) = engine_for(&ca, |c| {
        c.policy.on_chain_change = rotary::OnChainChange::Keep
    });
    let slow = engine.submit(get(&server.url("/slow")), RequestOptions::default());
    pump_until(&mut engine, T, || server.stats().requests >= 1);
    server.rotate_to(&leaf_b);
    let fast = engine.submit(get(&server.url("/fast")), RequestOptions::default());
    let out = finish(&mut engine, &[slow, fast], T);
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, Event::ChainChanged { .. })));
    assert!(!out.closed().contains(&CloseReason::ChainChange));
    assert_eq!(engine.stats().connections, 2, "both connections stay");
    assert_drained(&mut engine);
}

#[test]
fn a_per_origin_policy_overrides_the_engine_default() {
    let a = TestServer::plain(|_, _| Reply::ok("a"));
    let b = TestServer::plain(|_, _| Reply::ok("b"));
    let mut engine = plain_engine(|_| {});
    let origin_b = rotary::Origin::parse(&b.url_ip("/")).unwrap();
    let mut strict = engine.origin_policy(&origin_b);
    strict.max_requests = Some(1);
    engine
        .set_origin_policy(origin_b.clone(), strict)
        .expect("a policy that can work");
    assert_eq!(engine.origin_policy(&origin_b).max_requests, Some(1));
    for _ in 0..3 {
        let ia = engine.submit(get(&a.url_ip("/")), RequestOptions::default());
        let ib = engine.submit(get(&b.url_ip("/")), RequestOptions::default());
        finish(&mut engine, &[ia, ib], T);
    }
    assert_eq!(a.stats().connections_accepted, 1, "default policy reuses");
    assert_eq!(
        b.stats().connections_accepted,
        3,
        "override retires after one"
    );
    assert_drained(&mut engine);
}

struct SlowResolver;
impl rotary::Resolver for SlowResolver {
    fn resolve(&self, _: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        std::thread::sleep(Duration::from_millis(300));
        Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))])
    }
}

#[test]
fn dns_and_handshake_deadlines_end_the_attempt_with_their_names() {
    let mut engine = plain_engine(|c| {
        c.resolver = Some(Arc::new(SlowResolver));
        c.timeouts.dns = Duration::from_millis(30);
    });
    let id = engine.submit(get("http://slow.test:1/"), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.error(id).deadline(), Some(rotary::Deadline::Dns));
    engine.shutdown();
    assert!(engine.stats().is_idle());

    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .on_accept(|_| Accept::Stall)
        .start();
    let (mut engine, _f) = engine_for(&ca, |c| c.timeouts.handshake = Duration::from_millis(40));
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.error(id).deadline(), Some(rotary::Deadline::Handshake));
    assert_drained(&mut engine);
}
