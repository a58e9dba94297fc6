//! The byte pump between a sender and a listener after rendezvous: frames are forwarded
//! as they are (opcode, fragmentation), Pings answered, Pongs dropped, and a Close is a
//! half-close: it is forwarded and the other direction keeps flowing until that side
//! closes too (azbridge's `CloseOutput`) — as long as that side keeps sending: once it
//! was sent a Close, each frame it still sends (its own Close included) must arrive
//! within `half_close_timeout`, or the pair is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, Header};
use super::io::{BoxIo, Prefixed};
use crate::relay::protocol::close_code;

/// Payload bytes copied per read while streaming a data frame.
const CHUNK: usize = 16 * 1024;

/// How long a best-effort goodbye (Close frame, TLS close_notify) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

type Stream = Prefixed<BoxIo>;

/// One side's write half, and whether it was already sent a Close.
struct Out {
    w: WriteHalf<Stream>,
    closed: bool,
}

/// One side's writer, and a signal that it was sent a Close, which the reader of that
/// side waits on without the writer's lock (it must not wait for a long write).
struct Side {
    out: Mutex<Out>,
    sent_close: CancellationToken,
}

impl Side {
    fn new(w: WriteHalf<Stream>) -> Arc<Side> {
        Arc::new(Side {
            out: Mutex::new(Out { w, closed: false }),
            sent_close: CancellationToken::new(),
        })
    }

    /// Marks `out` (this side's locked writer) as sent a Close.
    fn mark_closed(&self, out: &mut Out) {
        out.closed = true;
        self.sent_close.cancel();
    }
}

type Shared = Arc<Side>;

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source sent Close, which was forwarded.
    Closed,
    /// The source vanished or broke the protocol; the pair was torn down.
    Gone,
    /// The other direction failed, or the relay is shutting down.
    Aborted,
    /// The source was sent a Close and then stayed silent past the close deadline.
    Unanswered,
}

/// What a finished relayed connection did, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub sender_to_listener: (End, u64),
    pub listener_to_sender: (End, u64),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (e1, b1) = self.sender_to_listener;
        let (e2, b2) = self.listener_to_sender;
        write!(
            f,
            "sender->listener {b1} bytes ({e1:?}), listener->sender {b2} bytes ({e2:?})"
        )
    }
}

/// Relays between `sender` and `listener` until both have closed, one fails, one sent a
/// Close stays silent for `close_deadline` (`half_close_timeout`), or `hard_stop` fires
/// (then both get Close 1001).
pub async fn pump(
    sender: Stream,
    listener: Stream,
    hard_stop: CancellationToken,
    close_deadline: Duration,
) -> Outcome {
    let (sr, sw) = tokio::io::split(sender);
    let (lr, lw) = tokio::io::split(listener);
    let sw = Side::new(sw);
    let lw = Side::new(lw);
    let abort = hard_stop.child_token();
    let (s2l, l2s) = tokio::join!(
        forward(sr, sw.clone(), lw.clone(), abort.clone(), close_deadline),
        forward(lr, lw.clone(), sw.clone(), abort.clone(), close_deadline),
    );
    if hard_stop.is_cancelled() {
        for out in [&sw, &lw] {
            goodbye(out, close_code::GOING_AWAY, "relay shutting down").await;
        }
    }
    for side in [&sw, &lw] {
        let mut out = side.out.lock().await;
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, out.w.shutdown()).await;
    }
    Outcome {
        sender_to_listener: s2l,
        listener_to_sender: l2s,
    }
}

/// Closes a leg that will never be relayed: Close `code`, then TCP/TLS shutdown (bounded).
pub async fn close(mut stream: Stream, code: u16, reason: &str) {
    let frame = frame::control_frame(frame::OP_CLOSE, &frame::close_payload(code, reason));
    let bye = async {
        let _ = write_frame(&mut stream, &frame).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, bye).await;
}

/// Copies frames from `src` to `dst` until Close, failure or abort. Returns how it ended
/// and the payload bytes forwarded.
async fn forward(
    mut src: ReadHalf<Stream>,
    src_out: Shared,
    dst_out: Shared,
    abort: CancellationToken,
    close_deadline: Duration,
) -> (End, u64) {
    let mut bytes = 0u64;
    loop {
        // Once the source was sent a Close, its next frame has `close_deadline` to arrive
        // (re-armed per frame, since the select is rebuilt each time round).
        let unanswered = async {
            src_out.sent_close.cancelled().await;
            tokio::time::sleep(close_deadline).await;
        };
        // `step` is not cancel-safe (a frame may be half copied), and need not be: both
        // cancellations (`abort`, the close deadline) tear the whole pair down.
        let step = tokio::select! {
            step = step(&mut src, &src_out, &dst_out) => step,
            () = abort.cancelled() => return (End::Aborted, bytes),
            () = unanswered => Ok(Step::Unanswered),
        };
        match step {
            Ok(Step::Data(n)) => bytes += n,
            Ok(Step::Control) => {}
            Ok(Step::Close) => return (End::Closed, bytes),
            Ok(Step::Unanswered) => {
                tracing::debug!(
                    "relayed connection: no answer to a Close within {close_deadline:?}"
                );
                abort.cancel();
                goodbye(
                    &dst_out,
                    close_code::GOING_AWAY,
                    "the other side did not answer Close",
                )
                .await;
                return (End::Unanswered, bytes);
            }
            Err(err) => {
                tracing::debug!("relayed connection: {err}");
                let code = match err {
                    FrameError::Protocol(_) => frame::CLOSE_PROTOCOL_ERROR,
                    FrameError::Io(_) => close_code::GOING_AWAY,
                };
                abort.cancel();
                goodbye(&dst_out, close_code::GOING_AWAY, "the other side went away").await;
                if code == frame::CLOSE_PROTOCOL_ERROR {
                    goodbye(&src_out, code, "WebSocket protocol error").await;
                }
                return (End::Gone, bytes);
            }
        }
    }
}

