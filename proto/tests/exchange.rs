//! Response streams driven through the exchange state machine, table-driven.
//!
//! Every case is fed whole, split in two at every byte, and byte by byte
//! ("shotgun"); all feedings must agree before the result is compared.

use rotary_proto::fuzzing::{drive, Outcome, Request};
use rotary_proto::{CloseCause, Error, Limits, State};

enum Expect {
    /// The first exchange completes with this status, body and close reason.
    Complete {
        status: u16,
        body: &'static [u8],
        close: Option<CloseCause>,
    },
    /// The codec stops with this error.
    Fails(Error),
}

fn keep(status: u16, body: &'static [u8]) -> Expect {
    Expect::Complete {
        status,
        body,
        close: None,
    }
}

fn close(status: u16, body: &'static [u8], reason: CloseCause) -> Expect {
    Expect::Complete {
        status,
        body,
        close: Some(reason),
    }
}

fn fails(error: Error) -> Expect {
    Expect::Fails(error)
}

/// Drive `stream` whole, split in two at every byte, and byte by byte.
/// Long streams (the limit cases) are split at every 997th byte and fed in
/// 1000-byte pieces instead: re-parsing an incomplete head after every byte
/// is quadratic, which is fine for a socket but slow for 64 KiB in a test.
fn shotgun(request: Request, stream: &[u8]) -> Outcome {
    let limits = Limits::default();
    let whole = drive(request, limits, stream, &[]);
    let (step, piece) = if stream.len() > 4096 {
        (997, 1000)
    } else {
        (1, 1)
    };
    for at in (1..stream.len()).step_by(step) {
        assert_eq!(
            drive(request, limits, stream, &[at]),
            whole,
            "split at {at}"
        );
    }
    let pieces = vec![piece; stream.len()];
    assert_eq!(
        drive(request, limits, stream, &pieces),
        whole,
        "in pieces of {piece}"
    );
    whole
}

fn check(request: Request, stream: impl AsRef<[u8]>, expect: Expect) {
    let outcome = shotgun(request, stream.as_ref());
    match expect {
        Expect::Complete {
            status,
            body,
            close,
        } => {
            assert_eq!(outcome.error, None, "{outcome:#?}");
            let exchange = &outcome.exchanges[0];
            let head = exchange.head.as_ref().expect("a response head");
            assert_eq!(head.status, status);
            assert_eq!(exchange.body, body, "body");
            let (_, verdict) = exchange.end.as_ref().expect("the exchange ended");
            assert_eq!(verdict.close, close, "verdict");
        }
        Expect::Fails(error) => assert_eq!(outcome.error, Some(error), "{outcome:#?}"),
    }
}

macro_rules! exchange_cases {
    ($($name:ident: $request:ident, $stream:expr => $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            check(Request::$request, $stream, $expect);
        }
    )*};
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..n {
        s.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    s.extend_from_slice(b"content-length: 0\r\n\r\n");
    s
}

fn huge_head() -> Vec<u8> {
    let mut s = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    s.resize(64 * 1024 + 10, b'a');
    s.extend_from_slice(b"\r\n\r\n");
    s
}

use CloseCause::*;

