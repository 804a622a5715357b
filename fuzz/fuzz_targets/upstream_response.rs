//! A backend's answer to the upgrade (a backend is untrusted input too).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate::fuzzing::check_upstream_response(data));
