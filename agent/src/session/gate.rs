//! The DAP gate between a developer's connection and the debuggee.
//!
//! debugpy has no bounded wait (see [`super::dap`]): a debuggee that got part of a
//! debugger's setup and then lost it waits forever. So until the debuggee has received
//! `configurationDone` the gate forwards the developer's bytes only as whole DAP
//! messages, remembers how far the setup got, and keeps the debuggee's socket open when
//! the developer leaves, so the session can still release the step on that very socket.
//! Once `configurationDone` is through, the debuggee runs on its own and the gate is a
//! plain pipe: a developer dropping at a breakpoint is the debugger's business.
//!
//! The gate never waits on its own: the session's attach deadline cancels [`pump`]
//! from outside, and [`GateState`] (owned by the caller) keeps what was half-written,
//! so the release that follows completes the debuggee's current message first.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::dap::{AckScanner, Answer, EndWatcher, Framer, NotDap};
use super::step_end::{self, StepEnd};
use crate::relay::client::Tunnel;

mod ending;
#[cfg(test)]
use ending::CLOSE_DRAIN;
pub use ending::{SESSION_END_TIMEOUT, close_gracefully, end_session};
use ending::{end_refused_session, say_goodbye};

/// Bytes read per transfer in either direction.
const CHUNK: usize = 16 * 1024;

/// How far one debuggee connection's setup got; lives outside [`pump`] so a cancelled
/// pump loses nothing.
#[derive(Debug, Default)]
pub struct GateState {
    framer: Framer,
    /// Whole messages (or, once configured, any bytes) not yet written to the debuggee.
    unsent: Vec<u8>,
    /// Bytes of `unsent` up to the end of the developer's `configurationDone`.
    configuration_done_at: Option<usize>,
    /// Reads debugpy's side of the connection until the debuggee is configured, for the
    /// answers that decide the setup ([`Answer`]).
    answers: AckScanner,
    /// The developer's `configurationDone` was written and debugpy has not answered it
    /// yet: its answer decides whether the step runs. debugpy refuses one that comes out
    /// of order (before `attach`), and a gate that counted the written request as done
    /// let such a client hold the step past the deadline.
    awaiting_answer: bool,
    /// debugpy refused the developer's `attach` (its message): this connection's setup
    /// can never complete, and kept open it holds the debuggee from everyone else.
    attach_refused: Option<String>,
    /// debugpy accepted `configurationDone`: the step runs, the gate is transparent.
    /// Shared so the deadline's owner can read it while a pump holds the state.
    configured: Arc<AtomicBool>,
    /// The last request the developer's side sent (for the log and `status`).
    last_request: Option<String>,
    /// What the developer sends once the gate passes it on: whether it asked debugpy to
    /// end the step (for what the log says when the debugger leaves), and whether it
    /// ended its session in order.
    ends: EndWatcher,
    /// Set for a connection to debugpy's adapter (listen and direct modes): a configured
    /// developer gone without `disconnect` has its session ended in order, with this lock
    /// taken for writing meanwhile, so that developers who come then wait (see
    /// [`end_session`]).
    goodbye: Option<Arc<tokio::sync::RwLock<()>>>,
    /// This connection's adapter session was ended in order (a `disconnect` answered).
    session_ended: bool,
    /// The developer sent `attach` (or `launch`) here: the adapter may have given this
    /// session the debuggee, so ending it takes a `disconnect` (an adapter session that
    /// never got that far has nothing to let go of, and does not answer one before
    /// `initialize`).
    bound: bool,
    /// See [`GateState::developer_sent_first`].
    sent_first: Vec<u8>,
}

