//! Recovery objectives in agent.toml: `[environments.NAME.backup] rpo = "1h"`, `rto = "15m"`.
//! The recovery point objective is how old the newest backup proven by a restore may be; the
//! recovery time objective is how long a restore of it may take (the last drill's time).

use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::Validator;

/// An environment's recovery objectives; each is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Objectives {
    /// How old the newest verified backup may be.
    #[serde(serialize_with = "as_secs")]
    pub rpo: Option<Duration>,
    /// How long the last restore drill may have taken.
    #[serde(serialize_with = "as_secs")]
    pub rto: Option<Duration>,
}

fn as_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// `"90s"`, `"15m"`, `"1h"`, `"2d"`, `"1h30m"`: a span of time in words an operator writes.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty duration".into());
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            ' ' if digits.is_empty() => continue,
            _ => return Err(format!("`{text}`: unknown unit `{c}`")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}`: a number must come before `{c}`"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("`{text}`: `{digits}` has no unit"));
    }
    if total == 0 {
        return Err(format!("`{text}` is no time at all"));
    }
    Ok(Duration::from_secs(total))
}

/// `90 s`, `15 min`, `1 h`, `2 d`, `1 h 30 min`, for messages.
pub fn span_text(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut parts = Vec::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "min"), (secs, "s")] {
        if n > 0 {
            parts.push(format!("{n} {unit}"));
        }
    }
    if parts.is_empty() {
        format!("{} ms", d.as_millis())
    } else {
        parts.join(" ")
    }
}

impl Validator<'_> {
    /// An objective's span, or an error at its line.
    pub(super) fn objective(
        &mut self,
        raw: Option<&Spanned<String>>,
        what: &str,
    ) -> Option<Duration> {
        let raw = raw?;
        match parse_span(raw.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    raw,
                    format!("{what}: {e}"),
                    "write a span such as \"1h\", \"15m\", \"90s\", \"2d\" or \"1h30m\"",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_operators_write_them() {
        assert_eq!(parse_span("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_span("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_span("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_span("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "1", "h", "5 weeks", "0s", "1x"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
        assert_eq!(span_text(Duration::from_secs(5400)), "1 h 30 min");
    }
}
