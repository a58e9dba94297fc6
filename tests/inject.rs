//! Integration tests: the debugpy rewrite run for real, with python3 and debugpy.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use amlx_agent::inject::bootstrap::{self, Report};
use amlx_agent::inject::{self, DebugpyOptions, Endpoint, InjectMode, Plan};
use amlx_agent::session::DebugMode;

use crate::session::harness::free_port;

/// Upper bound for a debugged step to finish (debugpy's adapter start dominates).
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound for debugpy to connect out to our listener.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Prints what the step sees, then calls `breakpoint()`, which must not stop without a client.
const STEP: &str = r#"
import json, os, sys
import debugpy
probe = None
if len(sys.argv) > 1 and sys.argv[1].startswith("probe="):
    import socket
    # The adapter must be listening on exactly the port the rewrite chose.
    socket.create_connection(("127.0.0.1", int(sys.argv[1][6:])), timeout=10).close()
    probe = "listening"
breakpoint()
print(json.dumps({
    "loaded": "debugpy" in sys.modules,
    "running": os.environ.get("DEBUGPY_RUNNING"),
    "hook": os.environ.get("PYTHONBREAKPOINT"),
    "connected": debugpy.is_client_connected(),
    "argv": sys.argv,
    "name": __name__,
    "probe": probe,
}))
"#;

fn write_step(dir: &Path) -> OsString {
    let path = dir.join("step.py");
    std::fs::write(&path, STEP).expect("write step.py");
    path.into_os_string()
}

fn words(items: &[&str]) -> Vec<OsString> {
    items.iter().map(OsString::from).collect()
}

/// Runs a command to completion, killing it if it outlives `deadline`.
fn run_bounded(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the step");
    wait_bounded(child, deadline)
}

/// Waits for a child and collects its output, killing it if it outlives `deadline`.
fn wait_bounded(child: Child, deadline: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(output) => output.expect("wait for the step"),
        Err(_) => {
            kill(pid);
            panic!("step {pid} did not finish within {deadline:?}");
        }
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Kills a step that a failing assertion would otherwise leave waiting for a debugger.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kill(self.0);
        }
    }
}

fn injected_command(argv: &[OsString], endpoint: Endpoint) -> (Command, Vec<OsString>) {
    injected_with(argv, endpoint, DebugpyOptions::default())
}

fn injected_with(
    argv: &[OsString],
    endpoint: Endpoint,
    options: DebugpyOptions,
) -> (Command, Vec<OsString>) {
    let env: HashMap<String, String> = HashMap::new();
    let Plan::Debugpy(python) = inject::plan(InjectMode::Auto, argv, &env).expect("plans") else {
        panic!("{argv:?} should be injected");
    };
    let injected = inject::rewrite(&python, &endpoint, &options).expect("rewrites");
    let mut cmd = Command::new(&injected.argv[0]);
    cmd.args(&injected.argv[1..])
        .envs(injected.env.iter().cloned())
        .env_remove(inject::DEBUGPY_RUNNING);
    (cmd, injected.argv)
}

fn report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "step failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not the step's report: {stdout}"))
}

#[test]
fn listen_mode_runs_the_step_under_debugpy_to_completion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let step = write_step(dir.path());
    let port = free_port();
    let probe = format!("probe={port}");
    let argv: Vec<OsString> = vec!["python3".into(), "-u".into(), step, probe.clone().into()];
    let endpoint = Endpoint {
        mode: DebugMode::Listen,
        port,
        node_ip: None,
    };
    let (read, write) = nix::unistd::pipe().expect("pipe");
    let options = DebugpyOptions {
        report_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&write)),
        ..DebugpyOptions::default()
    };
    let (cmd, rewritten) = injected_with(&argv, endpoint, options);
    assert!(
        rewritten.contains(&OsString::from(bootstrap::LAUNCHER)),
        "{rewritten:?}"
    );
    let output = run_bounded(cmd, STEP_DEADLINE);
    drop(write);
    // With the port debugpy's adapter listens on.
    assert_eq!(read_pipe(read), Report::Started(Some(port)));
    let report = report(&output);
    assert_eq!(report["loaded"], true);
    assert_eq!(report["running"], "true");
    assert_eq!(report["hook"], "debugpy.breakpoint");
    assert_eq!(report["connected"], false);
    assert_eq!(report["name"], "__main__");
    assert_eq!(report["probe"], "listening");
    // The step's own arguments arrive unchanged, with the script as argv[0].
    let argv0 = report["argv"][0].as_str().unwrap_or_default();
    assert!(argv0.ends_with("step.py"), "{report}");
    assert_eq!(report["argv"][1], probe.as_str());
}

