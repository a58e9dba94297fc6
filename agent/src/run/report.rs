//! The run's closing line: what happened to each debugged rank and how the step ended.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use super::watch::{Histories, History};
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

/// The exit code of a `run` that signal `signal` stopped: 128 + N, as a shell reports a
/// command that signal ended (Ctrl-C: 130).
pub fn signal_exit_code(signal: nix::sys::signal::Signal) -> i32 {
    SIGNAL_EXIT_BASE + signal as i32
}

/// What `run` saw, for its closing line.
#[derive(Debug)]
pub struct Report {
    /// `amlx-agent run` / `amlx-agent demo`.
    pub label: &'static str,
    /// The ranks that waited for VS Code.
    pub ranks: Vec<u32>,
    /// What their status records said (empty when the target's are not readable here).
    pub history: Histories,
    /// Ranks whose debug connection the laptop side handed to VS Code.
    pub attached: BTreeSet<u32>,
    /// The signal that stopped `run` (and so the step), if one did.
    pub stopped_by: Option<nix::sys::signal::Signal>,
    pub attach_timeout: Duration,
    /// The step's own exit code ([`exit_code`]); `None` when it had not ended after
    /// SIGKILL and was left behind.
    pub step_code: Option<i32>,
    /// Whether the step's status records were followed (local and docker targets).
    pub followed: bool,
}

/// What happened to one rank's session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Attached,
    TimedOut,
    Interrupted,
    NotAttached(String),
    NotSetUp,
    /// No debugger came, and the target's records are not readable here.
    NotFollowed,
}

impl Report {
    fn outcome(&self, rank: u32, history: Option<&History>) -> Outcome {
        let was = |state| history.is_some_and(|h| h.was(state));
        // The step's own record, where it is readable here, knows best: the listener
        // only sees that VS Code's port took the connection, not that a debugger set up.
        // Timed out first: `attached` is recorded for any connection that arrived,
        // debugger or not (a silent peer on VS Code's port), and a session that timed out
        // had no debugger.
        if was(SessionState::TimedOut) {
            Outcome::TimedOut
        } else if was(SessionState::Attached) || self.attached.contains(&rank) {
            Outcome::Attached
        } else if self.stopped_by.is_some() {
            Outcome::Interrupted
        } else if let Some(reason) = history.and_then(|h| h.last_reason.clone()) {
            Outcome::NotAttached(reason)
        } else if !self.followed {
            Outcome::NotFollowed
        } else {
            Outcome::NotSetUp
        }
    }

