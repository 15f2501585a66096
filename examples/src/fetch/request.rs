//! The request fetch submits: the method, the URL without its userinfo,
//! the `-H` headers, and what curl adds on its own: `Authorization: Basic`
//! from `-u` or the URL's `user:pass@`, and a form `Content-Type` for `-d`.

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Uri};

use crate::Failure;

use super::opts::Opts;

/// What `-d` is sent as unless `-H` says otherwise, as in curl.
const FORM: &str = "application/x-www-form-urlencoded";

/// The request `o` describes.
pub(super) fn build(o: &Opts) -> Result<Request<Bytes>, Failure> {
    let method = match (&o.method, o.head, &o.data) {
        (Some(m), _, _) => m.as_str(),
        (None, true, _) => "HEAD",
        (None, false, Some(_)) => "POST",
        (None, false, None) if o.upload.is_some() => "PUT",
        (None, false, None) => "GET",
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::usage(format!("bad method {method:?}")))?;
    let (url, userinfo) = split_userinfo(&o.url);
    let uri: Uri = url
        .parse()
        .map_err(|e| Failure::usage(format!("bad URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => {}
        _ => {
            return Err(Failure::usage(format!(
                "bad URL {url:?}: it needs http:// or https:// and a host"
            )))
        }
    }
    let credentials = match &o.user {
        Some(user) if user.contains(':') => Some(user.as_bytes().to_vec()),
        Some(_) => {
            return Err(Failure::usage(
                "-u needs USER:PASS (fetch does not prompt for a password)",
            ))
        }
        None => userinfo.as_deref().map(credentials_of),
    };
    // A header named with -H, to send or (`Name:`) to leave out, replaces
    // the one fetch would add.
    let named = |name: &HeaderName| {
        o.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()))
    };
    let mut request = Request::new(Bytes::from(o.data.clone().unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Some(c) = credentials.filter(|_| !named(&AUTHORIZATION)) {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
        let value = HeaderValue::from_str(&basic)
            .map_err(|_| Failure::usage("the credentials do not fit in a header"))?;
        headers.insert(AUTHORIZATION, value);
    }
    for h in &o.headers {
        let Some(value) = &h.value else { continue };
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Failure::usage(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| Failure::usage(format!("bad value for header {}", h.name)))?;
        headers.append(name, value);
    }
    if o.data.is_some() && !named(&CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM));
    }
    Ok(request)
}

/// `url` without the `userinfo@` of its authority, and that userinfo.
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((info, host)) => (format!("{scheme}://{host}{tail}"), Some(info.to_owned())),
        None => (url.to_owned(), None),
    }
}

/// `user:password` of a URL's userinfo, percent-decoded (a missing
/// password is empty, as in curl).
fn credentials_of(userinfo: &str) -> Vec<u8> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut c = percent_decode(user);
    c.push(b':');
    c.extend(percent_decode(password));
    c
}

/// `%XX` escapes decoded; anything else, a malformed escape included, as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_leaves_the_url_and_is_percent_decoded() {
        let (url, info) = split_userinfo("https://us%65r:p%40ss:w@host:8443/a@b?c=@");
        assert_eq!(url, "https://host:8443/a@b?c=@");
        assert_eq!(credentials_of(&info.expect("userinfo")), b"user:p@ss:w");
        assert_eq!(
            split_userinfo("http://host/x@y"),
            ("http://host/x@y".into(), None)
        );
        assert_eq!(credentials_of("alone"), b"alone:");
        assert_eq!(percent_decode("100%+%zz%4"), b"100%+%zz%4");
    }
}