impl GateState {
    /// Whether the debuggee received `configurationDone` (the step is not held).
    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// A handle on [`GateState::configured`] that stays readable while a pump runs.
    pub fn configured_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.configured)
    }

    fn set_configured(&self) {
        self.configured.store(true, Ordering::Release);
    }

    /// Whether the developer asked debugpy to end the step (`terminate`, or `disconnect`
    /// with `terminateDebuggee`) after the setup: the step ends, it does not run on.
    pub fn ends_debuggee(&self) -> bool {
        self.ends.ends_debuggee()
    }

    /// How far the setup got, in words: `before any request`, `after "attach"`.
    pub fn progress(&self) -> String {
        match &self.last_request {
            None => "before sending any request".to_owned(),
            Some(command) => format!("after {command:?}"),
        }
    }

    /// How far a setup got in `bytes`, what a developer sent that never reached the
    /// debuggee (it left while debugpy was awaited): [`GateState::progress`] of them.
    pub fn progress_of(bytes: &[u8]) -> String {
        let mut state = GateState::default();
        let _ = state.accept(bytes);
        state.progress()
    }

    /// Whether the gate would pass `bytes` on as the start of a developer's stream
    /// (whole messages with a readable body; the rest cannot be judged yet), or why not.
    pub fn vet(bytes: &[u8]) -> Result<(), NotDap> {
        GateState::default().accept(bytes)
    }

    /// A new developer connection begins: what the last one left unframed (half a
    /// message, or bytes that are not DAP) never reached the debuggee and is not the
    /// start of this one's stream. Whole messages still queued go out as they are.
    fn new_developer(&mut self) -> Result<(), NotDap> {
        drop(self.framer.take_rest());
        self.ends = EndWatcher::default();
        let first = std::mem::take(&mut self.sent_first);
        self.accept(&first)
    }

    /// What the next developer sent before its connection reached the debuggee (direct
    /// mode reads a connection's first message before it reaches debugpy): the start of
    /// its stream, taken before anything [`pump`] reads.
    pub fn developer_sent_first(&mut self, bytes: Vec<u8>) {
        self.sent_first = bytes;
    }

    /// Whether the developer's `configurationDone` went out and debugpy has not answered.
    fn awaiting_answer(&self) -> bool {
        self.awaiting_answer
    }

    /// Makes this a connection to debugpy's adapter (listen and direct modes): a
    /// configured developer gone without `disconnect` has its session ended in order, with
    /// `lock` taken for writing meanwhile so that developers who come then wait (see
    /// [`end_session`]).
    pub fn end_sessions_in_order(&mut self, lock: Arc<tokio::sync::RwLock<()>>) {
        self.goodbye = Some(lock);
    }

    /// debugpy's message if it refused the developer's `attach` (or `launch`) on this
    /// connection (a connection to debugpy's adapter that must not be held).
    pub fn attach_refusal(&self) -> Option<&str> {
        self.attach_refused.as_deref()
    }

    /// Reads debuggee bytes on their way to the developer, until the debuggee is
    /// configured, for debugpy's answers: a successful `configurationDone` configures the
    /// gate; a refused one sends it back to framing the developer's messages (the setup
    /// goes on, or the deadline releases); a refused `attach` is recorded.
    fn observe_debuggee(&mut self, bytes: &[u8]) {
        if self.configured() {
            return;
        }
        let mut next = self.answers.next_answer(bytes);
        while let Some(answer) = next {
            match answer {
                Answer::Configured if self.awaiting_answer => {
                    self.awaiting_answer = false;
                    self.set_configured();
                    return;
                }
                Answer::ConfigurationRefused if self.awaiting_answer => {
                    self.awaiting_answer = false;
                    self.framer = Framer::default();
                    // It watches again from the next configurationDone's end, a message
                    // boundary, not from wherever the refused setup left it.
                    self.ends = EndWatcher::default();
                }
                Answer::AttachRefused(said) => {
                    self.attach_refused.get_or_insert(said);
                }
                // An answer to no configurationDone of this developer's (not theirs), or
                // to a `disconnect` the developer sent during its setup.
                Answer::Configured
                | Answer::ConfigurationRefused
                | Answer::Disconnected
                | Answer::Initialized => {}
            }
            next = self.answers.next_answer(&[]);
        }
    }

    /// Takes developer bytes: whole messages are queued for the debuggee.
    fn accept(&mut self, bytes: &[u8]) -> Result<(), NotDap> {
        if self.configured() || self.configuration_done_at.is_some() || self.awaiting_answer() {
            self.unsent.extend_from_slice(bytes);
            self.ends.push(bytes);
            return Ok(());
        }
        self.framer.push(bytes);
        while let Some(message) = self.framer.next_message()? {
            let command = message.head().ok_or(NotDap::BadBody)?.request_command();
            self.unsent.extend_from_slice(&message.raw);
            if let Some(command) = command {
                if command == "attach" || command == "launch" {
                    self.bound = true;
                }
                if command == "configurationDone" {
                    self.configuration_done_at = Some(self.unsent.len());
                    // Whatever follows goes through as it comes.
                    let rest = self.framer.take_rest();
                    self.unsent.extend_from_slice(&rest);
                    self.ends.push(&rest);
                    self.last_request = Some(command);
                    break;
                }
                self.last_request = Some(command);
            }
        }
        Ok(())
    }

    /// Writes the queued bytes; progress is recorded per write, so cancelling this
    /// future mid-way loses nothing and never splits a message for good.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, debuggee: &mut W) -> io::Result<()> {
        while !self.unsent.is_empty() {
            let written = debuggee.write(&self.unsent).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.unsent.drain(..written.min(self.unsent.len()));
            if let Some(at) = self.configuration_done_at {
                let left = at.saturating_sub(written);
                self.configuration_done_at = (left > 0).then_some(left);
                if left == 0 {
                    self.awaiting_answer = true;
                }
            }
        }
        Ok(())
    }
}

