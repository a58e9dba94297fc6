//! The demo's closing line: what happened to the debug session and how the step ended.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use super::watch::History;
use crate::publish::SessionState;

/// Exit code for a step killed by a signal: 128 + the signal (shell convention).
const SIGNAL_EXIT_BASE: i32 = 128;

/// The step's exit code: its own, or 128+N when signal N killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| SIGNAL_EXIT_BASE + signal))
        .unwrap_or(1)
}

/// What the demo saw, for its closing line.
#[derive(Debug)]
pub struct Report {
    pub history: History,
    /// The laptop side handed a debug connection to VS Code.
    pub attached: bool,
    pub interrupted: bool,
    pub attach_timeout: Duration,
    pub code: i32,
}

impl Report {
    /// The closing line: what happened to the debug session, and how the step ended.
    pub fn summary(&self) -> String {
        let history = &self.history;
        let session = if self.attached || history.was(SessionState::Attached) {
            "VS Code attached to rank 0".to_owned()
        } else if history.was(SessionState::TimedOut) {
            format!(
                "nobody attached within {}, so rank 0 ran on without a debugger",
                humantime::format_duration(self.attach_timeout)
            )
        } else if self.interrupted {
            "stopped before a debugger attached".to_owned()
        } else if let Some(reason) = &history.last_reason {
            format!("no debugger attached ({reason})")
        } else {
            "no debug session was set up (the agent's log above says why)".to_owned()
        };
        let states = if history.states.is_empty() {
            String::new()
        } else {
            format!(" [session: {}]", history.path())
        };
        format!(
            "amlx-agent demo: {session}; the step exited {}{states}",
            self.code
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(states: &[SessionState], reason: Option<&str>) -> History {
        History {
            states: states.to_vec(),
            last_reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn summaries_say_what_happened() {
        use SessionState::*;
        let minute = Duration::from_secs(60);
        let cases = [
            (
                history(&[WaitingForDebugger, Attached, RunningUndebugged], None),
                false,
                "VS Code attached to rank 0; the step exited 0 \
                 [session: waiting-for-debugger → attached → running-undebugged]",
            ),
            (
                history(&[WaitingForDebugger], None),
                true,
                "VS Code attached to rank 0; the step exited 0 [session: waiting-for-debugger]",
            ),
            (
                history(&[WaitingForDebugger, TimedOut], Some("no debugger")),
                false,
                "nobody attached within 1m, so rank 0 ran on without a debugger; \
                 the step exited 0 [session: waiting-for-debugger → timed-out]",
            ),
            (
                history(&[RunningUndebugged], Some("401 from the relay")),
                false,
                "no debugger attached (401 from the relay); the step exited 0 \
                 [session: running-undebugged]",
            ),
            (
                history(&[], None),
                false,
                "no debug session was set up (the agent's log above says why); the step exited 0",
            ),
        ];
        for (history, attached, want) in cases {
            let report = Report {
                history,
                attached,
                interrupted: false,
                attach_timeout: minute,
                code: 0,
            };
            assert_eq!(report.summary(), format!("amlx-agent demo: {want}"));
        }
        let interrupted = Report {
            history: history(&[WaitingForDebugger], Some("waiting")),
            attached: false,
            interrupted: true,
            attach_timeout: minute,
            code: 143,
        };
        assert_eq!(
            interrupted.summary(),
            "amlx-agent demo: stopped before a debugger attached; the step exited 143 \
             [session: waiting-for-debugger]"
        );
    }
}
