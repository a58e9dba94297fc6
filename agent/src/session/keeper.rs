//! The keeper: a tiny single-threaded process that is the sidecar's parent (see
//! [`sidecar`](super::sidecar) for how it is forked).
//!
//! It blocks in `poll` on the step's pidfd, the lifeline, the sidecar's pidfd and the
//! channel the sidecar shares debugpy's connection over (connect mode), and:
//! - when the session is over (the step died, or the supervisor closed the lifeline),
//!   gives the sidecar [`SIDECAR_EXIT_GRACE`] to publish its final state, SIGKILLs it if
//!   it is still there, reaps it and exits: the sidecar is gone within a second;
//! - when the sidecar dies while the step lives (killed, crashed), reaps it (no zombie),
//!   records `running-undebugged` with the cause in the session's status record, and
//!   releases a step still held waiting for a debugger, since debugpy has no bounded
//!   wait of its own (see [`dap`](super::dap)); then it keeps the record for the step's
//!   life and exits when the step does.
//!
//! No async runtime here: the keeper must stay alive and small whatever the sidecar did.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

mod adapters;
mod held;
mod release;

use self::held::Held;
use super::lifeline::STEP_EXIT_GRACE;
use super::sidecar::pidfd_open;
use super::{SessionSpec, report};
use crate::poll_deadline::poll_timeout;
use crate::publish::{SessionState, StatusFile};
use crate::role::ProcessEnv;

/// How long a sidecar whose session is over may take to publish its final state before
/// the keeper SIGKILLs it (the sidecar must be gone within a second of the step).
pub const SIDECAR_EXIT_GRACE: Duration = Duration::from_millis(500);

/// How often the keeper looks whether the sidecar still holds debugpy's connection.
const KEEPER_TICK: Duration = Duration::from_millis(200);

/// How long past the attach deadline and the sidecar's own release bound
/// ([`RELEASE_GRACE`](super::RELEASE_GRACE)) the keeper lets a sidecar that still holds
/// debugpy's connection, with no debugger attached, go on: past it the sidecar is stuck
/// (stopped with SIGSTOP, or wedged) and the keeper ends it and releases the step itself.
/// In connect mode nothing else would: debugpy's wait has no bound of its own.
pub const STUCK_SIDECAR_MARGIN: Duration = Duration::from_secs(5);

/// What the keeper does for a session when its sidecar dies before the step.
#[derive(Debug, Clone)]
pub struct Duties {
    /// None: nothing to record or release.
    session: Option<SessionSpec>,
    /// When the attach timeout runs out (None: never).
    attach_deadline: Option<Instant>,
    /// The session's state directory, found (and prepared) once: the stuck-sidecar check
    /// reads the record on every tick while a debugger stays attached past the deadline.
    state_dir: OnceLock<Option<PathBuf>>,
}

impl Duties {
    /// The duties for `spec`, whose attach timeout starts now.
    pub fn of(spec: &SessionSpec) -> Duties {
        Duties {
            session: Some(spec.clone()),
            attach_deadline: Instant::now().checked_add(spec.attach_timeout),
            state_dir: OnceLock::new(),
        }
    }

    /// When a sidecar still holding a waiting step counts as stuck (None: never). The
    /// sidecar gives every debugpy connection it accepts an attach timeout of its own (a
    /// step whose own code calls `debugpy.connect` late in the run, a Python that starts
    /// late): the bound runs from the session's deadline or from the last connection's,
    /// whichever is later. `debuggee_since`: when the keeper got the last connection.
    fn stuck_after(&self, debuggee_since: Option<Instant>) -> Option<Instant> {
        let session = self.attach_deadline?;
        let timeout = self.session.as_ref()?.attach_timeout;
        let deadline = debuggee_since
            .and_then(|since| since.checked_add(timeout))
            .map_or(session, |latest| latest.max(session));
        deadline
            .checked_add(super::RELEASE_GRACE)?
            .checked_add(STUCK_SIDECAR_MARGIN)
    }

    /// The state the session's record holds (None: no readable record).
    fn recorded_state(&self) -> Option<SessionState> {
        let spec = self.session.as_ref()?;
        let dir = self
            .state_dir
            .get_or_init(|| crate::publish::state_dir(spec.state_dir.as_deref(), &ProcessEnv).ok());
        crate::publish::status_file::recorded_state(dir.as_deref()?, spec.holder_pid)
    }

