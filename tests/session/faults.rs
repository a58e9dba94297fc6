//! The fault matrix: whatever a debugger, the relay or the network does, a step held
//! for a debugger finishes with its own exit code within the attach timeout plus
//! `session::RELEASE_GRACE`, and `status` and the log name the cause.
//!
//! Each mode runs the same table of faults, played by a real debugpy on the node and a
//! scripted debugger (fake_debugger.py) on the developer's side: nobody comes; one that
//! connects and drops before `initialize`, after `initialize`, after `attach`, after
//! `setBreakpoints`, in the middle of a message; one that sends bytes that are not DAP;
//! one that connects and stays silent; the relay killed while a silent one holds the
//! session; and an attach timeout that passes before debugpy even listens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amlx_agent::session::RELEASE_GRACE;

use super::harness::{DeveloperSide, SESSION_DEADLINE, port_range, step_py};
use super::lifecycle::{Gate, Running, session_processes, wait_state_why};
use crate::relay::harness::Lines;
use crate::util;

/// The exit code the step chooses.
pub(super) const STEP_CODE: i32 = 5;

/// The attach timeout of every case but the zero one: long enough for debugpy to start
/// and the fault to be played before it passes, on a loaded machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
const ATTACH_TIMEOUT_TEXT: &str = "10s";

/// What starting the agent, Python and debugpy may add on a loaded 2-core machine
/// before the attach clock even starts (connect mode starts it at debugpy's connection).
const STARTUP_ALLOWANCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Connect,
    Listen,
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Listen => "listen",
            Mode::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nobody attaches.
    NobodyComes,
    /// fake_debugger.py plays this fault.
    Scripted(&'static str),
    /// A silent debugger holds the session, then `relay serve` is killed.
    RelayKilled,
    /// The attach timeout is zero: it passes before debugpy listens or connects.
    DeadlineBeforeDebugpy,
    /// The sidecar is killed (SIGKILL) while the step waits for a debugger.
    SidecarKilled,
}

struct Case {
    fault: Fault,
    /// The state `status` must reach (`timed-out`, or `running-undebugged` when the
    /// sidecar itself is gone).
    state: &'static str,
    /// A part of that state's reason that names the cause.
    cause: &'static str,
}

/// A case that ends at the attach deadline.
fn timed_out(fault: Fault, cause: &'static str) -> Case {
    Case {
        fault,
        state: "timed-out",
        cause,
    }
}

/// The faults every mode must survive, with the cause `status` must name.
fn table(mode: Mode) -> Vec<Case> {
    let silent_cause = "did not finish its DAP setup";
    let mut cases = vec![
        timed_out(Fault::NobodyComes, "no debugger attached within 10s"),
        // In direct mode a connection that sent no whole DAP message is not known to be a
        // debugger (a port scanner): it never reached debugpy.
        timed_out(
            Fault::Scripted("drop-at-once"),
            match mode {
                Mode::Direct => "not a debugger (it sent no whole DAP message before it closed)",
                Mode::Connect | Mode::Listen => "left before sending any request",
            },
        ),
        timed_out(
            Fault::Scripted("drop-after-init"),
            "left after \"initialize\"",
        ),
        timed_out(
            Fault::Scripted("drop-after-attach"),
            "left after \"attach\"",
        ),
        timed_out(
            Fault::Scripted("drop-after-bp"),
            "left after \"setBreakpoints\"",
        ),
        timed_out(
            Fault::Scripted("drop-mid-message"),
            "left after \"setBreakpoints\"",
        ),
        timed_out(Fault::Scripted("garbage"), "not a debugger"),
        timed_out(Fault::Scripted("bad-body"), "not a debugger"),
        // debugpy reads only `Content-Length`: a message under another spelling was
        // passed on, and the setup stalled unseen until the deadline.
        timed_out(Fault::Scripted("lowercase-header"), "not a debugger"),
        // In direct mode a connection that sends nothing is not known to be a debugger:
        // it never reaches debugpy (see the_next_developer_attaches_whatever_the_last_one
        // _left_behind), and nobody attached.
        timed_out(
            Fault::Scripted("silent"),
            match mode {
                Mode::Direct => "no debugger attached within 10s",
                Mode::Connect | Mode::Listen => silent_cause,
            },
        ),
        // debugpy's adapter (listen, direct) fails an `attach` without arguments and
        // gives that client the debuggee for good, where nobody can configure or release
        // it: the gate cuts such a client off and closes its adapter connection. In
        // connect mode the debuggee takes the `attach` itself; the client is then silent.
        timed_out(
            Fault::Scripted("silent-after-attach"),
            match mode {
                Mode::Connect => silent_cause,
                Mode::Listen | Mode::Direct => "debugpy refused a debugger's attach",
            },
        ),
        timed_out(
            Fault::DeadlineBeforeDebugpy,
            "no debugger attached within 0s",
        ),
    ];
    cases.push(Case {
        fault: Fault::SidecarKilled,
        state: "running-undebugged",
        cause: "was killed by signal 9",
    });
    if mode != Mode::Direct {
        cases.push(timed_out(Fault::RelayKilled, "within 10s"));
    }
    cases
}

