//! Keeping secrets out of log lines and error messages.
//!
//! A URI rotary did not build (the caller's request URI, a server's
//! `Location`) may carry credentials: userinfo (`https://user:token@host/`),
//! and a query holding a pre-signed object-storage URL's signature
//! (`?X-Amz-Signature=…`) or an access token. Every URI a log line or an
//! error message shows goes through [`Redacted`] or [`text`]: the scheme,
//! host, port and path stay (they say where a request went), the userinfo,
//! query and fragment are replaced by [`MARK`]. Proxy credentials are kept
//! out the same way by `Proxy`'s own `Display`.

use std::fmt;

/// What stands in for a hidden part.
pub(crate) const MARK: &str = "[redacted]";

/// A URI shown without its userinfo, query and fragment.
pub(crate) struct Redacted<'a>(pub(crate) &'a http::Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            match authority.as_str().rsplit_once('@') {
                Some((_, host)) => write!(f, "{MARK}@{host}")?,
                None => f.write_str(authority.as_str())?,
            }
        }
        f.write_str(uri.path())?;
        if uri.query().is_some() {
            write!(f, "?{MARK}")?;
        }
        Ok(())
    }
}

/// `reference` (a URI or a reference that may not even parse, such as a
/// server's `Location`) without userinfo, query and fragment, as
/// [`Redacted`] shows a parsed one. Text that is no URI at all is judged by
/// the same delimiters: `@` before the first `/` after `//`, then `?` and
/// `#`.
pub(crate) fn text(reference: &str) -> String {
    let (rest, hidden) = match reference.find(['?', '#']) {
        Some(at) => (&reference[..at], true),
        None => (reference, false),
    };
    let mut out = String::with_capacity(rest.len() + 2 * MARK.len() + 2);
    let (lead, authority_and_path) = match rest.find("//") {
        Some(at) => rest.split_at(at + 2),
        None => ("", rest),
    };
    out.push_str(lead);
    if lead.is_empty() {
        out.push_str(authority_and_path);
    } else {
        let end = authority_and_path
            .find('/')
            .unwrap_or(authority_and_path.len());
        let (authority, path) = authority_and_path.split_at(end);
        match authority.rsplit_once('@') {
            Some((_, host)) => {
                out.push_str(MARK);
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        out.push_str(path);
    }
    if hidden {
        out.push('?');
        out.push_str(MARK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(uri: &str) -> String {
        let uri: http::Uri = uri.parse().expect("a URI");
        Redacted(&uri).to_string()
    }

    #[test]
    fn userinfo_query_and_fragment_are_hidden_and_the_rest_stays() {
        assert_eq!(
            shown("https://user:pw@store.test:8443/bucket/a.zip?X-Amz-Signature=abc&x=1"),
            "https://[redacted]@store.test:8443/bucket/a.zip?[redacted]"
        );
        assert_eq!(shown("http://h.test/p"), "http://h.test/p");
        assert_eq!(
            shown("http://h.test"),
            "http://h.test/",
            "as `Uri` shows it"
        );
        assert_eq!(shown("/only/a/path?token=t"), "/only/a/path?[redacted]");
        assert_eq!(
            shown("http://a@b@h.test/"),
            "http://[redacted]@h.test/",
            "the last @ ends the userinfo"
        );
    }

    #[test]
    fn text_that_is_no_uri_is_cut_at_the_same_delimiters() {
        assert_eq!(text("http://[bad?sig=SECRET"), "http://[bad?[redacted]");
        assert_eq!(
            text("ftp://u:SECRET@files.test/x#frag"),
            "ftp://[redacted]@files.test/x?[redacted]"
        );
        assert_eq!(text("/relative?q=1"), "/relative?[redacted]");
        assert_eq!(text("//h.test/p"), "//h.test/p");
        assert_eq!(text("plain"), "plain");
    }
}
