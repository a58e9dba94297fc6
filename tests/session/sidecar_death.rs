//! A dead sidecar is visible and cheap (issue 7, acceptance item 7): after `kill -9` of
//! the sidecar, `status` shows the session's new state and the cause within a second,
//! no zombie stays, and the step, held waiting for a debugger, is released and finishes
//! on its own; after `kill -9` of the step, the sidecar and its keeper are gone within a
//! second. In connect, listen and direct modes, replace and supervise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::{
    DeveloperSide, SESSION_DEADLINE, agent_for, is_listening, port_range, step_py,
};
use super::lifecycle::{
    Running, SIDECAR_GONE_WITHIN, gone, live_process, session_of, session_processes, wait_gone,
    wait_state_why,
};
use crate::util;

/// The step waits this long for a debugger unless released earlier (the keeper releases
/// at once in connect and listen modes, at the deadline in direct mode).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(8);

/// The keeper's retry window for releasing a step (`session::keeper::RELEASE_GRACE`).
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// What `status` says after the sidecar was killed.
const KILLED_STATE: &str = "running-undebugged";
const KILLED_CAUSE: &str = "was killed by signal 9 (SIGKILL); the step runs on without a debugger";

/// `amlx-agent exec` for a step waiting for a debugger in `mode` (`process`: `--replace`
/// or `--supervise`), through a relay where nobody listens.
fn waiting_step(
    developer: &DeveloperSide,
    locks: &Path,
    mode: &str,
    process: &str,
) -> (Command, u16) {
    waiting_step_with(developer, locks, mode, process, Debugpy::Injected)
}

/// Who starts debugpy in the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Debugpy {
    /// The agent (its bootstrap, with its own last-resort bound).
    Injected,
    /// The step's own code (`--inject none`, `debugpy.connect(AMLX_DEBUG_PORT)`, the
    /// prior art's way): nothing but the sidecar and its keeper can release it.
    Own,
}

/// [`waiting_step`] with debugpy started by `debugpy`.
fn waiting_step_with(
    developer: &DeveloperSide,
    locks: &Path,
    mode: &str,
    process: &str,
    debugpy: Debugpy,
) -> (Command, u16) {
    let (debug_port, _, range) = port_range(4);
    let timeout = format!("{}s", ATTACH_TIMEOUT.as_secs());
    let mut cmd = developer.agent(locks);
    cmd.args(["exec", process, "--debug", "--rank", "0", "--mode", mode])
        .args(["--node-ip", "127.0.0.1", "--wait-for-client"])
        .args(["--attach-timeout", &timeout, "--port-range", &range]);
    match debugpy {
        Debugpy::Injected => {
            cmd.args(["--", "python3"]).arg(step_py());
        }
        Debugpy::Own => {
            let code = "import os, runpy, sys, debugpy\n\
                        debugpy.connect(int(os.environ['AMLX_DEBUG_PORT']))\n\
                        sys.argv = sys.argv[1:]\n\
                        runpy.run_path(sys.argv[0], run_name='__main__')\n";
            cmd.args(["--inject", "none", "--", "python3", "-c", code])
                .arg(step_py());
        }
    }
    (cmd, debug_port)
}

/// Waits until the step is held by debugpy and the session waits for the developer;
/// returns the session as `status --json` shows it.
fn wait_held(state_dir: &Path, agent: &Running, mode: &str, debug_port: u16) -> serde_json::Value {
    // The sidecar is ready once the agent announces the debug port (the record says
    // waiting-for-debugger from the session's start, before that).
    agent.wait_stderr(" debug port ");
    // Connect mode says so only once debugpy's connection reached the sidecar.
    let why = if mode == "connect" {
        "no listener on the Hybrid Connection yet"
    } else {
        ""
    };
    let session = wait_state_why(state_dir, agent.pid(), "waiting-for-debugger", why, agent);
    if mode != "connect" {
        util::wait_for(
            &format!("debugpy to listen on {debug_port}"),
            SESSION_DEADLINE,
            || is_listening(debug_port).then_some(()),
        );
    }
    session
}

/// Children of `pid` in any state (zombies included), from /proc.
fn children(pid: u32) -> Vec<(u32, char)> {
    util::children_of(pid)
}

