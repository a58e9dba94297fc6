//! Which process the agent's step is, so a shim never wraps it twice.
//!
//! `exec` exports the PID it ran as and how it runs the step. The step is that PID in
//! replace mode (`execve` keeps it) and that PID's child in supervise mode. Every other
//! process that inherits the variables is a *descendant*: it may be wrapped in its own
//! right (a multiprocessing worker, a `subprocess` Python child). An inherited flag such
//! as `AMLX_AGENT_ACTIVE=1` cannot tell the two apart, which is why the guard is per PID.

use std::ffi::OsString;

use crate::role::Env;

use super::ProcessMode;

/// The PID `exec` ran as (the step's own PID in replace mode, its parent's in supervise).
pub const AGENT_PID_VAR: &str = "AMLX_AGENT_PID";
/// `replace` or `supervise`: how the process in [`AGENT_PID_VAR`] runs the step.
pub const AGENT_PROCESS_VAR: &str = "AMLX_AGENT_PROCESS";
/// What the step of the agent in [`AGENT_PID_VAR`] is ([`StepKind`]).
pub const STEP_KIND_VAR: &str = "AMLX_AGENT_STEP_KIND";
/// `off` stops the Python hook and the shims from wrapping (set on the agent's own
/// interpreter probes, which must never become steps themselves).
pub const SHIM_VAR: &str = "AMLX_SHIM";

/// What an agent made of its step, for the processes the step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A debug target running under the injected debugger, or a process with its role
    /// started inside one: children with that role are part of it.
    DebuggedTarget,
    /// A launcher of other workers (torchrun, ParallelRunStep's `worker_main`).
    Launcher,
    /// Anything else: not a target, or a target whose own code starts the debugger.
    Other,
}

impl StepKind {
    /// The value of [`STEP_KIND_VAR`].
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::DebuggedTarget => "debugged-target",
            StepKind::Launcher => "launcher",
            StepKind::Other => "other",
        }
    }

    fn parse(text: &str) -> StepKind {
        match text {
            "debugged-target" => StepKind::DebuggedTarget,
            "launcher" => StepKind::Launcher,
            _ => StepKind::Other,
        }
    }
}

/// Where this process stands relative to an agent's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// No agent above this process (or variables that make no sense: treated the same).
    Outside,
    /// This process is the step of the agent that ran as `agent_pid`: already wrapped.
    Step {
        agent_pid: u32,
        /// What that agent made of it (a shell it did not inject may since have exec'd
        /// Python in place).
        kind: StepKind,
    },
    /// Started, directly or not, by the step of the agent that ran as `agent_pid`.
    Descendant {
        agent_pid: u32,
        /// What that agent made of its step.
        ancestor: StepKind,
    },
}

/// Reads the lineage of the process `pid` whose parent is `ppid` from `env`.
///
/// ```
/// use std::collections::HashMap;
/// use amlx_agent::process::lineage::{lineage_of, Lineage};
/// let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
///     pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
/// };
/// let replaced = env(&[("AMLX_AGENT_PID", "40"), ("AMLX_AGENT_PROCESS", "replace")]);
/// assert!(matches!(lineage_of(&replaced, 40, 1), Lineage::Step { agent_pid: 40, .. }));
/// let supervised = env(&[("AMLX_AGENT_PID", "1"), ("AMLX_AGENT_PROCESS", "supervise")]);
/// assert!(matches!(lineage_of(&supervised, 7, 1), Lineage::Step { agent_pid: 1, .. }));
/// assert!(matches!(lineage_of(&supervised, 9, 7), Lineage::Descendant { agent_pid: 1, .. }));
/// assert_eq!(lineage_of(&env(&[]), 9, 7), Lineage::Outside);
/// ```
pub fn lineage_of(env: &dyn Env, pid: u32, ppid: u32) -> Lineage {
    let Some(agent_pid) = env.var(AGENT_PID_VAR).as_deref().and_then(canonical_pid) else {
        return Lineage::Outside;
    };
    let is_step = match env.var(AGENT_PROCESS_VAR).as_deref() {
        Some("replace") => pid == agent_pid,
        Some("supervise") => ppid == agent_pid,
        _ => return Lineage::Outside,
    };
    let kind = env
        .var(STEP_KIND_VAR)
        .map_or(StepKind::Other, |v| StepKind::parse(&v));
    if is_step {
        Lineage::Step { agent_pid, kind }
    } else {
        Lineage::Descendant {
            agent_pid,
            ancestor: kind,
        }
    }
}

