//! Integration tests: `amlx-agent run` on the local target — the user's own step in a
//! project folder, VS Code (the test suite's real DAP client) started on the
//! configurations `run` wrote, the step's exit code passed through — plus named targets
//! and two runs at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::demo::{Captured, MARKER_VAR, new_marker, position, processes_with};
use crate::session::harness::{Attach, DapClient, SESSION_DEADLINE};
use crate::util;

/// The user's step: a breakpoint line, a local to read there, and its own exit code.
const STEP: &str = "import os, sys\n\
rank = int(os.environ.get('AMLX_RANK', '0'))\n\
value = rank * 10 + 7\n\
sys.stdout.write(f'user step rank {rank} value {value}\\n'); sys.stdout.flush()  # breakpoint\n\
sys.exit(3)\n";
/// The line of `# breakpoint` in [`STEP`].
pub const STEP_LINE: u32 = 4;
/// The step's own exit code, which `run` returns.
pub const STEP_EXIT: i32 = 3;

/// A temporary project folder holding step.py.
pub fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().canonicalize().expect("canonical project");
    std::fs::write(path.join("step.py"), STEP).expect("write step.py");
    (dir, path)
}

/// `amlx-agent run` in `project` with per-test lock and state directories, `mpiexec` on
/// PATH, and `marker` in its environment (so leftovers can be found).
pub fn run_in(project: &Path, state: &Path, marker: &str) -> Command {
    let mut path = vec![util::python_scripts_dir()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path: OsString = std::env::join_paths(path).expect("PATH entries join");
    let mut cmd = util::agent();
    cmd.current_dir(project)
        .env("PATH", path)
        .env("AMLX_LOCK_DIR", state.join("ports"))
        .env("AMLX_STATE_DIR", state.join("state"))
        .env(MARKER_VAR, marker)
        .arg("run");
    std::fs::create_dir_all(state.join("ports")).expect("lock dir");
    cmd
}

/// The attach configurations of the launch.json `run` wrote, and the compound's names.
pub fn launch_configs(project: &Path) -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(project.join(".vscode/launch.json"))
        .expect("run wrote .vscode/launch.json");
    // Its only comments are whole `//` lines of its own.
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let doc: Value = serde_json::from_str(&plain).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let configs = doc["configurations"]
        .as_array()
        .expect("configurations")
        .clone();
    let compound = doc["compounds"][0]["configurations"]
        .as_array()
        .expect("a compound")
        .clone();
    (configs, compound)
}

/// Starts the DAP client on every configuration, as VS Code starts the compound.
pub fn start_vscode(configs: &[Value], project: &Path) -> DapClient {
    let sessions: Vec<Attach> = configs
        .iter()
        .map(|config| Attach {
            attach: config.clone(),
            line: STEP_LINE,
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        })
        .collect();
    DapClient::start_in(&sessions, &project.join("step.py"), "value")
}

/// One run, started; its output captured.
pub struct Running {
    pub child: std::process::Child,
    pub output: Captured,
    marker: String,
}

impl Running {
    pub fn start(cmd: &mut Command, marker: String) -> Running {
        let (child, output) = Captured::spawn(cmd);
        Running {
            child,
            output,
            marker,
        }
    }

    pub fn wait_instructions(&self) {
        util::wait_for("run's attach instructions", SESSION_DEADLINE, || {
            self.output.stdout().contains("Run and Debug").then_some(())
        });
    }

    pub fn all(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.output.stdout(),
            self.output.stderr()
        )
    }

    /// The exit code, once nothing it started is left.
    pub fn finish(mut self) -> (i32, String) {
        let status = util::wait_within(&mut self.child, SESSION_DEADLINE);
        let all = self.all();
        let left = processes_with(&self.marker);
        assert!(left.is_empty(), "left running: {left:?}\n{all}");
        (status.code().unwrap_or(-1), all)
    }
}

