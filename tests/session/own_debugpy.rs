//! Steps the agent starts under debugpy that meet debugpy themselves, or whose start of
//! debugpy fails where nobody reads its words: none of it may cost the step its run.

use std::process::Stdio;
use std::time::Duration;

use super::failures::TAKE_THE_DEBUG_PORT;
use super::faults::Fake;
use super::harness::{DeveloperSide, SESSION_DEADLINE, port_range, step_py};
use super::lifecycle::{Gate, Running, session_of};
use crate::relay::harness::Proc;
use crate::util;

/// Once the listen-mode session of `agent` waits, a developer reaches its `debug_port`
/// through `relay connect`: the fake debugger, which finishes its DAP setup and watches.
fn developer_arrives(developer: &DeveloperSide, agent: &Running, debug_port: u16) -> (Proc, Fake) {
    agent.wait_stderr("debug session waiting-for-debugger");
    let (connect, bound) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    let fake = Fake::spawn(&["connect", &bound.port().to_string(), "configure-and-watch"]);
    (connect, fake)
}

/// The session of `agent` says `waiting-for-debugger` (nobody attached) at every look
/// for `how_long`.
fn stays_waiting(state_dir: &std::path::Path, agent: &Running, how_long: Duration) {
    let until = std::time::Instant::now() + how_long;
    while std::time::Instant::now() < until {
        let session = session_of(state_dir, agent.pid()).expect("the session's record");
        assert_eq!(
            session["state"],
            "waiting-for-debugger",
            "{session}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exit code the steps choose.
const STEP_CODE: i32 = 6;

/// Prior-art step code: debugpy started by the step itself, on the port the agent
/// exports, then the step goes on.
pub(super) const STARTS_DEBUGPY_ITSELF: &str = "\
import os, sys, debugpy
print('own listen answered', debugpy.listen(int(os.environ.get('AMLX_DEBUG_PORT', '5678'))), flush=True)
sys.exit(6)
";

/// A step calling `debugpy.listen` itself after the agent started debugpy ended with
/// "debugpy.listen() has already been called" (listen, direct) or "Address already in
/// use" on the agent's port (connect): the step broken by its own prior-art line. Now
/// the call is answered, changes nothing, and the step runs to its end with its code.
#[test]
fn a_step_that_starts_debugpy_itself_runs_to_its_end_in_every_mode() {
    for mode in ["connect", "listen", "direct"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("own-debugpy");
        let (_, _, range) = port_range(4);
        let out = util::output_within(
            developer
                .agent(dir.path())
                .args(["exec", "--debug", "--rank", "0", "--mode", mode])
                .args(["--node-ip", "127.0.0.1", "--attach-timeout", "1s"])
                .args(["--port-range", &range, "--", "python3", "-c"])
                .arg(STARTS_DEBUGPY_ITSELF),
            SESSION_DEADLINE,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(STEP_CODE), "{mode}:\n{stderr}");
        assert!(stdout.contains("own listen answered"), "{mode}:\n{stderr}");
        assert!(
            stderr.contains("the step's own debugpy.listen(")
                && stderr.contains("does nothing: debugpy already serves this process"),
            "{mode}:\n{stderr}"
        );
        assert!(!stderr.contains("Traceback"), "{mode}:\n{stderr}");
    }
}

/// When debugpy cannot start (its port taken, or not importable) the bootstrap says so
/// on stderr; a stderr that is a pipe nobody reads any more made that line raise
/// BrokenPipeError, and the step never ran (exit 1). Without the agent the same step
/// runs to its end: so must it with the agent.
#[test]
fn debugpy_failing_to_start_with_stderr_a_broken_pipe_still_runs_the_step() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(site.path().join("sitecustomize.py"), TAKE_THE_DEBUG_PORT)
        .expect("write sitecustomize.py");
    // (python flags, what makes debugpy fail)
    let cases: [(&[&str], &str); 2] = [(&[], "its port taken"), (&["-S"], "not importable")];
    for (python_flags, what) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("own-debugpy");
        let (_, _, range) = port_range(4);
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        let stdout_file = tempfile::NamedTempFile::new().expect("stdout file");
        let mut cmd = developer.agent(dir.path());
        cmd.env("PYTHONPATH", site.path())
            .env("TAKE_DEBUG_PORT", "1")
            .env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
            .args(["--port-range", &range, "--", "python3"])
            .args(python_flags)
            .arg(step_py())
            .stdin(Stdio::null())
            .stdout(stdout_file.reopen().expect("reopen stdout file"))
            .stderr(Stdio::from(write));
        let mut child = cmd.spawn().expect("spawn amlx-agent exec");
        let status = util::wait_within(&mut child, SESSION_DEADLINE);
        let stdout = std::fs::read_to_string(stdout_file.path()).expect("read stdout");
        assert_eq!(status.code(), Some(STEP_CODE), "{what}: {stdout}");
        assert!(stdout.contains("done total 6"), "{what}: {stdout}");
    }
}

/// A developer who reached the debug port of a listen-mode step before its bootstrap
/// found that debugpy could not listen there was connected to whatever held the port (a
/// process that had taken it) and shown `attached`, for as long as the step ran. Now a
/// developer is connected only once the bootstrap says debugpy listens: here they wait,
/// are never carried to the port's holder, and are told why when the bootstrap reports
/// that debugpy could not listen; the step runs on with its code.
#[test]
fn a_developer_who_reaches_a_taken_debug_port_is_never_carried_to_its_holder() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(site.path().join("sitecustomize.py"), TAKE_THE_DEBUG_PORT)
        .expect("write sitecustomize.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let developer = DeveloperSide::relay_only("taken-port");
    let (debug_port, _, range) = port_range(4);
    let gate = Gate::in_dir(dir.path());
    let mut cmd = developer.agent(dir.path());
    cmd.env("PYTHONPATH", site.path())
        .env("TAKE_DEBUG_PORT", "1")
        .env("TAKE_DEBUG_PORT_UNTIL", dir.path().join("go"))
        .env("STEP_GATE", gate.path())
        .env("STEP_EXIT_CODE", STEP_CODE.to_string())
        .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
        .args(["--port-range", &range, "--", "python3"])
        .arg(step_py());
    let mut agent = Running::spawn(&mut cmd);
    let (_connect, fake) = developer_arrives(&developer, &agent, debug_port);
    fake.wait_done(&agent);
    agent.wait_stderr("a developer reached rank 0");
    // The port's holder accepts connections; the developer must not be carried to it.
    stays_waiting(&state_dir, &agent, Duration::from_secs(2));
    std::fs::write(dir.path().join("go"), b"").expect("write the go file");
    agent.wait_stderr(
        "a developer could not be connected to debugpy: debugpy did not start on the target: \
         debugpy could not listen on",
    );
    // The step is held at its gate: the developer's connection ends now.
    let ended = fake
        .stdout
        .wait_for_from(0, "ended ", Duration::from_secs(10))
        .map(|(_, line)| line)
        .unwrap_or_else(|| panic!("the developer was never let go\n{}", agent.log()));
    assert!(ended.starts_with("ended "), "{ended}");
    assert!(
        !agent.log().contains("debug session attached"),
        "{}",
        agent.log()
    );
    gate.open();
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
}

/// A developer who reached a listen-mode node while the step's interpreter was still
/// starting (a sitecustomize that takes a while, a large environment on a network file
/// system) was turned away after about 10 s with "debugpy is not listening on the
/// target", though debugpy came a moment later. Now they wait for the step's bootstrap
/// to say debugpy listens (bounded) and are then carried to it.
#[test]
fn a_developer_who_arrives_while_the_interpreter_starts_slowly_is_carried_to_debugpy() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        site.path().join("sitecustomize.py"),
        "import os, time\ntime.sleep(float(os.environ.get('SLOW_START', '0')))\n",
    )
    .expect("write sitecustomize.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let developer = DeveloperSide::relay_only("slow-start");
    let (debug_port, _, range) = port_range(4);
    let gate = Gate::in_dir(dir.path());
    let mut cmd = developer.agent(dir.path());
    cmd.env("PYTHONPATH", site.path())
        // Longer than the ~10 s of tries that turned the developer away.
        .env("SLOW_START", "12")
        .env("STEP_GATE", gate.path())
        .env("STEP_EXIT_CODE", STEP_CODE.to_string())
        .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
        .args(["--port-range", &range, "--", "python3"])
        .arg(step_py());
    let mut agent = Running::spawn(&mut cmd);
    let (_connect, fake) = developer_arrives(&developer, &agent, debug_port);
    fake.wait_done(&agent);
    agent.wait_stderr("a developer reached rank 0");
    util::wait_for("the developer attached", SESSION_DEADLINE, || {
        let log = agent.log();
        assert!(
            !log.contains("a developer could not be connected"),
            "turned away:\n{log}"
        );
        log.contains("debug session attached").then_some(())
    });
    gate.open();
    let ended = fake
        .stdout
        .wait_for_from(0, "ended ", SESSION_DEADLINE)
        .map(|(_, line)| line)
        .unwrap_or_else(|| panic!("the debugger never saw the end\n{}", agent.log()));
    assert!(ended.contains("terminated"), "{ended}\n{}", agent.log());
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
}