/// Port 0 lets debugpy's adapter pick its port when it binds (direct mode's loopback
/// port: one chosen before the step started could be taken by another process first);
/// the bootstrap's report says which, and debugpy listens there.
#[test]
fn listen_on_port_zero_reports_the_port_debugpys_adapter_picked() {
    let argv = words(&["python3", "-c", "import time; time.sleep(60)"]);
    let endpoint = Endpoint {
        mode: DebugMode::Listen,
        port: 0,
        node_ip: None,
    };
    let (read, write) = nix::unistd::pipe().expect("pipe");
    let options = DebugpyOptions {
        report_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&write)),
        ..DebugpyOptions::default()
    };
    let (mut cmd, _) = injected_with(&argv, endpoint, options);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the step");
    drop(write);
    let (sender, reported) = mpsc::channel();
    std::thread::spawn(move || sender.send(read_pipe(read)));
    let report = reported.recv_timeout(STEP_DEADLINE);
    let reached = match &report {
        Ok(Report::Started(Some(port))) => Some(TcpStream::connect(("127.0.0.1", *port))),
        _ => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    let report = report.expect("the bootstrap's report within the deadline");
    let Report::Started(Some(port)) = report else {
        panic!("no port in the report: {report:?}");
    };
    assert_ne!(port, 0);
    let reached = reached.expect("tried");
    assert!(
        reached.is_ok(),
        "debugpy does not listen on {port}: {reached:?}"
    );
}

#[test]
fn module_and_code_targets_run_under_debugpy() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_step(dir.path());
    let endpoint = Endpoint {
        mode: DebugMode::Listen,
        port: 0,
        node_ip: None,
    };
    for argv in [
        words(&["python3", "-m", "step", "a"]),
        words(&["python3", "-B", "-c", "import step", "a"]),
    ] {
        let (mut cmd, _) = injected_command(&argv, endpoint);
        cmd.current_dir(dir.path());
        let report = report(&run_bounded(cmd, STEP_DEADLINE));
        assert_eq!(report["running"], "true", "{argv:?}");
        assert_eq!(report["argv"][1], "a", "{argv:?}");
    }
}

/// A script the interpreter cannot open ends the step as `python FILE` would: exit 2 and
/// Python's own line. debugpy's runner raised a traceback and exited 1 instead, so a
/// debugged step's exit code differed from the same step's without the agent. A
/// directory is still run as Python runs one (its `__main__.py`).
#[test]
fn a_script_python_cannot_open_exits_2_as_without_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = Endpoint {
        mode: DebugMode::Listen,
        port: 0,
        node_ip: None,
    };
    let missing = dir.path().join("missing.py");
    let missing = missing.to_str().expect("UTF-8 temp path");
    let (cmd, _) = injected_command(&words(&["python3", missing, "a"]), endpoint);
    let output = run_bounded(cmd, STEP_DEADLINE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "can't open file '{missing}': [Errno 2] No such file or directory"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("Traceback"), "{stderr}");
    // Given relative, named absolute, as Python names it.
    let (mut cmd, _) = injected_command(&words(&["python3", "missing.py"]), endpoint);
    cmd.current_dir(dir.path());
    let output = run_bounded(cmd, STEP_DEADLINE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("can't open file '{missing}'")),
        "{stderr}"
    );
    let package = dir.path().join("package");
    std::fs::create_dir(&package).expect("mkdir");
    std::fs::write(package.join("__main__.py"), "raise SystemExit(5)\n").expect("write");
    let package = package.to_str().expect("UTF-8 temp path");
    let (cmd, _) = injected_command(&words(&["python3", package]), endpoint);
    assert_eq!(run_bounded(cmd, STEP_DEADLINE).status.code(), Some(5));
}

