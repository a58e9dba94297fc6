//! The decision table: every `--ranks` form against known, unknown and shared roles.

use super::super::*;
use crate::role::Launcher as L;

/// An all-unknown role; every launcher but none and Slurm starts several processes.
fn role(launcher: L) -> Role {
    Role {
        multi_process: launcher != L::None && launcher != L::Slurm,
        ..Role::unknown(launcher)
    }
}

/// A rank-known process: `rank` of `world`, local rank `local`, on master node `master`.
fn ranked(rank: u32, local: u32, world: u32, master: Option<bool>) -> Role {
    Role {
        rank: Some(rank),
        local_rank: Some(local),
        world_size: Some(world),
        node_master: master,
        ..role(L::Mpich)
    }
}

fn with(mut role: Role, f: impl FnOnce(&mut Role)) -> Role {
    f(&mut role);
    role
}

struct Case {
    ranks: &'static str,
    max: Option<u32>,
    role: Role,
    verdict: Verdict,
    slot_limit: Option<u32>,
    reason: &'static str,
}

fn case(
    ranks: &'static str,
    role: Role,
    verdict: Verdict,
    slot_limit: Option<u32>,
    reason: &'static str,
) -> Case {
    Case {
        ranks,
        max: None,
        role,
        verdict,
        slot_limit,
        reason,
    }
}

fn capped(max: u32, mut c: Case) -> Case {
    c.max = Some(max);
    c
}

use Verdict::{Candidate, NotTarget, Target};

fn cases() -> Vec<Case> {
    let prs_master = with(role(L::AzureBatch), |r| r.node_master = Some(true));
    let prs_worker = with(role(L::AzureBatch), |r| r.node_master = Some(false));
    let prs_unknown = role(L::AzureBatch);
    let alone = role(L::None);
    vec![
        // explicit lists
        case(
            "0",
            ranked(0, 0, 4, None),
            Target,
            None,
            "rank 0 matches --ranks 0",
        ),
        case(
            "0,3",
            ranked(3, 1, 4, None),
            Target,
            None,
            "rank 3 matches --ranks 0,3",
        ),
        case(
            "0",
            ranked(2, 0, 4, None),
            NotTarget,
            None,
            "rank 2 is not in --ranks 0",
        ),
        case(
            "5-7",
            ranked(6, 0, 8, None),
            Target,
            None,
            "matches --ranks 5-7",
        ),
        capped(
            2,
            case(
                "0-7",
                ranked(6, 0, 8, None),
                Target,
                Some(2),
                "rank 6 matches",
            ),
        ),
        case(
            "0",
            alone.clone(),
            Target,
            None,
            "alone: counts as rank 0, which matches --ranks 0",
        ),
        case(
            "3",
            alone.clone(),
            NotTarget,
            None,
            "alone: counts as rank 0, which is not in --ranks 3",
        ),
        case(
            "0",
            with(role(L::Rank), |r| r.world_size = Some(1)),
            Target,
            None,
            "alone",
        ),
        case("0", role(L::Slurm), Target, None, "alone"),
        case(
            "0",
            prs_master.clone(),
            Candidate,
            Some(1),
            "wins a node slot",
        ),
        capped(
            3,
            case(
                "0",
                prs_master.clone(),
                Candidate,
                Some(3),
                "wins a node slot",
            ),
        ),
        case(
            "0",
            prs_unknown.clone(),
            Candidate,
            Some(1),
            "wins a node slot",
        ),
        case(
            "0",
            prs_worker.clone(),
            NotTarget,
            None,
            "not the master node",
        ),
        case(
            "1,2",
            prs_master.clone(),
            NotTarget,
            None,
            "does not include 0",
        ),
        case(
            "0",
            with(role(L::KubeflowPytorch), |r| {
                r.node_rank = Some(2);
                r.node_master = Some(false);
            }),
            NotTarget,
            None,
            "not the master node",
        ),
        case(
            "0",
            with(role(L::KubeflowPytorch), |r| {
                r.node_rank = Some(0);
                r.node_master = Some(true);
            }),
            Candidate,
            Some(1),
            "node slot",
        ),
        // all
        case(
            "all",
            ranked(5, 1, 8, Some(false)),
            Target,
            None,
            "--ranks all selects every process",
        ),
        case("all", prs_worker.clone(), Target, None, "every process"),
        capped(
            2,
            case("all", prs_worker.clone(), Target, Some(2), "every process"),
        ),
        // master
        case(
            "master",
            ranked(0, 0, 8, Some(true)),
            Target,
            None,
            "local rank 0 on the master node",
        ),
        case(
            "master",
            ranked(4, 0, 8, Some(true)),
            Target,
            None,
            "local rank 0 on the master node",
        ),
        case(
            "master",
            ranked(1, 1, 8, Some(true)),
            NotTarget,
            None,
            "local rank 1 on the master node",
        ),
        case(
            "master",
            ranked(4, 0, 8, Some(false)),
            NotTarget,
            None,
            "not the master node",
        ),
        case(
            "master",
            ranked(0, 0, 8, None),
            Target,
            None,
            "no launcher names a master node",
        ),
        case(
            "master",
            ranked(4, 0, 8, None),
            NotTarget,
            None,
            "rank 4 is not the job's first process",
        ),
        case(
            "master",
            prs_master.clone(),
            Candidate,
            Some(1),
            "single node slot",
        ),
        capped(
            4,
            case(
                "master",
                prs_master.clone(),
                Candidate,
                Some(1),
                "single node slot",
            ),
        ),
        case(
            "master",
            prs_worker.clone(),
            NotTarget,
            None,
            "not the master node",
        ),
        case(
            "master",
            prs_unknown.clone(),
            Candidate,
            Some(1),
            "no master node named",
        ),
        case("master", alone.clone(), Target, None, "alone"),
        case(
            "master",
            with(role(L::Pmix), |r| {
                r.rank = Some(0);
                r.node_master = Some(true);
            }),
            Target,
            None,
            "rank 0 on the master node",
        ),
        case(
            "master",
            with(role(L::Pmix), |r| {
                r.rank = Some(2);
                r.node_master = Some(true);
            }),
            NotTarget,
            None,
            "rank 2 on the master node",
        ),
        case(
            "master",
            with(role(L::Pmix), |r| r.local_rank = Some(2)),
            NotTarget,
            None,
            "local rank is not 0",
        ),
        // local0
        case(
            "local0",
            ranked(4, 0, 8, Some(false)),
            Target,
            None,
            "local rank 0",
        ),
        case(
            "local0",
            ranked(5, 1, 8, Some(true)),
            NotTarget,
            None,
            "local rank 1 is not 0",
        ),
        case(
            "local0",
            with(role(L::Pmix), |r| r.rank = Some(0)),
            Target,
            None,
            "rank 0 is local rank 0",
        ),
        case(
            "local0",
            with(role(L::Pmix), |r| r.rank = Some(3)),
            Candidate,
            Some(1),
            "single node slot",
        ),
        case(
            "local0",
            prs_worker.clone(),
            Candidate,
            Some(1),
            "single node slot",
        ),
        capped(
            1,
            case(
                "local0",
                prs_worker.clone(),
                Candidate,
                Some(1),
                "single node slot",
            ),
        ),
        case("local0", alone.clone(), Target, None, "alone"),
        // whatever the spec
        capped(
            0,
            case(
                "all",
                ranked(0, 0, 1, None),
                NotTarget,
                Some(0),
                "--max-targets-per-node is 0",
            ),
        ),
        case(
            "all",
            role(L::KubeflowMpi),
            NotTarget,
            None,
            "Kubeflow MPIJob",
        ),
        case("0", role(L::KubeflowMpi), NotTarget, None, "after mpirun"),
    ]
}

