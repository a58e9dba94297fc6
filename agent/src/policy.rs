//! Which processes are debug targets: the `--ranks` spec and the decision with its reason.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::Serialize;

use crate::role::Role;

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
pub fn decide(policy: &Policy, role: &Role) -> Decision {
    let _ = role;
    if !policy.enabled {
        return Decision {
            verdict: Verdict::NotTarget,
            reason: "debugging is off (enable with --debug or AMLX_DEBUG=1)".into(),
            slot_limit: policy.max_targets_per_node,
        };
    }
    Decision {
        verdict: Verdict::Target,
        reason: "stub".into(),
        slot_limit: policy.max_targets_per_node,
    }
}