enum Step {
    Data(u64),
    Control,
    Close,
    /// The source, sent a Close, sent nothing more within the close deadline.
    Unanswered,
}

async fn step(
    src: &mut ReadHalf<Stream>,
    src_out: &Shared,
    dst_out: &Shared,
) -> Result<Step, FrameError> {
    let Some(header) = frame::read_header(src).await? else {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    };
    match header.opcode {
        frame::OP_PING => {
            let payload = read_small(src, &header).await?;
            let mut out = src_out.out.lock().await;
            if !out.closed {
                write_frame(&mut out.w, &frame::control_frame(frame::OP_PONG, &payload)).await?;
            }
            Ok(Step::Control)
        }
        frame::OP_PONG => {
            read_small(src, &header).await?;
            Ok(Step::Control)
        }
        frame::OP_CLOSE => {
            let payload = read_small(src, &header).await?;
            let mut out = dst_out.out.lock().await;
            if !out.closed {
                dst_out.mark_closed(&mut out);
                write_frame(&mut out.w, &frame::control_frame(frame::OP_CLOSE, &payload)).await?;
            }
            Ok(Step::Close)
        }
        _ => {
            let mut out = dst_out.out.lock().await;
            copy_data(src, &mut out.w, &header).await?;
            Ok(Step::Data(header.len))
        }
    }
}

/// Reads a control frame's payload (at most 125 bytes, checked by `read_header`; the
/// `take` keeps it so whatever a header claims).
async fn read_small(src: &mut ReadHalf<Stream>, header: &Header) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::with_capacity(frame::MAX_CONTROL_PAYLOAD as usize);
    let limit = header.len.min(frame::MAX_CONTROL_PAYLOAD);
    (&mut *src).take(limit).read_to_end(&mut payload).await?;
    if (payload.len() as u64) < header.len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    frame::unmask(&mut payload, header.mask, 0);
    Ok(payload)
}

