//! Arbitrary response bytes, arbitrarily split, through the exchange state
//! machine after a request; see `rotary_proto::fuzzing::response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rotary_proto::fuzzing::response(data));
