//! The sidecar: a child process that carries the relay for exactly the step's lifetime,
//! and the keeper that is its parent.
//!
//! Both are forked before any async runtime thread exists (forking a threaded process
//! leaves locks held by threads that no longer exist). The agent forks an intermediate
//! that forks the [`keeper`] and exits at once; the agent reaps it before it
//! goes on, so the step (which the agent becomes in replace mode) never has a child of
//! ours to reap. The keeper, reparented to init (or the nearest subreaper), forks the
//! sidecar and is its parent: it reaps the sidecar whenever it dies, so no zombie stays,
//! records the death (`status`), releases a step still waiting for a debugger, and
//! makes sure the sidecar is gone within a second of the step.
//!
//! The step is watched through a pidfd of the agent, opened before the forks: it stays
//! valid across the step's `execve` and becomes readable the moment the process is gone.
//! A dead sidecar never takes the step down: nothing links them the other way. The
//! agent learns whether the sidecar is usable through a readiness pipe before the step
//! starts.
//!
//! A second pipe, the lifeline, ends the session without a signal: the sidecar and the
//! keeper read it until EOF, which comes when every holder of its write end is gone. The
//! supervisor (supervise mode) closes it once the step exited; in replace mode the step
//! inherits it across `execve`. SIGTERM cannot serve here, since launchers signal whole
//! process groups while the step may trap the signal and run on; the keeper and the
//! sidecar ignore it.
//!
//! `readiness` holds the readiness pipe's two ends; `keeper_link` what the sidecar tells
//! its keeper over their socket pair.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::keeper::{self, Duties, Watch};
use super::lifeline::{ENDED_ON_PURPOSE, Lifeline};
use crate::poll_deadline::poll_timeout;

mod keeper_link;
mod readiness;

pub use keeper_link::{
    DEBUGPY_PORT_TAG, Shared, keeper_pid, share_with_keeper, tell_keeper_debugpy_port,
};
use keeper_link::{KEEPER, KeeperLink};
use readiness::wait_ready;
pub use readiness::{Readiness, ReadySignal};

/// The longest the parent waits for the sidecar to report that the relay path is usable
/// (a session's own bound is shorter: [`Duties::ready_within`]).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the sidecar's setup (its runtime, the debug port's socket, the status record) may
/// take on top of its readiness probe before the parent stops waiting for it.
pub const READY_SETUP_MARGIN: Duration = Duration::from_secs(5);

/// How long the agent waits for the keeper (and with it the sidecar) to be gone once
/// it closed the lifeline: longer than the keeper's own grace for the sidecar.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(1);

/// Signals a launcher, a scheduler or a terminal sends to the whole process group that
/// are the step's business: the keeper ignores them, and the sidecar inherits that. The
/// user signals are what Slurm's `--signal` and PyTorch Lightning's requeue send; their
/// default action killed the sidecar and keeper without a word, while `status` went on
/// saying the session waited for a debugger. Job-control stops would freeze the session
/// with the step. Real-time signals are added by number in [`ignore_step_signals`].
///
/// Also the signals resource limits and batch systems send (SIGXCPU at a CPU limit, which
/// LSF and SGE send the whole job for it to checkpoint; SIGXFSZ; SIGPWR) and the fault
/// signals when another process sends them (SIGILL, SIGTRAP, SIGABRT, SIGFPE, SIGSYS,
/// SIGSTKFLT): a real fault of the sidecar's own is still fatal (the kernel forces the
/// default action of a fault signal it raises), and so is its own `abort()`.
const STEP_SIGNALS: [Signal; 22] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGABRT,
    Signal::SIGFPE,
    Signal::SIGSYS,
];

/// The agent's handle on a running session: the lifeline's write end, and a pipe whose
/// EOF says the keeper (which outlives the sidecar it reaps) is gone.
#[derive(Debug)]
pub struct Sidecar {
    /// Write end of the lifeline; closing it (in every holder) ends the session.
    lifeline: Option<OwnedFd>,
    /// Read end of a pipe only the keeper writes to (never): EOF once it exited.
    keeper_gone: OwnedFd,
}

