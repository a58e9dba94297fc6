//! The supervisor's signal handling, tini's model: block every catchable signal before
//! any thread exists, take them one at a time with `sigwaitinfo`, forward all but the
//! few the supervisor needs itself, and give the step back the mask and dispositions the
//! agent was started with.
//!
//! No signal handler is ever installed, so nothing of ours runs asynchronously. Which
//! signal gets which treatment is [`handling`]; in short:
//!
//! - every catchable signal 1..=31 and every real-time signal is forwarded to the step's
//!   process group, SIGTSTP and SIGCONT included: ^Z-style stops reach the step (the
//!   agent itself never stops on SIGTSTP) and SIGCONT resumes it, as tini does;
//! - SIGCHLD is the supervisor's own: it reaps children;
//! - SIGTTIN and SIGTTOU are ignored by the supervisor (as tini does), so that after it
//!   hands the terminal to the step's group, a log line or `tcsetpgrp` cannot stop it.
//!   One sent with `kill` is therefore dropped; the step gets its inherited disposition;
//! - SIGPIPE and SIGXFSZ that the agent's own writes raise (sender = the agent) are
//!   dropped: they concern the agent's stderr or log file, not the step;
//! - the synchronous signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS)
//!   are blocked and forwarded too when *sent* (`kill`), unlike tini, which dies of them
//!   and orphans its child. A real fault in the agent is still fatal: the kernel unblocks
//!   and delivers a fault it raises whatever the mask.

use std::io;
use std::mem::MaybeUninit;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::inherited::{inherited, is_ignored, set_ignored};

/// What the supervisor does with a signal sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Sent on to the step's process group.
    Forward,
    /// SIGCHLD: the supervisor's own; it reaps children.
    Reap,
    /// SIGTTIN, SIGTTOU: ignored by the supervisor, so they are dropped.
    Ignore,
    /// SIGKILL, SIGSTOP: cannot be caught, blocked or forwarded; they act on the agent.
    Uncatchable,
    /// Not a signal programs receive here: 0, the C library's internal real-time signals
    /// (32 .. SIGRTMIN), or beyond SIGRTMAX.
    Invalid,
}

/// The treatment of signal number `signo` (see the module docs).
pub fn handling(signo: i32) -> Handling {
    const CHLD: i32 = Signal::SIGCHLD as i32;
    const TTIN: i32 = Signal::SIGTTIN as i32;
    const TTOU: i32 = Signal::SIGTTOU as i32;
    const KILL: i32 = Signal::SIGKILL as i32;
    const STOP: i32 = Signal::SIGSTOP as i32;
    match signo {
        CHLD => Handling::Reap,
        TTIN | TTOU => Handling::Ignore,
        KILL | STOP => Handling::Uncatchable,
        1..=31 => Handling::Forward,
        _ if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signo) => Handling::Forward,
        _ => Handling::Invalid,
    }
}

/// Signals the supervisor ignores instead of waiting for (see [`Handling::Ignore`]).
const IGNORED_BY_SUPERVISOR: [Signal; 2] = [Signal::SIGTTIN, Signal::SIGTTOU];

/// One signal taken by [`SignalMask::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Received {
    /// The signal number (real-time signals included, hence not a `Signal`).
    pub(super) signo: i32,
    /// Raised by the agent itself: SIGPIPE / SIGXFSZ from one of its own writes.
    pub(super) from_self: bool,
}

/// Whether a signal with this `si_code` and `si_pid` was raised by process `me` itself.
/// Codes <= 0 are "sent" (kill, sigqueue, tgkill, and the kernel's SIGPIPE / SIGXFSZ for
/// a write, which names the writer); kernel codes (> 0) carry no sender.
fn raised_by(si_code: i32, si_pid: i32, me: i32) -> bool {
    si_code <= libc::SI_USER && si_pid == me
}

/// The first [`SignalMask::block`] of this process: signals stay blocked from then on.
static BLOCKED: std::sync::OnceLock<SignalMask> = std::sync::OnceLock::new();

/// Proof that the supervisor's signals are blocked, and the state to restore in the step.
///
/// Create it on the main thread before any other thread exists (see the module docs of
/// `process`); threads started afterwards inherit the blocked mask.
#[derive(Debug, Clone, Copy)]
pub struct SignalMask {
    /// The mask the agent was started with; the step gets exactly this back.
    original: SigSet,
    /// What the supervisor waits for: every catchable signal except the ignored ones.
    waited: SigSet,
    /// SIGCHLD was ignored when the agent started. Ignoring it makes the kernel reap
    /// children itself and `waitpid` lose the step's status, so the agent resets it to
    /// the default and only the step gets "ignored" back.
    sigchld_ignored: bool,
    /// SIGTTIN / SIGTTOU were ignored before the supervisor ignored them.
    ttin_ignored: bool,
    ttou_ignored: bool,
    /// The recorded SIGPIPE disposition (`None`: not recorded, leave std's default).
    sigpipe_ignored: Option<bool>,
}

