//! Integration tests: `amlx-agent demo`, the README's first command — a whole debug
//! session on this machine (in-process relay and listener, the example step through
//! `exec`), with and without a real DAP client attaching from "VS Code".

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use amlx_agent::demo::{STEP_FILE, breakpoint_line};

use crate::session::harness::{Attach, DapClient, SESSION_DEADLINE, free_port, port_range};
use crate::util;

/// Set on the demo only: every process it starts inherits it, so leftovers can be found.
pub const MARKER_VAR: &str = "AMLX_DEMO_TEST_MARKER";

/// `amlx-agent demo` with per-test ports, lock and state directories, and `mpiexec` (the
/// mpich wheel's) on PATH.
fn demo(state: &Path, vscode_port: u16, attach_timeout: &str, marker: &str) -> Command {
    let (_, _, range) = port_range(4);
    demo_in_range(state, vscode_port, attach_timeout, marker, &range)
}

fn demo_in_range(
    state: &Path,
    vscode_port: u16,
    attach_timeout: &str,
    marker: &str,
    range: &str,
) -> Command {
    let mut path = vec![util::python_scripts_dir()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path: OsString = std::env::join_paths(path).expect("PATH entries join");
    let mut cmd = util::agent();
    cmd.env("PATH", path)
        .env("AMLX_LOCK_DIR", state.join("ports"))
        .env("AMLX_STATE_DIR", state.join("state"))
        .env("NO_COLOR", "1")
        .env(MARKER_VAR, marker)
        .args([
            "demo",
            "--attach-timeout",
            attach_timeout,
            "--port-range",
            range,
        ])
        .args(["--vscode-port", &vscode_port.to_string()]);
    cmd
}

/// Processes still carrying `marker` in their environment.
pub fn processes_with(marker: &str) -> Vec<String> {
    util::processes_with_env(&format!("{MARKER_VAR}={marker}"))
        .into_iter()
        .map(|pid| format!("{pid} {}", util::command_line(pid)))
        .collect()
}

/// A marker no other run of this test binary carries: the process ID and a counter. (A free
/// port in its place once repeated: the OS handed the same port to two tests running at once,
/// and one test took the other's run for a leftover of its own.)
pub fn new_marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The position of `needle` in `text`, or a failure showing the text.
pub fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is missing from:\n{text}"))
}

#[test]
fn the_demo_prints_how_to_attach_runs_the_step_times_out_and_leaves_nothing_running() {
    let state = tempfile::tempdir().expect("tempdir");
    let vscode_port = free_port();
    let marker = new_marker();
    let out = util::output_within(
        demo(state.path(), vscode_port, "3s", &marker).args(["--ranks-count", "2"]),
        SESSION_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "demo exited {:?}\n{all}", out.status);

    // How to attach, before the step starts: VS Code listens on the given port.
    let name = format!("\"name\": \"amlx: rank 0 (port {vscode_port})\"");
    let start = format!("Start \"amlx: rank 0 (port {vscode_port})\" in VS Code (Run and Debug)");
    position(&stdout, &name);
    position(&stdout, "\"listen\": {");
    position(&stdout, &format!("\"port\": {vscode_port}"));
    position(
        &stdout,
        &format!("set a breakpoint on line {}", breakpoint_line()),
    );
    let instructions = position(&stdout, &start);
    position(&stdout, "the step waits up to 3s for it");
    // The step ran, under mpiexec: rank 0 as the debug target, rank 1 plainly.
    let rank0 = position(&stdout, "train.py: rank 0 pid");
    assert!(
        instructions < rank0,
        "instructions after the step started\n{all}"
    );
    position(&stdout, "train.py: rank 0 done");
    position(&stdout, "train.py: rank 1 done");
    position(&stdout, "2 processes under mpiexec");
    // Nobody attached: the session timed out and the step ran on.
    position(&stderr, "debug session timed-out");
    position(
        &stdout,
        "amlx-agent demo: nobody attached within 3s, so rank 0 ran on without a debugger; \
         the step exited 0",
    );
    // The key stays in the environment: no log line or argument shows it.
    assert!(!all.contains("SharedAccessKey"), "{all}");

    // Everything it started is gone, and its temporary directory too.
    let left = processes_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}\n{all}");
    let dir_line = &stdout[position(&stdout, "code /")..];
    let dir = dir_line["code ".len()..].lines().next().expect("a line");
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

/// `demo --dir` naming a file: an error that says it is not a folder and what to give
/// instead, not "could not create …: File exists".
#[test]
fn a_dir_that_is_a_file_is_named_as_such() {
    let state = tempfile::tempdir().expect("tempdir");
    let file = tempfile::NamedTempFile::new().expect("a file");
    let out = util::output_within(
        demo(state.path(), free_port(), "1s", &new_marker())
            .arg("--dir")
            .arg(file.path()),
        SESSION_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a folder: give --dir an empty or new folder"),
        "{stderr}"
    );
}

/// `demo --python` an interpreter that cannot import debugpy: refused before any
/// instructions, naming the fix. It printed how to attach, then ran the step without a
/// debugger and exited 0.
#[test]
fn a_python_without_debugpy_is_refused_before_the_instructions() {
    let state = tempfile::tempdir().expect("tempdir");
    let out = util::output_within(
        demo(state.path(), free_port(), "1s", &new_marker())
            .arg("--python")
            .arg("/bin/false"),
        SESSION_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the demo's step needs debugpy, and /bin/false cannot import it"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("Run and Debug"),
        "instructions printed:\n{stdout}"
    );
}

