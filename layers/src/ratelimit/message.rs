//! Message and byte rates inside one open socket: [`MessageRateLimiter`].
//!
//! # Design note
//!
//! The relay calls [`MessageRateLimiter::admit`] once per client message, on the socket's
//! own task, so the limiter is a plain value owned by that task: no lock, no atomic, no
//! allocation, `Copy`. Each limit is a token bucket kept in exact integer arithmetic:
//! credit is counted in *unit-nanoseconds* (one unit costs `period` ns of credit; each
//! nanosecond adds `count`), so no rounding ever lets more through than
//! `burst + count × elapsed / period`, however often it is called.

use std::{fmt, str::FromStr, time::Instant};

use super::spec::{ByteRate, RateSpec};

/// What to do with a message over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExcess {
    /// Discard the message and keep the socket (`on_excess = "drop"`).
    Drop,
    /// Close the socket with code 1008 (policy violation) and a reason
    /// (`on_excess = "close"`, the default).
    #[default]
    Close,
}

impl FromStr for OnExcess {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drop" => Ok(Self::Drop),
            "close" => Ok(Self::Close),
            other => Err(format!("on_excess {other:?} must be \"drop\" or \"close\"")),
        }
    }
}

/// Which limit a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    /// Too many messages.
    Messages,
    /// Too many bytes (or one message larger than the byte burst).
    Bytes,
}

impl Excess {
    /// The WebSocket close code to send: 1008, policy violation.
    pub const CLOSE_CODE: u16 = 1008;

    /// The close code (1008).
    pub fn close_code(self) -> u16 {
        Self::CLOSE_CODE
    }

    /// The close reason (well under the 123-byte limit of a close frame).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Messages => "message rate exceeded",
            Self::Bytes => "byte rate exceeded",
        }
    }
}

impl fmt::Display for Excess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Forward it.
    Pass,
    /// Discard it; the socket stays open. Nothing was charged.
    Drop(Excess),
    /// Close the socket: send a close frame with [`Excess::close_code`] and
    /// [`Excess::reason`].
    Close(Excess),
}

/// Per-connection limits, as configured; [`MessageLimits::limiter`] makes the per-socket
/// state.
///
/// ```
/// use std::time::Instant;
/// use wsgate_layers::ratelimit::{Admit, MessageLimits, OnExcess};
/// let limits = MessageLimits::new()
///     .messages("100/s".parse()?, 200)
///     .bytes("1MiB/s".parse()?, 4 << 20)
///     .on_excess(OnExcess::Close);
/// let mut limiter = limits.limiter(); // one per socket
/// assert_eq!(limiter.admit(Instant::now(), 512), Admit::Pass);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageLimits {
    messages: Option<(RateSpec, u64)>,
    bytes: Option<(ByteRate, u64)>,
    on_excess: OnExcess,
}

impl MessageLimits {
    /// No limit (every message passes) until configured.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `rate` messages, with up to `burst` at once (at least 1).
    pub fn messages(mut self, rate: RateSpec, burst: u64) -> Self {
        self.messages = Some((rate, burst.max(1)));
        self
    }

    /// At most `rate` payload bytes, with up to `burst` bytes at once (at least 1).
    ///
    /// A single message larger than `burst` never passes.
    pub fn bytes(mut self, rate: ByteRate, burst: u64) -> Self {
        self.bytes = Some((rate, burst.max(1)));
        self
    }

    /// What to do with a message over a limit (default: close).
    pub fn on_excess(mut self, on_excess: OnExcess) -> Self {
        self.on_excess = on_excess;
        self
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// A fresh limiter for one socket (buckets full).
    pub fn limiter(&self) -> MessageRateLimiter {
        MessageRateLimiter::new(*self)
    }
}

/// A token bucket in exact integer arithmetic (see the module's design note).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    /// Units added per `period_ns` (credit per nanosecond).
    count: u128,
    /// Credit one unit costs.
    period_ns: u128,
    /// Credit when full: `burst × period_ns`.
    capacity: u128,
    credit: u128,
    last: Option<Instant>,
}

impl Bucket {
    fn new(count: u64, period: std::time::Duration, burst: u64) -> Self {
        let period_ns = period.as_nanos().max(1);
        let capacity = u128::from(burst).saturating_mul(period_ns);
        Self {
            count: u128::from(count),
            period_ns,
            capacity,
            credit: capacity,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_nanos();
            self.credit = self
                .credit
                .saturating_add(dt.saturating_mul(self.count))
                .min(self.capacity);
            if now > last {
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
    }

    fn cost(&self, units: u64) -> u128 {
        u128::from(units).saturating_mul(self.period_ns)
    }
}

/// Per-socket message-rate and byte-rate limiter: synchronous, allocation-free, `Copy`.
///
/// Make one per socket from [`MessageLimits::limiter`] and call [`admit`](Self::admit)
/// for every message the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRateLimiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    on_excess: OnExcess,
}

impl MessageRateLimiter {
    /// A limiter with full buckets.
    pub fn new(limits: MessageLimits) -> Self {
        Self {
            messages: limits
                .messages
                .map(|(r, burst)| Bucket::new(u64::from(r.count().get()), r.period(), burst)),
            bytes: limits
                .bytes
                .map(|(r, burst)| Bucket::new(r.bytes(), r.period(), burst)),
            on_excess: limits.on_excess,
        }
    }

