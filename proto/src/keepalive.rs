//! Keep-alive: may a connection carry another request, and the server's hints.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, CONNECTION};
use http::Version;

/// Server `Keep-Alive: timeout=N, max=M` hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAliveHints {
    /// `timeout=N`, in seconds.
    pub timeout: Option<Duration>,
    /// `max=M`: remaining exchanges the server allows.
    pub max: Option<u32>,
}

/// Why a connection may not carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The request carried `Connection: close`.
    RequestClose,
    /// The response carried `Connection: close`.
    ResponseClose,
    /// HTTP/1.0 response without `Connection: keep-alive`.
    Http10,
    /// The body was delimited by connection close.
    CloseDelimited,
    /// Transfer-Encoding together with Content-Length.
    AmbiguousFraming,
    /// The response arrived before the request body was fully sent.
    EarlyResponse,
    /// An error occurred.
    Error,
}

/// The keep-alive verdict after one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `None` when the connection may carry another request.
    pub close: Option<CloseCause>,
    /// Server hints, parsed leniently.
    pub hints: KeepAliveHints,
}

impl Verdict {
    /// True when the connection may carry another request.
    pub fn keep_alive(&self) -> bool {
        self.close.is_none()
    }
}

/// What the codec learned about one exchange that bears on reuse.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reuse {
    pub(crate) request_close: bool,
    pub(crate) response_close: bool,
    pub(crate) http10_without_keep_alive: bool,
    pub(crate) ambiguous_framing: bool,
    pub(crate) close_delimited: bool,
    pub(crate) early_response: bool,
}

impl Reuse {
    /// Note the response head's version and `Connection` header.
    pub(crate) fn response(&mut self, version: Version, headers: &HeaderMap) {
        self.response_close = has_token(headers, &CONNECTION, "close");
        self.http10_without_keep_alive =
            version == Version::HTTP_10 && !has_token(headers, &CONNECTION, "keep-alive");
    }

    /// The verdict; when several reasons apply the one reported is the first
    /// of: framing (ambiguous, close-delimited), early response, the peer's
    /// `Connection: close`, HTTP/1.0, the request's `Connection: close`.
    pub(crate) fn verdict(&self, hints: KeepAliveHints) -> Verdict {
        let reasons = [
            (self.ambiguous_framing, CloseCause::AmbiguousFraming),
            (self.close_delimited, CloseCause::CloseDelimited),
            (self.early_response, CloseCause::EarlyResponse),
            (self.response_close, CloseCause::ResponseClose),
            (self.http10_without_keep_alive, CloseCause::Http10),
            (self.request_close, CloseCause::RequestClose),
        ];
        let close = reasons
            .iter()
            .find(|(applies, _)| *applies)
            .map(|(_, reason)| *reason);
        Verdict { close, hints }
    }
}

/// Whether any value of the comma-separated list header `name` contains
/// `token` (ASCII case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|item| trim(item).eq_ignore_ascii_case(token.as_bytes()))
}

/// Parse `Keep-Alive` header values leniently.
///
/// Parameters are `name=value` pairs separated by commas; names are matched
/// case-insensitively and values may be quoted. Only `timeout` (seconds) and
/// `max` are read; unknown parameters and values that are not plain decimal
/// numbers in range are ignored, and the first valid occurrence of each
/// wins. This never fails: missing or garbled headers give empty hints.
pub fn keep_alive_hints(headers: &HeaderMap) -> KeepAliveHints {
    let mut hints = KeepAliveHints::default();
    let params = headers
        .get_all("keep-alive")
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','));
    for param in params {
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (trim(&param[..eq]), unquote(trim(&param[eq + 1..])));
        if name.eq_ignore_ascii_case(b"timeout") && hints.timeout.is_none() {
            hints.timeout = parse_decimal(value).map(Duration::from_secs);
        } else if name.eq_ignore_ascii_case(b"max") && hints.max.is_none() {
            hints.max = parse_decimal(value).and_then(|n| u32::try_from(n).ok());
        }
    }
    hints
}

/// Parse a non-empty run of ASCII digits into a `u64`, refusing overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Strip optional whitespace (SP, HTAB) from both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(values: &[&str]) -> KeepAliveHints {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("keep-alive", v.parse().expect("test header value"));
        }
        keep_alive_hints(&headers)
    }

    fn h(timeout: Option<u64>, max: Option<u32>) -> KeepAliveHints {
        KeepAliveHints {
            timeout: timeout.map(Duration::from_secs),
            max,
        }
    }

    macro_rules! hint_cases {
        ($($name:ident: $values:expr => $expect:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(hints(&$values), $expect);
            }
        )*};
    }

    hint_cases! {
        hints_timeout_and_max_are_read: ["timeout=5, max=100"] => h(Some(5), Some(100));
        hints_absent_header_gives_none: [] => h(None, None);
        hints_param_names_are_case_insensitive: ["Timeout=7, MAX=3"] => h(Some(7), Some(3));
        hints_whitespace_around_equals_is_tolerated: ["timeout = 9 ,max= 2"] => h(Some(9), Some(2));
        hints_quoted_values_are_unquoted: ["timeout=\"4\""] => h(Some(4), None);
        hints_unknown_params_are_ignored: ["foo=bar, timeout=1, baz"] => h(Some(1), None);
        hints_bad_numbers_are_ignored: ["timeout=-1, max=ten"] => h(None, None);
        hints_max_overflowing_u32_is_ignored: ["max=4294967296"] => h(None, None);
        hints_timeout_overflowing_u64_is_ignored: ["timeout=99999999999999999999"] => h(None, None);
        hints_empty_value_is_ignored: ["timeout=, max="] => h(None, None);
        hints_first_valid_occurrence_wins: ["timeout=x, timeout=3", "timeout=8"] => h(Some(3), None);
        hints_spread_over_several_headers: ["timeout=2", "max=6"] => h(Some(2), Some(6));
    }

    #[test]
    fn connection_tokens_match_case_insensitively_in_lists() {
        let mut headers = HeaderMap::new();
        headers.append(
            CONNECTION,
            "Upgrade, CLOSE".parse().expect("test header value"),
        );
        assert!(has_token(&headers, &CONNECTION, "close"));
        assert!(!has_token(&headers, &CONNECTION, "keep-alive"));
    }

    #[test]
    fn decimal_parser_refuses_signs_spaces_and_overflow() {
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"18446744073709551616",
            b"0x10",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
