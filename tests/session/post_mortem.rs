//! Post-mortem sessions (`exec --post-mortem`): the process that raises, and only that
//! one, stops at the raising frame for a real DAP client behind `relay listen`, then exits
//! exactly as Python would have; nobody attaching changes nothing a log reader or a
//! launcher can see (exit code and stderr byte for byte).

use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::harness::{Attach, DapClient, DeveloperSide, SESSION_DEADLINE, free_port, port_range};
use super::mpi::Job;
use crate::relay::harness::Lines;
use crate::util;

/// The line of `raise ValueError(...)` in tests/session/crash.py.
const RAISE_LINE: u32 = 29;
/// The local variable of that frame the tests read.
const VARIABLE: &str = "scale";

fn crash_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/session/crash.py")
        .canonicalize()
        .expect("tests/session/crash.py exists")
}

fn session_dir() -> PathBuf {
    crash_py().parent().expect("a directory").to_owned()
}

/// The step without the agent: what every hooked run must reproduce.
fn plain(python_args: &[&str], env: &[(&str, &str)]) -> Output {
    util::output_within(
        Command::new("python3")
            .args(python_args)
            .envs(env.iter().copied())
            .current_dir(session_dir()),
        SESSION_DEADLINE,
    )
}

/// The step under `exec` with `exec_args`, pointed at `developer`'s relay.
fn hooked(
    developer: &DeveloperSide,
    locks: &Path,
    exec_args: &[&str],
    python_args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    util::output_within(
        developer
            .agent(locks)
            .arg("exec")
            .args(exec_args)
            .args(["--", "python3"])
            .args(python_args)
            .envs(env.iter().copied())
            .current_dir(session_dir()),
        SESSION_DEADLINE,
    )
}

/// Nobody attaches: each shape of crash exits with Python's code and stderr, byte for
/// byte; the session is announced and times out on stdout. Without `--post-mortem`
/// nothing is hooked; a step that does not crash or only exits is left alone.
#[test]
fn nobody_attaches_and_the_process_exits_exactly_as_without_the_agent() {
    let developer = DeveloperSide::relay_only("debug");
    let locks = tempfile::tempdir().expect("tempdir");
    let crash = crash_py();
    let crash = crash.to_str().expect("a UTF-8 path");
    let code = "exec(compile(open('crash.py').read(), 'crash.py', 'exec'))";
    // A script that does not compile: Python reports it without a traceback header.
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken = scratch.path().join("broken.py");
    std::fs::write(&broken, "x = 1\nif x:\nprint(x)\n").expect("write broken.py");
    let broken = broken.to_str().expect("utf-8");
    // What Python runs another way than a script's source: a directory and a zip with
    // __main__.py (both crash through crash.py), a script that is not there.
    let app = scratch.path().join("app");
    std::fs::create_dir(&app).expect("mkdir app");
    let main = format!(
        "import sys; sys.path.insert(0, {:?}); import crash\n",
        session_dir()
    );
    std::fs::write(app.join("__main__.py"), &main).expect("write __main__.py");
    let app = app.to_str().expect("utf-8");
    let zip = scratch.path().join("app.pyz");
    let zipped = util::output_bounded(
        Command::new("python3")
            .args(["-m", "zipapp", app, "-o"])
            .arg(&zip),
    );
    assert!(zipped.status.success(), "{zipped:?}");
    let zip = zip.to_str().expect("utf-8");
    let missing = scratch.path().join("missing.py");
    let missing = missing.to_str().expect("utf-8");
    let post_mortem = ["--post-mortem", "--post-mortem-timeout", "3s"];
    /// (what, exec options, python args, env, a session is expected)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        bool,
    );
    let cases: &[Case<'_>] = &[
        ("a script", &post_mortem, &[crash], &[], true),
        ("a relative script", &post_mortem, &["crash.py"], &[], true),
        (
            "a script path through ..",
            &post_mortem,
            &["./../session/crash.py"],
            &[],
            true,
        ),
        (
            "a directory with __main__.py",
            &post_mortem,
            &[app],
            &[],
            false,
        ),
        ("a zip app", &post_mortem, &[zip], &[], false),
        (
            "a script that is not there",
            &post_mortem,
            &[missing],
            &[],
            false,
        ),
        ("a module", &post_mortem, &["-m", "crash"], &[], true),
        ("code", &post_mortem, &["-c", code], &[], true),
        (
            "a thread",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "thread")],
            true,
        ),
        (
            "sys.exit(3)",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "exit")],
            false,
        ),
        (
            "a script that does not compile",
            &post_mortem,
            &[broken],
            &[],
            false,
        ),
        (
            "an exception without text",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "unprintable")],
            true,
        ),
        (
            "an exception whose str() exits",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "str-exits")],
            true,
        ),
        (
            "a handled exception reported through sys.excepthook",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "handled")],
            false,
        ),
        (
            "the same in a worker thread",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "handled-thread")],
            false,
        ),
        (
            "the same in an atexit handler",
            &post_mortem,
            &[crash],
            &[("CRASH_IN", "handled-atexit")],
            false,
        ),
        (
            "an unhandled KeyboardInterrupt, threading not imported",
            &post_mortem,
            &[
                "-c",
                "print('working', flush=True); raise KeyboardInterrupt",
            ],
            &[],
            false,
        ),
        (
            "no crash",
            &post_mortem,
            &[crash],
            &[("CRASH_RANKS", "5")],
            false,
        ),
        ("no --post-mortem", &[], &[crash], &[], false),
        (
            "AMLX_POST_MORTEM=off",
            &[],
            &[crash],
            &[("AMLX_POST_MORTEM", "off")],
            false,
        ),
    ];
    for (what, exec_args, python_args, env, session) in cases {
        let want = plain(python_args, env);
        let got = hooked(&developer, locks.path(), exec_args, python_args, env);
        let stdout = String::from_utf8_lossy(&got.stdout);
        let context = format!(
            "{what}:\nstdout:\n{stdout}\nstderr:\n{}\nwithout the agent:\n{}",
            String::from_utf8_lossy(&got.stderr),
            String::from_utf8_lossy(&want.stderr)
        );
        assert_eq!(got.status.code(), want.status.code(), "{context}");
        assert_eq!(got.status.signal(), want.status.signal(), "{context}");
        assert_eq!(got.stderr, want.stderr, "stderr differs: {context}");
        assert_eq!(
            stdout.contains("post-mortem session on host"),
            *session,
            "{context}"
        );
        if *session {
            assert!(stdout.contains("crashed: "), "{context}");
            assert!(
                stdout.contains("debug session timed-out: no debugger attached within 3s"),
                "{context}"
            );
        }
    }
}