/// How one developer connection through the gate ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// Both directions finished after the debuggee was configured.
    Finished,
    /// The developer's side ended (or broke) before `configurationDone`: the debuggee is
    /// still held and its socket still open.
    LeftDuringSetup,
    /// The developer's side sent bytes that are not DAP; it was cut off.
    NotDap(NotDap),
    /// debugpy refused the developer's `attach` (its message): the developer was given
    /// the refusal and cut off. A connection to debugpy's adapter (listen and direct
    /// modes) is then closed, not held: see [`Answer::AttachRefused`].
    AttachRefused(String),
    /// The debuggee closed its connection (the step ended, or debugpy gave up).
    DebuggeeClosed,
    /// Writing to the debuggee failed.
    DebuggeeBroken(io::Error),
    /// The step ended while the connection was carried ([`carry`] only): debugpy's last
    /// bytes were passed on and the developer's connection ended in order.
    StepEnded,
}

/// Carries one developer connection to `debuggee` through the gate until it ends.
///
/// Cancel-safe with respect to the debuggee: every partial write is in `state`.
pub async fn pump<D, S>(state: &mut GateState, debuggee: &mut D, developer: S) -> PumpEnd
where
    D: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut debuggee_in, mut debuggee_out) = tokio::io::split(debuggee);
    let (mut developer_in, mut developer_out) = tokio::io::split(developer);
    let mut from_developer = vec![0u8; CHUNK];
    let mut from_debuggee = vec![0u8; CHUNK];
    if let Err(not_dap) = state.new_developer() {
        return PumpEnd::NotDap(not_dap);
    }
    if let Err(err) = state.flush(&mut debuggee_out).await {
        return PumpEnd::DebuggeeBroken(err);
    }
    loop {
        // Both reads are cancel-safe (tokio's `read` loses nothing when dropped).
        tokio::select! {
            read = developer_in.read(&mut from_developer) => {
                // A broken developer connection ends like a closed one.
                let n: usize = read.unwrap_or_default();
                if n == 0 {
                    // Gone right after its configurationDone: debugpy's answer decides.
                    while state.awaiting_answer() {
                        let m = debuggee_in.read(&mut from_debuggee).await.unwrap_or(0);
                        if m == 0 {
                            let _ = developer_out.shutdown().await;
                            return PumpEnd::DebuggeeClosed;
                        }
                        let chunk = from_debuggee.get(..m).unwrap_or_default();
                        state.observe_debuggee(chunk);
                        let _ = developer_out.write_all(chunk).await;
                    }
                    if let Some(said) = state.attach_refused.clone() {
                        end_refused_session(state, &mut debuggee_in, &mut debuggee_out).await;
                        state.attach_refused = None;
                        return PumpEnd::AttachRefused(said);
                    }
                    if !state.configured() {
                        return PumpEnd::LeftDuringSetup;
                    }
                    // A developer gone from an adapter session without `disconnect` (its
                    // connection dropped): the adapter ends that session on the close, but
                    // a moment later, and a developer whose `attach` came meanwhile was
                    // refused and left the adapter taking no connection at all. So the
                    // gate sends the `disconnect` (what the adapter does itself: the
                    // debuggee runs on), and developers who come wait until the adapter
                    // has closed (it answers the `disconnect` first).
                    let in_order = state.goodbye.is_some()
                        && !state.ends.disconnected()
                        && state.ends.at_boundary();
                    let _ending = match &state.goodbye {
                        Some(lock) if in_order => Arc::clone(lock).try_write_owned().ok(),
                        _ => None,
                    };
                    if in_order {
                        // Its answer, not the close: the adapter closes a connection as
                        // soon as it reads its end, before it has let go of the step.
                        say_goodbye(
                            &mut debuggee_in,
                            &mut debuggee_out,
                            &mut developer_out,
                            SESSION_END_TIMEOUT,
                        )
                        .await;
                        state.session_ended = true;
                    }
                    // Pass the developer's half-close on; the debuggee may still answer.
                    let _ = debuggee_out.shutdown().await;
                    let _ = tokio::time::timeout(
                        GOODBYE_DRAIN,
                        tokio::io::copy(&mut debuggee_in, &mut developer_out),
                    )
                    .await;
                    let _ = developer_out.shutdown().await;
                    return PumpEnd::Finished;
                }
                let chunk = from_developer.get(..n).unwrap_or_default();
                if let Err(not_dap) = state.accept(chunk) {
                    return PumpEnd::NotDap(not_dap);
                }
                if let Err(err) = state.flush(&mut debuggee_out).await {
                    return PumpEnd::DebuggeeBroken(err);
                }
            }
            read = debuggee_in.read(&mut from_debuggee) => {
                let n = read.unwrap_or(0);
                if n == 0 {
                    let _ = developer_out.shutdown().await;
                    return PumpEnd::DebuggeeClosed;
                }
                let chunk = from_debuggee.get(..n).unwrap_or_default();
                state.observe_debuggee(chunk);
                let delivered = developer_out.write_all(chunk).await.is_ok();
                if let Some(said) = state.attach_refused.clone() {
                    // Ended first: a developer who comes meanwhile waits for it, not for
                    // this one's linger.
                    end_refused_session(state, &mut debuggee_in, &mut debuggee_out).await;
                    if delivered {
                        // The developer reads the refusal, then the end of the connection.
                        let _ = developer_out.shutdown().await;
                        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                            while developer_in.read(&mut from_developer).await.is_ok_and(|n| n > 0) {}
                        })
                        .await;
                    }
                    state.attach_refused = None;
                    return PumpEnd::AttachRefused(said);
                }
                if !delivered && !state.configured() {
                    return PumpEnd::LeftDuringSetup;
                }
            }
        }
    }
}

