//! How the step ended, and the exit code the agent passes on (shell convention).
//!
//! Decoded from the raw `waitpid` status rather than nix's `WaitStatus`: nix only knows
//! signals 1..=31, so a step killed by a forwarded real-time signal would make its
//! `waitpid` fail after the kernel had already consumed the status.

use nix::libc;

/// Added to the signal number when the step was killed by a signal (shell convention).
const SIGNAL_EXIT_BASE: i32 = 128;

/// How the step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepExit {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal number (real-time signals included).
    Signaled(i32),
}

impl StepExit {
    /// The raw status `waitpid` reported, when it is a termination (not stop/continue).
    pub(super) fn from_status(status: i32) -> Option<StepExit> {
        if libc::WIFEXITED(status) {
            Some(StepExit::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(StepExit::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The agent's exit code: the step's own, or 128+N when signal N killed it.
    pub fn code(self) -> i32 {
        match self {
            StepExit::Exited(code) => code,
            StepExit::Signaled(signo) => SIGNAL_EXIT_BASE + signo,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_to_exit_code() {
        // Raw statuses as the kernel encodes them: exit code in bits 8..16; the killing
        // signal in bits 0..7 (0x80: core dumped); 0x7f marks a stop, 0xffff a continue.
        let rtmin = libc::SIGRTMIN();
        let cases = [
            (0, Some(0)),
            (7 << 8, Some(7)),
            (255 << 8, Some(255)),
            (libc::SIGKILL, Some(137)),
            (libc::SIGTERM, Some(143)),
            (libc::SIGSEGV | 0x80, Some(139)),
            (rtmin, Some(128 + rtmin)),
            (libc::SIGRTMAX(), Some(128 + libc::SIGRTMAX())),
            ((libc::SIGSTOP << 8) | 0x7f, None),
            ((libc::SIGTSTP << 8) | 0x7f, None),
            (0xffff, None),
        ];
        for (status, want) in cases {
            assert_eq!(
                StepExit::from_status(status).map(StepExit::code),
                want,
                "status {status:#x}"
            );
        }
    }
}
