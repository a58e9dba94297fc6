//! What a step's command line and its ancestry say about the process, and the decision
//! rules that follow: a launcher of other workers, a worker that Python's multiprocessing
//! spawned, a child of a debug target, or anything else.
//!
//! The shims (`sitecustomize`, the `python` shim) bring *every* Python process under the
//! agent, launchers included. A launcher without a rank (torchrun's agent process,
//! ParallelRunStep's driver and its `worker_main`) would otherwise look like a lone
//! process, count as rank 0 and take the debug port from the worker that needed it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::inject::{self, Target};
use crate::process::lineage::StepKind;
use crate::role::Role;

use super::{Decision, Policy, Verdict, decide};

/// The kind of process a command line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// A program that starts the job's workers; named for the log.
    Launcher(&'static str),
    /// A helper process of the job's machinery (multiprocessing's resource tracker and
    /// forkserver): never the user's code; named for the log.
    Helper(&'static str),
    /// A worker started by Python's multiprocessing with the *spawn* start method
    /// (`python -c "from multiprocessing.spawn import spawn_main; …" --multiprocessing-fork`):
    /// ParallelRunStep's workers, DataLoader workers, pool workers.
    SpawnWorker,
    /// Anything else: the user's step.
    Step,
}

/// Python modules that start the job's workers, as `python -m NAME`.
const LAUNCHER_MODULES: &[(&str, &str)] = &[
    ("torch.distributed.run", "torchrun"),
    ("torch.distributed.launch", "torch.distributed.launch"),
    ("deepspeed.launcher.runner", "deepspeed"),
    ("accelerate.commands.launch", "accelerate launch"),
];

/// Scripts (by file name) that start the job's workers: console scripts run through their
/// `#!` line, and ParallelRunStep's driver and per-node worker manager.
const LAUNCHER_SCRIPTS: &[(&str, &str)] = &[
    ("torchrun", "torchrun"),
    ("deepspeed", "deepspeed"),
    ("horovodrun", "horovodrun"),
    ("accelerate", "accelerate"),
    (
        "amlbi_main.py",
        "the ParallelRunStep driver (amlbi_main.py)",
    ),
    (
        "worker_main.py",
        "the ParallelRunStep worker manager (worker_main.py)",
    ),
];

/// Code fragments of `python -c` helpers that multiprocessing starts next to its workers.
const HELPER_CODE: &[(&str, &str)] = &[
    (
        "multiprocessing.resource_tracker",
        "multiprocessing's resource tracker",
    ),
    (
        "multiprocessing.semaphore_tracker",
        "multiprocessing's semaphore tracker",
    ),
    (
        "multiprocessing.forkserver",
        "multiprocessing's fork server",
    ),
];

/// The argument multiprocessing's spawn start method appends to a worker's command line.
const SPAWN_MARKER: &str = "--multiprocessing-fork";

/// Classifies `argv` (the step's command line).
///
/// ```
/// use std::ffi::OsString;
/// use amlx_agent::policy::{kind_of, ProcessKind};
/// let argv = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
/// assert_eq!(
///     kind_of(&argv(&["/usr/bin/python3", "-B", "-c",
///         "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
///         "--multiprocessing-fork"])),
///     ProcessKind::SpawnWorker
/// );
/// assert_eq!(kind_of(&argv(&["python", "-m", "torch.distributed.run", "t.py"])), ProcessKind::Launcher("torchrun"));
/// assert_eq!(kind_of(&argv(&["python", "train.py"])), ProcessKind::Step);
/// ```
pub fn kind_of(argv: &[OsString]) -> ProcessKind {
    let Ok(python) = inject::python_argv::parse(argv) else {
        return ProcessKind::Step;
    };
    match &python.target {
        Target::Code(code)
            if python.args.last().map(OsString::as_os_str) == Some(OsStr::new(SPAWN_MARKER))
                && contains(code.as_bytes(), b"spawn_main") =>
        {
            ProcessKind::SpawnWorker
        }
        Target::Module(module) => LAUNCHER_MODULES
            .iter()
            .find(|(name, _)| module.as_bytes() == name.as_bytes())
            .map_or(ProcessKind::Step, |(_, shown)| ProcessKind::Launcher(shown)),
        Target::Script(script) => {
            let name = Path::new(script).file_name().unwrap_or_default();
            LAUNCHER_SCRIPTS
                .iter()
                .find(|(file, _)| name.as_bytes() == file.as_bytes())
                .map_or(ProcessKind::Step, |(_, shown)| ProcessKind::Launcher(shown))
        }
        Target::Code(code) => HELPER_CODE
            .iter()
            .find(|(fragment, _)| contains(code.as_bytes(), fragment.as_bytes()))
            .map_or(ProcessKind::Step, |(_, shown)| ProcessKind::Helper(shown)),
    }
}

/// What the agent knows about a process besides its launcher's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFacts {
    /// From the step's command line.
    pub kind: ProcessKind,
    /// The agent step this process descends from, when it has the same role (its
    /// launcher variables were inherited, not set anew by a launcher in between).
    pub same_role_ancestor: Option<Ancestor>,
}