/// The step's PID: the agent's own in replace mode, in supervise mode its child running
/// step.py (the supervisor, a subreaper, also adopts debugpy's adapter).
fn step_pid(agent: &Running, process: &str) -> u32 {
    if process == "--replace" {
        return agent.pid();
    }
    let script = step_py();
    util::wait_for("the supervised step", SESSION_DEADLINE, || {
        children(agent.pid()).into_iter().find_map(|(child, _)| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(script.to_string_lossy().as_ref())
                .then_some(child)
        })
    })
}

/// Whether `process` is gone from /proc altogether (reaped: not even a zombie).
fn reaped((pid, start): (u32, u64)) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || live_process(pid).is_some_and(|(_, now)| now != start)
}

pub(super) fn kill(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a PID fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
}

/// kill -9 of the sidecar: the new state and its cause within a second, no zombie (the
/// sidecar is reaped at once, and nothing of ours is left under the step), and the step
/// released to finish with its own output and exit code.
fn killed_sidecar(mode: &str, process: &str) {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    let (mut cmd, debug_port) = waiting_step(&developer, locks.path(), mode, process);
    let mut agent = Running::spawn(&mut cmd);
    let session = wait_held(&state_dir, &agent, mode, debug_port);
    let step = step_pid(&agent, process);
    let [sidecar, keeper] = session_processes(&session);

    kill(sidecar.0);
    let killed = Instant::now();
    let shown = util::wait_for(
        &format!("{mode} {process}: status to show the sidecar's death"),
        SIDECAR_GONE_WITHIN,
        || {
            session_of(&state_dir, agent.pid()).filter(|s| {
                s["state"] == KILLED_STATE
                    && s["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(KILLED_CAUSE))
            })
        },
    );
    let took = killed.elapsed();
    let reason = shown["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("(pid {})", sidecar.0)), "{shown}");
    // Reaped, not a zombie: its /proc entry is gone altogether.
    util::wait_for(
        &format!("{mode} {process}: sidecar {} reaped", sidecar.0),
        SIDECAR_GONE_WITHIN,
        || reaped(sidecar).then_some(()),
    );
    for parent in [agent.pid(), step] {
        let zombies: Vec<_> = children(parent)
            .into_iter()
            .filter(|(_, s)| *s == 'Z')
            .collect();
        assert!(
            zombies.is_empty(),
            "{mode} {process}: zombies under {parent}: {zombies:?}"
        );
    }
    assert!(!gone(keeper.0, keeper.1), "the keeper stays with the step");
    eprintln!("{mode} {process}: status showed the sidecar's death {took:?} after kill -9");

    let status = util::wait_within(&mut agent.child, ATTACH_TIMEOUT + RELEASE_GRACE);
    assert_eq!(status.code(), Some(0), "{mode} {process}:\n{}", agent.log());
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "{mode} {process}: the step did not run to its end:\n{}",
        agent.log()
    );
    wait_gone(&[keeper], SIDECAR_GONE_WITHIN);
}

#[test]
fn a_killed_sidecar_shows_in_status_leaves_no_zombie_and_the_step_is_released() {
    for mode in ["connect", "listen", "direct"] {
        for process in ["--replace", "--supervise"] {
            killed_sidecar(mode, process);
        }
    }
}

/// kill -9 of the step: its sidecar and keeper are gone within a second.
fn killed_step(mode: &str, process: &str) {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    let (mut cmd, debug_port) = waiting_step(&developer, locks.path(), mode, process);
    let mut agent = Running::spawn(&mut cmd);
    let session = wait_held(&state_dir, &agent, mode, debug_port);
    let step = step_pid(&agent, process);
    let processes = session_processes(&session);
    assert!(live_process(step).is_some());

    kill(step);
    let took = wait_gone(&processes, SIDECAR_GONE_WITHIN);
    eprintln!(
        "{mode} {process}: sidecar and keeper {processes:?} gone {took:?} after kill -9 of the step"
    );
    let _ = util::wait_within(&mut agent.child, SESSION_DEADLINE);
    // No debugpy adapter of the step outlives it (one killed before its debug server
    // connected back had waited for it for ever, holding the port and the step's output).
    let marker = format!("AMLX_AGENT_PID={}", agent.pid());
    util::wait_for(
        &format!("{mode} {process}: the step's debugpy adapters to be gone"),
        SIDECAR_GONE_WITHIN,
        || debugpy_adapters_with(&marker).is_empty().then_some(()),
    );
}

/// Live debugpy adapters whose environment holds `var` (`NAME=value`).
pub(super) fn debugpy_adapters_with(var: &str) -> Vec<u32> {
    util::processes_with_env(var)
        .into_iter()
        .filter(|pid| util::command_line(*pid).contains("debugpy/adapter"))
        .filter(|pid| live_process(*pid).is_some())
        .collect()
}

#[test]
fn a_killed_step_takes_its_sidecar_and_keeper_within_a_second() {
    for mode in ["connect", "listen", "direct"] {
        for process in ["--replace", "--supervise"] {
            killed_step(mode, process);
        }
    }
}

/// Kills the processes it names when dropped (a failed test leaves none behind).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A debugpy adapter the step left behind is ended with the step. debugpy's adapter waits
/// for the step's debug server to connect before it waits for it to go, so a step killed
/// in between (as `kill -9` during debugpy's start did in CI) left one for ever, holding
/// the debug port and the step's output. Here the step starts a stand-in with an
/// adapter's command line (`…/debugpy/adapter --for-server …`), then is killed.
#[test]
fn an_adapter_the_killed_step_left_behind_is_ended() {
    for process in ["--replace", "--supervise"] {
        let locks = tempfile::tempdir().expect("tempdir");
        let (_, _, range) = port_range(4);
        let step = r#"python3 -c 'import time; time.sleep(120)' /stand-in/debugpy/adapter --for-server 1 &
echo "adapter=$!"; wait"#;
        let mut cmd = util::agent();
        cmd.env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .args(["exec", process, "--debug", "--rank", "0"])
            .args(["--mode", "direct", "--node-ip", "127.0.0.1"])
            .args(["--port-range", &range, "--", "sh", "-c", step]);
        let mut agent = Running::spawn(&mut cmd);
        let marker = format!("AMLX_AGENT_PID={}", agent.pid());
        let adapters = util::wait_for("the stand-in adapter", SESSION_DEADLINE, || {
            Some(debugpy_adapters_with(&marker)).filter(|found| !found.is_empty())
        });
        let _cleanup = KillOnDrop(adapters.clone());
        // The step: the agent itself (replace), else the supervisor's `sh` child.
        let step = if process == "--replace" {
            agent.pid()
        } else {
            util::wait_for("the supervised step", SESSION_DEADLINE, || {
                children(agent.pid()).into_iter().find_map(|(child, _)| {
                    let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
                    cmdline.starts_with(b"sh\0").then_some(child)
                })
            })
        };
        kill(step);
        let _ = util::wait_within(&mut agent.child, SESSION_DEADLINE);
        util::wait_for(
            &format!("{process}: the stand-in adapter {adapters:?} to be ended"),
            SIDECAR_GONE_WITHIN,
            || debugpy_adapters_with(&marker).is_empty().then_some(()),
        );
    }
}

/// A sidecar stopped (SIGSTOP) while it holds a connect-mode step: nothing released the
/// step, ever (debugpy's wait has no bound, and the keeper only watched for the
/// sidecar's death). The keeper now ends a sidecar that still holds the step past the
/// attach deadline, its release bound and a margin, records why, and releases the step,
/// which finishes with its own output and exit code.
fn stopped_sidecar(process: &str) {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    // The step's own debugpy: an injected one is let go by its bootstrap first.
    let (mut cmd, debug_port) =
        waiting_step_with(&developer, locks.path(), "connect", process, Debugpy::Own);
    let mut agent = Running::spawn(&mut cmd);
    let session = wait_held(&state_dir, &agent, "connect", debug_port);
    let [sidecar, keeper] = session_processes(&session);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sidecar.0).expect("a PID fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("kill -STOP");
    let _unstop = KillOnDrop(vec![sidecar.0]);
    let status = util::wait_within(
        &mut agent.child,
        ATTACH_TIMEOUT + RELEASE_GRACE * 2 + STUCK_SIDECAR_MARGIN,
    );
    assert_eq!(status.code(), Some(0), "{process}:\n{}", agent.log());
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "{process}: the step did not run to its end:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("stopped or stuck"), "{process}:\n{log}");
    wait_gone(&[sidecar, keeper], SIDECAR_GONE_WITHIN);
}

/// `session::keeper::STUCK_SIDECAR_MARGIN`.
const STUCK_SIDECAR_MARGIN: Duration = Duration::from_secs(5);

#[test]
fn a_stopped_sidecar_is_ended_by_the_keeper_and_the_step_released() {
    for process in ["--replace", "--supervise"] {
        stopped_sidecar(process);
    }
}

/// Supervise mode, connect mode: the supervisor killed (kill -9) while its step waits for
/// a debugger. The step lives on, orphaned, and was held for good: the keeper ended the
/// sidecar and dropped debugpy's connection without releasing it. It now releases it.
#[test]
fn a_killed_supervisor_leaves_its_step_released_not_held() {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    let (mut cmd, debug_port) = waiting_step(&developer, locks.path(), "connect", "--supervise");
    let mut agent = Running::spawn(&mut cmd);
    let session = wait_held(&state_dir, &agent, "connect", debug_port);
    let step = step_pid(&agent, "--supervise");
    let _step_left = KillOnDrop(vec![step]);
    let [sidecar, keeper] = session_processes(&session);
    kill(agent.pid());
    let _ = util::wait_bounded(&mut agent.child);
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "the orphaned step did not run to its end:\n{}",
        agent.log()
    );
    util::wait_for("the orphaned step to exit", RELEASE_GRACE, || {
        live_process(step).is_none().then_some(())
    });
    wait_gone(&[sidecar, keeper], SIDECAR_GONE_WITHIN);
}

