//! Ending a session with debugpy's adapter in order (listen and direct modes), and closing
//! a connection to debugpy without a reset.
//!
//! debugpy 1.8.22's adapter lets one session have the debuggee at a time and is fragile
//! around its ends: a session whose connection merely closes lets go of the debuggee a
//! moment later, an `attach` in that moment is refused, and after that, or after resets and
//! overlapping connections closed before any request, it may take no connection at all.
//! So the agent ends a session with a request the adapter answers only once it is done,
//! and closes connections gracefully.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{AckScanner, Answer, CHUNK, GateState};

/// Ends the adapter session of a refused `attach` at once (listen and direct modes), with
/// the lock developers wait on taken meanwhile; a connection to the debuggee itself
/// (connect mode) stays as it is.
pub(super) async fn end_refused_session<R, W>(state: &mut GateState, reader: &mut R, writer: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(lock) = state.goodbye.clone() else {
        return;
    };
    if state.session_ended {
        return;
    }
    let _ending = lock.try_write_owned().ok();
    say_goodbye(reader, writer, &mut tokio::io::sink(), SESSION_END_TIMEOUT).await;
    state.session_ended = true;
}

/// How long ending a session with debugpy's adapter in order may wait for its answer to
/// `disconnect` when developers wait for it (a held connection the next developer
/// replaces, a refused `attach`). debugpy answers requests in turn, and a developer may
/// have queued many before its `attach` failed (200 `setBreakpoints` took it 3.7 s); a
/// connection closed before the answer left the adapter failing on the late answer and
/// serving nobody.
pub const SESSION_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long closing a connection to debugpy reads what debugpy still sends (see
/// [`close_gracefully`]).
pub(super) const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Ends a session with debugpy's adapter in order, leaving the debuggee as it is: completes
/// a message a cancelled write left half-sent, sends `disconnect` (without ending the
/// debuggee) and reads, bounded by `within`, until the adapter has answered it or closed;
/// then closes the connection gracefully ([`close_gracefully`]).
///
/// The adapter answers only once its session has let go of the debuggee. A connection
/// merely closed lets go of it a moment later, and a developer whose `attach` came in that
/// moment was refused ("already being debugged"), after which the adapter took no
/// connection at all: every later developer, and the release, met silence.
pub async fn end_session<D>(state: &mut GateState, debuggee: &mut D, within: std::time::Duration)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    if !state.session_ended {
        let (mut reader, mut writer) = tokio::io::split(&mut *debuggee);
        let flushed = state.flush(&mut writer).await;
        if flushed.is_ok() {
            if state.bound {
                say_goodbye(&mut reader, &mut writer, &mut tokio::io::sink(), within).await;
            } else if state.last_request.is_none() {
                // debugpy 1.8.22's adapter took no connection at all after one that had
                // sent no request closed while another was open (a connection retried, a
                // port scanner): an `initialize` first makes it an ordinary session.
                say_hello(&mut reader, &mut writer, within).await;
            }
        }
        state.session_ended = true;
    }
    close_gracefully(debuggee).await;
}

/// Sends `disconnect` over an adapter session and reads (passing what comes on to `to`)
/// until the adapter answered it or closed, bounded by `within`.
pub(super) async fn say_goodbye<R, W, T>(
    reader: &mut R,
    writer: &mut W,
    to: &mut T,
    within: std::time::Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    T: AsyncWrite + Unpin,
{
    let request = crate::session::dap::disconnect_request();
    let asked = ask(reader, writer, to, &request, Answer::Disconnected, within).await;
    match asked {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!("ending a session with debugpy: {err}"),
        Err(_) => tracing::warn!(
            "debugpy did not answer a disconnect within {}s (it answers requests in turn)",
            within.as_secs()
        ),
    }
}

/// Sends `initialize` over an adapter session and reads until the adapter answered it or
/// closed, bounded by `within`.
async fn say_hello<R, W>(reader: &mut R, writer: &mut W, within: std::time::Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let request = crate::session::dap::initialize_request();
    let sink = &mut tokio::io::sink();
    let _ = ask(reader, writer, sink, &request, Answer::Initialized, within).await;
}

/// Sends `request` and reads (passing what comes on to `to`) until `answer` or the end of
/// the stream, bounded by `within` (`Err` when the bound passed).
async fn ask<R, W, T>(
    reader: &mut R,
    writer: &mut W,
    to: &mut T,
    request: &[u8],
    answer: Answer,
    within: std::time::Duration,
) -> Result<io::Result<()>, tokio::time::error::Elapsed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    T: AsyncWrite + Unpin,
{
    let answered = async {
        writer.write_all(request).await?;
        writer.flush().await?;
        let mut answers = AckScanner::default();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let chunk = buf.get(..n).unwrap_or_default();
            let _ = to.write_all(chunk).await;
            let mut next = answers.next_answer(chunk);
            while let Some(found) = next {
                if found == answer {
                    return Ok(());
                }
                next = answers.next_answer(&[]);
            }
        }
    };
    tokio::time::timeout(within, answered).await
}

/// Closes a connection to debugpy without a reset: ends our side, then reads (and drops)
/// what debugpy still sends until it closes, bounded (2 s). A socket closed
/// with bytes unread is reset, and three resets in a row (debugpy 1.8.22 sends telemetry
/// events on every connection) left its adapter accepting no connection at all.
pub async fn close_gracefully<D>(debuggee: &mut D)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let _ = debuggee.shutdown().await;
    let mut buf = vec![0u8; CHUNK];
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while debuggee.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}
