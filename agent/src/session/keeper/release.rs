//! How the keeper releases a step still held waiting for a debugger after the sidecar
//! died: it plays the debugger that attaches and leaves (see [`crate::session::dap`]),
//! with blocking I/O, every wait bounded and the step watched throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::held::accept_pending;
use super::{Wake, Watch, wait_session};
use crate::poll_deadline::poll_timeout;
use crate::ports::connections::established_on;
use crate::session::dap::{self, AckScanner};
use crate::session::{DebugMode, SessionSpec};

/// How long the keeper keeps trying to release a waiting step after the sidecar died.
pub const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// Pause between two release attempts (debugpy may not listen yet).
const RELEASE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long one connection attempt to debugpy may take.
const RELEASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long debugpy may take to answer the release requests of one attempt.
const RELEASE_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Releases a step that may still be held waiting for a debugger.
pub(super) fn release(
    spec: &SessionSpec,
    attach_deadline: Option<Instant>,
    watch: &Watch,
    debuggee: Option<OwnedFd>,
    listener: Option<TcpListener>,
    debugpy_port: Option<u16>,
) {
    match spec.mode {
        DebugMode::Connect => {
            match debuggee {
                Some(socket) => release_connection(watch, socket),
                None => tracing::debug!("debugpy had not connected to the sidecar yet"),
            }
            if let Some(listener) = listener {
                release_later_connections(watch, &listener);
            }
        }
        DebugMode::Listen | DebugMode::Direct if !spec.wait_for_client => {}
        DebugMode::Listen => release_listening(spec, watch, debugpy_port),
        DebugMode::Direct => {
            // debugpy itself listens on the node: a developer can still attach until the
            // attach timeout, without the sidecar.
            if let Some(deadline) = attach_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if wait_session(watch, None, None, left) == Wake::SessionOver {
                    return;
                }
            }
            if established_on(spec.port) {
                tracing::info!("a debugger is attached to debugpy: it releases the step");
                return;
            }
            release_listening(spec, watch, debugpy_port);
        }
    }
}

