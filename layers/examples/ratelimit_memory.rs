//! Measures the memory of the per-IP handshake limiter under address spraying.
//!
//! Feeds 1,000,000 distinct IPv6 /64 networks through an `IpRateLimiter` and prints the
//! process's resident memory (VmRSS, Linux) before, after, and after a prune.
//!
//! ```text
//! cargo run --release -p wsgate-layers --example ratelimit_memory
//! ```

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use wsgate_layers::ratelimit::IpRateLimitLayer;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    const KEYS: u64 = 1_000_000;
    let layer = IpRateLimitLayer::new("20/s".parse().expect("valid rate"))
        .burst(40)
        .max_keys(KEYS as usize)
        // No prune during the run: measure the full table.
        .prune_interval(Duration::from_secs(3600));
    let limiter = layer.limiter();
    let before = rss_kib().unwrap_or(0);
    let t = Instant::now();
    for i in 0..KEYS {
        // One address in each of a million different /64s.
        let ip = Ipv6Addr::from((0x2001_0db8_0000_0000_u128 + u128::from(i)) << 64 | 1);
        let _ = limiter.check(IpAddr::V6(ip));
    }
    let elapsed = t.elapsed();
    let after = rss_kib().unwrap_or(0);
    println!(
        "{} keys tracked in {:.2?} ({:.0} ns/check)",
        limiter.tracked_keys(),
        elapsed,
        elapsed.as_nanos() as f64 / KEYS as f64
    );
    println!(
        "RSS before {} KiB, after {} KiB: {:.1} MiB for {KEYS} keys ({:.0} bytes/key)",
        before,
        after,
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / KEYS as f64
    );
    // One more spray past the cap goes to the overflow bucket, not to memory.
    for i in 0..100_000u64 {
        let ip = Ipv6Addr::from((0x2001_0db9_0000_0000_u128 + u128::from(i)) << 64 | 1);
        let _ = limiter.check(IpAddr::V6(ip));
    }
    println!(
        "after 100000 more new networks: {} keys, {} overflow decisions, RSS {} KiB",
        limiter.tracked_keys(),
        limiter.overflow_hits(),
        rss_kib().unwrap_or(0)
    );
    // 20/s burst 40: a key is fresh again 2 s after its last handshake.
    std::thread::sleep(Duration::from_millis(2100));
    let t = Instant::now();
    limiter.prune();
    println!(
        "prune: {} keys left in {:.2?}, RSS {} KiB",
        limiter.tracked_keys(),
        t.elapsed(),
        rss_kib().unwrap_or(0)
    );
}
