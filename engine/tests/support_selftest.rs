//! Self-tests of the test support code (server, certificates, client), with a
//! plain rustls client over std TcpStream — not the engine.

mod support;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use support::*;

const T: Duration = Duration::from_secs(5);

fn tls_client(server: &TestServer, config: Arc<rustls::ClientConfig>) -> io::Result<Client> {
    Client::tls(server.addr(), "localhost", config, T)
}

#[test]
fn keep_alive_serves_two_requests_on_one_plain_connection() {
    let server = TestServer::plain(|req, _| Reply::ok(format!("you asked {}", req.target)));
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(c.get("/a").unwrap().text(), "you asked /a");
    let r = c.send("POST", "/b", &[("x-test", "1")], b"hello").unwrap();
    assert_eq!(r.text(), "you asked /b");
    let reqs = server.wait_for_requests(2, T);
    assert_eq!(reqs[0].conn_id, reqs[1].conn_id);
    assert_eq!((reqs[0].index_on_conn, reqs[1].index_on_conn), (0, 1));
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].body, b"hello");
    assert_eq!(reqs[1].header("X-Test"), Some("1"));
    // The counter moves after the last byte is written: wait for it.
    server.expect_until(T, "2 replies", |s| s.replies_completed == 2);
    let s = server.stats();
    assert_eq!((s.connections_accepted, s.requests), (1, 2));
}

#[test]
fn tls_keep_alive_counts_one_connection_and_one_full_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, conn| {
        let tls = conn.tls.as_ref().expect("tls info");
        Reply::ok(format!("gen {:?}", tls.cert_generation))
    });
    let mut c = tls_client(&server, ca.client_config()).unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(c.peer_chain().unwrap(), leaf.chain_der());
    assert_eq!(c.get("/1").unwrap().text(), "gen Some(1)");
    assert_eq!(c.get("/2").unwrap().text(), "gen Some(1)");
    let s = server.stats();
    assert_eq!(
        (
            s.connections_accepted,
            s.handshakes_full,
            s.handshakes_resumed,
            s.requests
        ),
        (1, 1, 0, 2)
    );
    assert_eq!(
        server.connections()[0].tls.as_ref().unwrap().sni.as_deref(),
        Some("localhost")
    );
}

#[test]
fn chunked_reply_with_parts_and_trailers_is_decoded() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("hello, chunked world")
            .chunked()
            .parts(&[1, 4, 2])
            .part_delay(Duration::from_millis(2))
            .trailer("x-checksum", "42")
    });
    let mut c = Client::plain(server.addr(), T).unwrap();
    let r = c.get("/").unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "hello, chunked world");
    assert_eq!(r.trailers, vec![("x-checksum".to_owned(), "42".to_owned())]);
    // The connection is still usable after a chunked reply.
    assert_eq!(c.get("/").unwrap().text(), "hello, chunked world");
}

#[test]
fn chunked_request_body_and_expect_continue_are_parsed() {
    let server = TestServer::plain(|req, _| Reply::ok(req.body.clone()));
    let mut c = Client::plain(server.addr(), T).unwrap();
    c.send_raw(
        b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: v\r\n\r\n",
    )
    .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.interim, vec![100]);
    assert_eq!(r.text(), "abcde");
    let req = &server.requests()[0];
    assert!(req.chunked);
    assert_eq!(req.trailers, vec![("x-t".to_owned(), "v".to_owned())]);
}

#[test]
fn malformed_request_gets_400_and_close() {
    let server = TestServer::plain(|_, _| Reply::ok("never"));
    let mut c = Client::plain(server.addr(), T).unwrap();
    c.send_raw(b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().status, 400);
    assert!(c.is_closed_by_peer(T));
    assert_eq!(server.stats().bad_requests, 1);
}

#[test]
fn long_poll_holds_the_head_for_the_delay() {
    let server = TestServer::plain(|_, _| Reply::ok("late").delay(Duration::from_millis(80)));
    let mut c = Client::plain(server.addr(), T).unwrap();
    let start = Instant::now();
    assert_eq!(c.get("/poll").unwrap().text(), "late");
    assert!(start.elapsed() >= Duration::from_millis(80));
}

