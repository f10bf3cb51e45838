//! Rates written `N/unit` (`"20/s"`, `"600/m"`, `"100/h"`) and the [`governor`] quotas they
//! make. governor limits what only userspace decides (log lines, admin requests, per-user
//! connections); what the kernel and the userspace gate must agree on uses
//! [`relay_common::bucket`] instead.

use std::{fmt, num::NonZeroU32, str::FromStr, time::Duration};

use governor::Quota;
use serde::{Deserialize, Deserializer};

/// Largest `N` in `N/unit`: keeps the interval between two events at least a microsecond.
pub const MAX_COUNT: u32 = 1_000_000;

/// `count` events per `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per unit.
    pub count: NonZeroU32,
    /// The unit.
    pub unit: Unit,
}

/// The time unit of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `s`
    Second,
    /// `m`
    Minute,
    /// `h`
    Hour,
}

impl Unit {
    /// Its length.
    pub const fn duration(self) -> Duration {
        match self {
            Unit::Second => Duration::from_secs(1),
            Unit::Minute => Duration::from_secs(60),
            Unit::Hour => Duration::from_secs(3600),
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
        }
    }
}

impl Rate {
    /// `count` per second.
    pub const fn per_second(count: NonZeroU32) -> Rate {
        Rate {
            count,
            unit: Unit::Second,
        }
    }

    /// A governor quota: one event per `unit / count`, `burst` at once (default `count`).
    pub fn quota(self, burst: Option<NonZeroU32>) -> Quota {
        let interval = self.unit.duration() / self.count.get().min(MAX_COUNT);
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(burst.unwrap_or(self.count))
    }
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate like \"20/s\", \"600/m\" or \"100/h\" (1 to {MAX_COUNT} per unit)")]
pub struct RateError(String);

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Rate, RateError> {
        let error = || RateError(text.to_owned());
        let (count, unit) = text.trim().split_once('/').ok_or_else(error)?;
        let count = count
            .trim()
            .parse::<NonZeroU32>()
            .ok()
            .filter(|n| n.get() <= MAX_COUNT)
            .ok_or_else(error)?;
        let unit = match unit.trim() {
            "s" | "sec" | "second" => Unit::Second,
            "m" | "min" | "minute" => Unit::Minute,
            "h" | "hour" => Unit::Hour,
            _ => return Err(error()),
        };
        Ok(Rate { count, unit })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit.suffix())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_rates() {
        let rate: Rate = "20/s".parse().expect("20/s");
        assert_eq!(rate.to_string(), "20/s");
        assert_eq!(
            "600 / m".parse::<Rate>().map(|r| r.to_string()),
            Ok("600/m".into())
        );
        assert_eq!("3/hour".parse::<Rate>().map(|r| r.unit), Ok(Unit::Hour));
        for bad in ["", "20", "0/s", "-1/s", "20/d", "x/s", "2000000/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn quota_interval_and_burst() {
        let rate: Rate = "20/s".parse().expect("rate");
        let q = rate.quota(None);
        assert_eq!(q.replenish_interval(), Duration::from_millis(50));
        assert_eq!(q.burst_size().get(), 20);
        let q = rate.quota(NonZeroU32::new(5));
        assert_eq!(q.burst_size().get(), 5);
        let hourly: Rate = "2/h".parse().expect("rate");
        assert_eq!(
            hourly.quota(None).replenish_interval(),
            Duration::from_secs(1800)
        );
    }
}