/// An agent step above this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ancestor {
    /// The PID that agent ran as.
    pub agent_pid: u32,
    /// What it made of its step.
    pub kind: StepKind,
}

/// [`decide`], plus the rules for processes the shims bring in: a child that shares its
/// role with a debugged target is part of that target; a launcher without a rank is not
/// a target; a spawned multiprocessing worker without a rank competes for one of the
/// node's `--max-targets-per-node` slots (one by default).
pub fn decide_step(policy: &Policy, role: &Role, facts: &StepFacts) -> Decision {
    let base = decide(policy, role);
    if !policy.enabled || policy.max_targets_per_node == Some(0) {
        return base;
    }
    if let Some(ancestor) = facts.same_role_ancestor
        && ancestor.kind == StepKind::DebuggedTarget
    {
        return Decision {
            verdict: Verdict::NotTarget,
            reason: format!(
                "a child process of the debug target started by amlx-agent (pid {}), with the \
                 same role: the target is debugged, not its children",
                ancestor.agent_pid
            ),
            slot_limit: policy.max_targets_per_node,
        };
    }
    if role.rank.is_some() {
        return base;
    }
    match facts.kind {
        ProcessKind::Launcher(name) => Decision {
            verdict: Verdict::NotTarget,
            reason: format!("{name} starts the job's workers: they are the debug targets, not it"),
            slot_limit: policy.max_targets_per_node,
        },
        ProcessKind::Helper(name) => Decision {
            verdict: Verdict::NotTarget,
            reason: format!("{name} is part of the job's machinery, not its code"),
            slot_limit: policy.max_targets_per_node,
        },
        ProcessKind::SpawnWorker => spawn_worker(policy, role),
        ProcessKind::Step => base,
    }
}

