//! Failure modes never cost the step: nobody attaching, the relay down, wrong credentials.
//! The step runs to its end, its exit code passes through, the log says why and `status`
//! shows it while the step runs (`--on-debug-failure fail` is the one way to stop the
//! step instead).

use std::process::Output;

use super::faults::Fake;
use super::harness::{DeveloperSide, SESSION_DEADLINE, free_port, port_range, step_py};
use super::lifecycle::{Gate, Running, assert_session_over, wait_state};
use crate::relay::harness::{KEY_BOTH, KEY_LISTEN, Relay};
use crate::util;

/// The exit code the step chooses (STEP_EXIT_CODE in tests/session/step.py).
const STEP_CODE: i32 = 5;

/// Runs step.py under `exec --debug` with `connection_string`; returns its output.
fn run_step(connection_string: &str, extra: &[&str]) -> Output {
    let locks = tempfile::tempdir().expect("tempdir");
    let (_, _, range) = port_range(4);
    util::output_within(
        util::agent()
            .env("AMLX_RELAY_CONNECTION_STRING", connection_string)
            .env("AMLX_RELAY_INSECURE_WS", "true")
            .env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .env("NO_COLOR", "1")
            .env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .args(["exec", "--debug", "--port-range", &range])
            .args(extra)
            .args(["--", "python3"])
            .arg(step_py()),
        SESSION_DEADLINE,
    )
}

/// The step ran to its end and its exit code came through the agent.
fn assert_step_ran(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(STEP_CODE),
        "{what}: the step's exit code did not pass through:\n{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done total 6"),
        "{what}: the step did not run to its end:\n{stderr}"
    );
    stderr
}

#[test]
fn nobody_attaching_times_out_and_the_step_exit_code_passes_through() {
    let developer = DeveloperSide::relay_only("debug");
    let out = run_step(&developer.connection_string(), &["--attach-timeout", "3s"]);
    let stderr = assert_step_ran(&out, "nobody listening");
    assert!(
        stderr.contains("no listener on the Hybrid Connection yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains("debug session timed-out: no debugger attached within 3s"),
        "{stderr}"
    );
    assert!(!stderr.contains("debug session attached"), "{stderr}");
}

#[test]
fn an_unusable_relay_runs_the_step_undebugged_and_the_log_names_the_cause() {
    let relay = Relay::start();
    let wrong_key = (KEY_BOTH.0, "d3Jvbmcta2V5");
    let closed = free_port();
    let cases = [
        (
            "relay down",
            down_relay(closed),
            format!("cannot reach relay 127.0.0.1:{closed}"),
        ),
        (
            "wrong key",
            relay.connection_string(wrong_key, "debug"),
            "rejected the token (401".to_owned(),
        ),
        (
            "listen-only key",
            relay.connection_string(KEY_LISTEN, "debug"),
            format!(
                "refused access (403 Forbidden: SAS key \"{}\" lacks the Send right",
                KEY_LISTEN.0
            ),
        ),
    ];
    for (what, connection_string, cause) in cases {
        let out = run_step(&connection_string, &["--attach-timeout", "3s"]);
        let stderr = assert_step_ran(&out, what);
        let disabled = stderr
            .lines()
            .find(|l| l.contains("debugging disabled for this run"))
            .unwrap_or_else(|| panic!("{what}: no line says debugging is off:\n{stderr}"));
        assert!(
            disabled.contains(&cause),
            "{what}: want {cause:?} in {disabled:?}"
        );
        assert!(
            disabled.contains("running the step without a debugger"),
            "{what}: {disabled}"
        );
        assert!(
            [KEY_BOTH.1, KEY_LISTEN.1, wrong_key.1]
                .iter()
                .all(|key| !stderr.contains(key)),
            "{what}: a key reached the log"
        );
    }
}

#[test]
fn relay_down_with_on_debug_failure_fail_does_not_run_the_step() {
    let closed = free_port();
    let out = run_step(&down_relay(closed), &["--on-debug-failure", "fail"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(STEP_CODE),
        "agent exited {:?}:\n{stderr}",
        out.status
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("done total"),
        "the step ran:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot reach relay 127.0.0.1:{closed}"))
            && stderr.contains("not running the step (--on-debug-failure fail)"),
        "{stderr}"
    );
}

