//! Tables for `kind_of` and `decide_step`.

use super::*;

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

#[test]
fn a_parallel_worker_keeps_any_attach_timeout_but_the_default() {
    let default = Duration::from_secs(600);
    let cases = [
        (default, PARALLEL_WORKER_ATTACH_TIMEOUT),
        (Duration::from_secs(60), Duration::from_secs(60)),
        (Duration::from_secs(3600), Duration::from_secs(3600)),
        (Duration::ZERO, Duration::ZERO),
    ];
    for (configured, want) in cases {
        assert_eq!(parallel_worker_attach_timeout(configured, default), want);
    }
}

#[test]
fn only_spawn_workers_on_azure_batch_get_the_parallel_job_warning() {
    let cases = [
        (Launcher::AzureBatch, ProcessKind::SpawnWorker, true),
        (Launcher::AzureBatch, ProcessKind::Step, false),
        (Launcher::Torchrun, ProcessKind::SpawnWorker, false),
        (Launcher::None, ProcessKind::SpawnWorker, false),
    ];
    for (launcher, kind, warned) in cases {
        let facts = StepFacts {
            kind,
            same_role_ancestor: None,
        };
        let got = parallel_worker_warning(&Role::unknown(launcher), &facts);
        assert_eq!(got.is_some(), warned, "{launcher:?} {kind:?}");
    }
}