    /// Judge one message of `bytes` payload bytes arriving at `now`.
    ///
    /// A message is charged only when it passes; a refused one costs nothing. `now`
    /// earlier than a previous call counts as no time elapsed.
    pub fn admit(&mut self, now: Instant, bytes: usize) -> Admit {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if let Some(b) = &mut self.messages {
            b.refill(now);
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
        }
        let excess = match (&self.messages, &self.bytes) {
            (Some(m), _) if m.credit < m.cost(1) => Some(Excess::Messages),
            (_, Some(b)) if b.credit < b.cost(bytes) => Some(Excess::Bytes),
            _ => None,
        };
        match excess {
            None => {
                if let Some(m) = &mut self.messages {
                    m.credit -= m.cost(1);
                }
                if let Some(b) = &mut self.bytes {
                    b.credit -= b.cost(bytes);
                }
                Admit::Pass
            }
            Some(e) => match self.on_excess {
                OnExcess::Drop => Admit::Drop(e),
                OnExcess::Close => Admit::Close(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn limits(msgs: &str, burst: u64) -> MessageLimits {
        MessageLimits::new().messages(msgs.parse().unwrap(), burst)
    }

    #[test]
    fn burst_passes_then_excess_is_refused_until_refill() {
        let mut l = limits("10/s", 3).on_excess(OnExcess::Drop).limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(t0, 10), Admit::Pass);
        }
        assert_eq!(l.admit(t0, 10), Admit::Drop(Excess::Messages));
        assert_eq!(
            l.admit(t0 + Duration::from_millis(99), 10),
            Admit::Drop(Excess::Messages)
        );
        assert_eq!(l.admit(t0 + Duration::from_millis(100), 10), Admit::Pass);
        assert_eq!(
            l.admit(t0 + Duration::from_millis(100), 10),
            Admit::Drop(Excess::Messages)
        );
    }

    #[test]
    fn byte_limit_closes_with_1008_and_a_reason() {
        let mut l = MessageLimits::new()
            .bytes("1KiB/s".parse().unwrap(), 1024)
            .limiter();
        let t0 = Instant::now();
        assert_eq!(l.admit(t0, 1000), Admit::Pass);
        let Admit::Close(e) = l.admit(t0, 100) else {
            panic!("expected close")
        };
        assert_eq!((e.close_code(), e.reason()), (1008, "byte rate exceeded"));
        // A message bigger than the burst can never pass.
        assert!(matches!(
            l.admit(t0 + Duration::from_secs(60), 2000),
            Admit::Close(Excess::Bytes)
        ));
    }

    #[test]
    fn refused_messages_cost_nothing_and_time_going_backwards_is_harmless() {
        let mut l = MessageLimits::new()
            .messages("1/s".parse().unwrap(), 1)
            .bytes("100/s".parse().unwrap(), 100)
            .on_excess(OnExcess::Drop)
            .limiter();
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(l.admit(t0, 200), Admit::Drop(Excess::Bytes));
        assert_eq!(l.admit(t0, 50), Admit::Pass);
        assert_eq!(
            l.admit(t0 - Duration::from_secs(5), 1),
            Admit::Drop(Excess::Messages)
        );
        assert_eq!(l.admit(t0 + Duration::from_secs(1), 50), Admit::Pass);
    }

    #[test]
    fn unlimited_passes_everything_and_parses_on_excess() {
        let mut l = MessageLimits::new().limiter();
        assert!(!MessageLimits::new().is_limited());
        for _ in 0..1000 {
            assert_eq!(l.admit(Instant::now(), usize::MAX), Admit::Pass);
        }
        assert_eq!("drop".parse::<OnExcess>(), Ok(OnExcess::Drop));
        assert_eq!("Close".parse::<OnExcess>(), Ok(OnExcess::Close));
        assert!("kick".parse::<OnExcess>().is_err());
    }

    proptest! {
        /// Over any schedule, admitted ≤ burst + rate × elapsed, for messages and bytes.
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_elapsed(
            count in 1u32..1000,
            period_ms in 1u64..5000,
            burst in 1u64..100,
            byte_rate in 1u64..100_000,
            byte_burst in 1u64..100_000,
            schedule in proptest::collection::vec((0u64..50_000_000, 0usize..20_000), 1..300),
        ) {
            let period = Duration::from_millis(period_ms);
            let rate = RateSpec::new(std::num::NonZeroU32::new(count).unwrap(), period).unwrap();
            let brate = ByteRate::new(byte_rate, period).unwrap();
            let mut l = MessageLimits::new()
                .messages(rate, burst)
                .bytes(brate, byte_burst)
                .on_excess(OnExcess::Drop)
                .limiter();
            let t0 = Instant::now();
            let mut t = t0;
            let (mut msgs, mut bytes) = (0u128, 0u128);
            for (gap_ns, size) in schedule {
                t += Duration::from_nanos(gap_ns);
                if l.admit(t, size) == Admit::Pass {
                    msgs += 1;
                    bytes += size as u128;
                }
                let elapsed = (t - t0).as_nanos();
                let p = period.as_nanos();
                // msgs ≤ burst + count × elapsed / period, kept in integers.
                prop_assert!(msgs * p <= u128::from(burst) * p + u128::from(count) * elapsed);
                prop_assert!(bytes * p <= u128::from(byte_burst) * p + u128::from(byte_rate) * elapsed);
            }
        }
    }
}
