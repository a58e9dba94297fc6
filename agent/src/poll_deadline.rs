//! How long one `poll(2)` may wait for a deadline: every bounded wait on a descriptor
//! (the keeper's and the sidecar's pipes, a full stderr, the post-mortem hook's line) loops
//! on poll with this timeout and checks its own deadline after each return.

use std::time::Duration;

use nix::poll::PollTimeout;

/// The timeout for `left` until the deadline: rounded up to whole milliseconds, so a wait
/// with less than a millisecond left sleeps instead of spinning, and capped at poll's
/// largest timeout that nix takes as a `u16` (65 s; the caller loops for the rest).
pub fn poll_timeout(left: Duration) -> PollTimeout {
    let millis = left.as_nanos().div_ceil(1_000_000);
    PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_whole_milliseconds_rounded_up_and_capped() {
        let cases = [
            (Duration::ZERO, 0u16),
            (Duration::from_nanos(1), 1),
            (Duration::from_micros(999), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_micros(1_001), 2),
            (Duration::from_millis(250), 250),
            (Duration::from_millis(65_535), u16::MAX),
            (Duration::from_secs(3_600), u16::MAX),
            (Duration::MAX, u16::MAX),
        ];
        for (left, millis) in cases {
            assert_eq!(poll_timeout(left), PollTimeout::from(millis), "{left:?}");
        }
    }
}
