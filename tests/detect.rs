//! Integration tests: `detect`, under a real `mpiexec` and with launcher environments.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::util;

/// Upper bound for one `detect` run (mpiexec starts four agents).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Variables `util::agent()` keeps that detection also reads.
const EXTRA_LEAKY: &[&str] = &[
    "KUBERNETES_SERVICE_HOST",
    "SLURMD_NODENAME",
    "LOCAL_SIZE",
    "CROSS_SIZE",
    "PALS_RANKID",
    "PALS_NODEID",
    "PALS_LOCAL_RANKID",
];

/// The agent with a clean environment (no rank variables of the test runner).
fn agent() -> Command {
    let mut cmd = util::agent();
    for name in EXTRA_LEAKY {
        cmd.env_remove(name);
    }
    cmd
}

/// `mpiexec -n <n> amlx-agent <args>` with the same clean environment.
fn mpiexec(n: u32, args: &[&str]) -> Command {
    let clean = agent();
    let mut cmd = util::mpiexec_command();
    for (key, value) in clean.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.arg("-n")
        .arg(n.to_string())
        .arg(util::agent_bin())
        .args(args);
    cmd
}

/// Runs `cmd` to completion within [`RUN_LIMIT`]; on timeout kills its process group.
fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("spawn the command under test");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(output) => output.expect("collect the output"),
        Err(_) => {
            let pgid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {RUN_LIMIT:?}");
        }
    }
}

/// Runs `detect --json` (plus `args`) with `env` and returns the report and stderr.
fn detect_json(env: &[(&str, &str)], args: &[&str]) -> (Value, String) {
    let mut cmd = agent();
    cmd.args(["detect", "--json"])
        .args(args)
        .envs(env.iter().copied());
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "detect failed: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout:?}");
    let report = serde_json::from_str(&stdout).expect("detect --json prints JSON");
    (report, stderr)
}

/// Every rank's report under `mpiexec -n 4`, sorted by rank.
fn mpiexec_reports(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["detect", "--json"];
    all.extend_from_slice(args);
    let out = run(mpiexec(4, &all));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mpiexec failed ({}): stderr {:?}, stdout {stdout:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Each line must be one whole report: four processes share this stdout.
    let mut reports: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert_eq!(reports.len(), 4, "{stdout}");
    reports.sort_by_key(|r| r["rank"].as_u64());
    reports
}

fn targets(reports: &[Value]) -> Vec<u64> {
    reports
        .iter()
        .filter(|r| r["debug"]["target"] == true)
        .filter_map(|r| r["rank"].as_u64())
        .collect()
}

#[test]
fn mpiexec_reports_four_ranks() {
    let reports = mpiexec_reports(&[]);
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report["launcher"], "mpich", "{report}");
        assert_eq!(report["rank"], i, "{report}");
        assert_eq!(report["local_rank"], i, "one node: {report}");
        assert_eq!(report["world_size"], 4, "{report}");
        assert_eq!(report["local_world_size"], 4, "{report}");
        assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
        assert_eq!(report["debug"]["enabled"], false, "{report}");
        assert_eq!(report["debug"]["target"], false, "{report}");
    }
}

#[test]
fn mpiexec_debug_ranks_0_targets_only_rank_0() {
    let reports = mpiexec_reports(&["--debug", "--ranks", "0"]);
    assert_eq!(targets(&reports), [0]);
    assert_eq!(reports[0]["debug"]["reason"], "rank 0 matches --ranks 0");
    assert_eq!(reports[3]["debug"]["verdict"], "not-target");
    assert_eq!(reports[3]["debug"]["reason"], "rank 3 is not in --ranks 0");
}

#[test]
fn mpiexec_debug_ranks_all_targets_every_rank() {
    let reports = mpiexec_reports(&["--debug", "--ranks", "all"]);
    assert_eq!(targets(&reports), [0, 1, 2, 3]);
}

#[test]
fn azure_batch_master_flag_false_is_not_master() {
    let (report, _) = detect_json(
        &[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "false")],
        &["--debug"],
    );
    assert_eq!(report["launcher"], "azure-batch", "{report}");
    assert_eq!(report["node_master"], false, "{report}");
    assert_eq!(report["rank"], Value::Null, "{report}");
    assert_eq!(report["debug"]["verdict"], "not-target", "{report}");

    let (report, _) = detect_json(&[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "True")], &["--debug"]);
    assert_eq!(report["node_master"], true, "{report}");
    assert_eq!(report["debug"]["verdict"], "candidate", "{report}");
    assert_eq!(report["debug"]["target"], false, "{report}");
    assert_eq!(report["debug"]["slot_limit"], 1, "{report}");
}

#[test]
fn non_numeric_rank_is_null_with_one_warning() {
    let (report, stderr) = detect_json(&[("RANK", "abc"), ("WORLD_SIZE", "2")], &[]);
    assert_eq!(report["rank"], Value::Null, "{report}");
    assert_eq!(report["world_size"], 2, "{report}");
    let warnings = report["warnings"].as_array().expect("warnings array");
    assert_eq!(warnings.len(), 1, "{report}");
    let warning = warnings[0].as_str().expect("warning text");
    assert!(warning.contains("RANK=\"abc\""), "{warning}");
    assert_eq!(stderr.matches("RANK=\"abc\"").count(), 1, "{stderr}");
}