#[test]
fn vscode_attaching_during_the_demo_hits_a_breakpoint_in_the_example_step() {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().canonicalize().expect("canonical dir");
    let vscode_port = free_port();
    let marker = new_marker();
    let (mut child, output) = Captured::spawn(
        demo(state.path(), vscode_port, "60s", &marker)
            .arg("--dir")
            .arg(&dir_path),
    );
    // The developer reads the instructions, then starts "VS Code".
    util::wait_for("the demo's attach instructions", SESSION_DEADLINE, || {
        output.stdout().contains("Run and Debug").then_some(())
    });
    let step: PathBuf = dir_path.join(STEP_FILE);
    let attach = Attach {
        line: breakpoint_line(),
        ..Attach::listen(vscode_port)
    };
    let dap = DapClient::start_in(&[attach], &step, "step");
    let outcome = &dap.finish(1)[0];
    let status = util::wait_within(&mut child, SESSION_DEADLINE);
    let stdout = output.stdout();
    let all = format!("stdout:\n{stdout}\nstderr:\n{}", output.stderr());
    assert!(outcome.ok, "the DAP session failed: {outcome:?}\n{all}");
    assert_eq!(outcome.line, Some(breakpoint_line()), "stopped elsewhere");
    assert_eq!(outcome.value.as_deref(), Some("0"), "first loop iteration");
    assert!(status.success(), "demo exited {status:?}\n{all}");
    position(&stdout, "train.py: rank 0 done");
    position(
        &stdout,
        "amlx-agent demo: VS Code attached to rank 0; the step exited 0",
    );
    // The laptop side saw VS Code take the connection and let it go again.
    let took = position(&stdout, "the debug connection of rank 0 went to");
    assert!(took < position(&stdout, "detached from rank 0"), "{all}");

    // A given directory is kept, with the launch configuration VS Code would open.
    let launch = std::fs::read_to_string(dir_path.join(".vscode/launch.json"))
        .expect("launch.json written next to the step");
    assert!(
        launch.contains(&format!("\"port\": {vscode_port}")),
        "{launch}"
    );
    assert!(step.is_file());
    let left = processes_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}\n{all}");
}

#[test]
fn the_demo_refuses_a_vscode_port_inside_the_debug_port_range_before_starting_anything() {
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let (start, _, range) = port_range(4);
    let out = util::output_bounded(&mut demo_in_range(
        state.path(),
        start,
        "3s",
        &marker,
        &range,
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--vscode-port {start} is inside the debug port range {range}"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "printed instructions anyway");
}

#[test]
fn demo_help_names_its_options_and_examples() {
    let out = util::output_bounded(util::agent().args(["demo", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--vscode-port",
        "--attach-timeout",
        "--ranks-count",
        "--port-range",
        "--dir",
        "Examples:",
        "amlx-agent demo",
    ] {
        assert!(help.contains(needle), "demo --help lacks {needle}:\n{help}");
    }
}

/// SIGTERM, Ctrl-C (SIGINT), SIGHUP (the terminal closed) and Ctrl-\\ (SIGQUIT) to the
/// demo while its step waits for VS Code: the step and everything else stop. SIGHUP and
/// SIGQUIT used to end the demo at once with their default action, leaving the step and
/// both agents running, orphaned.
#[test]
fn stop_signals_to_the_demo_stop_the_waiting_step_and_everything_else() {
    use nix::sys::signal::Signal;
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let state = tempfile::tempdir().expect("tempdir");
        let marker = new_marker();
        let (mut child, output) =
            Captured::spawn(&mut demo(state.path(), free_port(), "10m", &marker));
        // The step's debugpy came through the relay: the session waits for VS Code.
        util::wait_for("the step to wait for VS Code", SESSION_DEADLINE, || {
            output
                .stdout()
                .contains("is waiting for VS Code")
                .then_some(())
        });
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).expect("signal the demo");
        let status = util::wait_within(&mut child, SESSION_DEADLINE);
        let stdout = output.stdout();
        let all = format!("{signal}: stdout:\n{stdout}\nstderr:\n{}", output.stderr());
        assert!(
            stdout.contains("amlx-agent demo: stopping the step"),
            "{all}"
        );
        assert!(
            stdout.contains("amlx-agent demo: stopped before a debugger attached"),
            "{all}"
        );
        // 128 + the signal, as a shell reports a command it ended (Ctrl-C: 130; it was
        // 143 whatever stopped the demo, from the SIGTERM sent to the step).
        assert_eq!(status.code(), Some(128 + signal as i32), "{all}");
        let left = processes_with(&marker);
        assert!(left.is_empty(), "{signal}: left running: {left:?}\n{all}");
    }
}

/// A running demo's stdout and stderr, through files (readable while it runs, and a
/// leftover process holding them open cannot block the test).
pub struct Captured {
    stdout: tempfile::NamedTempFile,
    stderr: tempfile::NamedTempFile,
}

impl Captured {
    pub fn spawn(cmd: &mut Command) -> (std::process::Child, Captured) {
        let captured = Captured {
            stdout: tempfile::NamedTempFile::new().expect("stdout file"),
            stderr: tempfile::NamedTempFile::new().expect("stderr file"),
        };
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(captured.stdout.reopen().expect("reopen"))
            .stderr(captured.stderr.reopen().expect("reopen"))
            .spawn()
            .expect("spawn the demo");
        (child, captured)
    }

    pub fn stdout(&self) -> String {
        Self::read(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        Self::read(&self.stderr)
    }

    fn read(file: &tempfile::NamedTempFile) -> String {
        let mut text = String::new();
        let _ = file.reopen().and_then(|mut f| f.read_to_string(&mut text));
        text
    }
}