#[test]
fn rotation_new_handshakes_see_new_chain_resumed_ones_report_old() {
    let (ca, old) = ca_and_leaf();
    let new = ca.issue(&["localhost", "127.0.0.1"]);
    let server = TestServer::tls(&old, |_, _| Reply::ok("ok"));

    // A client with rustls's default resumption: full handshake, reads a
    // response (and so the session tickets), keeps its connection open.
    let resuming = ca.client_config();
    let mut live = tls_client(&server, resuming.clone()).unwrap();
    assert_eq!(live.get("/").unwrap().status, 200);
    assert_eq!(live.peer_chain().unwrap(), old.chain_der());

    assert_eq!(server.rotate_to(&new), 2);

    // The live connection keeps going across the rotation.
    assert_eq!(live.get("/again").unwrap().status, 200);

    // A fresh full handshake sees the new chain.
    let fresh = tls_client(&server, ca.client_config_no_resumption()).unwrap();
    assert_eq!(fresh.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(fresh.peer_chain().unwrap(), new.chain_der());
    // The client may finish its handshake before the server has read its Finished.
    server.expect_until(T, "second full handshake", |s| s.handshakes_full == 2);

    // The resuming client reconnects: resumed, and rustls reports the OLD chain.
    let mut again = tls_client(&server, resuming).unwrap();
    assert_eq!(again.get("/").unwrap().status, 200);
    assert_eq!(again.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(again.peer_chain().unwrap(), old.chain_der());

    let s = server.stats();
    assert_eq!((s.handshakes_full, s.handshakes_resumed), (2, 1));
    let gens: Vec<_> = server
        .connections()
        .iter()
        .map(|c| c.tls.as_ref().unwrap().cert_generation)
        .collect();
    assert_eq!(gens, vec![Some(1), Some(2), None]);
}

#[test]
fn rotation_works_with_tls12_and_a_session_cache() {
    let (ca, old) = ca_and_leaf();
    let new = ca.issue(&["localhost"]);
    let server = TestServer::builder()
        .tls(&old)
        .tls12_only()
        .resumption(Resumption::SessionCache)
        .start();
    let config = ca.client_config();
    tls_client(&server, config.clone())
        .unwrap()
        .get("/")
        .unwrap();
    server.rotate_to(&new);
    let c = tls_client(&server, config).unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(c.peer_chain().unwrap(), old.chain_der());
    let c = tls_client(&server, ca.client_config_no_resumption()).unwrap();
    assert_eq!(c.peer_chain().unwrap(), new.chain_der());
}

#[test]
fn resumption_off_makes_every_handshake_full() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .resumption(Resumption::Off)
        .start();
    let config = ca.client_config();
    tls_client(&server, config.clone())
        .unwrap()
        .get("/")
        .unwrap();
    let c = tls_client(&server, config).unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
}

#[test]
fn cut_mid_body_ends_the_connection_early() {
    let server = TestServer::plain(|_, _| Reply::ok(vec![b'x'; 1000]).cut_at(100));
    let mut c = Client::plain(server.addr(), T).unwrap();
    let err = c.get("/").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn reset_at_offset_sends_rst() {
    if !reset_supported() {
        return;
    }
    let server = TestServer::plain(|_, _| Reply::ok(vec![b'x'; 1000]).reset_at(10));
    let mut c = Client::plain(server.addr(), T).unwrap();
    let err = c.get("/").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn tls_cut_without_close_notify_is_an_unexpected_eof() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("abcdef").cut_at(3));
    let mut c = tls_client(&server, ca.client_config()).unwrap();
    let err = c.get("/").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn connection_close_header_closes_after_the_response() {
    let server = TestServer::plain(|_, _| Reply::ok("bye").header("Connection", "close"));
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(c.get("/").unwrap().text(), "bye");
    assert!(c.is_closed_by_peer(T));
    assert!(server.wait_idle(T));
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let server = TestServer::builder()
        .idle_timeout(Duration::from_millis(50))
        .start();
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    server.expect_until(T, "idle close", |s| s.idle_closed == 1);
    assert!(c.is_closed_by_peer(T));
}

#[test]
fn stall_and_close_delimited_and_garbage() {
    let server = TestServer::plain(|req, _| match req.path() {
        "/stall" => Reply::stall(),
        "/eof" => Reply::ok("until close").close_delimited(),
        _ => Reply::garbage(),
    });
    let mut c = Client::plain(server.addr(), T).unwrap();
    c.set_read_timeout(Duration::from_millis(50)).unwrap();
    let err = c.get("/stall").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );

    let mut c = Client::plain(server.addr(), T).unwrap();
    let r = c.get("/eof").unwrap();
    assert_eq!(
        (r.header("content-length"), r.text().as_str()),
        (None, "until close")
    );

    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(
        c.get("/garbage").unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

#[test]
fn accept_hook_can_send_garbage_instead_of_tls() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .on_accept(|_| Accept::SendRawThenClose(b"HTTP/1.1 400 not tls\r\n\r\n".to_vec()))
        .start();
    let err = tls_client(&server, ca.client_config())
        .err()
        .expect("handshake fails");
    assert!(err.to_string().to_lowercase().contains("corrupt"), "{err}");
}

#[test]
fn drop_closes_stalled_connections_and_joins_threads() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::builder()
        .tls(&leaf)
        .handler(|_, _| Reply::stall())
        .start();
    let mut clients: Vec<Client> = (0..3)
        .map(|_| tls_client(&server, ca.client_config()).unwrap())
        .collect();
    for c in &mut clients {
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    server.expect_until(T, "3 requests", |s| s.requests == 3);
    let start = Instant::now();
    drop(server);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        start.elapsed()
    );
    for c in &mut clients {
        assert!(c.is_closed_by_peer(T));
    }
}

#[test]
fn verification_failures_have_their_certificates() {
    let ca = TestCa::new("rotary test CA");
    let cases: Vec<(&str, Issued, &str)> = vec![
        (
            "expired",
            ca.leaf(&["localhost"]).expired().build(),
            "expired",
        ),
        (
            "not yet valid",
            ca.leaf(&["localhost"]).not_yet_valid().build(),
            "not valid yet",
        ),
        (
            "wrong host",
            ca.leaf(&["localhost"]).wrong_host().build(),
            "not valid for name",
        ),
        (
            "self-signed",
            ca.leaf(&["localhost"]).self_signed().build(),
            "unknownissuer",
        ),
        (
            "no server auth",
            ca.leaf(&["localhost"]).without_server_auth().build(),
            "extended key usage",
        ),
    ];
    for (what, leaf, needle) in cases {
        let server = TestServer::tls(&leaf, |_, _| Reply::ok("no"));
        let err = tls_client(&server, ca.client_config())
            .err()
            .unwrap_or_else(|| panic!("{what}: handshake succeeded"));
        let msg = err.to_string();
        assert!(msg.to_lowercase().contains(needle), "{what}: {msg}");
        server.expect_until(T, "failed handshake", |s| s.handshakes_failed == 1);
    }
    // And the good one passes.
    let leaf = ca.issue(&["localhost"]);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("yes"));
    assert_eq!(
        tls_client(&server, ca.client_config())
            .unwrap()
            .get("/")
            .unwrap()
            .text(),
        "yes"
    );
}