/// `mpiexec -n 4`, rank 2 raises: VS Code (listening behind `relay listen` for whichever
/// rank crashes) stops at the raising line, reads a local and the message, detaches; rank
/// 2 exits 1 with Python's traceback, the other ranks finish.
#[test]
fn the_rank_that_raises_stops_at_the_raising_frame_under_mpiexec() {
    let mut developer = DeveloperSide::relay_only("debug");
    let vscode_port = free_port();
    let client = DapClient::start_in(
        &[Attach::listen(vscode_port).post_mortem()],
        &crash_py(),
        VARIABLE,
    );
    client.wait_listening(vscode_port);
    let (base, _, range) = port_range(4);
    // One forward: `relay listen` hands every port name to it (the rank that crashes is
    // not known in advance), as docs/post-mortem.md has it.
    developer.listen_raw(&["--forward", &format!("any=127.0.0.1:{vscode_port}")]);
    let locks = tempfile::tempdir().expect("tempdir");
    let env = [("CRASH_RANKS", "2")];
    let mut job = Job::start_step(
        &developer,
        locks.path(),
        &["--post-mortem", "--port-range", &range],
        &crash_py(),
        &env,
    );
    let outcome = &client.finish(1)[0];
    let status = job.wait_exit();
    let dump = job.dump();
    assert!(outcome.ok, "the DAP session failed: {outcome:?}\n{dump}");
    assert_eq!(outcome.reason.as_deref(), Some("exception"), "{dump}");
    assert_eq!(outcome.line, Some(RAISE_LINE), "stopped elsewhere: {dump}");
    assert_eq!(outcome.value.as_deref(), Some("54"), "{dump}");
    assert!(
        outcome
            .exception
            .as_deref()
            .is_some_and(|e| e.contains("loss is nan at scale 54")),
        "{outcome:?}"
    );
    assert!(!status.success(), "rank 2 failed: {dump}");
    for rank in [0, 1, 3] {
        let scale = (rank + 7) * 6;
        job.wait_stdout(&format!("rank {rank} result {scale}"));
    }
    let want = plain(
        &[crash_py().to_str().expect("utf-8")],
        &[("CRASH_RANKS", "2"), ("PMI_RANK", "2")],
    );
    let want = String::from_utf8_lossy(&want.stderr).into_owned();
    assert!(want.contains("Traceback"), "{want}");
    let stderr = job.stderr.all().join("\n");
    assert!(
        stderr.contains(want.trim_end()),
        "rank 2's traceback differs from Python's own:\nwant:\n{want}\n{dump}"
    );
    let stdout = job.stdout.all().join("\n");
    assert_eq!(
        stdout.matches("post-mortem session on host").count(),
        1,
        "{dump}"
    );
    assert!(
        stdout.contains("rank 2/4 (mpich) crashed: ValueError"),
        "{dump}"
    );
    assert!(
        stdout.contains(&format!("debug port {}", base + 2)),
        "{dump}"
    );
}