#[test]
fn decision_table() {
    for c in cases() {
        let policy = Policy {
            enabled: true,
            ranks: c.ranks.parse().expect("valid spec in table"),
            max_targets_per_node: c.max,
        };
        let got = decide(&policy, &c.role);
        let name = format!("--ranks {} max {:?} role {:?}", c.ranks, c.max, c.role);
        assert_eq!(got.verdict, c.verdict, "{name}: {}", got.reason);
        assert_eq!(got.slot_limit, c.slot_limit, "{name}: {}", got.reason);
        assert!(
            got.reason.contains(c.reason),
            "{name}: reason {:?} lacks {:?}",
            got.reason,
            c.reason
        );
    }
}

#[test]
fn disabled_is_never_a_target() {
    for ranks in ["0", "all", "master", "local0"] {
        let policy = Policy {
            enabled: false,
            ranks: ranks.parse().expect("valid spec"),
            max_targets_per_node: None,
        };
        let got = decide(&policy, &ranked(0, 0, 1, Some(true)));
        assert_eq!(got.verdict, Verdict::NotTarget);
        assert!(got.reason.contains("debugging is off"), "{}", got.reason);
    }
}

#[test]
fn slot_limits_combine() {
    let cases = [
        (None, None, None),
        (Some(1), None, Some(1)),
        (None, Some(3), Some(3)),
        (Some(1), Some(3), Some(1)),
        (Some(4), Some(2), Some(2)),
    ];
    for (own, max, want) in cases {
        assert_eq!(slot_limit(own, max), want, "own {own:?} max {max:?}");
    }
}