/// Signals a scheduler sends the whole process group (Slurm's `--signal`, Lightning's
/// requeue: SIGUSR1; timers: SIGALRM; real-time signals; SIGXCPU at a CPU limit) are the
/// step's business: they
/// reached the sidecar and keeper too, and their default action ended both without a
/// word while `status` still said the session waited. Sent here to the two of them
/// directly (the step would take its own share): the session goes on and ends as usual.
#[test]
fn group_signals_meant_for_the_step_leave_the_session_alone() {
    use nix::sys::signal::Signal;
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    let (mut cmd, debug_port) = waiting_step(&developer, locks.path(), "listen", "--replace");
    let mut agent = Running::spawn(&mut cmd);
    let session = wait_held(&state_dir, &agent, "listen", debug_port);
    let [sidecar, keeper] = session_processes(&session);
    for pid in [sidecar.0, keeper.0] {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a PID fits i32"));
        for signal in [
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGALRM,
            Signal::SIGTSTP,
            // A CPU limit (LSF, SGE), and fault signals another process sends.
            Signal::SIGXCPU,
            Signal::SIGXFSZ,
            Signal::SIGPWR,
            Signal::SIGABRT,
            Signal::SIGTRAP,
        ] {
            nix::sys::signal::kill(pid, signal).expect("signal");
        }
        // nix names no real-time signal: the first one, by number.
        // SAFETY: kill takes two integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let sent = unsafe { nix::libc::kill(pid.as_raw(), nix::libc::SIGRTMIN()) };
        assert_eq!(sent, 0, "kill SIGRTMIN");
    }
    let status = util::wait_within(&mut agent.child, ATTACH_TIMEOUT + RELEASE_GRACE);
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("killed by signal"), "{log}");
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "the step did not run to its end:\n{log}"
    );
    wait_gone(&[sidecar, keeper], SIDECAR_GONE_WITHIN);
}