#[test]
fn negative_local_rank_and_range_values_are_unknown() {
    let env = [
        ("TORCHELASTIC_RUN_ID", "r1"),
        ("RANK", "1"),
        ("LOCAL_RANK", "-1"),
        ("WORLD_SIZE", "2"),
    ];
    let (report, stderr) = detect_json(&env, &[]);
    assert_eq!(report["launcher"], "torchrun", "{report}");
    assert_eq!(report["rank"], 1, "{report}");
    assert_eq!(report["local_rank"], Value::Null, "{report}");
    assert!(stderr.contains("LOCAL_RANK=\"-1\""), "{stderr}");

    let (report, _) = detect_json(&[("PET_NODE_RANK", "1"), ("PET_NNODES", "1:4")], &[]);
    assert_eq!(report["launcher"], "kubeflow-pytorch", "{report}");
    assert_eq!(report["node_rank"], 1, "{report}");
    assert_eq!(report["node_master"], false, "{report}");
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}

#[test]
fn torchrun_inside_slurm_wins() {
    let env = [
        ("SLURM_JOB_ID", "77"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("TORCHELASTIC_RUN_ID", "r1"),
        ("GROUP_RANK", "1"),
        ("RANK", "5"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "8"),
    ];
    let (report, _) = detect_json(&env, &["--debug", "--ranks", "5"]);
    assert_eq!(report["launcher"], "torchrun", "{report}");
    assert_eq!(report["rank"], 5, "{report}");
    assert_eq!(report["world_size"], 8, "{report}");
    assert_eq!(report["node_rank"], 1, "{report}");
    assert_eq!(report["debug"]["target"], true, "{report}");
}

#[test]
fn sbatch_without_srun_claims_no_ranks() {
    let env = [
        ("SLURM_JOB_ID", "77"),
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "1"),
    ];
    let (report, _) = detect_json(&env, &["--debug"]);
    assert_eq!(report["launcher"], "slurm", "{report}");
    assert_eq!(report["rank"], Value::Null, "{report}");
    assert_eq!(report["world_size"], Value::Null, "{report}");
    assert_eq!(
        report["debug"]["target"], true,
        "alone counts as rank 0: {report}"
    );
}

#[test]
fn rank_not_below_world_size_is_unknown() {
    let env = [("PMI_RANK", "4"), ("PMI_SIZE", "4")];
    let (report, stderr) = detect_json(&env, &["--debug"]);
    assert_eq!(report["launcher"], "mpich", "{report}");
    assert_eq!(report["rank"], Value::Null, "{report}");
    assert_eq!(report["debug"]["verdict"], "candidate", "{report}");
    assert!(stderr.contains("PMI_SIZE=4"), "{stderr}");
}

#[test]
fn rank_flag_beats_launcher_variables() {
    let env = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4")];
    let (report, _) = detect_json(&env, &["--rank", "3", "--debug", "--ranks", "3"]);
    assert_eq!(report["launcher"], "override", "{report}");
    assert_eq!(report["rank"], 3, "{report}");
    assert_eq!(report["world_size"], 4, "{report}");
    assert_eq!(report["debug"]["target"], true, "{report}");
}

#[test]
fn text_output_is_aligned_key_value_lines() {
    let mut cmd = agent();
    cmd.args(["detect", "--debug"])
        .env("RANK", "oops")
        .env("WORLD_SIZE", "2");
    let out = run(cmd);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let value_column = |line: &str| {
        let colon = line.find(':').expect("key: value");
        colon + 1 + line[colon + 1..].len() - line[colon + 1..].trim_start().len()
    };
    let column = value_column(lines[0]);
    for line in &lines {
        assert_eq!(value_column(line), column, "aligned: {stdout}");
    }
    for key in [
        "launcher:",
        "rank:",
        "world size:",
        "node master:",
        "hostname:",
        "node ip:",
        "reason:",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(key)),
            "{key} in {stdout}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("launcher:") && l.ends_with(" rank")),
        "bare RANK: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning:") && l.contains("RANK=\"oops\"")),
        "{stdout}"
    );
}

#[test]
fn config_error_exits_1_with_the_message() {
    let mut cmd = agent();
    cmd.args(["detect", "--json", "--ranks", "3-1"]);
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--ranks") && stderr.contains("3-1"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no report on a config error");
}

/// (environment, command, verdict, reason fragment)
type CommandCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str, &'a str);

#[test]
fn with_a_command_detect_decides_exactly_as_exec_would() {
    let spawn =
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=4, pipe_handle=6)";
    let master = [("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true")];
    let ranked = [
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_JOB_ID", "1"),
    ];
    let cases: &[CommandCase] = &[
        (
            &master,
            &["python3", "-B", "-c", spawn, "--multiprocessing-fork"],
            "candidate",
            "a multiprocessing worker without a rank",
        ),
        (
            &ranked,
            &["torchrun", "--nproc_per_node", "4", "train.py"],
            "not-target",
            "torchrun starts the job's workers",
        ),
        (
            &master,
            &["python3", "driver/amlbi_main.py"],
            "not-target",
            "ParallelRunStep driver",
        ),
        (&[], &["python3", "train.py"], "target", "alone"),
    ];
    for (env, command, verdict, reason) in cases {
        let mut args = vec!["--debug", "--ranks", "0", "--"];
        args.extend_from_slice(command);
        let (report, _) = detect_json(env, &args);
        assert_eq!(
            report["debug"]["verdict"], *verdict,
            "{command:?}: {report}"
        );
        let said = report["debug"]["reason"].as_str().unwrap_or_default();
        assert!(said.contains(reason), "{command:?}: {said}");
    }
}
