//! rotary: a readiness-driven HTTP/1.1-over-TLS client engine whose
//! connections have scheduled lifetimes.
//!
//! CI runners long-poll their coordinator over one keep-alive TLS connection.
//! With ordinary clients it lives forever, so a certificate rotation at the
//! coordinator's edge never reaches the runner, which keeps handing jobs the
//! stale chain. rotary puts every time-related decision on a timer wheel —
//! max age with jitter, graceful drain, make-before-break replacement, idle
//! and request deadlines — and reconnects with a full handshake, so a new
//! chain is seen (and reported with [`Event::ChainChanged`]) within one max age.
//!
//! # Shape
//!
//! * One [`Engine`] per thread: a `mio::Poll`, connections in a slab (the slab
//!   key is the mio token), requests in a slab, a hierarchical timer wheel.
//! * [`Engine::submit`] takes an `http::Request` whose body is anything
//!   that converts into a [`Body`]: `()`, bytes, a string, a file
//!   ([`Body::file`]), a reader ([`Body::reader`]) or a stream the host
//!   feeds ([`Body::stream`]); results come out as [`Event`]s from
//!   [`Engine::next_event`] after [`Engine::poll`]. Each request ends with
//!   exactly one terminal event.
//! * Embedding in a host's mio loop: [`Engine::embedded`],
//!   [`Engine::handle_event`], [`Engine::next_timeout`], [`Engine::handle_timeouts`].
//! * Other threads submit through a [`Handle`]; [`Engine::execute`] runs one
//!   request to completion.
//! * Hosts without a loop use [`Client`]: the engine behind blocking calls,
//!   driven by the thread that waits on it (a thread of its own drives it
//!   while nobody waits), bodies read and written as `std::io` streams.
//! * Every TLS connection reports its [`PeerChain`]: what the server
//!   presented, the [`VerifiedPath`] rotary's verifier built from it (leaf,
//!   intermediates used, trust anchor), and [`PeerChain::ca_bundle`], the
//!   PEM a job should trust to reach any server with a certificate from the
//!   same CA.
//!
//! * Forward proxies ([`Config::proxy`], [`Proxies`]), `http://` or
//!   `https://` (TLS to the proxy with its own trust, then the origin's TLS
//!   inside it): `https://` origins through `CONNECT` tunnels, `http://` in
//!   absolute-form, Basic credentials, the environment read with curl's
//!   rules; the chain reported is always the origin's, an `https://`
//!   proxy's apart ([`ConnectionInfo::proxy_tls`]).
//!
//! TLS is rustls 0.23 on the *ring* provider by default (cargo feature
//! `ring`), or on aws-lc-rs (feature `aws-lc-rs`), which adds the hybrid
//! post-quantum key exchange X25519MLKEM768, offered first; `fips` selects
//! AWS-LC's FIPS module. See [`crypto_provider`] and the README's notes
//! on choosing one.
//!
//! ```no_run
//! use bytes::Bytes;
//! let mut engine = rotary::Engine::new(rotary::Config::default())?;
//! let req = http::Request::get("https://example.com/").body(Bytes::new())?;
//! let resp = engine.execute(req, rotary::RequestOptions::default())?;
//! println!("{}", resp.status());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod body;
mod chain;
mod client;
mod config;
mod cred_file;
mod credentials;
mod crl;
mod der;
mod dns;
mod engine;
mod error;
mod event;
#[cfg(feature = "test-hooks")]
pub mod fuzzing;
mod identity;
mod keys;
mod origin;
mod path;
mod provider;
mod proxy;
mod proxy_tls;
mod redact;
mod session;
mod sock;
mod stats;
mod store;
mod tls;
mod verifier;
mod verify_cache;
#[cfg(feature = "test-hooks")]
pub mod wheel;
#[cfg(not(feature = "test-hooks"))]
mod wheel;

pub use body::Body;
pub use chain::PeerChain;
pub use client::{Client, Pending, ResponseBody, LIFECYCLE_CAPACITY};
pub use config::{
    BuildError, ClientIdentity, Config, ConfigError, CrlExpiry, IdentityExpiry, OnChainChange,
    OnRevocation, Policy, RequestOptions, Resumption, Timeouts, Trust,
};
pub use crl::RevokedCertificate;
pub use dns::{Resolver, SystemResolver};
pub use engine::{Engine, Handle, Progress};
pub use error::{Deadline, Error, Phase, ProxyFailure, RedirectError};
pub use event::{
    ChainRequestId, CloseReason, ConnId, ConnectionInfo, CredentialReason, Event, Handshake,
    ProxyTlsInfo, RequestId, ServedBy, Trailers,
};
pub use origin::Origin;
pub use path::{Anchor, NoCaBundle, PathEntry, PathRole, VerifiedPath};
pub use provider::{crypto_provider, CRYPTO_PROVIDER};
pub use proxy::{NoProxy, Proxies, Proxy};

/// The crate rotary's API is written in (`Request`, `Response`, `Uri`,
/// `HeaderMap`, `StatusCode`), re-exported so a caller needs no
/// version-matched dependency of its own: `rotary::http::Request`.
pub use http;

/// The byte buffers of request and response bodies (`Bytes`), re-exported
/// for the same reason.
pub use bytes;

/// The event loop an embedding host registers the engine with
/// ([`Engine::embedded`]), re-exported for the same reason.
pub use mio;
pub use stats::{OriginStats, Stats};

#[cfg(feature = "test-hooks")]
pub use sock::{Network, Pipe};

/// The README's code, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