    /// The closing line: what happened to the debug sessions, and how the step ended.
    pub fn summary(&self) -> String {
        let label = self.label;
        let timeout = humantime::format_duration(self.attach_timeout);
        if let [rank] = self.ranks.as_slice() {
            let history = self
                .history
                .get(&Some(*rank))
                .or_else(|| self.history.get(&None));
            let session = match self.outcome(*rank, history) {
                Outcome::Attached => format!("VS Code attached to rank {rank}"),
                Outcome::TimedOut => format!(
                    "nobody attached within {timeout}, so rank {rank} ran on without a debugger"
                ),
                Outcome::Interrupted => "stopped before a debugger attached".to_owned(),
                Outcome::NotAttached(reason) => format!("no debugger attached ({reason})"),
                Outcome::NotSetUp => {
                    "no debug session was set up (the agent's log above says why)".to_owned()
                }
                Outcome::NotFollowed => {
                    format!("no debugger attached to rank {rank} (the agent's log above says why)")
                }
            };
            let states = match history {
                Some(history) if !history.states.is_empty() => {
                    format!(" [session: {}]", history.path())
                }
                _ => String::new(),
            };
            return format!(
                "{label}: {session}{}; {}{states}",
                self.crashes(),
                self.ending()
            );
        }
        // Several ranks: one clause per outcome, naming its ranks.
        let mut groups: Vec<(Outcome, Vec<u32>)> = Vec::new();
        for &rank in &self.ranks {
            let outcome = self.outcome(rank, self.history.get(&Some(rank)));
            match groups.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, ranks)) => ranks.push(rank),
                None => groups.push((outcome, vec![rank])),
            }
        }
        let clauses: Vec<String> = groups
            .into_iter()
            .map(|(outcome, ranks)| {
                let who = super::rank_list(&ranks);
                match outcome {
                    Outcome::Attached => format!("VS Code attached to {who}"),
                    Outcome::TimedOut => format!(
                        "nobody attached to {who} within {timeout}, so it ran on without a debugger"
                    ),
                    Outcome::Interrupted => format!("{who}: stopped before a debugger attached"),
                    Outcome::NotAttached(reason) => {
                        format!("{who}: no debugger attached ({reason})")
                    }
                    Outcome::NotSetUp => format!(
                        "{who}: no debug session was set up (the agent's log above says why)"
                    ),
                    Outcome::NotFollowed => {
                        format!("no debugger attached to {who} (the agent's log above says why)")
                    }
                }
            })
            .collect();
        format!(
            "{label}: {}{}; {}",
            clauses.join("; "),
            self.crashes(),
            self.ending()
        )
    }

    /// `the step exited N`, and what `run` exits with when a signal made that differ
    /// (the step caught the SIGTERM it was sent and exited 42: `run` still exits 130).
    fn ending(&self) -> String {
        let code = self.code();
        match self.step_code {
            Some(step_code) if step_code == code => format!("the step exited {code}"),
            Some(step_code) => format!(
                "the step exited {step_code}, and {} exits {code}, as a command stopped by a \
                 signal",
                self.label
            ),
            None => format!(
                "the step had not ended after SIGKILL and was left behind, and {} exits {code}",
                self.label
            ),
        }
    }

    /// What `run` exits with: the step's code, or 128 + the signal that stopped `run`
    /// (Ctrl-C: 130, as a shell reports an interrupted command, whatever the step made of
    /// the SIGTERM it was sent).
    pub fn code(&self) -> i32 {
        // A step is left behind only after a stop signal; as killed by SIGKILL otherwise.
        self.stopped_by.map_or(
            self.step_code
                .unwrap_or(SIGNAL_EXIT_BASE + nix::sys::signal::Signal::SIGKILL as i32),
            signal_exit_code,
        )
    }

    /// `; rank R crashed …` for each rank that had a post-mortem session (empty when
    /// none did, or when the records are not readable here). `run` gives the step its
    /// attach timeout as `--post-mortem-timeout`, so that is the session's deadline too.
    fn crashes(&self) -> String {
        let timeout = humantime::format_duration(self.attach_timeout);
        self.history
            .iter()
            .filter(|(_, history)| history.was(SessionState::PostMortem))
            .map(|(rank, history)| {
                let who = rank.map_or_else(|| "a process".to_owned(), |r| format!("rank {r}"));
                // Timed out first: `attached` is recorded for any connection that
                // arrived, debugger or not, and a session that timed out had none.
                if history.was(SessionState::TimedOut) {
                    format!(
                        "; {who} crashed and nobody attached to its post-mortem session within \
                         {timeout}"
                    )
                } else if history.was(SessionState::Attached) {
                    format!("; {who} crashed and VS Code attached to its post-mortem session")
                } else if let Some(reason) = history.last_reason.as_deref() {
                    format!("; {who} crashed; its post-mortem session ended without a debugger ({reason})")
                } else if self.stopped_by.is_some() {
                    format!(
                        "; {who} crashed and the run was stopped before a debugger attached to \
                         its post-mortem session"
                    )
                } else {
                    format!("; {who} crashed; its post-mortem session ended without a debugger")
                }
            })
            .collect()
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

    fn report(ranks: &[u32], history: Histories, attached: &[u32]) -> Report {
        Report {
            label: "amlx-agent demo",
            ranks: ranks.to_vec(),
            history,
            attached: attached.iter().copied().collect(),
            stopped_by: None,
            attach_timeout: Duration::from_secs(60),
            step_code: Some(0),
            followed: true,
        }
    }

    #[test]
    fn a_crashed_rank_is_named_with_what_became_of_its_post_mortem_session() {
        use SessionState::*;
        let mut histories = Histories::new();
        histories.insert(Some(0), history(&[WaitingForDebugger, Attached], None));
        histories.insert(
            Some(2),
            history(&[PostMortem, Attached, RunningUndebugged], None),
        );
        histories.insert(Some(3), history(&[PostMortem, Attached, TimedOut], None));
        let summary = report(&[0], histories, &[0]).summary();
        assert_eq!(
            summary,
            "amlx-agent demo: VS Code attached to rank 0; rank 2 crashed and VS Code attached \
             to its post-mortem session; rank 3 crashed and nobody attached to its post-mortem \
             session within 1m; the step exited 0 [session: waiting-for-debugger → attached]"
        );
        let mut histories = Histories::new();
        histories.insert(Some(1), history(&[PostMortem], None));
        histories.insert(Some(2), history(&[PostMortem], Some("the helper ended")));
        let mut stopped = report(&[0], histories.clone(), &[]);
        stopped.stopped_by = Some(nix::sys::signal::Signal::SIGINT);
        assert!(
            stopped.summary().contains(
                "rank 1 crashed and the run was stopped before a debugger attached to its \
                 post-mortem session; rank 2 crashed; its post-mortem session ended without a \
                 debugger (the helper ended)"
            ),
            "{}",
            stopped.summary()
        );
        assert!(report(&[0], histories, &[]).summary().contains(
            "rank 2 crashed; its post-mortem session ended without a debugger (the helper \
                 ended)"
        ));
    }

    #[test]
    fn summaries_say_what_happened() {
        use SessionState::*;
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
            let attached: &[u32] = if attached { &[0] } else { &[] };
            let report = report(&[0], Histories::from([(Some(0), history)]), attached);
            assert_eq!(report.summary(), format!("amlx-agent demo: {want}"));
        }
        let interrupted = Report {
            stopped_by: Some(nix::sys::signal::Signal::SIGTERM),
            step_code: Some(143),
            ..report(
                &[0],
                Histories::from([(Some(0), history(&[WaitingForDebugger], Some("waiting")))]),
                &[],
            )
        };
        assert_eq!(
            interrupted.summary(),
            "amlx-agent demo: stopped before a debugger attached; the step exited 143 \
             [session: waiting-for-debugger]"
        );
        // The step caught the signal it was sent and exited with its own code: said as it
        // was, next to what `run` exits with.
        let caught = Report {
            stopped_by: Some(nix::sys::signal::Signal::SIGINT),
            step_code: Some(42),
            ..interrupted
        };
        assert_eq!(
            caught.summary(),
            "amlx-agent demo: stopped before a debugger attached; the step exited 42, and \
             amlx-agent demo exits 130, as a command stopped by a signal \
             [session: waiting-for-debugger]"
        );
        // The kernel held the step after SIGKILL and it was left behind.
        let left = Report {
            step_code: None,
            ..caught
        };
        assert_eq!(left.code(), 130);
        assert_eq!(
            left.summary(),
            "amlx-agent demo: stopped before a debugger attached; the step had not ended \
             after SIGKILL and was left behind, and amlx-agent demo exits 130 \
             [session: waiting-for-debugger]"
        );
    }

    /// Something on VS Code's port that is no debugger (a silent or garbage peer): the
    /// listener handed it the connection and the record says `attached`, then the
    /// session timed out. That is nobody attaching, not "VS Code attached".
    #[test]
    fn a_session_that_timed_out_after_a_connection_is_not_called_attached() {
        use SessionState::*;
        let timed_out = history(&[WaitingForDebugger, Attached, TimedOut], None);
        let report = report(&[0], Histories::from([(Some(0), timed_out)]), &[0]);
        assert_eq!(
            report.summary(),
            "amlx-agent demo: nobody attached within 1m, so rank 0 ran on without a \
             debugger; the step exited 0 \
             [session: waiting-for-debugger → attached → timed-out]"
        );
    }

    #[test]
    fn several_ranks_are_grouped_by_what_happened_to_them() {
        use SessionState::*;
        let histories = Histories::from([
            (Some(1), history(&[WaitingForDebugger, TimedOut], None)),
            (Some(3), history(&[WaitingForDebugger, TimedOut], None)),
        ]);
        let report = report(&[0, 1, 2, 3], histories, &[0, 2]);
        assert_eq!(
            report.summary(),
            "amlx-agent demo: VS Code attached to ranks 0, 2; nobody attached to ranks 1, 3 \
             within 1m, so it ran on without a debugger; the step exited 0"
        );
        let remote = Report {
            followed: false,
            ..self::report(&[0, 1], Histories::new(), &[0])
        };
        assert_eq!(
            remote.summary(),
            "amlx-agent demo: VS Code attached to rank 0; no debugger attached to rank 1 \
             (the agent's log above says why); the step exited 0"
        );
        // The step's record wins over the listener's sight of a TCP connection.
        let fake = self::report(
            &[0],
            Histories::from([(Some(0), history(&[WaitingForDebugger, TimedOut], None))]),
            &[0],
        );
        assert!(
            fake.summary().contains("nobody attached within 1m"),
            "{}",
            fake.summary()
        );
    }
}
