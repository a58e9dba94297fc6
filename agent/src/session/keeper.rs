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

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::sidecar::{pidfd_open, poll_timeout};
use super::{DebugMode, SessionSpec, clients_connected, dap, report};
use crate::publish::{SessionState, StatusFile};
use crate::role::ProcessEnv;

/// How long a sidecar whose session is over may take to publish its final state before
/// the keeper SIGKILLs it (the sidecar must be gone within a second of the step).
pub const SIDECAR_EXIT_GRACE: Duration = Duration::from_millis(500);

/// How often the keeper looks whether the sidecar still holds debugpy's connection.
const KEEPER_TICK: Duration = Duration::from_millis(200);

/// How long the keeper keeps trying to release a waiting step after the sidecar died.
pub const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// Pause between two release attempts (debugpy may not listen yet).
const RELEASE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long one connection attempt to debugpy may take.
const RELEASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long debugpy may take to answer the release requests of one attempt.
const RELEASE_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest DAP message (header or body) the keeper reads from debugpy.
const MAX_DAP_MESSAGE: usize = 1 << 20;

/// What the keeper does for a session when its sidecar dies before the step.
#[derive(Debug, Clone)]
pub struct Duties {
    /// None: nothing to record or release.
    session: Option<SessionSpec>,
    /// When the attach timeout runs out (None: never).
    attach_deadline: Option<Instant>,
}

impl Duties {
    /// The duties for `spec`, whose attach timeout starts now.
    pub fn of(spec: &SessionSpec) -> Duties {
        Duties {
            session: Some(spec.clone()),
            attach_deadline: Instant::now().checked_add(spec.attach_timeout),
        }
    }

