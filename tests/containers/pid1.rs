//! The agent as a container's ENTRYPOINT is PID 1 and supervises the step like tini:
//! exit codes and deaths by signal pass through, `docker stop` reaches the step, and a
//! step that ignores it is killed after the grace period.

use std::time::{Duration, Instant};

use super::engine::{AGENT_IMAGE, Container, DOCKER_DEADLINE, EXAMPLE_IMAGE, engine};

/// Grace period of `docker stop -t` in these tests.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How much longer than the grace a stop may take (the engine's own bookkeeping).
const STOP_MARGIN: Duration = Duration::from_secs(20);
/// Longest wait for a step to say it installed its signal handler.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a step here idles (it is stopped long before: bounded even if not).
const STEP_IDLE_SECONDS: u32 = 120;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_agent_is_pid_1_and_passes_exit_codes_and_signal_deaths_through() {
    // Each step prints its parent's pid and PID 1's command line, then ends as the row says.
    let report = "import os, signal, sys\n\
                  print('parent', os.getppid(), open('/proc/1/cmdline').read().split(chr(0))[:2], flush=True)\n";
    let rows: [(&str, i32, &str); 4] = [
        ("sys.exit(0)", 0, "a clean exit"),
        ("sys.exit(3)", 3, "exit 3"),
        (
            "os.kill(os.getpid(), signal.SIGUSR1)",
            128 + 10,
            "killed by SIGUSR1",
        ),
        (
            "os.kill(os.getpid(), signal.SIGKILL)",
            128 + 9,
            "killed by SIGKILL",
        ),
    ];
    for (end, expected, what) in rows {
        let container = Container::new("exit");
        let script = format!("{report}{end}\n");
        let out = container.run(
            &["--network", "none", EXAMPLE_IMAGE, "python3", "-c", &script],
            DOCKER_DEADLINE,
        );
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{what}: {:?}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        // Exit code of the container as the engine records it, not only the client's.
        assert_eq!(container.exit_code(DOCKER_DEADLINE), expected, "{what}");
        assert!(
            stdout.contains("parent 1 ['/usr/local/bin/amlx-agent', 'exec']"),
            "{what}: the step's parent is not the agent as PID 1:\n{stdout}"
        );
    }
}

#[test]
fn the_example_image_runs_train_py_under_the_agent_by_default() {
    let container = Container::new("example");
    let out = container.run(&["--rm", EXAMPLE_IMAGE], DOCKER_DEADLINE);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("debug target false")
            && stdout.contains("done, loss"),
        "{:?}\n{stdout}{}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn the_from_scratch_agent_image_runs_and_carries_ca_certificates() {
    let container = Container::new("scratch");
    // The image's ENTRYPOINT is the agent; as PID 1 it supervises even itself.
    let out = container.run(
        &[
            "--network",
            "none",
            AGENT_IMAGE,
            "exec",
            "--",
            "/amlx-agent",
            "--version",
        ],
        DOCKER_DEADLINE,
    );
    assert!(
        out.status.success() && text(&out.stdout).starts_with("amlx-agent "),
        "{:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    // `docker cp` writes a tar stream: the bundle is in it, and not empty.
    let tar = engine().ok(
        &[
            "cp",
            &format!("{}:/etc/ssl/certs/ca-certificates.crt", container.name),
            "-",
        ],
        DOCKER_DEADLINE,
    );
    let tar = text(&tar.stdout);
    assert!(
        tar.contains("-----BEGIN CERTIFICATE-----"),
        "no certificates in the image's /etc/ssl/certs/ca-certificates.crt"
    );
}

/// A step that sets SIGTERM's handling to `handling` (Python), says `ready` and idles.
fn stoppable_step(handling: &str) -> String {
    format!(
        "import signal, sys, time\n\
         {handling}\n\
         print('ready', flush=True)\n\
         time.sleep({STEP_IDLE_SECONDS})\n\
         sys.exit(99)\n"
    )
}

#[test]
fn docker_stop_reaches_the_step_and_a_step_that_ignores_it_is_killed_after_the_grace() {
    let rows: [(&str, i32, bool, &str); 2] = [
        (
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))",
            0,
            false,
            "a step that exits 0 on SIGTERM",
        ),
        (
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
            128 + 9,
            true,
            "a step that ignores SIGTERM",
        ),
    ];
    let grace = STOP_GRACE.as_secs().to_string();
    for (handling, expected, waits_for_grace, what) in rows {
        let container = Container::new("stop");
        let step = stoppable_step(handling);
        container.start(&["--network", "none", EXAMPLE_IMAGE, "python3", "-c", &step]);
        container.wait_for_log("ready", READY_DEADLINE);
        let started = Instant::now();
        engine().ok(
            &["stop", "-t", &grace, &container.name],
            STOP_GRACE + STOP_MARGIN,
        );
        let took = started.elapsed();
        let code = container.exit_code(DOCKER_DEADLINE);
        assert_eq!(code, expected, "{what}:\n{}", container.logs());
        assert!(
            took < STOP_GRACE + STOP_MARGIN,
            "{what}: docker stop took {took:?}"
        );
        assert_eq!(
            took >= STOP_GRACE,
            waits_for_grace,
            "{what}: docker stop took {took:?} with a grace of {STOP_GRACE:?}"
        );
    }
}

#[test]
fn the_example_image_has_the_python_hook_baked_in_for_the_steps_children() {
    let container = Container::new("hook");
    // The step starts one Python child with the absolute sys.executable, as
    // multiprocessing does: the baked hook brings it under the agent in place.
    let child = "import os; print('child', os.getpid(), os.environ.get('AMLX_AGENT_PID'))";
    let step = format!(
        "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {child:?}]))"
    );
    let out = container.run(
        &[
            "--network",
            "none",
            "-e",
            "AMLX_DEBUG=1",
            "-e",
            "AMLX_RANKS=5",
            EXAMPLE_IMAGE,
            "python3",
            "-c",
            &step,
        ],
        DOCKER_DEADLINE,
    );
    let stdout = text(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert!(
        out.status.success() && words.len() == 3 && words[0] == "child" && words[1] == words[2],
        "{:?}\n{stdout}{}",
        out.status,
        text(&out.stderr)
    );
}
