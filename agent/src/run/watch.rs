//! Follows the run's debug sessions through their status records (what `amlx-agent
//! status` reads), so `run` can say at the end what happened to each rank: waited,
//! attached, timed out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::publish::{SessionState, list_sessions};

/// Between two reads of the state directory.
const POLL: Duration = Duration::from_millis(50);

/// The states one session went through, in order, and the last reason given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub states: Vec<SessionState>,
    pub last_reason: Option<String>,
}

impl History {
    /// Records one observation (consecutive repeats are one state).
    fn saw(&mut self, state: SessionState, reason: Option<String>) {
        if self.states.last() != Some(&state) {
            self.states.push(state);
        }
        self.last_reason = reason;
    }

    /// Whether the session ever was in `state`.
    pub fn was(&self, state: SessionState) -> bool {
        self.states.contains(&state)
    }

    /// `waiting-for-debugger → attached → running-undebugged`.
    pub fn path(&self) -> String {
        self.states
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

/// Each session's history, by rank (`None`: a session that recorded no rank).
pub type Histories = BTreeMap<Option<u32>, History>;

/// Watches `state_dir` for the sessions whose endpoint starts with `endpoint_prefix`.
#[derive(Debug)]
pub struct Watcher {
    stop: CancellationToken,
    task: JoinHandle<Histories>,
}

impl Watcher {
    pub fn start(state_dir: PathBuf, endpoint_prefix: String) -> Watcher {
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let mut history = Histories::new();
            loop {
                observe(&state_dir, &endpoint_prefix, &mut history);
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = cancelled.cancelled() => break,
                }
            }
            // One last look: the record may have changed since the previous poll.
            observe(&state_dir, &endpoint_prefix, &mut history);
            history
        });
        Watcher { stop, task }
    }

    /// Stops watching; what was seen.
    pub async fn finish(self) -> Histories {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

fn observe(state_dir: &std::path::Path, endpoint_prefix: &str, histories: &mut Histories) {
    // A missing or unreadable directory just means no record (yet).
    let Ok(listing) = list_sessions(state_dir) else {
        return;
    };
    for entry in listing
        .sessions
        .iter()
        .filter(|e| e.record.endpoint.starts_with(endpoint_prefix))
    {
        // What the session recorded, even once its process is gone (a reader would show
        // `ended` then): `run` reports the end itself.
        let record = &entry.record;
        if record.state != SessionState::Ended {
            histories
                .entry(record.rank)
                .or_default()
                .saw(record.state, record.reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_changes_in_order() {
        let mut history = History::default();
        let seen = [
            SessionState::WaitingForDebugger,
            SessionState::WaitingForDebugger,
            SessionState::Attached,
            SessionState::RunningUndebugged,
        ];
        for state in seen {
            history.saw(state, Some(format!("{state}")));
        }
        assert_eq!(
            history.path(),
            "waiting-for-debugger → attached → running-undebugged"
        );
        assert!(history.was(SessionState::Attached));
        assert!(!history.was(SessionState::TimedOut));
        assert_eq!(history.last_reason.as_deref(), Some("running-undebugged"));
    }
}
