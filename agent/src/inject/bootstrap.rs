//! The debugpy bootstrap: how an injected step starts debugpy in its own interpreter,
//! or runs without it when debugpy cannot be imported, and how it tells the sidecar.
//!
//! The step runs `python <options> -c LAUNCHER <target> <args>`. [`LAUNCHER`] executes
//! the text of `bootstrap.py` (next to this file), which the agent puts, with six
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
//! itself (`release_after`), cancelling it from a thread of its own if it still waits
//! then. Nothing the debugger, the relay or the sidecar does can hold the step longer.

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

/// The bootstrap text for these debugpy arguments (`--connect ADDR …`), report pipe
/// (`None`: nobody listens), failure policy (`fail`: exit 1 instead of running the step
/// without debugpy) and, for a step that waits for a client, how long after its start
/// the bootstrap cancels that wait itself if it still waits (`None`: never).
///
/// ```
/// use std::time::Duration;
/// use amlx_agent::inject::bootstrap;
/// let args = ["--connect".to_owned(), "127.0.0.1:5678".to_owned()];
/// let text = bootstrap::text(&args, Some(7), false, Some(Duration::from_millis(20_500)));
/// assert!(text.starts_with("AMLX_REPORT_FD = 7\nAMLX_DEBUGPY_ARGS = [\"--connect\",\"127.0.0.1:5678\"]\nAMLX_FAIL = False\nAMLX_RELEASE_AFTER = 20.5\n"));
/// ```
pub fn text(
    debugpy_args: &[String],
    report_fd: Option<RawFd>,
    fail: bool,
    release_after: Option<Duration>,
) -> String {
    // The arguments are the agent's own (switches, an address, a port, true/false):
    // JSON string literals of them are Python string literals too.
    let args = serde_json::to_string(debugpy_args).unwrap_or_else(|_| "[]".to_owned());
    let fail = if fail { "True" } else { "False" };
    // When the agent's own wait (and a connect's) is let go: `release_after` from now, on
    // the clock Python's time.monotonic() reads (CLOCK_MONOTONIC, one per machine), so
    // an interpreter that starts late does not start the count again (it held the step a
    // whole attach timeout past the session's deadline).
    let release_at = release_after.zip(monotonic_now()).map_or_else(
        || "None".to_owned(),
        |(after, now)| {
            let after = after.min(crate::session::LONGEST_WAIT).as_secs_f64();
            format!("{:.3}", now + after)
        },
    );
    // Saturated as every session timer is (Python's waits refuse ~292 years and more).
    let release_after = match release_after {
        Some(after) => format!(
            "{:.3}",
            after.min(crate::session::LONGEST_WAIT).as_secs_f64()
        )
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned(),
        None => "None".to_owned(),
    };
    format!(
        "AMLX_REPORT_FD = {}\nAMLX_DEBUGPY_ARGS = {args}\nAMLX_FAIL = {fail}\n\
         AMLX_RELEASE_AFTER = {release_after}\nAMLX_STDERR_WAIT = {}\n\
         AMLX_RELEASE_AT = {release_at}\n{TEXT}",
        report_fd.unwrap_or(-1),
        // The agent's own bound, so the step's notes wait no longer than its log does.
        crate::logging::stderr::STDERR_WAIT_BOUND.as_secs_f64()
    )
}

/// This machine's CLOCK_MONOTONIC in seconds (what Python's `time.monotonic()` reads).
fn monotonic_now() -> Option<f64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let nanos = u32::try_from(now.tv_nsec()).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    Some(Duration::new(secs, nanos).as_secs_f64())
}

/// What the bootstrap told the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// debugpy was imported (and, for `--listen`, listens): the session goes on. With the
    /// port debugpy's adapter listens on when the bootstrap said it (`--listen` with
    /// port 0 lets the adapter pick one: direct mode, where no other process can take
    /// the port between its choice and the adapter's bind).
    Started(Option<u16>),
    /// debugpy could not be imported (why): the step runs without it.
    Missing(String),
    /// Nothing usable: the step ended (or was replaced) before its bootstrap wrote.
    Silent,
}

/// Reads the bootstrap's line (bytes from the step's process: anything is possible).
///
/// ```
/// use amlx_agent::inject::bootstrap::{Report, read_report};
/// assert_eq!(read_report(b"ok\n"), Report::Started(None));
/// assert_eq!(read_report(b"ok 40123\n"), Report::Started(Some(40123)));
/// assert_eq!(read_report(b"missing no debugpy\n"), Report::Missing("no debugpy".into()));
/// assert_eq!(read_report(b""), Report::Silent);
/// assert_eq!(read_report(b"\xff\xfe"), Report::Silent);
/// ```
pub fn read_report(bytes: &[u8]) -> Report {
    let bytes = bytes.get(..MAX_REPORT_BYTES).unwrap_or(bytes);
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    if line == b"ok" {
        return Report::Started(None);
    }
    if let Some(port) = line.strip_prefix(b"ok ") {
        // debugpy started; a port that does not read as one is not used.
        let port = std::str::from_utf8(port)
            .ok()
            .filter(|port| port.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|port| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        return Report::Started(port);
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
            (b"ok", Report::Started(None)),
            (b"ok\nmissing x\n", Report::Started(None)),
            (b"ok 5678\n", Report::Started(Some(5678))),
            (b"ok 0\n", Report::Started(None)),
            (b"ok 65536\n", Report::Started(None)),
            (b"ok +1\n", Report::Started(None)),
            (b"ok \xff\n", Report::Started(None)),
            (b"ok -1\n", Report::Started(None)),
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
    fn the_text_fills_in_exactly_the_six_values() {
        let text = text(&[], None, true, None);
        assert!(text.starts_with(
            "AMLX_REPORT_FD = -1\nAMLX_DEBUGPY_ARGS = []\nAMLX_FAIL = True\nAMLX_RELEASE_AFTER = None\n\
             AMLX_STDERR_WAIT = 1\n"
        ));
        let cases = [
            (Duration::from_secs(20), "20"),
            (Duration::from_millis(1500), "1.5"),
            (Duration::ZERO, "0"),
            (Duration::MAX, "315360000"),
        ];
        for (after, want) in cases {
            let text = super::text(&[], None, false, Some(after));
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
            "AMLX_STDERR_WAIT",
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