/// Two ranks raise at once with the default `--post-mortem-max 1`: one session (shown by
/// `status` as `post-mortem` with the exception), the other exits as it would have.
#[test]
fn of_two_ranks_that_crash_together_one_gets_the_session() {
    let developer = DeveloperSide::relay_only("debug");
    let locks = tempfile::tempdir().expect("tempdir");
    let (_, _, range) = port_range(4);
    let mut job = Job::start_step(
        &developer,
        locks.path(),
        &[
            "--post-mortem",
            "--post-mortem-timeout",
            "20s",
            "--port-range",
            &range,
        ],
        &crash_py(),
        &[("CRASH_RANKS", "1,2")],
    );
    job.wait_stdout("crashed too");
    let status = util::wait_for(
        "status to show the post-mortem session",
        SESSION_DEADLINE,
        || {
            let out = util::output_within(
                util::agent()
                    .arg("status")
                    .env("AMLX_STATE_DIR", locks.path().join("state")),
                Duration::from_secs(30),
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("post-mortem").then_some(text)
        },
    );
    assert!(status.contains("ValueError: loss is nan"), "{status}");
    assert!(status.contains("failed first"), "{status}");
    let exit = job.wait_exit();
    assert!(!exit.success());
    let stdout = job.stdout.all().join("\n");
    assert_eq!(
        stdout.matches("post-mortem session on host").count(),
        1,
        "{}",
        job.dump()
    );
    assert_eq!(stdout.matches("crashed too").count(), 1, "{}", job.dump());
    let stderr = job.stderr.all().join("\n");
    assert_eq!(
        stderr.matches("Traceback (most recent call last)").count(),
        2,
        "{}",
        job.dump()
    );
}

/// How long a crashed process may take to exit once its session is over.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// A hooked crash running in the background: stdout as lines, stderr as bytes.
struct Running {
    child: Child,
    stdout: Lines,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    /// `exec --post-mortem` (60 s to attach) with `exec_args`, running `python3
    /// python_args`.
    fn start(
        developer: &DeveloperSide,
        locks: &Path,
        exec_args: &[&str],
        python_args: &[&str],
    ) -> Running {
        Running::start_with_env(developer, locks, exec_args, python_args, &[])
    }

    /// [`Running::start`] with `env` added to the step's environment.
    fn start_with_env(
        developer: &DeveloperSide,
        locks: &Path,
        exec_args: &[&str],
        python_args: &[&str],
        env: &[(&str, &str)],
    ) -> Running {
        let mut child = developer
            .agent(locks)
            .args(["exec", "--post-mortem"])
            .args(
                (!exec_args.contains(&"--post-mortem-timeout"))
                    .then_some(["--post-mortem-timeout", "60s"])
                    .into_iter()
                    .flatten(),
            )
            .args(exec_args)
            .args(["--", "python3"])
            .args(python_args)
            .envs(env.iter().copied())
            .current_dir(session_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stdout = Lines::from_reader(child.stdout.take().expect("piped stdout"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            sink.lock().expect("stderr lock").extend(bytes);
        });
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"))
    }

    /// Waits (bounded) until the session waits for a debugger (the state line comes
    /// after the helper told the hook it is ready).
    fn wait_session(&self) {
        self.stdout
            .wait_for_from(0, "debug session post-mortem:", SESSION_DEADLINE)
            .unwrap_or_else(|| panic!("no session:\n{}", self.stdout.all().join("\n")));
    }

    /// The helper's pid, once the session waits (it is the crashed process's child).
    fn wait_helper(&self) -> Pid {
        self.wait_session();
        children_of(self.pid())
            .into_iter()
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("post-mortem"))
            })
            .expect("the helper is a child of the crashed process")
    }

    /// Waits (bounded by [`EXIT_BOUND`]) for the exit; the status and all of stderr.
    fn finish(self) -> (ExitStatus, Vec<u8>) {
        self.finish_within(EXIT_BOUND)
    }

    /// [`Running::finish`] with another bound for the exit.
    fn finish_within(mut self, bound: Duration) -> (ExitStatus, Vec<u8>) {
        let status = util::wait_within(&mut self.child, bound);
        let stderr = util::wait_for("stderr to close", EXIT_BOUND, || {
            let done = Arc::strong_count(&self.stderr) == 1;
            done.then(|| self.stderr.lock().expect("stderr lock").clone())
        });
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(parent) = u32::try_from(parent.as_raw()) else {
        return Vec::new();
    };
    util::children_of(parent)
        .into_iter()
        .filter_map(|(pid, _)| Some(Pid::from_raw(i32::try_from(pid).ok()?)))
        .collect()
}

