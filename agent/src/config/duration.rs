//! Human durations (`30s`, `10m`, `1h 30m`) for timeouts in every config layer.

use std::time::Duration;

/// The longest duration any setting takes (100 years of 365.25 days, as `100y` reads):
/// "forever" for every timeout here, and still a deadline a clock can hold (`now + d`
/// must not overflow an `Instant`).
pub const LONGEST_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration that could not be parsed, or one over `LONGEST_DURATION` (100 years); the
/// text is not secret, so it is quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?} (expected e.g. 30s, 10m)")]
    Invalid(String),
    #[error("duration {0:?} is longer than 100 years, the longest any setting takes")]
    TooLong(String),
}

/// Parses a humantime duration such as `30s`, `10m`, `1h 30m` or `500ms`.
///
/// ```
/// use std::time::Duration;
/// use amlx_agent::config::parse_duration;
/// assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
/// assert!(parse_duration("10 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|_| DurationError::Invalid(text.to_owned()))?;
    if duration > LONGEST_DURATION {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30_000)),
            ("10m", Some(600_000)),
            ("1h 30m", Some(5_400_000)),
            ("500ms", Some(500)),
            (" 2m ", Some(120_000)),
            ("0s", Some(0)),
            ("10 parsecs", None),
            ("10", None),
            ("", None),
            ("-5s", None),
            ("100y", Some(3_155_760_000_000)),
            ("101y", None),
            ("500000000000y", None),
            ("18446744073709551615s", None),
        ];
        for (text, millis) in cases {
            let got = parse_duration(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *millis, "{text:?}");
        }
    }

    #[test]
    fn error_names_the_text_and_the_expected_form() {
        let err = parse_duration("10 parsecs").expect_err("not a duration");
        assert_eq!(
            err.to_string(),
            r#"invalid duration "10 parsecs" (expected e.g. 30s, 10m)"#
        );
        let err = parse_duration("200y").expect_err("too long");
        assert_eq!(
            err.to_string(),
            r#"duration "200y" is longer than 100 years, the longest any setting takes"#
        );
    }
}
