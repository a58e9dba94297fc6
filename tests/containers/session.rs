//! A debug session out of a container: the example image's step (agent as PID 1,
//! connect mode) reaches the developer's `relay listen` and VS Code (the real DAP client
//! with the host's debugpy adapter) outside it through `relay serve` on the host's
//! loopback (`--network host`); the breakpoint hits and the step ends with its code.

use amlx_agent::demo::breakpoint_line;

use super::engine::{Container, EXAMPLE_IMAGE, engine, repo};
use crate::session::harness::{Attach, ListeningDeveloper, SESSION_DEADLINE};

/// Where docker/example/Dockerfile puts train.py.
const REMOTE_ROOT: &str = "/app";
/// The local read at the breakpoint, and its value on the first pass of the loop.
const VARIABLE: (&str, &str) = ("step", "0");

#[test]
fn a_breakpoint_hits_in_a_container_through_the_relay_and_the_step_exits_0() {
    // The engine and its images first: their build must not eat the DAP client's time.
    engine();
    let local_root = repo().join("docker/example");
    let program = local_root.join("train.py");
    let ListeningDeveloper {
        side: developer,
        client,
        debug_port,
        range,
    } = ListeningDeveloper::start_in(
        "debug",
        4,
        |vscode_port| Attach {
            attach: serde_json::json!({
                "listen": {"host": "127.0.0.1", "port": vscode_port},
                "pathMappings": [{"localRoot": local_root, "remoteRoot": REMOTE_ROOT}],
            }),
            line: breakpoint_line(),
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        },
        &program,
        VARIABLE.0,
    );

    let container = Container::new("session");
    let port_range = format!("AMLX_PORT_RANGE={range}");
    // The connection string goes by name (`-e NAME`), from the client's environment:
    // never in an argv that `ps` shows.
    container.start_cmd(
        &[
            "--network",
            "host",
            "-e",
            "AMLX_DEBUG=1",
            "-e",
            &port_range,
            "-e",
            "AMLX_RELAY_INSECURE_WS=true",
            "-e",
            "NO_COLOR=1",
            "-e",
            "AMLX_RELAY_CONNECTION_STRING",
            EXAMPLE_IMAGE,
        ],
        |cmd| {
            cmd.env(
                "AMLX_RELAY_CONNECTION_STRING",
                developer.connection_string(),
            );
        },
    );
    let code = container.wait_exit(SESSION_DEADLINE);
    let logs = container.logs();
    let outcome = &client.finish(1)[0];
    assert!(
        outcome.ok,
        "the DAP session failed: {outcome:?}\ncontainer ({code:?}):\n{logs}"
    );
    assert_eq!(outcome.line, Some(breakpoint_line()), "stopped elsewhere");
    assert_eq!(outcome.value.as_deref(), Some(VARIABLE.1), "wrong value");
    assert_eq!(code, Some(0), "container exit:\n{logs}");
    assert!(
        logs.contains("done, loss"),
        "the step did not run to its end:\n{logs}"
    );
    assert!(logs.contains("debug session attached"), "{logs}");
    assert!(logs.contains(&format!("debug port {debug_port}")), "{logs}");
}
