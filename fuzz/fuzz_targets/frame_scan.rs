//! WebSocket frame headers from either peer: whole and chunked scans must agree.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate::fuzzing::scan_frames(data));