/// A relay that takes the TCP connection and never answers (stopped, wedged): the
/// readiness probe is part of the wait the attach timeout bounds, so with a short attach
/// timeout the step starts after it, not after the probe's own 15 s.
#[test]
fn a_silent_relay_delays_the_step_no_longer_than_the_attach_timeout() {
    const ATTACH: Duration = Duration::from_secs(1);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let relay = silent.local_addr().expect("addr");
    let locks = tempfile::tempdir().expect("tempdir");
    for mode in ["connect", "listen"] {
        let (_, _, range) = port_range(4);
        let connection_string = format!(
            "Endpoint=sb://{relay}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hc"
        );
        let mut cmd = agent_for(&connection_string, locks.path());
        cmd.args(["exec", "--debug", "--rank", "0", "--mode", mode])
            .args(["--attach-timeout", &format!("{}s", ATTACH.as_secs())])
            .args(["--port-range", &range, "--", "python3"])
            .arg(step_py());
        let started = Instant::now();
        let out = util::output_within(&mut cmd, SESSION_DEADLINE);
        let took = started.elapsed();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}: {log}");
        assert!(log.contains("within 1s"), "{mode}: {log}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("done total 6"),
            "{mode}: the step did not run: {log}"
        );
        // The README's bound: the attach timeout plus the release grace.
        assert!(took < ATTACH + RELEASE_GRACE, "{mode}: {took:?}\n{log}");
    }
}