/// Debugs `ranks` of `count` processes of a run in a fresh project; returns the outcome.
fn debug_a_run(count: u32, ranks: &str, debugged: &[u32]) {
    let (_dir, project) = project();
    let state = tempfile::tempdir().expect("tempdir");
    let (vscode_port, _) = util::free_port_range(4);
    let marker = new_marker();
    let run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "--ranks-count",
            &count.to_string(),
            "--ranks",
            ranks,
            "--attach-timeout",
            "60s",
            "--vscode-port",
            &vscode_port.to_string(),
            "--",
            "python3",
            "step.py",
        ]),
        marker,
    );
    run.wait_instructions();
    let (configs, compound) = launch_configs(&project);
    assert_eq!(configs.len(), debugged.len(), "{}", run.all());
    assert_eq!(compound.len(), debugged.len(), "{}", run.all());
    let client = start_vscode(&configs, &project);
    let outcomes = client.finish(debugged.len());
    let stdout = run.output.stdout();
    for (outcome, rank) in outcomes.iter().zip(debugged) {
        assert!(outcome.ok, "rank {rank}: {outcome:?}\n{}", run.all());
        assert_eq!(outcome.line, Some(STEP_LINE), "rank {rank}\n{}", run.all());
        let want = (rank * 10 + 7).to_string();
        assert_eq!(outcome.value.as_deref(), Some(want.as_str()), "rank {rank}");
    }
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "run returns the step's exit code\n{all}");
    for rank in 0..count {
        position(
            &all,
            &format!("user step rank {rank} value {}", rank * 10 + 7),
        );
    }
    for rank in debugged {
        position(
            &stdout,
            &format!("the debug connection of rank {rank} went to"),
        );
    }
    let attached = if debugged.len() == 1 {
        format!("VS Code attached to rank {}", debugged[0])
    } else {
        let list: Vec<String> = debugged.iter().map(u32::to_string).collect();
        format!("VS Code attached to ranks {}", list.join(", "))
    };
    position(
        &all,
        &format!("amlx-agent run: {attached}; the step exited {STEP_EXIT}"),
    );
}

#[test]
fn run_debugs_the_users_step_on_this_machine_and_returns_its_exit_code() {
    debug_a_run(1, "0", &[0]);
}

#[test]
fn run_with_four_ranks_attaches_four_sessions_through_the_compound() {
    debug_a_run(4, "all", &[0, 1, 2, 3]);
}

#[test]
fn two_runs_at_once_get_their_own_vscode_ports_and_both_attach() {
    let state = tempfile::tempdir().expect("tempdir");
    let (vscode_port, _) = util::free_port_range(4);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (dir, project) = project();
        let marker = new_marker();
        let run = Running::start(
            run_in(&project, state.path(), &marker).args([
                "--attach-timeout",
                "60s",
                "--vscode-port",
                &vscode_port.to_string(),
                "--",
                "python3",
                "step.py",
            ]),
            marker,
        );
        run.wait_instructions();
        runs.push((dir, project, run));
    }
    let ports: Vec<u64> = runs
        .iter()
        .map(|(_, project, _)| {
            launch_configs(project).0[0]["listen"]["port"]
                .as_u64()
                .expect("port")
        })
        .collect();
    assert_eq!(
        ports,
        [u64::from(vscode_port), u64::from(vscode_port) + 1],
        "the second run skips the port the first holds"
    );
    position(
        &runs[1].2.output.stdout(),
        &format!(
            "VS Code port {vscode_port} is taken by another run; using {}",
            vscode_port + 1
        ),
    );
    let clients: Vec<DapClient> = runs
        .iter()
        .map(|(_, project, _)| start_vscode(&launch_configs(project).0, project))
        .collect();
    for (client, (_, _, run)) in clients.into_iter().zip(&runs) {
        let outcome = &client.finish(1)[0];
        assert!(
            outcome.ok && outcome.line == Some(STEP_LINE),
            "{outcome:?}\n{}",
            run.all()
        );
    }
    for (_dir, _, run) in runs {
        let (code, all) = run.finish();
        assert_eq!(code, STEP_EXIT, "{all}");
        position(&all, "VS Code attached to rank 0");
    }
}

