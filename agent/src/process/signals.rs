//! The supervisor's signal handling: which signals are forwarded, blocking them before
//! any thread exists, taking them with `sigwait`, and giving the step back the mask and
//! dispositions the agent was started with.
//!
//! No signal handler is ever installed: a signal the agent received as ignored stays
//! ignored in the step, and everything else reaches the step with its default action.

use std::io;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};

/// Signals the supervisor forwards to the step's process group (tini's set that matters
/// for training jobs: orchestrator stop, terminal, reload and user signals).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Blocked in the agent but never taken: after handing the terminal to the step's group
/// the agent is a background process, and writing a log line to the terminal must not
/// stop it (SIGTTOU with `stty tostop`), nor must `tcsetpgrp` in the child.
const BACKGROUND_TTY: [Signal; 2] = [Signal::SIGTTIN, Signal::SIGTTOU];

/// Proof that the supervisor's signals are blocked, and the state to restore in the step.
///
/// Create it on the main thread before any other thread exists (see the module docs of
/// `process`); threads started afterwards inherit the blocked mask.
#[derive(Debug, Clone, Copy)]
pub struct SignalMask {
    /// The mask the agent was started with; the step gets exactly this back.
    original: SigSet,
    /// What the supervisor waits for: [`FORWARDED`] plus SIGCHLD.
    waited: SigSet,
    /// SIGCHLD was ignored when the agent started. Ignoring it makes the kernel reap
    /// children itself and `waitpid` lose the step's status, so the agent resets it to
    /// the default and only the step gets "ignored" back.
    sigchld_ignored: bool,
}

impl SignalMask {
    /// Blocks [`FORWARDED`], SIGCHLD, SIGTTIN and SIGTTOU in the calling thread and makes
    /// SIGCHLD reportable. Call it before any other thread exists.
    pub fn block() -> nix::Result<SignalMask> {
        let mut waited: SigSet = FORWARDED.into_iter().collect();
        waited.add(Signal::SIGCHLD);
        let mut blocked = waited;
        blocked.extend(BACKGROUND_TTY);
        let original = blocked.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        let sigchld_ignored = reset_sigchld()?;
        let threads = thread_count();
        if threads > 1 {
            tracing::warn!(
                threads,
                "signals blocked after other threads started; they may take forwarded signals"
            );
        }
        Ok(SignalMask {
            original,
            waited,
            sigchld_ignored,
        })
    }

    /// Waits for the next forwarded signal or SIGCHLD.
    pub(super) fn next(&self) -> nix::Result<Signal> {
        self.waited.wait()
    }

    /// In the forked child, just before `execve`: the dispositions and mask the agent
    /// received. Async-signal-safe (no allocation, only `sigaction` and `pthread_sigmask`).
    #[allow(unsafe_code)]
    pub(super) fn restore_in_child(&self) -> io::Result<()> {
        if self.sigchld_ignored {
            let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: installs SIG_IGN, not a handler: no code of ours runs on delivery.
            unsafe { sigaction(Signal::SIGCHLD, &ignore) }?;
        }
        self.original.thread_set_mask()?;
        Ok(())
    }
}

/// Sets SIGCHLD to its default disposition; returns whether it was ignored.
#[allow(unsafe_code)]
fn reset_sigchld() -> nix::Result<bool> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs SIG_DFL, not a handler: no code of ours runs on delivery. After
    // execve only SIG_DFL or SIG_IGN can be in place, so no handler is being replaced.
    let old = unsafe { sigaction(Signal::SIGCHLD, &default) }?;
    Ok(matches!(old.handler(), SigHandler::SigIgn))
}

/// Threads in this process (1 when /proc is unavailable: the check is advisory).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |dir| dir.count())
}