/// A sidecar stopped (SIGSTOP) while it probes a relay that never answers: the agent's
/// wait for its readiness is bounded by the probe's own bound (here the attach timeout)
/// plus a setup margin, not by a fixed 30 s whatever the attach timeout.
#[test]
fn a_sidecar_stopped_during_its_readiness_probe_delays_the_step_no_longer_than_the_attach_timeout()
{
    const ATTACH: Duration = Duration::from_secs(5);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let relay = silent.local_addr().expect("addr");
    let locks = tempfile::tempdir().expect("tempdir");
    let (_, _, range) = port_range(4);
    let connection_string =
        format!("Endpoint=sb://{relay}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hc");
    let mark = format!("AMLX_TEST_READINESS={}", std::process::id());
    let (name, value) = mark.split_once('=').expect("NAME=value");
    let mut cmd = agent_for(&connection_string, locks.path());
    cmd.env(name, value)
        .args(["exec", "--debug", "--rank", "0", "--mode", "connect"])
        .args(["--attach-timeout", &format!("{}s", ATTACH.as_secs())])
        .args(["--port-range", &range, "--", "python3"])
        .arg(step_py());
    let started = Instant::now();
    let mut agent = Running::spawn(&mut cmd);
    // The sidecar: the one of the agent's processes whose parent (the keeper) is one too.
    let sidecar = util::wait_for("the sidecar", SESSION_DEADLINE, || {
        let ours = util::processes_with_env(&mark);
        ours.iter().copied().find(|pid| {
            amlx_agent::publish::holder::read_stat(*pid)
                .is_some_and(|stat| stat.parent != agent.pid() && ours.contains(&stat.parent))
        })
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sidecar).expect("a PID fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    assert!(
        started.elapsed() < ATTACH,
        "stopped after the probe's bound: the test proves nothing"
    );
    let status = util::wait_within(&mut agent.child, SESSION_DEADLINE);
    let took = started.elapsed();
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "the step did not run: {log}"
    );
    assert!(log.contains("not ready within"), "{log}");
    // The README's bound: the attach timeout plus the release grace.
    assert!(took < ATTACH + RELEASE_GRACE, "{took:?}\n{log}");
    drop(silent);
}

/// A sitecustomize that delays every Python start by `delay`: debugpy's connection then
/// comes well after the sidecar is ready, so a test can act on the sidecar before it.
fn slow_python_start(dir: &Path, delay: Duration) {
    std::fs::write(
        dir.join("sitecustomize.py"),
        format!("import time\ntime.sleep({})\n", delay.as_secs_f64()),
    )
    .expect("write sitecustomize.py");
}

/// What happens to the session before debugpy connects, and the line that says how the
/// step got away.
#[derive(Debug, Clone, Copy)]
enum EarlyEnd {
    /// The sidecar stopped (SIGSTOP): the keeper ends it once past the attach deadline.
    SidecarStopped,
    /// The sidecar killed: the keeper's copy of the listening socket takes debugpy.
    SidecarKilled,
    /// Sidecar and keeper killed: debugpy's connect is refused, and the bootstrap runs
    /// the step without it.
    BothKilled,
    /// Sidecar and keeper killed after debugpy connected (`pkill -9 amlx-agent`): the
    /// bootstrap lets the step go at its last-resort bound.
    BothKilledAfterConnect,
}

impl EarlyEnd {
    const ALL: [EarlyEnd; 4] = [
        EarlyEnd::BothKilledAfterConnect,
        EarlyEnd::SidecarStopped,
        EarlyEnd::SidecarKilled,
        EarlyEnd::BothKilled,
    ];

    /// A stopped sidecar is the keeper's to deal with only when nothing in the step
    /// bounds debugpy's wait: the step's own debugpy. The other cases need the
    /// bootstrap (when nothing listens at all, or with the keeper gone too).
    fn debugpy(self) -> Debugpy {
        match self {
            EarlyEnd::SidecarStopped => Debugpy::Own,
            _ => Debugpy::Injected,
        }
    }

