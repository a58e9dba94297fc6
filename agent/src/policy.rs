//! Which processes are debug targets: the `--ranks` spec and the decision with its reason.
//!
//! A process whose rank is unknown counts as rank 0 only when it is alone. Processes
//! that share a node without ranks (ParallelRunStep workers) become [`Verdict::Candidate`]s
//! and compete for at most `slot_limit` node slots through the port reservations.
//!
//! `master` is the first process on the master node. The master node is what the
//! launcher says (Azure Batch flag, Slurm's first step host), else node rank 0 (see
//! [`Role::node_master`]); when no launcher says anything about nodes, it falls back on
//! global rank 0, which every launcher places first on the first node.
//!
//! A Kubeflow MPIJob pod process that mpirun did not start (a worker's sshd, the
//! launcher pod's mpirun) is never a target, whatever the spec: it is not a rank.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::Serialize;

use crate::role::{Launcher, Role};

mod process_kind;

pub use process_kind::{
    Ancestor, PARALLEL_WORKER_ATTACH_TIMEOUT, ProcessKind, StepFacts, decide_step, kind_of,
    parallel_worker_attach_timeout, parallel_worker_warning,
};

/// The `--ranks` spec.
///
/// ```
/// use amlx_agent::policy::RankSpec;
/// let spec: RankSpec = "0,3,5-7".parse().unwrap();
/// assert!(spec.contains_rank(6) && !spec.contains_rank(4));
/// assert_eq!(spec.to_string(), "0,3,5-7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankSpec {
    /// Every process.
    All,
    /// The first process on the node-master node.
    Master,
    /// Local rank 0 on each node.
    Local0,
    /// Explicit global ranks and ranges.
    Ranks(Vec<RangeInclusive<u32>>),
}

impl Default for RankSpec {
    fn default() -> Self {
        RankSpec::Ranks(vec![0..=0])
    }
}

impl RankSpec {
    /// Whether an explicit global rank is selected (`All` selects every rank).
    pub fn contains_rank(&self, rank: u32) -> bool {
        match self {
            RankSpec::All => true,
            RankSpec::Ranks(ranges) => ranges.iter().any(|r| r.contains(&rank)),
            RankSpec::Master | RankSpec::Local0 => false,
        }
    }
}

/// Why a rank spec could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rank spec {spec:?}: {why} (expected 0, all, master, local0 or a list like 0,3,5-7)"
)]
pub struct RankSpecError {
    spec: String,
    why: String,
}

impl FromStr for RankSpec {
    type Err = RankSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| RankSpecError {
            spec: s.to_owned(),
            why,
        };
        let trimmed = s.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "all" => return Ok(RankSpec::All),
            "master" => return Ok(RankSpec::Master),
            "local0" => return Ok(RankSpec::Local0),
            "" => return Err(err("empty".into())),
            _ => {}
        }
        let mut ranges = Vec::new();
        for part in trimmed.split(',') {
            let part = part.trim();
            let parse = |n: &str| {
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| err(format!("{n:?} is not a rank number")))
            };
            let range = match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (parse(lo)?, parse(hi)?);
                    if lo > hi {
                        return Err(err(format!("range {part} runs backwards")));
                    }
                    lo..=hi
                }
                None => {
                    let n = parse(part)?;
                    n..=n
                }
            };
            ranges.push(range);
        }
        Ok(RankSpec::Ranks(ranges))
    }
}

impl fmt::Display for RankSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankSpec::All => f.write_str("all"),
            RankSpec::Master => f.write_str("master"),
            RankSpec::Local0 => f.write_str("local0"),
            RankSpec::Ranks(ranges) => {
                for (i, r) in ranges.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if r.start() == r.end() {
                        write!(f, "{}", r.start())?;
                    } else {
                        write!(f, "{}-{}", r.start(), r.end())?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// The debug policy after config layering.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub enabled: bool,
    pub ranks: RankSpec,
    pub max_targets_per_node: Option<u32>,
}

/// The outcome for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Debug this process.
    Target,
    /// Run the command untouched.
    NotTarget,
    /// Rank unknown and not alone: a target only if it wins a node slot through the
    /// port reservations (at most `slot_limit` live targets on the node).
    Candidate,
}

/// The decision, its reason (for `detect` and the log) and the node-slot bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
    /// At most this many live debug targets on the node (`None`: unbounded).
    pub slot_limit: Option<u32>,
}

/// Decides whether `role` is a debug target under `policy`.
///
/// ```
/// use amlx_agent::policy::{decide, Policy, Verdict};
/// use amlx_agent::role::{Launcher, Role};
/// let role = Role {
///     launcher: Launcher::Mpich,
///     rank: Some(3),
///     local_rank: Some(1),
///     world_size: Some(4),
///     local_world_size: Some(2),
///     node_rank: None,
///     node_master: None,
///     multi_process: true,
/// };
/// let policy = Policy { enabled: true, ranks: "0,3".parse().unwrap(), max_targets_per_node: None };
/// let decision = decide(&policy, &role);
/// assert_eq!(decision.verdict, Verdict::Target);
/// assert_eq!(decision.reason, "rank 3 matches --ranks 0,3");
/// ```
pub fn decide(policy: &Policy, role: &Role) -> Decision {
    let max = policy.max_targets_per_node;
    if !policy.enabled {
        return not_target(
            max,
            "debugging is off (enable with --debug or AMLX_DEBUG=1)".into(),
        );
    }
    if max == Some(0) {
        return not_target(
            max,
            "--max-targets-per-node is 0: no debug targets on any node".into(),
        );
    }
    if role.launcher == Launcher::KubeflowMpi && role.rank.is_none() {
        return not_target(
            max,
            "a Kubeflow MPIJob pod process is not an MPI rank; put amlx-agent after mpirun \
             (mpirun ... amlx-agent exec -- CMD)"
                .into(),
        );
    }
    let spec = &policy.ranks;
    match spec {
        RankSpec::All => target(max, "--ranks all selects every process".into()),
        RankSpec::Ranks(_) => by_rank(spec, max, role),
        RankSpec::Master => master(max, role),
        RankSpec::Local0 => local0(max, role),
    }
}

