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

use std::time::Duration;

use crate::inject::{self, Target};
use crate::process::lineage::StepKind;
use crate::role::{Launcher, Role};

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
    ("deepspeed.launcher.launch", "deepspeed"),
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

/// Launcher programs run directly (not through a Python command line), by file name.
const LAUNCHER_PROGRAMS: &[(&str, &str)] = &[
    ("torchrun", "torchrun"),
    ("deepspeed", "deepspeed"),
    ("horovodrun", "horovodrun"),
    ("accelerate", "accelerate"),
    ("mpirun", "mpirun"),
    ("mpiexec", "mpiexec"),
    ("mpiexec.hydra", "mpiexec"),
    ("prterun", "prterun"),
    ("srun", "srun"),
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
    let program = argv
        .first()
        .and_then(|word| Path::new(word).file_name())
        .unwrap_or_default();
    if let Some((_, shown)) = LAUNCHER_PROGRAMS
        .iter()
        .find(|(name, _)| program.as_bytes() == name.as_bytes())
    {
        return ProcessKind::Launcher(shown);
    }
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

impl StepFacts {
    /// What to tell this process's own children about it when it runs without the
    /// agent's debugger: a part of a debugged target stays one (so a grandchild of the
    /// debugged rank 0 is not a second rank 0), a launcher says so, anything else is other.
    pub fn undebugged_kind(&self) -> StepKind {
        match (self.same_role_ancestor, self.kind) {
            (Some(ancestor), _) if ancestor.kind == StepKind::DebuggedTarget => {
                StepKind::DebuggedTarget
            }
            (_, ProcessKind::Launcher(_)) => StepKind::Launcher,
            _ => StepKind::Other,
        }
    }
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
        return not_target(
            policy,
            format!(
                "a child process of the debug target started by amlx-agent (pid {}), with the \
                 same role: the target is debugged, not its children",
                ancestor.agent_pid
            ),
        );
    }
    match facts.kind {
        // A launcher is never a target, whatever rank an outer launcher gave it
        // (`srun ... torchrun`: SLURM_PROCID=0 is the node's task, not rank 0).
        ProcessKind::Launcher(name) => not_target(
            policy,
            format!("{name} starts the job's workers: they are the debug targets, not it"),
        ),
        ProcessKind::Helper(name) => not_target(
            policy,
            format!("{name} is part of the job's machinery, not its code"),
        ),
        ProcessKind::SpawnWorker if role.rank.is_none() => spawn_worker(policy, role),
        ProcessKind::SpawnWorker | ProcessKind::Step => base,
    }
}

fn not_target(policy: &Policy, reason: String) -> Decision {
    Decision {
        verdict: Verdict::NotTarget,
        reason,
        slot_limit: policy.max_targets_per_node,
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

/// The one thing a ParallelRunStep (parallel job) worker's developer must know before
/// pausing it: the driver aborts a long `run()` and fails a long `init()`.
pub fn parallel_worker_warning(role: &Role, facts: &StepFacts) -> Option<String> {
    (facts.kind == ProcessKind::SpawnWorker && role.launcher == Launcher::AzureBatch).then(|| {
        "this looks like a ParallelRunStep / parallel job worker: while a debugger pauses \
             it, the driver aborts and retries a run() that takes longer than \
             run_invocation_timeout (v1) / retry_settings.timeout (v2), 60 s by default, and a \
             worker held in init() longer than 3 x run_invocation_timeout + 30 s fails the job; \
             raise them for a debugging run (v1: ParallelRunConfig(run_invocation_timeout=3600), \
             v2: retry_settings=dict(timeout=3600))"
            .to_owned()
    })
}

/// A ParallelRunStep worker held in `init()` longer than 3 x run_invocation_timeout + 30 s
/// fails the job: 210 s with the default 60 s. Left at the general default, a worker's
/// attach timeout is this, so nobody attaching never fails the job: it leaves 60 s for
/// what comes before the wait (the sidecar's readiness, up to 20 s; the interpreter's
/// start) and the release after it (up to 10 s, the bootstrap's last resort included).
pub const PARALLEL_WORKER_ATTACH_TIMEOUT: Duration = Duration::from_secs(150);

/// The attach timeout of a ParallelRunStep worker: `configured`, except that the general
/// `default` (ten minutes, longer than the job tolerates) becomes
/// [`PARALLEL_WORKER_ATTACH_TIMEOUT`]. A timeout the user set is theirs to keep.
pub fn parallel_worker_attach_timeout(configured: Duration, default: Duration) -> Duration {
    if configured != default {
        return configured;
    }
    tracing::warn!(
        "attach timeout {} instead of the default {}: a ParallelRunStep worker held longer \
         than 3 x run_invocation_timeout + 30 s (210 s by default) fails the job; after \
         raising run_invocation_timeout, set --attach-timeout (AMLX_ATTACH_TIMEOUT) to wait longer",
        humantime::format_duration(PARALLEL_WORKER_ATTACH_TIMEOUT),
        humantime::format_duration(default)
    );
    PARALLEL_WORKER_ATTACH_TIMEOUT
}

#[cfg(test)]
#[path = "process_kind_tests.rs"]
mod tests;
