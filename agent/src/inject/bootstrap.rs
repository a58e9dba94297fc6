//! The debugpy bootstrap: how an injected step starts debugpy in its own interpreter,
//! or runs without it when debugpy cannot be imported, and how it tells the sidecar.
//!
//! The step runs `python <options> -c LAUNCHER <target> <args>`. [`LAUNCHER`] executes
//! the text of `bootstrap.py` (next to this file), which the agent puts, with four
//! values filled in, into [`BOOTSTRAP_VAR`]; the launcher pops that variable, so no
//! child of the step sees it. The text imports debugpy's command line and starts it
//! with the debugpy arguments in front of the target: what `python -m debugpy …` does.
//! When the import fails it runs the target in the same interpreter without debugpy
//! (or exits 1 under `--on-debug-failure fail`), and says why on stderr. Either way it
//! writes one line ([`Report`]) to a pipe the sidecar reads, then closes it.
//!
//! A step that waits for a client (`--wait-for-client`) is released by the sidecar at the
//! attach deadline over DAP. That needs debugpy's adapter to play along, and an adapter
//! that a client left half set up may not: so the bootstrap also bounds debugpy's wait
//! itself (`release_after`, counted from the agent's start: [`ReleaseAt`]), cancelling
//! it from a thread of its own if it still waits then. Nothing the debugger, the relay or the sidecar does can hold the step longer.

use std::os::fd::RawFd;
use std::time::Duration;

/// The `-c` program of an injected step: runs the bootstrap text from the environment.
pub const LAUNCHER: &str = "import os;exec(os.environ.pop('AMLX_DEBUGPY_BOOTSTRAP'))";

/// The variable that carries the bootstrap text to the step's interpreter.
pub const BOOTSTRAP_VAR: &str = "AMLX_DEBUGPY_BOOTSTRAP";

/// The fixed part of the bootstrap.
const TEXT: &str = include_str!("bootstrap.py");

/// The most a report may hold; the bootstrap writes at most 4000 bytes.
pub const MAX_REPORT_BYTES: usize = 4096;

/// When an injected step lets debugpy's wait go by itself: `after` the session began,
/// which is `at` on `CLOCK_MONOTONIC` (the clock Python's `time.monotonic()` reads on
/// Linux). The bootstrap waits until `at`, so the bound counts from the agent's start,
/// not from the interpreter's: a Python slow to start does not lengthen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseAt {
    /// The bound, for the message.
    pub after: Duration,
    /// The same bound as a `CLOCK_MONOTONIC` reading.
    pub at: Duration,
}

impl ReleaseAt {
    /// `after` from now (saturated as every session timer is); `None` only if the clock
    /// cannot be read, and the bootstrap then counts `after` from its own start.
    pub fn from_now(after: Duration) -> Option<ReleaseAt> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        let after = after.min(crate::session::LONGEST_WAIT);
        Some(ReleaseAt {
            after,
            at: Duration::from(now).saturating_add(after),
        })
    }
}

/// Seconds as a Python literal with at most millisecond digits: `20.5`, `12`.
fn seconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned()
}

/// The bootstrap text for these debugpy arguments (`--connect ADDR …`), report pipe
/// (`None`: nobody listens), failure policy (`fail`: exit 1 instead of running the step
/// without debugpy) and, for a step that waits for a client, the bound after which the
/// bootstrap cancels that wait itself if it still waits (`None`: never): until
/// `release.at` when given, else for `release_after` from its own start.
///
/// ```
/// use std::time::Duration;
/// use amlx_agent::inject::bootstrap;
/// let args = ["--connect".to_owned(), "127.0.0.1:5678".to_owned()];
/// let release = bootstrap::ReleaseAt { after: Duration::from_millis(20_500), at: Duration::from_secs(1000) };
/// let text = bootstrap::text(&args, Some(7), false, Some(release.after), Some(release));
/// assert!(text.starts_with("AMLX_REPORT_FD = 7\nAMLX_DEBUGPY_ARGS = [\"--connect\",\"127.0.0.1:5678\"]\nAMLX_FAIL = False\nAMLX_RELEASE_AFTER = 20.5\nAMLX_RELEASE_AT = 1000\n"));
/// ```
pub fn text(
    debugpy_args: &[String],
    report_fd: Option<RawFd>,
    fail: bool,
    release_after: Option<Duration>,
    release: Option<ReleaseAt>,
) -> String {
    // The arguments are the agent's own (switches, an address, a port, true/false):
    // JSON string literals of them are Python string literals too.
    let args = serde_json::to_string(debugpy_args).unwrap_or_else(|_| "[]".to_owned());
    let fail = if fail { "True" } else { "False" };
    // Saturated as every session timer is (Python's waits refuse ~292 years and more).
    let release_after = match release_after {
        Some(after) => seconds(after.min(crate::session::LONGEST_WAIT)),
        None => "None".to_owned(),
    };
    let release_at = match release.filter(|_| release_after != "None") {
        Some(release) => seconds(release.at),
        None => "None".to_owned(),
    };
    format!(
        "AMLX_REPORT_FD = {}\nAMLX_DEBUGPY_ARGS = {args}\nAMLX_FAIL = {fail}\n\
         AMLX_RELEASE_AFTER = {release_after}\nAMLX_RELEASE_AT = {release_at}\n{TEXT}",
        report_fd.unwrap_or(-1)
    )
}