/// Streams one data frame's payload from `src` to `dst` without buffering it whole.
async fn copy_data<W: AsyncWrite + Unpin>(
    src: &mut ReadHalf<Stream>,
    dst: &mut W,
    header: &Header,
) -> Result<(), FrameError> {
    dst.write_all(&frame::encode_header(header.fin, header.opcode, header.len))
        .await?;
    // The buffer is at most one chunk, whatever length the header declares.
    let mut buf = vec![0u8; usize::try_from(header.len).map_or(CHUNK, |len| CHUNK.min(len))];
    let mut payload = (&mut *src).take(header.len);
    let mut done = 0u64;
    while done < header.len {
        let n = payload.read(&mut buf).await?;
        let Some(chunk) = buf.get_mut(..n).filter(|c| !c.is_empty()) else {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        };
        frame::unmask(chunk, header.mask, done);
        dst.write_all(chunk).await?;
        done += n as u64;
    }
    dst.flush().await?;
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Sends Close `code` unless that side already got one; bounded, errors ignored.
async fn goodbye(side: &Shared, code: u16, reason: &str) {
    let attempt = async {
        let mut out = side.out.lock().await;
        if !out.closed {
            side.mark_closed(&mut out);
            let frame = frame::control_frame(frame::OP_CLOSE, &frame::close_payload(code, reason));
            let _ = write_frame(&mut out.w, &frame).await;
        }
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, attempt).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// The close deadline of the pumps under test.
    const CLOSE_DEADLINE: Duration = Duration::from_millis(200);

    /// A pump between two in-memory clients; returns the clients' ends and the pump task.
    fn pair() -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Outcome>) {
        let (sender_client, sender_server) = tokio::io::duplex(64 * 1024);
        let (listener_client, listener_server) = tokio::io::duplex(64 * 1024);
        let wrap = |s: DuplexStream| Prefixed::new(Vec::new(), Box::new(s) as BoxIo);
        let pump = tokio::spawn(pump(
            wrap(sender_server),
            wrap(listener_server),
            CancellationToken::new(),
            CLOSE_DEADLINE,
        ));
        (sender_client, listener_client, pump)
    }

    /// A masked client frame.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = frame::encode_header(true, opcode, payload.len() as u64);
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        frame::unmask(&mut body, Some(mask), 0);
        out.extend_from_slice(&body);
        out
    }

    /// The next (unmasked) frame the relay wrote, or `None` at EOF.
    async fn server_frame(s: &mut DuplexStream) -> Option<(u8, Vec<u8>)> {
        let header = frame::read_header(s).await.ok()??;
        let mut payload = vec![0u8; header.len as usize];
        s.read_exact(&mut payload).await.ok()?;
        Some((header.opcode, payload))
    }

    #[tokio::test]
    async fn close_is_forwarded_and_the_other_direction_keeps_flowing() {
        let (mut s, mut l, pump) = pair();
        let close = frame::close_payload(close_code::NORMAL, "");
        s.write_all(&client_frame(frame::OP_PING, b"hi"))
            .await
            .expect("ping");
        assert_eq!(
            server_frame(&mut s).await,
            Some((frame::OP_PONG, b"hi".to_vec()))
        );
        s.write_all(&client_frame(frame::OP_CLOSE, &close))
            .await
            .expect("close");
        assert_eq!(
            server_frame(&mut l).await,
            Some((frame::OP_CLOSE, close.clone()))
        );
        l.write_all(&client_frame(frame::OP_BINARY, b"late"))
            .await
            .expect("data");
        assert_eq!(
            server_frame(&mut s).await,
            Some((frame::OP_BINARY, b"late".to_vec()))
        );
        l.write_all(&client_frame(frame::OP_CLOSE, &close))
            .await
            .expect("close");
        assert_eq!(server_frame(&mut s).await, Some((frame::OP_CLOSE, close)));
        let outcome = pump.await.expect("pump task");
        assert_eq!(outcome.sender_to_listener.0, End::Closed);
        assert_eq!(outcome.listener_to_sender, (End::Closed, 4));
    }

    #[tokio::test]
    async fn a_side_that_never_answers_a_close_is_dropped_at_the_deadline() {
        let (mut s, mut l, pump) = pair();
        // A frame through first, so the listener's direction is already waiting for its
        // next frame when the Close arrives (the deadline must reach a wait in progress).
        l.write_all(&client_frame(frame::OP_BINARY, b"x"))
            .await
            .expect("data");
        assert_eq!(
            server_frame(&mut s).await,
            Some((frame::OP_BINARY, b"x".to_vec()))
        );
        let close = frame::close_payload(close_code::NORMAL, "");
        s.write_all(&client_frame(frame::OP_CLOSE, &close))
            .await
            .expect("close");
        assert_eq!(server_frame(&mut l).await, Some((frame::OP_CLOSE, close)));
        // `l` keeps its socket open and says nothing.
        let started = tokio::time::Instant::now();
        let (opcode, payload) = server_frame(&mut s).await.expect("a close for the sender");
        assert_eq!(
            (opcode, &payload[..2]),
            (frame::OP_CLOSE, &close_code::GOING_AWAY.to_be_bytes()[..])
        );
        assert!(started.elapsed() >= CLOSE_DEADLINE);
        let outcome = pump.await.expect("pump task");
        assert_eq!(outcome.listener_to_sender.0, End::Unanswered);
    }

    #[tokio::test]
    async fn a_vanished_side_gets_the_other_a_going_away_close() {
        let (s, mut l, pump) = pair();
        drop(s);
        let (opcode, payload) = server_frame(&mut l).await.expect("a close frame");
        assert_eq!(opcode, frame::OP_CLOSE);
        assert_eq!(&payload[..2], &close_code::GOING_AWAY.to_be_bytes());
        let outcome = pump.await.expect("pump task");
        assert_eq!(outcome.sender_to_listener.0, End::Gone);
        assert_eq!(outcome.listener_to_sender.0, End::Aborted);
    }

    #[tokio::test]
    async fn a_protocol_error_closes_both_sides() {
        let (mut s, mut l, pump) = pair();
        // RSV1 set: compression that nobody negotiated.
        let mut bad = client_frame(frame::OP_BINARY, b"x");
        bad[0] |= 0x40;
        s.write_all(&bad).await.expect("bad frame");
        let (op, payload) = server_frame(&mut s).await.expect("close to the offender");
        assert_eq!(
            (op, &payload[..2]),
            (
                frame::OP_CLOSE,
                &frame::CLOSE_PROTOCOL_ERROR.to_be_bytes()[..]
            )
        );
        let (op, payload) = server_frame(&mut l).await.expect("close to the other side");
        assert_eq!(
            (op, &payload[..2]),
            (frame::OP_CLOSE, &close_code::GOING_AWAY.to_be_bytes()[..])
        );
        pump.await.expect("pump task");
    }
}
