//! The exchange state machine: transitions, misuse, request bytes, sticky errors.

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Method, Uri};
use rotary_proto::{CloseCause, Codec, Error, Limits, ResponseEvent, State, TargetForm};

const ORIGIN: TargetForm = TargetForm::Origin;

fn uri() -> Uri {
    Uri::from_static("http://example.com/p")
}

fn codec() -> Codec {
    Codec::new(Limits::default())
}

fn get(codec: &mut Codec) -> Result<BytesMut, Error> {
    let mut out = BytesMut::new();
    codec.send_request(
        &Method::GET,
        &uri(),
        &HeaderMap::new(),
        None,
        ORIGIN,
        &mut out,
    )?;
    Ok(out)
}

fn input(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}

/// Poll until `Ok(None)`, collecting events.
fn poll_all(codec: &mut Codec, input: &mut BytesMut) -> Result<Vec<ResponseEvent>, Error> {
    let mut events = Vec::new();
    while let Some(event) = codec.poll_response(input)? {
        events.push(event);
    }
    Ok(events)
}

fn verdict_of(events: &[ResponseEvent]) -> Option<CloseCause> {
    match events.last() {
        Some(ResponseEvent::End { verdict, .. }) => verdict.close,
        other => panic!("no end: {other:?}"),
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn new_codec_is_idle_with_default_limits() {
    let codec = codec();
    assert_eq!(codec.state(), State::Idle);
    assert!(!codec.response_started());
    let limits = Limits::default();
    assert_eq!(
        (
            limits.max_head_bytes,
            limits.max_headers,
            limits.max_chunk_line,
            limits.max_trailer_bytes
        ),
        (65536, 100, 4096, 16384)
    );
}

#[test]
fn get_request_is_encoded_and_awaits_the_head() {
    let mut codec = codec();
    let out = get(&mut codec).expect("request");
    assert_eq!(&out[..], b"GET /p HTTP/1.1\r\nhost: example.com\r\n\r\n");
    assert_eq!(codec.state(), State::AwaitingHead);
}

#[test]
fn post_request_writes_length_then_body() {
    let mut codec = codec();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    let mut out = BytesMut::new();
    codec
        .send_request(
            &Method::POST,
            &uri(),
            &headers,
            Some(b"hi"),
            ORIGIN,
            &mut out,
        )
        .expect("request");
    assert_eq!(
        &out[..],
        b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi"
    );
}

#[test]
fn post_without_body_sends_content_length_zero() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .send_request(
            &Method::POST,
            &uri(),
            &HeaderMap::new(),
            None,
            ORIGIN,
            &mut out,
        )
        .expect("request");
    assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
}

#[test]
fn get_with_empty_body_sends_no_framing() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .send_request(
            &Method::GET,
            &uri(),
            &HeaderMap::new(),
            Some(b""),
            ORIGIN,
            &mut out,
        )
        .expect("request");
    assert_eq!(&out[..], b"GET /p HTTP/1.1\r\nhost: example.com\r\n\r\n");
}

#[test]
fn user_framing_headers_are_ignored() {
    let mut codec = codec();
    let mut headers = HeaderMap::new();
    headers.insert("content-length", HeaderValue::from_static("1000"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    let mut out = BytesMut::new();
    codec
        .send_request(
            &Method::PUT,
            &uri(),
            &headers,
            Some(b"abc"),
            ORIGIN,
            &mut out,
        )
        .expect("request");
    assert_eq!(
        &out[..],
        b"PUT /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 3\r\n\r\nabc"
    );
}

#[test]
fn streamed_chunked_request_frames_each_piece_and_ends_with_last_chunk() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::POST,
            &uri(),
            &HeaderMap::new(),
            None,
            ORIGIN,
            &mut out,
        )
        .expect("start");
    assert_eq!(codec.state(), State::Sending);
    out.clear();
    codec.send_body(b"hello", &mut out).expect("body");
    codec.send_body(b"", &mut out).expect("empty piece");
    codec.send_body(&[b'z'; 17], &mut out).expect("body");
    codec.end_body(&mut out).expect("end");
    assert_eq!(
        &out[..],
        &b"5\r\nhello\r\n11\r\nzzzzzzzzzzzzzzzzz\r\n0\r\n\r\n"[..]
    );
    assert_eq!(codec.state(), State::AwaitingHead);
}

