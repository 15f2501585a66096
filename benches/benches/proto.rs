//! Codec micro-benchmarks: response head parsing and chunked body decoding.
//!
//! `cargo bench -p rotary-benches --bench proto`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, Method, Uri};
use rotary_proto::{Codec, Limits, ResponseEvent, TargetForm};

/// A typical response head with 10 header fields.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Wed, 25 Nov 2026 01:00:00 GMT\r\n\
Server: nginx/1.27.3\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 0\r\n\
Connection: keep-alive\r\n\
Keep-Alive: timeout=60, max=1000\r\n\
Cache-Control: no-store, no-cache, must-revalidate\r\n\
X-Request-Id: 9f0c6a8e-3b1d-4c52-8e7f-2a1b0c9d8e7f\r\n\
Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n\
Vary: Accept-Encoding\r\n\
\r\n";

fn send_get(codec: &mut Codec, out: &mut BytesMut) {
    let uri = Uri::from_static("http://example.com/api/v4/jobs/request");
    out.clear();
    codec
        .send_request(
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            None,
            TargetForm::Origin,
            out,
        )
        .expect("codec is reusable after each keep-alive exchange");
}

/// One keep-alive exchange per iteration on a reused codec: encode a GET,
/// parse the 10-field head, see the end of its empty body.
fn head(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto/head");
    group.throughput(Throughput::Bytes(HEAD.len() as u64));
    let mut codec = Codec::new(Limits::default());
    let mut out = BytesMut::with_capacity(256);
    let mut input = BytesMut::with_capacity(HEAD.len());
    group.bench_function("10_fields", |b| {
        b.iter(|| {
            send_get(&mut codec, &mut out);
            input.extend_from_slice(black_box(HEAD));
            let head = codec.poll_response(&mut input).expect("valid head");
            assert!(matches!(head, Some(ResponseEvent::Head(_))));
            let end = codec.poll_response(&mut input).expect("empty body");
            assert!(matches!(end, Some(ResponseEvent::End { .. })));
        })
    });
    group.finish();
}

/// A 64 KiB body in chunks of `chunk` bytes, after its head.
fn chunked_stream(chunk: usize) -> (Vec<u8>, usize) {
    let body = vec![b'x'; 64 * 1024];
    let mut stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(chunk) {
        stream.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        stream.extend_from_slice(piece);
        stream.extend_from_slice(b"\r\n");
    }
    stream.extend_from_slice(b"0\r\n\r\n");
    (stream, body.len())
}

/// Decode a 64 KiB chunked body (head included), for several chunk sizes.
fn chunked(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto/chunked_64KiB");
    for chunk in [256, 4096, 64 * 1024] {
        let (stream, body_len) = chunked_stream(chunk);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("chunks_of_{chunk}"), |b| {
            let mut out = BytesMut::new();
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                |mut input| {
                    let mut codec = Codec::new(Limits::default());
                    send_get(&mut codec, &mut out);
                    let mut received = 0;
                    while let Some(event) = codec.poll_response(&mut input).expect("valid body") {
                        if let ResponseEvent::Data(data) = event {
                            received += black_box(data).len();
                        }
                    }
                    assert_eq!(received, body_len);
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, head, chunked);
criterion_main!(benches);
