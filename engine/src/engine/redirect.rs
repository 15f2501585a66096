//! Following redirects: which responses are followed, where `Location`
//! points (RFC 3986 §5 reference resolution), and what the next hop's
//! request keeps of the last one. Pure decisions: the engine owns the
//! request and acts on the answer ([`super::exchange`]).

use http::header::{self, HeaderName};
use http::{Method, Request, StatusCode, Uri};

use crate::redact::{self, Redacted};
use crate::{Body, Origin, RedirectError};

/// Headers never sent to another origin than the one they were meant for.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Headers describing a body, dropped with it when a hop becomes a GET.
const BODY_HEADERS: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
];

/// What a redirect-following request needs from its options and config.
pub(super) struct Rules<'a> {
    /// Hops already followed.
    pub(super) hops: usize,
    pub(super) max: usize,
    pub(super) to_http: bool,
    /// The host's own sensitive headers (a runner's `JOB-TOKEN`).
    pub(super) sensitive: &'a [HeaderName],
    /// Every method and URI requested so far, the current ones included: a
    /// loop is the same request again, so a POST answered 303 with a GET of
    /// its own URI (post/redirect/get) is not one.
    pub(super) visited: &'a [(Method, Uri)],
}

/// The request for the next hop after `status` with `location`, or `None`
/// when the response is not a redirect to follow (it is then the response).
///
/// # Errors
/// Too many hops, a loop, an https → http hop not allowed, or a `Location`
/// that is no URI reference.
pub(super) fn next_hop(
    req: &Request<Body>,
    status: StatusCode,
    location: Option<&http::HeaderValue>,
    rules: &Rules<'_>,
) -> Result<Option<Request<Body>>, RedirectError> {
    let keeps_method = match status.as_u16() {
        301..=303 => false,
        307 | 308 => true,
        _ => return Ok(None),
    };
    let Some(location) = location else {
        return Ok(None);
    };
    if rules.hops >= rules.max {
        return Err(RedirectError::TooMany { max: rules.max });
    }
    let text = location
        .to_str()
        .map_err(|_| RedirectError::BadLocation("not visible ASCII".into()))?;
    let uri = resolve(req.uri(), text)?;
    // A target no request could be sent to is the server's fault, not the
    // caller's: it ends as a redirect error, never as an invalid request.
    let target = Origin::from_uri(&uri).map_err(|_| {
        let why = match uri.scheme_str() {
            Some(s) if !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https") => {
                format!("scheme {s}: only http and https are followed")
            }
            _ if uri.host().is_none_or(str::is_empty) => "no host".to_owned(),
            _ => "a port that is no number from 0 to 65535".to_owned(),
        };
        RedirectError::BadLocation(format!("{:?}: {why}", redact::text(text)))
    })?;
    if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
        && uri.scheme() == Some(&http::uri::Scheme::HTTP)
        && !rules.to_http
    {
        return Err(RedirectError::Downgrade {
            uri: Redacted(&uri).to_string(),
        });
    }
    let same_origin = Origin::from_uri(req.uri()).is_ok_and(|from| from == target);
    // 301 and 302 turn a POST into a GET, as browsers and curl do; 303 turns
    // anything but HEAD into a GET (RFC 9110 §15.4).
    let method = match (keeps_method, req.method()) {
        (true, m) => m.clone(),
        (false, &Method::HEAD) => Method::HEAD,
        (false, m) if status == StatusCode::SEE_OTHER || m == Method::POST => Method::GET,
        (false, m) => m.clone(),
    };
    if rules.visited.iter().any(|(m, u)| *m == method && *u == uri) {
        return Err(RedirectError::Loop {
            uri: Redacted(&uri).to_string(),
        });
    }
    let keeps_body = method == req.method() && method != Method::HEAD;
    let body = match keeps_body {
        true => req
            .body()
            .try_clone()
            .ok_or(RedirectError::BodyNotReplayable)?,
        false => Body::empty(),
    };
    let mut next = Request::new(body);
    *next.method_mut() = method;
    *next.uri_mut() = uri;
    *next.version_mut() = req.version();
    let headers = next.headers_mut();
    for (name, value) in req.headers() {
        let credential = CREDENTIALS.contains(name) || rules.sensitive.contains(name);
        let dropped = (!same_origin && (credential || name == header::HOST))
            || (!keeps_body && BODY_HEADERS.contains(name));
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    Ok(Some(next))
}

