//! Containers on one node share port reservations through a bind-mounted lock
//! directory (`-v <dir>:/run/amlx`): two debug targets in two containers get two
//! distinct ports; without the mount both take the range's first port.

use std::path::Path;
use std::time::Duration;

use super::engine::{Container, DOCKER_DEADLINE, EXAMPLE_IMAGE, engine};

/// Longest wait for a container's step to print its debug port.
const PORT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a step waits for the release file (bounded even when the test dies).
const STEP_HOLD_SECONDS: u32 = 90;

/// Prints the debug port the agent gave the step, then holds it (the reservation lives
/// as long as the step) until /run/amlx/release exists.
fn holding_step() -> String {
    format!(
        "import os, sys, time\n\
         print('step port', os.environ.get('AMLX_DEBUG_PORT'), flush=True)\n\
         end = time.monotonic() + {STEP_HOLD_SECONDS}\n\
         while not os.path.exists('/run/amlx/release') and time.monotonic() < end:\n    \
             time.sleep(0.05)\n\
         sys.exit(0 if os.path.exists('/run/amlx/release') else 9)\n"
    )
}

/// Starts a direct-mode debug target (no relay needed; `--network none`: the containers
/// cannot see each other's sockets, only the lock directory) with `/run/amlx` mounted
/// from `run_amlx`; returns it with the port its step printed.
fn target(run_amlx: &Path) -> (Container, u16) {
    let container = Container::new("ports");
    let mount = format!("{}:/run/amlx", run_amlx.display());
    let step = holding_step();
    container.start(&[
        "--network",
        "none",
        "-e",
        "AMLX_DEBUG=1",
        "-e",
        "AMLX_DEBUG_MODE=direct",
        "-e",
        "NO_COLOR=1",
        "-v",
        &mount,
        EXAMPLE_IMAGE,
        "python3",
        "-c",
        &step,
    ]);
    let logs = container.wait_for_log("step port ", PORT_DEADLINE);
    let port = logs
        .lines()
        .find_map(|l| l.strip_prefix("step port "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no debug port in:\n{logs}", container.name));
    (container, port)
}

/// Releases the steps and checks they ended well.
fn release(dirs: &[&Path], containers: &[&Container]) {
    for dir in dirs {
        std::fs::write(dir.join("release"), b"").expect("write the release file");
    }
    for container in containers {
        assert_eq!(
            container.exit_code(DOCKER_DEADLINE),
            0,
            "{}:\n{}",
            container.name,
            container.logs()
        );
    }
}

#[test]
fn two_containers_sharing_run_amlx_get_distinct_debug_ports() {
    let shared = tempfile::tempdir().expect("tempdir");
    let (first, first_port) = target(shared.path());
    let (second, second_port) = target(shared.path());
    assert_ne!(
        first_port,
        second_port,
        "both containers got one port:\n{}\n{}",
        first.logs(),
        second.logs()
    );
    // The agent's own announcement names the same ports.
    for (container, port) in [(&first, first_port), (&second, second_port)] {
        let logs = container.logs();
        assert!(
            logs.contains(&format!("debug port {port} mode direct")),
            "{}:\n{logs}",
            container.name
        );
    }
    // `amlx-agent ports list` inside one container sees both reservations.
    let listed = engine().ok(
        &[
            "exec",
            &first.name,
            "/usr/local/bin/amlx-agent",
            "ports",
            "list",
            "--json",
        ],
        DOCKER_DEADLINE,
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("`ports list --json` prints JSON");
    let mut live: Vec<u64> = listed["live"]
        .as_array()
        .unwrap_or_else(|| panic!("no live reservations in {listed}"))
        .iter()
        .filter_map(|entry| entry["port"].as_u64())
        .collect();
    live.sort_unstable();
    let mut expected = [u64::from(first_port), u64::from(second_port)];
    expected.sort_unstable();
    assert_eq!(live, expected, "`ports list` in {}: {listed}", first.name);
    release(&[shared.path()], &[&first, &second]);
}

#[test]
fn without_the_shared_mount_two_containers_take_the_same_port() {
    // The failure case the mount exists for: each container reserves in a directory of
    // its own, so both targets take the preferred port.
    let (one, two) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (first, first_port) = target(one.path());
    let (second, second_port) = target(two.path());
    assert_eq!(first_port, second_port, "separate lock directories");
    release(&[one.path(), two.path()], &[&first, &second]);
}