/// A developer who reaches a listen-mode node whose debugpy is not (yet) listening is
/// not attached: `status` said "attached" from the relayed connection's arrival, and for
/// good when debugpy never came (`--inject none`, a step that starts no debugpy), though
/// nobody was attached to anything. It now says so only once debugpy is reached.
#[test]
fn status_says_attached_only_once_the_developer_reaches_debugpy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let developer = DeveloperSide::relay_only("no-debugpy-yet");
    let (debug_port, _, range) = port_range(4);
    let gate = Gate::in_dir(dir.path());
    let mut cmd = developer.agent(dir.path());
    cmd.env("STEP_GATE", gate.path())
        .env("STEP_EXIT_CODE", STEP_CODE.to_string())
        .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
        .args(["--inject", "none", "--port-range", &range, "--", "python3"])
        .arg(step_py());
    let mut agent = Running::spawn(&mut cmd);
    let (_connect, _fake) = developer_arrives(&developer, &agent, debug_port);
    agent.wait_stderr("a developer reached rank 0");
    // The sidecar tries debugpy for a while; meanwhile nobody is attached.
    stays_waiting(&state_dir, &agent, Duration::from_secs(3));
    gate.open();
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
}

/// A developer who waits for debugpy while the step's interpreter starts is told why when
/// the step ends first (here it exits before its bootstrap ran): the tunnel was dropped
/// with the sidecar, and `relay connect` said only that the other side went away.
#[test]
fn a_developer_waiting_for_debugpy_hears_that_the_step_ended() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        site.path().join("sitecustomize.py"),
        "import os, time\n\
         gate = os.environ.get('EXIT_AT_GATE')\n\
         for _ in range(600 if gate else 0):\n\
         \x20   if os.path.exists(gate):\n\
         \x20       os._exit(4)\n\
         \x20   time.sleep(0.1)\n",
    )
    .expect("write sitecustomize.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let developer = DeveloperSide::relay_only("step-ends");
    let (debug_port, _, range) = port_range(4);
    let gate = dir.path().join("gate");
    let mut cmd = developer.agent(dir.path());
    cmd.env("PYTHONPATH", site.path())
        .env("EXIT_AT_GATE", &gate)
        .args(["exec", "--debug", "--rank", "0", "--mode", "listen"])
        .args(["--port-range", &range, "--", "python3"])
        .arg(step_py());
    let mut agent = Running::spawn(&mut cmd);
    let (connect, _fake) = developer_arrives(&developer, &agent, debug_port);
    agent.wait_stderr("a developer reached rank 0");
    std::fs::write(&gate, b"").expect("open the gate");
    assert_eq!(agent.wait_exit().code(), Some(4), "{}", agent.log());
    assert!(
        connect
            .stderr
            .wait_for("the step ended before debugpy was reached")
            .is_some(),
        "relay connect did not say why\n{}",
        agent.log()
    );
}

