//! listen and direct modes end to end: in listen mode the step waits at startup and the
//! developer attaches later through `relay connect`; in direct mode the logged
//! `ip ... debug port ...` is exactly what a debugger attaches to. Either mode releases
//! a waiting step at the attach timeout when nobody comes.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use super::harness::{
    Attach, BREAKPOINT_LINE, DapClient, DeveloperSide, Outcome, SESSION_DEADLINE, VARIABLE,
    is_listening, port_range, step_py,
};
use super::lifecycle::Running;
use crate::util;

/// The `ip` and `debug port` of the agent's startup line.
fn announced_address(line: &str) -> (IpAddr, u16) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &[&str]| {
        words
            .windows(key.len() + 1)
            .find(|w| w[..key.len()] == *key)
            .map(|w| w[key.len()])
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
    };
    let ip = after(&["ip"]).parse().expect("an IP in the startup line");
    let port = after(&["debug", "port"])
        .parse()
        .expect("a port in the startup line");
    (ip, port)
}

fn assert_breakpoint_hit(outcome: &Outcome, agent: &Running) {
    assert!(
        outcome.ok,
        "the DAP session failed: {outcome:?}\nagent:\n{}",
        agent.log()
    );
    assert_eq!(outcome.line, Some(BREAKPOINT_LINE), "stopped elsewhere");
    assert_eq!(outcome.value.as_deref(), Some(VARIABLE.1), "wrong value");
}

/// `exec --debug --mode listen --wait-for-client` in front of step.py, pointed at
/// `developer`'s relay, with `attach_timeout` and the debug ports `range`.
fn waiting_listen_step(
    developer: &DeveloperSide,
    locks: &Path,
    attach_timeout: &str,
    range: &str,
) -> Command {
    let mut cmd = developer.agent(locks);
    cmd.args(["exec", "--debug", "--mode", "listen", "--wait-for-client"])
        .args(["--attach-timeout", attach_timeout, "--port-range", range])
        .args(["--", "python3"])
        .arg(step_py());
    cmd
}

/// Waits (bounded) until debugpy listens on `port`: the step is at its startup wait.
fn wait_debugpy_listening(port: u16) {
    util::wait_for(
        &format!("debugpy to listen on {port}"),
        SESSION_DEADLINE,
        || is_listening(port).then_some(()),
    );
}

/// A listen-mode step held at its start (attach timeout 60 s) behind a fresh relay, once
/// debugpy listens: the developer's side, the agent and the debug port.
fn held_listen_step(locks: &Path) -> (DeveloperSide, Running, u16) {
    let developer = DeveloperSide::relay_only("debug");
    let (debug_port, _, range) = port_range(4);
    let agent = Running::spawn(&mut waiting_listen_step(&developer, locks, "60s", &range));
    agent.wait_stderr("debug session waiting-for-debugger");
    wait_debugpy_listening(debug_port);
    (developer, agent, debug_port)
}

#[test]
fn listen_mode_holds_the_step_until_the_developer_attaches_through_relay_connect() {
    let locks = tempfile::tempdir().expect("tempdir");
    let (developer, mut agent, debug_port) = held_listen_step(locks.path());
    // The step waits at startup: running, and none of its output yet.
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the step did not wait:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.stdout.len(),
        0,
        "the step ran before anybody attached"
    );

    // Later, the developer: `relay connect` to the node's port name, then VS Code.
    let (_connect, bound) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    let client = DapClient::start(&[Attach::connect("127.0.0.1", bound.port())]);
    let outcome = &client.finish(1)[0];
    assert_breakpoint_hit(outcome, &agent);
    let status = agent.wait_exit();
    assert!(
        status.success(),
        "agent exited {status:?}:\n{}",
        agent.log()
    );
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "the step did not run to its end"
    );
    let log = agent.log();
    assert!(log.contains("debug session attached"), "{log}");
    assert!(!log.contains("timed-out"), "{log}");
}

/// A direct-mode step held for a debugger (attach timeout 60 s), with `sitecustomize` on
/// its PYTHONPATH when given and the agent's `-v` when `verbose`, once it announced the
/// address a debugger attaches to.
struct DirectStep {
    agent: Running,
    ip: IpAddr,
    port: u16,
    _dirs: Vec<tempfile::TempDir>,
}

