//! Running a target's helper programs (`docker`, `ssh`, `scp`) with a bound: a helper
//! that hangs (an engine that does not answer, a host that drops packets) is killed at
//! its deadline and the error says which command and how long.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs `cmd` (stdin closed, output captured) and returns its output; kills it after
/// `timeout`. `what` names it in errors (`docker rm`).
pub fn output_within(mut cmd: Command, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null());
    output_within_keeping_stdin(cmd, timeout, what)
}

/// [`output_within`] with whatever stdin the caller gave `cmd` (a file, a pipe).
pub fn output_within_keeping_stdin(
    mut cmd: Command,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("PIDs fit in i32"));
    let (done, result) = mpsc::channel();
    // The waiter reads both pipes to their end, so a chatty helper cannot block on a
    // full pipe while we wait.
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(timeout) {
        Ok(output) => output.with_context(|| format!("could not wait for {what}")),
        Err(_) => {
            // Not reaped yet (the waiter would have sent): the PID is still the helper's.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = result.recv_timeout(Duration::from_secs(1));
            anyhow::bail!(
                "{what} did not finish within {}; it was stopped",
                humantime::format_duration(timeout)
            )
        }
    }
}

/// Like [`output_within`], and a non-zero exit is an error carrying the helper's stderr.
pub fn succeed_within(cmd: Command, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    let output = output_within(cmd, timeout, what)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{what} failed ({}): {}", output.status, stderr.trim());
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_bounded_and_its_failure_quotes_its_stderr() {
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let started = std::time::Instant::now();
        let err = output_within(sleep, Duration::from_millis(200), "sleep").expect_err("bounded");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            format!("{err:#}").contains("sleep did not finish within 200ms"),
            "{err:#}"
        );

        let mut fail = Command::new("sh");
        fail.args(["-c", "echo nope >&2; exit 3"]);
        let err = succeed_within(fail, Duration::from_secs(10), "sh").expect_err("exit 3");
        let text = format!("{err:#}");
        assert!(
            text.contains("sh failed") && text.contains("nope"),
            "{text}"
        );
    }
}