#[test]
fn connect_mode_holds_the_step_until_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let step = write_step(dir.path());
    // The test plays the sidecar: it listens where debugpy connects out.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = Endpoint {
        mode: DebugMode::Connect,
        port: listener.local_addr().expect("addr").port(),
        node_ip: None,
    };
    let (mut cmd, _) = injected_command(&["python3".into(), step], endpoint);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _guard = KillOnPanic(child.id());
    let mut conn = accept_within(&listener, CONNECT_DEADLINE);
    // A lone configurationDone is enough to release `--connect` (the sidecar sends the
    // fuller sequence in `session::dap`, which also releases a listening adapter).
    dap_send(&mut conn, 1, "configurationDone", serde_json::json!({}));
    // debugpy answers before it lets the step go on.
    let mut seen = Vec::new();
    conn.set_read_timeout(Some(CONNECT_DEADLINE))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"configurationDone\"") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    drop(conn);
    assert!(
        String::from_utf8_lossy(&seen).contains("\"success\": true"),
        "no successful configurationDone response: {}",
        String::from_utf8_lossy(&seen)
    );
    let output = wait_bounded(child, STEP_DEADLINE);
    let report = report(&output);
    assert_eq!(report["running"], "true");
    assert_eq!(report["loaded"], true);
}

/// Sends one framed DAP request.
fn dap_send(conn: &mut TcpStream, seq: u64, command: &str, arguments: serde_json::Value) {
    let body = serde_json::json!({
        "seq": seq, "type": "request", "command": command, "arguments": arguments,
    })
    .to_string();
    write!(conn, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("send DAP request");
}

/// Reads one framed DAP message; `None` at end of stream.
fn dap_read(reader: &mut BufReader<TcpStream>) -> Option<serde_json::Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read DAP header") == 0 {
            return None;
        }
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length:") {
            length = n.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a Content-Length header")];
    reader.read_exact(&mut body).expect("read DAP body");
    Some(serde_json::from_slice(&body).expect("DAP body is JSON"))
}