fn held_direct_step(sitecustomize: Option<&str>, verbose: bool) -> DirectStep {
    let locks = tempfile::tempdir().expect("tempdir");
    let mut cmd = util::agent();
    cmd.env("AMLX_LOCK_DIR", locks.path())
        .env("AMLX_STATE_DIR", locks.path().join("state"))
        .env("NO_COLOR", "1");
    let mut dirs = vec![locks];
    if let Some(text) = sitecustomize {
        let site = tempfile::tempdir().expect("tempdir");
        std::fs::write(site.path().join("sitecustomize.py"), text).expect("write sitecustomize.py");
        cmd.env("PYTHONPATH", site.path());
        dirs.push(site);
    }
    if verbose {
        cmd.arg("-v");
    }
    let (_, _, range) = port_range(4);
    let agent = Running::spawn(
        cmd.args([
            "exec",
            "--debug",
            "--mode",
            "direct",
            "--node-ip",
            "127.0.0.1",
        ])
        .args(["--wait-for-client", "--attach-timeout", "60s"])
        .args(["--port-range", &range, "--", "python3"])
        .arg(step_py()),
    );
    let line = agent.wait_stderr(" debug port ");
    let (ip, port) = announced_address(&line);
    DirectStep {
        agent,
        ip,
        port,
        _dirs: dirs,
    }
}

#[test]
fn direct_mode_logs_the_address_a_debugger_attaches_to() {
    let DirectStep {
        mut agent,
        ip,
        port,
        _dirs: _kept,
    } = held_direct_step(None, false);
    assert_eq!(ip.to_string(), "127.0.0.1");
    wait_debugpy_listening(port);
    let client = DapClient::start(&[Attach::connect(&ip.to_string(), port)]);
    let outcome = &client.finish(1)[0];
    assert_breakpoint_hit(outcome, &agent);
    let status = agent.wait_exit();
    assert!(
        status.success(),
        "agent exited {status:?}:\n{}",
        agent.log()
    );
    assert!(agent.stdout.wait_for("done total 6").is_some());
    // The sidecar saw the developer's connection to debugpy (direct mode has no relay).
    assert!(
        agent.log().contains("debug session attached"),
        "{}",
        agent.log()
    );
}

/// A sitecustomize that takes direct mode's loopback port for debugpy, read from the
/// bootstrap's debugpy arguments, just before debugpy binds it: what another process of
/// a busy node did when the agent chose the port before the step started (CI saw it).
const TAKE_DEBUGPYS_LOOPBACK_PORT: &str = "\
import os, re, socket
_amlx_test_taken = None
_amlx_test_port = re.search(r'127\\.0\\.0\\.1:(\\d+)', os.environ.get('AMLX_DEBUGPY_BOOTSTRAP', ''))
if _amlx_test_port and int(_amlx_test_port.group(1)) != 0:
    _amlx_test_taken = socket.socket()
    _amlx_test_taken.bind(('127.0.0.1', int(_amlx_test_port.group(1))))
    _amlx_test_taken.listen(1)
";

/// Direct mode's debugpy listens on a loopback port behind the sidecar. The agent chose
/// that port before the step started and debugpy bound it later: another process could
/// take it in between, and the session was lost (debugpy could not listen). Now
/// debugpy's adapter picks its port when it binds and the bootstrap reports it.
#[test]
fn direct_mode_s_loopback_port_cannot_be_taken_before_debugpy_binds_it() {
    let DirectStep {
        mut agent,
        ip,
        port,
        _dirs: _kept,
    } = held_direct_step(Some(TAKE_DEBUGPYS_LOOPBACK_PORT), false);
    wait_debugpy_listening(port);
    let client = DapClient::start(&[Attach::connect(&ip.to_string(), port)]);
    let outcome = &client.finish(1)[0];
    assert_breakpoint_hit(outcome, &agent);
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}:\n{}", agent.log());
    let log = agent.log();
    assert!(!log.contains("debugging disabled"), "{log}");
}

/// Developers who came and went while the step's interpreter was starting (a port check,
/// a debugger that gave up) were all connected to debugpy the moment it listened, and its
/// adapter then served nobody: the next developer got no answer and the step was held
/// past its deadline. They are now let go when they leave (here before their first DAP
/// message, which direct mode waits for before it reaches debugpy).
#[test]
fn developers_who_left_while_debugpy_started_do_not_spoil_it_for_the_next() {
    let DirectStep {
        mut agent,
        ip,
        port,
        _dirs: _kept,
    } = held_direct_step(Some("import time\ntime.sleep(4)\n"), true);
    for _ in 0..2 {
        drop(std::net::TcpStream::connect((ip, port)).expect("connect and leave"));
    }
    agent.wait_stderr("the step's bootstrap started debugpy");
    let client = DapClient::start(&[Attach::connect(&ip.to_string(), port)]);
    let outcome = &client.finish(1)[0];
    assert_breakpoint_hit(outcome, &agent);
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}:\n{}", agent.log());
    let left = agent
        .log()
        .matches(
            "a connection to the debug port closed before it sent a whole DAP message; \
             debugpy was not reached",
        )
        .count();
    assert_eq!(left, 2, "{}", agent.log());
}

