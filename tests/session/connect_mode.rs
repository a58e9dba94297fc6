//! Connect mode end to end: VS Code (a real DAP client + the debugpy adapter) listens on
//! the developer's side behind `relay listen`; an unchanged step runs under
//! `amlx-agent exec --debug` through `relay serve`; the breakpoint hits.

use super::harness::{Attach, BREAKPOINT_LINE, ListeningDeveloper, Outcome, VARIABLE, step_py};
use crate::util;

/// VS Code listening (its attach config from `attach`) behind `relay listen`, and step.py
/// under `exec --debug` through `relay serve`: the agent's output, the DAP session's
/// outcome (asserted to have succeeded) and the debug port.
fn debug_step_py(attach: impl FnOnce(u16) -> Attach) -> (std::process::Output, Outcome, u16) {
    let locks = tempfile::tempdir().expect("tempdir");
    let ListeningDeveloper {
        side: developer,
        client,
        debug_port,
        range,
    } = ListeningDeveloper::start("debug", 4, attach);
    let out = util::output_within(
        developer
            .agent(locks.path())
            .args(["exec", "--debug", "--port-range", &range, "--", "python3"])
            .arg(step_py()),
        super::harness::SESSION_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcome = client.finish(1).remove(0);
    assert!(
        outcome.ok,
        "the DAP session failed: {outcome:?}\nagent:\n{stderr}"
    );
    (out, outcome, debug_port)
}

#[test]
fn a_breakpoint_hits_through_the_relay_and_the_step_exits_0() {
    let (out, outcome, debug_port) = debug_step_py(Attach::listen);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(outcome.line, Some(BREAKPOINT_LINE), "stopped elsewhere");
    assert_eq!(
        outcome.value.as_deref(),
        Some(VARIABLE.1),
        "read the wrong value"
    );
    assert!(
        out.status.success(),
        "agent exited {:?}:\n{stderr}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done total 6"),
        "the step did not run to its end"
    );
    assert!(stderr.contains("debug session attached"), "{stderr}");
    assert!(
        stderr.contains(&format!("debug port {debug_port}")),
        "{stderr}"
    );
}

/// VS Code's Stop on a session it may end (`disconnect` with `terminateDebuggee`):
/// debugpy ends the step. The session's record and log said "the debugger detached; the
/// step runs on", which was false: the gate stopped reading the developer's requests
/// after `configurationDone`.
#[test]
fn a_debugger_that_terminates_the_step_is_not_logged_as_detaching() {
    let (out, _, _) = debug_step_py(|port| Attach::listen(port).terminate());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("done total"),
        "the step ran to its end after the debugger terminated it:\n{stderr}"
    );
    assert!(
        stderr.contains("asked debugpy to end the step (terminate or terminateDebuggee)"),
        "{stderr}"
    );
    assert!(!stderr.contains("the step runs on"), "{stderr}");
}