    fn logged(self) -> &'static str {
        match self {
            EarlyEnd::SidecarStopped => "stopped or stuck",
            EarlyEnd::SidecarKilled => {
                "a connection reached the debug port after the sidecar was gone"
            }
            EarlyEnd::BothKilled => "debugging disabled for this run: debugpy could not connect",
            EarlyEnd::BothKilledAfterConnect => "no debugger finished attaching within",
        }
    }
}

/// Connect mode, the session's processes stopped or killed while debugpy waits on them.
/// Before: with the sidecar stopped before it accepted debugpy's connection, the kernel
/// completed that connection on the listening socket and debugpy, which has no bound of
/// its own, waited on it for good; with the sidecar killed first, debugpy's connect was
/// refused and the step died with a traceback and exit code 1; with sidecar and keeper
/// killed after debugpy connected (`pkill -9 amlx-agent`), the step waited for good. The
/// step now runs to its end with its own exit code, within the attach timeout, the
/// release bound and the margin.
fn session_gone_before_debugpy_connects(end: EarlyEnd, process: &str) {
    use nix::sys::signal::Signal;
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let site = tempfile::tempdir().expect("tempdir");
    slow_python_start(site.path(), Duration::from_secs(2));
    let developer = DeveloperSide::relay_only("debug");
    let (mut cmd, _) =
        waiting_step_with(&developer, locks.path(), "connect", process, end.debugpy());
    cmd.env("PYTHONPATH", site.path());
    let mut agent = Running::spawn(&mut cmd);
    let why = match end {
        EarlyEnd::BothKilledAfterConnect => "no listener on the Hybrid Connection yet",
        _ => "waiting for debugpy",
    };
    let session = wait_state_why(&state_dir, agent.pid(), "waiting-for-debugger", why, &agent);
    let [sidecar, keeper] = session_processes(&session);
    let pid = |p: u32| nix::unistd::Pid::from_raw(i32::try_from(p).expect("a PID fits i32"));
    let signalled = match end {
        EarlyEnd::SidecarStopped => vec![(sidecar.0, Signal::SIGSTOP)],
        EarlyEnd::SidecarKilled => vec![(sidecar.0, Signal::SIGKILL)],
        EarlyEnd::BothKilled | EarlyEnd::BothKilledAfterConnect => {
            vec![(keeper.0, Signal::SIGKILL), (sidecar.0, Signal::SIGKILL)]
        }
    };
    for (process, signal) in signalled {
        nix::sys::signal::kill(pid(process), signal).expect("signal the session");
    }
    let _unstop = KillOnDrop(vec![sidecar.0]);
    let status = util::wait_within(
        &mut agent.child,
        ATTACH_TIMEOUT + RELEASE_GRACE * 2 + STUCK_SIDECAR_MARGIN,
    );
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{end:?} {process}:\n{log}");
    assert!(
        agent.stdout.wait_for("done total 6").is_some(),
        "{end:?} {process}: the step did not run to its end:\n{log}"
    );
    assert!(log.contains(end.logged()), "{end:?} {process}:\n{log}");
    wait_gone(&[sidecar, keeper], SIDECAR_GONE_WITHIN);
}

#[test]
fn a_session_gone_while_debugpy_waits_leaves_the_step_to_run() {
    for end in EarlyEnd::ALL {
        for process in ["--replace", "--supervise"] {
            session_gone_before_debugpy_connects(end, process);
        }
    }
}

/// `exec` of rank 0 in connect mode with a 1 s attach timeout, the step `python3 -c code`
/// calling `debugpy.connect` itself (`--inject none`) whenever it likes.
fn late_connect_step(
    developer: &DeveloperSide,
    locks: &std::path::Path,
    range: &str,
    code: &str,
) -> std::process::Command {
    let mut cmd = developer.agent(locks);
    cmd.args([
        "exec",
        "--replace",
        "--debug",
        "--rank",
        "0",
        "--mode",
        "connect",
    ])
    .args(["--node-ip", "127.0.0.1", "--attach-timeout", "1s"])
    .args(["--port-range", range, "--inject", "none"])
    .args(["--", "python3", "-c", code]);
    cmd
}

/// The sidecar's last line for a session, logged also when the step has already exited.
const SESSION_ENDED: &str = "debug session ended";

