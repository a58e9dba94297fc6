//! Human durations (`30s`, `10m`, `1h 30m`) for timeouts in every config layer.

use std::time::Duration;

/// A duration that could not be parsed; the text is not secret, so it is quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. 30s, 10m)")]
pub struct DurationError(String);

/// Parses a humantime duration such as `30s`, `10m`, `1h 30m` or `500ms`.
///
/// ```
/// use std::time::Duration;
/// use amlx_agent::config::parse_duration;
/// assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
/// assert!(parse_duration("10 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text.trim()).map_err(|_| DurationError(text.to_owned()))
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
    }
}