/// One developer connection: the relayed tunnel is spliced to an in-process pipe whose
/// other end goes through the gate to the debuggee. Ends when the gate's pump ends; the
/// splice then gets `SPLICE_CLOSE_GRACE` to finish its Close and is dropped.
///
/// Once `step_end` is announced the pump goes on for [`step_end::DRAIN`] at most (debugpy's
/// last messages), then ends: the tunnel is ended in order either way, and the carry
/// says [`PumpEnd::StepEnded`].
pub async fn carry<D>(
    tunnel: Tunnel,
    state: &mut GateState,
    debuggee: &mut D,
    step_end: &StepEnd,
) -> PumpEnd
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let _carried = step_end.carrying();
    let (gate_end, tunnel_end) = tokio::io::duplex(PIPE_CAPACITY);
    let splice = tunnel.splice(tunnel_end);
    tokio::pin!(splice);
    let mut splice_done = false;
    let end = {
        // Dropped at the end of this block with the gate's end of the pipe: the splice
        // then reads the pipe's end and closes the tunnel in order.
        let pump = pump(state, debuggee, gate_end);
        tokio::pin!(pump);
        let drained = async {
            step_end.announced().await;
            tokio::time::sleep(step_end::DRAIN).await;
        };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                end = &mut pump => break end,
                result = &mut splice, if !splice_done => {
                    splice_done = true;
                    if let Err(err) = result {
                        tracing::debug!("the developer's relayed connection ended: {err}");
                    }
                }
                () = &mut drained => break PumpEnd::StepEnded,
            }
        }
    };
    // A pump that finished during the drain finished because the step ended.
    let step_ended = step_end.is_announced();
    if !splice_done {
        let _ = tokio::time::timeout(SPLICE_CLOSE_GRACE, splice).await;
    }
    if step_ended { PumpEnd::StepEnded } else { end }
}

