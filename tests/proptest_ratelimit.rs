//! Properties of the rate limiters: over any schedule, what is admitted never exceeds
//! `burst + rate × elapsed`, and a client that keeps within the rate is never refused.

use std::{
    net::{IpAddr, Ipv4Addr},
    num::NonZeroU32,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use wsgate_layers::ratelimit::{
    Admit, ByteRate, IpRateLimitLayer, MessageLimits, OnExcess, RateSpec,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The message limiter takes `now` as an argument, so any schedule can be replayed
    /// exactly: gaps of 0–50 ms (bursts), message sizes up to 4 KiB, clock jitter
    /// backwards included.
    #[test]
    fn message_limiter_never_admits_more_than_burst_plus_rate_times_elapsed(
        count in 1u32..200,
        period_ms in 1u64..5_000,
        burst in 1u64..100,
        byte_rate in 1u64..1_000_000,
        byte_burst in 1u64..100_000,
        schedule in proptest::collection::vec((0u64..50, 0usize..4096, any::<bool>()), 1..400),
        drop in any::<bool>(),
    ) {
        let period = Duration::from_millis(period_ms);
        let limits = MessageLimits::new()
            .messages(RateSpec::new(NonZeroU32::new(count).unwrap(), period).unwrap(), burst)
            .bytes(ByteRate::new(byte_rate, Duration::from_secs(1)).unwrap(), byte_burst)
            .on_excess(if drop { OnExcess::Drop } else { OnExcess::Close });
        let mut limiter = limits.limiter();
        let t0 = Instant::now() + Duration::from_secs(60);
        let mut t = t0;
        // The limiter's window starts at the earliest instant it was shown.
        let mut earliest = t0;
        let (mut admitted, mut bytes) = (0u64, 0u64);
        for (gap_ms, size, backwards) in schedule {
            // A clock read that goes back a little must not mint credit.
            let now = if backwards { t.checked_sub(Duration::from_millis(gap_ms)).unwrap_or(t) } else {
                t += Duration::from_millis(gap_ms);
                t
            };
            earliest = earliest.min(now);
            match limiter.admit(now, size) {
                Admit::Pass => {
                    admitted += 1;
                    bytes += size as u64;
                }
                Admit::Drop(_) => prop_assert!(drop),
                Admit::Close(_) => prop_assert!(!drop),
            }
            let elapsed = (t - earliest).as_secs_f64();
            let msg_cap = burst as f64 + count as f64 * elapsed / period.as_secs_f64();
            let byte_cap = byte_burst as f64 + byte_rate as f64 * elapsed;
            prop_assert!(admitted as f64 <= msg_cap + 1e-6,
                "{admitted} messages admitted in {elapsed} s; cap {msg_cap}");
            prop_assert!(bytes as f64 <= byte_cap + 1e-6,
                "{bytes} bytes admitted in {elapsed} s; cap {byte_cap}");
        }
    }

    #[test]
    fn message_limiter_admits_a_sender_that_keeps_to_the_rate(
        count in 1u32..100, burst in 1u64..20, n in 1usize..300,
    ) {
        let limits = MessageLimits::new()
            .messages(RateSpec::per_second(NonZeroU32::new(count).unwrap()), burst)
            .on_excess(OnExcess::Close);
        let mut limiter = limits.limiter();
        // The exact interval, rounded up to the nanosecond: a sender never early.
        let step = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(count)));
        let t0 = Instant::now();
        for i in 0..n {
            prop_assert_eq!(limiter.admit(t0 + step * (i as u32 + 1), 10), Admit::Pass, "message {}", i);
        }
    }
}

proptest! {
    // The handshake limiter runs on the real clock (governor's), so each case takes
    // real time: few cases, schedules of at most ~0.5 s.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn handshake_limiter_never_admits_more_than_burst_plus_rate_times_elapsed(
        per_second in 5u32..100,
        burst in 1u32..20,
        gaps_ms in proptest::collection::vec(0u64..25, 1..40),
        clients in 1u8..4,
    ) {
        let layer = IpRateLimitLayer::new(RateSpec::per_second(NonZeroU32::new(per_second).unwrap()))
            .burst(burst);
        let limiter = layer.limiter().clone();
        let t0 = Instant::now();
        let mut admitted = vec![0u64; usize::from(clients)];
        for (i, gap) in gaps_ms.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(*gap));
            let c = i % usize::from(clients);
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, c as u8 + 1));
            // Three attempts at once: a burst from one client.
            for _ in 0..3 {
                if limiter.check(ip).is_ok() {
                    admitted[c] += 1;
                }
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let cap = f64::from(burst) + f64::from(per_second) * elapsed;
            prop_assert!(admitted[c] as f64 <= cap + 1.0,
                "client {c}: {} admitted in {elapsed:.3} s; cap {cap:.1}", admitted[c]);
        }
    }
}