#[test]
fn ca_pem_temp_file_is_written_and_removed() {
    let ca = TestCa::new("file CA");
    let path = {
        let f = ca.write_pem_file();
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"));
        f.replace(b"other");
        assert_eq!(std::fs::read(f.path()).unwrap(), b"other");
        f.path().to_owned()
    };
    assert!(!path.exists());
    // SHA-256 of the empty string, to pin the helper.
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn many_concurrent_tls_connections_are_served() {
    let (ca, leaf) = ca_and_leaf();
    let served = Arc::new(AtomicU64::new(0));
    let s2 = served.clone();
    let server = TestServer::tls(&leaf, move |_, _| {
        s2.fetch_add(1, Ordering::SeqCst);
        Reply::ok("ok")
    });
    let config = ca.client_config_no_resumption();
    let mut clients: Vec<Client> = (0..100)
        .map(|_| tls_client(&server, config.clone()).unwrap())
        .collect();
    for c in &mut clients {
        assert_eq!(c.get("/").unwrap().status, 200);
    }
    assert_eq!(server.stats().connections_open, 100);
    assert_eq!(served.load(Ordering::SeqCst), 100);
    drop(clients);
    assert!(server.wait_idle(T));
}

#[test]
fn mtls_server_sees_the_client_chain() {
    let (ca, leaf) = ca_and_leaf();
    let client_cert = ca.issue_client("runner-1");
    let server = TestServer::builder()
        .tls(&leaf)
        .require_client_cert(ca.cert_der())
        .start();
    let mut c = tls_client(&server, ca.client_config_with_cert(&client_cert)).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    let conns = server.connections();
    let chain = conns[0].tls.as_ref().unwrap().client_chain.clone().unwrap();
    assert_eq!(chain, client_cert.chain_der());
    // Without a client certificate the handshake fails on the server's side.
    let _ = tls_client(&server, ca.client_config()).and_then(|mut c| c.get("/"));
    server.expect_until(T, "failed handshake", |s| s.handshakes_failed == 1);
}

#[test]
fn keepalive_requests_closes_after_the_nth_exchange() {
    let server = TestServer::builder().keepalive_requests(2).start();
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(c.get("/").unwrap().header("connection"), None);
    assert_eq!(c.get("/").unwrap().header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(T));
}

#[test]
fn close_idle_gracefully_sends_close_notify() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let mut c = tls_client(&server, ca.client_config()).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    server.close_idle_gracefully();
    // A clean TLS EOF (close_notify) reads as Ok(0), not UnexpectedEof.
    let mut c2 = c;
    assert_eq!(c2.read_to_end().unwrap(), b"");
    assert!(server.wait_idle(T));
}