/// A multiprocessing worker without a rank: on a node the spec allows, one of the node's
/// slots, however many workers the pool has.
fn spawn_worker(policy: &Policy, role: &Role) -> Decision {
    let pooled = Role {
        multi_process: true,
        ..role.clone()
    };
    let base = decide(policy, &pooled);
    if base.verdict != Verdict::Candidate {
        return base;
    }
    let slots = policy.max_targets_per_node.unwrap_or(1);
    let node = match role.node_master {
        Some(true) => " on the master node",
        _ => "",
    };
    Decision {
        verdict: Verdict::Candidate,
        reason: format!(
            "a multiprocessing worker without a rank{node}: a target if it wins one of this \
             node's {slots} debug slot{} (--max-targets-per-node)",
            if slots == 1 { "" } else { "s" }
        ),
        slot_limit: Some(slots),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Launcher;

    fn prs_worker(master: Option<bool>) -> Role {
        Role {
            node_master: master,
            multi_process: true,
            ..Role::unknown(Launcher::AzureBatch)
        }
    }

    fn policy(ranks: &str, max: Option<u32>) -> Policy {
        Policy {
            enabled: true,
            ranks: ranks.parse().expect("a rank spec"),
            max_targets_per_node: max,
        }
    }

    fn facts(kind: ProcessKind, ancestor: Option<StepKind>) -> StepFacts {
        StepFacts {
            kind,
            same_role_ancestor: ancestor.map(|kind| Ancestor {
                agent_pid: 40,
                kind,
            }),
        }
    }

    /// (name, policy, role, facts, verdict, slot limit, reason fragment)
    type Case = (
        &'static str,
        Policy,
        Role,
        StepFacts,
        Verdict,
        Option<u32>,
        &'static str,
    );

    #[test]
    fn decisions_for_processes_the_shims_bring_in() {
        let ranked = Role {
            rank: Some(0),
            world_size: Some(4),
            multi_process: true,
            ..Role::unknown(Launcher::Torchrun)
        };
        let lone = Role::unknown(Launcher::None);
        let cases: Vec<Case> = vec![
            (
                "PRS worker on the master node: one of max slots",
                policy("master", Some(2)),
                prs_worker(Some(true)),
                facts(ProcessKind::SpawnWorker, Some(StepKind::Launcher)),
                Verdict::Candidate,
                Some(2),
                "2 debug slots",
            ),
            (
                "PRS worker, no bound given: one slot",
                policy("master", None),
                prs_worker(Some(true)),
                facts(ProcessKind::SpawnWorker, None),
                Verdict::Candidate,
                Some(1),
                "1 debug slot ",
            ),
            (
                "PRS worker on a non-master node",
                policy("master", Some(2)),
                prs_worker(Some(false)),
                facts(ProcessKind::SpawnWorker, Some(StepKind::Launcher)),
                Verdict::NotTarget,
                Some(2),
                "not the master node",
            ),
            (
                "PRS worker with --ranks 0 on a non-master node",
                policy("0", None),
                prs_worker(Some(false)),
                facts(ProcessKind::SpawnWorker, None),
                Verdict::NotTarget,
                None,
                "not the master node",
            ),
            (
                "the PRS driver is a launcher",
                policy("master", Some(2)),
                prs_worker(Some(true)),
                facts(
                    ProcessKind::Launcher("the ParallelRunStep driver (amlbi_main.py)"),
                    None,
                ),
                Verdict::NotTarget,
                Some(2),
                "starts the job's workers",
            ),
            (
                "torchrun's agent process alone is still a launcher",
                policy("0", None),
                lone.clone(),
                facts(ProcessKind::Launcher("torchrun"), None),
                Verdict::NotTarget,
                None,
                "torchrun starts",
            ),
            (
                "multiprocessing's resource tracker",
                policy("all", None),
                prs_worker(Some(true)),
                facts(
                    ProcessKind::Helper("multiprocessing's resource tracker"),
                    None,
                ),
                Verdict::NotTarget,
                None,
                "machinery",
            ),
            (
                "a DataLoader worker of debugged rank 0",
                policy("0", None),
                ranked.clone(),
                facts(ProcessKind::SpawnWorker, Some(StepKind::DebuggedTarget)),
                Verdict::NotTarget,
                None,
                "pid 40",
            ),
            (
                "a Python child of a debugged lone step",
                policy("0", None),
                lone.clone(),
                facts(ProcessKind::Step, Some(StepKind::DebuggedTarget)),
                Verdict::NotTarget,
                None,
                "not its children",
            ),
            (
                "a Python child of a non-Python target (bash) may be the target",
                policy("0", None),
                lone.clone(),
                facts(ProcessKind::Step, Some(StepKind::Other)),
                Verdict::Target,
                None,
                "alone",
            ),
            (
                "a rank started by a launcher in between: the rank decides",
                policy("0", None),
                ranked.clone(),
                facts(ProcessKind::Step, None),
                Verdict::Target,
                None,
                "rank 0",
            ),
            (
                "debugging off wins over everything",
                Policy {
                    enabled: false,
                    ..policy("all", None)
                },
                prs_worker(Some(true)),
                facts(ProcessKind::SpawnWorker, None),
                Verdict::NotTarget,
                None,
                "debugging is off",
            ),
            (
                "--max-targets-per-node 0 wins over a spawn worker",
                policy("all", Some(0)),
                prs_worker(Some(true)),
                facts(ProcessKind::SpawnWorker, None),
                Verdict::NotTarget,
                Some(0),
                "is 0",
            ),
        ];
        for (name, policy, role, facts, verdict, slots, reason) in cases {
            let got = decide_step(&policy, &role, &facts);
            assert_eq!(got.verdict, verdict, "{name}: {got:?}");
            assert_eq!(got.slot_limit, slots, "{name}: {got:?}");
            assert!(got.reason.contains(reason), "{name}: {:?}", got.reason);
        }
    }

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn kinds_table() {
        let spawn =
            "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)";
        let cases: &[(&[&str], ProcessKind)] = &[
            (
                &[
                    "/opt/py/bin/python3.11",
                    "-B",
                    "-c",
                    spawn,
                    "--multiprocessing-fork",
                ],
                ProcessKind::SpawnWorker,
            ),
            (&["python3", "-c", spawn], ProcessKind::Step),
            (
                &["python3", "-c", "print(1)", "--multiprocessing-fork"],
                ProcessKind::Step,
            ),
            (
                &[
                    "python3",
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    "4",
                    "t.py",
                ],
                ProcessKind::Launcher("torchrun"),
            ),
            (
                &["/usr/bin/python3", "/usr/local/bin/torchrun", "t.py"],
                ProcessKind::Launcher("torchrun"),
            ),
            (
                &[
                    "python",
                    "/mnt/prs/driver/amlbi_main.py",
                    "--scoring_module_name",
                    "s.py",
                ],
                ProcessKind::Launcher("the ParallelRunStep driver (amlbi_main.py)"),
            ),
            (
                &["python", "driver/worker_main.py", "--x"],
                ProcessKind::Launcher("the ParallelRunStep worker manager (worker_main.py)"),
            ),
            (
                &[
                    "/usr/bin/python3",
                    "-B",
                    "-c",
                    "from multiprocessing.resource_tracker import main;main(3)",
                ],
                ProcessKind::Helper("multiprocessing's resource tracker"),
            ),
            (
                &[
                    "python3",
                    "-c",
                    "from multiprocessing.forkserver import main; main(5, 6, ['__main__'])",
                ],
                ProcessKind::Helper("multiprocessing's fork server"),
            ),
            (&["python", "train.py"], ProcessKind::Step),
            (&["python", "-m", "torch"], ProcessKind::Step),
            (&["bash", "-c", "x"], ProcessKind::Step),
            (&[], ProcessKind::Step),
            (&["python", "-m"], ProcessKind::Step),
            (
                &["python", "trainé.py", "--multiprocessing-fork"],
                ProcessKind::Step,
            ),
        ];
        for (words, want) in cases {
            assert_eq!(kind_of(&argv(words)), *want, "{words:?}");
        }
    }
}
