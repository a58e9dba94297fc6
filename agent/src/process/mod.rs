//! Running the step: replace (execve, same PID) or supervise (PID 1 duties like tini).
//!
//! - replace: the agent *becomes* the step. No threads, no runtime, no handlers.
//! - supervise: the agent stays the parent: forwards every catchable signal it does not
//!   need itself to the step's process group (see `signals` for the list), reaps every
//!   child (orphans included), exits with the step's code.
//!
//! Both modes give the step the signal mask and the ignored dispositions the agent was
//! started with, SIGPIPE included, which Rust's runtime changes before `main`: the binary
//! records it first ([`record_inherited_signals`]).
//!
//! # The signal rule for supervise mode
//!
//! Block the supervisor's signals ([`SignalMask::block`]) on the main thread **before any
//! other thread exists**, then start threads (the in-process relay runtime), then
//! [`Supervisor::spawn`]. Threads inherit the mask of the thread that creates them, so
//! every thread then has the forwarded signals blocked and only the supervisor's
//! `sigwaitinfo` takes them. A thread started earlier could have a forwarded signal
//! delivered to it (default action: kill the agent) instead of to the step. Likewise
//! nothing else in the process may use `tokio::signal`, or spawn and wait for its own
//! children (`tokio::process`, `Command::status`): the supervisor reaps *every* child
//! with `waitpid(-1)`. Signals that arrive between `block` and `spawn` stay pending and
//! reach the step as soon as it starts.

mod exit;
mod inherited;
pub mod lineage;
mod program;
mod replace;
mod signals;
mod supervise;

use std::ffi::OsString;
use std::os::fd::RawFd;

pub use exit::StepExit;
pub use inherited::{is_ignored, record_inherited_signals};
pub use program::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};
pub use signals::SignalMask;
pub use supervise::Supervisor;

/// How the agent runs the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessMode {
    /// `execve` into the step: same PID, so launchers see the process they started.
    Replace,
    /// Stay the step's parent like tini (PID 1 of a container).
    Supervise,
}

/// The command plus what the agent adds to its environment.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Program and arguments; the program is looked up in `PATH` like a shell does
    /// (the `PATH` in `env` when it sets one), and `argv[0]` is passed on as given.
    pub argv: Vec<OsString>,
    /// Added to (or overriding) the agent's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// Removed from the agent's own environment (stale values inherited from an outer
    /// step, like another process's `AMLX_DEBUG_PORT`). `env` wins over this.
    pub env_remove: Vec<OsString>,
    /// Descriptors the step must inherit (port locks in replace mode). They must be open;
    /// the step inherits them in both modes, every other descriptor stays close-on-exec.
    /// In supervise mode the supervisor can hold a lock itself instead of listing it here.
    pub keep_fds: Vec<RawFd>,
}

/// Could not start the step.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// 127 not found, 126 not executable.
    pub exit_code: i32,
    /// One line: "cannot run 'foo': command not found".
    pub message: String,
    /// The kernel refused the command line and environment as too long (E2BIG).
    pub too_long: bool,
}

/// A command line for logs and records: the words joined by spaces (lossy UTF-8).
pub fn command_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` as one single-quoted POSIX shell word, whatever it holds.
///
/// ```
/// assert_eq!(amlx_agent::process::shell_quote("it's"), r"'it'\''s'");
/// ```
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// `text` as one shell word to paste: as it is when no shell reads anything special in
/// it, else quoted ([`shell_quote`]).
///
/// ```
/// use amlx_agent::process::shell_word;
/// assert_eq!(shell_word("/home/me/src/trainer"), "/home/me/src/trainer");
/// assert_eq!(shell_word("/home/me/my $(id) proj"), "'/home/me/my $(id) proj'");
/// ```
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        text.to_owned()
    } else {
        shell_quote(text)
    }
}

/// Replace when not PID 1, supervise when PID 1 (container ENTRYPOINT).
pub fn default_mode() -> ProcessMode {
    if std::process::id() == 1 {
        ProcessMode::Supervise
    } else {
        ProcessMode::Replace
    }
}

/// Whether the step's program can be found and run (a `PATH` lookup, no exec).
pub fn findable(step: &Step) -> bool {
    program::findable(step)
}

/// Runs the step. Replace mode returns only when `execve` failed; supervise mode returns
/// the step's exit code (128+N when it died of signal N). Failures to start the step are
/// reported as one line on stderr and returned as 127 / 126.
pub fn run(mode: ProcessMode, step: &Step) -> i32 {
    run_or(mode, step, None)
}

/// [`run`], falling back to `plain` when the kernel refuses `step` as too long (E2BIG)
/// and `plain` is given: a debug target's injected command line and environment (the
/// bootstrap is ~9 KB) can pass ARG_MAX where the step's own fit, and debugging must
/// not keep the step from running.
pub fn run_or(mode: ProcessMode, step: &Step, plain: Option<&Step>) -> i32 {
    let fallback = |err: &ExecError| {
        let plain = plain.filter(|_| err.too_long)?;
        tracing::warn!(
            "the debugger's bootstrap makes the step's command line and environment too \
             long for the kernel (E2BIG, near ARG_MAX); running the step without a debugger"
        );
        Some(plain)
    };
    match mode {
        ProcessMode::Replace => {
            let err = replace::exec(step);
            match fallback(&err) {
                Some(plain) => report(replace::exec(plain)),
                None => report(err),
            }
        }
        ProcessMode::Supervise => {
            let signals = match SignalMask::block() {
                Ok(signals) => signals,
                Err(err) => {
                    // Never seen in practice (sigprocmask only fails on a bad argument);
                    // running the step unsupervised beats not running it.
                    tracing::warn!("cannot block signals for supervise mode ({err}); replacing");
                    return report(replace::exec(step));
                }
            };
            let spawned = match Supervisor::spawn(step, signals) {
                Err(err) => match fallback(&err) {
                    Some(plain) => Supervisor::spawn(plain, signals),
                    None => Err(err),
                },
                spawned => spawned,
            };
            match spawned {
                Ok(supervisor) => supervisor.wait().code(),
                Err(err) => report(err),
            }
        }
    }
}

/// Prints the one-line reason the step could not start and returns its exit code.
fn report(err: ExecError) -> i32 {
    // Not eprintln!: with stderr a closed pipe it panics, and a supervisor then exited
    // 101 instead of the step's 127 or 126; and a full one must not hold the exit.
    crate::logging::stderr::say(&format!("amlx-agent: {err} (exit {})", err.exit_code));
    err.exit_code
}