#[test]
fn streamed_request_with_declared_length_is_written_verbatim() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::PUT,
            &uri(),
            &HeaderMap::new(),
            Some(4),
            ORIGIN,
            &mut out,
        )
        .expect("start");
    assert!(out.ends_with(b"content-length: 4\r\n\r\n"));
    out.clear();
    codec.send_body(b"ab", &mut out).expect("body");
    codec.send_body(b"cd", &mut out).expect("body");
    codec.end_body(&mut out).expect("end");
    assert_eq!(&out[..], b"abcd");
}

#[test]
fn send_body_past_declared_length_is_refused_and_writes_nothing() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::PUT,
            &uri(),
            &HeaderMap::new(),
            Some(3),
            ORIGIN,
            &mut out,
        )
        .expect("start");
    out.clear();
    codec.send_body(b"ab", &mut out).expect("body");
    assert_eq!(
        codec.send_body(b"cd", &mut out),
        Err(Error::RequestBodyTooLong { declared: 3 })
    );
    assert_eq!(&out[..], b"ab");
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn end_body_short_of_declared_length_is_refused() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::PUT,
            &uri(),
            &HeaderMap::new(),
            Some(10),
            ORIGIN,
            &mut out,
        )
        .expect("start");
    codec.send_body(b"abc", &mut out).expect("body");
    let err = codec.end_body(&mut out);
    assert_eq!(
        err,
        Err(Error::RequestBodyTooShort {
            declared: 10,
            missing: 7
        })
    );
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn second_request_while_one_is_in_flight_is_refused() {
    let mut codec = codec();
    get(&mut codec).expect("first");
    let err = get(&mut codec).expect_err("second must be refused");
    assert_eq!(
        err,
        Error::InvalidState {
            operation: "send_request",
            state: State::AwaitingHead
        }
    );
    assert_eq!(
        err.to_string(),
        "`send_request` is not allowed in state AwaitingHead"
    );
}

#[test]
fn send_body_without_a_streamed_request_is_refused() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let err = codec.send_body(b"x", &mut BytesMut::new());
    assert_eq!(
        err,
        Err(Error::InvalidState {
            operation: "send_body",
            state: State::AwaitingHead
        })
    );
}

#[test]
fn end_body_when_idle_is_refused() {
    let mut codec = codec();
    let err = codec.end_body(&mut BytesMut::new());
    assert_eq!(
        err,
        Err(Error::InvalidState {
            operation: "end_body",
            state: State::Idle
        })
    );
}

#[test]
fn done_connection_accepts_the_next_request() {
    let mut codec = codec();
    get(&mut codec).expect("first");
    let events = poll_all(&mut codec, &mut input(OK)).expect("response");
    assert_eq!(verdict_of(&events), None);
    assert_eq!(codec.state(), State::Done);
    get(&mut codec).expect("second request on the same connection");
    assert_eq!(codec.state(), State::AwaitingHead);
    assert!(!codec.response_started(), "reset for the new exchange");
}

