//! A client's upgrade request head: checks, then the request forwarded to the backend.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate::fuzzing::check_handshake(data));