/// A breakpoint on line 2, set by a client speaking DAP on the socket debugpy connected
/// to, is hit: connect mode holds the step until the client's configuration is done.
#[test]
fn connect_mode_hits_a_breakpoint_on_the_first_lines() {
    const MAX_MESSAGES: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("bp.py");
    std::fs::write(
        &script,
        "import sys\nx = 1\nprint('after the breakpoint', x)\n",
    )
    .expect("write bp.py");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = Endpoint {
        mode: DebugMode::Connect,
        port: listener.local_addr().expect("addr").port(),
        node_ip: None,
    };
    let (mut cmd, _) = injected_command(&["python3".into(), script.clone().into()], endpoint);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let _guard = KillOnPanic(child.id());
    let mut conn = accept_within(&listener, CONNECT_DEADLINE);
    conn.set_read_timeout(Some(CONNECT_DEADLINE))
        .expect("read timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let path = script.display().to_string();
    let requests = [
        (
            "initialize",
            serde_json::json!({"adapterID": "amlx-test", "linesStartAt1": true, "columnsStartAt1": true, "pathFormat": "path"}),
        ),
        ("attach", serde_json::json!({"justMyCode": false})),
        (
            "setBreakpoints",
            serde_json::json!({"source": {"path": path}, "breakpoints": [{"line": 2}]}),
        ),
        ("configurationDone", serde_json::json!({})),
    ];
    let mut seq = 0;
    for (command, arguments) in requests {
        seq += 1;
        dap_send(&mut conn, seq, command, arguments);
    }
    let mut stopped_at = None;
    for _ in 0..MAX_MESSAGES {
        let Some(message) = dap_read(&mut reader) else {
            break;
        };
        if message["event"] == "stopped" {
            seq += 1;
            let thread = message["body"]["threadId"].clone();
            dap_send(
                &mut conn,
                seq,
                "stackTrace",
                serde_json::json!({"threadId": thread}),
            );
        } else if message["command"] == "stackTrace" {
            let top = &message["body"]["stackFrames"][0];
            stopped_at = Some((top["source"]["path"].clone(), top["line"].clone()));
            seq += 1;
            dap_send(&mut conn, seq, "disconnect", serde_json::json!({}));
        } else if message["command"] == "disconnect" {
            break;
        }
    }
    drop(reader);
    drop(conn);
    let (path_seen, line) = stopped_at.expect("the breakpoint was hit");
    assert_eq!(line, 2);
    assert!(
        path_seen.as_str().unwrap_or_default().ends_with("bp.py"),
        "{path_seen}"
    );
    let output = wait_bounded(child, STEP_DEADLINE);
    assert!(output.status.success(), "{}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("after the breakpoint 1"), "{stdout}");
}

/// Accepts one connection, polling a non-blocking listener up to `deadline`.
fn accept_within(listener: &TcpListener, deadline: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("non-blocking");
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < deadline,
                    "debugpy did not connect within {deadline:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What a step sees when it runs without debugpy (it must not need debugpy itself).
const PLAIN_STEP: &str = r#"
import json, os, sys
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "path0": sys.path[0],
    "hook": os.environ.get("PYTHONBREAKPOINT"),
    "bootstrap": "AMLX_DEBUGPY_BOOTSTRAP" in os.environ,
    "debugpy": "debugpy" in sys.modules,
    "target": os.environ.get("AMLX_DEBUG_TARGET"),
    "port": os.environ.get("AMLX_DEBUG_PORT"),
}))
sys.exit(7)
"#;

/// Everything the bootstrap wrote to its report pipe, read as the sidecar reads it.
fn read_pipe(read: std::os::fd::OwnedFd) -> Report {
    let mut bytes = Vec::new();
    std::fs::File::from(read)
        .read_to_end(&mut bytes)
        .expect("read the report pipe");
    bootstrap::read_report(&bytes)
}

/// Runs `argv` through the bootstrap with `python3 -S` (no site-packages, so no debugpy:
/// the test requirements put it there) and its report on a pipe.
fn without_debugpy(dir: &Path, argv: &[&str], fail: bool) -> (Output, Report) {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    let options = DebugpyOptions {
        report_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&write)),
        fail_without_debugpy: fail,
        ..DebugpyOptions::default()
    };
    let endpoint = Endpoint {
        mode: DebugMode::Connect,
        port: 1,
        node_ip: None,
    };
    let (mut cmd, _) = injected_with(&words(argv), endpoint, options);
    cmd.current_dir(dir);
    let output = run_bounded(cmd, STEP_DEADLINE);
    drop(write);
    (output, read_pipe(read))
}

#[test]
fn without_debugpy_the_step_runs_in_the_same_interpreter_and_the_sidecar_hears_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plain.py"), PLAIN_STEP).expect("write plain.py");
    let script = dir.path().join("plain.py").display().to_string();
    let real_dir = std::fs::canonicalize(dir.path()).expect("canonical dir");
    // Each target kind, with its arguments, as `python3 -S <target> <args>` runs it.
    let cases: Vec<(Vec<&str>, serde_json::Value, Option<String>)> = vec![
        (
            vec!["python3", "-S", &script, "a", "b c", "é"],
            serde_json::json!([&script, "a", "b c", "é"]),
            Some(real_dir.display().to_string()),
        ),
        (
            vec!["python3", "-S", "-m", "plain", "a"],
            serde_json::json!([&script, "a"]),
            None,
        ),
        (
            vec!["python3", "-S", "-c", "exec(open('plain.py').read())", "a"],
            serde_json::json!(["-c", "a"]),
            None,
        ),
    ];
    for (argv, want_argv, want_path0) in cases {
        let (output, report) = without_debugpy(dir.path(), &argv, false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(7), "{argv:?}: {stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let seen: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{argv:?}: {e}: {stdout} {stderr}"));
        assert_eq!(seen["argv"], want_argv, "{argv:?}");
        assert_eq!(seen["name"], "__main__", "{argv:?}");
        if let Some(path0) = &want_path0 {
            assert_eq!(seen["path0"], path0.as_str(), "{argv:?}");
        }
        // The debugger's leftovers are gone: no hook into a missing debugpy, no text.
        assert_eq!(seen["hook"], serde_json::Value::Null, "{argv:?}");
        assert_eq!(seen["bootstrap"], false, "{argv:?}");
        assert_eq!(seen["debugpy"], false, "{argv:?}");
        assert!(
            stderr.contains("debugging disabled for this run"),
            "{stderr}"
        );
        assert!(stderr.contains("pip install debugpy"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        match report {
            Report::Missing(why) => {
                assert!(why.contains("No module named 'debugpy'"), "{why}");
            }
            other => panic!("{argv:?}: the sidecar heard {other:?}"),
        }
    }
}