/// While a step runs undebugged, `status` says why: a relay that is down (the sidecar
/// finds out), no relay credentials at all (found before any sidecar starts), and an
/// interpreter without debugpy (the step's bootstrap finds out and tells the sidecar).
#[test]
fn status_says_why_while_a_step_runs_undebugged() {
    let closed = free_port();
    let relay_down = [
        ("AMLX_RELAY_CONNECTION_STRING", down_relay(closed)),
        ("AMLX_RELAY_INSECURE_WS", "true".to_owned()),
    ];
    let direct: &[&str] = &["--mode", "direct", "--node-ip", "127.0.0.1"];
    type Case<'a> = (
        &'a [(&'a str, String)],
        &'a [&'a str],
        &'a [&'a str],
        String,
    );
    let listen: &[&str] = &["--mode", "listen"];
    let cases: [Case<'_>; 4] = [
        (
            &relay_down,
            &[],
            &[],
            format!("cannot reach relay 127.0.0.1:{closed}"),
        ),
        // Listen mode retries the relay until its ready bound, then says what the last
        // try met (it said only that the listener was not online in time).
        (
            &relay_down,
            listen,
            &[],
            format!(
                "the relay listener was not online within 15s (the last try: cannot reach \
                 relay 127.0.0.1:{closed}"
            ),
        ),
        (&[], &[], &[], "no relay credentials".to_owned()),
        // -S: no site-packages, where the test requirements put debugpy.
        (
            &[],
            direct,
            &["-S"],
            "debugpy is not importable by".to_owned(),
        ),
    ];
    for (env, agent_args, python_flags, cause) in cases {
        let locks = tempfile::tempdir().expect("tempdir");
        let state_dir = locks.path().join("state");
        let gate = Gate::in_dir(locks.path());
        let (_, _, range) = port_range(4);
        let mut cmd = util::agent();
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", &state_dir)
            .env("NO_COLOR", "1")
            .args(["exec", "--debug", "--rank", "0", "--port-range", &range])
            .args(agent_args)
            .args(["--", "python3"])
            .args(python_flags)
            .arg(step_py())
            .env("STEP_GATE", gate.path())
            .env("STEP_EXIT_CODE", "5");
        let mut agent = Running::spawn(&mut cmd);
        let pid = agent.pid();
        let session = wait_state(&state_dir, pid, "running-undebugged", &agent);
        let reason = session["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(&cause), "expected {cause:?}: {session}");
        assert_eq!(session["holder"], "live", "{session}");
        gate.open();
        assert_eq!(agent.wait_exit().code(), Some(5), "{}", agent.log());
        assert_session_over(&state_dir, pid);
    }
}

/// A connection string for a relay that is not running (nothing listens on `port`).
pub(super) fn down_relay(port: u16) -> String {
    format!(
        "Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath=debug",
        KEY_BOTH.0, KEY_BOTH.1
    )
}

/// A step that closes every descriptor it was started with (`os.closerange`) closes the
/// session's lifeline and its port lock with them: the session ends, and the log says
/// why (it had said only "debug session ended"), and while the step runs on `status`
/// shows it `running-undebugged` with that reason (its record had vanished as if the
/// step had ended). A step that simply exits does not draw that warning.
#[test]
fn a_step_that_closes_its_inherited_descriptors_is_told_why_the_session_ended() {
    let cases = [
        (
            "import os, time; os.closerange(3, 65536); time.sleep(3)",
            true,
        ),
        ("import time; time.sleep(1)", false),
    ];
    for (code, closes) in cases {
        let locks = tempfile::tempdir().expect("tempdir");
        let state_dir = locks.path().join("state");
        let (_, _, range) = port_range(4);
        let mut cmd = util::agent();
        cmd.env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", &state_dir)
            .env("NO_COLOR", "1")
            .args(["exec", "--replace", "--debug", "--rank", "0"])
            .args(["--mode", "direct", "--node-ip", "127.0.0.1"])
            .args(["--port-range", &range, "--", "python3", "-c", code]);
        let mut agent = Running::spawn(&mut cmd);
        if closes {
            let session = wait_state(&state_dir, agent.pid(), "running-undebugged", &agent);
            let reason = session["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("closed the descriptors it was started with"),
                "{session}\n{}",
                agent.log()
            );
        }
        let status = agent.wait_exit();
        let log = agent.log();
        assert!(status.success(), "{code}: {log}");
        assert_eq!(
            log.contains("the step closed the descriptors it was started with"),
            closes,
            "{code}: {log}"
        );
    }
}

/// Binds the debug port before debugpy can (as another process of the node might, after
/// the agent chose the port): `sitecustomize` runs at the interpreter's start, before the
/// bootstrap starts debugpy, and holds 127.0.0.1:$AMLX_DEBUG_PORT while the step runs.
pub(super) const TAKE_THE_DEBUG_PORT: &str = "\
import os, socket
_amlx_test_taken = None
try:
    if os.environ.get('TAKE_DEBUG_PORT') == '1' and os.environ.get('AMLX_DEBUG_PORT'):
        _amlx_test_taken = socket.socket()
        _amlx_test_taken.bind(('127.0.0.1', int(os.environ['AMLX_DEBUG_PORT'])))
        _amlx_test_taken.listen(1)
        os.environ['TAKE_DEBUG_PORT'] = '0'
        # Until the test says so (bounded: 60 s), so that a developer can reach the
        # port's holder before debugpy tries.
        import time
        _amlx_test_go = os.environ.get('TAKE_DEBUG_PORT_UNTIL')
        for _ in range(600 if _amlx_test_go else 0):
            if os.path.exists(_amlx_test_go):
                break
            time.sleep(0.1)