/// fake_debugger.py, next to this file.
fn fake_debugger() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/session/fake_debugger.py")
}

/// A running fake_debugger.py; killed on drop.
pub(super) struct Fake {
    child: Child,
    pub(super) stdout: Lines,
}

impl Fake {
    pub(super) fn spawn(args: &[&str]) -> Fake {
        let mut child = Command::new("python3")
            .arg(fake_debugger())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake_debugger.py");
        let stdout = Lines::from_reader(child.stdout.take().expect("piped stdout"));
        Fake { child, stdout }
    }

    /// The fake in listen mode (for connect-mode steps), playing `script`, and the port it
    /// listens on; writes its port file in `dir`.
    pub(super) fn listening(dir: &Path, script: &str) -> (Fake, u16) {
        let port_file = dir.join("fake-port");
        let fake = Fake::spawn(&["listen", &port_file.to_string_lossy(), script]);
        let port: u16 = util::wait_for("the fake debugger's port", SESSION_DEADLINE, || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        (fake, port)
    }

    /// Waits (bounded) until the fake has played its part.
    pub(super) fn wait_done(&self, agent: &Running) {
        assert!(
            self.stdout
                .wait_for_from(0, "fault done", SESSION_DEADLINE)
                .is_some(),
            "the fake debugger never played its fault\nagent:\n{}",
            agent.log()
        );
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one case; panics with the agent's log when the promise breaks.
fn run_case(mode: Mode, case: &Case) {
    let what = format!("{} / {:?}", mode.name(), case.fault);
    eprintln!("fault case: {what}");
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let mut developer = DeveloperSide::relay_only("faults");
    let (debug_port, _, range) = port_range(4);
    let mut fake = None;
    // Connect mode: the developer's listener is the fake, waiting for debugpy.
    if mode == Mode::Connect
        && let Fault::Scripted(name) = fault_script(case.fault)
    {
        let (started, fake_port) = Fake::listening(dir.path(), name);
        developer.listen(&[(debug_port, fake_port)]);
        fake = Some(started);
    }
    let timeout = match case.fault {
        Fault::DeadlineBeforeDebugpy => "0s",
        _ => ATTACH_TIMEOUT_TEXT,
    };
    let gate = Gate::in_dir(dir.path());
    let mut cmd = step_command(&developer, dir.path(), mode, &gate, timeout, &range);
    let started = Instant::now();
    let mut agent = Running::spawn(&mut cmd);

    // Listen and direct modes: the fake reaches debugpy once the session waits.
    let mut _relay_connect = None;
    if mode != Mode::Connect
        && let Fault::Scripted(name) = fault_script(case.fault)
    {
        agent.wait_stderr("debug session waiting-for-debugger");
        let (connect, port) = developer_entry(&developer, mode, debug_port);
        _relay_connect = connect;
        fake = Some(Fake::spawn(&["connect", &port.to_string(), name]));
    }
    if let Some(fake) = &fake {
        fake.wait_done(&agent);
    }
    if let Fault::RelayKilled = case.fault {
        developer.relay.proc.kill();
    }
    if let Fault::SidecarKilled = case.fault {
        // Once the sidecar said it is ready (the agent then announces the debug port):
        // the record says waiting-for-debugger from the session's start, and a sidecar
        // killed before it was ready is a setup failure, not this case (CI saw it).
        agent.wait_stderr(" debug port ");
        // Connect mode: once debugpy's connection reached the sidecar (it then says
        // nobody listens yet), so the keeper holds a copy of it to release the step.
        let after = match mode {
            Mode::Connect => "no listener on the Hybrid Connection yet",
            Mode::Listen | Mode::Direct => "",
        };
        let waiting = wait_state_why(
            &state_dir,
            agent.pid(),
            "waiting-for-debugger",
            after,
            &agent,
        );
        let [(sidecar, _), _] = session_processes(&waiting);
        super::sidecar_death::kill(sidecar);
    }

    let session = wait_state_why(&state_dir, agent.pid(), case.state, case.cause, &agent);
    let released_at = agent
        .stdout
        .wait_for_from(0, "done total 6", SESSION_DEADLINE)
        .map(|_| started.elapsed())
        .unwrap_or_else(|| panic!("{what}: the step was never released\n{}", agent.log()));
    let attach = if timeout == "0s" {
        Duration::ZERO
    } else {
        ATTACH_TIMEOUT
    };
    let bound = attach + RELEASE_GRACE + STARTUP_ALLOWANCE;
    assert!(
        released_at <= bound,
        "{what}: released after {released_at:?}, over {bound:?}\n{}",
        agent.log()
    );
    gate.open();
    // Fails with the agent's log just before wait_for would fail without it.
    let give_up = Instant::now() + SESSION_DEADLINE.saturating_sub(Duration::from_secs(1));
    let status = util::wait_for(
        &format!("{what}: the agent to exit"),
        SESSION_DEADLINE,
        || {
            let exited = agent.child.try_wait().expect("try_wait");
            assert!(
                exited.is_some() || Instant::now() < give_up,
                "{what}: the agent did not exit\n{}",
                agent.log()
            );
            exited
        },
    );
    assert_eq!(
        status.code(),
        Some(STEP_CODE),
        "{what}: the step's exit code did not pass through\n{}",
        agent.log()
    );
    let log = agent.log();
    // The sidecar logs a timeout; the keeper logs a dead sidecar.
    let logged = log.contains(&format!("debug session {}", case.state)) && log.contains(case.cause);
    assert!(
        logged,
        "{what}: the log does not name the cause {:?}:\n{log}\nstatus: {session}",
        case.cause
    );
    drop(fake);
}

/// Where a developer of a listen- or direct-mode target connects: a `relay connect` to
/// the target's port (listen; keep the process) or the debug port itself (direct).
fn developer_entry(
    developer: &DeveloperSide,
    mode: Mode,
    debug_port: u16,
) -> (Option<crate::relay::harness::Proc>, u16) {
    match mode {
        Mode::Listen => {
            let (connect, bound) = developer
                .relay
                .connect(&developer.connection_string(), &debug_port.to_string());
            (Some(connect), bound.port())
        }
        Mode::Direct | Mode::Connect => (None, debug_port),
    }
}

/// `exec --debug` of step.py in `mode` (held for a debugger in every mode), exiting
/// with [`STEP_CODE`] once `gate` opens, with debug logging.
pub(super) fn step_command(
    developer: &DeveloperSide,
    dir: &Path,
    mode: Mode,
    gate: &Gate,
    attach_timeout: &str,
    port_range: &str,
) -> Command {
    let mut cmd = developer.agent(dir);
    cmd.env("STEP_EXIT_CODE", STEP_CODE.to_string())
        .env("RUST_LOG", "amlx_agent=debug")
        .env("STEP_GATE", gate.path())
        .args(["exec", "--debug", "--mode", mode.name()])
        .args(["--node-ip", "127.0.0.1", "--attach-timeout", attach_timeout])
        .args(["--port-range", port_range]);
    if mode != Mode::Connect {
        cmd.arg("--wait-for-client");
    }
    cmd.args(["--", "python3"]).arg(step_py());
    cmd
}

/// The script fault a case plays (a relay kill is played over a silent debugger).
fn fault_script(fault: Fault) -> Fault {
    match fault {
        Fault::RelayKilled => Fault::Scripted("silent"),
        other => other,
    }
}

fn run_table(mode: Mode) {
    // FAULTS_ONLY=drop-after-attach narrows a run while debugging a failure.
    let only = std::env::var("FAULTS_ONLY").ok();
    for case in table(mode) {
        if only
            .as_deref()
            .is_some_and(|only| !format!("{:?}", case.fault).contains(only))
        {
            continue;
        }
        run_case(mode, &case);
    }
}

/// Rank 0 of a real `mpiexec -n 4` job, connect mode, behind a debugger that leaves
/// after `attach`: rank 0 is released within the attach timeout plus the grace, ranks
/// 1-3 run to their end meanwhile, and the job ends with every rank's own exit code.
#[test]
fn rank_0_under_mpiexec_is_released_when_its_debugger_leaves_during_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut developer = DeveloperSide::relay_only("faults-mpi");
    // Rank 0's port is the window's first (base + rank).
    let (rank0_port, _, range) = port_range(4);
    let (fake, fake_port) = Fake::listening(dir.path(), "drop-after-attach");
    developer.listen(&[(rank0_port, fake_port)]);
    let started = Instant::now();
    let mut job = super::mpi::Job::start(
        &developer,
        dir.path(),
        &[
            "--debug",
            "--attach-timeout",
            ATTACH_TIMEOUT_TEXT,
            "--port-range",
            &range,
        ],
    );
    let released = job
        .stdout
        .wait_for_from(0, "step.py rank 0 done total 6", SESSION_DEADLINE)
        .map(|_| started.elapsed())
        .unwrap_or_else(|| panic!("rank 0 was never released\n{}", job.dump()));
    let bound = ATTACH_TIMEOUT + RELEASE_GRACE + STARTUP_ALLOWANCE;
    assert!(
        released <= bound,
        "rank 0 released after {released:?}, over {bound:?}\n{}",
        job.dump()
    );
    let status = job.wait_exit();
    assert!(
        status.success(),
        "the job failed: {status:?}\n{}",
        job.dump()
    );
    for rank in 0..4 {
        assert!(
            job.stdout
                .wait_for(&format!("step.py rank {rank} done total 6"))
                .is_some(),
            "rank {rank} did not run to its end\n{}",
            job.dump()
        );
    }
    let log = job.stderr.all().join("\n");
    assert!(
        log.contains("debug session timed-out") && log.contains("left after \"attach\""),
        "the log does not name the cause:\n{log}"
    );
    drop(fake);
}

#[test]
fn connect_mode_releases_the_step_whatever_the_debugger_does() {
    run_table(Mode::Connect);
}

#[test]
fn listen_mode_releases_the_step_whatever_the_debugger_does() {
    run_table(Mode::Listen);
}

#[test]
fn direct_mode_releases_the_step_whatever_the_debugger_does() {
    run_table(Mode::Direct);
}

/// At the attach deadline the step is released, which takes up to 20 s when debugpy does
/// not acknowledge (here its adapter is stopped with SIGSTOP); meanwhile a listen-mode
/// target did not serve its relay listener at all: a developer who came then was not
/// taken (the relay dropped the silent listener and said no listener was connected). Now
/// the developers' side is served during the release: a developer who comes then reaches
/// the target at once, and is held there until the release is over (it is a debugger
/// session of its own, and debugpy's adapter takes one at a time).
#[test]
fn a_listen_mode_target_answers_developers_while_it_releases_the_step() {
    use std::io::Write as _;
    // Far inside the release (10 s on fresh connections to a stopped adapter).
    const TAKEN_WITHIN: Duration = Duration::from_secs(5);
    const REACHED: &str = "a developer reached rank";

    let dir = tempfile::tempdir().expect("tempdir");
    let developer = DeveloperSide::relay_only("releasing");
    let (debug_port, _, range) = port_range(4);
    let gate = Gate::in_dir(dir.path());
    let mut cmd = step_command(
        &developer,
        dir.path(),
        Mode::Listen,
        &gate,
        ATTACH_TIMEOUT_TEXT,
        &range,
    );
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_stderr("debug session waiting-for-debugger");
    let marker = format!("AMLX_AGENT_PID={}", agent.pid());
    let adapter = util::wait_for("the step's debugpy adapter", SESSION_DEADLINE, || {
        super::harness::is_listening(debug_port)
            .then(|| super::sidecar_death::debugpy_adapters_with(&marker))
            .and_then(|adapters| adapters.first().copied())
    });
    // Stopped, the adapter acknowledges no release; continued when this test ends.
    let stopped = Stopped::stop(adapter);
    let (connect, entry) = developer
        .relay
        .connect(&developer.connection_string(), &debug_port.to_string());
    agent.wait_stderr("debug session timed-out");
    let reached_before = agent.log().matches(REACHED).count();
    // A developer during the release.
    let mut probe = std::net::TcpStream::connect(entry).expect("connect to relay connect");
    let body =
        r#"{"seq":1,"type":"request","command":"initialize","arguments":{"adapterID":"debugpy"}}"#;
    write!(probe, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("send initialize");
    let taken = Instant::now() + TAKEN_WITHIN;
    while agent.log().matches(REACHED).count() == reached_before {
        assert!(
            Instant::now() < taken,
            "a developer who came during the release was not taken within \
             {TAKEN_WITHIN:?}\n{}\n{}",
            agent.log(),
            connect.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    assert!(
        !log.contains("released the step") && !log.contains("did not acknowledge a release"),
        "the release was over before the developer came; the case proves nothing\n{log}"
    );
    drop(stopped);
    drop(probe);
    gate.open();
    assert_eq!(agent.wait_exit().code(), Some(STEP_CODE), "{}", agent.log());
    let log = agent.log();
    assert!(
        !log.contains("listener offline"),
        "the target's listener went silent during the release\n{log}"
    );
}

/// A process stopped with SIGSTOP, continued when dropped (a failed test leaves none
/// stopped).
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A developer who comes right after another one failed its setup attaches, long before
/// the deadline (listen and direct modes: each developer has its own connection to
/// debugpy's adapter, and the adapter lets one session have the debuggee at a time):
/// - debugpy's adapter fails an `attach` without arguments and gives that client's session
///   the debuggee all the same: a client that then stayed connected held the debuggee
///   where no debugger could configure it ("already being debugged") and no release could
///   free it, for the rest of the step. The gate now cuts such a client off;
/// - an adapter connection closed while its session has the debuggee frees it a moment
///   later: a developer whose `attach` came in that moment was refused, and the adapter
///   then took no connection at all. The agent now ends such a session in order (a
///   `disconnect`, answered once the debuggee is free) before the next developer's
///   requests reach the adapter;
/// - connections that closed unread (a port scanner, 20 of them 50 ms apart), or after one
///   message the gate would not pass on, reached debugpy's adapter, which stopped taking
///   connections after a few had come and gone (debugpy 1.8.22, also without the agent):
///   in direct mode the agent now reaches debugpy only for a connection whose first whole
///   DAP message has arrived and is one the gate passes on.
#[test]
fn the_next_developer_attaches_whatever_the_last_one_left_behind() {
    // Far beyond what a case takes: a release at the deadline is the bug.
    const LONG_ATTACH_TIMEOUT: &str = "120s";
    let both = [Mode::Listen, Mode::Direct];
    let cases = [
        (
            &both[..],
            "silent-after-attach",
            "debugpy refused a debugger's attach",
        ),
        (&both[..], "drop-after-attach", "left after \"attach\""),
        (&both[..], "drop-after-bp", "left after \"setBreakpoints\""),
        // Direct mode only: in listen mode a connection reaches the node only through the
        // relay, with the Hybrid Connection's Send rights, and debugpy is reached before
        // the sender is told to go on (azbridge's senders send nothing before that), so a
        // flood of senders still reaches debugpy's adapter there.
        (
            &[Mode::Direct][..],
            "connect-flood",
            "closed before it sent a whole DAP message; debugpy was not reached",
        ),
        (
            &[Mode::Direct][..],
            "bad-body-flood",
            "is not a debugger: it sent a message whose body is not a DAP JSON object",
        ),
        (
            &[Mode::Direct][..],
            "garbage",
            "is not a debugger: it sent a header byte 0x00",
        ),
    ];
    for (modes, fault, cause) in cases {
        for &mode in modes {
            let what = format!("{} / {fault}", mode.name());
            eprintln!("case: {what}");
            let dir = tempfile::tempdir().expect("tempdir");
            let developer = DeveloperSide::relay_only("next");
            let (debug_port, _, range) = port_range(4);
            let gate = Gate::in_dir(dir.path());
            let mut cmd = step_command(
                &developer,
                dir.path(),
                mode,
                &gate,
                LONG_ATTACH_TIMEOUT,
                &range,
            );
            let mut agent = Running::spawn(&mut cmd);
            agent.wait_stderr("debug session waiting-for-debugger");
            let (_relay_connect, port) = developer_entry(&developer, mode, debug_port);
            // Once debugpy listens: developers who come before it are connected together
            // when it does, and debugpy refuses all but the first ("already being
            // debugged"), which is not the case here.
            agent.wait_stderr("the step's bootstrap started debugpy");
            let faulty = Fake::spawn(&["connect", &port.to_string(), fault]);
            faulty.wait_done(&agent);
            // At once (a holding fault still holds its connection, debugpy's refusal may
            // still be on its way): the next developer, who finishes its setup.
            let good = Fake::spawn(&["connect", &port.to_string(), "configure-and-watch"]);
            good.wait_done(&agent);
            assert!(
                agent
                    .stdout
                    .wait_for_from(0, "done total 6", SESSION_DEADLINE)
                    .is_some(),
                "{what}: the step was never released\n{}",
                agent.log()
            );
            let log = agent.log();
            assert!(
                !log.contains("debug session timed-out"),
                "{what}: the step ran only at the attach deadline, not by the next \
                 developer's configurationDone\n{log}"
            );
            assert!(
                log.contains(cause),
                "{what}: the log does not say {cause:?}\n{log}"
            );
            gate.open();
            assert_eq!(
                agent.wait_exit().code(),
                Some(STEP_CODE),
                "{what}\n{}",
                agent.log()
            );
            drop((faulty, good));
        }
    }
}

/// A debugger whose connection drops after its setup (no `disconnect`: VS Code killed, a
/// network break) and that connects again at once attaches again. debugpy's adapter ends
/// the dropped session on the close, but a moment later: an `attach` that came meanwhile
/// was refused ("already being debugged"), and the adapter then took no connection at all
/// for the rest of the step. The gate now ends such a session in order (a `disconnect`,
/// answered once the adapter let go of the step) and the returning debugger waits for it.
#[test]
fn a_debugger_whose_connection_dropped_attaches_again_at_once() {
    const ROUNDS: usize = 3;
    for mode in [Mode::Direct, Mode::Listen] {
        for round in 0..ROUNDS {
            let what = format!("{} round {round}", mode.name());
            let dir = tempfile::tempdir().expect("tempdir");
            let developer = DeveloperSide::relay_only("dropped");
            let (debug_port, _, range) = port_range(4);
            let gate = Gate::in_dir(dir.path());
            let mut cmd = step_command(&developer, dir.path(), mode, &gate, "120s", &range);
            let mut agent = Running::spawn(&mut cmd);
            agent.wait_stderr("debug session waiting-for-debugger");
            let (_relay_connect, port) = developer_entry(&developer, mode, debug_port);
            let fake = Fake::spawn(&["connect", &port.to_string(), "vanish-and-return"]);
            fake.wait_done(&agent);
            let returned = fake
                .stdout
                .wait_for_from(0, "returned ", SESSION_DEADLINE)
                .map(|(_, line)| line)
                .unwrap_or_default();
            assert!(
                returned.contains("returned attached"),
                "{what}: the debugger that came back was not attached: {returned}\n{}",
                agent.log()
            );
            gate.open();
            assert_eq!(
                agent.wait_exit().code(),
                Some(STEP_CODE),
                "{what}\n{}",
                agent.log()
            );
            drop(fake);
        }
    }
}
