//! Reconnect delays for the listener's control channel: the .NET client's schedule, each
//! step jittered so that many listeners dropped together do not return together.

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

/// Each step is stretched or shrunk by up to this fraction, at random.
pub const JITTER: f64 = 0.2;

/// The immediate first attempt still waits up to this, so a relay restart is not met by
/// every listener in the same millisecond.
pub const FIRST_ATTEMPT_SPREAD: Duration = Duration::from_millis(500);

/// The schedule's step for attempt `attempt` (0-based), before jitter.
pub fn schedule_step(attempt: usize) -> Duration {
    let last = RECONNECT_SCHEDULE[RECONNECT_SCHEDULE.len() - 1];
    RECONNECT_SCHEDULE.get(attempt).copied().unwrap_or(last)
}

/// The delay before attempt `attempt` (0-based): its step, jittered.
pub fn reconnect_delay(attempt: usize) -> Duration {
    jittered(schedule_step(attempt), rand::random::<f64>())
}

/// `step` moved by `unit` (in `[0, 1)`) across its jitter band: `step × (1 ± JITTER)`,
/// or `[0, FIRST_ATTEMPT_SPREAD)` for a zero step.
pub fn jittered(step: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    if step.is_zero() {
        return FIRST_ATTEMPT_SPREAD.mul_f64(unit);
    }
    step.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_0_1_2_5_10_30_then_every_30() {
        let got: Vec<u64> = (0..9).map(|a| schedule_step(a).as_secs()).collect();
        assert_eq!(got, [0, 1, 2, 5, 10, 30, 30, 30, 30]);
        assert_eq!(schedule_step(usize::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let ms = |d: Duration| d.as_millis();
        let cases = [
            (0, 0.0, 0),
            (0, 0.999, 499),
            (1, 0.0, 800),
            (1, 0.5, 1000),
            (1, 1.0, 1200),
            (30, 0.0, 24_000),
            (30, 1.0, 36_000),
            (2, f64::NAN, 2000),
            (2, -5.0, 1600),
            (2, 7.0, 2400),
        ];
        for (secs, unit, want) in cases {
            let got = ms(jittered(Duration::from_secs(secs), unit));
            assert_eq!(got, want, "step {secs}s unit {unit}");
        }
    }

    #[test]
    fn never_a_tight_loop() {
        // Only the first attempt is (nearly) immediate; every later one waits.
        for attempt in 1..100 {
            let delay = reconnect_delay(attempt);
            let step = schedule_step(attempt);
            assert!(delay >= step.mul_f64(1.0 - JITTER), "attempt {attempt}");
            assert!(delay <= step.mul_f64(1.0 + JITTER), "attempt {attempt}");
            assert!(delay >= Duration::from_millis(800));
        }
        assert!(reconnect_delay(0) < FIRST_ATTEMPT_SPREAD);
    }
}