exchange_cases! {
    content_length_body_keeps_the_connection:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" => keep(200, b"hello");
    content_length_zero_is_an_empty_body:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" => keep(200, b"");
    chunked_body_keeps_the_connection:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        => keep(200, b"hello world");
    chunked_body_with_extensions_and_trailers:
        Post, "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nx-t: 1\r\n\r\n"
        => keep(201, b"ok");
    head_response_ignores_content_length:
        Head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" => keep(200, b"");
    head_response_ignores_transfer_encoding:
        Head, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" => keep(200, b"");
    no_content_204_has_no_body:
        Get, "HTTP/1.1 204 No Content\r\n\r\n" => keep(204, b"");
    not_modified_304_has_no_body_despite_length:
        Get, "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n" => keep(304, b"");
    interim_100_continue_is_skipped:
        Post, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" => keep(200, b"ok");
    interim_103_early_hints_with_fields_is_skipped:
        Get, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        => keep(200, b"x");
    several_interim_responses_are_skipped:
        Get, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        => keep(204, b"");
    interim_response_to_head_request_is_skipped:
        Head, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" => keep(200, b"");
    switching_protocols_is_refused:
        Get, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        => fails(Error::UnsupportedUpgrade { status: 101 });
    connect_refusal_has_a_body:
        Connect, "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno" => keep(403, b"no");
    close_delimited_body_ends_at_eof:
        Get, "HTTP/1.1 200 OK\r\n\r\nuntil the end" => close(200, b"until the end", CloseDelimited);
    close_delimited_empty_body_ends_at_eof:
        Get, "HTTP/1.1 200 OK\r\n\r\n" => close(200, b"", CloseDelimited);
    http10_without_length_reads_until_close:
        Get, "HTTP/1.0 200 OK\r\n\r\nold school" => close(200, b"old school", CloseDelimited);
    http10_with_length_closes_by_default:
        Get, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok" => close(200, b"ok", Http10);
    http10_with_keep_alive_is_reusable:
        Get, "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok" => keep(200, b"ok");
    http10_transfer_encoding_is_refused:
        Get, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" => fails(Error::TransferEncodingInHttp10);
    response_connection_close_closes:
        Get, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" => close(200, b"ok", ResponseClose);
    response_connection_close_found_in_token_list:
        Get, "HTTP/1.1 200 OK\r\nConnection: x-foo, CLOSE\r\nContent-Length: 0\r\n\r\n" => close(200, b"", ResponseClose);
    transfer_encoding_and_length_chunked_wins_and_closes:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        => close(200, b"abc", AmbiguousFraming);
    transfer_encoding_gzip_alone_is_refused_not_handed_over_encoded:
        Get, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b raw"
        => fails(Error::UnsupportedTransferCoding { coding: "gzip".into() });
    transfer_encoding_gzip_then_chunked_is_refused:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        => fails(Error::UnsupportedTransferCoding { coding: "gzip".into() });
    transfer_encoding_chunked_then_gzip_is_refused:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
        => fails(Error::UnsupportedTransferCoding { coding: "gzip".into() });
    transfer_encoding_unknown_is_refused:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: x-rot13\r\nContent-Length: 3\r\n\r\nabc"
        => fails(Error::UnsupportedTransferCoding { coding: "x-rot13".into() });
    identical_repeated_content_lengths_are_accepted:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok" => keep(200, b"ok");
    conflicting_content_lengths_are_refused:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
        => fails(Error::ConflictingContentLength { first: 2, second: 3 });
    non_numeric_content_length_is_refused:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok" => fails(Error::InvalidContentLength);
    negative_content_length_is_refused:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" => fails(Error::InvalidContentLength);
    eof_inside_length_body_says_how_much_is_missing:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc" => fails(Error::TruncatedBody { missing: 7, exact: true });
    eof_right_after_head_of_length_body_is_truncated:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" => fails(Error::TruncatedBody { missing: 4, exact: true });
    eof_inside_chunk_data_gives_a_lower_bound:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabc"
        => fails(Error::TruncatedBody { missing: 5 + 2 + 5, exact: false });
    eof_before_last_chunk_is_truncated:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        => fails(Error::TruncatedBody { missing: 5, exact: false });
    eof_before_any_response_byte:
        Get, "" => fails(Error::ClosedBeforeResponse);
    eof_inside_the_head:
        Get, "HTTP/1.1 200 OK\r\nContent-" => fails(Error::IncompleteHead);
    eof_after_an_interim_response_is_inside_the_head:
        Post, "HTTP/1.1 100 Continue\r\n\r\n" => fails(Error::IncompleteHead);
    obsolete_line_folding_is_unfolded:
        Get, "HTTP/1.1 200 OK\r\nX-Folded: one\r\n\ttwo\r\nContent-Length: 2\r\n\r\nok"
        => keep(200, b"ok");
    obsolete_line_folding_with_space_in_a_later_header_is_unfolded:
        Get, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n  3\r\nContent-Length: 2\r\n\r\nok"
        => keep(200, b"ok");
    a_fold_of_only_white_space_is_unfolded:
        Get, "HTTP/1.1 200 OK\r\nA: 1\r\nX-Blank: a\r\n \r\nContent-Length: 0\r\n\r\n"
        => keep(200, b"");
    a_fold_right_after_the_colon_is_unfolded:
        Get, "HTTP/1.1 200 OK\r\nX-Late:\r\n b\r\nContent-Length: 0\r\n\r\n"
        => keep(200, b"");
    a_folded_content_length_is_judged_as_its_unfolded_value:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n 2\r\n\r\nok"
        => fails(Error::InvalidContentLength);
    a_fold_inside_the_body_is_body:
        Get, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\r\n x"
        => keep(200, b"\r\n x");
    a_bad_status_code_is_reported_before_a_fold:
        Get, "HTTP/1.1 099 Low\r\nX-Folded: one\r\n two\r\n\r\n"
        => fails(Error::InvalidHead { reason: "invalid status code" });
    a_line_starting_with_space_before_any_header_is_invalid:
        Get, "HTTP/1.1 200 OK\r\n X: 1\r\n\r\n"
        => fails(Error::InvalidHead { reason: "invalid header name" });
    too_many_headers_are_refused:
        Get, many_headers(100) => fails(Error::TooManyHeaders { limit: 100 });
    exactly_max_headers_are_accepted:
        Get, many_headers(99) => keep(200, b"");
    oversized_head_is_refused:
        Get, huge_head() => fails(Error::HeadTooLarge { limit: 64 * 1024 });
    non_digit_status_is_refused:
        Get, "HTTP/1.1 2OO OK\r\n\r\n" => fails(Error::InvalidHead { reason: "invalid status line" });
    status_below_100_is_refused:
        Get, "HTTP/1.1 099 Odd\r\n\r\n" => fails(Error::InvalidHead { reason: "invalid status code" });
    unknown_http_version_is_refused:
        Get, "HTTP/2.0 200 OK\r\n\r\n" => fails(Error::InvalidHead { reason: "invalid HTTP version" });
    garbage_instead_of_a_head_is_refused:
        Get, "<html>hello</html>" => fails(Error::InvalidHead { reason: "invalid HTTP version" });
    space_before_colon_is_refused:
        Get, "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n" => fails(Error::InvalidHead { reason: "invalid header name" });
    missing_reason_phrase_is_accepted:
        Get, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n" => keep(200, b"");
    bare_lf_line_endings_in_the_head_are_accepted:
        Get, "HTTP/1.1 200 OK\nContent-Length: 1\n\nz" => keep(200, b"z");
    chunk_size_overflow_is_refused:
        Get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n" => fails(Error::ChunkSizeOverflow);
    early_response_closes_the_connection:
        Unfinished, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n" => close(413, b"", EarlyResponse);
    streamed_request_with_length_gets_its_response:
        StreamedLength, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" => keep(200, b"");
    streamed_chunked_request_gets_its_response:
        StreamedChunked, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" => keep(200, b"");
    bytes_after_a_closing_response_are_unsolicited:
        Get, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokEXTRA" => fails(Error::UnsolicitedData);
}