    /// How long the agent waits for the sidecar's readiness: the readiness probe's own
    /// bound (the attach timeout when that is shorter) plus
    /// [`READY_SETUP_MARGIN`](super::sidecar::READY_SETUP_MARGIN), at most
    /// [`READY_TIMEOUT`](super::sidecar::READY_TIMEOUT). A sidecar stopped or stuck in
    /// its setup delays the step no longer than the wait the attach timeout bounds.
    pub fn ready_within(&self) -> Duration {
        use super::sidecar::{READY_SETUP_MARGIN, READY_TIMEOUT};
        match &self.session {
            Some(spec) => spec
                .ready_probe_timeout()
                .saturating_add(READY_SETUP_MARGIN)
                .min(READY_TIMEOUT),
            None => READY_TIMEOUT,
        }
    }

    /// No session: the keeper only reaps and ends the sidecar.
    pub fn none() -> Duties {
        Duties {
            session: None,
            attach_deadline: None,
            state_dir: OnceLock::new(),
        }
    }
}

/// What the keeper watches (built in [`sidecar`](super::sidecar) after its forks).
#[derive(Debug)]
pub(super) struct Watch {
    /// pidfd of the agent: the step in replace mode, the supervisor otherwise.
    pub step: OwnedFd,
    /// Read end of the lifeline.
    pub lifeline: OwnedFd,
    pub sidecar: Pid,
    /// The keeper's end of the channel the sidecar shares debugpy's connection over.
    pub channel: Option<OwnedFd>,
    /// The keeper's copy of the read end of the step's bootstrap report (see
    /// [`crate::inject::bootstrap`]): what the sidecar did not read when it died is read
    /// here (direct mode's debugpy port).
    pub report: Option<OwnedFd>,
    /// Held, never written: the agent sees EOF once the keeper is gone.
    pub _gone: OwnedFd,
}

/// What woke the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The fd waited for is readable.
    Ready,
    /// The session is over: the step died or the lifeline closed.
    SessionOver,
    Timeout,
}

/// The keeper's whole life; returns its exit code.
///
/// `lock` is the port lock the keeper holds for the step (replace mode): it is let go of
/// the moment the session is over, before the sidecar's grace.
pub(super) fn keep(duties: &Duties, watch: Watch, lock: Option<OwnedFd>) -> i32 {
    let code = keep_session(duties, &watch, lock);
    // The session is over. If that is because the step is gone (replace mode: the agent's
    // process; supervise mode: the supervisor ends the session when its step has exited),
    // no debugpy adapter of that step may outlive it.
    if let Some(spec) = &duties.session
        && spec.post_mortem.is_none()
        && (!spec.step_holds_lifeline || gone_within(&watch.step, STEP_EXIT_GRACE))
    {
        let ended = adapters::end_orphans(spec.holder_pid);
        if !ended.is_empty() {
            tracing::info!(
                "ended the debugpy adapter(s) {ended:?} still running after the step \
                 ended (an adapter whose step is gone serves no debugger)"
            );
        }
    }
    code
}

