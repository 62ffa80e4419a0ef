//! UTC timestamps in RFC 3339 without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-21T15:04:05Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `20261121T150405Z`, for ids.
pub fn compact(secs: i64) -> String {
    rfc3339(secs).replace(['-', ':'], "")
}

/// Parses what [`compact`] writes (AWS's `x-amz-date` form): `None` unless it is exactly
/// `yyyymmddThhmmssZ` with a valid date and time.
pub fn parse_compact(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let t = |r: std::ops::Range<usize>| &text[r];
    let secs = parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        t(0..4),
        t(4..6),
        t(6..8),
        t(9..11),
        t(11..13),
        t(13..15)
    ))?;
    // A date that does not exist (month 13, 31 November) does not come back the same.
    (compact(secs) == text).then_some(secs)
}

/// Parses what [`rfc3339`] writes.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // days from civil (inverse of `civil`)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `2026-11-21T15:04:05.123Z`: milliseconds since the epoch, as every JSON answer writes a
/// time (the store keeps integers; the wire and the console read one format).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let base = rfc3339(secs);
    format!("{}.{:03}Z", &base[..19], ms.rem_euclid(1000))
}

/// Parses RFC 3339 in UTC, with or without fractional seconds (milliseconds kept), into
/// milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let (whole, frac) = match text.strip_suffix('Z')?.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text.strip_suffix('Z')?, ""),
    };
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let secs = parse_rfc3339(&format!("{whole}Z"))?;
    let ms = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    Some(secs * 1000 + ms)
}

/// Serde for a time kept as milliseconds since the epoch and written as RFC 3339:
/// `#[serde(with = "crate::time::json")]`. Reads either RFC 3339 or (from an older agent's
/// answer) the integer.
pub mod json {
    use serde::{Deserialize, Deserializer, Serializer};

    /// A time in a JSON answer: RFC 3339, or an older agent's integer milliseconds.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Wire {
        Text(String),
        Millis(i64),
    }

    impl Wire {
        pub(super) fn millis<E: serde::de::Error>(self) -> Result<i64, E> {
            match self {
                Wire::Millis(ms) => Ok(ms),
                Wire::Text(t) => super::parse_rfc3339_ms(&t)
                    .ok_or_else(|| E::custom(format!("`{t}` is not an RFC 3339 UTC time"))),
            }
        }
    }

    /// Writes RFC 3339.
    pub fn serialize<S: Serializer, T: Copy + TryInto<i64>>(
        ms: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_ms((*ms).try_into().unwrap_or(i64::MAX)))
    }

    /// Reads RFC 3339 (or integer milliseconds).
    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        let ms = Wire::deserialize(d)?.millis()?;
        T::try_from(ms).map_err(|_| serde::de::Error::custom("a time before 1970"))
    }
}

/// [`json`] for an optional time (`null` when absent).
pub mod json_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes RFC 3339, or `null`.
    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::rfc3339_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 (or integer milliseconds), or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<super::json::Wire>::deserialize(d)?
            .map(super::json::Wire::millis)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_273_445), "2026-11-21T15:04:05Z");
        assert_eq!(compact(1_795_273_445), "20261121T150405Z");
        assert_eq!(parse_compact("20261121T150405Z"), Some(1_795_273_445));
        for bad in [
            "20261131T000000Z",
            "20261121T250000Z",
            "2026112XT150405Z",
            "20261121 150405Z",
        ] {
            assert_eq!(parse_compact(bad), None, "{bad}");
        }
        assert_eq!(parse_rfc3339("2026-11-21T15:04:05Z"), Some(1_795_273_445));
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59Z")
                .map(rfc3339)
                .as_deref(),
            Some("2000-02-29T23:59:59Z")
        );
    }

    #[test]
    fn milliseconds_round_trip_through_rfc3339_and_json() {
        let ms = 1_795_273_445_123;
        assert_eq!(rfc3339_ms(ms), "2026-11-21T15:04:05.123Z");
        assert_eq!(parse_rfc3339_ms("2026-11-21T15:04:05.123Z"), Some(ms));
        assert_eq!(parse_rfc3339_ms("2026-11-21T15:04:05Z"), Some(ms - 123));
        assert_eq!(parse_rfc3339_ms("2026-11-21T15:04:05.1Z"), Some(ms - 23));
        for bad in ["2026-11-21T15:04:05.12a3Z", "2026-11-21T15:04:05+01:00", ""] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "super::json")]
            at: i64,
            #[serde(with = "super::json_opt")]
            done: Option<i64>,
        }
        let t = T { at: ms, done: None };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"at":"2026-11-21T15:04:05.123Z","done":null}"#);
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), t);
        // An older agent's answer: integers.
        let old: T = serde_json::from_str(&format!(r#"{{"at":{ms},"done":{ms}}}"#)).unwrap();
        assert_eq!(
            old,
            T {
                at: ms,
                done: Some(ms)
            }
        );
        assert!(serde_json::from_str::<T>(r#"{"at":"yesterday","done":null}"#).is_err());
    }
}