#[test]
fn without_debugpy_and_on_debug_failure_fail_the_step_does_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plain.py"), PLAIN_STEP).expect("write plain.py");
    let (output, report) = without_debugpy(dir.path(), &["python3", "-S", "plain.py"], true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "the step ran");
    assert!(stderr.contains("--on-debug-failure fail"), "{stderr}");
    assert!(matches!(report, Report::Missing(_)), "{report:?}");
}

/// A step held by debugpy's `--wait-for-client` lets itself go `release_after` past its
/// start, with no sidecar at all, whether nobody came or a client connected to
/// debugpy, sent `initialize` and `attach` and then stayed silent (debugpy's adapter
/// then has a client that never finishes, and a release over DAP may not be heard).
#[test]
fn a_waiting_step_lets_itself_go_when_its_release_deadline_passes() {
    const RELEASE_AFTER: Duration = Duration::from_secs(4);
    for client in ["nobody", "silent after attach"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let step = write_step(dir.path());
        let port = free_port();
        let argv: Vec<OsString> = vec!["python3".into(), "-u".into(), step];
        let endpoint = Endpoint {
            mode: DebugMode::Listen,
            port,
            node_ip: None,
        };
        let options = DebugpyOptions {
            wait_for_client: true,
            release_after: Some(RELEASE_AFTER),
            ..DebugpyOptions::default()
        };
        let (mut cmd, _) = injected_with(&argv, endpoint, options);
        // Files, not pipes: debugpy's adapter (a child of the step) inherits them and
        // lives until its client leaves, so a pipe's end would come only then.
        let out_path = dir.path().join("stdout");
        let err_path = dir.path().join("stderr");
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("spawn the step");
        let _guard = KillOnPanic(child.id());
        let mut held = None;
        if client == "silent after attach" {
            // debugpy's adapter listens once it has started (bounded by the step's deadline).
            let mut conn = loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(conn) => break conn,
                    Err(_) if started.elapsed() < RELEASE_AFTER => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(err) => panic!("debugpy never listened on {port}: {err}"),
                }
            };
            dap_send(
                &mut conn,
                1,
                "initialize",
                serde_json::json!({"adapterID": "x"}),
            );
            dap_send(&mut conn, 2, "attach", serde_json::json!({}));
            held = Some(conn);
        }
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait the step") {
                break status;
            }
            assert!(
                started.elapsed() < RELEASE_AFTER + STEP_DEADLINE,
                "{client}: the step still waits after {:?}",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let output = Output {
            status,
            stdout: std::fs::read(&out_path).expect("read stdout"),
            stderr: std::fs::read(&err_path).expect("read stderr"),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let report = report(&output);
        assert!(
            took >= RELEASE_AFTER && took < RELEASE_AFTER + Duration::from_secs(15),
            "{client}: released after {took:?}\n{stderr}"
        );
        assert!(
            stderr.contains("the step runs on without one"),
            "{client}: {stderr}"
        );
        assert!(report["argv"].is_array(), "{client}: {report}");
        drop(held);
    }
}