/// Keeps the session until it is over; returns the keeper's exit code.
fn keep_session(duties: &Duties, watch: &Watch, lock: Option<OwnedFd>) -> i32 {
    let sidecar_fd = pidfd_open(watch.sidecar)
        .map_err(|err| tracing::debug!("no pidfd of the sidecar ({err}); polling it"))
        .ok();
    let mut held = Held::default();
    let mut stops = StopSightings::default();
    loop {
        let wake = wait_session(
            watch,
            sidecar_fd.as_ref(),
            watch.channel.as_ref(),
            next_look(duties, &held, sidecar_fd.is_some()),
        );
        if wake == Wake::SessionOver {
            drop(lock);
            end_sidecar(watch.sidecar, sidecar_fd.as_ref());
            // Supervise mode, the supervisor killed (one that ends the session normally
            // has seen its step exit, and waits for us): its step may live on, held by
            // debugpy over the connection we now hold alone.
            if let (Some(spec), Some(socket)) = (&duties.session, held.debuggee.take())
                && !spec.step_holds_lifeline
                && !still_running(&watch.step)
            {
                release::release_orphaned(socket);
            }
            return 0;
        }
        if let Some(channel) = &watch.channel {
            held.receive(channel);
        }
        match waitpid(watch.sidecar, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, 0)) => {
                // Finished on its own (a setup failure it recorded): nothing to add.
                held.drop_all(watch.channel.as_ref());
                wait_session(watch, None, None, Duration::MAX);
                return 0;
            }
            Ok(status) => {
                sidecar_died(duties, watch, &death_cause(watch.sidecar, status), held);
                return 0;
            }
            Err(err) => {
                tracing::warn!("the keeper lost its sidecar ({err}); it waits for the step");
                held.drop_all(watch.channel.as_ref());
                wait_session(watch, None, None, Duration::MAX);
                return 0;
            }
        }
        // The sidecar let go of debugpy's connection (a debugger detached, or it was
        // released): our copy must not keep pydevd from seeing it close.
        // A sidecar that died meanwhile holds nothing, but its connection is ours to
        // release: look (without reaping) whether it still runs.
        if let Some(socket) = &held.debuggee
            && !held::holds_socket(watch.sidecar, socket.as_fd())
            && sidecar_fd.as_ref().is_some_and(still_running)
        {
            tracing::debug!("the sidecar let go of debugpy's connection; so does the keeper");
            held.debuggee = None;
        }
        // Still holding debugpy's connection long past every bound of its own (or never
        // having accepted it), with no debugger attached: the sidecar is stuck (a
        // SIGSTOP, a wedge), and the step waits on it for good. End it and release the
        // step as after its death.
        let now = Instant::now();
        if duties
            .stuck_after(held.debuggee_since)
            .is_some_and(|after| now >= after)
            && let unaccepted = held.unaccepted_since(now, STOP_LOOK_GAP)
            && (unaccepted.is_some() || held.debuggee.is_some())
            && sidecar_stuck(
                duties.recorded_state(),
                watch.sidecar,
                &mut stops,
                unaccepted,
                now,
            )
        {
            let _ = kill(watch.sidecar, Signal::SIGKILL);
            let _ = waitpid(watch.sidecar, None);
            let cause = format!(
                "the debug sidecar (pid {}) still held the step over {} after the attach \
                 deadline (stopped or stuck); the keeper ended it",
                watch.sidecar,
                humantime::format_duration(
                    super::RELEASE_GRACE.saturating_add(STUCK_SIDECAR_MARGIN)
                )
            );
            sidecar_died(duties, watch, &cause, held);
            return 0;
        }
    }
}

/// How long the keeper may sleep before it next looks at the sidecar (the session's end
/// and the channel wake it anyway): a tick while it holds debugpy's connection (or has
/// no pidfd to wake it when the sidecar dies); with only debugpy's listening socket,
/// nothing until the sidecar could count as stuck, then a tick; otherwise for ever.
fn next_look(duties: &Duties, held: &Held, sidecar_has_pidfd: bool) -> Duration {
    if held.debuggee.is_some() || !sidecar_has_pidfd {
        return KEEPER_TICK;
    }
    match (&held.listener, duties.stuck_after(held.debuggee_since)) {
        (Some(_), Some(after)) => after
            .saturating_duration_since(Instant::now())
            .max(KEEPER_TICK),
        _ => Duration::MAX,
    }
}

/// Waits up to `timeout` for the session to end or `extra` / `channel` to be readable.
fn wait_session(
    watch: &Watch,
    extra: Option<&OwnedFd>,
    channel: Option<&OwnedFd>,
    timeout: Duration,
) -> Wake {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut fds = vec![
            PollFd::new(watch.step.as_fd(), PollFlags::POLLIN),
            // No events asked: poll reports POLLHUP (every writer gone) regardless, and
            // the keeper never reads the pipe, whose bytes are the sidecar's (the
            // ENDED_ON_PURPOSE byte says why the lifeline closed).
            PollFd::new(watch.lifeline.as_fd(), PollFlags::empty()),
        ];
        fds.extend(
            [extra, channel]
                .into_iter()
                .flatten()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = left.map_or(PollTimeout::NONE, poll_timeout);
        match poll(&mut fds, timeout) {
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Wake::Timeout,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!("the keeper cannot poll ({err}); it ends the session");
                return Wake::SessionOver;
            }
        }
        let fired = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
        };
        let (step_gone, lifeline_moved, other) = (fired(0), fired(1), fired(2) || fired(3));
        drop(fds);
        if step_gone || lifeline_moved {
            return Wake::SessionOver;
        }
        if other {
            return Wake::Ready;
        }
    }
}

