//! The sidecar: a child process that carries the relay for exactly the step's lifetime.
//!
//! It is forked before any async runtime thread exists (forking a threaded process
//! leaves locks held by threads that no longer exist). In replace mode the agent then
//! `execve`s into the step, so the sidecar's parent *is* the step: `PR_SET_PDEATHSIG`
//! delivers SIGTERM to the sidecar the moment the step dies, and the sidecar is gone
//! within a second. A dead sidecar never takes the step down: nothing links them the
//! other way. The parent learns whether the sidecar is usable through a readiness pipe
//! before the step starts.
//!
//! A second pipe, the lifeline, ends the session without a signal: the sidecar reads it
//! until EOF, which comes when every holder of its write end is gone. The supervisor
//! (supervise mode) closes it once the step exited; in replace mode the step inherits it
//! across `execve`. SIGTERM cannot serve here, since launchers signal whole process
//! groups while the step may trap the signal and run on.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, getppid};

/// How long the parent waits for the sidecar to report that the relay path is usable.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an ended sidecar gets to publish its final state before SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(1);

/// What the sidecar reported before the step starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The sidecar could not make the debug path usable; the message says why.
    Failed(String),
}

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct ReadySignal(Option<File>);

impl ReadySignal {
    /// Tells the parent the relay path is usable.
    pub fn ready(&mut self) {
        self.send("ready");
    }

    /// Tells the parent why the debug path is not usable.
    pub fn failed(&mut self, why: &str) {
        self.send(&format!("error {}", why.replace('\n', " ")));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut pipe) = self.0.take() {
            // The parent may have given up waiting; nothing useful to do about that here.
            let _ = writeln!(pipe, "{line}");
        }
    }
}

/// The sidecar's end of the lifeline: resolves [`Lifeline::ended`] at EOF.
#[derive(Debug)]
pub struct Lifeline(OwnedFd);

impl Lifeline {
    /// Resolves once every holder of the write end is gone (the step's session is over).
    /// Must run inside a Tokio runtime.
    pub async fn ended(self) {
        use tokio::io::AsyncReadExt as _;
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(self.0) else {
            tracing::warn!("sidecar cannot watch its lifeline; it ends with the step's death");
            return std::future::pending().await;
        };
        let mut sink = [0u8; 64];
        while matches!(pipe.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// The parent's handle on a running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    pid: Pid,
    /// Write end of the lifeline; closing it (in every holder) ends the session.
    lifeline: Option<OwnedFd>,
}

impl Sidecar {
    /// The sidecar's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Lets the lifeline survive `execve` (replace mode): the step holds it from then on,
    /// and the session ends when the step (and whatever inherited it) is gone.
    pub fn keep_across_exec(&self) -> std::io::Result<RawFd> {
        use nix::fcntl::{F_GETFD, F_SETFD, FdFlag, fcntl};
        let fd = self
            .lifeline
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the lifeline is already closed"))?;
        let flags = FdFlag::from_bits_truncate(fcntl(fd, F_GETFD)?);
        fcntl(fd, F_SETFD(flags - FdFlag::FD_CLOEXEC))?;
        Ok(fd.as_raw_fd())
    }

    /// Ends the session (supervise mode, after the step exited; or a failed start):
    /// closes the lifeline, gives the sidecar a short grace to publish its final state,
    /// then SIGKILL. Always reaps it.
    pub fn terminate(mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + TERMINATE_GRACE;
        while Instant::now() < deadline {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Forks the sidecar, runs `body` in it, and waits (bounded) for its readiness report.
///
/// `close_in_child` are descriptors the sidecar must not keep (the port lock: the step
/// holds it, and a lingering copy would outlive the step). `body` returns the sidecar's
/// exit code; it must call `ready()` or `failed()` on the signal it gets.
pub fn spawn<F>(close_in_child: &[RawFd], body: F) -> anyhow::Result<(Sidecar, Readiness)>
where
    F: FnOnce(ReadySignal, Lifeline) -> i32,
{
    let threads = settled_thread_count();
    if threads != Some(1) {
        bail!("cannot fork the relay sidecar from a process with {threads:?} threads");
    }
    let (read_end, write_end) =
        nix::unistd::pipe().context("could not create the sidecar readiness pipe")?;
    // Close-on-exec, so a supervised step never holds the lifeline by accident.
    let (lifeline_read, lifeline_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("could not create the sidecar lifeline pipe")?;
    let parent = nix::unistd::getpid();
    // SAFETY: the process has exactly one thread (checked above), so the child starts
    // with no lock held by a vanished thread; it only calls async-signal-safe setup
    // (prctl, close, dup2) before building its own runtime.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() }.context("could not fork the relay sidecar")?;
    match fork {
        ForkResult::Child => {
            drop(read_end);
            drop(lifeline_write);
            let lifeline = Lifeline(lifeline_read);
            let code = run_child(parent, close_in_child, write_end, lifeline, body);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            drop(lifeline_read);
            let readiness = wait_ready(read_end, READY_TIMEOUT);
            let sidecar = Sidecar {
                pid: child,
                lifeline: Some(lifeline_write),
            };
            Ok((sidecar, readiness))
        }
    }
}

fn run_child<F>(
    parent: Pid,
    close_in_child: &[RawFd],
    write_end: OwnedFd,
    lifeline: Lifeline,
    body: F,
) -> i32
where
    F: FnOnce(ReadySignal, Lifeline) -> i32,
{
    if nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)).is_err() || getppid() != parent {
        // The parent died before the death signal was armed: there is no step to serve.
        return 0;
    }
    for fd in close_in_child {
        let _ = nix::unistd::close(*fd);
    }
    redirect_stdin_to_null();
    body(ReadySignal(Some(File::from(write_end))), lifeline)
}

/// The sidecar must not hold the step's stdin (MPI launchers forward stdin to rank 0).
fn redirect_stdin_to_null() {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
    }
}

fn wait_ready(read_end: OwnedFd, timeout: Duration) -> Readiness {
    let deadline = Instant::now() + timeout;
    let mut pipe = File::from(read_end);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Readiness::Failed(format!(
                "the relay sidecar was not ready within {timeout:?}"
            ));
        }
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Readiness::Failed(format!("readiness pipe: {err}")),
        }
        let mut byte = [0u8; 1];
        match pipe.read(&mut byte) {
            Ok(0) => {
                return Readiness::Failed("the relay sidecar exited before it was ready".into());
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Readiness::Failed(format!("readiness pipe: {err}")),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("error ") {
        Some(why) => Readiness::Failed(why.to_owned()),
        None if line == "ready" => Readiness::Ready,
        None => Readiness::Failed(format!("unexpected readiness report {line:?}")),
    }
}

/// Threads in this process, from /proc (None when /proc is unavailable).
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|dir| dir.count())
}

/// How long a just-joined helper thread may take to disappear from /proc.
const THREAD_SETTLE: Duration = Duration::from_millis(200);

/// The thread count once threads that were already finishing have gone (bounded).
fn settled_thread_count() -> Option<usize> {
    let deadline = Instant::now() + THREAD_SETTLE;
    loop {
        let count = thread_count();
        if count == Some(1) || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Forking inside the multi-threaded test harness is exactly what `spawn` refuses.
    #[test]
    fn refuses_to_fork_a_threaded_process() {
        let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        let err = spawn(&[], |_, _| 0).expect_err("must refuse");
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
