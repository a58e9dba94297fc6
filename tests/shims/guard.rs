//! The shims never wrap a process twice, keep exit codes and signals, chain an existing
//! `sitecustomize`, and never stand in the way: switched off, or without the agent, the
//! program runs as it would have.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{json_lines, path_with, shims_dir, with_python_hook};
use crate::session::harness::port_range;
use crate::util;

fn probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/shims/probe.py")
        .canonicalize()
        .expect("tests/shims/probe.py exists")
}

/// A test's scratch folder: the probe's records, locks and state.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        json_lines(&self.dir.path().join("probe.jsonl"))
    }

    /// `program` with the shims' `bin/` first on `PATH` (after the agent under test), the
    /// mpich wheel's launchers after it, debugging on and its state kept in here.
    fn shimmed(&self, program: &str) -> Command {
        let mut cmd = util::clean(Command::new(program));
        let mut path = path_with(Some(&shims_dir().join("bin")));
        path.push(":");
        path.push(util::python_scripts_dir());
        cmd.env("PATH", path);
        self.debug_env(&mut cmd);
        cmd
    }

    fn debug_env(&self, cmd: &mut Command) {
        cmd.env("SHIM_PROBE_OUT", self.dir.path().join("probe.jsonl"))
            .env("AMLX_DEBUG", "1")
            .env("AMLX_LOCK_DIR", self.dir.path().join("locks"))
            .env("AMLX_STATE_DIR", self.dir.path().join("state"))
            .env("NO_COLOR", "1");
    }
}

/// Each record's process is the step of the agent that ran as its own PID: wrapped.
fn wrapped_in_place(record: &serde_json::Value) -> bool {
    record["agent_pid"].as_str() == Some(record["pid"].to_string().as_str())
        && record["process"] == "replace"
}

