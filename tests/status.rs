//! Integration tests: `status` reads the records the library writes, for live and dead
//! holders, through the real binary.

use std::path::Path;
use std::process::{Child, Command, Output};

use amlx_agent::publish::{SessionState, StatusFile, StatusRecord};
use amlx_agent::session::DebugMode;
use serde_json::Value;

use crate::util::agent;

/// A `sleep` child killed and reaped on drop, so no test leaks a process.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        let child = Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("sleep runs");
        Sleeper(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps it: its PID is now dead (or, later, someone else's).
    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.end();
    }
}

/// Environment variables of one table row.
type Vars<'a> = &'a [(&'a str, &'a str)];

fn record(pid: u32, rank: u32, port: u16) -> StatusRecord {
    let mut record = StatusRecord::new(pid, port, DebugMode::Connect, format!("10.9.8.7:{port}"));
    record.rank = Some(rank);
    record.local_rank = Some(rank % 2);
    record
}

fn status(dir: &Path, json: bool) -> Output {
    let mut cmd = agent();
    cmd.arg("status").arg("--state-dir").arg(dir);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("agent runs");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn status_json(dir: &Path) -> Value {
    let out = status(dir, true);
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

fn status_text(dir: &Path) -> String {
    String::from_utf8_lossy(&status(dir, false).stdout).into_owned()
}

/// The JSON session whose `pid` is `pid`.
fn session(report: &Value, pid: u32) -> &Value {
    report["sessions"]
        .as_array()
        .expect("sessions is an array")
        .iter()
        .find(|s| s["pid"] == pid)
        .unwrap_or_else(|| panic!("no session for pid {pid} in {report:#}"))
}

#[test]
fn live_sessions_show_their_state_and_dead_ones_show_ended() {
    let dir = tempfile::tempdir().expect("temp dir");
    let live = Sleeper::spawn();
    let mut dead = Sleeper::spawn();
    let _live_file = StatusFile::create(dir.path(), record(live.pid(), 0, 5678)).expect("live");
    let mut dead_file = StatusFile::create(dir.path(), record(dead.pid(), 1, 5679)).expect("dead");
    dead_file
        .set_state(SessionState::Attached, None)
        .expect("attached");
    dead.end();

    let report = status_json(dir.path());
    assert_eq!(
        report["sessions"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    let l = session(&report, live.pid());
    assert_eq!(l["state"], "waiting-for-debugger");
    assert_eq!(l["holder"], "live");
    assert_eq!(
        (l["rank"].clone(), l["port"].clone()),
        (0.into(), 5678.into())
    );
    assert_eq!(l["mode"], "connect");
    assert_eq!(l["endpoint"], "10.9.8.7:5678");
    assert!(l["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{l}");
    let d = session(&report, dead.pid());
    assert_eq!(d["state"], "ended");
    assert_eq!(d["recorded_state"], "attached");
    assert_eq!(d["holder"], "dead");
    assert!(
        d["reason"].as_str().is_some_and(|r| r.contains("attached")),
        "{d}"
    );

    let text = status_text(dir.path());
    let line_of = |pid: u32| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no line for {pid}:\n{text}"))
            .to_owned()
    };
    assert!(text.starts_with("PID"), "{text}");
    let live_line = line_of(live.pid());
    assert!(live_line.contains("waiting-for-debugger"), "{live_line}");
    assert!(
        live_line.contains("5678") && live_line.contains("connect"),
        "{live_line}"
    );
    let dead_line = line_of(dead.pid());
    assert!(dead_line.contains(" ended "), "{dead_line}");
}

#[test]
fn every_state_round_trips_through_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = Sleeper::spawn();
    let mut file = StatusFile::create(dir.path(), record(holder.pid(), 2, 5680)).expect("create");
    for state in SessionState::ALL {
        let reason = format!("because {state}");
        file.set_state(state, Some(&reason)).expect("set state");
        let report = status_json(dir.path());
        let s = session(&report, holder.pid());
        assert_eq!(s["state"], state.to_string(), "{s}");
        assert_eq!(s["recorded_state"], state.to_string(), "{s}");
        assert_eq!(s["holder"], "live", "{s}");
        assert_eq!(s["reason"], reason.as_str(), "{s}");
        let text = status_text(dir.path());
        assert!(text.contains(&state.to_string()), "{state}:\n{text}");
    }
}

#[test]
fn a_reused_pid_is_not_mistaken_for_the_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let other = Sleeper::spawn();
    let mut stale = record(other.pid(), 3, 5681);
    // The PID is alive, but the process that wrote the record started at another time.
    stale.start_time = Some(1);
    let _file = StatusFile::create(dir.path(), stale).expect("create");
    let report = status_json(dir.path());
    let s = session(&report, other.pid());
    assert_eq!(
        (s["state"].clone(), s["holder"].clone()),
        ("ended".into(), "dead".into())
    );
}

#[test]
fn a_dropped_status_file_leaves_no_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = Sleeper::spawn();
    let file = StatusFile::create(dir.path(), record(holder.pid(), 0, 5682)).expect("create");
    assert_eq!(
        status_json(dir.path())["sessions"].as_array().map(Vec::len),
        Some(1)
    );
    drop(file);
    assert_eq!(status_json(dir.path())["sessions"], Value::Array(vec![]));
    let text = status_text(dir.path());
    assert!(text.starts_with("no debug sessions"), "{text}");
}

#[test]
fn text_output_shows_the_age_of_the_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = Sleeper::spawn();
    let mut old = record(holder.pid(), 4, 5683);
    old.since -= 3_700; // in this state for 1h01m (1h02m if the test is slow)
    let _file = StatusFile::create(dir.path(), old).expect("create");
    let text = status_text(dir.path());
    assert!(
        text.contains(" 1h01m ") || text.contains(" 1h02m "),
        "{text}"
    );
    assert!(
        text.lines().next().is_some_and(|h| h.contains("SINCE")),
        "{text}"
    );
    let report = status_json(dir.path());
    let age = session(&report, holder.pid())["age_seconds"]
        .as_u64()
        .expect("age in seconds");
    assert!((3_700..3_760).contains(&age), "{age}");
}

