//! A step that ends on its own while a debugger is attached: the debugger's connection
//! carries debugpy's last words and then ends in order (a FIN), not with a reset. The
//! step's exit closes the sidecar's lifeline and debugpy's connection at the same moment;
//! a sidecar that stopped at the lifeline dropped the relayed connection unfinished, which
//! the developer's side turned into a reset of VS Code's connection (about half the time,
//! or every time where debugpy's adapter outlives the step by a moment: listen mode).

use std::time::Duration;

use super::faults::{Fake, Mode, STEP_CODE, step_command};
use super::harness::{DeveloperSide, SESSION_DEADLINE, port_range};
use super::lifecycle::{Gate, Running};
use crate::util;

/// Rounds per mode: the old fault was a race the sidecar lost about half the time.
const ROUNDS: usize = 4;

/// One round: a debugger finishes its setup, the step ends, the debugger's connection
/// must end in order within the session deadline.
fn round(mode: Mode, index: usize) {
    let what = format!("{mode:?} round {index}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut developer = DeveloperSide::relay_only("step-end");
    let (debug_port, _, range) = port_range(4);
    let mut fake = None;
    if mode == Mode::Connect {
        let (started, fake_port) = Fake::listening(dir.path(), "configure-and-watch");
        developer.listen(&[(debug_port, fake_port)]);
        fake = Some(started);
    }
    let gate = Gate::in_dir(dir.path());
    let mut cmd = step_command(&developer, dir.path(), mode, &gate, "30s", &range);
    let mut agent = Running::spawn(&mut cmd);
    let mut _relay_connect = None;
    if mode == Mode::Listen {
        agent.wait_stderr("debug session waiting-for-debugger");
        let (connect, bound) = developer
            .relay
            .connect(&developer.connection_string(), &debug_port.to_string());
        _relay_connect = Some(connect);
        fake = Some(Fake::spawn(&[
            "connect",
            &bound.port().to_string(),
            "configure-and-watch",
        ]));
    }
    let fake = fake.expect("a fake debugger");
    fake.wait_done(&agent);
    // Configured: the step runs to the gate and waits there; then it ends on its own.
    assert!(
        agent
            .stdout
            .wait_for_from(0, "done total 6", SESSION_DEADLINE)
            .is_some(),
        "{what}: the step was not released by the configured debugger\n{}",
        agent.log()
    );
    gate.open();
    let status = util::wait_within(&mut agent.child, SESSION_DEADLINE);
    assert_eq!(status.code(), Some(STEP_CODE), "{what}\n{}", agent.log());
    let ended = fake
        .stdout
        .wait_for_from(0, "ended ", SESSION_DEADLINE + Duration::from_secs(5))
        .map(|(_, line)| line)
        .unwrap_or_else(|| {
            panic!(
                "{what}: the debugger's connection never ended\n{}",
                agent.log()
            )
        });
    eprintln!("{what}: {ended}");
    let developer_log = _relay_connect
        .as_ref()
        .map(|connect| connect.stderr.all().join("\n"))
        .unwrap_or_default();
    assert!(
        ended.starts_with("ended eof"),
        "{what}: the debugger's connection did not end in order: {ended}\nrelay connect:\n\
         {developer_log}\nagent:\n{}",
        agent.log()
    );
    // debugpy's last words (sent as the step exits) reached the debugger.
    assert!(
        ended.contains("terminated"),
        "{what}: the debugger never got debugpy's `terminated` event: {ended}\n{}",
        agent.log()
    );
}

#[test]
fn a_step_ending_under_a_connect_mode_debugger_ends_its_connection_in_order() {
    for index in 0..ROUNDS {
        round(Mode::Connect, index);
    }
}

#[test]
fn a_step_ending_under_a_listen_mode_debugger_ends_its_connection_in_order() {
    for index in 0..ROUNDS {
        round(Mode::Listen, index);
    }
}
