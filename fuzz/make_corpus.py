#!/usr/bin/env python3
"""Write the seed corpus: fuzz/corpus/<target>/<name>.

Each input is [config, seed, bytes...]. For `response` the config byte picks
the request (index into rotary_proto::fuzzing::Request::ALL: 0 GET, 1 HEAD,
2 POST, 3 streamed length, 4 streamed chunked, 5 unfinished, 6 CONNECT) and
bit 0x80 the small limits; the seed picks the split sizes. Regression inputs
found by the fuzzer are added next to these by hand.

For `engine` the input is a script for rotary::fuzzing::run_script_with (a
flags byte, then two-byte operations; see its doc). Only the streamed-body
and credential-change seeds are written here; the older engine seeds were written by hand, and the
found_streamed_* ones were kept from an 8-minute fuzzing run (the inputs
that mixed the most kinds of operation, fed bodies and flow control among
them).

To keep this directory small, fuzz with a scratch corpus first, e.g.
    cargo fuzz run --sanitizer none response /tmp/fuzz/response corpus/response
libFuzzer writes new inputs only into the first directory.
"""
import os

GET, HEAD, POST, STREAM_LEN, STREAM_CHUNKED, UNFINISHED, CONNECT = range(7)
SMALL = 0x80

RESPONSE = {
    "length_body": (GET, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    "chunked_ext_trailers": (GET, 2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5;a=b\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
    "head_with_length": (HEAD, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
    "continue_then_ok": (POST, 4, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    "http10_until_close": (GET, 5, b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until close"),
    "ambiguous_te_cl": (GET, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    "pipelined_keep_alive": (GET, 7, b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=9\r\nContent-Length: 1\r\n\r\na"
                             b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb"
                             b"HTTP/1.1 204 No Content\r\n\r\n"),
    "early_response": (UNFINISHED, 8, b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"),
    "switching_protocols": (GET, 9, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
    "folded_header": (GET, 10, b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    "connect_tunnel": (CONNECT, 11, b"HTTP/1.1 200 Connection Established\r\n\r\n"),
    "truncated_length_body": (GET, 12, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
    "small_limits_many_headers": (GET | SMALL, 13, b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(8)) + b"\r\n"),
    "small_limits_long_chunk_line": (GET | SMALL, 14, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 40 + b"\r\nx\r\n0\r\n\r\n"),
    "conflicting_lengths": (STREAM_LEN, 15, b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab"),
    "not_modified_then_chunked": (STREAM_CHUNKED, 16, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
                                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"),
}

CHUNKED = {
    "single_chunk": (0, 1, b"5\r\nhello\r\n0\r\n\r\n"),
    "several_chunks_ext": (0, 2, b"3;x=1\r\nabc\r\nA ; y=\"q\"\r\n0123456789\r\n0;end\r\n\r\n"),
    "trailers": (0, 3, b"2\r\nok\r\n0\r\nExpires: never\r\nX-Sum: 42\r\n\r\n"),
    "size_overflow": (0, 4, b"fffffffffffffffff\r\n"),
    "largest_size": (0, 5, b"ffffffffffffffff\r\nabc"),
    "truncated_data": (0, 6, b"10\r\nonly some"),
    "missing_crlf_after_data": (0, 7, b"3\r\nabcd\r\n0\r\n\r\n"),
    "leading_zeros_upper_hex": (0, 8, b"000B\r\nhello world\r\n00\r\n\r\n"),
    "small_limits_long_ext": (SMALL, 9, b"1;" + b"e" * 40 + b"\r\nx\r\n0\r\n\r\n"),
    "small_limits_big_trailer": (SMALL, 10, b"0\r\nX-Big: " + b"t" * 60 + b"\r\n\r\n"),
    "data_after_end": (0, 11, b"0\r\n\r\nHTTP/1.1 200 OK\r\n"),
    "empty_body": (0, 12, b"0\r\n\r\n"),
    "bare_lf_trailer": (0, 13, b"0\r\nX: y\n\n"),
    "control_in_extension": (0, 14, b"1;a\x00b\r\nx\r\n0\r\n\r\n"),
}


def write(target, seeds):
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, (config, seed, data) in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(bytes([config, seed]) + data)


write("response", RESPONSE)
write("chunked", CHUNKED)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"
ENGINE_BODIES = {
    # 12: a fed PUT (chunked), 13: feed "abc" and end it, 9: answered.
    "fed_chunked_put": bytes([0, 12, 0, 13, 3]) + b"abc" + bytes([9, 0]),
    # Declared 10 bytes, fed 3 and ended: a named failure.
    "fed_short_of_length": bytes([0, 12, 1 | 10 << 1, 13, 3]) + b"abc" + bytes([9, 0]),
    # Answered before the fed body ends.
    "fed_answered_early": bytes([0, 12, 0, 13, 1]) + b"a" + bytes([9, 0]),
    # Fed, then the clock runs past the send stall.
    "fed_send_stall": bytes([0, 12, 0, 13, 1]) + b"a" + bytes([6, 50]),
    # Expect: 100-continue on a fed PUT over TLS with a deadline; 100, then 200.
    "fed_expect_continue_tls": bytes([1, 12, 0x80 | 0x40 | 1 | 4 << 1, 3, len(CONTINUE)]) + CONTINUE
    + bytes([13, 4]) + b"abcd" + bytes([9, 0]),
    # A bytes PUT with Expect, answered 100 then 200.
    "bytes_expect_continue": bytes([0, 15, 0x80, 3, len(CONTINUE)]) + CONTINUE + bytes([9, 0]),
    # A streamed GET consumed by hand through a one-byte window.
    "manual_consume_tiny_window": bytes([0, 15, 0x40, 10, 0, 14, 0x80, 14, 0x80, 14, 0xc0, 6, 1]),
    # Paused before the answer, resumed after it.
    "paused_then_resumed": bytes([0, 15, 0, 14, 0, 9, 0, 6, 40, 14, 0x40, 6, 1]),
    # Paused and the peer closes mid-body: a cut with bytes so far.
    "paused_cut_mid_body": bytes([0x40, 15, 0, 14, 0, 8, len(CUT)]) + CUT + bytes([14, 0x40, 4, 0, 6, 1]),
}


def write_raw(target, scripts):
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, data in scripts.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


write_raw("engine", ENGINE_BODIES)

# Credential changes (op 0xF0 + i installs the harness's i-th new file
# version; see engine/tests/fuzz_corpus.rs `writes`): 0 a second root, 1 the
# other root alone, 3 a list revoking the peer's leaf, 5 a list that does
# not parse, 6 and 7 a new identity's certificate and key.
ENGINE_CREDENTIALS = {
    # Revoked while a GET waits: it fails, the connection closes.
    "credentials_revoked_in_flight": bytes([1, 0, 0, 6, 1, 0xF3, 0, 9, 0]),
    # The root removed while a GET waits: answered, then retired.
    "credentials_root_removed_in_flight": bytes([1, 0, 0, 6, 1, 0xF1, 0, 9, 0]),
    # A second root and a broken list: nothing moves; reused.
    "credentials_root_added_list_broken": bytes([1, 0, 0, 6, 1, 9, 0, 0xF0, 0, 0xF5, 0, 0, 0, 9, 0]),
    # A new identity in two steps: replaced make-before-break.
    "credentials_identity_renewed": bytes([1, 0, 0, 6, 1, 9, 0, 0xF6, 0, 0xF7, 0, 6, 1, 0, 0, 9, 0]),
    # Everything at once, on a pool of two with max age.
    "credentials_all_at_once": bytes([1 | 2 | 8, 0, 0, 0, 0, 6, 1, 0xF6, 0, 0xF3, 0, 0xF1, 0, 0xF7, 0,
                                      9, 0, 9, 1 << 6, 6, 40, 0xF2, 0, 0xF4, 0, 0, 0, 6, 1, 9, 0]),
}
write_raw("engine", ENGINE_CREDENTIALS)
