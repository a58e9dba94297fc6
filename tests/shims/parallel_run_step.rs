//! ParallelRunStep / parallel job workers, reached by the `sitecustomize` hook alone.
//!
//! `tests/shims/prs_model/` models the real process tree: the step's command is the
//! driver (`driver/amlbi_main.py`), which starts `driver/worker_main.py` as a fresh
//! process; that switches multiprocessing to *spawn* and starts 4 workers, each calling
//! the entry script's `init()` once and `run(mini_batch)` per mini-batch, and replaces a
//! worker that dies. No rank variables anywhere; only the Azure Batch master flag.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use super::{json_lines, with_python_hook};
use crate::session::harness::{Attach, DapClient, SESSION_DEADLINE, port_range};
use crate::util;

/// Workers the manager starts (ParallelRunStep's `process_count_per_node`).
const WORKERS: usize = 4;
/// `--max-targets-per-node` for the master node.
const MAX_TARGETS: usize = 2;
/// Mini-batches each worker runs.
const BATCHES: u32 = 3;
/// The line of `record(total)` inside `run()` in prs_model/score.py.
const LINE_IN_RUN: u32 = 18;
/// The line of `raise ValueError(...)` inside `run()` in prs_model/score.py.
const LINE_OF_RAISE: u32 = 21;

/// The agent's settings in the debugging tests: workers on the master node compete for
/// `MAX_TARGETS` slots and wait for a developer, in direct mode.
fn debug_settings() -> Vec<(&'static str, String)> {
    vec![
        ("AMLX_DEBUG", "1".to_owned()),
        ("AMLX_RANKS", "master".to_owned()),
        ("AMLX_MAX_TARGETS_PER_NODE", MAX_TARGETS.to_string()),
        ("AMLX_DEBUG_MODE", "direct".to_owned()),
        ("AMLX_NODE_IP", "127.0.0.1".to_owned()),
        ("AMLX_WAIT_FOR_CLIENT", "true".to_owned()),
    ]
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/shims/prs_model")
        .canonicalize()
        .expect("tests/shims/prs_model exists")
}

/// One node of the job: the driver running under the documented setting (the hook's
/// folder on `PYTHONPATH`) and the agent's settings in the environment, as a job
/// definition carries them.
struct Node {
    dir: tempfile::TempDir,
    driver: Child,
    range: String,
    first_port: u16,
}

impl Node {
    fn start(master: bool) -> Node {
        Node::start_with(master, &debug_settings(), false)
    }