fn gone(pid: Pid) -> bool {
    // A zombie still has a /proc entry: its state is Z.
    u32::try_from(pid.as_raw())
        .ok()
        .and_then(amlx_agent::publish::holder::read_stat)
        .is_none_or(|stat| stat.state == 'Z')
}

/// What can go wrong while a crashed process is held, and what must happen then: it
/// exits within a bound, as Python would have (or as the signal says), and the helper
/// does not outlive it.
#[test]
fn a_held_crash_ends_within_a_bound_whatever_happens_to_it() {
    let developer = DeveloperSide::relay_only("debug");
    let crash = crash_py();
    let crash = crash.to_str().expect("utf-8");
    let want = plain(&[crash], &[]);
    // (what happens, expected exit code or signal)
    let cases: &[(&str, Result<i32, i32>)] = &[
        ("the helper is killed", Ok(1)),
        ("the helper hangs", Ok(1)),
        ("the process gets SIGTERM", Err(15)),
        ("the process is killed", Err(9)),
    ];
    for (what, expected) in cases {
        let locks = tempfile::tempdir().expect("tempdir");
        // A hung helper never ends the session: the hook gives up its deadline_grace_s
        // (30 s) after the attach deadline (2 s here) and kills it at once (4 s slack:
        // waiting for the hung helper to end on its own, as before, took 5 s more).
        let (exec_args, bound): (&[&str], Duration) = match *what {
            "the helper hangs" => (
                &["--post-mortem-timeout", "2s"],
                Duration::from_secs(2 + 30 + 4),
            ),
            _ => (&[], EXIT_BOUND),
        };
        let running = Running::start(&developer, locks.path(), exec_args, &[crash]);
        let helper = running.wait_helper();
        match *what {
            "the helper is killed" => kill(helper, Signal::SIGKILL).expect("kill the helper"),
            "the helper hangs" => kill(helper, Signal::SIGSTOP).expect("stop the helper"),
            "the process gets SIGTERM" => kill(running.pid(), Signal::SIGTERM).expect("SIGTERM"),
            _ => kill(running.pid(), Signal::SIGKILL).expect("SIGKILL"),
        }
        let (status, stderr) = running.finish_within(bound);
        match expected {
            Ok(code) => {
                assert_eq!(status.code(), Some(*code), "{what}");
                assert_eq!(
                    stderr,
                    want.stderr,
                    "{what}: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(signal) => assert_eq!(status.signal(), Some(*signal), "{what}: {status}"),
        }
        util::wait_for(&format!("{what}: the helper to end"), EXIT_BOUND, || {
            gone(helper).then_some(())
        });
    }
}

/// A step whose interpreter cannot import debugpy: the session is offered, the hook
/// says why it cannot take it (on stdout), and the process exits as it would have.
#[test]
fn without_debugpy_the_crash_exits_as_it_would_have_and_says_why() {
    let developer = DeveloperSide::relay_only("debug");
    let crash = crash_py();
    // -S: no site-packages, so no debugpy (the step's traceback is the same without).
    // Nor does site import `threading` first, so the thread case sees the hook patch it
    // when the step imports it.
    let args = ["-S", crash.to_str().expect("utf-8")];
    for (place, lookup) in [("main", "0"), ("thread", "0"), ("thread", "1")] {
        let locks = tempfile::tempdir().expect("tempdir");
        let lookup = if lookup == "1" { "1" } else { "" };
        let env = [("CRASH_IN", place), ("CRASH_LOOKUP_THREADING", lookup)];
        let want = plain(&args, &env);
        let running = Running::start_with_env(&developer, locks.path(), &[], &args, &env);
        running.wait_session();
        let stdout = running.stdout.clone();
        let (status, stderr) = running.finish();
        assert_eq!(status, want.status, "{place}");
        assert_eq!(
            stderr,
            want.stderr,
            "{place}: {}",
            String::from_utf8_lossy(&stderr)
        );
        assert!(
            stdout.wait_for("debugpy is not importable").is_some(),
            "{place}: {}",
            stdout.all().join("\n")
        );
    }
}

/// The developer's VS Code disappears while the crash is stopped: the process exits at
/// once, as Python would have.
#[test]
fn a_debugger_that_vanishes_mid_stop_lets_the_crash_exit() {
    let mut developer = DeveloperSide::relay_only("debug");
    let vscode_port = free_port();
    let hold = tempfile::tempdir().expect("tempdir");
    let never = hold.path().join("never");
    let client = DapClient::start_in(
        &[Attach::listen(vscode_port).post_mortem().hold_until(&never)],
        &crash_py(),
        VARIABLE,
    );
    client.wait_listening(vscode_port);
    let (base, _, range) = port_range(1);
    developer.listen(&[(base, vscode_port)]);
    let locks = tempfile::tempdir().expect("tempdir");
    let crash = crash_py();
    let crash = crash.to_str().expect("utf-8");
    let want = plain(&[crash], &[]);
    let running = Running::start(
        &developer,
        locks.path(),
        &["--port-range", &range],
        &[crash],
    );
    running.wait_session();
    client.wait_stopped();
    drop(client);
    let (status, stderr) = running.finish();
    assert_eq!(status.code(), Some(1));
    assert_eq!(stderr, want.stderr, "{}", String::from_utf8_lossy(&stderr));
}

/// A debugger attached through listen mode (`relay connect`) or straight to the node
/// (direct mode) stays stopped past the post-mortem deadline: the deadline is for
/// attaching, not for debugging. The session ends when it detaches, and the process
/// then exits as Python would have.
#[test]
fn an_attached_debugger_is_not_cut_off_at_the_post_mortem_deadline() {
    let crash = crash_py();
    let crash = crash.to_str().expect("utf-8");
    let want = plain(&[crash], &[]);
    for mode in ["direct", "listen"] {
        let developer = DeveloperSide::relay_only("debug");
        let hold = tempfile::tempdir().expect("tempdir");
        let release = hold.path().join("release");
        let (base, _, range) = port_range(1);
        let locks = tempfile::tempdir().expect("tempdir");
        let running = Running::start(
            &developer,
            locks.path(),
            &[
                "--mode",
                mode,
                "--node-ip",
                "127.0.0.1",
                "--port-range",
                &range,
                "--post-mortem-timeout",
                "3s",
            ],
            &[crash],
        );
        running.wait_session();
        // Listen mode: the developer's `relay connect`, kept for the session's life.
        let mut relay_connect = None;
        let port = if mode == "listen" {
            let (connect, bound) = developer
                .relay
                .connect(&developer.connection_string(), &base.to_string());
            relay_connect = Some(connect);
            bound.port()
        } else {
            base
        };
        let client = DapClient::start_in(
            &[Attach::connect("127.0.0.1", port)
                .post_mortem()
                .hold_until(&release)],
            &crash_py(),
            VARIABLE,
        );
        client.wait_stopped();
        running
            .stdout
            .wait_for_from(0, "passed after a debugger attached", SESSION_DEADLINE)
            .unwrap_or_else(|| {
                panic!(
                    "{mode}: the deadline did not pass quietly:\n{}",
                    running.stdout.all().join("\n")
                )
            });
        std::fs::write(&release, b"").expect("release the client");
        let outcome = &client.finish(1)[0];
        assert!(
            outcome.ok,
            "{mode}: the debugger was cut off: {outcome:?}\n{}",
            running.stdout.all().join("\n")
        );
        assert!(
            outcome
                .exception
                .as_deref()
                .is_some_and(|e| e.contains("loss is nan")),
            "{mode}: {outcome:?}"
        );
        let stdout = running.stdout.all().join("\n");
        assert!(!stdout.contains("timed-out"), "{mode}:\n{stdout}");
        let (status, stderr) = running.finish();
        assert_eq!(status.code(), Some(1), "{mode}");
        assert_eq!(
            stderr,
            want.stderr,
            "{mode}: {}",
            String::from_utf8_lossy(&stderr)
        );
        drop(relay_connect);
    }
}

/// A daemon thread crashes and the process ends 0.5 s later, while the thread's session
/// is being set up: the thread's traceback is reported first, as Python reports it, so
/// it is not lost; the exit is the step's own.
#[test]
fn a_crashing_daemon_thread_is_reported_before_its_session() {
    let developer = DeveloperSide::relay_only("debug");
    let locks = tempfile::tempdir().expect("tempdir");
    let crash = crash_py();
    let crash = crash.to_str().expect("utf-8");
    let env = [("CRASH_IN", "daemon")];
    let want = plain(&[crash], &env);
    assert!(
        String::from_utf8_lossy(&want.stderr).contains("Exception in thread loader"),
        "{want:?}"
    );
    let got = hooked(
        &developer,
        locks.path(),
        &["--post-mortem", "--post-mortem-timeout", "30s"],
        &[crash],
        &env,
    );
    assert_eq!(got.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&got.stderr),
        String::from_utf8_lossy(&want.stderr)
    );
}

/// The process's stdout is a pipe nobody empties (already full when it crashes): the
/// session's log lines are dropped rather than block it, and it exits at the deadline.
#[test]
fn a_full_stdout_pipe_does_not_hold_the_crash_past_its_deadline() {
    let developer = DeveloperSide::relay_only("debug");
    let locks = tempfile::tempdir().expect("tempdir");
    let crash = crash_py();
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let mut child = developer
        .agent(locks.path())
        .args([
            "exec",
            "--post-mortem",
            "--post-mortem-timeout",
            "2s",
            "--",
            "python3",
        ])
        .arg(&crash)
        .env("CRASH_IN", "fill")
        .current_dir(session_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Nobody reads `read_end` until the process is gone (the pipe holds 64 KiB).
    let status = util::wait_within(&mut child, EXIT_BOUND);
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_end(&mut stderr)
        .expect("stderr");
    drop(read_end);
    assert_eq!(
        status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
    let want = plain(&[crash.to_str().expect("utf-8")], &[("CRASH_IN", "fill")]);
    assert_eq!(stderr, want.stderr, "{}", String::from_utf8_lossy(&stderr));
}

/// `exec --post-mortem` as flags, with the launcher shims on PYTHONPATH: a multiprocessing
/// spawn worker (which comes back through the shims as a plain `exec`) is hooked with the
/// same timeout, because the step's environment carries the post-mortem settings.
#[test]
fn the_post_mortem_flags_reach_workers_the_shims_bring_back() {
    const STEP: &str = "import multiprocessing as mp\n\
def work():\n    raise ValueError('worker failed')\n\
if __name__ == '__main__':\n    mp.set_start_method('spawn')\n    p = mp.Process(target=work)\n    p.start()\n    p.join()\n    print('worker exit', p.exitcode, flush=True)\n";
    let developer = DeveloperSide::relay_only("debug");
    let locks = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let step = scratch.path().join("spawner.py");
    std::fs::write(&step, STEP).expect("write the step");
    let shims = Path::new(env!("CARGO_MANIFEST_DIR")).join("../launcher-shims/python");
    let out = util::output_within(
        developer
            .agent(locks.path())
            .env("PYTHONPATH", &shims)
            .env("AMLX_AGENT_BIN", util::agent_bin())
            .args([
                "exec",
                "--post-mortem",
                "--post-mortem-timeout",
                "2s",
                "--",
                "python3",
            ])
            .arg(&step)
            .current_dir(scratch.path()),
        SESSION_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("worker exit 1"), "{stdout}");
    assert!(
        stdout.contains("crashed: ValueError: worker failed")
            && stdout.contains("attach within 2s"),
        "the worker's session, with the flags' timeout:\n{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ValueError: worker failed"), "{stderr}");
    assert!(
        !stderr.contains("<string>"),
        "the hook's frames show:\n{stderr}"
    );
}
