//! How the step ended, and the exit code the agent passes on (shell convention).

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

/// Added to the signal number when the step was killed by a signal (shell convention).
const SIGNAL_EXIT_BASE: i32 = 128;

/// How the step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepExit {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(Signal),
}

impl StepExit {
    /// The status `waitpid` reported, when it is a termination (not stop/continue).
    pub(super) fn from_wait(status: WaitStatus) -> Option<StepExit> {
        match status {
            WaitStatus::Exited(_, code) => Some(StepExit::Exited(code)),
            WaitStatus::Signaled(_, signal, _) => Some(StepExit::Signaled(signal)),
            _ => None,
        }
    }

    /// The agent's exit code: the step's own, or 128+N when signal N killed it.
    pub fn code(self) -> i32 {
        match self {
            StepExit::Exited(code) => code,
            StepExit::Signaled(signal) => SIGNAL_EXIT_BASE + signal as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn wait_status_to_exit_code() {
        let pid = Pid::from_raw(42);
        let cases = [
            (WaitStatus::Exited(pid, 0), Some(0)),
            (WaitStatus::Exited(pid, 7), Some(7)),
            (WaitStatus::Exited(pid, 255), Some(255)),
            (WaitStatus::Signaled(pid, Signal::SIGKILL, false), Some(137)),
            (WaitStatus::Signaled(pid, Signal::SIGTERM, false), Some(143)),
            (WaitStatus::Signaled(pid, Signal::SIGSEGV, true), Some(139)),
            (WaitStatus::Stopped(pid, Signal::SIGSTOP), None),
            (WaitStatus::Continued(pid), None),
            (WaitStatus::StillAlive, None),
        ];
        for (status, want) in cases {
            assert_eq!(
                StepExit::from_wait(status).map(StepExit::code),
                want,
                "{status:?}"
            );
        }
    }
}