/// Releases the step held over debugpy's connection `socket` (connect mode). A refusal
/// (debugpy not ready yet) is retried on the same connection, the only one there is.
fn release_connection(watch: &Watch, socket: OwnedFd) {
    let stream = TcpStream::from(socket);
    let deadline = Instant::now() + RELEASE_GRACE;
    retry_release(watch, deadline, || release_over(&stream, Some(watch)));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Connect mode, the sidecar gone: debugpy may connect later still (a step slow to
/// start, a reconnect), and with the keeper's copy of the listening socket its connect
/// succeeds and it waits for a debugger that cannot come. Each such connection is
/// released, for as long as the step lives. Without that copy debugpy's connect would be
/// refused, and the step would run without a debugger only by the bootstrap's grace.
fn release_later_connections(watch: &Watch, listener: &TcpListener) {
    let listening = OwnedFd::from(match listener.try_clone() {
        Ok(copy) => copy,
        Err(err) => {
            tracing::warn!("the keeper cannot watch debugpy's listening socket: {err}");
            return;
        }
    });
    loop {
        match wait_session(watch, Some(&listening), None, Duration::MAX) {
            Wake::SessionOver => return,
            Wake::Ready | Wake::Timeout => {}
        }
        let socket = match accept_pending(listener) {
            Ok(Some(socket)) => socket,
            Ok(None) => continue,
            Err(err) => {
                // Rather than spin on a socket that stays readable: debugpy's next
                // connect is refused, and the bootstrap runs the step without it.
                tracing::warn!(
                    "the keeper could not accept debugpy's connection ({err}); it stops \
                     listening for debugpy"
                );
                return;
            }
        };
        tracing::info!(
            "a connection reached the debug port after the sidecar was gone (debugpy's, as a \
             rule): releasing the step over it"
        );
        release_connection(watch, socket);
    }
}

/// The session ended with its supervisor (killed: a supervisor that exits normally has
/// seen its step exit first) while debugpy's connection was ours, in connect mode: the
/// step, orphaned, may still be held waiting for a debugger, and nobody else is left to
/// release it. One bounded attempt over that connection; a step that is gone answers
/// nothing and costs at most the answer bound.
pub(super) fn release_orphaned(debuggee: OwnedFd) {
    let stream = TcpStream::from(debuggee);
    match release_over(&stream, None) {
        Ok(Release::Done) => tracing::warn!(
            "the session's supervisor is gone: released its step, which debugpy held \
             waiting for a debugger"
        ),
        Ok(Release::SessionOver) => {}
        Err(why) => tracing::debug!("no orphaned step to release: {why}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Attaches to debugpy and leaves (listen and direct modes), retrying until debugpy
/// acknowledges `configurationDone`, for [`RELEASE_GRACE`] in all (the wait for debugpy's
/// port included). `debugpy_port`: the port the sidecar said debugpy's adapter picked
/// (direct mode).
fn release_listening(spec: &SessionSpec, watch: &Watch, debugpy_port: Option<u16>) {
    let deadline = Instant::now() + RELEASE_GRACE;
    let mut address = spec.debugpy_address();
    if address.port() == 0 {
        let reported = debugpy_port.or_else(|| {
            let report = watch.report.as_ref()?;
            reported_port(report.as_fd(), watch, deadline)
        });
        let Some(port) = reported else {
            // The step's bootstrap lets itself go at its own bound.
            tracing::info!(
                "debugpy's port was never reported (debugpy did not start, or the step \
                 ended): the step's own bound releases it if it waits"
            );
            return;
        };
        address.set_port(port);
    }
    retry_release(watch, deadline, || {
        TcpStream::connect_timeout(&address, RELEASE_CONNECT_TIMEOUT)
            .map_err(|err| format!("could not reach debugpy at {address}: {err}"))
            .and_then(|stream| {
                let released = release_over(&stream, Some(watch));
                let _ = stream.shutdown(Shutdown::Both);
                released
            })
    });
}

/// The port debugpy's adapter picked, from the step's bootstrap report (the keeper's copy
/// of its read end) when the sidecar died before it read it: waits for the report until
/// `deadline` (an interpreter still starting), less when the step ends first.
fn reported_port(report: BorrowedFd<'_>, watch: &Watch, deadline: Instant) -> Option<u16> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [
            PollFd::new(report, PollFlags::POLLIN),
            PollFd::new(watch.step.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) if left.is_zero() => return None,
            Ok(0) => {}
            Ok(_) => {
                let [report_events, step_events] =
                    fds.map(|fd| fd.revents().unwrap_or(PollFlags::empty()));
                if report_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                    let mut bytes = [0u8; crate::inject::bootstrap::MAX_REPORT_BYTES];
                    let n = nix::unistd::read(report, &mut bytes).ok()?;
                    return match crate::inject::bootstrap::read_report(bytes.get(..n)?) {
                        crate::inject::bootstrap::Report::Started(port) => port,
                        _ => None,
                    };
                }
                if !step_events.is_empty() {
                    return None;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// How a release attempt ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// debugpy acknowledged: the step runs on.
    Done,
    /// The step ended before debugpy answered: there was nothing (left) to release.
    SessionOver,
}

/// Runs `attempt` until it releases the step, the session ends, or `deadline` has
/// passed (one attempt at least), pausing [`RELEASE_RETRY_PAUSE`] between attempts.
fn retry_release(
    watch: &Watch,
    deadline: Instant,
    mut attempt: impl FnMut() -> Result<Release, String>,
) {
    loop {
        match attempt() {
            Ok(Release::Done) => {
                tracing::info!("released the step after the sidecar's death");
                return;
            }
            Ok(Release::SessionOver) => {
                tracing::debug!("the step ended before the release was answered");
                return;
            }
            Err(why) if Instant::now() >= deadline => {
                tracing::warn!("gave up releasing the step within {RELEASE_GRACE:?}: {why}");
                return;
            }
            Err(why) => tracing::debug!("release attempt failed: {why}"),
        }
        if wait_session(watch, None, None, RELEASE_RETRY_PAUSE) == Wake::SessionOver {
            return;
        }
    }
}

/// Sends the release requests over `stream` and waits (bounded) for debugpy's answer to
/// `configurationDone`: success releases the step, a refusal is an error (retried). After
/// a success it leaves the step [`dap::DISCONNECT_SETTLE`] to run on, sends `disconnect`
/// and waits, within the same bound again, for debugpy to take it and close.
fn release_over(stream: &TcpStream, watch: Option<&Watch>) -> Result<Release, String> {
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
    // The one reading of debugpy's answer the sidecar's release uses too: only a
    // *successful* configurationDone releases the step (debugpy refuses it while its
    // adapter is not ready), and bytes that are not DAP are skipped to the next header.
    let mut scanner = AckScanner::default();
    loop {
        let n = match read_before(stream, watch, deadline, &mut chunk)? {
            Some(n) => n,
            None => return Ok(Release::SessionOver),
        };
        if n == 0 {
            return Err("debugpy closed the connection before it answered".into());
        }
        match scanner.scan(chunk.get(..n).unwrap_or_default()) {
            Some(true) => break,
            Some(false) => return Err("debugpy refused configurationDone (not ready yet)".into()),
            None => {}
        }
    }
    // Released. The step's main thread must leave its wait before `disconnect` clears
    // what released it (see `dap::DISCONNECT_SETTLE`).
    if pause(watch, dap::DISCONNECT_SETTLE) == Wake::SessionOver {
        return Ok(Release::Done);
    }
    if (&*stream).write_all(&dap::disconnect_request()).is_err() {
        return Ok(Release::Done);
    }
    // debugpy answers `disconnect` and closes: closing first, before it has taken the
    // disconnect, left the step held in tests. Failures here change nothing any more.
    let deadline = Instant::now() + RELEASE_ANSWER_TIMEOUT;
    while let Ok(Some(n)) = read_before(stream, watch, deadline, &mut chunk) {
        if n == 0 {
            break;
        }
    }
    Ok(Release::Done)
}

/// Reads what `stream` has before `deadline`: `Ok(None)` when the session ended first,
/// an error when the deadline passed or the read failed.
fn read_before(
    stream: &TcpStream,
    watch: Option<&Watch>,
    deadline: Instant,
    chunk: &mut [u8],
) -> Result<Option<usize>, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_readable(watch, stream.as_fd(), left) {
            Wake::Ready => {}
            Wake::SessionOver => return Ok(None),
            Wake::Timeout => return Err("debugpy did not answer the release in time".into()),
        }
        match (&*stream).read(chunk) {
            Ok(n) => return Ok(Some(n)),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(format!("reading debugpy's answer: {err}")),
        }
    }
}

/// Waits `pause` unless the session (when `watch` is given) ends first.
fn pause(watch: Option<&Watch>, pause: Duration) -> Wake {
    match watch {
        Some(watch) => wait_session(watch, None, None, pause),
        None => {
            std::thread::sleep(pause);
            Wake::Timeout
        }
    }
}

/// Waits up to `timeout` for `fd` to be readable, or the session (when `watch` is
/// given) to end.
fn wait_readable(watch: Option<&Watch>, fd: BorrowedFd<'_>, timeout: Duration) -> Wake {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Without a session to watch, the fd is polled twice: the same answer.
        let step = watch.map_or(fd, |watch| watch.step.as_fd());
        let mut fds = [
            PollFd::new(step, PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) if left.is_zero() => return Wake::Timeout,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return Wake::Timeout,
        }
        let fired = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if watch.is_some() && fired(&fds[0]) {
            return Wake::SessionOver;
        }
        if fired(&fds[1]) {
            return Wake::Ready;
        }
    }
}
