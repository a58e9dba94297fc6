//! Review of the per-process guard and the launcher/child decisions: reproductions of
//! the findings (each test states what a user expects; a failing test is a finding).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use amlx_agent::policy::{Ancestor, Policy, ProcessKind, StepFacts, decide_step, kind_of};
use amlx_agent::process::lineage::{Lineage, StepKind, lineage_of};
use amlx_agent::role::{self, Overrides};

use super::{json_lines, path_with, shims_dir};
use crate::session::harness::port_range;
use crate::util;

/// (AMLX_AGENT_PID, AMLX_AGENT_PROCESS, pid, ppid)
const GUARD_CASES: &[(&str, &str, u32, u32)] = &[
    ("5", "replace", 5, 4),
    ("5", "replace", 6, 5),
    ("1", "supervise", 7, 1),
    ("1", "supervise", 8, 7),
    ("", "replace", 5, 4),
    ("x5", "replace", 5, 4),
    (" 5", "replace", 5, 4),
    ("5 ", "replace", 5, 4),
    ("5\n", "replace", 5, 4),
    ("+5", "replace", 5, 4),
    ("05", "replace", 5, 4),
    ("5_0", "replace", 50, 4),
    ("\u{665}", "replace", 5, 4),
    ("\u{1c}5", "replace", 5, 4),
    ("0", "supervise", 1, 0),
    ("-5", "replace", 5, 4),
    ("4294967301", "replace", 5, 4),
    ("5", "replace ", 5, 4),
    ("5", " supervise", 6, 5),
    ("5", "Replace", 5, 4),
    ("5", "", 5, 4),
];

fn rust_is_step(pid_var: &str, how: &str, pid: u32, ppid: u32) -> bool {
    let env: HashMap<String, String> = [
        ("AMLX_AGENT_PID".to_owned(), pid_var.to_owned()),
        ("AMLX_AGENT_PROCESS".to_owned(), how.to_owned()),
    ]
    .into();
    matches!(lineage_of(&env, pid, ppid), Lineage::Step { .. })
}