    /// A node with these agent settings; `raise`: one worker's run() raises ValueError.
    fn start_with(master: bool, settings: &[(&str, String)], raise: bool) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        if raise {
            std::fs::write(dir.path().join("raise"), b"").expect("raise file");
        }
        let (first_port, _, range) = port_range(8);
        let score = model().join("score.py");
        let log = std::fs::File::create(dir.path().join("driver.log")).expect("log file");
        let driver = with_python_hook("python3")
            .arg(model().join("driver/amlbi_main.py"))
            .arg(&score)
            .arg(dir.path().join("results.jsonl"))
            .arg(WORKERS.to_string())
            .arg(BATCHES.to_string())
            .env(
                "AZ_BATCH_IS_CURRENT_NODE_MASTER",
                if master { "true" } else { "false" },
            )
            .envs(settings.iter().map(|(key, value)| (*key, value)))
            .env("AMLX_PORT_RANGE", &range)
            .env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .env("AMLX_STATE_DIR", dir.path().join("state"))
            .env("PRS_MODEL_RESULTS", dir.path().join("results.jsonl"))
            .env("PRS_MODEL_DIE_FILE", dir.path().join("die"))
            .env("PRS_MODEL_RAISE_FILE", dir.path().join("raise"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("python3 runs the driver model");
        Node {
            dir,
            driver,
            range,
            first_port,
        }
    }

    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        json_lines(&self.dir.path().join("results.jsonl"))
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    /// Live sessions (holder alive) from `amlx-agent status --json`: (pid, port).
    fn live_sessions(&self) -> Vec<(u64, u16)> {
        let out = util::output_bounded(
            util::agent()
                .args(["status", "--json", "--state-dir"])
                .arg(self.dir.path().join("state")),
        );
        assert!(out.status.success(), "status failed: {out:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        report["sessions"]
            .as_array()
            .expect("a session list")
            .iter()
            .filter(|s| s["state"] != "ended")
            .map(|s| {
                let port = s["port"].as_u64().expect("port");
                (
                    s["pid"].as_u64().expect("pid"),
                    u16::try_from(port).expect("a port"),
                )
            })
            .collect()
    }

    fn status_text(&self) -> String {
        let out = util::output_bounded(
            util::agent()
                .args(["status", "--state-dir"])
                .arg(self.dir.path().join("state")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn finish(mut self) -> (std::process::ExitStatus, Node) {
        let status = util::wait_within(&mut self.driver, SESSION_DEADLINE);
        (status, self)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn attach(port: u16) -> Attach {
    let mut attach = Attach::connect("127.0.0.1", port);
    attach.line = LINE_IN_RUN;
    attach
}

#[test]
fn parallel_run_step_workers_compete_for_slots_and_a_breakpoint_hits_inside_run() {
    let node = Node::start(true);
    // Exactly MAX_TARGETS workers win a slot and wait for a debugger; the others run
    // their whole init()/run() loop meanwhile, undelayed.
    let sessions = util::wait_for(
        "the debug targets and the undelayed workers",
        SESSION_DEADLINE,
        || {
            let sessions = node.live_sessions();
            let done = node.events("done").len();
            (sessions.len() == MAX_TARGETS && done == WORKERS - MAX_TARGETS).then_some(sessions)
        },
    );
    let ports: std::collections::BTreeSet<u16> = sessions.iter().map(|s| s.1).collect();
    assert_eq!(ports.len(), MAX_TARGETS, "ports not distinct: {sessions:?}");
    let range_end = node.first_port + 7;
    assert!(
        ports
            .iter()
            .all(|p| (node.first_port..=range_end).contains(p)),
        "ports outside {}: {ports:?}",
        node.range
    );
    let starts = node.events("start");
    assert_eq!(
        starts.len(),
        WORKERS - MAX_TARGETS,
        "a target ran before its debugger came:\n{starts:?}\n{}",
        node.log()
    );
    assert!(
        starts
            .iter()
            .all(|s| s["target"] == "false" && s["port"].is_null() && s["debugpy"] == false),
        "the undelayed workers must run without a debugger: {starts:?}"
    );
    // Say, once per target, that a paused worker hits ParallelRunStep's run() timeout.
    let warning = "ParallelRunStep / parallel job worker";
    assert_eq!(
        node.log().matches(warning).count(),
        MAX_TARGETS,
        "one warning per target in the log:\n{}",
        node.log()
    );
    // Left at the general default (10 min, longer than ParallelRunStep tolerates a
    // worker in init()), a worker's attach timeout is 2.5 min.
    assert_eq!(
        node.log()
            .matches("attach timeout 2m 30s instead of the default 10m")
            .count(),
        MAX_TARGETS,
        "{}",
        node.log()
    );
    // The step's bootstrap lets debugpy go by itself from the same 2.5 min (plus the
    // 10 s release grace), not from the general 10 min (its environment, as execve gave
    // it, still holds the text the launcher took).
    for (pid, _) in &sessions {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let needle = b"AMLX_RELEASE_AFTER = 160\n";
        assert!(
            environ.windows(needle.len()).any(|w| w == needle),
            "worker {pid}: {}",
            String::from_utf8_lossy(&environ)
        );
    }
    assert_eq!(
        node.status_text().matches(warning).count(),
        1,
        "status says it once:\n{}",
        node.status_text()
    );

    // The developer attaches to the first target and stops inside run(); after
    // continuing, that worker dies (the model's chosen death) and is replaced.
    let (dying_pid, dying_port) = sessions[0];
    std::fs::write(node.dir.path().join("die"), b"").expect("die file");
    let client = DapClient::start_in(&[attach(dying_port)], &model().join("score.py"), "total");
    let outcome = client.finish(1).remove(0);
    assert!(outcome.ok, "DAP session: {outcome:?}\n{}", node.log());
    assert_eq!(outcome.line, Some(LINE_IN_RUN), "stopped elsewhere");
    let died = util::wait_for("the chosen worker to die", SESSION_DEADLINE, || {
        node.events("died").into_iter().next()
    });
    assert_eq!(died["exitcode"], 17, "{died}");

    // The replacement is a fresh spawn worker: it takes the freed slot (the other target
    // still holds its own), so it gets the dead worker's port.
    let replacement = util::wait_for("the replacement's session", SESSION_DEADLINE, || {
        node.live_sessions()
            .into_iter()
            .find(|(pid, _)| *pid != dying_pid && !sessions.iter().any(|s| s.0 == *pid))
    });
    assert_eq!(
        replacement.1, dying_port,
        "the replacement did not take the freed slot"
    );
    assert_eq!(
        node.live_sessions().len(),
        MAX_TARGETS,
        "never more than the bound"
    );

    // Release the other target and the replacement: both stop in run() too.
    let other_port = sessions[1].1;
    let client = DapClient::start_in(
        &[attach(other_port), attach(replacement.1)],
        &model().join("score.py"),
        "total",
    );
    for outcome in client.finish(2) {
        assert!(outcome.ok, "DAP session: {outcome:?}\n{}", node.log());
        assert_eq!(outcome.line, Some(LINE_IN_RUN));
    }
    let (status, node) = node.finish();
    assert!(status.success(), "the job failed: {status}\n{}", node.log());
    let done = node.events("done").len();
    assert_eq!(done, WORKERS, "3 originals and the replacement finish");
}

#[test]
fn parallel_run_step_workers_on_a_non_master_node_get_no_debugger_with_ranks_master() {
    let node = Node::start(false);
    let (status, node) = node.finish();
    assert!(status.success(), "the job failed: {status}\n{}", node.log());
    let starts = node.events("start");
    assert_eq!(starts.len(), WORKERS, "{}", node.log());
    assert!(
        starts
            .iter()
            .all(|s| s["target"] == "false" && s["debugpy"] == false),
        "{starts:?}"
    );
    assert!(node.live_sessions().is_empty());
}

/// `--post-mortem` reaches ParallelRunStep's workers through the hook alone: the one
/// worker whose run() raises gets a session (the only one), stopped at the raising line;
/// the others run their whole loop meanwhile; after the detach the worker exits with
/// Python's code 1 and multiprocessing's own report, and the manager replaces it.
#[test]
fn the_worker_whose_run_raises_gets_the_only_post_mortem_session() {
    let settings = [
        ("AMLX_POST_MORTEM", "1".to_owned()),
        ("AMLX_DEBUG_MODE", "direct".to_owned()),
        ("AMLX_NODE_IP", "127.0.0.1".to_owned()),
    ];
    let node = Node::start_with(true, &settings, true);
    let (pid, port) = util::wait_for(
        "the raising worker's session while the others finish",
        SESSION_DEADLINE,
        || {
            let sessions = node.live_sessions();
            let done = node.events("done").len();
            match sessions.as_slice() {
                [session] if done == WORKERS - 1 => Some(*session),
                _ => None,
            }
        },
    );
    let status = node.status_text();
    assert!(status.contains("post-mortem"), "{status}");
    assert!(status.contains("ValueError: bad mini-batch"), "{status}");
    assert!(
        status.contains("ParallelRunStep / parallel job worker"),
        "the run() timeout warning: {status}"
    );
    let mut attach = Attach::connect("127.0.0.1", port).post_mortem();
    attach.line = LINE_OF_RAISE;
    let client = DapClient::start_in(&[attach], &model().join("score.py"), "total");
    let outcome = client.finish(1).remove(0);
    assert!(outcome.ok, "DAP session: {outcome:?}\n{}", node.log());
    assert_eq!(outcome.line, Some(LINE_OF_RAISE), "stopped elsewhere");
    assert!(outcome.value.is_some(), "{outcome:?}");
    assert!(
        outcome
            .exception
            .as_deref()
            .is_some_and(|e| e.contains("bad mini-batch")),
        "{outcome:?}"
    );
    let died = util::wait_for("the raising worker to exit", SESSION_DEADLINE, || {
        node.events("died").into_iter().next()
    });
    assert_eq!(died["exitcode"], 1, "Python's own code: {died}");
    let raised = node
        .events("start")
        .into_iter()
        .find(|start| start["index"] == died["index"])
        .expect("the worker's start");
    assert_eq!(
        raised["pid"].as_u64(),
        Some(pid),
        "the session is another worker's"
    );
    let (exit, node) = node.finish();
    assert!(exit.success(), "the job failed: {exit}\n{}", node.log());
    assert_eq!(node.events("done").len(), WORKERS, "{}", node.log());
    let log = node.log();
    assert_eq!(
        log.matches("post-mortem session on host").count(),
        1,
        "{log}"
    );
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("ValueError: bad mini-batch"), "{log}");
    assert!(
        !log.contains("amlx_post_mortem") && !log.contains("<string>"),
        "the hook's own frames show in the traceback:\n{log}"
    );
}
