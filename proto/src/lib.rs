//! Sans-IO HTTP/1.1 client codec for rotary.
//!
//! No sockets, no clocks: the caller writes the bytes the [`Codec`] puts into
//! an output buffer, feeds it the bytes it reads, and tells it about EOF. One
//! `Codec` per connection carries one exchange at a time and says after each
//! whether the connection may carry another ([`Verdict`]).
//!
//! ```
//! use bytes::BytesMut;
//! use http::{HeaderMap, Method, Uri};
//! use rotary_proto::{Codec, ResponseEvent, Limits, State, TargetForm};
//!
//! let mut codec = Codec::new(Limits::default());
//! let mut out = BytesMut::new();
//! let uri: Uri = "http://example.com/jobs?wait=50".parse()?;
//! codec.send_request(&Method::GET, &uri, &HeaderMap::new(), None, TargetForm::Origin, &mut out)?;
//! assert_eq!(&out[..], b"GET /jobs?wait=50 HTTP/1.1\r\nhost: example.com\r\n\r\n");
//!
//! // ... write `out` to the socket; append what the socket yields to `input` ...
//! let mut input = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
//! let mut body = Vec::new();
//! while let Some(event) = codec.poll_response(&mut input)? {
//!     match event {
//!         ResponseEvent::Head(head) => assert_eq!(head.status, 200),
//!         ResponseEvent::Data(data) => body.extend_from_slice(&data),
//!         ResponseEvent::End { verdict, .. } => assert!(verdict.keep_alive()),
//!         ResponseEvent::Continue => unreachable!("no Expect: 100-continue was sent"),
//!     }
//! }
//! assert_eq!(body, b"ok");
//! assert_eq!(codec.state(), State::Done);
//! // On EOF from the peer: `codec.handle_eof()` ends a close-delimited body,
//! // and is an error inside a head or a delimited body.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules: `request` encodes requests, `response` parses heads, `body` picks
//! the framing (RFC 9112 §6.3) and `chunked` decodes the chunked coding,
//! `keepalive` decides reuse, `codec` ties them into the exchange state
//! machine.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod body;
mod chunked;
mod codec;
mod error;
mod keepalive;
mod request;
mod response;

#[doc(hidden)]
pub mod fuzzing;

pub use codec::{Codec, Limits, ResponseEvent, State};
pub use error::Error;
pub use keepalive::{keep_alive_hints, CloseCause, KeepAliveHints, Verdict};
pub use request::{check_header, TargetForm};
pub use response::{NameCache, ResponseHead};