#[test]
fn mpirun_with_the_wrapper_first_on_path_debugs_rank_0_only_with_no_edit() {
    let scratch = Scratch::new();
    let (_, _, range) = port_range(8);
    // Direct mode without waiting: rank 0 runs under debugpy at once.
    let out = util::output_within(
        scratch
            .shimmed("mpirun")
            .args(["-n", "4", "python3"])
            .arg(probe())
            .args(["exit", "0"])
            .env("AMLX_DEBUG_MODE", "direct")
            .env("AMLX_NODE_IP", "127.0.0.1")
            .env("AMLX_PORT_RANGE", &range),
        crate::session::harness::SESSION_DEADLINE,
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun failed: {out:?}");
    let mut records = scratch.records();
    records.sort_by_key(|r| r["rank"].as_str().unwrap_or("").to_owned());
    assert_eq!(records.len(), 4, "one record per rank:\n{log}");
    for record in &records {
        let rank0 = record["rank"] == "0";
        assert!(
            wrapped_in_place(record),
            "rank not under the agent: {record}"
        );
        assert_eq!(
            record["target"],
            if rank0 { "true" } else { "false" },
            "{record}"
        );
        assert_eq!(record["debugpy"], rank0, "debugpy only in rank 0: {record}");
    }
    assert!(
        !log.contains("already debugs this process"),
        "a shim called the agent for a process it already runs:\n{log}"
    );
}

#[test]
fn nested_interpreters_are_wrapped_once_each_and_the_innermost_exit_code_comes_back() {
    let scratch = Scratch::new();
    // No process is a target (only rank 5 would be): the test is about wrapping.
    let out = util::output_bounded(
        scratch
            .shimmed("python3")
            .arg(probe())
            .args(["chain", "3", "7"])
            .env("AMLX_RANKS", "5")
            .env("RUST_LOG", "amlx_agent=debug"),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{log}");
    let records = scratch.records();
    assert_eq!(records.len(), 4, "{log}");
    assert!(records.iter().all(wrapped_in_place), "{records:?}");
    // One decision per process: a second wrap of any of them would add one.
    assert_eq!(log.matches("not a debug target").count(), 4, "{log}");
    assert!(!log.contains("already debugs this process"), "{log}");
}

#[test]
fn a_wrapped_interpreter_killed_by_a_signal_is_seen_killed_by_that_signal() {
    let scratch = Scratch::new();
    let out = util::output_bounded(
        scratch
            .shimmed("python3")
            .arg(probe())
            .arg("kill")
            .env("AMLX_RANKS", "5"),
    );
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{out:?}");
    assert!(wrapped_in_place(&scratch.records()[0]));
}

#[test]
fn the_hook_runs_an_existing_sitecustomize_after_itself_exactly_once() {
    let scratch = Scratch::new();
    let theirs = scratch.dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    let marks = scratch.dir.path().join("marks");
    std::fs::write(
        theirs.join("sitecustomize.py"),
        format!(
            "import os\nMARK = 'theirs'\nwith open({:?}, 'a') as f:\n    f.write(str(os.getpid()) + '\\n')\n",
            marks
        ),
    )
    .expect("their sitecustomize");
    let mut cmd = with_python_hook("python3");
    scratch.debug_env(&mut cmd);
    let mut pythonpath = std::ffi::OsString::from(shims_dir().join("python"));
    pythonpath.push(":");
    pythonpath.push(&theirs);
    let out = util::output_bounded(
        cmd.env("PYTHONPATH", pythonpath)
            .env("AMLX_RANKS", "5")
            .args([
                "-c",
                "import os, sitecustomize; print(sitecustomize.MARK, os.getpid())",
            ]),
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = stdout
        .trim()
        .strip_prefix("theirs ")
        .expect("their module")
        .to_owned();
    let marks = std::fs::read_to_string(&marks).expect("their sitecustomize ran");
    assert_eq!(
        marks.lines().collect::<Vec<_>>(),
        [pid.as_str()],
        "ran once, in the final process"
    );
}

#[test]
fn the_hook_baked_into_site_packages_wraps_without_any_setting() {
    let scratch = Scratch::new();
    let venv = scratch.dir.path().join("venv");
    let made = util::output_bounded(
        util::clean(Command::new("python3"))
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv),
    );
    assert!(made.status.success(), "python3 -m venv: {made:?}");
    let python = venv.join("bin/python3");
    let site = util::output_bounded(Command::new(&python).args([
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    ]));
    let site = PathBuf::from(String::from_utf8_lossy(&site.stdout).trim());
    for file in ["amlx_shim.py", "amlx_shim.pth"] {
        std::fs::copy(shims_dir().join("python").join(file), site.join(file)).expect("bake");
    }
    let mut cmd = util::clean(Command::new(&python));
    scratch.debug_env(&mut cmd);
    let out = util::output_bounded(
        cmd.env("PATH", path_with(None))
            .env("AMLX_RANKS", "5")
            .arg(probe())
            .args(["exit", "3"]),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        wrapped_in_place(&scratch.records()[0]),
        "{:?}",
        scratch.records()
    );
}

#[test]
fn switched_off_or_without_the_agent_the_shims_run_the_program_plainly() {
    // (setting, PATH has the agent, expected stderr)
    let cases: &[(&str, bool, &str)] = &[
        ("AMLX_SHIM=off", true, ""),
        ("AMLX_DEBUG=0", true, ""),
        ("no agent", false, "amlx-agent not found"),
    ];
    for (setting, with_agent, said) in cases {
        let scratch = Scratch::new();
        let mut cmd = scratch.shimmed("python3");
        if !with_agent {
            let path = std::env::join_paths(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .filter(|dir| !dir.join("amlx-agent").exists()),
            )
            .expect("PATH");
            let mut shimmed = std::ffi::OsString::from(shims_dir().join("bin"));
            shimmed.push(":");
            shimmed.push(path);
            cmd.env("PATH", shimmed);
        }
        if let Some((key, value)) = setting.split_once('=') {
            cmd.env(key, value);
        }
        let out = util::output_bounded(cmd.arg(probe()).args(["exit", "4"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{setting}: {out:?}");
        let record = &scratch.records()[0];
        assert!(
            record["agent_pid"].is_null(),
            "{setting}: wrapped anyway: {record}"
        );
        assert!(stderr.contains(said), "{setting}: {stderr}");
    }
}

#[test]
fn the_entrypoint_shim_as_pid_1_supervises_the_step_and_the_hook_reaches_its_children() {
    let scratch = Scratch::new();
    // `unshare --pid --fork` makes the shim, and so the agent it becomes, PID 1.
    let mut cmd = scratch.shimmed("unshare");
    let out = util::output_bounded(
        cmd.args(["--pid", "--fork", "--kill-child"])
            .arg(shims_dir().join("bin/amlx-entrypoint"))
            .arg("python3")
            .arg(probe())
            .args(["chain", "1", "5"])
            .env("AMLX_RANKS", "5"),
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let records = scratch.records();
    assert_eq!(records.len(), 2, "{records:?}");
    // The step is the supervisor's child; its Python child was wrapped in place.
    assert_eq!(records[0]["agent_pid"], "1", "{records:?}");
    assert_eq!(records[0]["process"], "supervise", "{records:?}");
    assert!(wrapped_in_place(&records[1]), "{records:?}");
}

#[test]
fn torchrun_with_the_wrapper_first_on_path_debugs_rank_0_only_and_not_the_launcher() {
    let scratch = Scratch::new();
    let (_, _, range) = port_range(8);
    // The model torchrun comes after the shims on PATH: the wrapper runs it.
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/shims/torchrun_model")
        .canonicalize()
        .expect("tests/shims/torchrun_model exists");
    let mut cmd = scratch.shimmed("torchrun");
    let mut path = path_with(Some(&shims_dir().join("bin")));
    path.push(":");
    path.push(&model);
    let out = util::output_within(
        cmd.env("PATH", path)
            .args(["--nproc_per_node", "3"])
            .arg(probe())
            .args(["exit", "0"])
            .env("AMLX_DEBUG_MODE", "direct")
            .env("AMLX_NODE_IP", "127.0.0.1")
            .env("AMLX_PORT_RANGE", &range)
            .env("RUST_LOG", "amlx_agent=debug"),
        crate::session::harness::SESSION_DEADLINE,
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torchrun failed: {out:?}");
    let records = scratch.records();
    assert_eq!(records.len(), 3, "one record per worker:\n{log}");
    for record in &records {
        let rank0 = record["rank"] == "0";
        assert!(
            wrapped_in_place(record),
            "worker not under the agent: {record}"
        );
        assert_eq!(record["debugpy"], rank0, "debugpy only in rank 0: {record}");
    }
    // One debug target in all: rank 0, not the launcher (which the hook also wraps).
    let announced: Vec<&str> = log.lines().filter(|l| l.contains(" debug port ")).collect();
    assert_eq!(announced.len(), 1, "{log}");
    assert!(announced[0].contains("rank 0/3 (torchrun)"), "{log}");
    assert!(log.contains("torchrun starts the job's workers"), "{log}");
}
