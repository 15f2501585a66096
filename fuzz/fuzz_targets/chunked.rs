//! Arbitrary bytes through the chunked decoder, whole and split, plus an
//! encode/decode round trip; see `rotary_proto::fuzzing::chunked`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rotary_proto::fuzzing::chunked(data));