impl SignalMask {
    /// Blocks every catchable signal but SIGTTIN and SIGTTOU in the calling thread,
    /// ignores those two, and makes SIGCHLD reportable. Call it before any other thread
    /// exists.
    pub fn block() -> nix::Result<SignalMask> {
        // Blocked already (a supervisor that blocks before its debug session's setup, so
        // that a signal meanwhile waits for the step instead of being lost): the record
        // of the first block holds what the agent received; a second would see our own
        // changes (SIGTTIN ignored) as the agent's.
        if let Some(blocked) = BLOCKED.get() {
            return Ok(*blocked);
        }
        let blocked = Self::block_now()?;
        Ok(*BLOCKED.get_or_init(|| blocked))
    }

    /// The signal state helpers forked while the supervisor's signals are blocked (the
    /// debug session's keeper and sidecar) restore for themselves: the agent's mask and
    /// its SIGCHLD, SIGTTIN and SIGTTOU dispositions. A no-op when nothing was blocked.
    /// SIGPIPE stays as Rust's runtime set it (ignored): helpers write to sockets.
    pub fn restore_in_helper() {
        if let Some(blocked) = BLOCKED.get() {
            // Nothing to report to from a just-forked helper: it goes on regardless.
            let _ = blocked.restore(false);
        }
    }

    fn block_now() -> nix::Result<SignalMask> {
        // sigfillset: every signal, minus the C library's internal ones.
        let mut waited = SigSet::all();
        for signal in IGNORED_BY_SUPERVISOR
            .into_iter()
            .chain([Signal::SIGKILL, Signal::SIGSTOP])
        {
            waited.remove(signal);
        }
        let at_block = waited.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        // The recorded mask is the one the agent's parent gave; nothing changes it before
        // this point, so the two agree unless a library blocked signals on its own.
        let original = inherited().map_or(at_block, |state| state.mask);
        let dispositions = || -> nix::Result<(bool, bool, bool)> {
            let ttin_ignored = ignore(Signal::SIGTTIN)?;
            let ttou_ignored = ignore(Signal::SIGTTOU)?;
            let sigchld_ignored = is_ignored(Signal::SIGCHLD).unwrap_or(false);
            set_ignored(Signal::SIGCHLD, false)?;
            Ok((ttin_ignored, ttou_ignored, sigchld_ignored))
        };
        let (ttin_ignored, ttou_ignored, sigchld_ignored) = match dispositions() {
            Ok(found) => found,
            Err(err) => {
                // The caller then runs the step unsupervised: it must not inherit our mask.
                let _ = at_block.thread_set_mask();
                return Err(err);
            }
        };
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
            ttin_ignored,
            ttou_ignored,
            sigpipe_ignored: inherited().map(|state| state.sigpipe_ignored),
        })
    }

    /// Waits for the next blocked signal (restarting after EINTR).
    #[allow(unsafe_code)]
    pub(super) fn next(&self) -> nix::Result<Received> {
        loop {
            let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
            // SAFETY: `waited` is an initialised sigset_t and `info` a writable siginfo_t;
            // sigwaitinfo reads the one and writes the other, nothing else.
            let signo = unsafe { libc::sigwaitinfo(self.waited.as_ref(), info.as_mut_ptr()) };
            if signo < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    err => return Err(err),
                }
            }
            // SAFETY: zero-initialised, then filled in by the successful sigwaitinfo.
            let info = unsafe { info.assume_init() };
            // SAFETY: the sender's pid sits at the same offset in every member of the
            // siginfo union the kernel fills for a taken signal (zero when it names none).
            let sender = unsafe { info.si_pid() };
            let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            return Ok(Received {
                signo,
                from_self: raised_by(info.si_code, sender, me),
            });
        }
    }

    /// In the forked child, just before `execve`: the dispositions and mask the agent
    /// received. Async-signal-safe (no allocation, only `sigaction` and `pthread_sigmask`).
    /// Runs after std has reset SIGPIPE to the default, and after `tcsetpgrp` (which
    /// needs SIGTTOU still ignored).
    pub(super) fn restore_in_child(&self) -> io::Result<()> {
        Ok(self.restore(true)?)
    }

    /// The agent's SIGCHLD, SIGTTIN and SIGTTOU dispositions, SIGPIPE's too when `sigpipe`
    /// (and recorded), then its mask. Only `sigaction` and `pthread_sigmask`.
    fn restore(&self, sigpipe: bool) -> nix::Result<()> {
        set_ignored(Signal::SIGCHLD, self.sigchld_ignored)?;
        set_ignored(Signal::SIGTTIN, self.ttin_ignored)?;
        set_ignored(Signal::SIGTTOU, self.ttou_ignored)?;
        if let Some(ignored) = self.sigpipe_ignored.filter(|_| sigpipe) {
            set_ignored(Signal::SIGPIPE, ignored)?;
        }
        self.original.thread_set_mask()?;
        Ok(())
    }
}

