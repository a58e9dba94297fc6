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
use nix::libc;
use nix::sys::prctl;
use nix::unistd::{Pid, getpgrp, isatty, tcgetpgrp, tcsetpgrp};

use super::program::{self, inherit_fds, pre_exec};
use super::signals::{self, Handling};
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
            // `in_child` only makes async-signal-safe system calls (tcsetpgrp, fcntl,
            // sigaction, pthread_sigmask) on values prepared before the fork: no
            // allocation, no locks, so it is sound in the child of a threaded parent.
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
            let received = match self.signals.next() {
                Ok(received) => received,
                Err(err) => {
                    tracing::warn!("sigwaitinfo failed ({err}); no longer forwarding signals");
                    return wait_for(self.step);
                }
            };
            match signals::handling(received.signo) {
                Handling::Reap => {
                    if let Some(exit) = reap(self.step) {
                        tracing::debug!(?exit, "step exited");
                        return exit;
                    }
                }
                Handling::Forward if received.from_self => tracing::debug!(
                    signal = %signals::name(received.signo),
                    "dropped a signal the agent's own write raised"
                ),
                Handling::Forward => forward(self.step, received.signo),
                // Not in the waited set; nothing to do should one ever show up.
                Handling::Ignore | Handling::Uncatchable | Handling::Invalid => {}
            }
        }
    }
}

/// Runs in the child: takes the terminal, keeps `keep_fds` open across `execve`, and
/// restores the signal state the agent received. std does not reset the signal mask
/// for the child (it inherits ours, with every forwarded signal blocked) and sets SIGPIPE
/// to the default, so without the restore the step would start with SIGTERM and friends
/// blocked, SIGTTIN / SIGTTOU ignored, and an ignored SIGPIPE lost.
fn in_child(
    stdin: &std::io::Stdin,
    hand_terminal: bool,
    keep_fds: &[RawFd],
    signals: &SignalMask,
) -> io::Result<()> {
    if hand_terminal {
        // The foreground group gets the terminal's SIGINT / SIGTSTP / reads, like a
        // shell's job. SIGTTOU is still ignored here, so this cannot stop the child.
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

/// Forwards `signo` to the step's process group, or to the step alone when the group
/// is gone (the step moved itself into a new session or group).
fn forward(step: Pid, signo: i32) {
    let signal = signals::name(signo);
    tracing::debug!(%signal, pid = step.as_raw(), "forwarding signal");
    match signals::send(-step.as_raw(), signo) {
        Ok(()) => {}
        Err(Errno::ESRCH) => {
            if let Err(err) = signals::send(step.as_raw(), signo) {
                tracing::debug!(%signal, "step already gone: {err}");
            }
        }
        Err(err) => tracing::warn!(%signal, "cannot forward signal: {err}"),
    }
}

/// One `waitpid` call: `Ok(None)` when `WNOHANG` found nothing to report.
#[allow(unsafe_code)]
fn wait_pid(pid: Pid, flags: libc::c_int) -> nix::Result<Option<(Pid, i32)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable int; waitpid writes only it.
    let reaped = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
    match Errno::result(reaped)? {
        0 => Ok(None),
        reaped => Ok(Some((Pid::from_raw(reaped), status))),
    }
}

/// Reaps every child that has exited; returns the step's end if it was among them.
fn reap(step: Pid) -> Option<StepExit> {
    let mut exit = None;
    // Each pass reaps one zombie; the loop ends when none is left (nothing / ECHILD).
    loop {
        match wait_pid(Pid::from_raw(-1), libc::WNOHANG) {
            Ok(None) | Err(Errno::ECHILD) => return exit,
            Ok(Some((pid, status))) if pid == step => {
                exit = StepExit::from_status(status).or(exit);
            }
            Ok(Some((pid, _))) => tracing::trace!(pid = pid.as_raw(), "reaped orphan"),
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::warn!("waitpid failed: {err}");
                return exit;
            }
        }
    }
}

/// Last resort when `sigwaitinfo` fails: block on the step alone.
fn wait_for(step: Pid) -> StepExit {
    loop {
        match wait_pid(step, 0) {
            Ok(Some((_, status))) => {
                if let Some(exit) = StepExit::from_status(status) {
                    return exit;
                }
            }
            Ok(None) | Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::error!("lost the step's exit status: {err}");
                return StepExit::Exited(EXIT_STATUS_LOST);
            }
        }
    }
}
