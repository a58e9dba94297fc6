//! Connect mode end to end: VS Code (a real DAP client + the debugpy adapter) listens on
//! the developer's side behind `relay listen`; an unchanged step runs under
//! `amlx-agent exec --debug` through `relay serve`; the breakpoint hits.

use super::harness::{Attach, BREAKPOINT_LINE, ListeningDeveloper, VARIABLE, step_py};
use crate::util;

#[test]
fn a_breakpoint_hits_through_the_relay_and_the_step_exits_0() {
    let locks = tempfile::tempdir().expect("tempdir");
    let ListeningDeveloper {
        side: developer,
        client,
        debug_port,
        range,
    } = ListeningDeveloper::start("debug", 4, Attach::listen);

    let out = util::output_within(
        developer
            .agent(locks.path())
            .args(["exec", "--debug", "--port-range", &range, "--", "python3"])
            .arg(step_py()),
        super::harness::SESSION_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcome = &client.finish(1)[0];
    assert!(
        outcome.ok,
        "the DAP session failed: {outcome:?}\nagent:\n{stderr}"
    );
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