#[test]
fn then_send_makes_an_idle_connection_readable() {
    let server = TestServer::plain(|_, _| {
        Reply::ok("ok").then_send(Duration::from_millis(5), "unasked junk\r\n")
    });
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(c.get("/").unwrap().text(), "ok");
    // Without sending anything, the next "response" is the junk.
    assert_eq!(
        c.read_response(false).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

#[test]
fn conn_info_times_order_accept_before_ready() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    tls_client(&server, ca.client_config())
        .unwrap()
        .get("/")
        .unwrap();
    let info = &server.connections()[0];
    assert!(info.ready_at.unwrap() >= info.accepted_at);
    assert!(server.requests()[0].received_at >= info.ready_at.unwrap());
}

#[test]
fn five_hundred_plain_connections_are_accepted_and_served() {
    let server = TestServer::plain(|_, _| Reply::ok("ok"));
    let mut clients: Vec<Client> = (0..500)
        .map(|_| Client::plain(server.addr(), T).unwrap())
        .collect();
    for c in &mut clients {
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    for c in &mut clients {
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
    assert_eq!(server.stats().connections_open, 500);
    drop(clients);
    assert!(server.wait_idle(T));
}

// ----- fault proxy -----

fn proxied(fault: Fault) -> (TestServer, FaultProxy) {
    let server =
        TestServer::plain(|req, _| Reply::ok(vec![b'x'; 1000]).header("x-path", req.path()));
    let proxy = FaultProxy::builder(server.addr())
        .seed(7)
        .always(fault)
        .start();
    (server, proxy)
}

#[test]
fn proxy_forwards_faithfully_without_a_fault() {
    let (server, proxy) = proxied(Fault::None);
    let mut c = Client::plain(proxy.addr(), T).unwrap();
    assert_eq!(c.get("/a").unwrap().body.len(), 1000);
    assert_eq!(c.get("/b").unwrap().header("x-path"), Some("/b"));
    assert_eq!(server.stats().connections_accepted, 1);
    let s = proxy.stats();
    assert_eq!((s.connections, s.faulted, s.fired), (1, 0, 0));
}

#[test]
fn proxy_resets_toward_the_client_at_an_offset() {
    if !reset_supported() {
        return;
    }
    let (_server, proxy) = proxied(Fault::Reset {
        dir: Dir::ToClient,
        at: 50,
    });
    let mut c = Client::plain(proxy.addr(), T).unwrap();
    let err = c.get("/").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let s = proxy.stats();
    assert_eq!((s.fired, s.resets), (1, 1));
}

#[test]
fn proxy_closes_toward_the_server_mid_request() {
    let (server, proxy) = proxied(Fault::Close {
        dir: Dir::ToServer,
        at: 10,
    });
    let mut c = Client::plain(proxy.addr(), T).unwrap();
    assert!(c.get("/").is_err());
    assert_eq!(server.stats().requests, 0);
    assert_eq!(proxy.stats().closes, 1);
}

#[test]
fn proxy_splits_delays_and_survives() {
    for fault in [
        Fault::OneByteSegments { dir: Dir::ToClient },
        Fault::OneByteSegments { dir: Dir::ToServer },
        Fault::Delay {
            dir: Dir::ToClient,
            each: Duration::from_millis(2),
        },
        Fault::Stall {
            dir: Dir::ToClient,
            at: 30,
            for_: Some(Duration::from_millis(20)),
        },
    ] {
        let (_server, proxy) = proxied(fault.clone());
        let mut c = Client::plain(proxy.addr(), T).unwrap();
        assert_eq!(c.get("/").unwrap().body.len(), 1000, "{fault:?}");
        assert_eq!(proxy.stats().fired, 1, "{fault:?}");
    }
}

#[test]
fn proxy_garbage_corrupts_the_response() {
    let (_server, proxy) = proxied(Fault::Garbage {
        dir: Dir::ToClient,
        at: 0,
        bytes: b"\x00\x01junk\n".to_vec(),
    });
    let mut c = Client::plain(proxy.addr(), T).unwrap();
    assert_eq!(c.get("/").unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert_eq!(proxy.stats().garbage, 1);
}

#[test]
fn proxy_refuses_and_stalls_forever_until_dropped() {
    let (_server, proxy) = proxied(Fault::RefuseConnect);
    // The RST may already fail the connect itself, or else the first exchange.
    if let Ok(mut c) = Client::plain(proxy.addr(), T) {
        assert!(c.get("/").is_err());
    }
    assert!(proxy.wait_until(T, |s| s.refused == 1));

    let (_server, proxy) = proxied(Fault::Stall {
        dir: Dir::ToClient,
        at: 0,
        for_: None,
    });
    let mut c = Client::plain(proxy.addr(), T).unwrap();
    c.set_read_timeout(Duration::from_millis(50)).unwrap();
    let err = c.get("/").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    let start = Instant::now();
    drop(proxy);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn proxy_plan_is_reproducible_from_its_seed() {
    let server = TestServer::plain(|_, _| Reply::ok("ok"));
    let run = |seed| {
        let proxy = FaultProxy::builder(server.addr())
            .seed(seed)
            .random_faults(0.5, 100)
            .start();
        for _ in 0..20 {
            if let Ok(mut c) = Client::plain(proxy.addr(), Duration::from_millis(200)) {
                let _ = c.get("/");
            }
        }
        proxy
            .connections()
            .into_iter()
            .map(|c| c.fault)
            .collect::<Vec<_>>()
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert!(a.iter().any(|f| *f != Fault::None) && a.contains(&Fault::None));
}

#[test]
fn intermediate_chains_verify_against_the_root() {
    let root = TestCa::new("root");
    let mid = root.intermediate("intermediate");
    let leaf = mid.issue(&["localhost"]);
    assert_eq!(leaf.chain_der().len(), 2);
    assert_eq!(leaf.chain_der()[1], mid.cert_der());
    assert_eq!(leaf.ca_der(), root.cert_der());
    assert!(leaf.chain_pem().matches("BEGIN CERTIFICATE").count() == 2);
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let c = tls_client(&server, mid.client_config()).unwrap();
    assert_eq!(c.peer_chain().unwrap(), leaf.chain_der());
}

#[test]
fn head_and_204_replies_have_no_body() {
    let server = TestServer::plain(|req, _| match req.method.as_str() {
        "HEAD" => Reply::ok("twelve bytes"),
        _ => Reply::status(204),
    });
    let mut c = Client::plain(server.addr(), T).unwrap();
    let r = c.send("HEAD", "/", &[], b"").unwrap();
    assert_eq!((r.header("content-length"), r.body.len()), (Some("12"), 0));
    let r = c.get("/").unwrap();
    assert_eq!((r.status, r.header("content-length")), (204, None));
    // Both left the connection in sync.
    assert_eq!(c.send("HEAD", "/", &[], b"").unwrap().status, 200);
}

#[test]
fn expires_in_sets_a_near_whole_second_not_after_that_verifies_now() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let ca = TestCa::new("rotary test CA");
    let leaf = ca
        .leaf(&["localhost"])
        .expires_in(Duration::from_secs(30))
        .build();
    let left = leaf.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(28) && left <= Duration::from_secs(30));
    assert_eq!(
        leaf.not_after()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
        0
    );
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("ok"));
    let mut c = tls_client(&server, ca.client_config()).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert_eq!(server.requests_on(1).len(), 1);
    assert!(server.connection(1).is_some());
}

#[test]
fn random_faults_through_the_proxy_end_every_exchange_and_drop_promptly() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok(vec![b'y'; 3000]));
    let proxy = FaultProxy::builder(server.addr())
        .random_faults(0.3, 4000)
        .start();
    let seed = proxy.seed();
    let config = ca.client_config();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..60 {
        let result = Client::tls(
            proxy.addr(),
            "localhost",
            config.clone(),
            Duration::from_millis(300),
        )
        .and_then(|mut c| c.get("/"));
        match result {
            Ok(r) if r.body.len() == 3000 => ok += 1,
            Ok(r) => panic!(
                "seed {seed}: a corrupted body passed as {} bytes",
                r.body.len()
            ),
            Err(_) => failed += 1,
        }
    }
    let s = proxy.stats();
    assert_eq!(s.connections, 60, "seed {seed}");
    assert!(
        ok > 0 && ok + failed == 60,
        "seed {seed}: {ok} ok, {failed} failed, {s:?}"
    );
    let start = Instant::now();
    drop(proxy);
    drop(server);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "seed {seed}: drop took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_generated_body_is_the_pattern_whatever_the_framing_and_a_cut_lands_inside_it() {
    let pattern = Pattern::new(7);
    let fill = pattern.filler();
    let server = TestServer::plain(move |req, _| {
        let reply = Reply::ok("").generated(300_000, fill.clone());
        match req.path() {
            "/chunked" => reply.chunked().parts(&[1, 70_000, 5]),
            "/cut" => {
                let (head, total) = reply.wire_len(false);
                assert_eq!(total, head + 300_000);
                reply.cut_at(head as usize + 100_000)
            }
            _ => reply,
        }
    });
    let mut c = Client::plain(server.addr(), T).unwrap();
    let r = c.get("/length").unwrap();
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.body, pattern.bytes(300_000));
    let r = c.get("/chunked").unwrap();
    assert_eq!(r.body, pattern.bytes(300_000));
    let head = c.get("/cut");
    assert!(head.is_err(), "the cut ends the body short: {head:?}");
    // The cut came after exactly 100,000 body bytes.
    let mut c = Client::plain(server.addr(), T).unwrap();
    c.send_raw(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let all = c.read_to_end().unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&all[at..], &pattern.bytes(100_000)[..]);
}