impl Sidecar {
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
    /// closes the lifeline and waits (bounded by [`TERMINATE_GRACE`]) until the keeper is
    /// gone. The keeper gives the sidecar a short grace to publish its final state, then
    /// SIGKILLs and reaps it.
    pub fn terminate(mut self) {
        if let Some(lifeline) = self.lifeline.take() {
            // Best effort: a full pipe (nobody reads it) changes only the log line.
            let _ = nix::unistd::write(&lifeline, &[ENDED_ON_PURPOSE]);
        }
        let deadline = Instant::now() + TERMINATE_GRACE;
        let mut pipe = File::from(self.keeper_gone);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "the debug session's keeper did not exit within {TERMINATE_GRACE:?}; \
                     it ends when this process does"
                );
                return;
            }
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(left)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let mut byte = [0u8; 1];
            match pipe.read(&mut byte) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Forks the keeper, which forks the sidecar and runs `body` in it, and waits (bounded)
/// for the sidecar's readiness report. `duties` says what the keeper does when the
/// sidecar dies before the step.
///
/// `close_in_child` are descriptors neither the keeper nor the sidecar may keep (the
/// agent's own copy of the port lock). `report` is the keeper's own copy of the read end
/// of the step's bootstrap report (the sidecar's is `body`'s): after a sidecar death the
/// keeper reads what the sidecar did not. `lock`, when given, is a copy of the port lock
/// the keeper holds for the step (replace mode), and lets go of the moment the step is
/// gone: the step itself does not keep the lock across `execve`, or a child it forked
/// and left running would hold the port after it. `body` returns the sidecar's exit
/// code; it must call `ready()` or `failed()` on the signal it gets.
pub fn spawn<F>(
    close_in_child: &[RawFd],
    lock: Option<OwnedFd>,
    report: Option<OwnedFd>,
    duties: Duties,
    body: F,
) -> anyhow::Result<(Sidecar, Readiness)>
where
    F: FnOnce(ReadySignal, Lifeline) -> i32,
{
    let ready_within = duties.ready_within();
    let threads = settled_thread_count();
    match threads {
        Some(1) => {}
        Some(threads) => {
            bail!("cannot fork the relay sidecar from a process with {threads} threads")
        }
        None => bail!(
            "cannot fork the relay sidecar: this process's threads cannot be counted \
             (/proc/self/task unreadable; out of file descriptors?)"
        ),
    }
    let (read_end, write_end) =
        nix::unistd::pipe().context("could not create the sidecar readiness pipe")?;
    // Close-on-exec, so a supervised step never holds the lifeline by accident.
    let (lifeline_read, lifeline_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("could not create the sidecar lifeline pipe")?;
    let (gone_read, gone_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("could not create the keeper's exit pipe")?;
    // Close-on-exec (pidfd_open always is): the step does not keep a pidfd of itself.
    let step = pidfd_open(nix::unistd::getpid()).context("could not open a pidfd of the step")?;
    // SAFETY: the process has exactly one thread (checked above), so the child starts
    // with no lock held by a vanished thread; the intermediate only closes descriptors
    // and forks again before it exits.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() }.context("could not fork the relay sidecar")?;
    match fork {
        ForkResult::Child => {
            // A supervisor blocks its signals before the session's setup: the keeper and
            // sidecar take back the agent's own.
            crate::process::SignalMask::restore_in_helper();
            drop(read_end);
            drop(lifeline_write);
            drop(gone_read);
            for fd in close_in_child {
                let _ = nix::unistd::close(*fd);
            }
            let keeper = KeeperStart {
                step,
                lifeline: lifeline_read,
                ready: write_end,
                gone: gone_write,
                lock,
                report,
            };
            // A panic in the intermediate, the keeper or the sidecar must end that process
            // here: unwinding on would run the destructors of the agent's frames this fork
            // copied (close descriptors already closed above or reused since, remove the
            // agent's status record, even go on to the agent's own work in this process).
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fork_keeper(keeper, duties, body)
            }))
            .unwrap_or(PANICKED_EXIT_CODE);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            drop(lifeline_read);
            drop(gone_write);
            drop(step);
            drop(lock);
            drop(report);
            // The intermediate exits right after its fork: reaping it here means the step
            // never has a zombie child of ours.
            if let Err(err) = waitpid(child, None) {
                tracing::warn!("could not reap the sidecar's intermediate process: {err}");
            }
            let readiness = wait_ready(read_end, ready_within);
            let sidecar = Sidecar {
                lifeline: Some(lifeline_write),
                keeper_gone: gone_read,
            };
            Ok((sidecar, readiness))
        }
    }
}