#[test]
fn a_named_target_from_the_project_file_sets_the_ranks() {
    let (_dir, project) = project();
    std::fs::create_dir(project.join(".amlx")).expect("mkdir .amlx");
    std::fs::write(
        project.join(".amlx/targets.toml"),
        "# this machine, two ranks, both debugged\n[targets.pair]\nkind = \"local\"\n\
         ranks_count = 2\nranks = \"all\"\n",
    )
    .expect("write targets.toml");
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    // Not the default 5678: whatever listens there (a developer's VS Code) would attach.
    let (vscode_port, _) = util::free_port_range(4);
    let run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "-t",
            "pair",
            "--attach-timeout",
            "2s",
            "--vscode-port",
            &vscode_port.to_string(),
            "--",
            "python3",
            "step.py",
        ]),
        marker,
    );
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "{all}");
    position(
        &all,
        "2 processes under mpiexec; ranks 0, 1 are the debug targets",
    );
    position(
        &all,
        "amlx-agent run: nobody attached to ranks 0, 1 within 2s, so it ran on without a \
         debugger; the step exited 3",
    );
    let (configs, _) = launch_configs(&project);
    assert_eq!(configs.len(), 2);
}

/// A stop signal while the target is being prepared (here `docker version` against an
/// engine that accepts the connection and never answers): `run` used to catch signals
/// only once the step ran, so SIGTERM ended it at once and left the docker client it
/// waited on running, orphaned, for as long as that client waits (it has no bound of its
/// own). Now the command is stopped with it, and `run` exits 128 + the signal.
#[test]
fn a_stop_signal_while_the_target_is_prepared_stops_what_it_ran() {
    use nix::sys::signal::Signal;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let engine = format!("tcp://{}", silent.local_addr().expect("address"));
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let (_dir, project) = project();
        let state = tempfile::tempdir().expect("tempdir");
        let marker = new_marker();
        let mut cmd = run_in(&project, state.path(), &marker);
        cmd.env("DOCKER_HOST", &engine).args([
            "-t",
            "docker",
            "--image",
            "amlx-nothing",
            "--",
            "python3",
            "step.py",
        ]);
        let run = Running::start(&mut cmd, marker.clone());
        let pid = run.child.id();
        util::wait_for("run's docker client", SESSION_DEADLINE, || {
            util::children_of(pid)
                .into_iter()
                .any(|(child, _)| util::command_line(child).contains("docker"))
                .then_some(())
        });
        let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
        nix::sys::signal::kill(raw, signal).expect("signal run");
        let (code, all) = run.finish();
        assert_eq!(code, 128 + signal as i32, "{signal}: {all}");
        assert!(all.contains("before the step started"), "{signal}: {all}");
    }
}

/// `run` of a step that ignores SIGTERM and sleeps, once it said `step-<word>` (its own
/// line, not the command's echo in run's banner, which names it in pieces): the
/// project and state folders (kept until the caller is done) and the run.
fn run_a_step_ignoring_sigterm(word: &str) -> (tempfile::TempDir, tempfile::TempDir, Running) {
    let (dir, project) = project();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let mut cmd = run_in(&project, state.path(), &marker);
    cmd.args(["--attach-timeout", "1s", "--", "python3", "-c"])
        .arg(format!(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); \
         print('step-' + '{word}', flush=True); time.sleep(600)"
        ));
    let run = Running::start(&mut cmd, marker);
    util::wait_for("the step to ignore SIGTERM", SESSION_DEADLINE, || {
        run.output
            .stdout()
            .contains(&format!("step-{word}"))
            .then_some(())
    });
    (dir, state, run)
}

/// Sends `run` `signal`, waits until it says it is stopping the step, sends it again:
/// run's exit code, everything it printed, and how long it took after the second.
fn stop_twice(run: Running, signal: nix::sys::signal::Signal) -> (i32, String, Duration) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(run.child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, signal).expect("first signal");
    util::wait_for("run to stop the step", SESSION_DEADLINE, || {
        run.output
            .stdout()
            .contains("again to kill it now")
            .then_some(())
    });
    let second = std::time::Instant::now();
    nix::sys::signal::kill(pid, signal).expect("second signal");
    let (exit, all) = run.finish();
    (exit, all, second.elapsed())
}

