//! Throughput of the relay's UTF-8 validation (`relay.validate_utf8`), per message size.
//!
//! `cargo run --release --example utf8_throughput -- [seconds per row]`
//!
//! Times what the relay does per text message: `Utf8Validator::feed` + `finish` on
//! backend frames (unmasked), `MaskedText` (unmask into a stack block, then validate) on
//! client frames, each for 64 B and 64 KiB messages of ASCII and of mixed text (2-, 3-
//! and 4-byte characters). `std::str::from_utf8` and `simdutf8::compat` on the whole
//! message are printed alongside for reference. Figures only, no assertions.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use wsgate::relay::{MaskedText, Utf8Validator};

/// Runs `f` repeatedly for about `budget`; returns bytes per second.
fn rate(bytes: usize, budget: Duration, mut f: impl FnMut() -> bool) -> f64 {
    // Warm up, and size the batch so the clock is read rarely.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            assert!(black_box(f()), "the sample text must be valid");
        }
        if t.elapsed() > Duration::from_millis(20) {
            break;
        }
        batch *= 2;
    }
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        for _ in 0..batch {
            black_box(f());
        }
        runs += batch;
    }
    (runs as f64 * bytes as f64) / start.elapsed().as_secs_f64()
}

fn sample(len: usize, mixed: bool) -> Vec<u8> {
    let unit = if mixed {
        "aé€𝄞 wörld "
    } else {
        "hello world "
    };
    let mut s = String::new();
    while s.len() < len {
        s.push_str(unit);
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.into_bytes()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    println!(
        "{:<22}{:>14}{:>14}{:>14}{:>18}",
        "message", "validator", "masked", "std", "simdutf8 compat"
    );
    for (len, mixed) in [(64, false), (64, true), (64 << 10, false), (64 << 10, true)] {
        let text = sample(len, mixed);
        let wire: Vec<u8> = text
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        let mut v = Utf8Validator::new();
        let plain = rate(text.len(), budget, || {
            v.feed(black_box(&text)).is_ok() && v.finish().is_ok()
        });
        let mut m = MaskedText::default();
        let masked = rate(text.len(), budget, || {
            m.start_frame(key);
            m.feed(black_box(&wire)).is_ok() && m.validator.finish().is_ok()
        });
        let std = rate(text.len(), budget, || {
            std::str::from_utf8(black_box(&text)).is_ok()
        });
        let compat = rate(text.len(), budget, || {
            simdutf8::compat::from_utf8(black_box(&text)).is_ok()
        });
        let name = format!(
            "{} {}",
            if len < 1024 {
                format!("{len} B")
            } else {
                format!("{} KiB", len >> 10)
            },
            if mixed { "mixed" } else { "ASCII" }
        );
        let gbs = |r: f64| format!("{:.2} GB/s", r / 1e9);
        println!(
            "{name:<22}{:>14}{:>14}{:>14}{:>18}",
            gbs(plain),
            gbs(masked),
            gbs(std),
            gbs(compat)
        );
    }
}