fn python_is_step(pid_var: &str, how: &str, pid: u32, ppid: u32) -> bool {
    let out = util::clean(Command::new("python3"))
        .env("PYTHONPATH", shims_dir().join("python"))
        .env("AMLX_SHIM", "off")
        .args([
            "-c",
            "import sys, amlx_shim; e={'AMLX_AGENT_PID': sys.argv[1], 'AMLX_AGENT_PROCESS': sys.argv[2]}; \
             print(amlx_shim.is_step(e, int(sys.argv[3]), int(sys.argv[4])))",
            pid_var,
            how,
            &pid.to_string(),
            &ppid.to_string(),
        ])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

/// The shim's own `is_step` text, with `$$`/`$PPID` made settable.
fn shell_is_step(pid_var: &str, how: &str, pid: u32, ppid: u32) -> bool {
    let script = std::fs::read_to_string(shims_dir().join("bin/amlx-shim")).expect("shim");
    let start = script.find("is_step() {").expect("is_step in the shim");
    let end = start + script[start..].find("\n}\n").expect("end of is_step") + 3;
    let function = script[start..end]
        .replace("\"$$\"", "\"$TEST_PID\"")
        .replace("\"$PPID\"", "\"$TEST_PPID\"");
    let status = Command::new("sh")
        .args(["-c", &format!("{function}\nis_step")])
        .env("AMLX_AGENT_PID", pid_var)
        .env("AMLX_AGENT_PROCESS", how)
        .env("TEST_PID", pid.to_string())
        .env("TEST_PPID", ppid.to_string())
        .status()
        .expect("sh runs");
    status.success()
}

#[test]
fn review_the_three_step_guards_agree_on_every_input() {
    let mut disagree = Vec::new();
    for &(pid_var, how, pid, ppid) in GUARD_CASES {
        let answers = (
            rust_is_step(pid_var, how, pid, ppid),
            python_is_step(pid_var, how, pid, ppid),
            shell_is_step(pid_var, how, pid, ppid),
        );
        if answers.0 != answers.1 || answers.0 != answers.2 {
            disagree.push(format!(
                "AMLX_AGENT_PID={pid_var:?} AMLX_AGENT_PROCESS={how:?} pid {pid} ppid {ppid}: \
                 rust {} python {} shell {}",
                answers.0, answers.1, answers.2
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "guards disagree:\n{}",
        disagree.join("\n")
    );
}

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn policy(ranks: &str) -> Policy {
    Policy {
        enabled: true,
        ranks: ranks.parse().expect("rank spec"),
        max_targets_per_node: None,
    }
}

/// `srun --ntasks-per-node=1 torchrun ...` (and Azure ML / mpirun one-per-node torchrun):
/// the torchrun agent process carries the outer launcher's rank, so the launcher rule
/// (checked only when the rank is unknown) never applies and torchrun on node 0 becomes
/// the rank-0 debug target, taking port base+0 and debugpy's wait from the real rank 0.
#[test]
fn review_a_launcher_with_an_outer_launchers_rank_is_never_a_target() {
    let slurm = env(&[
        ("SLURM_JOB_ID", "9"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "0"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS", "2"),
    ]);
    let detection = role::detect(&slurm, &Overrides::default());
    assert_eq!(detection.role.rank, Some(0), "{detection:?}");
    let torchrun = argv(&[
        "/usr/bin/python3",
        "/usr/local/bin/torchrun",
        "--nproc_per_node",
        "4",
        "t.py",
    ]);
    assert_eq!(kind_of(&torchrun), ProcessKind::Launcher("torchrun"));
    let decision = decide_step(
        &policy("0"),
        &detection.role,
        &StepFacts {
            kind: kind_of(&torchrun),
            same_role_ancestor: None,
        },
    );
    assert_ne!(
        decision.verdict,
        amlx_agent::policy::Verdict::Target,
        "torchrun under srun became the target: {decision:?}"
    );
}

/// Launchers the agent is put in front of directly (the documented
/// `amlx-agent exec -- torchrun ...`) or that deepspeed starts per node.
#[test]
fn review_launchers_run_directly_are_recognised() {
    let cases: &[&[&str]] = &[
        &["torchrun", "--nproc_per_node", "4", "t.py"],
        &["/usr/local/bin/deepspeed", "t.py"],
        &["horovodrun", "-np", "4", "python", "t.py"],
        &["mpirun", "-n", "4", "python", "t.py"],
        &[
            "python",
            "-u",
            "-m",
            "deepspeed.launcher.launch",
            "--world_info=e30=",
            "t.py",
        ],
    ];
    let missed: Vec<_> = cases
        .iter()
        .filter(|words| !matches!(kind_of(&argv(words)), ProcessKind::Launcher(_)))
        .map(|words| words.join(" "))
        .collect();
    assert!(
        missed.is_empty(),
        "classified as a plain step:\n{}",
        missed.join("\n")
    );
}

/// rank 0 (debugged) -> DataLoader spawn worker (not a target, exported as `other`) ->
/// a Python grandchild with the same role: the grandchild has lost the fact that its
/// role is already debugged and becomes a second rank-0 target (a second port, a second
/// attach wait inside the data pipeline).
#[test]
fn review_a_grandchild_of_the_debugged_rank_0_is_not_a_target() {
    let rank0 = amlx_agent::role::Role {
        rank: Some(0),
        local_rank: Some(0),
        world_size: Some(4),
        multi_process: true,
        ..amlx_agent::role::Role::unknown(amlx_agent::role::Launcher::Torchrun)
    };
    // The DataLoader worker (a child of debugged rank 0, same role) is not a target; what
    // its agent exports about it is what the grandchild inherits.
    let worker = StepFacts {
        kind: ProcessKind::SpawnWorker,
        same_role_ancestor: Some(Ancestor {
            agent_pid: 40,
            kind: StepKind::DebuggedTarget,
        }),
    };
    assert_eq!(
        decide_step(&policy("0"), &rank0, &worker).verdict,
        amlx_agent::policy::Verdict::NotTarget
    );
    let grandchild = StepFacts {
        kind: ProcessKind::Step,
        same_role_ancestor: Some(Ancestor {
            agent_pid: 41,
            kind: worker.undebugged_kind(),
        }),
    };
    let decision = decide_step(&policy("0"), &rank0, &grandchild);
    assert_ne!(
        decision.verdict,
        amlx_agent::policy::Verdict::Target,
        "{decision:?}"
    );
}

/// `amlx-agent exec -- sh -c 'exec amlx-agent exec -- python3 step.py'`: the outer agent
/// decided for `sh` (not injectable); the inner one, in the same PID, decides again for
/// the Python it runs and injects the debugger, instead of passing through. (A shell that
/// execs Python *without* the inner agent is still not reached: the hook takes that Python
/// for the agent's step; see the closing note.)
#[test]
fn review_python_execd_by_a_shell_step_through_a_nested_agent_is_debugged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("probe.jsonl");
    let probe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/shims/probe.py")
        .canonicalize()
        .expect("probe.py");
    let (_, _, range) = port_range(8);
    let out = util::output_within(
        util::clean(Command::new(util::agent_bin()))
            .args(["exec", "--", "sh", "-c"])
            .arg(format!(
                "exec {} exec -- python3 {} exit 0",
                util::agent_bin().display(),
                probe.display()
            ))
            .env("PATH", path_with(None))
            .env("PYTHONPATH", shims_dir().join("python"))
            .env("SHIM_PROBE_OUT", &out_file)
            .env("AMLX_DEBUG", "1")
            .env("AMLX_DEBUG_MODE", "direct")
            .env("AMLX_NODE_IP", "127.0.0.1")
            .env("AMLX_PORT_RANGE", &range)
            .env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .env("AMLX_STATE_DIR", dir.path().join("state"))
            .env("NO_COLOR", "1"),
        crate::session::harness::SESSION_DEADLINE,
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let records = json_lines(&out_file);
    assert_eq!(records.len(), 1, "{log}");
    assert_eq!(
        records[0]["debugpy"], true,
        "the Python step is not debugged: {}\n{log}",
        records[0]
    );
}