except OSError:
    pass
";

/// debugpy that cannot listen (its port taken by another process) ended the whole step
/// with debugpy's traceback (`RuntimeError: Can't listen for client connections: [Errno
/// 98] Address already in use`, seen in CI when another test took direct mode's loopback
/// port). Now the step runs without a debugger, with its own exit code, and the log and
/// `status` say why; with `--on-debug-failure fail` it does not run and the agent exits 1.
#[test]
fn debugpy_unable_to_listen_runs_the_step_undebugged_and_says_why() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(site.path().join("sitecustomize.py"), TAKE_THE_DEBUG_PORT)
        .expect("write sitecustomize.py");
    for on_failure in ["continue", "fail"] {
        let locks = tempfile::tempdir().expect("tempdir");
        let state_dir = locks.path().join("state");
        let gate = Gate::in_dir(locks.path());
        let developer = DeveloperSide::relay_only("taken");
        let (_, _, range) = port_range(4);
        let mut cmd = developer.agent(locks.path());
        cmd.env("PYTHONPATH", site.path())
            .env("TAKE_DEBUG_PORT", "1")
            .env("STEP_GATE", gate.path())
            .env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
            .args(["--on-debug-failure", on_failure, "--port-range", &range])
            .args(["--", "python3"])
            .arg(step_py());
        let mut agent = Running::spawn(&mut cmd);
        if on_failure == "fail" {
            let status = agent.wait_exit();
            let log = agent.log();
            assert_eq!(status.code(), Some(1), "{log}");
            assert!(agent.stdout.all().is_empty(), "the step ran:\n{log}");
            assert!(
                log.contains("debugpy could not listen on 127.0.0.1:"),
                "{log}"
            );
            continue;
        }
        let pid = agent.pid();
        let session = wait_state(&state_dir, pid, "running-undebugged", &agent);
        let reason = session["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("debugpy could not listen on 127.0.0.1:") && reason.contains("in use"),
            "{session}\n{}",
            agent.log()
        );
        gate.open();
        assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
        let log = agent.log();
        assert!(
            log.contains("debugging disabled for this run: debugpy could not listen on"),
            "{log}"
        );
        assert!(!log.contains("Traceback"), "{log}");
        assert!(
            agent.stdout.wait_for("done total 6").is_some(),
            "the step did not run to its end:\n{log}"
        );
        assert_session_over(&state_dir, pid);
    }
}

