//! Logging to stderr: text or JSON, `RUST_LOG`-style filter with an `info` default; a
//! stderr with no room holds a process at most once, briefly ([`stderr`]).

use std::time::{Duration, Instant};

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::cli::LogFormat;

pub mod stderr;

/// Libraries whose verbose logs would print secrets, capped at info whatever `RUST_LOG`
/// asks for.
const QUIET_LIBRARIES: [&str; 2] = ["tokio_tungstenite", "tungstenite"];

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => Level::ERROR,
        -1 => Level::WARN,
        0 => Level::INFO,
        1 => Level::DEBUG,
        _ => Level::TRACE,
    };
    // A plain level needs no directive parsing: the common case, and every non-target
    // `exec` in front of a job's processes pays for logging set-up before its `execve`.
    // At trace level tungstenite logs whole control messages, which carry tokens and
    // one-time rendezvous addresses: a filter caps it whatever `RUST_LOG` asks for.
    let needs_filter = std::env::var_os("RUST_LOG").is_some() || verbosity > 1;
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder
                .with_writer(stderr::Stderr)
                // Colour only for a person at a terminal; job logs must stay plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                // A log line that cannot be written (stderr a closed pipe: the launcher's
                // log collector is gone) is lost, not reported with `eprintln!`, which
                // would panic the agent before or while it runs the step.
                .log_internal_errors(false);
            // A second init (tests calling into the library twice) is harmless: keep the
            // first.
            let _ = match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            };
        }};
    }
    if needs_filter {
        // `target=level` directives and a bare default level (`RUST_LOG=amlx_agent=debug`,
        // `RUST_LOG=warn`); a value that does not parse falls back to the flags' level.
        // (`Targets`, not `EnvFilter`: the same directives without span and field
        // matching, and without a regex engine in a binary that must stay small.)
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|text| text.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(level));
        let filter = QUIET_LIBRARIES.iter().fold(filter, |filter, library| {
            filter.with_target(*library, Level::INFO)
        });
        let _ = filter_subscriber(format, filter);
    } else {
        install!(tracing_subscriber::fmt().with_max_level(level));
    }
}

/// Installs the formatter behind a `Targets` filter (a layer: the formatter's own
/// builder takes only `EnvFilter`).
fn filter_subscriber(
    format: LogFormat,
    filter: Targets,
) -> Result<(), tracing::subscriber::SetGlobalDefaultError> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(stderr::Stderr)
        .with_ansi(ansi)
        .with_target(false)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(layer).with(filter),
        ),
        LogFormat::Json => tracing::subscriber::set_global_default(
            tracing_subscriber::registry()
                .with(layer.json())
                .with(filter),
        ),
    }
}

/// The most bytes of a peer's text that go into one log line; the rest is counted, not
/// written. Unauthenticated requests are logged when refused, and without a cap each
/// wrote its whole path: 200 requests of 31 KB grew a relay's log by 10.5 MB.
pub const LONGEST_LOGGED: usize = 1024;

