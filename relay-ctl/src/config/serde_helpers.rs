//! Deserializers for values operators write as text: durations, sizes, times, octal modes.
//!
//! Each error names the value and the accepted shapes; serde attaches the span, so the message
//! ends up with the file and line of the value.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

/// `true`, for `#[serde(default = "yes")]`.
pub(super) fn yes() -> bool {
    true
}

/// A duration as `"10s"`, `"1h"`, `"500ms"` or whole seconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration like \"10s\" or \"1h\": {e}"
            ))
        }),
    }
}

/// A quota in bytes: a number, or a number with a unit (`"500MiB"`, `"10GB"`).
pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Bytes(n) => return Ok(Some(n)),
        Raw::Text(t) => t,
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => u64::MAX,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| unit_bytes != u64::MAX)
        .and_then(|n| n.checked_mul(unit_bytes))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "quota `{text}` is not a size like 10737418240, \"500MiB\" or \"10GB\""
            ))
        })
}

/// A point in time as RFC 3339 (`"2027-01-01T00:00:00Z"`).
pub(super) fn rfc3339<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::SystemTime>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time: {e}")))
}

/// Permission bits as an octal string (`"0600"`, `"0o640"`).
pub(super) fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "mode `{s}` is not octal permission bits like \"0600\""
            ))
        })
}

/// Any type parsed from a string through its [`FromStr`].
pub(super) fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A list of addresses that must not be empty.
pub(super) fn non_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("must list at least one address"));
    }
    Ok(v)
}