#[test]
fn closed_connection_refuses_the_next_request() {
    let mut codec = codec();
    get(&mut codec).expect("first");
    let mut bytes = input(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let events = poll_all(&mut codec, &mut bytes).expect("response");
    assert_eq!(verdict_of(&events), Some(CloseCause::ResponseClose));
    assert_eq!(codec.state(), State::Closed);
    assert_eq!(
        get(&mut codec),
        Err(Error::InvalidState {
            operation: "send_request",
            state: State::Closed
        })
    );
}

#[test]
fn request_connection_close_gives_a_close_verdict() {
    let mut codec = codec();
    let mut headers = HeaderMap::new();
    headers.insert("connection", HeaderValue::from_static("close"));
    let mut out = BytesMut::new();
    codec
        .send_request(&Method::GET, &uri(), &headers, None, ORIGIN, &mut out)
        .expect("request");
    assert!(out.windows(19).any(|w| w == b"connection: close\r\n"));
    let events = poll_all(&mut codec, &mut input(OK)).expect("response");
    assert_eq!(verdict_of(&events), Some(CloseCause::RequestClose));
}

#[test]
fn events_come_in_order_head_data_end() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let events = poll_all(&mut codec, &mut input(OK)).expect("response");
    assert!(
        matches!(&events[..], [ResponseEvent::Head(h), ResponseEvent::Data(d), ResponseEvent::End { trailers: None, .. }]
        if h.status == 200 && &d[..] == b"ok")
    );
}

#[test]
fn body_data_is_handed_out_before_the_body_is_complete() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let mut bytes = input(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    assert!(matches!(
        codec.poll_response(&mut bytes),
        Ok(Some(ResponseEvent::Head(_)))
    ));
    assert_eq!(codec.state(), State::Body);
    assert!(
        matches!(codec.poll_response(&mut bytes), Ok(Some(ResponseEvent::Data(d))) if &d[..] == b"abc")
    );
    assert!(matches!(codec.poll_response(&mut bytes), Ok(None)));
}

#[test]
fn body_data_is_split_off_the_input_without_copying() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let mut bytes = input(OK);
    let body_at = bytes.as_ptr() as usize + OK.len() - 2;
    let events = poll_all(&mut codec, &mut bytes).expect("response");
    let ResponseEvent::Data(data) = &events[1] else {
        panic!("expected data: {events:?}")
    };
    assert_eq!(
        data.as_ptr() as usize,
        body_at,
        "data must point into the input buffer"
    );
}

#[test]
fn incomplete_head_is_left_in_the_input() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let partial = b"HTTP/1.1 200 OK\r\nContent-Le";
    let mut bytes = input(partial);
    assert_eq!(codec.poll_response(&mut bytes), Ok(None));
    assert_eq!(&bytes[..], partial);
    assert!(codec.response_started());
}

#[test]
fn response_started_turns_true_on_the_first_byte() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    assert_eq!(codec.poll_response(&mut BytesMut::new()), Ok(None));
    assert!(!codec.response_started());
    assert_eq!(codec.poll_response(&mut input(b"H")), Ok(None));
    assert!(codec.response_started());
}

#[test]
fn early_response_while_sending_keeps_the_body_open_then_closes() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::POST,
            &uri(),
            &HeaderMap::new(),
            None,
            ORIGIN,
            &mut out,
        )
        .expect("start");
    let mut bytes = input(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nba");
    assert!(matches!(
        codec.poll_response(&mut bytes),
        Ok(Some(ResponseEvent::Head(_)))
    ));
    assert_eq!(codec.state(), State::Sending);
    codec
        .send_body(b"more", &mut out)
        .expect("body may still be sent");
    assert!(matches!(
        codec.poll_response(&mut bytes),
        Ok(Some(ResponseEvent::Data(_)))
    ));
    bytes.extend_from_slice(b"d");
    let events = poll_all(&mut codec, &mut bytes).expect("rest");
    assert_eq!(verdict_of(&events), Some(CloseCause::EarlyResponse));
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn interim_response_while_sending_is_not_an_early_response() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::POST,
            &uri(),
            &HeaderMap::new(),
            None,
            ORIGIN,
            &mut out,
        )
        .expect("start");
    let mut bytes = input(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(
        codec.poll_response(&mut bytes),
        Ok(Some(ResponseEvent::Continue))
    );
    assert_eq!(codec.poll_response(&mut bytes), Ok(None));
    assert!(bytes.is_empty());
    codec.send_body(b"payload", &mut out).expect("body");
    codec.end_body(&mut out).expect("end");
    let events = poll_all(&mut codec, &mut input(OK)).expect("response");
    assert_eq!(verdict_of(&events), None);
}

