//! Reconnect delays for the listener's control channel (what the .NET client does).

use std::time::Duration;

/// Delay before reconnect attempt N (0-based) after a failure; the last entry repeats.
pub const RECONNECT_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(0),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// A control channel that stayed up this long counts as healthy: the schedule restarts.
/// Shorter connections keep climbing it, so a relay that accepts and drops at once is
/// never hammered.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// The delay before attempt `attempt` (0-based).
pub fn reconnect_delay(attempt: usize) -> Duration {
    let last = RECONNECT_SCHEDULE[RECONNECT_SCHEDULE.len() - 1];
    RECONNECT_SCHEDULE.get(attempt).copied().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_0_1_2_5_10_30_then_every_30() {
        let got: Vec<u64> = (0..9).map(|a| reconnect_delay(a).as_secs()).collect();
        assert_eq!(got, [0, 1, 2, 5, 10, 30, 30, 30, 30]);
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_secs(30));
    }

    #[test]
    fn never_a_tight_loop() {
        // Only the first attempt is immediate; every later one waits.
        assert!((1..100).all(|a| reconnect_delay(a) >= Duration::from_secs(1)));
    }
}
