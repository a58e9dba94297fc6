//! Logging to stderr: text or JSON, `RUST_LOG`-style filter with an `info` default.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Caps for libraries whose verbose logs would print secrets.
const QUIET_WEBSOCKET_LOGS: &str = "tokio_tungstenite=info";
const QUIET_TUNGSTENITE_LOGS: &str = "tungstenite=info";

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // tungstenite logs whole control messages at trace level, and those carry tokens and
    // one-time rendezvous addresses: cap it whatever the filter asks for.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level))
        .add_directive(QUIET_WEBSOCKET_LOGS.parse().expect("a valid directive"))
        .add_directive(QUIET_TUNGSTENITE_LOGS.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; job logs must stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A log line that cannot be written (stderr a closed pipe: the launcher's log
        // collector is gone) is lost, not reported with `eprintln!`, which would panic
        // the agent before or while it runs the step.
        .log_internal_errors(false);
    // A second init (tests calling into the library twice) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
