//! Go `time.Duration` strings as the LAPI writes them (`"3h59m58.9s"`, `"-105.3ms"`, `"0s"`),
//! and the plain form relay sends back (`"3600s"`).

use std::time::Duration;

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a Go duration like \"1h2m3.5s\"")]
pub struct BadDuration {
    /// The text, shortened to 40 characters.
    pub text: String,
}

/// A signed duration: the LAPI sends a negative one for decisions that have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    /// Whether it was negative.
    pub negative: bool,
    /// Its magnitude.
    pub magnitude: Duration,
}

impl GoDuration {
    /// Time left: the magnitude, or zero for a negative duration.
    pub fn remaining(self) -> Duration {
        if self.negative {
            Duration::ZERO
        } else {
            self.magnitude
        }
    }
}

/// Parses `-?(\d+(\.\d+)?(h|m|s|ms|us|µs|μs|ns))+`, or `0`.
pub fn parse(text: &str) -> Result<GoDuration, BadDuration> {
    let bad = || BadDuration {
        text: text.chars().take(40).collect(),
    };
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(bad());
    }
    // Accumulated in nanoseconds as f64 per term, then saturated: durations from the LAPI are
    // at most years, so f64's 53-bit mantissa loses less than a microsecond.
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(bad());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if frac.contains('.') {
            return Err(bad());
        }
        let whole: u128 = whole.parse().map_err(|_| bad())?;
        let mut term = whole.checked_mul(unit_ns).ok_or_else(bad)?;
        // The fraction digit by digit, exactly, down to a nanosecond.
        let mut scale = unit_ns;
        for digit in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            term += u128::from(digit - b'0') * scale;
        }
        total_ns = total_ns.saturating_add(term);
        rest = next;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = u32::try_from(total_ns % 1_000_000_000).unwrap_or(0);
    Ok(GoDuration {
        negative,
        magnitude: Duration::new(secs, nanos),
    })
}

/// A duration in the form relay sends to the LAPI: whole seconds, at least one (`"3600s"`).
pub fn format_secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> (bool, u128) {
        let d = parse(text).unwrap_or_else(|e| panic!("{e}"));
        (d.negative, d.magnitude.as_nanos())
    }

    #[test]
    fn lapi_vectors() {
        assert_eq!(
            ms("3h59m58.9s"),
            (
                false,
                (3 * 3600 + 59 * 60 + 58) * 1_000_000_000 + 900_000_000
            )
        );
        assert_eq!(ms("59m59.223405892s"), (false, 3_599_223_405_892));
        assert_eq!(ms("1h59m59.223405296s"), (false, 7_199_223_405_296));
        assert_eq!(ms("46.166061471s"), (false, 46_166_061_471));
        assert_eq!(ms("-12.835118674s"), (true, 12_835_118_674));
        assert_eq!(ms("-105.329637ms"), (true, 105_329_637));
        assert_eq!(ms("-1s"), (true, 1_000_000_000));
        assert_eq!(ms("4m1s"), (false, 241_000_000_000));
        assert_eq!(ms("0s"), (false, 0));
        assert_eq!(ms("0"), (false, 0));
        assert_eq!(ms("1.5µs"), (false, 1_500));
        assert_eq!(ms("3us"), (false, 3_000));
        assert_eq!(ms("7ns"), (false, 7));
        assert_eq!(ms("0.5h"), (false, 1_800_000_000_000));
        assert_eq!(ms("90m"), (false, 5_400_000_000_000));
    }

    #[test]
    fn garbage_is_rejected() {
        for text in [
            "", "-", "1d", "1 hour", "h", "1.s", ".5s", "1..2s", "1", "s1", "1x", "--1s", "1h-1s",
        ] {
            assert!(parse(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let d = parse("99999999999999999999h").map(|d| d.magnitude);
        assert!(d.is_err() || d.is_ok_and(|d| d.as_secs() > 1 << 40));
        assert!(parse("9999999999999h9999999999999h").is_ok());
    }

    #[test]
    fn negative_means_nothing_left() {
        assert_eq!(parse("-3s").map(GoDuration::remaining), Ok(Duration::ZERO));
        assert_eq!(
            parse("3s").map(GoDuration::remaining),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(format_secs(Duration::from_millis(10)), "1s");
        assert_eq!(format_secs(Duration::from_secs(3600)), "3600s");
    }
}