/// A debugpy that connects long after the session's attach deadline (the step's own
/// `debugpy.connect` late in the run, the prior art's way) gets an attach timeout of its
/// own from the sidecar: the keeper must not take the sidecar, busy with that connection,
/// for one stuck past the session's deadline, kill it and log it as "stopped or stuck".
#[test]
fn a_debugpy_connecting_long_after_the_deadline_is_served_not_taken_for_a_stuck_sidecar() {
    // Past the session's deadline + RELEASE_GRACE + the keeper's 5 s margin.
    const LATE: Duration = Duration::from_secs(17);
    let locks = tempfile::tempdir().expect("tempdir");
    let developer = DeveloperSide::relay_only("debug");
    let (_, _, range) = port_range(4);
    let code = format!(
        "import os, sys, time, debugpy\n\
         time.sleep({})\n\
         debugpy.connect(int(os.environ['AMLX_DEBUG_PORT']))\n\
         print('late step done', flush=True)\n\
         sys.exit(3)\n",
        LATE.as_secs()
    );
    let mut cmd = late_connect_step(&developer, locks.path(), &range, &code);
    let mut agent = Running::spawn(&mut cmd);
    let status = util::wait_within(&mut agent.child, LATE + RELEASE_GRACE + ATTACH_TIMEOUT);
    // The step may exit before the sidecar has logged the late session's end (a loaded
    // machine: CI saw "released the step" 0.7 s after the exit); its last line is awaited.
    agent.wait_stderr(SESSION_ENDED);
    let log = agent.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(agent.stdout.wait_for("late step done").is_some(), "{log}");
    assert!(!log.contains("stopped or stuck"), "{log}");
    assert!(log.contains("released the step"), "{log}");
}

/// The same late debugpy, meeting a sidecar that the machine did not run for a moment (a
/// loaded node; here its cgroup frozen for about 2 s around the connection): the keeper
/// saw the connection unaccepted on two looks a tick apart, took the sidecar for a stuck
/// one, ended it and the late session with it ("stopped or stuck"). A sidecar that is not
/// stopped now has 2 s to accept. Needs root and a cgroup2 hierarchy (the freezer).
#[test]
fn a_late_debugpy_meeting_a_sidecar_not_run_for_a_moment_is_served() {
    // As above: past the session's deadline + RELEASE_GRACE + the keeper's 5 s margin.
    const LATE: Duration = Duration::from_secs(17);
    /// The sidecar is frozen this long before debugpy connects...
    const FROZEN_BEFORE: Duration = Duration::from_secs(1);
    /// ...and this long in all (under the keeper's 2 s bound once the connection waits).
    const FROZEN_FOR: Duration = Duration::from_millis(1_900);
    let Some(cgroups) = Freezer::root() else {
        eprintln!("skipped: needs root and a writable cgroup2 hierarchy to freeze a process");
        return;
    };
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let marker = locks.path().join("connecting-soon");
    let developer = DeveloperSide::relay_only("debug");
    let (_, _, range) = port_range(4);
    let code = format!(
        "import os, sys, time, debugpy\n\
         time.sleep({})\n\
         open(sys.argv[1], 'w').close()\n\
         time.sleep({})\n\
         print('connecting at', time.time(), flush=True)\n\
         debugpy.connect(int(os.environ['AMLX_DEBUG_PORT']))\n\
         print('late step done', flush=True)\n\
         sys.exit(3)\n",
        (LATE - FROZEN_BEFORE).as_secs_f64(),
        FROZEN_BEFORE.as_secs_f64(),
    );
    let mut cmd = late_connect_step(&developer, locks.path(), &range, &code);
    cmd.arg(&marker);
    let mut agent = Running::spawn(&mut cmd);
    let session = util::wait_for("the session's record", SESSION_DEADLINE, || {
        session_of(&state_dir, agent.pid()).filter(|s| s["sidecar_pid"].is_u64())
    });
    let [sidecar, _] = session_processes(&session);
    util::wait_for("the step about to connect", LATE + SESSION_DEADLINE, || {
        marker.exists().then_some(())
    });
    let frozen = cgroups.freeze(sidecar.0);
    let froze_at = std::time::SystemTime::now();
    std::thread::sleep(FROZEN_FOR);
    drop(frozen);
    let thawed_at = std::time::SystemTime::now();
    let status = util::wait_within(&mut agent.child, LATE + RELEASE_GRACE + ATTACH_TIMEOUT);
    agent.wait_stderr(SESSION_ENDED);
    let log = agent.log();
    // The case under test happened: debugpy connected while the sidecar was frozen.
    let connected_at = agent
        .stdout
        .wait_for("connecting at ")
        .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
        .unwrap_or_else(|| panic!("the step never said when it connected:\n{log}"));
    assert!(
        froze_at < connected_at && connected_at < thawed_at,
        "debugpy connected at {connected_at:?}, outside the freeze ({froze_at:?} to \
         {thawed_at:?}): the machine was too slow for this test\n{log}"
    );
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(agent.stdout.wait_for("late step done").is_some(), "{log}");
    assert!(!log.contains("stopped or stuck"), "{log}");
}

