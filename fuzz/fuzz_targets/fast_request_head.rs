//! A client's request head, as the HTTP/1.1 upgrade fast path reads it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate::fuzzing::check_fast_request_head(data));
