//! Rates as written in configuration: `"20/s"`, `"100/m"`, `"5/h"`, `"64KiB/s"`.

use std::{fmt, num::NonZeroU32, str::FromStr, time::Duration};

/// A number of events per period, parsed from `"20/s"`, `"100/m"` or `"5/h"`.
///
/// The unit may also be spelt `sec`, `second`, `min`, `minute`, `hour`, `d`, `day`; a
/// multiple of a unit is allowed too (`"10/30s"`: ten per thirty seconds).
///
/// ```
/// use wsgate_layers::ratelimit::RateSpec;
/// let r: RateSpec = "20/s".parse()?;
/// assert_eq!(r.count().get(), 20);
/// assert_eq!(r.period(), std::time::Duration::from_secs(1));
/// assert!("20 per second".parse::<RateSpec>().is_err());
/// # Ok::<(), wsgate_layers::ratelimit::RateSpecError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateSpec {
    count: NonZeroU32,
    period: Duration,
}

/// Why a rate such as `"20/s"` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateSpecError {
    /// No `/` between count and unit.
    #[error("rate {0:?} must look like \"20/s\", \"100/m\" or \"5/h\"")]
    Shape(String),
    /// The count is not a positive whole number (or is too large).
    #[error("rate {input:?}: count {count:?} must be a whole number from 1 to {max}")]
    Count {
        /// The whole input.
        input: String,
        /// The part before `/`.
        count: String,
        /// The largest count accepted.
        max: u64,
    },
    /// The unit is not one of `s`, `m`, `h`, `d`.
    #[error("rate {input:?}: unit {unit:?} must be s, m, h or d (optionally with a multiple, as in 30s)")]
    Unit {
        /// The whole input.
        input: String,
        /// The part after `/`.
        unit: String,
    },
    /// A byte size such as `64KiB` could not be read.
    #[error("rate {input:?}: size {size:?} must be bytes with an optional unit: B, KiB, MiB, GiB, KB, MB, GB")]
    Size {
        /// The whole input.
        input: String,
        /// The part before `/`.
        size: String,
    },
}

impl RateSpec {
    /// `count` events per `period`; `None` if `period` is zero.
    pub fn new(count: NonZeroU32, period: Duration) -> Option<Self> {
        (!period.is_zero()).then_some(Self { count, period })
    }

    /// `count` events per second.
    pub fn per_second(count: NonZeroU32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
        }
    }

    /// `count` events per minute.
    pub fn per_minute(count: NonZeroU32) -> Self {
        Self {
            count,
            period: Duration::from_secs(60),
        }
    }

    /// `count` events per hour.
    pub fn per_hour(count: NonZeroU32) -> Self {
        Self {
            count,
            period: Duration::from_secs(3600),
        }
    }

    /// How many events a period allows.
    pub fn count(&self) -> NonZeroU32 {
        self.count
    }

    /// The period the count applies to.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The steady-state spacing between two events (`period / count`), at least 1 ns.
    pub fn interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_nanos(1))
    }

    /// The governor quota: this rate, allowing `burst` events at once (default: `count`).
    pub fn quota(&self, burst: Option<NonZeroU32>) -> governor::Quota {
        // `interval()` is never zero, so `with_period` always answers; the fallback keeps
        // this function total without an unwrap.
        governor::Quota::with_period(self.interval())
            .unwrap_or_else(|| governor::Quota::per_second(self.count))
            .allow_burst(burst.unwrap_or(self.count))
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, unit_name(self.period))
    }
}

fn unit_name(period: Duration) -> String {
    let s = period.as_secs();
    if period.subsec_nanos() != 0 {
        return format!("{}ms", period.as_millis());
    }
    match s {
        1 => "s".into(),
        60 => "m".into(),
        3600 => "h".into(),
        86400 => "d".into(),
        s => format!("{s}s"),
    }
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (count, unit) = split_rate(input)?;
        let count = count
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| RateSpecError::Count {
                input: input.to_owned(),
                count: count.to_owned(),
                max: u64::from(u32::MAX),
            })?;
        let period = parse_period(input, unit)?;
        Ok(Self { count, period })
    }
}