/// Ignores `signal`; returns whether it was ignored already.
fn ignore(signal: Signal) -> nix::Result<bool> {
    let was = is_ignored(signal).unwrap_or(false);
    set_ignored(signal, true)?;
    Ok(was)
}

/// Sends `signo` (real-time signals included) to `pid`; a negative `pid` is a group.
#[allow(unsafe_code)]
pub(super) fn send(pid: i32, signo: i32) -> nix::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signo) };
    Errno::result(rc).map(drop)
}

/// A signal's name for logs: `SIGTERM`, `SIGRTMIN+3`, or the number.
pub(super) fn name(signo: i32) -> String {
    match Signal::try_from(signo) {
        Ok(signal) => signal.as_str().to_owned(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signo) => {
            format!("SIGRTMIN+{}", signo - libc::SIGRTMIN())
        }
        Err(_) => signo.to_string(),
    }
}

/// Threads in this process (1 when /proc is unavailable: the check is advisory).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |dir| dir.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_number_has_one_treatment() {
        let rtmin = libc::SIGRTMIN();
        let rtmax = libc::SIGRTMAX();
        for signo in 0..=rtmax + 2 {
            let want = match signo {
                17 => Handling::Reap,            // SIGCHLD
                21 | 22 => Handling::Ignore,     // SIGTTIN, SIGTTOU
                9 | 19 => Handling::Uncatchable, // SIGKILL, SIGSTOP
                1..=31 => Handling::Forward,
                _ if signo >= rtmin && signo <= rtmax => Handling::Forward,
                _ => Handling::Invalid, // 0, 32..SIGRTMIN, > SIGRTMAX
            };
            assert_eq!(handling(signo), want, "signal {signo} ({})", name(signo));
        }
        // The ones the issue names: each is forwarded, none is the supervisor's.
        for signal in [
            Signal::SIGALRM,
            Signal::SIGXCPU,
            Signal::SIGXFSZ,
            Signal::SIGVTALRM,
            Signal::SIGPROF,
            Signal::SIGIO,
            Signal::SIGPWR,
            Signal::SIGSTKFLT,
            Signal::SIGILL,
            Signal::SIGTRAP,
            Signal::SIGABRT,
            Signal::SIGFPE,
            Signal::SIGSYS,
            Signal::SIGBUS,
            Signal::SIGSEGV,
            Signal::SIGCONT,
            Signal::SIGURG,
            Signal::SIGPIPE,
            Signal::SIGTSTP,
        ] {
            assert_eq!(handling(signal as i32), Handling::Forward, "{signal}");
        }
    }

    #[test]
    fn only_signals_the_agent_raised_itself_count_as_its_own() {
        const ME: i32 = 4242;
        let cases = [
            // kill() from another process: forwarded.
            (libc::SI_USER, 77, false),
            // The kernel's SIGPIPE / SIGXFSZ for the agent's own write names the agent.
            (libc::SI_USER, ME, true),
            // tgkill / sigqueue by the agent itself.
            (libc::SI_TKILL, ME, true),
            (libc::SI_QUEUE, ME, true),
            (libc::SI_QUEUE, 77, false),
            // Sent from outside our PID namespace: no sender pid.
            (libc::SI_USER, 0, false),
            // Kernel-generated (terminal ^C, SIGCHLD's CLD_EXITED): never "self", even
            // when the pid field happens to match.
            (libc::SI_KERNEL, ME, false),
            (libc::CLD_EXITED, ME, false),
        ];
        for (code, pid, want) in cases {
            assert_eq!(
                raised_by(code, pid, ME),
                want,
                "si_code {code}, si_pid {pid}"
            );
        }
    }

    #[test]
    fn names_for_logs() {
        let rtmin = libc::SIGRTMIN();
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(rtmin), "SIGRTMIN+0");
        assert_eq!(name(rtmin + 3), "SIGRTMIN+3");
        assert_eq!(name(0), "0");
    }
}
