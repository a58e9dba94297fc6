//! MLflow run tags during a real debug session: a real MLflow tracking server on loopback
//! (tests/mlflow.rs starts it), `amlx-agent exec --debug --rank 0` with
//! `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID` in its environment, and the run's
//! `amlx.debug.rank0` tag read back through the REST API while the session waits and
//! after the agent exited.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{
    Attach, BREAKPOINT_LINE, DapClient, DeveloperSide, SESSION_DEADLINE, free_port, port_range,
    step_py,
};
use crate::mlflow::{MlflowServer, create_run, http_client, tag, wait_healthy};
use crate::util;

/// The tag a rank-0 session sets.
const KEY: &str = "amlx.debug.rank0";
/// Between two reads of the run's tags.
const TAG_POLL: Duration = Duration::from_millis(100);
/// The attach timeout of the session nobody attaches to.
const SHORT_ATTACH_TIMEOUT: &str = "2s";

/// `amlx-agent exec` running in the background, output in files, killed on drop.
struct Agent {
    child: Child,
    stderr: File,
}

impl Agent {
    fn spawn(cmd: &mut Command) -> Agent {
        let stdout = tempfile::tempfile().expect("stdout file");
        let stderr = tempfile::tempfile().expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr.try_clone().expect("clone stderr file"))
            .spawn()
            .expect("spawn amlx-agent");
        Agent { child, stderr }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.stderr.rewind().expect("rewind");
        let _ = self.stderr.read_to_string(&mut text);
        text
    }

    /// Waits (bounded) and asserts the step exited 0.
    fn wait_success(&mut self) {
        let status = util::wait_within(&mut self.child, SESSION_DEADLINE);
        assert!(
            status.success(),
            "agent exited {status:?}:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent for an unchanged step, rank 0, reporting to `run_id`.
fn agent(
    developer: &DeveloperSide,
    locks: &Path,
    server: &MlflowServer,
    run_id: &str,
    attach_timeout: &str,
) -> (Agent, u16) {
    let (debug_port, _, range) = port_range(4);
    let agent = Agent::spawn(
        developer
            .agent(locks)
            .env("MLFLOW_TRACKING_URI", &server.base)
            .env("MLFLOW_RUN_ID", run_id)
            // AMLX_RANK is ignored under an active agent; the flag always counts.
            .args(["exec", "--debug", "--rank", "0", "--attach-timeout"])
            .arg(attach_timeout)
            .args(["--port-range", &range, "--", "python3"])
            .arg(step_py()),
    );
    (agent, debug_port)
}

/// Polls the run's tag until `accept` takes its value (bounded).
fn wait_tag(
    runtime: &tokio::runtime::Runtime,
    server: &MlflowServer,
    run_id: &str,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let client = http_client();
    let deadline = Instant::now() + SESSION_DEADLINE;
    let mut last = None;
    loop {
        last = runtime.block_on(tag(&client, server, run_id, KEY)).or(last);
        if let Some(value) = last.as_deref().filter(|v| accept(v)) {
            return value.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{KEY} never showed {what} within {SESSION_DEADLINE:?}; last value {last:?}\nserver:\n{}",
            server.output()
        );
        std::thread::sleep(TAG_POLL);
    }
}

#[test]
fn the_run_tag_shows_the_waiting_session_and_its_last_state_after_the_end() {
    let server = MlflowServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = http_client();
    runtime.block_on(wait_healthy(&client, &server));
    let waited_run = runtime.block_on(create_run(&client, &server, "amlx-attached"));
    let timed_out_run = runtime.block_on(create_run(&client, &server, "amlx-timed-out"));

    // Nobody ever listens for this one: it times out, the step runs on and exits.
    let idle = DeveloperSide::relay_only("idle");
    let idle_locks = tempfile::tempdir().expect("tempdir");
    let (mut idle_agent, idle_port) = agent(
        &idle,
        idle_locks.path(),
        &server,
        &timed_out_run,
        SHORT_ATTACH_TIMEOUT,
    );

    // This one waits (long attach timeout) until the developer's VS Code attaches.
    let mut developer = DeveloperSide::relay_only("tags");
    let locks = tempfile::tempdir().expect("tempdir");
    let (mut waiting_agent, debug_port) =
        agent(&developer, locks.path(), &server, &waited_run, "10m");
    let waiting = wait_tag(
        &runtime,
        &server,
        &waited_run,
        "waiting-for-debugger",
        |v| v.contains("state=waiting-for-debugger"),
    );
    assert!(
        waiting.starts_with(&format!(
            "relay:tags/{debug_port} mode=connect state=waiting-for-debugger"
        )),
        "{waiting}"
    );

    let vscode_port = free_port();
    let dap = DapClient::start(&[Attach::listen(vscode_port)]);
    dap.wait_listening(vscode_port);
    developer.listen(&[(debug_port, vscode_port)]);
    let outcome = &dap.finish(1)[0];
    assert!(
        outcome.ok,
        "the DAP session failed: {outcome:?}\nagent:\n{}",
        waiting_agent.stderr()
    );
    assert_eq!(outcome.line, Some(BREAKPOINT_LINE), "stopped elsewhere");
    waiting_agent.wait_success();
    // The sidecar publishes the end as the step exits: poll, bounded.
    let ended = wait_tag(&runtime, &server, &waited_run, "ended", |v| {
        v.contains("state=ended")
    });
    assert_eq!(
        ended,
        format!(
            "relay:tags/{debug_port} mode=connect state=ended last=running-undebugged \
             reason=the debugger detached; the step runs on"
        )
    );

    idle_agent.wait_success();
    let ended = wait_tag(&runtime, &server, &timed_out_run, "ended", |v| {
        v.contains("state=ended")
    });
    assert_eq!(
        ended,
        format!(
            "relay:idle/{idle_port} mode=connect state=ended last=timed-out \
             reason=no debugger attached within {SHORT_ATTACH_TIMEOUT}; the step runs on without one"
        ),
        "agent:\n{}",
        idle_agent.stderr()
    );
}

/// A post-mortem session's run tag: `post-mortem` with the exception while it waits,
/// then the end with the last state, as for a debug target.
#[test]
fn the_run_tag_shows_a_crashed_rank_in_post_mortem_with_its_exception() {
    let server = MlflowServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = http_client();
    runtime.block_on(wait_healthy(&client, &server));
    let run = runtime.block_on(create_run(&client, &server, "amlx-post-mortem"));
    let developer = DeveloperSide::relay_only("crash");
    let locks = tempfile::tempdir().expect("tempdir");
    let (debug_port, _, range) = port_range(4);
    let crash = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/session/crash.py");
    let mut agent = Agent::spawn(
        developer
            .agent(locks.path())
            .env("MLFLOW_TRACKING_URI", &server.base)
            .env("MLFLOW_RUN_ID", &run)
            .args([
                "exec",
                "--rank",
                "0",
                "--post-mortem",
                "--post-mortem-timeout",
            ])
            .arg(SHORT_ATTACH_TIMEOUT)
            .args(["--port-range", &range, "--", "python3"])
            .arg(crash),
    );
    let waiting = wait_tag(&runtime, &server, &run, "post-mortem", |v| {
        v.contains("state=post-mortem")
    });
    assert!(
        waiting.starts_with(&format!(
            "relay:crash/{debug_port} mode=connect state=post-mortem reason=ValueError: loss is nan"
        )),
        "{waiting}"
    );
    let status = util::wait_within(&mut agent.child, SESSION_DEADLINE);
    assert_eq!(
        status.code(),
        Some(1),
        "Python's own code: {}",
        agent.stderr()
    );
    let ended = wait_tag(&runtime, &server, &run, "ended", |v| {
        v.contains("state=ended")
    });
    assert_eq!(
        ended,
        format!(
            "relay:crash/{debug_port} mode=connect state=ended last=timed-out \
             reason=no debugger attached within {SHORT_ATTACH_TIMEOUT}; the process exits as it \
             would have"
        )
    );
}

/// A tracking server that accepts connections and never answers, and a step that ends
/// before any request's bound (5 s): the session's end could not be published within its
/// 400 ms, and nothing in the log said so (the tag kept an earlier state for good). The
/// step itself is not held up; the line comes from the sidecar, just after.
#[test]
fn a_silent_tracking_server_and_a_short_step_leave_a_warning() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("http://{}", silent.local_addr().expect("address"));
    let locks = tempfile::tempdir().expect("tempdir");
    let (_, _, range) = port_range(4);
    let started = Instant::now();
    let mut agent = Agent::spawn(
        util::agent()
            .env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .env("MLFLOW_TRACKING_URI", &uri)
            .env("MLFLOW_RUN_ID", "run-1")
            .args(["exec", "--debug", "--rank", "0", "--mode", "direct"])
            .args(["--node-ip", "127.0.0.1", "--inject", "none"])
            .args(["--port-range", &range, "--", "sh", "-c", "exit 3"]),
    );
    let status = util::wait_within(&mut agent.child, SESSION_DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", agent.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{}",
        agent.stderr()
    );
    let warning = "the MLflow tracking server did not take the session's end within 400ms";
    util::wait_for("the sidecar's warning", SESSION_DEADLINE, || {
        agent.stderr().contains(warning).then_some(())
    });
    drop(silent);
}
