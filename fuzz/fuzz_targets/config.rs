//! The TOML config: any text either parses or fails with an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = wsgate::config::Config::parse(text, "fuzz.toml") {
            let _ = e.to_string();
        }
    }
});