/// A PID as the agent writes it: ASCII digits, no sign, no leading zero, not zero, no
/// spaces. The Python hook and the shell shims apply exactly this rule too, so all three
/// guards agree on every value (tests/shims/review.rs compares them).
fn canonical_pid(text: &str) -> Option<u32> {
    let digits = text.as_bytes();
    let canonical = !digits.is_empty()
        && digits.first() != Some(&b'0')
        && digits.iter().all(u8::is_ascii_digit);
    canonical.then(|| text.parse().ok()).flatten()
}

/// This process's lineage.
pub fn current(env: &dyn Env) -> Lineage {
    lineage_of(env, std::process::id(), std::os::unix::process::parent_id())
}

/// The variables that mark the step of an agent running as this process in `mode`.
pub fn step_env(mode: ProcessMode) -> [(OsString, OsString); 2] {
    let how = match mode {
        ProcessMode::Replace => "replace",
        ProcessMode::Supervise => "supervise",
    };
    [
        (AGENT_PID_VAR.into(), std::process::id().to_string().into()),
        (AGENT_PROCESS_VAR.into(), how.into()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// (name, environment, pid, parent pid, lineage)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        u32,
        u32,
        Lineage,
    );

    #[test]
    fn lineage_table() {
        let cases: &[Case] = &[
            ("no variables", &[], 5, 4, Lineage::Outside),
            (
                "replace: same pid is the step",
                &[("AMLX_AGENT_PID", "5"), ("AMLX_AGENT_PROCESS", "replace")],
                5,
                4,
                Lineage::Step {
                    agent_pid: 5,
                    kind: StepKind::Other,
                },
            ),
            (
                "replace: a child of the step is a descendant",
                &[
                    ("AMLX_AGENT_PID", "5"),
                    ("AMLX_AGENT_PROCESS", "replace"),
                    ("AMLX_AGENT_STEP_KIND", "debugged-target"),
                ],
                6,
                5,
                Lineage::Descendant {
                    agent_pid: 5,
                    ancestor: StepKind::DebuggedTarget,
                },
            ),
            (
                "supervise: the supervisor's child is the step",
                &[("AMLX_AGENT_PID", "1"), ("AMLX_AGENT_PROCESS", "supervise")],
                7,
                1,
                Lineage::Step {
                    agent_pid: 1,
                    kind: StepKind::Other,
                },
            ),
            (
                "supervise: a grandchild is a descendant",
                &[
                    ("AMLX_AGENT_PID", "1"),
                    ("AMLX_AGENT_PROCESS", "supervise"),
                    ("AMLX_AGENT_STEP_KIND", "launcher"),
                ],
                8,
                7,
                Lineage::Descendant {
                    agent_pid: 1,
                    ancestor: StepKind::Launcher,
                },
            ),
            (
                "garbage pid",
                &[("AMLX_AGENT_PID", "x1"), ("AMLX_AGENT_PROCESS", "replace")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "pid zero",
                &[("AMLX_AGENT_PID", "0"), ("AMLX_AGENT_PROCESS", "replace")],
                0,
                4,
                Lineage::Outside,
            ),
            (
                "spaces, signs and leading zeros are not the agent's",
                &[("AMLX_AGENT_PID", " 5"), ("AMLX_AGENT_PROCESS", "replace")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "a sign",
                &[("AMLX_AGENT_PID", "+5"), ("AMLX_AGENT_PROCESS", "replace")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "a leading zero",
                &[("AMLX_AGENT_PID", "05"), ("AMLX_AGENT_PROCESS", "replace")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "a padded process kind",
                &[("AMLX_AGENT_PID", "5"), ("AMLX_AGENT_PROCESS", "replace ")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "unknown process kind",
                &[("AMLX_AGENT_PID", "5"), ("AMLX_AGENT_PROCESS", "fork")],
                5,
                4,
                Lineage::Outside,
            ),
            (
                "only the old flag",
                &[("AMLX_AGENT_ACTIVE", "1")],
                5,
                4,
                Lineage::Outside,
            ),
        ];
        for (name, pairs, pid, ppid, want) in cases {
            assert_eq!(lineage_of(&env(pairs), *pid, *ppid), *want, "{name}");
        }
    }
}
