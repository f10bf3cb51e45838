//! Durations as operators type them (`30s`, `10m`, `2h`, `7d`, `1h30m`, plain seconds) and as
//! tables show them (`2h3m`).

/// Units accepted by [`parse`], with their length in seconds.
const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parses a positive duration into seconds: plain seconds (`90`), or one or more
/// number-unit pairs with units `s`, `m`, `h`, `d`, `w` (`30s`, `10m`, `2h`, `7d`, `1h30m`).
pub fn parse(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid duration `{text}` (expected e.g. 30s, 10m, 2h, 7d, 1h30m or seconds)");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let total = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().map_err(|_| bad())?
    } else {
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
            let mut chars = rest[digits..].chars();
            let unit = chars.next().ok_or_else(bad)?;
            let (_, scale) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
            total = number
                .checked_mul(*scale)
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| format!("duration `{text}` is too long"))?;
            rest = chars.as_str();
        }
        total
    };
    if total == 0 {
        return Err(format!("duration `{text}` must be longer than zero"));
    }
    Ok(total)
}

/// Formats seconds with the two largest units: `45s`, `10m`, `2h3m`, `7d`, `1d2h`.
pub fn format(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut parts = UNITS[1..]
        .iter()
        .scan(secs, |left, &(unit, scale)| {
            let n = *left / scale;
            *left %= scale;
            Some((n, unit))
        })
        .skip_while(|&(n, _)| n == 0)
        .take(2)
        .filter(|&(n, _)| n > 0)
        .map(|(n, unit)| format!("{n}{unit}"));
    let mut out = parts.next().unwrap_or_default();
    out.extend(parts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_seconds() {
        assert_eq!(parse("30s"), Ok(30));
        assert_eq!(parse("10m"), Ok(600));
        assert_eq!(parse("2h"), Ok(7_200));
        assert_eq!(parse("7d"), Ok(604_800));
        assert_eq!(parse("1w"), Ok(604_800));
        assert_eq!(parse("90"), Ok(90));
        assert_eq!(parse("1h30m"), Ok(5_400));
        assert_eq!(parse(" 1d12h "), Ok(129_600));
    }

    #[test]
    fn rejects_garbage_zero_and_overflow() {
        for bad in ["", "h", "10x", "1.5h", "-5", "5 m", "m5", "10mm", "1h 30m"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("0").unwrap_err().contains("longer than zero"));
        assert!(parse("0s").is_err());
        assert!(parse("99999999999999999999").is_err());
        assert!(
            parse("999999999999999999w")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse("10x").unwrap_err().contains("expected e.g. 30s"));
    }

    #[test]
    fn formats_with_two_units() {
        assert_eq!(format(0), "0s");
        assert_eq!(format(45), "45s");
        assert_eq!(format(600), "10m");
        assert_eq!(format(7_380), "2h3m");
        assert_eq!(format(7_201), "2h");
        assert_eq!(format(604_800), "7d");
        assert_eq!(format(93_600), "1d2h");
        assert_eq!(format(86_401), "1d");
        assert_eq!(format(3_661), "1h1m");
    }

    #[test]
    fn format_then_parse_round_trips_whole_units() {
        for secs in [1, 59, 60, 3_600, 5_400, 86_400, 129_600] {
            assert_eq!(parse(&format(secs)), Ok(secs));
        }
    }
}