/// A cgroup2 hierarchy this test may write (root, cgroup2 mounted, not read-only).
struct Freezer {
    root: std::path::PathBuf,
}

/// A process frozen in a cgroup of its own; thawed and moved back to its own cgroup when
/// dropped.
struct Frozen {
    group: std::path::PathBuf,
    home: std::path::PathBuf,
    pid: u32,
}

impl Freezer {
    fn root() -> Option<Freezer> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let root = mounts
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| fields.get(2) == Some(&"cgroup2"))
            .and_then(|fields| fields.get(1).map(std::path::PathBuf::from))?;
        // Writable (a container's cgroupfs often is not): a group can be made here.
        let probe = root.join(format!("amlx-test-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let _ = std::fs::remove_dir(&probe);
        Some(Freezer { root })
    }

    /// Freezes `pid` (all its threads) and waits until the kernel says it is frozen.
    fn freeze(&self, pid: u32) -> Frozen {
        // Its own cgroup v2 group ("0::/path"), to go back to.
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("0::"))?;
                Some(
                    line.trim_start_matches("0::")
                        .trim_start_matches('/')
                        .to_owned(),
                )
            })
            .unwrap_or_default();
        let group = self.root.join(format!("amlx-test-freeze-{pid}"));
        std::fs::create_dir(&group).expect("create the cgroup");
        let frozen = Frozen {
            group: group.clone(),
            home: self.root.join(own),
            pid,
        };
        std::fs::write(group.join("cgroup.procs"), pid.to_string()).expect("move the process");
        std::fs::write(group.join("cgroup.freeze"), "1").expect("freeze");
        util::wait_for("the cgroup to freeze", SESSION_DEADLINE, || {
            std::fs::read_to_string(group.join("cgroup.events"))
                .ok()
                .filter(|events| events.lines().any(|l| l == "frozen 1"))
        });
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.group.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.group);
    }
}

/// A panic in the sidecar ends the sidecar where it was forked. It unwound into the
/// agent's frames that the fork had copied: their destructors closed descriptors the
/// child had closed already (a debug build aborted with "IO Safety violation"; a release
/// build could close whatever reused the number) and removed what the agent owns. The
/// step runs once, with its own exit code, and the log says it runs undebugged.
#[test]
fn a_panicking_sidecar_ends_alone_and_the_step_runs_once() {
    for process in ["--replace", "--supervise"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = util::agent();
        cmd.env("AMLX_TEST_SIDECAR_PANIC", "1")
            .env(
                "AMLX_RELAY_CONNECTION_STRING",
                "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=k;SharedAccessKey=abc;\
                 EntityPath=hc",
            )
            .env("AMLX_STATE_DIR", dir.path().join("state"))
            .env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .args(["exec", "--debug", "--insecure-ws", "--rank", "0"])
            .args(["--attach-timeout", "5s", process, "--", "python3", "-c"])
            .arg("print('the step ran'); raise SystemExit(3)");
        let out = util::output_within(&mut cmd, SESSION_DEADLINE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{process}: {stderr}");
        assert_eq!(
            stdout.matches("the step ran").count(),
            1,
            "{process}: {stdout}"
        );
        assert!(
            stderr.contains("AMLX_TEST_SIDECAR_PANIC is set"),
            "{process}: {stderr}"
        );
        assert!(
            !stderr.contains("fatal runtime error"),
            "{process}: {stderr}"
        );
        assert!(
            stderr.contains("the relay sidecar exited before it was ready"),
            "{process}: {stderr}"
        );
    }
}