    /// No session: the keeper only reaps and ends the sidecar.
    pub fn none() -> Duties {
        Duties {
            session: None,
            attach_deadline: None,
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
pub(super) fn keep(duties: &Duties, watch: Watch) -> i32 {
    let sidecar_fd = pidfd_open(watch.sidecar)
        .map_err(|err| tracing::debug!("no pidfd of the sidecar ({err}); polling it"))
        .ok();
    let mut debuggee: Option<OwnedFd> = None;
    loop {
        let wake = wait_session(
            &watch,
            sidecar_fd.as_ref(),
            watch.channel.as_ref(),
            KEEPER_TICK,
        );
        if wake == Wake::SessionOver {
            end_sidecar(watch.sidecar, sidecar_fd.as_ref());
            return 0;
        }
        // Every connection shared so far: the last one is debugpy's current connection.
        while let Some(shared) = watch.channel.as_ref().and_then(receive_debuggee) {
            debuggee = Some(shared);
        }
        match waitpid(watch.sidecar, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, 0)) => {
                // Finished on its own (a setup failure it recorded): nothing to add.
                drop(debuggee.take());
                wait_session(&watch, None, None, Duration::MAX);
                return 0;
            }
            Ok(status) => {
                sidecar_died(
                    duties,
                    &watch,
                    &death_cause(watch.sidecar, status),
                    debuggee,
                );
                return 0;
            }
            Err(err) => {
                tracing::warn!("the keeper lost its sidecar ({err}); it waits for the step");
                wait_session(&watch, None, None, Duration::MAX);
                return 0;
            }
        }
        // The sidecar let go of debugpy's connection (a debugger detached, or it was
        // released): our copy must not keep pydevd from seeing it close.
        if let Some(socket) = &debuggee
            && !holds_socket(watch.sidecar, socket.as_fd())
            && waitpid(watch.sidecar, Some(WaitPidFlag::WNOHANG)) == Ok(WaitStatus::StillAlive)
        {
            debuggee = None;
        }
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
            PollFd::new(watch.lifeline.as_fd(), PollFlags::POLLIN),
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
        if step_gone || (lifeline_moved && lifeline_closed(watch.lifeline.as_fd())) {
            return Wake::SessionOver;
        }
        if other {
            return Wake::Ready;
        }
    }
}

/// Reads what the lifeline has (nobody writes to it): true at EOF.
fn lifeline_closed(lifeline: BorrowedFd<'_>) -> bool {
    let mut sink = [0u8; 64];
    match nix::unistd::read(lifeline, &mut sink) {
        Ok(0) => true,
        Ok(_) | Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
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
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        other => format!("ended ({other:?})"),
    };
    format!("the debug sidecar (pid {sidecar}) {how}")
}

/// The sidecar died while the step lives: record it, release the step, and keep the
/// record until the session is over.
fn sidecar_died(duties: &Duties, watch: &Watch, cause: &str, debuggee: Option<OwnedFd>) {
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
        release(spec, duties.attach_deadline, watch, debuggee);
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

/// Releases a step that may still be held waiting for a debugger.
fn release(
    spec: &SessionSpec,
    attach_deadline: Option<Instant>,
    watch: &Watch,
    debuggee: Option<OwnedFd>,
) {
    match spec.mode {
        DebugMode::Connect => {
            let Some(socket) = debuggee else {
                tracing::debug!("debugpy had not connected to the sidecar: nothing to release");
                return;
            };
            let stream = TcpStream::from(socket);
            match release_over(&stream, watch) {
                Ok(()) => tracing::info!("released the step after the sidecar's death"),
                Err(why) => tracing::warn!("could not release the step: {why}"),
            }
            let _ = stream.shutdown(Shutdown::Both);
        }
        DebugMode::Listen | DebugMode::Direct if !spec.wait_for_client => {}
        DebugMode::Listen => release_listening(spec, watch),
        DebugMode::Direct => {
            // debugpy itself listens on the node: a developer can still attach until the
            // attach timeout, without the sidecar.
            if let Some(deadline) = attach_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if wait_session(watch, None, None, left) == Wake::SessionOver {
                    return;
                }
            }
            if clients_connected(spec.port) {
                tracing::info!("a debugger is attached to debugpy: it releases the step");
                return;
            }
            release_listening(spec, watch);
        }
    }
}

/// Attaches to debugpy and leaves (listen and direct modes), retrying for
/// [`RELEASE_GRACE`] until debugpy acknowledges `configurationDone`.
fn release_listening(spec: &SessionSpec, watch: &Watch) {
    let address = spec.debugpy_address();
    let deadline = Instant::now() + RELEASE_GRACE;
    loop {
        let outcome = TcpStream::connect_timeout(&address, RELEASE_CONNECT_TIMEOUT)
            .map_err(|err| format!("could not reach debugpy at {address}: {err}"))
            .and_then(|stream| {
                let released = release_over(&stream, watch);
                let _ = stream.shutdown(Shutdown::Both);
                released
            });
        match outcome {
            Ok(()) => {
                tracing::info!("released the step after the sidecar's death");
                return;
            }
            Err(why) if Instant::now() >= deadline => {
                tracing::warn!("gave up releasing the step after {RELEASE_GRACE:?}: {why}");
                return;
            }
            Err(why) => tracing::debug!("release attempt failed: {why}"),
        }
        if wait_session(watch, None, None, RELEASE_RETRY_PAUSE) == Wake::SessionOver {
            return;
        }
    }
}

/// Sends the release requests over `stream` and waits (bounded) for the answer to
/// `configurationDone`, then briefly for the one to `disconnect`.
fn release_over(stream: &TcpStream, watch: &Watch) -> Result<(), String> {
    let fail = |what: &str, err: std::io::Error| format!("{what}: {err}");
    // Unread bytes from before (a half-read message) would confuse the answer parser.
    stream
        .set_nonblocking(true)
        .map_err(|e| fail("socket", e))?;
    let mut chunk = [0u8; 4096];
    while matches!((&*stream).read(&mut chunk), Ok(n) if n > 0) {}
    stream
        .set_nonblocking(false)
        .map_err(|e| fail("socket", e))?;
    stream
        .set_write_timeout(Some(RELEASE_ANSWER_TIMEOUT))
        .map_err(|e| fail("socket", e))?;
    (&*stream)
        .write_all(&dap::release_requests())
        .map_err(|e| fail("sending the release", e))?;
    let deadline = Instant::now() + RELEASE_ANSWER_TIMEOUT;
    let mut buffer = Vec::new();
    let mut acknowledged = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let socket = stream.as_fd();
        match wait_readable(watch, socket, left) {
            Wake::Ready => {}
            Wake::SessionOver => return Ok(()),
            Wake::Timeout if acknowledged => return Ok(()),
            Wake::Timeout => return Err("debugpy did not answer the release in time".into()),
        }
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(fail("reading debugpy's answer", err)),
        };
        if n == 0 {
            return if acknowledged {
                Ok(())
            } else {
                Err("debugpy closed the connection before it answered".into())
            };
        }
        buffer.extend_from_slice(chunk.get(..n).unwrap_or_default());
        for command in take_responses(&mut buffer)? {
            match command.as_str() {
                "configurationDone" => acknowledged = true,
                "disconnect" if acknowledged => return Ok(()),
                _ => {}
            }
        }
    }
}