#[test]
fn eof_when_idle_is_quiet_and_closes() {
    let mut codec = codec();
    assert_eq!(codec.handle_eof(), Ok(None));
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn eof_after_a_reusable_exchange_is_quiet_and_closes() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    poll_all(&mut codec, &mut input(OK)).expect("response");
    assert_eq!(codec.handle_eof(), Ok(None));
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn eof_before_the_end_of_a_bodiless_response_still_ends_it() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .send_request(
            &Method::HEAD,
            &uri(),
            &HeaderMap::new(),
            None,
            ORIGIN,
            &mut out,
        )
        .expect("request");
    let mut bytes = input(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
    assert!(matches!(
        codec.poll_response(&mut bytes),
        Ok(Some(ResponseEvent::Head(_)))
    ));
    assert!(matches!(
        codec.handle_eof(),
        Ok(Some(ResponseEvent::End { .. }))
    ));
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn input_after_a_close_delimited_end_is_refused() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    poll_all(&mut codec, &mut input(b"HTTP/1.1 200 OK\r\n\r\nbody")).expect("response");
    let end = codec.handle_eof();
    assert!(
        matches!(end, Ok(Some(ResponseEvent::End { verdict, .. })) if verdict.close == Some(CloseCause::CloseDelimited))
    );
    assert_eq!(
        codec.poll_response(&mut input(b"more")),
        Err(Error::UnsolicitedData)
    );
}

#[test]
fn bytes_while_idle_are_unsolicited_but_empty_polls_are_fine() {
    let mut codec = codec();
    assert_eq!(codec.poll_response(&mut BytesMut::new()), Ok(None));
    assert_eq!(
        codec.poll_response(&mut input(b"HTTP/1.1 200 OK\r\n")),
        Err(Error::UnsolicitedData)
    );
}

#[test]
fn errors_are_sticky_and_close_the_codec() {
    let mut codec = codec();
    get(&mut codec).expect("request");
    let err = Error::InvalidHead {
        reason: "invalid HTTP version",
    };
    assert_eq!(
        codec.poll_response(&mut input(b"SSH-2.0-OpenSSH\r\n")),
        Err(err.clone())
    );
    assert_eq!(codec.state(), State::Closed);
    assert_eq!(codec.error(), Some(&err));
    assert_eq!(codec.poll_response(&mut input(OK)), Err(err.clone()));
    assert_eq!(codec.handle_eof(), Err(err.clone()));
    assert_eq!(get(&mut codec), Err(err.clone()));
    assert_eq!(codec.send_body(b"x", &mut BytesMut::new()), Err(err));
}

#[test]
fn absolute_form_request_for_a_proxy() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    let uri = Uri::from_static("http://example.com:8080/a?b");
    codec
        .send_request(
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            None,
            TargetForm::Absolute,
            &mut out,
        )
        .expect("request");
    assert!(
        out.starts_with(b"GET http://example.com:8080/a?b HTTP/1.1\r\nhost: example.com:8080\r\n")
    );
}

#[test]
fn invalid_request_writes_nothing() {
    let mut codec = codec();
    let mut out = BytesMut::from(&b"keep"[..]);
    let uri = Uri::from_static("/relative");
    let err = codec.send_request(
        &Method::GET,
        &uri,
        &HeaderMap::new(),
        None,
        TargetForm::Absolute,
        &mut out,
    );
    assert_eq!(err, Err(Error::MissingAuthority));
    assert_eq!(&out[..], b"keep");
}

