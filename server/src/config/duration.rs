//! Durations in config files, written the way Centrifugo's (Go) configs write them.
//!
//! Accepted: a Go duration string (`"25s"`, `"1m30s"`, `"720h"`, `"150ms"`, `"0"`) or an integer
//! number of nanoseconds. Written back as the shortest Go-style string.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A config duration; see the module docs for the accepted spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// A config duration that may be negative, for the few keys where Centrifugo gives a negative
/// value a meaning (usually "disabled" or "at once").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignedDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl SignedDuration {
    pub fn is_negative(&self) -> bool {
        self.negative && !self.magnitude.is_zero()
    }

    pub fn is_zero(&self) -> bool {
        self.magnitude.is_zero()
    }

    /// The duration when it is positive.
    pub fn positive(&self) -> Option<Duration> {
        (!self.negative && !self.magnitude.is_zero()).then_some(self.magnitude)
    }
}

impl Serialize for SignedDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sign = if self.is_negative() { "-" } else { "" };
        serializer.serialize_str(&format!("{sign}{}", format_go_duration(self.magnitude)))
    }
}

impl<'de> Deserialize<'de> for SignedDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SignedVisitor;
        impl Visitor<'_> for SignedVisitor {
            type Value = SignedDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"25s\" or \"-1s\", or integer nanoseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let trimmed = v.trim();
                let (negative, text) = match trimmed.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, trimmed),
                };
                let magnitude = parse_go_duration(text).map_err(E::custom)?;
                Ok(SignedDuration { negative, magnitude })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(SignedDuration { negative: false, magnitude: Duration::from_nanos(v) })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(SignedDuration { negative: v < 0, magnitude: Duration::from_nanos(v.unsigned_abs()) })
            }
        }
        deserializer.deserialize_any(SignedVisitor)
    }
}

/// Parses a Go duration string such as `"1h2m3.5s"`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        if number_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| format!("invalid duration {text:?}"))?
        };
        let mut part =
            whole.checked_mul(unit_nanos).ok_or_else(|| format!("duration {text:?} is too large"))?;
        let mut scale = unit_nanos;
        for digit in fraction.chars() {
            let digit = digit.to_digit(10).ok_or_else(|| format!("invalid duration {text:?}"))?;
            scale /= 10;
            part += u128::from(digit) * scale;
        }
        total_nanos =
            total_nanos.checked_add(part).ok_or_else(|| format!("duration {text:?} is too large"))?;
        rest = tail;
    }
    let secs =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| format!("duration {text:?} is too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats like Go's `time.Duration.String` but without zero components (`"720h"`, `"1m30s"`).
pub fn format_go_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    let mut out = String::new();
    let mut secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let hours = secs / 3600;
    secs %= 3600;
    let minutes = secs / 60;
    secs %= 60;
    if hours > 0 {
        out += &format!("{hours}h");
    }
    if minutes > 0 {
        out += &format!("{minutes}m");
    }
    if nanos == 0 {
        if secs > 0 {
            out += &format!("{secs}s");
        }
    } else if secs == 0 && nanos.is_multiple_of(1_000_000) && hours == 0 && minutes == 0 {
        out += &format!("{}ms", nanos / 1_000_000);
    } else {
        let fraction = format!("{nanos:09}");
        out += &format!("{secs}.{}s", fraction.trim_end_matches('0'));
    }
    out
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_go_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"25s\", \"1m30s\", \"720h\" or integer nanoseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_go_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration(Duration::from_nanos(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|v| ConfigDuration(Duration::from_nanos(v)))
                    .map_err(|_| E::custom("negative duration"))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_spellings() {
        assert_eq!(parse_go_duration("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("720h").unwrap(), Duration::from_secs(720 * 3600));
        assert_eq!(parse_go_duration("150ms").unwrap(), Duration::from_millis(150));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("25").is_err());
        assert!(parse_go_duration("5 parsecs").is_err());
        assert!(parse_go_duration("-1s").is_err());
    }

    #[test]
    fn signed_durations_keep_their_sign() {
        let parse = |v: serde_json::Value| serde_json::from_value::<SignedDuration>(v).unwrap();
        assert!(parse(serde_json::json!("-1s")).is_negative());
        assert!(parse(serde_json::json!(-1)).is_negative());
        assert_eq!(parse(serde_json::json!("5s")).positive(), Some(Duration::from_secs(5)));
        assert!(parse(serde_json::json!("0")).is_zero());
        assert_eq!(parse(serde_json::json!("-0s")).positive(), None);
    }

    #[test]
    fn formats_round_trip() {
        for text in ["25s", "1m30s", "720h", "150ms", "1.5s", "0s"] {
            let parsed = parse_go_duration(text).unwrap();
            assert_eq!(format_go_duration(parsed), text);
        }
    }
}