/// Waits up to `timeout` for `fd` to be readable, or the session to end.
fn wait_readable(watch: &Watch, fd: BorrowedFd<'_>, timeout: Duration) -> Wake {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [
            PollFd::new(watch.step.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) if left.is_zero() => return Wake::Timeout,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return Wake::Timeout,
        }
        let fired = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if fired(&fds[0]) {
            return Wake::SessionOver;
        }
        if fired(&fds[1]) {
            return Wake::Ready;
        }
    }
}

/// Takes every complete DAP message off the front of `buffer` and returns the commands
/// of the responses among them. Errors on a message that is not DAP or too long.
fn take_responses(buffer: &mut Vec<u8>) -> Result<Vec<String>, String> {
    let mut commands = Vec::new();
    loop {
        let Some(header_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buffer.len() > MAX_DAP_MESSAGE {
                return Err("debugpy sent a header without an end".into());
            }
            return Ok(commands);
        };
        let header = String::from_utf8_lossy(buffer.get(..header_end).unwrap_or_default());
        let length = header
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("not a DAP message header: {header:?}"))?;
        if length > MAX_DAP_MESSAGE {
            return Err(format!("a DAP message of {length} bytes is too long"));
        }
        let body_start = header_end + 4;
        let Some(body) = buffer.get(body_start..body_start + length) else {
            return Ok(commands);
        };
        if let Ok(message) = serde_json::from_slice::<serde_json::Value>(body)
            && message["type"] == "response"
            && let Some(command) = message["command"].as_str()
        {
            commands.push(command.to_owned());
        }
        buffer.drain(..body_start + length);
    }
}

/// Takes a descriptor the sidecar shared, if one is waiting on the channel.
fn receive_debuggee(channel: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut received = None;
    for cmsg in message.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we are
                // its only owner.
                #[allow(unsafe_code)]
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received = Some(owned);
            }
        }
    }
    received
}

/// Whether `sidecar` still has the socket `ours` refers to open (from /proc). When
/// /proc cannot say, it assumes it does: dropping our copy early is the worse mistake.
fn holds_socket(sidecar: Pid, ours: BorrowedFd<'_>) -> bool {
    let Ok(stat) = nix::sys::stat::fstat(ours) else {
        return true;
    };
    let target = format!("socket:[{}]", stat.st_ino);
    let Ok(entries) = std::fs::read_dir(format!("/proc/{sidecar}/fd")) else {
        return true;
    };
    entries.flatten().any(|entry| {
        std::fs::read_link(entry.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Vec<u8> {
        format!("Content-Length: {}\r\n\r\n{json}", json.len()).into_bytes()
    }

    #[test]
    fn responses_are_taken_off_complete_messages_only() {
        let done = frame(
            r#"{"seq": 4, "type": "response", "command": "configurationDone", "success": true}"#,
        );
        let event = frame(r#"{"seq": 2, "type": "event", "event": "initialized"}"#);
        let mut whole = event.clone();
        whole.extend_from_slice(&done);
        let cases: Vec<(Vec<u8>, Result<Vec<&str>, ()>, usize)> = vec![
            (whole.clone(), Ok(vec!["configurationDone"]), 0),
            (
                done.get(..done.len() - 3).unwrap_or_default().to_vec(),
                Ok(vec![]),
                done.len() - 3,
            ),
            (event.clone(), Ok(vec![]), 0),
            (b"Content-Length: 99999999\r\n\r\n".to_vec(), Err(()), 0),
            (b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), Err(()), 0),
        ];
        for (input, want, left) in cases {
            let mut buffer = input.clone();
            let got = take_responses(&mut buffer);
            match want {
                Ok(commands) => {
                    assert_eq!(got, Ok(commands.iter().map(|c| c.to_string()).collect()));
                    assert_eq!(buffer.len(), left, "{:?}", String::from_utf8_lossy(&input));
                }
                Err(()) => assert!(got.is_err(), "{got:?}"),
            }
        }
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
        assert_eq!(crashed, "the debug sidecar (pid 42) exited with code 101");
    }
}
