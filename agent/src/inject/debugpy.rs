//! Talking to debugpy itself: is it importable by the step's interpreter, and the DAP
//! message that releases a step held in connect mode.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{InjectError, PythonCommand};

/// How long the interpreter may take to say whether debugpy is installed. A cold
/// interpreter on a network file system can take seconds; a hung one must not hold the job.
pub const DEBUGPY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// After killing a check that timed out, how long to wait for it to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Exits 0 when debugpy can be imported, 1 when it cannot (without importing it: cheap).
const CHECK_CODE: &str =
    "import importlib.util,sys; sys.exit(importlib.util.find_spec('debugpy') is None)";

/// Interpreter flags that change where imports come from: the check must use them too
/// (`-S` drops site-packages, `-s` the user site, `-I`/`-E` ignore `PYTHONPATH`).
const IMPORT_FLAGS: &[u8] = b"EIsSP";

/// Asks the step's own interpreter, with its import-affecting flags and `env` assignments,
/// whether it can import debugpy; gives up (and kills it) after `timeout`.
pub fn check_debugpy(python: &PythonCommand, timeout: Duration) -> Result<(), InjectError> {
    let mut cmd = Command::new(&python.interpreter);
    let mut flags: Vec<u8> = Vec::new();
    for flag in python.flags.iter().filter(|f| IMPORT_FLAGS.contains(f)) {
        if !flags.contains(flag) {
            flags.push(*flag);
        }
    }
    if !flags.is_empty() {
        cmd.arg(format!("-{}", String::from_utf8_lossy(&flags)));
    }
    cmd.args(["-c", CHECK_CODE])
        .envs(python.env_assignments())
        // The shims must not bring this probe under the agent: it is not a step.
        .env(crate::process::lineage::SHIM_VAR, "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills whatever it started too.
        .process_group(0);
    let shown = {
        let mut words = vec![python.interpreter.to_string_lossy().into_owned()];
        if !flags.is_empty() {
            words.push(format!("-{}", String::from_utf8_lossy(&flags)));
        }
        words.join(" ")
    };
    let mut child = cmd
        .spawn()
        .map_err(|source| InjectError::InterpreterNotRunnable {
            python: shown.clone(),
            source,
        })?;
    let pid = child.id();
    let mut stderr = child.stderr.take();
    let (done_tx, done_rx) = mpsc::channel();
    // The waiter is joined before returning: a debug target forks its relay sidecar
    // next, which must happen in a single-threaded process.
    let waiter = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            // Lossy on purpose: the text only decorates the error message.
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let _ = done_tx.send((child.wait(), text));
    });
    let (status, stderr_text) = match done_rx.recv_timeout(timeout) {
        Ok(result) => {
            let _ = waiter.join();
            result
        }
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Reap it (the waiting thread does), but never wait without a bound.
            if done_rx.recv_timeout(REAP_GRACE).is_ok() {
                let _ = waiter.join();
            }
            return Err(InjectError::CheckTimedOut {
                python: shown,
                timeout,
            });
        }
    };
    let status = status.map_err(|source| InjectError::InterpreterNotRunnable {
        python: shown.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let last_line = stderr_text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty());
    let detail = match (status.code(), last_line) {
        (_, Some(line)) => format!(": {line}"),
        (Some(1), None) => String::new(),
        (_, None) => format!(" ({status})"),
    };
    Err(InjectError::DebugpyMissing {
        python: shown,
        interpreter: python.interpreter.to_string_lossy().into_owned(),
        detail,
    })
}
