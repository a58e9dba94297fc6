//! Logging to stderr: text or JSON, `RUST_LOG`-style filter with an `info` default.

use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Caps for libraries whose verbose logs would print secrets.
const QUIET_WEBSOCKET_LOGS: &str = "tokio_tungstenite=info";
const QUIET_TUNGSTENITE_LOGS: &str = "tungstenite=info";

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
                .with_writer(std::io::stderr)
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
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(level.as_str()))
            .add_directive(QUIET_WEBSOCKET_LOGS.parse().expect("a valid directive"))
            .add_directive(QUIET_TUNGSTENITE_LOGS.parse().expect("a valid directive"));
        install!(tracing_subscriber::fmt().with_env_filter(filter));
    } else {
        install!(tracing_subscriber::fmt().with_max_level(level));
    }
}