/// A step that ignores the SIGTERM a Ctrl-C sends it: a second Ctrl-C kills it at once
/// instead of leaving the user to wait out the grace in silence (the first line says
/// both), and the closing line tells the step's own end from what `run` exits with. A
/// second SIGHUP is no such request (a closing terminal sends two): the grace runs out.
#[test]
fn a_second_ctrl_c_kills_a_step_that_ignores_the_first() {
    use nix::sys::signal::Signal;
    // (the signal sent twice, whether the second kills at once, run's exit code)
    for (signal, at_once, code) in [(Signal::SIGINT, true, 130), (Signal::SIGHUP, false, 129)] {
        let (_project, _state, run) = run_a_step_ignoring_sigterm("ignores-term");
        let (exit, all, took) = stop_twice(run, signal);
        assert_eq!(exit, code, "{signal}: {all}");
        assert_eq!(
            all.contains("again: killing the step now"),
            at_once,
            "{signal}: {all}"
        );
        if at_once {
            assert!(
                took < Duration::from_secs(4),
                "{signal}: waited {took:?}\n{all}"
            );
        } else {
            // The grace (5 s from the first signal) ran out first.
            assert!(
                took > Duration::from_secs(3),
                "{signal}: killed after {took:?}\n{all}"
            );
        }
        assert!(
            all.contains(&format!(
                "the step exited 137, and amlx-agent run exits {code}"
            )),
            "{signal}: {all}"
        );
    }
}

/// A step the kernel does not let go after SIGKILL (uninterruptible sleep on a hung
/// filesystem or GPU driver; here a tracer that never collects its exit, which holds it
/// the same way): `run` waited for it for ever after a second Ctrl-C. Now it gives the
/// step a bounded time after SIGKILL, says it leaves it behind, and exits 130.
#[test]
fn a_step_that_survives_sigkill_is_left_behind_within_a_bound() {
    use nix::sys::signal::Signal;
    let (_project, _state, run) = run_a_step_ignoring_sigterm("held-by-a-tracer");
    let step = util::children_of(run.child.id())
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|&pid| util::command_line(pid).contains("held-by-a-tracer"))
        .expect("the step is run's child");
    let step = nix::unistd::Pid::from_raw(i32::try_from(step).expect("pid fits"));
    // This thread becomes the step's tracer and never collects its exit until the end.
    nix::sys::ptrace::seize(step, nix::sys::ptrace::Options::empty()).expect(
        "trace the step (this test needs ptrace of a process of the same user: Yama's \
         ptrace_scope 0 or 1, or CAP_SYS_PTRACE)",
    );
    let (exit, all, took) = stop_twice(run, Signal::SIGINT);
    // Release the step: collect its exit as its tracer; its parent (gone) is init's now.
    let _ = nix::sys::wait::waitpid(step, Some(nix::sys::wait::WaitPidFlag::__WALL));
    assert_eq!(exit, 130, "{all}");
    assert!(
        all.contains("has not ended 2s after SIGKILL") && all.contains("leaving it"),
        "{all}"
    );
    assert!(
        all.contains(
            "the step had not ended after SIGKILL and was left behind, and amlx-agent run exits 130"
        ),
        "{all}"
    );
    // 2 s for the step after SIGKILL, and the relay's stop; the step is not killed again
    // as its own leftover.
    assert!(took < Duration::from_secs(6), "took {took:?}\n{all}");
    assert!(!all.contains("outlived the step"), "{all}");
}

