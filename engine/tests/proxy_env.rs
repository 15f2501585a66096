//! `Proxies::from_env` with the real process environment, in a test binary
//! of its own (setting variables here cannot reach other tests):
//! `HTTPS_PROXY` and `NO_PROXY` are read when it is called, and the engine
//! keeps what it was given.

mod driver;
mod support;

use std::time::Duration;

use driver::*;
use rotary::{Proxies, RequestOptions};
use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn the_environment_is_read_when_asked_and_kept_by_the_engine() {
    let (ca, leaf) = ca_and_leaf();
    let server = TestServer::tls(&leaf, |_, _| Reply::ok("env"));
    let proxy = ConnectProxy::start(ProxyScript::Tunnel {
        upstream: server.addr(),
    });
    // The only test in this binary: nothing else reads the environment.
    std::env::set_var("HTTPS_PROXY", proxy.url(None));
    std::env::set_var("NO_PROXY", "direct.invalid");
    std::env::remove_var("https_proxy");
    std::env::remove_var("no_proxy");
    let from_env = Proxies::from_env().expect("a proxy url that parses");
    let (mut engine, _ca) = engine_for(&ca, |c| c.proxy = from_env);
    // Changing it afterwards changes nothing for this engine.
    std::env::set_var("HTTPS_PROXY", "http://127.0.0.1:1");
    let id = engine.submit(get(&server.url("/")), RequestOptions::default());
    let out = finish(&mut engine, &[id], T);
    assert_eq!(out.response(id).body().as_ref(), b"env");
    assert_eq!(out.opened()[0].peer_addr, proxy.addr());
    assert_eq!(proxy.heads().len(), 1);
    assert_drained(&mut engine);

    // A malformed proxy URL there is an error naming the variable.
    std::env::set_var("HTTPS_PROXY", "socks5://127.0.0.1:1080");
    let err = Proxies::from_env().expect_err("bad proxy url");
    assert!(matches!(err, rotary::Error::InvalidProxy(_)), "{err:?}");
    assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
}
