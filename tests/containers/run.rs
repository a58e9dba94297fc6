//! `amlx-agent run -t docker`: the user's step in a container of a locally built image
//! (the example image), the static agent bind-mounted as its entrypoint, the project
//! mounted at /workspace; VS Code (the real DAP client) attaches through the run's
//! in-process relay, `run` exits with the step's code, and no container is left — also
//! when Ctrl-C stops the run mid-session.

use std::process::Command;
use std::time::Duration;

use super::engine::{EXAMPLE_IMAGE, engine, static_binary};
use crate::demo::{new_marker, position};
use crate::run::{Running, STEP_EXIT, STEP_LINE, launch_configs, project, run_in, start_vscode};
use crate::session::harness::SESSION_DEADLINE;
use crate::util;

/// The project folder inside the container (launch.json's remoteRoot).
const REMOTE_ROOT: &str = "/workspace";
/// Longest Ctrl-C may take to stop the step and remove its container: the step's stop
/// grace (5 s) plus `docker rm` and a margin for a loaded machine.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// `run -t docker --image IMAGE [extra]` against the test engine, with the static agent.
fn run_docker(
    project: &std::path::Path,
    state: &std::path::Path,
    marker: &str,
    attach_timeout: &str,
    image: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = run_in(project, state, marker);
    engine().client_env(&mut cmd);
    let vscode_port = util::free_port_range(1).0;
    cmd.args(["-t", "docker", "--image", image])
        .args(extra)
        .arg("--agent-binary")
        .arg(static_binary())
        .args(["--attach-timeout", attach_timeout])
        .args(["--vscode-port", &vscode_port.to_string()])
        .args(["--", "python3", "step.py"]);
    cmd
}

/// The container `run` named in its first line: `… on Docker container NAME of IMAGE`.
fn container_name(stdout: &str) -> String {
    let at = position(stdout, "on Docker container ");
    stdout
        .get(at + "on Docker container ".len()..)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a container name")
        .to_owned()
}

/// Whether the engine still knows the container (running or stopped).
fn container_exists(name: &str) -> bool {
    let out = engine().ok(
        &[
            "ps",
            "-a",
            "--filter",
            &format!("name=^{name}$"),
            "--format",
            "{{.Names}}",
        ],
        super::engine::DOCKER_DEADLINE,
    );
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The image `--build` makes from the project's Dockerfile (on top of the example image).
const BUILT_IMAGE: &str = "amlx-run-built";

#[test]
fn run_in_docker_hits_a_breakpoint_through_the_relay_and_leaves_no_container() {
    engine();
    let (_dir, project) = project();
    // `--build`: the project's own Dockerfile, built first (with the engine's cache).
    std::fs::write(
        project.join("Dockerfile"),
        format!("FROM {EXAMPLE_IMAGE}\nENV AMLX_RUN_BUILT=yes\n"),
    )
    .expect("Dockerfile");
    std::fs::write(
        project.join("step.py"),
        std::fs::read_to_string(project.join("step.py"))
            .expect("step.py")
            .replace(
                "import os, sys",
                "import os, sys; print('built', os.environ.get('AMLX_RUN_BUILT'))",
            ),
    )
    .expect("step.py");
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let mut built = run_docker(
        &project,
        state.path(),
        &marker,
        "60s",
        BUILT_IMAGE,
        &["--build", "Dockerfile"],
    );
    let run = Running::start(&mut built, marker);
    run.wait_instructions();
    let (configs, _) = launch_configs(&project);
    assert_eq!(
        configs[0]["pathMappings"][0]["remoteRoot"],
        REMOTE_ROOT,
        "{}",
        run.all()
    );
    let outcome = &start_vscode(&configs, &project).finish(1)[0];
    assert!(outcome.ok, "{outcome:?}\n{}", run.all());
    assert_eq!(outcome.line, Some(STEP_LINE), "{}", run.all());
    assert_eq!(outcome.value.as_deref(), Some("7"), "rank 0's value");
    let name = container_name(&run.output.stdout());
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "run returns the step's exit code\n{all}");
    position(&all, "user step rank 0 value 7");
    position(
        &all,
        "amlx-agent run: VS Code attached to rank 0; the step exited 3",
    );
    assert!(!container_exists(&name), "{name} was left behind\n{all}");
    assert!(!all.contains("SharedAccessKey"), "{all}");
}

#[test]
fn ctrl_c_stops_the_step_in_its_container_and_removes_it_within_the_bound() {
    engine();
    let (_dir, project) = project();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let mut run = Running::start(
        &mut run_docker(&project, state.path(), &marker, "10m", EXAMPLE_IMAGE, &[]),
        marker,
    );
    util::wait_for(
        "the containerised step to wait for VS Code",
        SESSION_DEADLINE,
        || {
            run.output
                .stdout()
                .contains("is waiting for VS Code")
                .then_some(())
        },
    );
    let name = container_name(&run.output.stdout());
    assert!(container_exists(&name), "{}", run.all());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(run.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("Ctrl-C the run");
    let status = util::wait_within(&mut run.child, STOP_DEADLINE);
    let all = run.all();
    assert!(!status.success(), "a stopped step does not exit 0\n{all}");
    position(&all, "amlx-agent run: stopping the step");
    position(&all, "stopped before a debugger attached");
    assert!(!container_exists(&name), "{name} was left behind\n{all}");
    let (_, _) = run.finish();
}