/// `run`'s logging flags reach the step's agent: with `-qq` it writes no info lines, and
/// with `--log-format json` every line it writes is JSON. Both used to be run's alone.
/// (And with nobody attaching, its lines give the laptop listener's reason.)
#[test]
fn the_steps_agent_logs_as_run_was_told() {
    for (flags, check) in [
        (&["-qq"][..], "quiet"),
        (&["--log-format", "json"][..], "json"),
    ] {
        let (_dir, project) = project();
        let state = tempfile::tempdir().expect("tempdir");
        let marker = new_marker();
        let mut cmd = run_in(&project, state.path(), &marker);
        cmd.args(flags)
            .args(["--attach-timeout", "1s", "--", "python3", "-c", "pass"]);
        let run = Running::start(&mut cmd, marker);
        let (code, all) = run.finish();
        assert_eq!(code, 0, "{all}");
        let stderr: Vec<&str> = all
            .split_once("\nstderr:\n")
            .map_or("", |(_, e)| e)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        match check {
            "quiet" => assert!(
                !stderr
                    .iter()
                    .any(|l| l.contains("INFO") || l.contains("WARN")),
                "{flags:?}: {all}"
            ),
            _ => {
                assert!(!stderr.is_empty(), "{flags:?}: no log lines at all: {all}");
                // Nobody attached because VS Code was not listening: said as the laptop's
                // listener said it, not guessed at between a wrong port and no debugger.
                assert!(all.contains("VS Code is not listening"), "{all}");
                for line in &stderr {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("{flags:?}: not JSON ({e}): {line}\n{all}"));
                }
            }
        }
    }
}

/// `--ranks-count 4` on a machine whose PATH has no mpiexec: refused before anything
/// starts, naming the fix. It ran one process and exited 0, as if the job had been the
/// four ranks asked for (the demo still falls back to one process, and says so).
#[test]
fn ranks_asked_for_without_mpiexec_are_refused() {
    let (_dir, project) = project();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let bare = tempfile::tempdir().expect("a PATH without mpiexec");
    let python = util::python_scripts_dir().join("python3");
    std::os::unix::fs::symlink(&python, bare.path().join("python3")).expect("python3");
    let mut cmd = run_in(&project, state.path(), &marker);
    cmd.env("PATH", bare.path())
        .args(["--ranks-count", "4", "--", "python3", "step.py"]);
    let run = Running::start(&mut cmd, marker);
    let (code, all) = run.finish();
    assert_eq!(code, 1, "{all}");
    assert!(
        all.contains(
            "4 ranks (--ranks-count, or ranks_count in the target's settings) run under mpiexec, and this machine's PATH has no mpiexec"
        ),
        "{all}"
    );
    assert!(!all.contains("user step rank"), "the step ran:\n{all}");
}

/// Bad targets and bad `run` input: a clear error naming the cause, exit 1, and the step
/// never started.
#[test]
fn bad_targets_and_bad_input_fail_before_anything_starts() {
    /// Why, the targets file, run's options, the command, what stderr says.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
    );
    const STEP: &[&str] = &["python3", "step.py"];
    let cases: [Case; 11] = [
        (
            "an image docker would read as an option",
            None,
            &["-t", "docker", "--image=-v/:/host"],
            STEP,
            "image \"-v/:/host\": not an image name: it must not start with '-'",
        ),
        (
            "malformed targets file",
            Some("[targets.vm]\nkind = \"ssh\"\nhots = \"x\"\n"),
            &["-t", "vm"],
            STEP,
            ".amlx/targets.toml:3: unknown key targets.vm.hots",
        ),
        (
            "a bad value names its line and key",
            Some("[targets.vm]\n\nkind = \"ssh\"\nhost = \"x\"\nport = 0\n"),
            &["-t", "vm"],
            STEP,
            ".amlx/targets.toml:5: targets.vm.port: port 0 is not an SSH port",
        ),
        (
            "unknown target name",
            Some("[targets.vm]\nkind = \"local\"\n"),
            &["-t", "gpu"],
            STEP,
            "unknown target \"gpu\": expected local, docker, ssh://[USER@]HOST[:PORT] or a name; named targets: vm",
        ),
        (
            "rank past the processes",
            None,
            &["--ranks", "3"],
            STEP,
            "--ranks 3: rank 3 is past the 1 process(es)",
        ),
        (
            "a policy word run cannot use",
            None,
            &["--ranks", "master"],
            STEP,
            "list the ranks to debug",
        ),
        (
            "image on the local target",
            None,
            &["--image", "x"],
            STEP,
            "--image is for docker and ssh targets",
        ),
        (
            "bad ssh address",
            None,
            &["-t", "ssh://-oProxyCommand=x"],
            STEP,
            "bad ssh address",
        ),
        (
            "the step given under mpiexec: run starts the ranks itself",
            None,
            &[],
            &["mpiexec", "-n", "2", "python3", "step.py"],
            "give the step alone and the number of ranks, for example `amlx-agent run --ranks-count 4",
        ),
        (
            "mpirun by its path",
            None,
            &[],
            &["/usr/bin/mpirun", "-np", "2", "python3", "step.py"],
            "`mpirun` starts the job's ranks",
        ),
        (
            "torchrun's module starts workers the agent would not reach",
            None,
            &[],
            &[
                "python3",
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "step.py",
            ],
            "`torchrun` starts the job's workers itself",
        ),
    ];
    for (why, targets, args, command, message) in cases {
        let (_dir, project) = project();
        if let Some(text) = targets {
            std::fs::create_dir(project.join(".amlx")).expect("mkdir");
            std::fs::write(project.join(".amlx/targets.toml"), text).expect("write");
        }
        let state = tempfile::tempdir().expect("tempdir");
        let out = util::output_bounded(
            run_in(&project, state.path(), &new_marker())
                .args(args)
                .arg("--")
                .args(command),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{why}: {stderr}");
        assert!(stderr.contains(message), "{why}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("user step"),
            "{why}: the step ran"
        );
        assert!(
            !project.join(".vscode").exists(),
            "{why}: launch.json written"
        );
    }
}