/// Whether the process of `pidfd` is gone within `grace`: one whose lifeline just closed
/// may be exiting, and the kernel signals the pidfd a moment after it closes the fds
/// (the sidecar judges the same moment with the same grace).
fn gone_within(pidfd: &OwnedFd, grace: Duration) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, poll_timeout(grace)) == Ok(1)
}

/// Whether the process of `pidfd` still runs (its pidfd is not readable yet).
fn still_running(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO) == Ok(0)
}

/// The session is over: the sidecar publishes its final state within the grace, or is
/// killed; either way it is reaped.
fn end_sidecar(sidecar: Pid, sidecar_fd: Option<&OwnedFd>) {
    let deadline = Instant::now() + SIDECAR_EXIT_GRACE;
    loop {
        match waitpid(sidecar, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            _ => return,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::debug!("the sidecar outlived its grace; killing it");
            let _ = kill(sidecar, Signal::SIGKILL);
            let _ = waitpid(sidecar, None);
            return;
        }
        match sidecar_fd {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, poll_timeout(left));
            }
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

/// Whether a sidecar still holding debugpy's connection past every bound is stuck: its
/// record says no debugger is attached; or, with no record to ask (a state directory
/// nobody could write), it is stopped. One that leaves debugpy's connection unaccepted
/// (`unaccepted_since`) is stuck when stopped, or once the connection has waited
/// [`UNACCEPTED_STUCK_AFTER`]. An attached debugger may hold the step for as long
/// as the developer likes, but only through a running sidecar: a sidecar stopped with
/// SIGSTOP ('T') carries no debugger's bytes, and its record, which it can no longer
/// update, says "attached" after the developer has gone. (A ptrace stop, 't', is
/// someone inspecting the sidecar, and counts only without a record.) A stop counts only
/// once [`StopSightings`] confirms it.
fn sidecar_stuck(
    recorded: Option<SessionState>,
    sidecar: Pid,
    stops: &mut StopSightings,
    unaccepted_since: Option<Instant>,
    now: Instant,
) -> bool {
    let state = || {
        u32::try_from(sidecar.as_raw())
            .ok()
            .and_then(crate::publish::holder::read_stat)
            .map(|stat| stat.state)
    };
    match (recorded, unaccepted_since) {
        (Some(SessionState::Attached), _) => stops.confirmed(state() == Some('T'), now),
        // Only a connection that waits unaccepted (a late debugpy): a stopped sidecar
        // never takes it, a running one takes it at once, and one that a loaded machine
        // did not schedule for a moment (or a frozen cgroup) takes it late.
        (Some(_), Some(since)) => {
            stops.confirmed(state() == Some('T'), now)
                || now.saturating_duration_since(since) >= UNACCEPTED_STUCK_AFTER
        }
        (Some(_), None) => true,
        (None, _) => stops.confirmed(matches!(state(), Some('T' | 't')), now),
    }
}

/// How long a connection may wait unaccepted on debugpy's listening socket, past every
/// bound, before a sidecar that is not stopped counts as stuck: it accepts within
/// microseconds when it runs, but a sidecar left unscheduled for a moment (a loaded
/// machine, a frozen cgroup) was taken for a stuck one after two looks a keeper tick
/// apart, and a late debugpy lost its session.
const UNACCEPTED_STUCK_AFTER: Duration = Duration::from_secs(2);

/// Longest gap between two of the keeper's looks at a stopped sidecar that still makes
/// them consecutive: a longer one means the keeper itself did not run meanwhile.
const STOP_LOOK_GAP: Duration = Duration::from_secs(1);

/// The keeper's looks at whether the sidecar is stopped. A batch system suspends a whole
/// job with SIGSTOP to every process and resumes it with SIGCONT in turn (LSF `bstop`,
/// PBS `qsig -s suspend`, Slurm gang scheduling): the keeper, continued first, would see
/// a healthy sidecar still stopped. So a stop counts only when seen on two looks at
/// least a keeper tick apart, with no gap longer than [`STOP_LOOK_GAP`] before either.
#[derive(Debug, Default)]
struct StopSightings {
    /// When the current run of stopped sightings began.
    first: Option<Instant>,
    /// The last look, stopped or not.
    last_look: Option<Instant>,
}

impl StopSightings {
    /// Records a look at `now`; true once the stop is confirmed.
    fn confirmed(&mut self, stopped: bool, now: Instant) -> bool {
        let gap = self
            .last_look
            .map(|last| now.saturating_duration_since(last));
        self.last_look = Some(now);
        if !stopped || gap.is_none_or(|gap| gap > STOP_LOOK_GAP) {
            self.first = stopped.then_some(now);
            return false;
        }
        let first = *self.first.get_or_insert(now);
        now.saturating_duration_since(first) >= KEEPER_TICK
    }
}

/// How the sidecar died, in words: "was killed by signal 9 (SIGKILL)".
fn death_cause(sidecar: Pid, status: WaitStatus) -> String {
    let how = match status {
        WaitStatus::Signaled(_, signal, _) => {
            format!(
                "was killed by signal {} ({})",
                signal as i32,
                signal.as_str()
            )
        }
        WaitStatus::Exited(_, super::sidecar::PANICKED_EXIT_CODE) => format!(
            "panicked (exit code {}; a bug of amlx-agent: its message is on the step's \
             stderr, please report it)",
            super::sidecar::PANICKED_EXIT_CODE
        ),
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        other => format!("ended ({other:?})"),
    };
    format!("the debug sidecar (pid {sidecar}) {how}")
}

/// The sidecar died while the step lives: record it, release the step, and keep the
/// record until the session is over.
fn sidecar_died(duties: &Duties, watch: &Watch, cause: &str, mut held: Held) {
    let reason = format!("{cause}; the step runs on without a debugger");
    tracing::warn!(
        "debug session {}: {reason}",
        SessionState::RunningUndebugged
    );
    let record = duties
        .session
        .as_ref()
        .and_then(|spec| record_death(spec, &reason));
    if let Some(spec) = &duties.session {
        // What the sidecar sent just before it died (debugpy's port, say).
        if let Some(channel) = &watch.channel {
            held.receive(channel);
        }
        let debuggee = held.take_connection();
        release::release(
            spec,
            duties.attach_deadline,
            watch,
            debuggee,
            held.listener,
            held.debugpy_port,
        );
    }
    wait_session(watch, None, None, Duration::MAX);
    // Dropping the record removes it: the session ended with the step.
    drop(record);
}

/// Takes over the session's status record (the sidecar owned it) and writes the death.
fn record_death(spec: &SessionSpec, reason: &str) -> Option<StatusFile> {
    let dir = crate::publish::state_dir(spec.state_dir.as_deref(), &ProcessEnv)
        .map_err(|err| tracing::warn!("no status record for the sidecar's death: {err:#}"))
        .ok()?;
    let adopted = match StatusFile::adopt(&dir, spec.holder_pid) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => StatusFile::create(&dir, report::new_record(spec)),
        Err(err) => Err(err),
    };
    let mut file = adopted
        .map_err(|err| tracing::warn!("no status record for the sidecar's death: {err:#}"))
        .ok()?;
    if let Err(err) = file.set_state(SessionState::RunningUndebugged, Some(reason)) {
        tracing::warn!("could not record the sidecar's death: {err:#}");
    }
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_is_stuck_only_without_an_attached_debugger_or_when_stopped() {
        let me = Pid::this();
        let mut stops = StopSightings::default();
        let at_once = Instant::now;
        assert!(sidecar_stuck(
            Some(SessionState::WaitingForDebugger),
            me,
            &mut stops,
            None,
            at_once()
        ));
        assert!(sidecar_stuck(
            Some(SessionState::TimedOut),
            me,
            &mut stops,
            None,
            at_once()
        ));
        assert!(!sidecar_stuck(
            Some(SessionState::Attached),
            me,
            &mut stops,
            None,
            at_once()
        ));
        // No record: only a stopped sidecar is stuck (this process runs).
        assert!(!sidecar_stuck(None, me, &mut stops, None, at_once()));
        // A stopped one is stuck whatever its record says (it cannot update it).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a PID fits i32"));
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        let stopped = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(2));
            crate::publish::holder::read_stat(child.id()).is_some_and(|stat| stat.state == 'T')
        });
        // Confirmed on a second look a tick later, not on the first.
        let looks = |recorded, unaccepted: bool| {
            let mut stops = StopSightings::default();
            let since = Instant::now();
            let look = |stops: &mut StopSightings| {
                let now = Instant::now();
                sidecar_stuck(recorded, pid, stops, unaccepted.then_some(since), now)
            };
            let first = look(&mut stops);
            std::thread::sleep(KEEPER_TICK);
            [first, look(&mut stops)]
        };
        let judged = [
            looks(Some(SessionState::Attached), false),
            looks(None, false),
            // A stopped sidecar never accepts a late debugpy: no long wait needed.
            looks(Some(SessionState::TimedOut), true),
        ];
        let _ = child.kill();
        let _ = child.wait();
        assert!(stopped, "the child never showed as stopped");
        assert_eq!(judged, [[false, true], [false, true], [false, true]]);
    }

    /// A connection left unaccepted by a sidecar that is not stopped (a loaded machine
    /// did not run it for a moment) makes it stuck only after [`UNACCEPTED_STUCK_AFTER`]:
    /// two looks a tick apart took a healthy sidecar for a stuck one, and ended the
    /// session of a debugpy that connected late.
    #[test]
    fn a_running_sidecar_slow_to_accept_is_given_time() {
        let me = Pid::this();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for (waited_ms, want) in [(0, false), (200, false), (1_900, false), (2_000, true)] {
            let mut stops = StopSightings::default();
            let judged =
                [SessionState::TimedOut, SessionState::WaitingForDebugger].map(|recorded| {
                    sidecar_stuck(Some(recorded), me, &mut stops, Some(t0), at(waited_ms))
                });
            assert_eq!(judged, [want, want], "after {waited_ms} ms");
        }
    }

    /// Two looks a tick apart confirm a stop; a look that follows a long gap (the keeper
    /// itself was stopped with the job) or sees the sidecar running starts over.
    #[test]
    fn a_stop_counts_only_on_two_close_looks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        /// Milliseconds after the first look, and whether the sidecar looked stopped.
        type Looks<'a> = &'a [(u64, bool)];
        let cases: &[(&str, Looks, bool)] = &[
            ("one look", &[(0, true)], false),
            ("two looks a tick apart", &[(0, true), (200, true)], true),
            ("two looks too close", &[(0, true), (50, true)], false),
            ("then a third", &[(0, true), (50, true), (250, true)], true),
            (
                "running between",
                &[(0, true), (200, false), (400, true)],
                false,
            ),
            ("after a long gap", &[(0, false), (5000, true)], false),
            (
                "a long gap between stops",
                &[(0, true), (5000, true)],
                false,
            ),
            (
                "the gap, then two close looks",
                &[(0, true), (5000, true), (5200, true)],
                true,
            ),
        ];
        for (name, looks, want) in cases {
            let mut stops = StopSightings::default();
            let last = looks
                .iter()
                .map(|&(ms, stopped)| stops.confirmed(stopped, at(ms)))
                .last();
            assert_eq!(last, Some(*want), "{name}");
        }
    }

    /// The keeper ends the session when the lifeline's last writer is gone, without
    /// reading it: the byte the agent writes before closing it on purpose is the
    /// sidecar's to read (the keeper took it once, and the sidecar then warned that the
    /// step had closed its descriptors).
    #[test]
    fn the_keeper_sees_the_lifeline_close_and_leaves_its_bytes_to_the_sidecar() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let (gone, _gone_write) = nix::unistd::pipe().expect("pipe");
        let watch = Watch {
            step: pidfd_open(Pid::this()).expect("pidfd of this process"),
            lifeline: read,
            sidecar: Pid::this(),
            channel: None,
            report: None,
            _gone: gone,
        };
        // Bytes alone do not end the session.
        nix::unistd::write(&write, b"e").expect("write");
        let wake = wait_session(&watch, None, None, Duration::from_millis(50));
        assert_eq!(wake, Wake::Timeout);
        drop(write);
        let wake = wait_session(&watch, None, None, Duration::from_secs(10));
        assert_eq!(wake, Wake::SessionOver);
        let mut byte = [0u8; 4];
        let n = nix::unistd::read(&watch.lifeline, &mut byte).expect("read");
        assert_eq!(byte.get(..n), Some(&b"e"[..]), "the byte is still there");
    }

    #[test]
    fn causes_name_the_signal_or_the_code() {
        let pid = Pid::from_raw(42);
        let killed = death_cause(pid, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!(
            killed,
            "the debug sidecar (pid 42) was killed by signal 9 (SIGKILL)"
        );
        let crashed = death_cause(pid, WaitStatus::Exited(pid, 101));
        assert!(
            crashed.starts_with("the debug sidecar (pid 42) panicked (exit code 101; a bug"),
            "{crashed}"
        );
        let exited = death_cause(pid, WaitStatus::Exited(pid, 3));
        assert_eq!(exited, "the debug sidecar (pid 42) exited with code 3");
    }
}