/// An explicit list: the rank decides; an unknown rank stands in for rank 0 only.
fn by_rank(spec: &RankSpec, max: Option<u32>, role: &Role) -> Decision {
    if let Some(rank) = role.rank {
        return if spec.contains_rank(rank) {
            target(max, format!("rank {rank} matches --ranks {spec}"))
        } else {
            not_target(max, format!("rank {rank} is not in --ranks {spec}"))
        };
    }
    if role.alone() {
        return if spec.contains_rank(0) {
            target(
                max,
                format!("rank unknown and alone: counts as rank 0, which matches --ranks {spec}"),
            )
        } else {
            not_target(
                max,
                format!("rank unknown and alone: counts as rank 0, which is not in --ranks {spec}"),
            )
        };
    }
    if !spec.contains_rank(0) {
        return not_target(
            max,
            format!(
                "rank unknown ({}): only rank 0 can be chosen without a rank, and --ranks {spec} does not include 0",
                role.launcher
            ),
        );
    }
    if role.node_master == Some(false) {
        return not_target(
            max,
            format!(
                "rank unknown ({}) and this is not the master node: rank 0 runs on the master node",
                role.launcher
            ),
        );
    }
    candidate(
        Some(max.unwrap_or(1)),
        max,
        format!(
            "rank unknown ({}) and other processes may share this node: it stands in for rank 0 of --ranks {spec} if it wins a node slot",
            role.launcher
        ),
    )
}

/// `master`: the first process on the master node; without any node information, rank 0.
fn master(max: Option<u32>, role: &Role) -> Decision {
    match role.node_master {
        Some(false) => not_target(max, "this is not the master node (--ranks master)".into()),
        Some(true) => match (role.local_rank, role.rank) {
            (Some(0), _) => target(max, "local rank 0 on the master node (--ranks master)".into()),
            (Some(local), _) => not_target(
                max,
                format!("local rank {local} on the master node; --ranks master selects local rank 0"),
            ),
            (None, Some(0)) => target(max, "rank 0 on the master node (--ranks master)".into()),
            (None, Some(rank)) => not_target(
                max,
                format!("rank {rank} on the master node; --ranks master selects its first process"),
            ),
            (None, None) => first_process_unknown(max, role, "on the master node"),
        },
        None => match role.rank {
            Some(0) => target(
                max,
                "rank 0 is the job's first process (no launcher names a master node; --ranks master)".into(),
            ),
            Some(rank) => not_target(
                max,
                format!("rank {rank} is not the job's first process (no launcher names a master node; --ranks master)"),
            ),
            None if role.local_rank.is_some_and(|local| local != 0) => not_target(
                max,
                "local rank is not 0, so not the first process of any node (--ranks master)".into(),
            ),
            None => first_process_unknown(max, role, "with no master node named"),
        },
    }
}

/// `local0`: local rank 0 on every node.
fn local0(max: Option<u32>, role: &Role) -> Decision {
    match (role.local_rank, role.rank) {
        (Some(0), _) => target(max, "local rank 0 (--ranks local0)".into()),
        (Some(local), _) => {
            not_target(max, format!("local rank {local} is not 0 (--ranks local0)"))
        }
        (None, Some(0)) => target(
            max,
            "rank 0 is local rank 0 on its node (--ranks local0)".into(),
        ),
        (None, _) => first_process_unknown(max, role, "on this node"),
    }
}

/// Local and global rank unknown: alone means first; otherwise one node slot decides.
fn first_process_unknown(max: Option<u32>, role: &Role, place: &str) -> Decision {
    if role.alone() {
        target(
            max,
            format!("rank unknown and alone: the first process {place}"),
        )
    } else {
        candidate(
            Some(1),
            max,
            format!(
                "rank unknown ({}): the first process {place} is whichever wins the single node slot",
                role.launcher
            ),
        )
    }
}

/// The tighter of a rule's own node-slot bound and `--max-targets-per-node`.
fn slot_limit(own: Option<u32>, max: Option<u32>) -> Option<u32> {
    match (own, max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn target(max: Option<u32>, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Target,
        reason,
        slot_limit: max,
    }
}

fn not_target(max: Option<u32>, reason: String) -> Decision {
    Decision {
        verdict: Verdict::NotTarget,
        reason,
        slot_limit: max,
    }
}

fn candidate(own: Option<u32>, max: Option<u32>, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Candidate,
        reason,
        slot_limit: slot_limit(own, max),
    }
}

#[cfg(test)]
mod tests;
