//! A step whose stderr is a pipe that is full and that nobody empties (a launcher that
//! captures the job's output and stopped reading it). Without the agent, a step that
//! writes nothing to stderr runs to its end there; with the agent, every line the agent,
//! its sidecar, its keeper and the step's bootstrap wrote blocked for ever, and a debug
//! target never started. Each process of the agent now waits for room at most once,
//! briefly, then drops the lines that find none.

use std::os::fd::{AsFd as _, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::failures::TAKE_THE_DEBUG_PORT;
use super::harness::{DeveloperSide, port_range, step_py};
use super::own_debugpy::STARTS_DEBUGPY_ITSELF;
use crate::util;

/// The exit code the steps choose.
const STEP_CODE: i32 = 6;

/// How long a case may take: its attach timeout (2 s), one bounded wait for room in
/// stderr per process of the agent (1 s each), and the starts of Python and debugpy on a
/// loaded machine. Every case hung for ever before.
const CASE_BOUND: Duration = Duration::from_secs(45);

/// Variables for the step (name, value).
type StepEnv<'a> = &'a [(&'a str, &'a str)];

/// A pipe whose write end is full and blocking (as a step's stderr is), and its read end,
/// which the test keeps open and never reads until the step is over.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    let flags = OFlag::from_bits_truncate(fcntl(&write, FcntlArg::F_GETFL).expect("flags"));
    fcntl(&write, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).expect("non-blocking");
    let mut filled = 0usize;
    while let Ok(n) = nix::unistd::write(write.as_fd(), &[b'x'; 4096]) {
        filled += n;
        assert!(filled < 64 << 20, "a pipe that never fills");
    }
    fcntl(&write, FcntlArg::F_SETFL(flags)).expect("blocking again");
    (read, write)
}

#[test]
fn a_debug_target_whose_stderr_is_a_full_pipe_nobody_empties_still_runs_the_step() {
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(site.path().join("sitecustomize.py"), TAKE_THE_DEBUG_PORT)
        .expect("write sitecustomize.py");
    let step = step_py();
    let step = step.to_str().expect("a UTF-8 path");
    // (what, mode, the step's python arguments, its environment): each case makes
    // different processes of the agent write to the full pipe.
    let cases: [(&str, &str, &[&str], StepEnv); 5] = [
        ("connect mode, nobody attaching", "connect", &[step], &[]),
        ("listen mode, nobody attaching", "listen", &[step], &[]),
        ("debugpy not importable", "listen", &["-S", step], &[]),
        (
            "debugpy's port taken",
            "listen",
            &[step],
            &[("TAKE_DEBUG_PORT", "1")],
        ),
        (
            "the step's own debugpy.listen",
            "listen",
            &["-c", STARTS_DEBUGPY_ITSELF],
            &[],
        ),
    ];
    for (what, mode, python_args, env) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("full-stderr");
        let (_, _, range) = port_range(4);
        let (read, write) = full_pipe();
        let stdout_file = tempfile::NamedTempFile::new().expect("stdout file");
        let mut cmd = developer.agent(dir.path());
        cmd.env("PYTHONPATH", site.path())
            .env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .envs(env.iter().copied())
            .args(["exec", "--debug", "--rank", "0", "--mode", mode])
            .args(["--wait-for-client", "--attach-timeout", "2s"])
            .args(["--port-range", &range, "--", "python3"])
            .args(python_args)
            .stdin(Stdio::null())
            .stdout(stdout_file.reopen().expect("reopen stdout file"))
            .stderr(Stdio::from(write));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn amlx-agent exec");
        let status = util::wait_within(&mut child, CASE_BOUND);
        let stdout = std::fs::read_to_string(stdout_file.path()).expect("read stdout");
        assert_eq!(
            status.code(),
            Some(STEP_CODE),
            "{what}: after {:?}: {stdout}",
            started.elapsed()
        );
        if python_args.first() != Some(&"-c") {
            assert!(stdout.contains("done total 6"), "{what}: {stdout}");
        }
        drop(read);
    }
}

/// A terminal whose reader stopped with a little room left (an ssh session that stalled):
/// `poll` says there is room, and a blocking write of a longer line waits until all of it
/// fits. The agent stopped there before it ran the step (listen mode), its sidecar did
/// and the step started only when the bootstrap let itself go (connect mode), or the
/// bootstrap's own note did (debugpy not importable, the agent itself quiet).
#[test]
fn a_debug_target_whose_stderr_is_a_stalled_terminal_still_runs_the_step() {
    use nix::fcntl::{OFlag, open};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::stat::Mode;
    // (mode, the agent's own flags, python's flags)
    let cases: [(&str, &[&str], &[&str]); 3] = [
        ("listen", &[], &[]),
        ("connect", &[], &[]),
        ("listen", &["-qq"], &["-S"]),
    ];
    for (mode, quiet, python_flags) in cases {
        let pty = nix::pty::openpty(None, None).expect("a pty");
        let filler = open(
            format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
            )
            .as_str(),
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .expect("the terminal, non-blocking");
        let mut filled = 0usize;
        // Byte by byte: full to the last byte.
        while let Ok(n) = nix::unistd::write(&filler, b"x") {
            filled += n;
            assert!(filled < 64 << 20, "a terminal that never fills");
        }
        // The reader takes a byte, then stalls. The terminal frees room in a chunk, a
        // moment later; most of it is taken again: a little room is left (poll says
        // POLLOUT), less than one line.
        let mut some = [0u8; 1];
        let _ = nix::unistd::read(&pty.master, &mut some);
        let mut room = [PollFd::new(filler.as_fd(), PollFlags::POLLOUT)];
        let _ = poll(&mut room, PollTimeout::from(5000u16));
        let _ = nix::unistd::write(&filler, &[b'x'; 500]);
        let dir = tempfile::tempdir().expect("tempdir");
        let developer = DeveloperSide::relay_only("stalled-terminal");
        let (_, _, range) = port_range(4);
        let stdout_file = tempfile::NamedTempFile::new().expect("stdout file");
        let mut cmd = developer.agent(dir.path());
        cmd.env("STEP_EXIT_CODE", STEP_CODE.to_string())
            .args(quiet)
            .args(["exec", "--debug", "--rank", "0", "--mode", mode])
            .args(["--wait-for-client", "--attach-timeout", "2s"])
            .args(["--port-range", &range, "--", "python3"])
            .args(python_flags)
            .arg(step_py())
            .stdin(Stdio::null())
            .stdout(stdout_file.reopen().expect("reopen stdout file"))
            .stderr(Stdio::from(pty.slave));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn amlx-agent exec");
        let status = util::wait_within(&mut child, CASE_BOUND);
        let stdout = std::fs::read_to_string(stdout_file.path()).expect("read stdout");
        assert_eq!(
            status.code(),
            Some(STEP_CODE),
            "{mode}: after {:?}: {stdout}",
            started.elapsed()
        );
        assert!(stdout.contains("done total 6"), "{mode}: {stdout}");
        drop(pty.master);
    }
}