/// `text` as it may go into a text log line: control characters (a newline that would
/// start a forged line, a carriage return, a terminal escape) and bidirectional overrides
/// escaped as Rust writes them (`\n`, `\u{1b}`), and at most [`LONGEST_LOGGED`] bytes of
/// it (cut at a character boundary, the rest counted). For anything a peer chose, such as
/// a tracking id or a path from a request nobody has authenticated yet.
pub fn loggable(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_in_a_line(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    let end = (0..=LONGEST_LOGGED.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let kept = text.get(..end).unwrap_or_default();
    let cut = text.len() - kept.len();
    if cut == 0 && !text.chars().any(unsafe_in_a_line) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(kept.len() + 32);
    for c in kept.chars() {
        if unsafe_in_a_line(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut > 0 {
        out.push_str(&format!("… ({cut} more bytes)"));
    }
    std::borrow::Cow::Owned(out)
}

/// How often a line about something a peer can repeat at will may be written: a refused
/// upgrade, a malformed control message, a rendezvous that failed. Floods of them wrote
/// 60 MB of log a second (`relay listen` fed malformed messages by a hostile relay) and
/// 1 MB a second (`relay serve` refusing unauthenticated upgrades).
pub const REPEATED_LINE_EVERY: Duration = Duration::from_secs(10);

/// One kind of log line a peer can repeat at will: the first is written, then at most one
/// per [`REPEATED_LINE_EVERY`], and each written line says how many were left out before it.
#[derive(Debug, Default)]
pub struct Throttle {
    state: std::sync::Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    left_out: u64,
    written_at: Option<Instant>,
}

impl Throttle {
    /// A throttle that has written nothing yet (for a `static` of a module whose lines any
    /// sender can cause, whoever calls it).
    pub const fn new() -> Throttle {
        Throttle {
            state: std::sync::Mutex::new(ThrottleState {
                left_out: 0,
                written_at: None,
            }),
        }
    }

    /// Counts one occurrence at `now`; `Some` when its line is to be written, holding the
    /// occurrences left out since the last one written (show it after the line).
    pub fn admit(&self, now: Instant) -> Option<LeftOut> {
        // The state is two counters, consistent after any panic: a poisoned lock is usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .written_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REPEATED_LINE_EVERY);
        if !due {
            state.left_out = state.left_out.saturating_add(1);
            return None;
        }
        state.written_at = Some(now);
        Some(LeftOut(std::mem::take(&mut state.left_out)))
    }

    /// Writes this occurrence's line with `line` (given what was left out) when the
    /// throttle lets it through now.
    pub fn log(&self, line: impl FnOnce(LeftOut)) {
        if let Some(left_out) = self.admit(Instant::now()) {
            line(left_out);
        }
    }
}

/// Lines of one kind left out of the log since the last one written; shown as a suffix
/// (nothing when none were).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftOut(pub u64);

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} more like it since the last such line, not logged: at most one every {}s)",
                REPEATED_LINE_EVERY.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn a_flood_writes_one_line_per_interval_and_counts_the_rest() {
        let throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(
            throttle.admit(start),
            Some(LeftOut(0)),
            "the first is written"
        );
        for i in 1..=1000u32 {
            assert_eq!(
                throttle.admit(start + Duration::from_millis(i.into())),
                None
            );
        }
        let later = start + REPEATED_LINE_EVERY;
        let written = throttle.admit(later).expect("one line per interval");
        assert_eq!(written, LeftOut(1000));
        assert!(
            written.to_string().contains("1000 more like it"),
            "{written}"
        );
        assert_eq!(LeftOut(0).to_string(), "");
        // A clock that goes backwards (another thread's earlier `now`) is not due.
        assert_eq!(throttle.admit(start), None);
        assert_eq!(
            throttle.admit(later + REPEATED_LINE_EVERY),
            Some(LeftOut(1))
        );
    }
}

#[cfg(test)]
mod loggable_tests {
    use super::loggable;

    #[test]
    fn a_peer_cannot_start_a_line_or_steer_the_terminal() {
        let cases = [
            ("hc/port-0", "hc/port-0"),
            ("é ü 中文 🙂", "é ü 中文 🙂"),
            (
                "x\n2026-01-01T00:00:00Z ERROR forged",
                "x\\n2026-01-01T00:00:00Z ERROR forged",
            ),
            ("a\r\nb", "a\\r\\nb"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("tab\there", "tab\\there"),
            ("\u{202e}txt.exe", "\\u{202e}txt.exe"),
            ("nul\0", "nul\\u{0}"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(loggable(text), want, "{text:?}");
            assert!(!loggable(text).contains('\n'));
        }
    }

    #[test]
    fn a_peer_cannot_fill_the_log() {
        use super::LONGEST_LOGGED;
        let long = "a".repeat(3 * LONGEST_LOGGED);
        let shown = loggable(&long);
        assert!(shown.starts_with(&"a".repeat(LONGEST_LOGGED)));
        assert!(
            shown.ends_with(&format!("… ({} more bytes)", 2 * LONGEST_LOGGED)),
            "{shown}"
        );
        // Cut at a character boundary, never inside one.
        let wide = "中".repeat(LONGEST_LOGGED);
        let shown = loggable(&wide);
        let kept = shown.split('…').next().expect("the kept part");
        assert!(kept.chars().all(|c| c == '中'));
        assert!(kept.len() <= LONGEST_LOGGED);
        // Control characters in the kept part are escaped as before.
        let mixed = "\n".repeat(2 * LONGEST_LOGGED);
        let shown = loggable(&mixed);
        assert!(!shown.contains('\n'));
        assert!(
            shown.ends_with(&format!("… ({} more bytes)", LONGEST_LOGGED)),
            "{shown}"
        );
        // Exactly the limit is kept whole.
        let exact = "b".repeat(LONGEST_LOGGED);
        assert_eq!(loggable(&exact), exact);
    }
}