/// What the bootstrap told the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// debugpy was imported: the session goes on.
    Started,
    /// debugpy could not be imported (why): the step runs without it.
    Missing(String),
    /// Nothing usable: the step ended (or was replaced) before its bootstrap wrote.
    Silent,
}

/// Reads the bootstrap's line (bytes from the step's process: anything is possible).
///
/// ```
/// use amlx_agent::inject::bootstrap::{Report, read_report};
/// assert_eq!(read_report(b"ok\n"), Report::Started);
/// assert_eq!(read_report(b"missing no debugpy\n"), Report::Missing("no debugpy".into()));
/// assert_eq!(read_report(b""), Report::Silent);
/// assert_eq!(read_report(b"\xff\xfe"), Report::Silent);
/// ```
pub fn read_report(bytes: &[u8]) -> Report {
    let bytes = bytes.get(..MAX_REPORT_BYTES).unwrap_or(bytes);
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    if line == b"ok" {
        return Report::Started;
    }
    match line.strip_prefix(b"missing ") {
        Some(why) => {
            let why = String::from_utf8_lossy(why);
            // Printable text only: it goes into the log and the status record.
            let why: String = why.chars().filter(|c| !c.is_control()).collect();
            Report::Missing(why.trim().to_owned())
        }
        None => Report::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_of_any_shape_are_read_without_panicking() {
        let long = [b"missing ".as_slice(), &[b'x'; 10_000]].concat();
        let cases: Vec<(&[u8], Report)> = vec![
            (b"ok", Report::Started),
            (b"ok\nmissing x\n", Report::Started),
            (b"okay\n", Report::Silent),
            (
                b"missing \xe9t\xc3\xa9\x1b[31m\n",
                Report::Missing("\u{fffd}t\u{e9}[31m".into()),
            ),
            (b"missing", Report::Silent),
            (b"\n\n", Report::Silent),
            (&long, Report::Missing("x".repeat(MAX_REPORT_BYTES - 8))),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                read_report(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_text_fills_in_exactly_the_five_values() {
        let text = text(&[], None, true, None, None);
        assert!(text.starts_with(
            "AMLX_REPORT_FD = -1\nAMLX_DEBUGPY_ARGS = []\nAMLX_FAIL = True\nAMLX_RELEASE_AFTER = None\nAMLX_RELEASE_AT = None\n"
        ));
        // A deadline on the monotonic clock, a little past now; none without a bound.
        let release = ReleaseAt::from_now(Duration::from_secs(30)).expect("the clock");
        let text = super::text(&[], None, false, Some(release.after), Some(release));
        let at: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("AMLX_RELEASE_AT = "))
            .and_then(|value| value.parse().ok())
            .expect("AMLX_RELEASE_AT is a number");
        assert!(
            (at - release.at.as_secs_f64()).abs() < 0.001,
            "{at} {release:?}"
        );
        let text = super::text(&[], None, false, None, Some(release));
        assert!(text.contains("\nAMLX_RELEASE_AT = None\n"));
        let cases = [
            (Duration::from_secs(20), "20"),
            (Duration::from_millis(1500), "1.5"),
            (Duration::ZERO, "0"),
            (Duration::MAX, "315360000"),
        ];
        for (after, want) in cases {
            let text = super::text(&[], None, false, Some(after), None);
            assert!(
                text.contains(&format!("\nAMLX_RELEASE_AFTER = {want}\n")),
                "{after:?}"
            );
        }
        for name in [
            "AMLX_REPORT_FD",
            "AMLX_DEBUGPY_ARGS",
            "AMLX_FAIL",
            "AMLX_RELEASE_AFTER",
            "AMLX_RELEASE_AT",
        ] {
            assert!(TEXT.contains(name), "{name} is used by bootstrap.py");
            assert!(
                !TEXT.contains(&format!("{name} =")),
                "{name} is set only here"
            );
        }
    }
}