#[test]
fn header_values_with_cr_lf_nul_cannot_reach_the_codec() {
    // `http` refuses them when the value is built, and the codec re-checks
    // raw bytes itself (`check_header`).
    for bad in ["a\rb", "a\nb", "a\0b"] {
        assert!(HeaderValue::from_str(bad).is_err());
    }
    assert!(rotary_proto::check_header(b"x-a", b"a\r\nb").is_err());
}

#[test]
fn error_messages_are_lowercase_and_specific() {
    let errors = [
        Error::TruncatedBody {
            missing: 7,
            exact: true,
        },
        Error::TruncatedBody {
            missing: 7,
            exact: false,
        },
        Error::TooManyHeaders { limit: 100 },
        Error::UnsupportedTransferCoding {
            coding: "gzip".into(),
        },
    ];
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "connection closed with 7 bytes of the body missing",
            "connection closed with at least 7 bytes of the body missing",
            "response has more than the limit of 100 header fields",
            "response uses the transfer coding `gzip`, which is not supported (only chunked, once: no TE was sent)",
        ]
    );
}

fn start_stream(codec: &mut Codec, length: Option<u64>) -> BytesMut {
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::PUT,
            &uri(),
            &HeaderMap::new(),
            length,
            ORIGIN,
            &mut out,
        )
        .expect("start");
    out
}

#[test]
fn chunked_request_ends_with_its_trailers() {
    let mut codec = codec();
    let mut out = start_stream(&mut codec, None);
    out.clear();
    codec.send_body(b"abc", &mut out).expect("body");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("ff00"));
    codec
        .end_body_with(Some(&trailers), &mut out)
        .expect("end with trailers");
    assert_eq!(&out[..], &b"3\r\nabc\r\n0\r\nx-checksum: ff00\r\n\r\n"[..]);
    assert_eq!(codec.state(), State::AwaitingHead);
}

#[test]
fn trailers_on_a_declared_length_body_are_refused_and_nothing_is_written() {
    let mut codec = codec();
    let mut out = start_stream(&mut codec, Some(0));
    out.clear();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("ff00"));
    let err = codec
        .end_body_with(Some(&trailers), &mut out)
        .expect_err("no trailers with content-length");
    assert!(matches!(err, Error::InvalidState { .. }), "{err:?}");
    assert!(out.is_empty());
}

#[test]
fn continue_is_surfaced_only_while_the_body_is_open() {
    let mut codec = codec();
    let mut out = start_stream(&mut codec, Some(2));
    let events = poll_all(&mut codec, &mut input(b"HTTP/1.1 100 Continue\r\n\r\n")).expect("100");
    assert_eq!(events, vec![ResponseEvent::Continue]);
    codec.send_body(b"ok", &mut out).expect("body");
    codec.end_body(&mut out).expect("end");
    // A 100 after the body is complete (and a 103) is skipped silently.
    let stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let events = poll_all(&mut codec, &mut input(stream)).expect("response");
    assert!(
        matches!(
            events[..],
            [ResponseEvent::Head(_), ResponseEvent::End { .. }]
        ),
        "{events:?}"
    );
}

#[test]
fn an_early_answer_reads_its_body_while_the_request_is_still_sending() {
    let mut codec = codec();
    let mut out = BytesMut::new();
    codec
        .start_streaming_request(
            &Method::PUT,
            &uri(),
            &HeaderMap::new(),
            Some(10),
            TargetForm::Origin,
            &mut out,
        )
        .unwrap();
    codec.send_body(b"12345", &mut out).unwrap();
    assert!(!codec.reading_body());
    // A 413 arrives before the rest of the body, its own body in pieces.
    let mut inp = input(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 6\r\n\r\ntoo");
    let events = poll_all(&mut codec, &mut inp).unwrap();
    assert!(
        matches!(events.first(), Some(ResponseEvent::Head(_))),
        "{events:?}"
    );
    assert_eq!(
        codec.state(),
        State::Sending,
        "the request side is unfinished"
    );
    assert!(codec.reading_body(), "the response's body is being read");
}