#[test]
fn state_dir_comes_from_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = Sleeper::spawn();
    let _file = StatusFile::create(dir.path(), record(holder.pid(), 5, 5684)).expect("create");
    let out = agent()
        .args(["status", "--json"])
        .env("AMLX_STATE_DIR", dir.path())
        .output()
        .expect("agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["state_dir"], dir.path().to_string_lossy().as_ref());
    session(&report, holder.pid());
}

#[test]
fn unreadable_records_are_reported_not_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sessions = dir.path().join("sessions");
    std::fs::create_dir_all(&sessions).expect("dir");
    std::fs::write(sessions.join("broken.json"), "{").expect("write");
    let report = status_json(dir.path());
    let unreadable = report["unreadable"].as_array().expect("array");
    assert_eq!(unreadable.len(), 1, "{report:#}");
    assert!(
        unreadable[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("broken.json"))
    );
}

/// Anyone may put a file in a shared sessions directory, and the warning about an
/// unreadable one names it: a newline in the name printed a line of its own, which could
/// pass for one of the agent's (`…Z  INFO all good`). It is now escaped.
#[test]
fn an_unreadable_records_name_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sessions = dir.path().join("sessions");
    std::fs::create_dir_all(&sessions).expect("dir");
    let forged = "2026-01-01T00:00:00Z  INFO all good";
    std::fs::write(sessions.join(format!("a\n{forged}.json")), "{").expect("write");
    let out = crate::util::output_within(
        agent()
            .args(["status", "--state-dir"])
            .arg(dir.path())
            .env("NO_COLOR", "1"),
        crate::util::DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping"), "{stderr}");
    assert!(
        !stderr.lines().any(|line| line.starts_with(forged)),
        "{stderr}"
    );
    assert!(stderr.contains("a\\n2026"), "{stderr}");
}

#[test]
fn status_help_has_examples() {
    let out = agent()
        .args(["status", "--help"])
        .output()
        .expect("agent runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Examples:",
        "amlx-agent status --json",
        "--state-dir",
        "AMLX_STATE_DIR",
        "waiting-for-debugger",
    ] {
        assert!(
            help.contains(needle),
            "status --help lacks {needle}:\n{help}"
        );
    }
}

