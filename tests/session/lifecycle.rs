//! Status and lifecycle: `amlx-agent status` shows each session state as it happens,
//! killing the step leaves no sidecar and no held lock, and supervise mode runs the
//! same session with the sidecar gone when the step exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::harness::{
    Attach, BREAKPOINT_LINE, DeveloperSide, ListeningDeveloper, SESSION_DEADLINE, VARIABLE,
    port_range, step_py,
};
use crate::relay::harness::Lines;
use crate::util;

/// How soon after the step dies its sidecar (and keeper) must be gone, and how soon after
/// a sidecar dies `status` must say so (issue 7, acceptance item 7).
pub(super) const SIDECAR_GONE_WITHIN: Duration = Duration::from_secs(1);

/// `amlx-agent exec` running in the background, stdout and stderr captured by line.
pub(super) struct Running {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn amlx-agent exec");
        let stdout = Lines::from_reader(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::from_reader(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The agent's PID: the step's in replace mode, the supervisor's in supervise mode.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until stderr has a line containing `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        self.stderr
            .wait_for_from(0, needle, SESSION_DEADLINE)
            .map(|(_, line)| line)
            .unwrap_or_else(|| panic!("no {needle:?} in stderr:\n{}", self.log()))
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        util::wait_within(&mut self.child, SESSION_DEADLINE)
    }

    pub fn log(&self) -> String {
        self.stderr.all().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("agent {} stderr:\n{}", self.pid(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file whose creation lets a step run with `STEP_GATE` set finish.
pub(super) struct Gate(PathBuf);

impl Gate {
    pub fn in_dir(dir: &Path) -> Gate {
        Gate(dir.join("gate"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn open(&self) {
        std::fs::write(&self.0, b"").expect("create the gate file");
    }
}

/// `amlx-agent status --json` for `state_dir`: the session whose holder is `pid`.
pub(super) fn session_of(state_dir: &Path, pid: u32) -> Option<serde_json::Value> {
    let out = util::output_bounded(
        util::agent()
            .args(["status", "--json", "--state-dir"])
            .arg(state_dir),
    );
    assert!(out.status.success(), "status failed: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["pid"] == pid)
        .cloned()
}

/// Polls `status` until the session of `pid` is in `state`; returns it.
pub(super) fn wait_state(
    state_dir: &Path,
    pid: u32,
    state: &str,
    agent: &Running,
) -> serde_json::Value {
    wait_state_why(state_dir, pid, state, "", agent)
}

/// Polls `status` until the session of `pid` is in `state` for a reason containing
/// `why`; returns it.
pub(super) fn wait_state_why(
    state_dir: &Path,
    pid: u32,
    state: &str,
    why: &str,
    agent: &Running,
) -> serde_json::Value {
    let deadline = Instant::now() + SESSION_DEADLINE;
    loop {
        let session = session_of(state_dir, pid);
        let matches = |s: &&serde_json::Value| {
            s["state"] == state && s["reason"].as_str().unwrap_or_default().contains(why)
        };
        if let Some(session) = session.as_ref().filter(matches) {
            return session.clone();
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {state} ({why:?}) for {pid}; last: {session:?}\nagent:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session of `pid` is over: no record, or one `status` shows as ended.
pub(super) fn assert_session_over(state_dir: &Path, pid: u32) {
    if let Some(session) = session_of(state_dir, pid) {
        assert_eq!(session["state"], "ended", "{session}");
    }
}

/// A process's parent and start time, from /proc (None once it is gone or a zombie).
pub(super) fn live_process(pid: u32) -> Option<(u32, u64)> {
    let stat = amlx_agent::publish::holder::read_stat(pid)?;
    (stat.state != 'Z').then_some((stat.parent, stat.start_time))
}

/// A session's sidecar and keeper as `status --json` names them, with their start times.
pub(super) fn session_processes(session: &serde_json::Value) -> [(u32, u64); 2] {
    ["sidecar_pid", "keeper_pid"].map(|key| {
        let pid = session[key]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no {key} in {session}"));
        let (_, start) = live_process(pid).unwrap_or_else(|| panic!("{key} {pid} is not alive"));
        (pid, start)
    })
}

/// Whether the process `pid` that started at `start` is gone (dead, zombie or reused).
pub(super) fn gone(pid: u32, start: u64) -> bool {
    live_process(pid).is_none_or(|(_, now)| now != start)
}

/// Waits until every one of `processes` is gone; returns how long that took.
pub(super) fn wait_gone(processes: &[(u32, u64)], within: Duration) -> Duration {
    let began = Instant::now();
    util::wait_for(
        &format!("processes {processes:?} to be gone"),
        within,
        || {
            processes
                .iter()
                .all(|(pid, start)| gone(*pid, *start))
                .then_some(())
        },
    );
    began.elapsed()
}

/// Processes with `path` open, with their command lines (for failure messages).
fn holders_of(path: &Path) -> Vec<(u32, String)> {
    util::processes()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
            })
        })
        .map(|pid| (pid, util::command_line(pid)))
        .collect()
}

/// `ports list --json`: (live ports, stale ports) in `lock_dir`.
fn ports(lock_dir: &Path) -> (Vec<u64>, Vec<u64>) {
    let out = util::output_bounded(
        util::agent()
            .args(["ports", "list", "--json", "--lock-dir"])
            .arg(lock_dir),
    );
    assert!(out.status.success(), "ports list failed: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ports JSON");
    let port_list = |key: &str| -> Vec<u64> {
        report[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    (port_list("live"), port_list("stale"))
}

#[test]
fn status_shows_waiting_and_killing_the_step_leaves_no_sidecar_and_no_lock() {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let developer = DeveloperSide::relay_only("debug");
    let (debug_port, _, range) = port_range(4);
    let mut agent = Running::spawn(
        developer
            .agent(locks.path())
            .args(["exec", "--debug", "--rank", "0", "--port-range", &range])
            .args(["--attach-timeout", "10m", "--", "python3"])
            .arg(step_py()),
    );
    let pid = agent.pid();
    // Waiting with debugpy connected to the sidecar: the step is python in debugpy
    // (not a launcher shim still starting it), and nobody listens on the relay.
    let session = wait_state_why(
        &state_dir,
        pid,
        "waiting-for-debugger",
        "no listener on the Hybrid Connection yet",
        &agent,
    );
    assert_eq!(session["port"], debug_port, "{session}");
    assert_eq!(session["rank"], 0, "{session}");
    assert_eq!(session["mode"], "connect", "{session}");
    assert_eq!(session["holder"], "live", "{session}");
    let (live, _) = ports(locks.path());
    assert!(live.contains(&u64::from(debug_port)), "live: {live:?}");
    let processes = session_processes(&session);

    // In replace mode the agent's PID is the step's.
    agent.child.kill().expect("SIGKILL the step");
    agent.child.wait().expect("reap the step");
    let took = wait_gone(&processes, SIDECAR_GONE_WITHIN);
    eprintln!("sidecar and keeper {processes:?} gone {took:?} after SIGKILL of the step");

    let (live, stale) = ports(locks.path());
    assert!(
        !live.contains(&u64::from(debug_port)),
        "still live: {live:?}; held by {:?}",
        holders_of(&locks.path().join(format!("{debug_port}.lock")))
    );
    assert!(
        stale.contains(&u64::from(debug_port)),
        "not stale: {stale:?}"
    );
    assert_session_over(&state_dir, pid);
}

#[test]
fn status_shows_timed_out_while_the_step_runs_on() {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let gate = Gate::in_dir(locks.path());
    let developer = DeveloperSide::relay_only("debug");
    let (_, _, range) = port_range(4);
    let mut agent = Running::spawn(
        developer
            .agent(locks.path())
            .args(["exec", "--debug", "--rank", "0", "--port-range", &range])
            .args(["--attach-timeout", "3s", "--", "python3"])
            .arg(step_py())
            .env("STEP_GATE", gate.path())
            .env("STEP_EXIT_CODE", "5"),
    );
    let pid = agent.pid();
    wait_state(&state_dir, pid, "waiting-for-debugger", &agent);
    let session = wait_state(&state_dir, pid, "timed-out", &agent);
    assert!(
        session["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no debugger attached within 3s")),
        "{session}"
    );
    gate.open();
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(5), "{}", agent.log());
    assert_session_over(&state_dir, pid);
}

/// A connect-mode session through the relay: `status` shows `attached` while the
/// developer is attached, the breakpoint hits, and the sidecar is gone with the step.
fn attached_session(process_flag: &str) {
    let locks = tempfile::tempdir().expect("tempdir");
    let state_dir = locks.path().join("state");
    let gate = Gate::in_dir(locks.path());
    let ListeningDeveloper {
        side: developer,
        client,
        debug_port,
        range,
    } = ListeningDeveloper::start("debug", 4, Attach::listen);
    let mut agent = Running::spawn(
        developer
            .agent(locks.path())
            .args(["exec", process_flag, "--debug", "--rank", "0"])
            .args(["--port-range", &range, "--", "python3"])
            .arg(step_py())
            .env("STEP_GATE", gate.path()),
    );
    let pid = agent.pid();
    let session = wait_state(&state_dir, pid, "attached", &agent);
    assert_eq!(session["port"], debug_port, "{session}");
    let processes = session_processes(&session);
    gate.open();
    let outcome = &client.finish(1)[0];
    assert!(
        outcome.ok,
        "DAP session failed: {outcome:?}\n{}",
        agent.log()
    );
    assert_eq!(outcome.line, Some(BREAKPOINT_LINE));
    assert_eq!(outcome.value.as_deref(), Some(VARIABLE.1));
    let status = agent.wait_exit();
    assert!(
        status.success(),
        "agent exited {status:?}:\n{}",
        agent.log()
    );
    let took = wait_gone(&processes, SIDECAR_GONE_WITHIN);
    eprintln!("{process_flag}: sidecar and keeper {processes:?} gone {took:?} after the step");
    assert_session_over(&state_dir, pid);
    let (live, _) = ports(locks.path());
    assert!(
        !live.contains(&u64::from(debug_port)),
        "still live: {live:?}"
    );
}

#[test]
fn replace_mode_status_shows_attached_and_the_sidecar_ends_with_the_step() {
    attached_session("--replace");
}

#[test]
fn supervise_mode_runs_the_same_session_and_the_sidecar_ends_with_the_step() {
    attached_session("--supervise");
}

/// Supervise mode ends the session through the lifeline, not a signal the sidecar must
/// ignore while its parent lives: the sidecar publishes `ended` before the agent exits.
#[test]
fn supervise_mode_ends_the_session_cleanly_when_the_step_exits() {
    let locks = tempfile::tempdir().expect("tempdir");
    let (_, _, range) = super::harness::port_range(4);
    let out = util::output_bounded(
        util::agent()
            .env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .env("NO_COLOR", "1")
            .args(["exec", "--supervise", "--debug", "--mode", "direct"])
            .args([
                "--node-ip",
                "127.0.0.1",
                "--inject",
                "none",
                "--port-range",
                &range,
            ])
            .args(["--", "sh", "-c", "exit 3"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("debug session ended"), "{stderr}");
}