/// `reference` resolved against `base` (RFC 3986 §5.2.2, with a fragment
/// dropped: it is never sent).
pub(super) fn resolve(base: &Uri, reference: &str) -> Result<Uri, RedirectError> {
    let bad =
        |why: &str| RedirectError::BadLocation(format!("{:?}: {why}", redact::text(reference)));
    let reference = reference.split('#').next().unwrap_or_default().trim();
    if reference.is_empty() {
        return Ok(base.clone());
    }
    let scheme_len = reference.find(':').filter(|&i| {
        let s = &reference[..i];
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    // An absolute or scheme-relative reference: only its dot segments need
    // removing.
    let absolute = |text: &str| {
        let uri: Uri = text.parse().map_err(|_| bad("not a URI"))?;
        let path = remove_dot_segments(uri.path());
        rebuild(
            &uri,
            uri.authority().map(|a| a.as_str()),
            &path,
            uri.query(),
        )
        .ok_or_else(|| bad("not a URI"))
    };
    if scheme_len.is_some() {
        return absolute(reference);
    }
    let base_scheme = base
        .scheme_str()
        .ok_or_else(|| bad("the base is not absolute"))?;
    if let Some(rest) = reference.strip_prefix("//") {
        return absolute(&format!("{base_scheme}://{rest}"));
    }
    let (ref_path, ref_query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference, None),
    };
    let (path, query) = if ref_path.is_empty() {
        (base.path().to_owned(), ref_query.or(base.query()))
    } else if ref_path.starts_with('/') {
        (remove_dot_segments(ref_path), ref_query)
    } else {
        // Merge (§5.2.3): the base path up to its last '/', then the reference.
        let dir = match base.path().rfind('/') {
            Some(i) => &base.path()[..=i],
            None => "/",
        };
        (remove_dot_segments(&format!("{dir}{ref_path}")), ref_query)
    };
    rebuild(base, base.authority().map(|a| a.as_str()), &path, query)
        .ok_or_else(|| bad("not a URI"))
}

fn rebuild(
    scheme_of: &Uri,
    authority: Option<&str>,
    path: &str,
    query: Option<&str>,
) -> Option<Uri> {
    let mut text = format!("{}://{}{path}", scheme_of.scheme_str()?, authority?);
    if let Some(q) = query {
        text.push('?');
        text.push_str(q);
    }
    text.parse().ok()
}

/// RFC 3986 §5.2.4: `.` and `..` segments removed from a path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path.split('/').peekable();
    // A leading '/' yields an empty first segment; keep the path absolute.
    let absolute = path.starts_with('/');
    if absolute {
        segments.next();
    }
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    if absolute {
        result.push('/');
    }
    result.push_str(&out.join("/"));
    if trailing_slash && !result.ends_with('/') {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn references_resolve_as_rfc_3986_section_5_4_says() {
        // §5.4.1 and §5.4.2, on an http base (a URI needs an authority here).
        let base: Uri = "http://a/b/c/d;p?q".parse().expect("base");
        let cases = [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q"),
            ("g#s", "http://a/b/c/g"),
            (";x", "http://a/b/c/;x"),
            ("g;x", "http://a/b/c/g;x"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("../../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            (".g", "http://a/b/c/.g"),
            ("g..", "http://a/b/c/g.."),
            ("..g", "http://a/b/c/..g"),
            ("./../g", "http://a/b/g"),
            ("./g/.", "http://a/b/c/g/"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
            ("g;x=1/../y", "http://a/b/c/y"),
            (
                "https://other.test:8443/x/../y?z",
                "https://other.test:8443/y?z",
            ),
        ];
        for (reference, want) in cases {
            let got = resolve(&base, reference).expect(reference);
            assert_eq!(got.to_string(), want, "{reference:?}");
        }
        assert!(matches!(
            resolve(&base, "http://[bad"),
            Err(RedirectError::BadLocation(_))
        ));
    }

    fn rules<'a>(visited: &'a [(Method, Uri)], sensitive: &'a [HeaderName]) -> Rules<'a> {
        Rules {
            hops: 0,
            max: 5,
            to_http: false,
            sensitive,
            visited,
        }
    }

    fn post(uri: &str) -> Request<Body> {
        Request::post(uri)
            .header("authorization", "Bearer t")
            .header("cookie", "c=1")
            .header("job-token", "j")
            .header("content-type", "text/plain")
            .header("x-kept", "k")
            .body(Body::from(Bytes::from_static(b"body")))
            .expect("request")
    }

    fn hop(req: &Request<Body>, status: u16, to: &str, r: &Rules<'_>) -> Request<Body> {
        let location = http::HeaderValue::from_str(to).expect("location");
        let status = StatusCode::from_u16(status).expect("status");
        next_hop(req, status, Some(&location), r)
            .expect("followed")
            .expect("a redirect")
    }

    #[test]
    fn see_other_and_found_become_get_without_a_body_and_307_308_keep_both() {
        let req = post("https://a.test/upload");
        for status in [301, 302, 303] {
            let next = hop(&req, status, "/done", &rules(&[], &[]));
            assert_eq!(next.method(), Method::GET, "{status}");
            assert!(next.body().is_empty());
            assert!(next.headers().get("content-type").is_none());
            assert_eq!(next.headers()["authorization"], "Bearer t", "same origin");
        }
        for status in [307, 308] {
            let next = hop(&req, status, "/again", &rules(&[], &[]));
            assert_eq!(next.method(), Method::POST);
            assert_eq!(next.body().as_bytes().map(|b| &b[..]), Some(&b"body"[..]));
            assert_eq!(next.headers()["content-type"], "text/plain");
        }
        let head = Request::head("http://a.test/")
            .body(Body::empty())
            .expect("head");
        assert_eq!(
            hop(&head, 303, "/x", &rules(&[], &[])).method(),
            Method::HEAD
        );
        let put = Request::put("http://a.test/")
            .body(Body::empty())
            .expect("put");
        assert_eq!(hop(&put, 302, "/x", &rules(&[], &[])).method(), Method::PUT);
    }

    #[test]
    fn another_origin_gets_no_credentials_and_no_sensitive_headers() {
        let req = post("https://a.test/artifacts");
        let sensitive = [HeaderName::from_static("job-token")];
        let next = hop(
            &req,
            307,
            "https://storage.test/blob",
            &rules(&[], &sensitive),
        );
        for gone in ["authorization", "cookie", "job-token"] {
            assert!(next.headers().get(gone).is_none(), "{gone}");
        }
        assert_eq!(next.headers()["x-kept"], "k");
        // Another port is another origin too.
        let next = hop(&req, 302, "https://a.test:444/", &rules(&[], &[]));
        assert!(next.headers().get("authorization").is_none());
    }

    #[test]
    fn limits_loops_downgrades_and_non_redirects() {
        let req = post("https://a.test/x");
        let loc = http::HeaderValue::from_static("/x");
        let uri: Uri = "https://a.test/x".parse().expect("uri");
        let visited = vec![(Method::POST, uri.clone())];
        let r = rules(&visited, &[]);
        // The same request again is a loop; the POST's GET of its own URI
        // (post/redirect/get) is not.
        assert!(matches!(
            next_hop(&req, StatusCode::TEMPORARY_REDIRECT, Some(&loc), &r),
            Err(RedirectError::Loop { .. })
        ));
        assert!(next_hop(&req, StatusCode::FOUND, Some(&loc), &r).is_ok_and(|n| n.is_some()));
        let visited = vec![(Method::POST, uri.clone()), (Method::GET, uri)];
        let r = rules(&visited, &[]);
        assert!(matches!(
            next_hop(&req, StatusCode::FOUND, Some(&loc), &r),
            Err(RedirectError::Loop { .. })
        ));
        let mut r = rules(&[], &[]);
        r.hops = 5;
        assert!(matches!(
            next_hop(&req, StatusCode::FOUND, Some(&loc), &r),
            Err(RedirectError::TooMany { max: 5 })
        ));
        let http = http::HeaderValue::from_static("http://a.test/x");
        let r = rules(&[], &[]);
        assert!(matches!(
            next_hop(&req, StatusCode::FOUND, Some(&http), &r),
            Err(RedirectError::Downgrade { .. })
        ));
        let mut r = rules(&[], &[]);
        r.to_http = true;
        assert!(next_hop(&req, StatusCode::FOUND, Some(&http), &r).is_ok_and(|n| n.is_some()));
        // Not a redirect, or no Location: the response is the answer.
        assert!(next_hop(&req, StatusCode::OK, Some(&loc), &r).is_ok_and(|n| n.is_none()));
        assert!(next_hop(&req, StatusCode::NOT_MODIFIED, Some(&loc), &r).is_ok_and(|n| n.is_none()));
        assert!(next_hop(&req, StatusCode::FOUND, None, &r).is_ok_and(|n| n.is_none()));
    }

    #[test]
    fn a_location_no_request_can_go_to_is_a_bad_location_naming_why() {
        let req = post("https://a.test/x");
        let cases = [
            ("https://a.test:99999/y", "a port that is no number"),
            ("ftp://files.test/y", "scheme ftp"),
            ("https://:443/y", "no host"),
            ("http://[bad", "not a URI"),
        ];
        for (to, why) in cases {
            let location = http::HeaderValue::from_static(to);
            let got = next_hop(&req, StatusCode::FOUND, Some(&location), &rules(&[], &[]));
            match got {
                Err(RedirectError::BadLocation(text)) => {
                    assert!(text.contains(why), "{to}: {text}")
                }
                other => panic!("{to}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_show_no_userinfo_and_no_query_of_the_location() {
        let req = post("https://a.test/x");
        let cases = [
            "http://user:hunter2@a.test/blob?X-Amz-Signature=hunter2",
            "https://user:hunter2@a.test/x?sig=hunter2",
            "ftp://user:hunter2@a.test/blob?sig=hunter2",
            "https://a.test:99999/blob?sig=hunter2",
        ];
        // A 302 turns the POST into a GET: the loop is a GET seen before.
        let visited: Vec<(Method, Uri)> = vec![(
            Method::GET,
            "https://user:hunter2@a.test/x?sig=hunter2"
                .parse()
                .expect("uri"),
        )];
        for to in cases {
            let location = http::HeaderValue::from_static(to);
            let err = next_hop(
                &req,
                StatusCode::FOUND,
                Some(&location),
                &rules(&visited, &[]),
            )
            .expect_err(to);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{to}: {shown}");
            assert!(shown.contains("a.test"), "{to}: {shown}");
        }
    }
}