fn split_rate(input: &str) -> Result<(&str, &str), RateSpecError> {
    let (count, unit) = input
        .trim()
        .split_once('/')
        .ok_or_else(|| RateSpecError::Shape(input.to_owned()))?;
    Ok((count.trim(), unit.trim()))
}

fn parse_period(input: &str, unit: &str) -> Result<Duration, RateSpecError> {
    let err = || RateSpecError::Unit {
        input: input.to_owned(),
        unit: unit.to_owned(),
    };
    let digits = unit.bytes().take_while(u8::is_ascii_digit).count();
    let (mult, name) = unit.split_at(digits);
    let mult: u64 = if mult.is_empty() {
        1
    } else {
        mult.parse().map_err(|_| err())?
    };
    let secs: u64 = match name.to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86400,
        _ => return Err(err()),
    };
    match mult.checked_mul(secs) {
        Some(0) | None => Err(err()),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// A number of bytes per period, parsed from `"64KiB/s"`, `"1MB/s"` or `"1048576/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRate {
    bytes: u64,
    period: Duration,
}

impl ByteRate {
    /// `bytes` per `period`; `None` if either is zero.
    pub fn new(bytes: u64, period: Duration) -> Option<Self> {
        (bytes > 0 && !period.is_zero()).then_some(Self { bytes, period })
    }

    /// Bytes allowed per period.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl FromStr for ByteRate {
    type Err = RateSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (size, unit) = split_rate(input)?;
        let bytes = parse_size(size)
            .filter(|b| *b > 0)
            .ok_or_else(|| RateSpecError::Size {
                input: input.to_owned(),
                size: size.to_owned(),
            })?;
        let period = parse_period(input, unit)?;
        Ok(Self { bytes, period })
    }
}

/// `64KiB`, `1MB`, `512` → bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let r: RateSpec = "20/s".parse().unwrap();
        assert_eq!((r.count().get(), r.period()), (20, Duration::from_secs(1)));
        let r: RateSpec = "100/m".parse().unwrap();
        assert_eq!(
            (r.count().get(), r.period()),
            (100, Duration::from_secs(60))
        );
        let r: RateSpec = " 5 / h ".parse().unwrap();
        assert_eq!(
            (r.count().get(), r.period()),
            (5, Duration::from_secs(3600))
        );
        let r: RateSpec = "10/30s".parse().unwrap();
        assert_eq!(r.period(), Duration::from_secs(30));
        let r: RateSpec = "1/day".parse().unwrap();
        assert_eq!(r.period(), Duration::from_secs(86400));
        assert_eq!("20/s".parse::<RateSpec>().unwrap().to_string(), "20/s");
    }

    #[test]
    fn rejects_malformed_rates_with_a_message_naming_the_part() {
        for bad in [
            "",
            "20",
            "0/s",
            "-1/s",
            "x/s",
            "20/",
            "20/w",
            "20/0s",
            "1.5/s",
            "99999999999/s",
        ] {
            let e = bad.parse::<RateSpec>().unwrap_err();
            assert!(e.to_string().contains("rate"), "{bad}: {e}");
        }
        assert!(matches!(
            "20/w".parse::<RateSpec>(),
            Err(RateSpecError::Unit { .. })
        ));
        assert!(matches!(
            "0/s".parse::<RateSpec>(),
            Err(RateSpecError::Count { .. })
        ));
        assert!(matches!(
            "20".parse::<RateSpec>(),
            Err(RateSpecError::Shape(_))
        ));
    }

    #[test]
    fn quota_uses_burst_or_count() {
        let r: RateSpec = "20/s".parse().unwrap();
        let q = r.quota(NonZeroU32::new(40));
        assert_eq!(q.burst_size().get(), 40);
        assert_eq!(q.replenish_interval(), Duration::from_millis(50));
        assert_eq!(r.quota(None).burst_size().get(), 20);
    }

    #[test]
    fn byte_rates_parse_units() {
        let r: ByteRate = "64KiB/s".parse().unwrap();
        assert_eq!((r.bytes(), r.period()), (65536, Duration::from_secs(1)));
        let r: ByteRate = "1MB/m".parse().unwrap();
        assert_eq!(r.bytes(), 1_000_000);
        assert!("0/s".parse::<ByteRate>().is_err());
        assert!("1TB/s".parse::<ByteRate>().is_err());
    }
}