#[test]
fn targets_list_shows_where_each_is_defined_and_reports_an_unreachable_one() {
    let (_dir, project) = project();
    std::fs::create_dir(project.join(".amlx")).expect("mkdir");
    std::fs::write(
        project.join(".amlx/targets.toml"),
        "[targets.here]\nkind = \"local\"\n\n[targets.box]\nkind = \"docker\"\nimage = \"train:1\"\n",
    )
    .expect("write");
    let out = util::output_bounded(
        util::agent()
            .current_dir(&project)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .args(["targets", "list"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable target: exit 1\n{stdout}"
    );
    let file = project.join(".amlx/targets.toml");
    position(
        &stdout,
        &format!(
            "here  local    ({}:1)  reachable: this machine",
            file.display()
        ),
    );
    position(
        &stdout,
        &format!(
            "box  docker  train:1  ({}:4)  UNREACHABLE: the Docker engine is unreachable",
            file.display()
        ),
    );
    let listed = util::output_bounded(util::agent().current_dir(&project).args([
        "targets",
        "list",
        "--no-check",
    ]));
    assert!(listed.status.success());
}

#[test]
fn run_help_teaches_targets_and_examples() {
    let out = util::output_bounded(util::agent().args(["run", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--target",
        "--image",
        "--ranks-count",
        "--ranks",
        "--attach-timeout",
        "--vscode-port",
        "ssh://[USER@]HOST[:PORT]",
        ".amlx/targets.toml",
        "Examples:",
    ] {
        assert!(help.contains(needle), "run --help lacks {needle}:\n{help}");
    }
}

/// `--external-relay`: a `relay serve` of the user's settings instead of the in-process
/// relay carries the session; a key without Listen rights is refused before the step
/// starts, saying why.
#[test]
fn an_external_relay_from_the_settings_carries_the_session_and_a_send_only_key_is_refused() {
    use crate::relay::harness::{KEY_BOTH, KEY_SEND, Relay};
    let relay = Relay::start();
    let (_dir, project) = project();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let vscode_port = util::free_port_range(1).0;
    let run = Running::start(
        run_in(&project, state.path(), &marker)
            .env(
                "AMLX_RELAY_CONNECTION_STRING",
                relay.connection_string(KEY_BOTH, "ext"),
            )
            .env("AMLX_RELAY_INSECURE_WS", "true")
            .args([
                "--external-relay",
                "--attach-timeout",
                "60s",
                "--vscode-port",
                &vscode_port.to_string(),
                "--",
                "python3",
                "step.py",
            ]),
        marker,
    );
    run.wait_instructions();
    position(
        &run.output.stdout(),
        "(from your relay settings), Hybrid Connection ext",
    );
    let (configs, _) = launch_configs(&project);
    let outcome = &start_vscode(&configs, &project).finish(1)[0];
    assert!(
        outcome.ok && outcome.line == Some(STEP_LINE),
        "{outcome:?}\n{}",
        run.all()
    );
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "{all}");
    position(
        &all,
        "amlx-agent run: VS Code attached to rank 0; the step exited 3",
    );
    assert!(!all.contains("SharedAccessKey"), "{all}");

    let (_refused_dir, refused) = self::project();
    let out = util::output_bounded(
        run_in(&refused, state.path(), &new_marker())
            .env(
                "AMLX_RELAY_CONNECTION_STRING",
                relay.connection_string(KEY_SEND, "ext"),
            )
            .env("AMLX_RELAY_INSECURE_WS", "true")
            .args(["--external-relay", "--", "python3", "step.py"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    position(&stderr, "the laptop listener on the relay at ws://");
    position(&stderr, "403");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("user step"),
        "the step ran"
    );

    let out = util::output_bounded(
        run_in(&refused, state.path(), &new_marker())
            .env_remove("AMLX_RELAY_CONNECTION_STRING")
            .args(["--external-relay", "--", "python3", "step.py"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    position(
        &stderr,
        "--external-relay needs the relay's settings: no relay credentials",
    );
}

/// `run --post-mortem`: rank 0 waits for VS Code as usual; rank 1 (hooked) crashes and
/// its post-mortem session reaches VS Code on the one more port "amlx: post-mortem (any
/// rank)" listens on, stopped where it raised; the closing line says so.
#[test]
fn run_with_post_mortem_hands_the_crashed_rank_to_vscode() {
    const CRASHING_STEP: &str = "import os, sys\n\
rank = int(os.environ.get('AMLX_RANK', '0'))\n\
value = rank * 10 + 7\n\
sys.stdout.write(f'user step rank {rank} value {value}\\n'); sys.stdout.flush()  # breakpoint\n\
if rank == 1:\n    raise ValueError(f'rank {rank} failed with value {value}')\n\
sys.exit(3)\n";
    const RAISE_LINE: u32 = 6;
    let (_dir, project) = project();
    std::fs::write(project.join("step.py"), CRASHING_STEP).expect("write step.py");
    let state = tempfile::tempdir().expect("tempdir");
    let (vscode_port, _) = util::free_port_range(4);
    let marker = new_marker();
    let run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "--ranks-count",
            "2",
            "--ranks",
            "0",
            "--post-mortem",
            "--attach-timeout",
            "60s",
            "--vscode-port",
            &vscode_port.to_string(),
            "--",
            "python3",
            "step.py",
        ]),
        marker,
    );
    run.wait_instructions();
    let (configs, compound) = launch_configs(&project);
    assert_eq!(configs.len(), 2, "{}", run.all());
    assert_eq!(
        compound.len(),
        1,
        "the compound starts the ranks' configurations"
    );
    assert_eq!(configs[1]["name"], "amlx: post-mortem (any rank)");
    let sessions = [
        Attach {
            attach: configs[0].clone(),
            line: STEP_LINE,
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        },
        Attach {
            attach: configs[1].clone(),
            line: RAISE_LINE,
            hold_until_file: None,
            post_mortem: true,
            terminate: false,
        },
    ];
    let client = DapClient::start_in(&sessions, &project.join("step.py"), "value");
    let outcomes = client.finish(2);
    for outcome in &outcomes {
        assert!(outcome.ok, "{outcome:?}\n{}", run.all());
    }
    assert_eq!(outcomes[0].line, Some(STEP_LINE));
    assert_eq!(outcomes[1].line, Some(RAISE_LINE), "{}", run.all());
    assert_eq!(outcomes[1].value.as_deref(), Some("17"));
    assert!(
        outcomes[1]
            .exception
            .as_deref()
            .is_some_and(|e| e.contains("rank 1 failed with value 17")),
        "{:?}",
        outcomes[1]
    );
    let (code, all) = run.finish();
    assert_ne!(code, 0, "{all}");
    position(
        &all,
        "the debug connection of a crashed rank (post-mortem) went to",
    );
    position(
        &all,
        "rank 1 crashed and VS Code attached to its post-mortem session",
    );
    position(&all, "ValueError: rank 1 failed with value 17");
}