/// Prior-art step code that starts debugpy and waits for a client itself, a moment into
/// its run (imports first).
const LISTENS_AND_WAITS_ITSELF: &str = "\
import os, sys, time, debugpy
time.sleep(float(os.environ['STEP_DELAY']))
debugpy.listen(int(os.environ.get('AMLX_DEBUG_PORT', '5678')))
debugpy.wait_for_client()
print('own wait over', flush=True)
sys.exit(6)
";

/// The step's own `debugpy.wait_for_client()` (after its own `debugpy.listen`, answered
/// by the bootstrap) waited for ever in connect mode once the session's deadline had
/// passed (no debugger could end it), or raised "listen() or connect() must be called
/// first" once the released session's connection had closed; in listen mode without
/// `--wait-for-client` it was not bounded either. Every such wait now ends within the
/// attach timeout plus the release grace of its call, and the step keeps its exit code.
#[test]
fn a_steps_own_wait_for_a_client_is_bounded_in_every_mode() {
    // (mode, seconds the step runs before it listens and waits)
    let cases = [("connect", "2"), ("connect", "8"), ("listen", "0")];
    for (mode, delay) in cases {
        let what = format!("{mode}, waiting after {delay} s");
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("own-wait");
        let (_, _, range) = port_range(4);
        let out = util::output_within(
            developer
                .agent(dir.path())
                .env("STEP_DELAY", delay)
                .args(["exec", "--debug", "--rank", "0", "--mode", mode])
                .args(["--attach-timeout", "1s", "--port-range", &range])
                .args(["--", "python3", "-c", LISTENS_AND_WAITS_ITSELF]),
            // 8 s before the wait, then at most 1 s + RELEASE_GRACE (10 s) in it.
            SESSION_DEADLINE,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(STEP_CODE), "{what}:\n{stderr}");
        assert!(stdout.contains("own wait over"), "{what}:\n{stderr}");
        assert!(!stderr.contains("Traceback"), "{what}:\n{stderr}");
    }
}

