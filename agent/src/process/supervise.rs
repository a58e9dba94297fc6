//! Supervise mode, tini-grade: the step runs in its own process group, the agent forwards
//! signals to that group, reaps every child (orphaned grandchildren included) and exits
//! with the step's code as soon as the step itself has exited.
//!
//! Grandchildren still running when the step exits are not waited for (tini semantics).
//! As PID 1 of a PID namespace (container ENTRYPOINT) the kernel SIGKILLs all of them
//! when the agent exits; otherwise they are reparented to the next subreaper or init
//! and keep running, exactly as if the step had been started without the agent.

use std::io;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, isatty, tcgetpgrp, tcsetpgrp};

use super::program::{self, inherit_fds};
use super::{ExecError, SignalMask, Step, StepExit};

/// Exit code when the step's status was lost (someone else reaped it); never expected.
const EXIT_STATUS_LOST: i32 = 1;

/// A running step under supervision.
///
/// ```text
/// let signals = SignalMask::block()?;          // main thread, before any other thread
/// /* start the relay runtime here: its threads inherit the blocked mask */
/// let supervisor = Supervisor::spawn(&step, signals)?;
/// let pid = supervisor.pid();                  // e.g. for the session's status file
/// let exit = supervisor.wait();                // returns the moment the step exits:
/// /* cancel the relay here */                  //   that return is the notification
/// std::process::exit(exit.code());
/// ```
#[derive(Debug)]
pub struct Supervisor {
    /// The step's pid, which is also its process group id.
    step: Pid,
    /// Where forwarded signals and SIGCHLD are taken from.
    signals: SignalMask,
}

impl Supervisor {
    /// Starts the step in its own process group with the signal state the agent received
    /// (`signals`, from [`SignalMask::block`]) and makes the agent a child subreaper when
    /// it is not PID 1, so orphaned grandchildren are reparented to it and reaped.
    pub fn spawn(step: &Step, signals: SignalMask) -> Result<Supervisor, ExecError> {
        become_subreaper();
        // `stdin()` allocates on first use; do that here, not in the forked child.
        let stdin = std::io::stdin();
        let hand_terminal = owns_terminal(&stdin);
        let keep_fds = step.keep_fds.clone();
        let child = program::launch(step, |mut command| {
            command.process_group(0);
            let keep_fds = keep_fds.clone();
            let stdin = std::io::stdin();
            pre_exec(&mut command, move || {
                in_child(&stdin, hand_terminal, &keep_fds, &signals)
            });
            command.spawn()
        })?;
        let step = Pid::from_raw(i32::try_from(child.id()).expect("Linux pids fit in i32"));
        tracing::debug!(pid = step.as_raw(), "step started under supervision");
        Ok(Supervisor { step, signals })
    }

    /// The step's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.step.as_raw().unsigned_abs()
    }

    /// Forwards signals and reaps children until the step exits; returns how it ended.
    /// Runs on the thread that called [`SignalMask::block`] and never returns earlier.
    pub fn wait(self) -> StepExit {
        loop {
            match self.signals.next() {
                Ok(Signal::SIGCHLD) => {
                    if let Some(exit) = reap(self.step) {
                        tracing::debug!(?exit, "step exited");
                        return exit;
                    }
                }
                Ok(signal) => forward(self.step, signal),
                Err(err) => {
                    tracing::warn!("sigwait failed ({err}); no longer forwarding signals");
                    return wait_for(self.step);
                }
            }
        }
    }
}

/// Registers `body` to run in the forked child between `setpgid` and `execve`.
#[allow(unsafe_code)]
fn pre_exec(
    command: &mut std::process::Command,
    body: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) {
    // SAFETY: `body` is `in_child`, which only makes async-signal-safe system calls
    // (tcsetpgrp, fcntl, sigaction, pthread_sigmask) on values prepared before the fork:
    // no allocation, no locks, so it is sound in the child of a multi-threaded parent.
    unsafe { command.pre_exec(body) };
}

/// Runs in the child: takes the terminal, keeps `keep_fds` open across `execve`, and
/// restores the signal state the agent received. std does not reset the signal mask
/// for the child (it inherits ours, with the forwarded signals blocked), so without the
/// restore the step would start with SIGTERM and friends blocked.
fn in_child(
    stdin: &std::io::Stdin,
    hand_terminal: bool,
    keep_fds: &[RawFd],
    signals: &SignalMask,
) -> io::Result<()> {
    if hand_terminal {
        // The foreground group gets the terminal's SIGINT / SIGTSTP / reads, like a
        // shell's job. SIGTTOU is still blocked here, so this cannot stop the child.
        // Failure only leaves the step in the background: not worth aborting over.
        let _ = tcsetpgrp(stdin.as_fd(), getpgrp());
    }
    // Best effort, as in replace mode: a descriptor that is not open must not stop the
    // step (nothing can be logged from here; replace mode logs the same failure).
    let _ = inherit_fds(keep_fds);
    signals.restore_in_child()
}

/// The agent's group is the terminal's foreground group, so the step should be.
fn owns_terminal(stdin: &std::io::Stdin) -> bool {
    isatty(stdin.as_fd()).unwrap_or(false)
        && tcgetpgrp(stdin.as_fd()).is_ok_and(|group| group == getpgrp())
}

/// Makes orphans inside the step's tree come to us (PID 1 gets them anyway).
fn become_subreaper() {
    if std::process::id() == 1 {
        return;
    }
    if let Err(err) = prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({err}); orphans go to init");
    }
}

/// Forwards `signal` to the step's process group, or to the step alone when the group
/// is gone (the step moved itself into a new session or group).
fn forward(step: Pid, signal: Signal) {
    tracing::debug!(%signal, pid = step.as_raw(), "forwarding signal");
    match killpg(step, signal) {
        Ok(()) => {}
        Err(Errno::ESRCH) => {
            let _ = kill(step, signal);
        }
        Err(err) => tracing::warn!(%signal, "cannot forward signal: {err}"),
    }
}

/// Reaps every child that has exited; returns the step's end if it was among them.
fn reap(step: Pid) -> Option<StepExit> {
    let mut exit = None;
    // Each pass reaps one zombie; the loop ends when none is left (StillAlive / ECHILD).
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exit,
            Ok(status) if status.pid() == Some(step) => {
                exit = StepExit::from_wait(status).or(exit);
            }
            Ok(status) => tracing::trace!(pid = ?status.pid(), "reaped orphan"),
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::warn!("waitpid failed: {err}");
                return exit;
            }
        }
    }
}

/// Last resort when `sigwait` fails: block on the step alone.
fn wait_for(step: Pid) -> StepExit {
    loop {
        match waitpid(step, None) {
            Ok(status) => {
                if let Some(exit) = StepExit::from_wait(status) {
                    return exit;
                }
            }
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::error!("lost the step's exit status: {err}");
                return StepExit::Exited(EXIT_STATUS_LOST);
            }
        }
    }
}
