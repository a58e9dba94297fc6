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