/// The exit code of a forked helper (intermediate, keeper, sidecar) that panicked, as
/// Rust's own for a panicking `main`: the panic message is on stderr already.
pub const PANICKED_EXIT_CODE: i32 = 101;

/// What the intermediate hands the keeper.
struct KeeperStart {
    step: OwnedFd,
    lifeline: OwnedFd,
    ready: OwnedFd,
    gone: OwnedFd,
    /// The port lock the keeper holds for the step (replace mode).
    lock: Option<OwnedFd>,
    /// The keeper's copy of the bootstrap report's read end.
    report: Option<OwnedFd>,
}

/// In the intermediate: forks the keeper and returns the intermediate's exit code.
fn fork_keeper<F>(start: KeeperStart, duties: Duties, body: F) -> i32
where
    F: FnOnce(ReadySignal, Lifeline) -> i32,
{
    // SAFETY: forked from a single-threaded process, so single-threaded itself.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() };
    match fork {
        Ok(ForkResult::Child) => run_keeper(start, duties, body),
        Ok(ForkResult::Parent { .. }) => 0,
        Err(err) => {
            ReadySignal(Some(File::from(start.ready)))
                .failed(&format!("could not fork the debug session's keeper: {err}"));
            1
        }
    }
}

/// In the keeper: forks the sidecar, then watches it and the step until both are gone.
fn run_keeper<F>(start: KeeperStart, duties: Duties, body: F) -> i32
where
    F: FnOnce(ReadySignal, Lifeline) -> i32,
{
    ignore_step_signals();
    redirect_stdin_to_null();
    let KeeperStart {
        step,
        lifeline,
        ready,
        gone,
        lock,
        report,
    } = start;
    // Datagrams keep one shared descriptor per message; close-on-exec like the rest.
    let channel = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    );
    let (keeper_end, sidecar_end) = match channel {
        Ok((a, b)) => (Some(a), Some(b)),
        Err(err) => {
            tracing::warn!(
                "no channel from the sidecar to its keeper ({err}); connect mode cannot release a step after a sidecar death"
            );
            (None, None)
        }
    };
    let keeper_pid = nix::unistd::getpid();
    // SAFETY: the keeper is single-threaded (forked from a single-threaded process), so
    // the sidecar starts with no lock held by a vanished thread; it builds its own
    // runtime after the fork.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() };
    match fork {
        Ok(ForkResult::Child) => {
            drop(keeper_end);
            drop(gone);
            drop(lock);
            drop(report);
            let _ = KEEPER.set(KeeperLink {
                pid: keeper_pid,
                channel: sidecar_end,
            });
            let lifeline = Lifeline::new(lifeline, step);
            body(ReadySignal(Some(File::from(ready))), lifeline)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sidecar_end);
            // The sidecar alone reports readiness: the agent sees EOF if it dies first.
            drop(ready);
            let watch = Watch {
                step,
                lifeline,
                sidecar: child,
                channel: keeper_end,
                report,
                _gone: gone,
            };
            keeper::keep(&duties, watch, lock)
        }
        Err(err) => {
            ReadySignal(Some(File::from(ready)))
                .failed(&format!("could not fork the relay sidecar: {err}"));
            1
        }
    }
}

/// `pidfd_open(2)`: a close-on-exec descriptor that becomes readable once `pid` is gone.
pub fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; no
    // memory is passed.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The keeper (and, inherited, the sidecar) ignore the signals launchers send the whole
/// process group: the step decides about those, and the session ends with the step.
fn ignore_step_signals() {
    for signal in STEP_SIGNALS {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety concern.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
    }
    // The real-time signals the C library leaves to applications (their default action
    // ends the process too); nix has no names for them.
    for number in nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX() {
        // SAFETY: as above: SIG_IGN, no handler code.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::libc::signal(number, nix::libc::SIG_IGN) };
    }
}

/// The keeper and the sidecar must not hold the step's stdin (MPI launchers forward
/// stdin to rank 0).
fn redirect_stdin_to_null() {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
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
        let err = spawn(&[], None, None, Duties::none(), |_, _| 0).expect_err("must refuse");
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