#[test]
fn bodies_not_kept_are_counted_and_hashed_as_they_arrive() {
    let server = TestServer::builder()
        .keep_bodies(false)
        .handler(|req, _| Reply::ok(format!("{} {}", req.body_len, req.body.len())))
        .start();
    let body = Pattern::new(3).bytes(200_000);
    let mut c = Client::plain(server.addr(), T).unwrap();
    let r = c.send("PUT", "/up", &[], &body).unwrap();
    assert_eq!(r.text(), "200000 0");
    let mut chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(70_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    c.send_raw(&chunked).unwrap();
    assert_eq!(c.read_response(false).unwrap().text(), "200000 0");
    for req in server.wait_for_requests(2, T) {
        assert_eq!((req.body_len, req.body_complete), (200_000, true));
        assert_eq!(req.body_sha256, sha256(&body));
        assert_eq!(req.body_sha256, Pattern::new(3).sha256(200_000));
    }
}

#[test]
fn an_on_head_plan_answers_before_the_body_or_after_part_of_it() {
    let server = TestServer::builder()
        .on_head(|req, _| match req.path() {
            "/early" => BodyPlan::early(0, Reply::text(413, "too big")),
            "/part" => BodyPlan::early(1000, Reply::reset()),
            _ => BodyPlan::Read,
        })
        .handler(|req, _| Reply::ok(format!("read {}", req.body_len)))
        .start();
    let body = vec![b'x'; 5000];
    // Early: the answer comes although the body was never sent.
    let mut c = Client::plain(server.addr(), T).unwrap();
    c.send_raw(b"PUT /early HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (413, "too big"));
    assert!(
        c.is_closed_by_peer(T),
        "an early answer ends the connection"
    );
    // Part: 1,000 bytes are read, then a reset.
    let mut c = Client::plain(server.addr(), T).unwrap();
    let _ = c.send("PUT", "/part", &[], &body);
    // Read: the whole body.
    let mut c = Client::plain(server.addr(), T).unwrap();
    assert_eq!(
        c.send("PUT", "/read", &[], &body).unwrap().text(),
        "read 5000"
    );
    let reqs = server.wait_for_requests(3, T);
    let by_path = |p: &str| reqs.iter().find(|r| r.path() == p).unwrap();
    assert_eq!(
        (by_path("/early").body_len, by_path("/early").body_complete),
        (0, false)
    );
    assert_eq!(
        (by_path("/part").body_len, by_path("/part").body_complete),
        (1000, false)
    );
    assert_eq!(by_path("/part").body_sha256, sha256(&body[..1000]));
    assert_eq!(
        (by_path("/read").body_len, by_path("/read").body_complete),
        (5000, true)
    );
}

#[test]
fn a_pattern_is_the_same_from_any_offset_and_its_check_names_the_first_wrong_byte() {
    let p = Pattern::new(99);
    let whole = p.bytes(20_000);
    assert_ne!(whole, Pattern::new(100).bytes(20_000));
    let mut piece = vec![0; 5000];
    p.fill(4093, &mut piece);
    assert_eq!(piece, whole[4093..9093]);
    // A reader in small pieces gives the same bytes.
    let mut sizes = [1usize, 7, 4096, 3].into_iter().cycle();
    let mut read = Vec::new();
    io::Read::read_to_end(
        &mut p.reader(20_000, move || sizes.next().unwrap()),
        &mut read,
    )
    .unwrap();
    assert_eq!(read, whole);
    // The check: exact, short, one byte off, too long.
    let mut ok = PatternCheck::new(p, 20_000);
    ok.update(&whole[..100]);
    ok.update(&whole[100..]);
    assert_eq!(ok.complete(), Ok(()));
    let mut short = PatternCheck::new(p, 20_000);
    short.update(&whole[..19_999]);
    assert!(short.prefix_ok().is_ok() && short.complete().is_err());
    let mut bad = whole.clone();
    bad[12_345] ^= 1;
    let mut wrong = PatternCheck::new(p, 20_000);
    wrong.update(&bad);
    assert_eq!(
        wrong.prefix_ok(),
        Err("byte 12345 differs (of 20000 expected)".into())
    );
    let mut long = PatternCheck::new(p, 100);
    long.update(&whole[..101]);
    assert!(long.prefix_ok().is_err());
    // A block moved by whole blocks is caught by its index.
    let mut moved = PatternCheck::new(p, 8192);
    moved.update(&whole[4096..8192]);
    assert!(moved.prefix_ok().is_err());
}
