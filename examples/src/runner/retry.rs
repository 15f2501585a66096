//! GitLab Runner's retry rules for API calls: which answers are worth
//! another try (408, 429 and every 5xx), and how long the server asked to
//! wait: `RateLimit-ResetTime` (an HTTP date, GitLab's rate limiter), else
//! `Retry-After` (seconds or an HTTP date). Without either, the caller's
//! exponential backoff with jitter decides.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest wait a server can ask for; a later reset time waits this.
pub(crate) const MAX_SERVER_WAIT: Duration = Duration::from_secs(15 * 60);

/// A status worth another try: the request timed out, was rate limited, or
/// the server (or a proxy before it) failed.
pub(crate) fn retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500..=599)
}

/// How long the server asked to wait before the next try, if it said;
/// `now` is the wall clock the dates are read against.
pub(crate) fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let until = |date: &str| {
        let at = httpdate::parse_http_date(date).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    };
    let wait = text("ratelimit-resettime").and_then(until).or_else(|| {
        let v = text("retry-after")?;
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => until(v),
        }
    })?;
    Some(wait.min(MAX_SERVER_WAIT))
}

/// `X-GitLab-Trace-Update-Interval`: whole seconds as GitLab sends them,
/// decimals as the demo coordinator may; at most an hour.
pub(crate) fn update_interval(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("x-gitlab-trace-update-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn retryable_statuses_are_408_429_and_5xx() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                retryable(http::StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
        for s in [200, 201, 202, 204, 400, 401, 403, 404, 409, 412, 413, 416] {
            assert!(
                !retryable(http::StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
    }

    #[test]
    fn the_reset_time_wins_over_retry_after_and_both_are_read_as_gitlab_sends_them() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        let s = Duration::from_secs;
        let reset = ("ratelimit-resettime", "Wed, 21 Oct 2015 07:28:07 GMT");
        assert_eq!(
            server_wait(&headers(&[reset, ("retry-after", "30")]), now),
            Some(s(7))
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", "30")]), now),
            Some(s(30))
        );
        let date = ("retry-after", "Wed, 21 Oct 2015 07:29:00 GMT");
        assert_eq!(server_wait(&headers(&[date]), now), Some(s(60)));
        // A reset in the past: go now. A bad reset: Retry-After decides.
        let past = ("ratelimit-resettime", "Wed, 21 Oct 2015 07:00:00 GMT");
        assert_eq!(server_wait(&headers(&[past]), now), Some(Duration::ZERO));
        let bad = ("ratelimit-resettime", "soon");
        assert_eq!(
            server_wait(&headers(&[bad, ("retry-after", "2")]), now),
            Some(s(2))
        );
        assert_eq!(server_wait(&headers(&[bad]), now), None);
        assert_eq!(server_wait(&headers(&[]), now), None);
        // A server cannot park the runner for a day.
        assert_eq!(
            server_wait(&headers(&[("retry-after", "86400")]), now),
            Some(MAX_SERVER_WAIT)
        );
    }

    #[test]
    fn the_trace_interval_is_read_in_seconds() {
        let h = |v| headers(&[("x-gitlab-trace-update-interval", v)]);
        assert_eq!(update_interval(&h("3")), Some(Duration::from_secs(3)));
        assert_eq!(
            update_interval(&h("0.050")),
            Some(Duration::from_millis(50))
        );
        assert_eq!(update_interval(&h("-1")), None);
        assert_eq!(
            update_interval(&h("99999")),
            Some(Duration::from_secs(3600))
        );
    }
}