/// `status --config FILE` reads `[node] state_dir` like `exec` does; `--state-dir` and
/// `AMLX_STATE_DIR` still win over the file.
#[test]
fn state_dir_comes_from_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let other = dir.path().join("other");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[node]\nstate_dir = \"{}\"\n", state.display()),
    )
    .expect("write config");
    let holder = Sleeper::spawn();
    let _file = StatusFile::create(&state, record(holder.pid(), 2, 5690)).expect("create");
    // (extra arguments, environment, the directory that must be read, record found)
    let other_text = other.to_string_lossy().into_owned();
    let cases: [(&[&str], Vars<'_>, &Path, bool); 3] = [
        (&[], &[], &state, true),
        (&["--state-dir", &other_text], &[], &other, false),
        (&[], &[("AMLX_STATE_DIR", &other_text)], &other, false),
    ];
    for (extra, vars, read, found) in cases {
        let out = agent()
            .args(["status", "--json", "--config"])
            .arg(&config)
            .args(extra)
            .envs(vars.iter().copied())
            .output()
            .expect("agent runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?} {vars:?}: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(report["state_dir"], read.to_string_lossy().as_ref());
        assert_eq!(report["searched"], serde_json::json!([read]));
        let pids: Vec<&Value> = report["sessions"]
            .as_array()
            .expect("array")
            .iter()
            .map(|s| &s["pid"])
            .collect();
        assert_eq!(
            pids.contains(&&Value::from(holder.pid())),
            found,
            "{extra:?} {vars:?}: {report:#}"
        );
    }
}

/// A step running as another user records itself where that user can write (here
/// `/tmp/amlx-<uid>`, or `/run/amlx` when its sessions directory is shared); root's
/// `status` without a state directory finds it. Needs root to switch users (skipped
/// otherwise).
#[test]
fn status_finds_the_sessions_of_every_user() {
    const NOBODY: &str = "65534";
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a step as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    let gate = dir.path().join("gate");
    // Another user's own candidate directory, made here when no earlier run left one, so
    // the search has more than one place to read whatever ran on this machine before.
    let own = std::path::Path::new("/tmp/amlx-65534");
    let made_own = !own.exists();
    if made_own {
        std::fs::create_dir(own).expect("mkdir /tmp/amlx-65534");
        nix::unistd::chown(
            own,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .expect("chown /tmp/amlx-65534");
    }
    let (start, end) = crate::util::free_port_range(2);
    // The step waits for the gate, bounded (20 s).
    let step = format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        gate.display()
    );
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(crate::util::agent_bin())
        .args(["exec", "--debug", "--mode", "direct", "--inject", "none"])
        .arg("--lock-dir")
        .arg(dir.path())
        .args(["--port-range", &format!("{start}-{end}")])
        .args(["--", "sh", "-c", &step]);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("AMLX_") || name == "XDG_RUNTIME_DIR" {
            cmd.env_remove(&key);
        }
    }
    let mut step_child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    let pid = step_child.id();
    let report = crate::util::wait_for("the other user's session", crate::util::DEADLINE, || {
        let out = agent()
            .env_remove("XDG_RUNTIME_DIR")
            .args(["status", "--json"])
            .output()
            .expect("agent runs");
        let report: Value = serde_json::from_slice(&out.stdout).ok()?;
        let found = report["sessions"]
            .as_array()?
            .iter()
            .any(|s| s["pid"] == pid && s["state"] == "waiting-for-debugger");
        found.then_some(report)
    });
    std::fs::write(&gate, "").expect("open the gate");
    let status = crate::util::wait_bounded(&mut step_child);
    let mut stderr = String::new();
    if let Some(mut pipe) = step_child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(status.success(), "{stderr}");
    let searched = report["searched"].as_array().expect("searched");
    if made_own {
        let _ = std::fs::remove_dir_all(own);
    }
    assert!(
        searched.iter().any(|dir| dir == "/tmp/amlx-65534"),
        "every candidate is read: {report:#}"
    );
}