#[test]
fn a_waiting_step_is_released_at_the_attach_timeout_when_nobody_attaches() {
    for mode in ["listen", "direct"] {
        let locks = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("debug");
        let (_, _, range) = port_range(4);
        let out = util::output_within(
            developer
                .agent(locks.path())
                .env("STEP_EXIT_CODE", "5")
                .args(["exec", "--debug", "--mode", mode, "--node-ip", "127.0.0.1"])
                .args(["--wait-for-client", "--attach-timeout", "3s"])
                .args(["--port-range", &range, "--", "python3"])
                .arg(step_py()),
            SESSION_DEADLINE,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{mode}:\n{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("done total 6"),
            "{mode}: the step did not run to its end:\n{stderr}"
        );
        assert!(
            stderr.contains("debug session timed-out: no debugger attached within 3s"),
            "{mode}:\n{stderr}"
        );
    }
}

/// An interpreter that starts after the attach deadline (and the release's grace) has
/// passed: `status` already says the step runs on without a debugger, so debugpy must not
/// hold it when it comes. The bootstrap's own bound counted from its start, and held the
/// step a whole attach timeout and grace more (12 s here).
#[test]
fn a_step_whose_interpreter_starts_after_the_deadline_is_not_held_again() {
    use std::time::Duration;
    const SLOW_START: Duration = Duration::from_secs(13);
    let locks = tempfile::tempdir().expect("tempdir");
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        site.path().join("sitecustomize.py"),
        // Popped: debugpy's adapter, another Python started by the step, starts at once.
        "import os, time\ntime.sleep(float(os.environ.pop('SLOW_START', '0')))\n",
    )
    .expect("write sitecustomize.py");
    let developer = DeveloperSide::relay_only("debug");
    let (_, _, range) = port_range(4);
    let started = std::time::Instant::now();
    let out = util::output_within(
        developer
            .agent(locks.path())
            .env("PYTHONPATH", site.path())
            .env("SLOW_START", SLOW_START.as_secs().to_string())
            .env("STEP_EXIT_CODE", "5")
            .args(["exec", "--debug", "--mode", "listen"])
            .args(["--wait-for-client", "--attach-timeout", "2s"])
            .args(["--port-range", &range, "--", "python3"])
            .arg(step_py()),
        SESSION_DEADLINE,
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    // Held again, it would take SLOW_START + 2 s + 10 s.
    assert!(
        took < SLOW_START + Duration::from_secs(7),
        "took {took:?}:\n{stderr}"
    );
}

/// A developer who comes after the attach timeout (the step already runs on) can still
/// attach in listen mode: the deadline cuts the connections in their setup *then*, not
/// every connection after it.
#[test]
fn listen_mode_takes_a_debugger_that_comes_after_the_attach_timeout() {
    let locks = tempfile::tempdir().expect("tempdir");
    let gate = locks.path().join("gate");
    let developer = DeveloperSide::relay_only("debug");
    let (debug_port, _, range) = port_range(4);
    let mut agent = Running::spawn(
        waiting_listen_step(&developer, locks.path(), "2s", &range).env("STEP_GATE", &gate),
    );
    agent.wait_stderr("debug session timed-out");
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "the step was not released at the timeout:\n{}",
        agent.log()
    );
    // The step now waits in its gate loop (bounded: 60 s); the late debugger stops
    // there.
    let source = std::fs::read_to_string(step_py()).expect("step.py");
    let sleep_line = source
        .lines()
        .position(|line| line.trim() == "time.sleep(0.1)")
        .expect("step.py's gate loop sleeps") as u32
        + 1;
    let (_connect, bound) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    let mut late = Attach::connect("127.0.0.1", bound.port());
    late.line = sleep_line;
    let client = DapClient::start_in(&[late], &step_py(), "gate");
    // Stopped in the loop: the gate opens, and the session ends with the step.
    client.wait_stopped();
    std::fs::write(&gate, b"").expect("open the gate");
    let outcome = &client.finish(1)[0];
    assert!(
        outcome.ok,
        "the late debugger was not let in: {outcome:?}\n{}",
        agent.log()
    );
    assert_eq!(outcome.line, Some(sleep_line), "{}", agent.log());
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}:\n{}", agent.log());
}

/// Listen mode: VS Code's Stop on a session it may end (`disconnect` with
/// `terminateDebuggee`) ends the step, and the log says so instead of "the debugger
/// detached; the step runs on".
#[test]
fn listen_mode_says_when_the_debugger_terminates_the_step() {
    let locks = tempfile::tempdir().expect("tempdir");
    let (developer, mut agent, debug_port) = held_listen_step(locks.path());
    let (_connect, bound) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    let client = DapClient::start(&[Attach::connect("127.0.0.1", bound.port()).terminate()]);
    let outcome = &client.finish(1)[0];
    assert!(outcome.ok, "{outcome:?}\n{}", agent.log());
    agent.wait_exit();
    assert!(
        agent.stdout.wait_for("done total 6").is_none(),
        "the step ran to its end"
    );
    let log = agent.log();
    assert!(
        log.contains("asked debugpy to end the step (terminate or terminateDebuggee)"),
        "{log}"
    );
    assert!(!log.contains("the step runs on"), "{log}");
}
