//! Request encoding: request line, `Host`, user headers and body framing.

use bytes::{BufMut, BytesMut};
use http::header::{HeaderMap, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Uri};

use crate::Error;

/// How the request target is written on the request line.
///
/// `CONNECT` requests always use the authority-form (`host:port`, RFC 9112
/// §3.2.3), whatever is chosen here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetForm {
    /// `GET /path?query HTTP/1.1` (default).
    #[default]
    Origin,
    /// `GET http://host/path HTTP/1.1`, for a forward proxy.
    Absolute,
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No framing header (a method without content, sent without a body).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// The framing of a request sent whole with `body`.
    ///
    /// A non-empty body gets its length. An empty or absent body gets
    /// `Content-Length: 0` only for methods that define a meaning for content
    /// (POST, PUT, PATCH), as RFC 9110 §8.6 asks, and no header otherwise.
    pub(crate) fn for_body(method: &Method, body: Option<&[u8]>) -> Framing {
        match body {
            Some(body) if !body.is_empty() => Framing::Length(body.len() as u64),
            _ if [Method::POST, Method::PUT, Method::PATCH].contains(method) => Framing::Length(0),
            _ => Framing::None,
        }
    }
}

/// Check one request header: the name must be a token and the value must not
/// contain CR, LF or NUL, any of which would let it break the framing.
///
/// [`http::HeaderName`] and [`http::HeaderValue`] already guarantee this, so
/// through a [`HeaderMap`] this never fails; it is the codec's own defence and
/// is usable on raw bytes.
pub fn check_header(name: &[u8], value: &[u8]) -> Result<(), Error> {
    let refuse = |reason| Error::InvalidRequestHeader {
        name: String::from_utf8_lossy(name).into_owned(),
        reason,
    };
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(refuse("name is not a token"));
    }
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | b'\0')) {
        return Err(refuse("value contains CR, LF or NUL"));
    }
    Ok(())
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Write a request head with `framing` into `out`, after validating every
/// header; on error nothing is written.
///
/// `Host` comes from the URI's authority (without user info) unless the
/// caller supplied one. Caller-supplied `Content-Length` and
/// `Transfer-Encoding` are dropped: the framing written is always the codec's
/// own, so the bytes on the wire can never disagree with it.
pub(crate) fn encode_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    framing: Framing,
    form: TargetForm,
    out: &mut BytesMut,
) -> Result<(), Error> {
    for (name, value) in headers {
        check_header(name.as_str().as_bytes(), value.as_bytes())?;
    }
    let connect = *method == Method::CONNECT;
    let absolute = form == TargetForm::Absolute && !connect;
    if (absolute && uri.scheme().is_none()) || ((absolute || connect) && uri.authority().is_none())
    {
        return Err(Error::MissingAuthority);
    }

    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    if connect {
        // RFC 9112 §3.2.3: CONNECT takes the authority-form, `host:port`.
        put_host(uri, out);
        if uri.port().is_none() {
            match uri.scheme_str() {
                Some("https") => out.put_slice(b":443"),
                Some("http") => out.put_slice(b":80"),
                _ => {}
            }
        }
    } else {
        if let Some(scheme) = uri.scheme().filter(|_| absolute) {
            out.put_slice(scheme.as_str().as_bytes());
            out.put_slice(b"://");
            put_host(uri, out);
        }
        match uri.path() {
            "" => out.put_u8(b'/'),
            path => out.put_slice(path.as_bytes()),
        }
        if let Some(query) = uri.query() {
            out.put_u8(b'?');
            out.put_slice(query.as_bytes());
        }
    }
    out.put_slice(b" HTTP/1.1\r\n");

    match headers.get(HOST) {
        Some(host) => put_field(out, b"host", host.as_bytes()),
        None => {
            // RFC 9112 §3.2: without an authority, Host is sent empty.
            out.put_slice(b"host: ");
            put_host(uri, out);
            out.put_slice(b"\r\n");
        }
    }
    for (name, value) in headers {
        if ![HOST, CONTENT_LENGTH, TRANSFER_ENCODING].contains(name) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// `host[:port]` of the URI's authority, without user info.
fn put_host(uri: &Uri, out: &mut BytesMut) {
    if let Some(authority) = uri.authority() {
        // The authority is already validated: drop `userinfo@` and an empty
        // port's `:`, and what is left is `host[:port]`.
        let s = authority.as_str();
        let s = s.rsplit_once('@').map_or(s, |(_, rest)| rest);
        out.put_slice(s.strip_suffix(':').unwrap_or(s).as_bytes());
    }
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Write one chunk (`size CRLF data CRLF`); empty data writes nothing, since
/// an empty chunk would end the body.
pub(crate) fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    put_hex(out, data.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The last chunk with a trailer section (fields already checked).
pub(crate) fn put_last_chunk_with(out: &mut BytesMut, trailers: &HeaderMap) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, n: u64) {
    put_radix(out, n, 10);
}

fn put_hex(out: &mut BytesMut, n: u64) {
    put_radix(out, n, 16);
}

fn put_radix(out: &mut BytesMut, mut n: u64, radix: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = DIGITS[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        framing: Framing,
        form: TargetForm,
    ) -> Result<String, Error> {
        let uri: Uri = uri.parse().expect("test uri");
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name: http::HeaderName = name.parse().expect("test header name");
            map.append(name, value.parse().expect("test header value"));
        }
        let mut out = BytesMut::new();
        encode_head(&method, &uri, &map, framing, form, &mut out)?;
        Ok(String::from_utf8(out.to_vec()).expect("ascii head"))
    }

    macro_rules! head_cases {
        ($($name:ident: $method:expr, $uri:expr, $headers:expr, $framing:expr, $form:expr
            => $expect:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = encode($method, $uri, &$headers, $framing, $form);
                assert_eq!(got.as_deref(), Ok($expect));
            }
        )*};
    }

    use Framing::{Chunked, Length};
    use TargetForm::{Absolute, Origin};

    head_cases! {
        request_origin_form_with_query:
            Method::GET, "http://example.com/a/b?x=1&y", [], Framing::None, Origin
            => "GET /a/b?x=1&y HTTP/1.1\r\nhost: example.com\r\n\r\n";
        request_empty_path_becomes_slash:
            Method::GET, "http://example.com", [], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n";
        request_host_keeps_explicit_port:
            Method::GET, "https://example.com:8443/", [], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: example.com:8443\r\n\r\n";
        request_host_drops_user_info:
            Method::GET, "http://user:pw@example.com/", [], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n";
        request_host_drops_an_empty_port:
            Method::GET, "http://u@example.com:/", [], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n";
        request_host_for_ipv6_keeps_brackets:
            Method::GET, "http://[::1]:8080/", [], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n";
        request_user_host_overrides_uri_authority:
            Method::GET, "http://10.0.0.1/", [("host", "example.com")], Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n";
        request_relative_uri_sends_empty_host:
            Method::GET, "/only/path", [], Framing::None, Origin
            => "GET /only/path HTTP/1.1\r\nhost: \r\n\r\n";
        request_absolute_form_for_proxy:
            Method::GET, "http://u@example.com:81/p?q", [], Framing::None, Absolute
            => "GET http://example.com:81/p?q HTTP/1.1\r\nhost: example.com:81\r\n\r\n";
        request_user_headers_keep_order_and_repeats:
            Method::GET, "http://h/", [("accept", "*/*"), ("x-a", "1"), ("x-a", "2")],
            Framing::None, Origin
            => "GET / HTTP/1.1\r\nhost: h\r\naccept: */*\r\nx-a: 1\r\nx-a: 2\r\n\r\n";
        request_content_length_framing:
            Method::POST, "http://h/", [], Length(12345), Origin
            => "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 12345\r\n\r\n";
        request_chunked_framing:
            Method::PUT, "http://h/", [], Chunked, Origin
            => "PUT / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n";
        request_user_framing_headers_are_replaced_by_the_codecs:
            Method::POST, "http://h/", [("content-length", "99"), ("transfer-encoding", "gzip")],
            Length(2), Origin
            => "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n";
        request_extension_method_is_written_verbatim:
            Method::from_bytes(b"PURGE").expect("token"), "http://h/x", [], Framing::None, Origin
            => "PURGE /x HTTP/1.1\r\nhost: h\r\n\r\n";
    }

    head_cases! {
        request_connect_uses_authority_form:
            Method::CONNECT, "example.com:8443", [], Framing::None, Origin
            => "CONNECT example.com:8443 HTTP/1.1\r\nhost: example.com:8443\r\n\r\n";
        request_connect_adds_the_scheme_default_port:
            Method::CONNECT, "https://example.com/ignored", [], Framing::None, Absolute
            => "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n";
    }

    #[test]
    fn request_connect_without_authority_is_refused() {
        let got = encode(Method::CONNECT, "/path", &[], Framing::None, Origin);
        assert_eq!(got, Err(Error::MissingAuthority));
    }

    #[test]
    fn request_absolute_form_without_authority_is_refused() {
        let got = encode(Method::GET, "/path", &[], Framing::None, Absolute);
        assert_eq!(got, Err(Error::MissingAuthority));
    }

    #[test]
    fn request_framing_follows_method_and_body() {
        let cases: [(Method, Option<&[u8]>, Framing); 6] = [
            (Method::GET, None, Framing::None),
            (Method::GET, Some(b""), Framing::None),
            (Method::HEAD, None, Framing::None),
            (Method::GET, Some(b"abc"), Length(3)),
            (Method::POST, None, Length(0)),
            (Method::PATCH, Some(b""), Length(0)),
        ];
        for (method, body, expect) in cases {
            assert_eq!(
                Framing::for_body(&method, body),
                expect,
                "{method} {body:?}"
            );
        }
    }

    #[test]
    fn header_check_refuses_non_token_names() {
        for name in [&b""[..], b"bad name", b"x:y", b"caf\xc3\xa9", b"a\r\nb"] {
            let err = check_header(name, b"v").expect_err("name must be refused");
            assert!(
                matches!(err, Error::InvalidRequestHeader { reason, .. } if reason.contains("token"))
            );
        }
    }

    #[test]
    fn header_check_refuses_cr_lf_nul_in_values_and_names_the_header() {
        for value in [&b"a\rb"[..], b"a\nb", b"a\0b", b"\r\n\r\nGET / HTTP/1.1"] {
            let err = check_header(b"x-evil", value).expect_err("value must be refused");
            assert_eq!(
                err,
                Error::InvalidRequestHeader {
                    name: "x-evil".into(),
                    reason: "value contains CR, LF or NUL"
                }
            );
            assert!(err.to_string().contains("x-evil"));
        }
        assert_eq!(check_header(b"x-ok", b"tab\tand obs-text \xff"), Ok(()));
    }

    #[test]
    fn chunks_are_hex_framed_and_empty_data_writes_nothing() {
        let mut out = BytesMut::new();
        put_chunk(&mut out, b"");
        put_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..], &b"1a\r\nxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"[..]);
    }

    #[test]
    fn radix_writer_handles_zero_and_u64_max() {
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        out.put_u8(b' ');
        put_decimal(&mut out, u64::MAX);
        out.put_u8(b' ');
        put_hex(&mut out, u64::MAX);
        assert_eq!(&out[..], &b"0 18446744073709551615 ffffffffffffffff"[..]);
    }
}