/// A developer who came for a listen-mode step that runs without debugpy (its interpreter
/// cannot import it) was told by the relay that no listener is connected, which reads as a
/// wrong port name or a step that never started. Now the target's listener stays and
/// refuses every developer who comes for its port with the reason, for the step's life;
/// the step runs on and its exit code comes through.
#[test]
fn a_developer_who_comes_for_a_step_without_debugpy_is_told_why() {
    use std::io::Read as _;
    use std::time::{Duration, Instant};

    let developer = DeveloperSide::relay_only("no-debugpy");
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let gate = Gate::in_dir(locks.path());
    let (debug_port, _, range) = port_range(4);
    let mut cmd = developer.agent(locks.path());
    // -S: no site-packages, where the test requirements put debugpy.
    cmd.args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
        .args(["--port-range", &range, "--", "python3", "-S"])
        .arg(step_py())
        .env("STEP_GATE", gate.path())
        .env("STEP_EXIT_CODE", STEP_CODE.to_string());
    let mut agent = Running::spawn(&mut cmd);
    wait_state(&state_dir, agent.pid(), "running-undebugged", &agent);
    let (connect, entry) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    let refusal = "debugging is disabled for this run of port";
    // A developer each time: one who comes the moment the step said so may still meet the
    // relay between the session's listener and the one that refuses (bounded tries).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    while refused < 2 {
        assert!(
            Instant::now() < deadline,
            "no developer was told why within 30 s:\n{}\n{}",
            connect.dump(),
            agent.log()
        );
        let mut local = std::net::TcpStream::connect(entry).expect("connect to relay connect");
        local
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        // relay connect ends the local connection once the tunnel is refused.
        let mut byte = [0u8; 1];
        assert!(
            !matches!(local.read(&mut byte), Ok(1)),
            "a developer was carried somewhere:\n{}",
            connect.dump()
        );
        let heard = connect
            .stderr
            .all()
            .iter()
            .filter(|line| line.contains(refusal))
            .count();
        if heard > refused {
            refused = heard;
        } else {
            // Met the relay without a listener: the next developer a moment later.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let lines = connect.stderr.all();
    let first = lines
        .iter()
        .find(|line| line.contains(refusal))
        .expect("a refusal");
    assert!(
        first.contains(&format!("port {debug_port}: debugpy is not importable by"))
            && first.contains("503 Service Unavailable")
            && first.contains("the step runs without a debugger"),
        "{first}"
    );
    gate.open();
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
    assert_session_over(&state_dir, agent.pid());
}

/// A debugger that reached a direct-mode step whose debugpy then failed to start was let
/// go with a bare close, which VS Code reports as a connection that closed. Now the answer
/// to its first request says why (VS Code shows an answer's message), and the step runs
/// on with its exit code.
#[test]
fn a_debugger_at_a_direct_mode_step_whose_debugpy_failed_is_told_why_in_dap() {
    const WITHHELD: &str = "debugpy withheld by the test";
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(site.path().join("debugpy")).expect("mkdir");
    // A debugpy that fails to import once the test says so (bounded).
    std::fs::write(
        site.path().join("debugpy/__init__.py"),
        format!(
            "import os, time\n\
             deadline = time.monotonic() + 60\n\
             while not os.path.exists(os.environ['DEBUGPY_FAILS_AFTER']) \
             and time.monotonic() < deadline:\n    time.sleep(0.05)\n\
             raise ImportError({WITHHELD:?})\n"
        ),
    )
    .expect("write debugpy/__init__.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let developer = DeveloperSide::relay_only("direct-no-debugpy");
    let gate = Gate::in_dir(dir.path());
    let (debug_port, _, range) = port_range(4);
    let mut cmd = developer.agent(dir.path());
    cmd.env("PYTHONPATH", site.path())
        .env("DEBUGPY_FAILS_AFTER", &go)
        .env("STEP_GATE", gate.path())
        .env("STEP_EXIT_CODE", STEP_CODE.to_string())
        .args(["exec", "--debug", "--rank", "0", "--mode", "direct"])
        .args([
            "--node-ip",
            "127.0.0.1",
            "--port-range",
            &range,
            "--",
            "python3",
        ])
        .arg(step_py());
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_stderr("debug session waiting-for-debugger");
    let debugger = Fake::spawn(&["connect", &debug_port.to_string(), "configure-and-watch"]);
    debugger.wait_done(&agent);
    agent.wait_stderr("developer connection from");
    std::fs::write(&go, b"").expect("write the go file");
    let refused = debugger
        .stdout
        .wait_for_from(0, "refused initialize: ", SESSION_DEADLINE)
        .map(|(_, line)| line)
        .unwrap_or_else(|| {
            panic!(
                "the debugger was not told why\n{}\n{}",
                debugger.stdout.all().join("\n"),
                agent.log()
            )
        });
    assert!(
        refused.contains("amlx-agent: debugpy did not start on the target: ")
            && refused.contains(WITHHELD),
        "{refused}"
    );
    gate.open();
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
}

/// A listen-mode target whose relay goes away says so in `status` (`relay-unreachable`,
/// with the listener's reason: developers cannot reach it) instead of still saying it
/// waits for a debugger, and says it listens again once the relay is back.
#[test]
fn status_says_when_developers_cannot_reach_a_listen_mode_target() {
    use super::faults::{Mode, step_command};
    use super::lifecycle::wait_state_why;

    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let mut developer = DeveloperSide::relay_only("outage");
    let (_, _, range) = port_range(4);
    let gate = Gate::in_dir(dir.path());
    let mut cmd = step_command(&developer, dir.path(), Mode::Listen, &gate, "120s", &range);
    let agent = Running::spawn(&mut cmd);
    wait_state_why(
        &state_dir,
        agent.pid(),
        "waiting-for-debugger",
        "listening on the Hybrid Connection",
        &agent,
    );
    developer.relay.proc.kill();
    wait_state_why(
        &state_dir,
        agent.pid(),
        "relay-unreachable",
        "the relay listener is offline",
        &agent,
    );
    let DeveloperSide { relay, hc, listen } = developer;
    let _developer = DeveloperSide {
        relay: relay.restart(),
        hc,
        listen,
    };
    wait_state_why(
        &state_dir,
        agent.pid(),
        "waiting-for-debugger",
        "listening on the Hybrid Connection again",
        &agent,
    );
    // The step is still held (its attach timeout is far away): the agent ends with the test.
    assert_eq!(agent.stdout.len(), 0, "the step ran:\n{}", agent.log());
}