#[test]
fn keep_alive_connection_carries_the_next_exchange() {
    let outcome = shotgun(
        Request::Get,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\
          HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n",
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.state, State::Closed, "after EOF");
    let statuses: Vec<_> = outcome
        .exchanges
        .iter()
        .filter_map(|e| e.head.as_ref())
        .map(|h| h.status)
        .collect();
    assert_eq!(statuses, [200, 404]);
    assert_eq!(outcome.exchanges[1].body, b"b");
}

#[test]
fn trailers_are_surfaced_at_the_end() {
    let outcome = shotgun(
        Request::Get,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n\r\n\
          1\r\na\r\n0\r\nX-Digest: abc\r\n\r\n",
    );
    let (trailers, _) = outcome.exchanges[0].end.as_ref().expect("ended");
    let trailers = trailers.as_ref().expect("trailers");
    assert_eq!(trailers["x-digest"], "abc");
}

#[test]
fn keep_alive_hints_reach_the_verdict() {
    let outcome = shotgun(
        Request::Get,
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=99\r\nContent-Length: 0\r\n\r\n",
    );
    let (_, verdict) = outcome.exchanges[0].end.as_ref().expect("ended");
    assert_eq!(
        verdict.hints.timeout,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(verdict.hints.max, Some(99));
    assert!(verdict.keep_alive());
}

#[test]
fn response_headers_keep_names_values_and_repeats() {
    let outcome = shotgun(
        Request::Get,
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
    );
    let head = outcome.exchanges[0].head.as_ref().expect("head");
    let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(head.headers["x-empty"], "");
    assert_eq!(head.version, http::Version::HTTP_11);
}

#[test]
fn connect_2xx_turns_the_connection_into_a_tunnel_and_leaves_its_bytes() {
    use bytes::BytesMut;
    use http::{HeaderMap, Method, Uri};
    use rotary_proto::{Codec, ResponseEvent, TargetForm};
    let uri: Uri = "origin.test:443".parse().expect("authority");
    // A Content-Length on a 2xx to CONNECT means nothing (RFC 9112 §6.3).
    let answer = b"HTTP/1.1 200 Connection Established\r\nContent-Length: 5\r\n\r\n\x16\x03\x01tls";
    for split in 1..answer.len() {
        let mut codec = Codec::new(Limits::default());
        let mut out = BytesMut::new();
        codec
            .send_request(
                &Method::CONNECT,
                &uri,
                &HeaderMap::new(),
                None,
                TargetForm::Origin,
                &mut out,
            )
            .expect("connect encodes");
        assert_eq!(
            &out[..],
            b"CONNECT origin.test:443 HTTP/1.1\r\nhost: origin.test:443\r\n\r\n"
        );
        let mut input = BytesMut::from(&answer[..split]);
        let mut head = None;
        while let Some(ev) = codec.poll_response(&mut input).expect("no error") {
            head = Some(ev);
        }
        input.extend_from_slice(&answer[split..]);
        while let Some(ev) = codec.poll_response(&mut input).expect("no error") {
            assert!(head.is_none(), "one event only, got {ev:?}");
            head = Some(ev);
        }
        match head {
            Some(ResponseEvent::Head(h)) => assert_eq!(h.status, 200),
            other => panic!("expected the head, got {other:?}"),
        }
        assert_eq!(codec.state(), State::Tunnel);
        assert_eq!(
            &input[..],
            b"\x16\x03\x01tls",
            "the tunnel's bytes stay in the input"
        );
        assert_eq!(
            codec
                .handle_eof()
                .expect("eof in a tunnel is not the codec's"),
            None
        );
        let again = codec.send_request(
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            None,
            TargetForm::Origin,
            &mut out,
        );
        assert!(again.is_err(), "a tunnel carries no further request");
    }
}
