//! Endpoint URLs from the runner's base URL: the base's path is a prefix
//! (GitLab under `https://h/gitlab`), its query stays a query, and only
//! `http` and `https` are accepted.

/// `base` (`https://h/gitlab?x=1`) joined with `endpoint`
/// (`/api/v4/jobs/request`, maybe with a query of its own):
/// `https://h/gitlab/api/v4/jobs/request?x=1`. The base's query comes first,
/// then the endpoint's.
///
/// # Errors
/// A base that is no absolute URL, has a scheme other than `http` or
/// `https`, or no host; one line naming what is wrong.
pub(crate) fn join(base: &str, endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = base
        .parse()
        .map_err(|e| format!("{base:?} is no URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{base:?} has no scheme (try https://{base})"))?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "{base:?}: unsupported scheme {scheme:?} (use https:// or http://)"
        ));
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("{base:?} has no host"))?;
    let prefix = uri.path().trim_end_matches('/');
    let (path, query) = match endpoint.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (endpoint, None),
    };
    let path = path.trim_start_matches('/');
    let queries: Vec<&str> = [uri.query(), query]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    let mut url = format!(
        "{}://{authority}{prefix}/{path}",
        scheme.to_ascii_lowercase()
    );
    if !queries.is_empty() {
        url.push('?');
        url.push_str(&queries.join("&"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn a_base_path_is_a_prefix_and_its_query_stays_a_query() {
        let j = |b, e| join(b, e).expect("valid base");
        let ep = "/api/v4/jobs/request";
        assert_eq!(
            j("https://h/gitlab?x=1", ep),
            "https://h/gitlab/api/v4/jobs/request?x=1"
        );
        assert_eq!(j("https://h", ep), "https://h/api/v4/jobs/request");
        assert_eq!(j("https://h/", ep), "https://h/api/v4/jobs/request");
        assert_eq!(
            j("https://h:8443/a/b//", ep),
            "https://h:8443/a/b/api/v4/jobs/request"
        );
        assert_eq!(j("HTTP://h?", ep), "http://h/api/v4/jobs/request");
        assert_eq!(
            j(
                "https://h/g?x=1&y=2",
                "/api/v4/jobs/7/artifacts?artifact_format=zip"
            ),
            "https://h/g/api/v4/jobs/7/artifacts?x=1&y=2&artifact_format=zip"
        );
        assert_eq!(
            j("https://[::1]:8443/gitlab", "api/v4/jobs/7"),
            "https://[::1]:8443/gitlab/api/v4/jobs/7"
        );
    }

    #[test]
    fn bases_that_cannot_work_are_refused_with_the_reason() {
        let e = |b| join(b, "/api/v4/jobs/request").expect_err("refused");
        assert!(
            e("ftp://h/").contains("unsupported scheme \"ftp\""),
            "{}",
            e("ftp://h/")
        );
        assert!(e("h:8443").contains("scheme"), "{}", e("h:8443"));
        assert!(e("/gitlab").contains("no scheme"), "{}", e("/gitlab"));
        assert!(e("https://").contains("no URL") || e("https://").contains("no host"));
        assert!(e("https://h/ space").contains("no URL"));
    }
}