/// debugpy's listen() waits for its adapter's process with no bound of its own: an adapter
/// whose interpreter hung or crawled (here 60 s in its sitecustomize, while the step's own
/// interpreter starts at once) held the step as long, though nobody had asked to wait for
/// a debugger. The agent's bootstrap gives the adapter 15 s (or twice the interpreter's own
/// start); then the step runs without debugpy, and the log says why.
#[test]
fn an_adapter_that_does_not_start_does_not_hold_the_step() {
    // Well past the bootstrap's bound, well inside SESSION_DEADLINE.
    const ADAPTER_SLOW: Duration = Duration::from_secs(60);
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        site.path().join("sitecustomize.py"),
        "import os, time\n\
         if b'adapter' in open('/proc/self/cmdline', 'rb').read():\n    \
         time.sleep(float(os.environ.get('ADAPTER_SLOW', '0')))\n",
    )
    .expect("write sitecustomize.py");
    for mode in ["listen", "direct"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("slow-adapter");
        let (_, _, range) = port_range(4);
        let mut cmd = developer.agent(dir.path());
        cmd.env("PYTHONPATH", site.path())
            .env("ADAPTER_SLOW", ADAPTER_SLOW.as_secs().to_string())
            .env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .args(["exec", "--debug", "--rank", "0", "--mode", mode])
            .args(["--node-ip", "127.0.0.1", "--port-range", &range])
            .args(["--", "python3"])
            .arg(step_py());
        let started = std::time::Instant::now();
        let mut agent = Running::spawn(&mut cmd);
        let status = agent.wait_exit();
        let took = started.elapsed();
        let log = agent.log();
        assert_eq!(status.code(), Some(STEP_CODE), "{mode}: {log}");
        assert!(
            took < ADAPTER_SLOW,
            "{mode}: the step was held {took:?}, as long as its adapter took\n{log}"
        );
        assert!(
            log.contains("debugpy's adapter did not start within 15 s")
                && log.contains("running the step without a debugger"),
            "{mode}: {log}"
        );
    }
}
