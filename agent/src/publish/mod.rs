//! Announcing a debug session: the session state, a status record on the node
//! (`amlx-agent status`), and MLflow run tags for the job's run page.
//!
//! The session module drives a [`SessionState`] and calls both publishers on every
//! change: [`StatusFile::set_state`] (local, synchronous, atomic) and
//! [`TagPublisher::publish`] (remote, best effort, never blocks the step).

pub mod holder;
pub mod mlflow;
mod state_dir;
pub mod status_file;
pub mod tag_publisher;

use serde::{Deserialize, Serialize};

pub use mlflow::{
    MlflowError, MlflowTags, TagPublisher, session_ended_tag_value, session_tag_key,
    session_tag_value,
};
pub use status_file::{
    Holder, Listing, SessionEntry, StatusFile, StatusRecord, list_sessions, state_dir,
};

/// Where one debug session is. `ended` is terminal; every other state can follow any other.
///
/// | state | meaning |
/// |---|---|
/// | `waiting-for-debugger` | port reserved, debugger and relay path set up, nobody attached yet (connect mode: the relay answers "no listener" and the sidecar keeps retrying) |
/// | `attached` | a debugger client is connected |
/// | `relay-unreachable` | the relay stopped answering after the session was set up (DNS, TCP, TLS); the sidecar keeps retrying until the attach timeout; `reason` says why |
/// | `timed-out` | nobody attached within the attach timeout; the step runs on without a debugger |
/// | `running-undebugged` | debugging could not be set up (`--on-debug-failure continue`: relay down or silent at startup, key refused with 401/403), was given up (401/403 later), the debugger detached, or the debug sidecar died (its keeper records the cause: `the debug sidecar (pid N) was killed by signal 9 (SIGKILL)`); the step runs; `reason` says why |
/// | `ended` | the session is over: its holder process is gone |
///
/// `ended` is mostly a reader's verdict: a [`StatusFile`] removes its record when dropped,
/// and a holder that dies without dropping it (`kill -9`, a sidecar killed with the step)
/// leaves a record that `amlx-agent status` shows as `ended` once the holder's PID is dead
/// or belongs to another process (start time differs). A session may also store it
/// explicitly when it wants the record kept after the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    WaitingForDebugger,
    /// A crashed process waits for a debugger (a post-mortem session).
    PostMortem,
    Attached,
    RelayUnreachable,
    TimedOut,
    RunningUndebugged,
    Ended,
}

impl SessionState {
    /// Every state, in lifecycle order (for help text and tests).
    pub const ALL: [SessionState; 7] = [
        SessionState::WaitingForDebugger,
        SessionState::PostMortem,
        SessionState::Attached,
        SessionState::RelayUnreachable,
        SessionState::TimedOut,
        SessionState::RunningUndebugged,
        SessionState::Ended,
    ];

    /// Whether no further state can follow.
    pub fn is_terminal(self) -> bool {
        self == SessionState::Ended
    }
}

crate::session::keyword_enum!(
    SessionState,
    "session state",
    "waiting-for-debugger" => SessionState::WaitingForDebugger,
    "post-mortem" => SessionState::PostMortem,
    "attached" => SessionState::Attached,
    "relay-unreachable" => SessionState::RelayUnreachable,
    "timed-out" => SessionState::TimedOut,
    "running-undebugged" => SessionState::RunningUndebugged,
    "ended" => SessionState::Ended,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_serde_and_parse_agree_for_every_state() {
        for state in SessionState::ALL {
            let text = state.to_string();
            let json = serde_json::to_value(state).expect("a unit enum serializes");
            assert_eq!(json, serde_json::Value::String(text.clone()));
            assert_eq!(text.parse::<SessionState>(), Ok(state));
            let back: SessionState = serde_json::from_value(json).expect("round trip");
            assert_eq!(back, state);
        }
    }

    #[test]
    fn unknown_state_is_an_error_listing_the_states() {
        let err = "asleep".parse::<SessionState>().expect_err("not a state");
        assert!(err.contains("waiting-for-debugger"), "{err}");
        assert!(err.contains("\"asleep\""), "{err}");
    }

    #[test]
    fn only_ended_is_terminal() {
        let terminal: Vec<_> = SessionState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [SessionState::Ended]);
    }
}
