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

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::keeper::{self, Duties, Watch};
use super::lifeline::{ENDED_ON_PURPOSE, Lifeline};
use crate::poll_deadline::poll_timeout;

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
    /// A readiness signal written to `pipe` (a post-mortem helper answers its hook so).
    pub fn new(pipe: File) -> ReadySignal {
        ReadySignal(Some(pipe))
    }

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
            std::process::exit(fork_keeper(keeper, duties, body));
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

/// What the sidecar knows about its keeper.
#[derive(Debug)]
struct KeeperLink {
    pid: Pid,
    /// The sidecar's end of the socket pair descriptors are shared over.
    channel: Option<OwnedFd>,
}

/// Set once in the sidecar, right after its fork.
static KEEPER: OnceLock<KeeperLink> = OnceLock::new();

/// The keeper's PID, in the sidecar (None in any other process).
pub fn keeper_pid() -> Option<u32> {
    KEEPER.get().map(|link| link.pid.as_raw().unsigned_abs())
}

/// What the sidecar hands its keeper over their channel (connect mode), so that the
/// keeper can still release a step that waits in pydevd when the sidecar dies or is
/// stopped: debugpy's wait has no bound of its own, and closing its socket would leave
/// it hung for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The socket debugpy connects to, right after the bind: a connection the sidecar
    /// never accepted (it was stopped, or died first) waits there, and the keeper's
    /// copy keeps it listening, so debugpy's connect succeeds whatever became of the
    /// sidecar.
    Listener,
    /// debugpy's connection, right after the accept.
    Debuggee,
}

impl Shared {
    /// The one byte that travels with the descriptor.
    pub fn tag(self) -> u8 {
        match self {
            Shared::Listener => b'l',
            Shared::Debuggee => b'd',
        }
    }

    /// The kind a received tag names (None: not one of ours).
    pub fn from_tag(tag: u8) -> Option<Shared> {
        [Shared::Listener, Shared::Debuggee]
            .into_iter()
            .find(|kind| kind.tag() == tag)
    }
}

/// Hands the keeper a duplicate of `fd` (see [`Shared`]). Call it right after the bind
/// or the accept. A no-op (with a debug log) when this process has no keeper.
pub fn share_with_keeper(what: Shared, fd: BorrowedFd<'_>) {
    let Some(channel) = KEEPER.get().and_then(|link| link.channel.as_ref()) else {
        tracing::debug!("no keeper to share {what:?} with");
        return;
    };
    let fds = [fd.as_raw_fd()];
    let tag = [what.tag()];
    let message = [IoSlice::new(&tag)];
    let sent = sendmsg::<()>(
        channel.as_raw_fd(),
        &message,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(err) = sent {
        tracing::warn!("could not share debugpy's {what:?} socket with the keeper: {err}");
    }
}

/// The tag of the message that tells the keeper debugpy's port (two bytes, big-endian,
/// after it; no descriptor): direct mode lets debugpy's adapter pick its loopback port,
/// which only the step's bootstrap report says, and the keeper needs it to release the
/// step at the deadline after a sidecar death.
pub const DEBUGPY_PORT_TAG: u8 = b'p';

/// Tells the keeper the port debugpy's adapter listens on (see [`DEBUGPY_PORT_TAG`]). A
/// no-op (with a debug log) when this process has no keeper.
pub fn tell_keeper_debugpy_port(port: u16) {
    let Some(channel) = KEEPER.get().and_then(|link| link.channel.as_ref()) else {
        tracing::debug!("no keeper to tell debugpy's port {port}");
        return;
    };
    let [high, low] = port.to_be_bytes();
    let bytes = [DEBUGPY_PORT_TAG, high, low];
    let message = [IoSlice::new(&bytes)];
    let sent = sendmsg::<()>(
        channel.as_raw_fd(),
        &message,
        &[],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(err) = sent {
        tracing::warn!("could not tell the keeper debugpy's port {port}: {err}");
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

fn wait_ready(read_end: OwnedFd, timeout: Duration) -> Readiness {
    let deadline = Instant::now() + timeout;
    let mut pipe = File::from(read_end);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Readiness::Failed(format!(
                "the relay sidecar was not ready within {} (stopped, or stuck in its setup)",
                humantime::format_duration(timeout)
            ));
        }
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
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
        let err = spawn(&[], None, None, Duties::none(), |_, _| 0).expect_err("must refuse");
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