/// How long debugpy's last answers are passed on to a configured developer that ended its
/// side (a half-close): until debugpy closes, within this bound.
const GOODBYE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a developer whose `attach` debugpy refused may take to read the refusal and
/// close its side (what it sends meanwhile is dropped): closing a socket with unread bytes
/// resets it, and the reset can overtake the refusal.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes buffered between a tunnel and its gate.
const PIPE_CAPACITY: usize = 64 * 1024;

/// How long a finished developer connection may take to complete its Close.
const SPLICE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a release attempt did not get the debuggee's acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the debuggee did not acknowledge configurationDone within {0:?}")]
    NoAck(std::time::Duration),
    #[error("the debuggee closed the connection before acknowledging")]
    Closed,
    /// debugpy answered `configurationDone` with a failure (e.g. its adapter was not
    /// ready): the release is not done, and is retried.
    #[error("the debuggee refused configurationDone")]
    Refused,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Releases a held debuggee on its own connection: completes any half-written message,
/// sends the release requests (see [`super::dap`]) and waits, bounded by
/// [`super::dap::RELEASE_DRAIN_TIMEOUT`], for the answer to `configurationDone`. After a
/// success it leaves the debuggee [`super::dap::DISCONNECT_SETTLE`] to run on, sends the
/// `disconnect`, and reads on, within the same bound again, until debugpy has taken it
/// and closed: closing at once, with debugpy's answers unread, resets the connection
/// under the adapter.
pub async fn release<D>(state: &mut GateState, debuggee: &mut D) -> Result<(), ReleaseError>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let limit = super::dap::RELEASE_DRAIN_TIMEOUT;
    let mut buf = vec![0u8; CHUNK];
    let acknowledge = async {
        state.flush(debuggee).await?;
        // A message the developer started but never finished is dropped, not completed:
        // the debuggee has seen none of it (only whole messages go through).
        drop(state.framer.take_rest());
        debuggee.write_all(&super::dap::release_requests()).await?;
        debuggee.flush().await?;
        let mut scanner = AckScanner::default();
        loop {
            let n = debuggee.read(&mut buf).await?;
            if n == 0 {
                return Err(ReleaseError::Closed);
            }
            match scanner.scan(buf.get(..n).unwrap_or_default()) {
                Some(true) => {
                    state.awaiting_answer = false;
                    state.set_configured();
                    return Ok(());
                }
                Some(false) => return Err(ReleaseError::Refused),
                None => {}
            }
        }
    };
    match tokio::time::timeout(limit, acknowledge).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(err),
        Err(_) => return Err(ReleaseError::NoAck(limit)),
    }
    // The step runs on whatever happens from here: failures only end the release early.
    let _ = tokio::time::timeout(super::dap::DISCONNECT_SETTLE + limit, async {
        // Read (and drop) what debugpy says meanwhile, so nothing waits on a full buffer.
        let _ = tokio::time::timeout(super::dap::DISCONNECT_SETTLE, async {
            while debuggee.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        if debuggee
            .write_all(&super::dap::disconnect_request())
            .await
            .is_ok()
            && debuggee.flush().await.is_ok()
        {
            while debuggee.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
