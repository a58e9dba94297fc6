//! The byte pump between a sender and a listener after rendezvous: frames are forwarded
//! as they are (opcode, fragmentation), Pings answered, Pongs dropped, and a Close is a
//! half-close: it is forwarded and the other direction keeps flowing until that side
//! closes too (azbridge's `CloseOutput`) — as long as that side keeps sending: once it
//! was sent a Close, each frame it still sends (its own Close included) must arrive
//! within `half_close_timeout`, or the pair is dropped. Every frame written to a side
//! must be taken within `stalled_write_timeout`: while a write waits nothing is read
//! from the other side, so a peer that stops reading would otherwise hold both legs
//! forever, even after the other side has gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::io::{BoxIo, Prefixed};
use crate::relay::protocol::close_code;
use crate::relay::websocket::{FrameError, FrameReader, FrameWriter, OpCode, OutFrame};

/// How long a best-effort goodbye (Close frame, TLS close_notify) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Servers never mask what they send.
const SERVER_MASKS: bool = false;

type Stream = Prefixed<BoxIo>;

/// One side's write half, and whether it was already sent a Close.
struct Out {
    w: FrameWriter<WriteHalf<Stream>>,
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
            out: Mutex::new(Out {
                w: FrameWriter::new(w, SERVER_MASKS),
                closed: false,
            }),
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
    /// The destination did not take a frame within the write deadline (it stopped
    /// reading); the pair was torn down.
    DestinationStalled,
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

/// The two bounds of a relayed pair.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Silence allowed from a side that was sent a Close (`half_close_timeout`).
    pub close: Duration,
    /// Time one frame may take to be written to a side (`stalled_write_timeout`).
    pub write: Duration,
}

/// Relays between `sender` and `listener` until both have closed, one fails, one sent a
/// Close stays silent for `deadlines.close`, a frame is not taken within
/// `deadlines.write`, or `hard_stop` fires (then both get Close 1001).
pub async fn pump(
    sender: Stream,
    listener: Stream,
    hard_stop: CancellationToken,
    deadlines: Deadlines,
) -> Outcome {
    let (sr, sw) = tokio::io::split(sender);
    let (lr, lw) = tokio::io::split(listener);
    let (sw, lw): (Shared, Shared) = (Side::new(sw), Side::new(lw));
    // The upgrade's leftover bytes are replayed by `Prefixed`.
    // Both legs are clients of ours (the sender, the listener's rendezvous): masked.
    let (sr, lr) = (
        FrameReader::from_client(sr, Vec::new()),
        FrameReader::from_client(lr, Vec::new()),
    );
    let abort = hard_stop.child_token();
    let (s2l, l2s) = tokio::join!(
        forward(sr, sw.clone(), lw.clone(), abort.clone(), deadlines),
        forward(lr, lw.clone(), sw.clone(), abort.clone(), deadlines),
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
    let bye = async {
        let _ = FrameWriter::new(&mut stream, SERVER_MASKS)
            .write_close(code, reason)
            .await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, bye).await;
}

/// Copies frames from `src` to `dst` until Close, failure or abort. Returns how it ended
/// and the payload bytes forwarded.
async fn forward(
    mut src: FrameReader<ReadHalf<Stream>>,
    src_out: Shared,
    dst_out: Shared,
    abort: CancellationToken,
    deadlines: Deadlines,
) -> (End, u64) {
    let close_deadline = deadlines.close;
    let mut bytes = 0u64;
    loop {
        // Once the source was sent a Close, its next frame has `close_deadline` to arrive
        // (re-armed per frame, since the select is rebuilt each time round).
        let unanswered = async {
            src_out.sent_close.cancelled().await;
            // Boxed, like every write below: a timer inline would be carried by every
            // idle pair's task.
            Box::pin(tokio::time::sleep(close_deadline)).await;
        };
        // `step` is not cancel-safe once it writes (a frame may be half written), and
        // need not be: both cancellations (`abort`, the close deadline) tear the whole
        // pair down.
        let step = tokio::select! {
            step = step(&mut src, &src_out, &dst_out, deadlines.write) => step,
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
            Err(Stalled { side, within }) => {
                tracing::debug!(
                    "relayed connection: a frame was not taken within {within:?}; dropping the pair"
                );
                abort.cancel();
                // Its stream may end inside a frame: no Close after it, only the shutdown.
                // (A writer still holding its lock is the other direction's, aborted too.)
                if let Ok(mut out) = side.out.try_lock() {
                    out.closed = true;
                }
                let other = if Arc::ptr_eq(&side, &dst_out) {
                    &src_out
                } else {
                    &dst_out
                };
                goodbye(
                    other,
                    close_code::GOING_AWAY,
                    "the other side stopped reading",
                )
                .await;
                // The destination stopped reading, or the source did (a Pong it was sent).
                let end = if Arc::ptr_eq(&side, &dst_out) {
                    End::DestinationStalled
                } else {
                    End::Gone
                };
                return (end, bytes);
            }
            Err(Failed(err)) => {
                tracing::debug!("relayed connection: {err}");
                abort.cancel();
                goodbye(&dst_out, close_code::GOING_AWAY, "the other side went away").await;
                // 1002 for a protocol error, 1009 for a frame over the limit, with the
                // error itself as the reason (cut to fit).
                if let Some(code) = err.close_code() {
                    goodbye(&src_out, code, &err.to_string()).await;
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

/// Why a step ended the pair.
enum StepError {
    /// `side` did not take a frame within `within` (its lock included).
    Stalled { side: Shared, within: Duration },
    /// The source vanished or broke the protocol, or a write failed.
    Failed(FrameError),
}
use StepError::{Failed, Stalled};

impl From<FrameError> for StepError {
    fn from(err: FrameError) -> Self {
        Failed(err)
    }
}

impl From<std::io::Error> for StepError {
    fn from(err: std::io::Error) -> Self {
        Failed(FrameError::Io(err))
    }
}

/// Runs `write` (which locks `side` and writes to it) within `within`.
async fn bounded_write<T>(
    side: &Shared,
    within: Duration,
    write: impl Future<Output = std::io::Result<T>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(within, write).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(Stalled {
            side: Arc::clone(side),
            within,
        }),
    }
}

/// Forwards one frame (or one piece of a long data frame: the codec hands data on in
/// bounded pieces, re-fragmenting as RFC 6455 lets an intermediary); each write has
/// `write_deadline`.
async fn step(
    src: &mut FrameReader<ReadHalf<Stream>>,
    src_out: &Shared,
    dst_out: &Shared,
    write_deadline: Duration,
) -> Result<Step, StepError> {
    let Some(frame) = src.read_frame().await? else {
        return Err(Failed(FrameError::Io(
            std::io::ErrorKind::UnexpectedEof.into(),
        )));
    };
    // The writing half of a step is a future of its own, boxed: it exists only while a
    // frame is written. Inline, its locks, timer and write would make the task of every
    // pair, idle ones included, as big as the largest write (3.3 KB a pair before).
    Box::pin(pass_on(frame, src_out, dst_out, write_deadline)).await
}

/// Writes `frame`, read from the side `src_out` writes to, where it goes: a Pong back to
/// its source for a Ping, anything else to `dst_out`; each write has `write_deadline`.
async fn pass_on(
    frame: crate::relay::websocket::Frame,
    src_out: &Shared,
    dst_out: &Shared,
    write_deadline: Duration,
) -> Result<Step, StepError> {
    match frame.opcode {
        OpCode::Ping => {
            let pong = async {
                let mut out = src_out.out.lock().await;
                if !out.closed {
                    out.w.write_frame(OpCode::Pong, &frame.payload).await?;
                }
                Ok(())
            };
            bounded_write(src_out, write_deadline, pong).await?;
            Ok(Step::Control)
        }
        OpCode::Pong => Ok(Step::Control),
        OpCode::Close => {
            let close = async {
                let mut out = dst_out.out.lock().await;
                if !out.closed {
                    dst_out.mark_closed(&mut out);
                    out.w.write_frame(OpCode::Close, &frame.payload).await?;
                }
                Ok(())
            };
            bounded_write(dst_out, write_deadline, close).await?;
            Ok(Step::Close)
        }
        OpCode::Text | OpCode::Binary | OpCode::Continuation => {
            let data = async {
                let mut out = dst_out.out.lock().await;
                out.w
                    .send(OutFrame {
                        opcode: frame.opcode,
                        fin: frame.fin,
                        payload: &frame.payload,
                    })
                    .await
            };
            bounded_write(dst_out, write_deadline, data).await?;
            Ok(Step::Data(frame.payload.len() as u64))
        }
    }
}

/// Sends Close `code` unless that side already got one; bounded, errors ignored.
async fn goodbye(side: &Shared, code: u16, reason: &str) {
    let attempt = async {
        let mut out = side.out.lock().await;
        if !out.closed {
            side.mark_closed(&mut out);
            let _ = out.w.write_close(code, reason).await;
        }
    };
    // Boxed: rare, and inline it would be carried by every idle pair's task.
    let _ = Box::pin(tokio::time::timeout(GOODBYE_TIMEOUT, attempt)).await;
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio_util::codec::Encoder as _;

    use super::*;
    use crate::relay::websocket::{Codec, MAX_FRAME_LEN, close_code as ws_close, close_payload};

    /// A test client: frames the relay wrote come out of `r`; raw bytes go into `w`.
    struct Client {
        r: FrameReader<ReadHalf<DuplexStream>>,
        w: WriteHalf<DuplexStream>,
    }

    /// A pump between two in-memory clients; returns the clients and the pump task.
    /// The close deadline of the pumps under test (long: these tests do not probe it;
    /// `tests/relay_server/abuse.rs` does, through the binary).
    const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
    /// The write deadline of the pumps under test (long, as above).
    const WRITE_DEADLINE: Duration = Duration::from_secs(60);

    /// The task of a relayed pair is alive, at this size, for every idle tunnel of
    /// `relay serve` (thousands): the budget is 16 KB a tunnel for the whole
    /// process. Before the writes were boxed it was 3352 bytes.
    #[test]
    fn an_idle_pairs_task_is_small() {
        const LARGEST_PAIR_TASK: usize = 2048;
        let wrap = |s: DuplexStream| Prefixed::new(Vec::new(), Box::new(s) as BoxIo);
        let ((a, _a), (b, _b)) = (tokio::io::duplex(64), tokio::io::duplex(64));
        let deadlines = Deadlines {
            close: CLOSE_DEADLINE,
            write: WRITE_DEADLINE,
        };
        let task = pump(wrap(a), wrap(b), CancellationToken::new(), deadlines);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= LARGEST_PAIR_TASK,
            "a pair's task is {size} bytes, over {LARGEST_PAIR_TASK}: box what only a busy pair needs"
        );
    }

    fn pair() -> (Client, Client, tokio::task::JoinHandle<Outcome>) {
        let (sender_client, sender_server) = tokio::io::duplex(64 * 1024);
        let (listener_client, listener_server) = tokio::io::duplex(64 * 1024);
        let wrap = |s: DuplexStream| Prefixed::new(Vec::new(), Box::new(s) as BoxIo);
        let pump = tokio::spawn(pump(
            wrap(sender_server),
            wrap(listener_server),
            CancellationToken::new(),
            Deadlines {
                close: CLOSE_DEADLINE,
                write: WRITE_DEADLINE,
            },
        ));
        let client = |s: DuplexStream| {
            let (r, w) = tokio::io::split(s);
            Client {
                r: FrameReader::new(r, Vec::new()),
                w,
            }
        };
        (client(sender_client), client(listener_client), pump)
    }

    /// A masked client frame.
    fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Codec::new(true)
            .encode(
                OutFrame {
                    opcode,
                    fin: true,
                    payload,
                },
                &mut out,
            )
            .expect("encodable");
        out.to_vec()
    }

    /// The next frame the relay wrote, or `None` at EOF.
    async fn server_frame(c: &mut Client) -> Option<(OpCode, Vec<u8>)> {
        let frame = c.r.read_frame().await.ok()??;
        Some((frame.opcode, frame.payload.to_vec()))
    }

    #[tokio::test]
    async fn close_is_forwarded_and_the_other_direction_keeps_flowing() {
        let (mut s, mut l, pump) = pair();
        let close = close_payload(close_code::NORMAL, "");
        s.w.write_all(&client_frame(OpCode::Ping, b"hi"))
            .await
            .expect("ping");
        assert_eq!(
            server_frame(&mut s).await,
            Some((OpCode::Pong, b"hi".to_vec()))
        );
        s.w.write_all(&client_frame(OpCode::Close, &close))
            .await
            .expect("close");
        assert_eq!(
            server_frame(&mut l).await,
            Some((OpCode::Close, close.clone()))
        );
        l.w.write_all(&client_frame(OpCode::Binary, b"late"))
            .await
            .expect("data");
        assert_eq!(
            server_frame(&mut s).await,
            Some((OpCode::Binary, b"late".to_vec()))
        );
        l.w.write_all(&client_frame(OpCode::Close, &close))
            .await
            .expect("close");
        assert_eq!(server_frame(&mut s).await, Some((OpCode::Close, close)));
        let outcome = pump.await.expect("pump task");
        assert_eq!(outcome.sender_to_listener.0, End::Closed);
        assert_eq!(outcome.listener_to_sender, (End::Closed, 4));
    }

    #[tokio::test]
    async fn a_vanished_side_gets_the_other_a_going_away_close() {
        let (s, mut l, pump) = pair();
        drop(s);
        let (opcode, payload) = server_frame(&mut l).await.expect("a close frame");
        assert_eq!(opcode, OpCode::Close);
        assert_eq!(
            payload.get(..2),
            Some(&close_code::GOING_AWAY.to_be_bytes()[..])
        );
        let outcome = pump.await.expect("pump task");
        assert_eq!(outcome.sender_to_listener.0, End::Gone);
        assert_eq!(outcome.listener_to_sender.0, End::Aborted);
    }

    #[tokio::test]
    async fn a_bad_frame_closes_both_sides_with_the_right_codes() {
        let mut rsv1 = client_frame(OpCode::Binary, b"x");
        // RSV1 set: compression that nobody negotiated.
        rsv1[0] |= 0x40;
        let mut too_big = vec![0x82, 0x80 | 127];
        too_big.extend_from_slice(&(MAX_FRAME_LEN as u64 + 1).to_be_bytes());
        let mut unmasked = BytesMut::new();
        Codec::new(false)
            .encode(
                OutFrame {
                    opcode: OpCode::Binary,
                    fin: true,
                    payload: b"in the clear",
                },
                &mut unmasked,
            )
            .expect("encodable");
        let close = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            client_frame(OpCode::Close, &payload)
        };
        // (what, the frame, the code and part of the reason the offender gets)
        let cases = [
            (
                "reserved bit",
                rsv1,
                ws_close::PROTOCOL_ERROR,
                "protocol error",
            ),
            (
                "frame over the limit",
                too_big,
                ws_close::TOO_BIG,
                "exceeds",
            ),
            // RFC 6455 5.1: a server must close on a client frame that is not masked.
            (
                "unmasked",
                unmasked.to_vec(),
                ws_close::PROTOCOL_ERROR,
                "mask",
            ),
            // Close codes only ever reported, never sent (7.4.1), and a non-UTF-8 reason
            // (8.1): forwarded as they were, strict peers failed the connection.
            (
                "close 1005",
                close(1005, b""),
                ws_close::PROTOCOL_ERROR,
                "close code",
            ),
            (
                "close 999",
                close(999, b"x"),
                ws_close::PROTOCOL_ERROR,
                "close code",
            ),
            (
                "close 2999",
                close(2999, b""),
                ws_close::PROTOCOL_ERROR,
                "close code",
            ),
            (
                "reason",
                close(1000, b"\xff\xfe"),
                ws_close::PROTOCOL_ERROR,
                "UTF-8",
            ),
        ];
        for (name, bad, code, why) in cases {
            let (mut s, mut l, pump) = pair();
            s.w.write_all(&bad).await.expect("bad frame");
            let (op, payload) = server_frame(&mut s).await.expect("close to the offender");
            assert_eq!(
                (op, payload.get(..2)),
                (OpCode::Close, Some(&code.to_be_bytes()[..])),
                "{name}"
            );
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            assert!(reason.contains(why), "{name}: {reason}");
            let (op, payload) = server_frame(&mut l).await.expect("close to the other side");
            assert_eq!(
                (op, payload.get(..2)),
                (
                    OpCode::Close,
                    Some(&close_code::GOING_AWAY.to_be_bytes()[..])
                ),
                "{name}"
            );
            pump.await.expect("pump task");
        }
    }

    /// A sender that stops reading while the listener sends, then the listener
    /// vanishes: nothing reads the vanished leg while the write to the sender waits, so
    /// only the write deadline ends the pair (time is paused: it passes when all wait).
    #[tokio::test(start_paused = true)]
    async fn a_side_that_stops_reading_is_dropped_at_the_write_deadline() {
        let (s, l, pump) = pair();
        let Client {
            r: l_read,
            w: mut l_write,
        } = l;
        let frame = client_frame(OpCode::Binary, &vec![7u8; 16 * 1024]);
        let flood = tokio::spawn(async move {
            // Far more than both in-memory pipes hold: the last writes wait for good.
            for _ in 0..64 {
                l_write.write_all(&frame).await.expect("listener data");
            }
        });
        // Until every buffer between the listener and the sender is full.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        flood.abort();
        let _ = flood.await;
        drop(l_read);
        let outcome = tokio::time::timeout(WRITE_DEADLINE * 2, pump)
            .await
            .expect("the pair outlived its write deadline")
            .expect("pump task");
        assert!(started.elapsed() <= WRITE_DEADLINE + GOODBYE_TIMEOUT * 2);
        // The log blames the side that stopped reading, not the listener that sent.
        assert_eq!(outcome.listener_to_sender.0, End::DestinationStalled);
        assert_eq!(outcome.sender_to_listener.0, End::Aborted);
        drop(s);
    }

    #[tokio::test]
    async fn a_long_frame_arrives_whole_in_bounded_pieces() {
        let (mut s, mut l, pump) = pair();
        let data: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
        let wire = client_frame(OpCode::Binary, &data);
        let write = tokio::spawn(async move {
            s.w.write_all(&wire).await.expect("long frame");
            s
        });
        let mut got = Vec::new();
        while got.len() < data.len() {
            let (op, piece) = server_frame(&mut l).await.expect("a piece");
            let want = if got.is_empty() {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            assert_eq!(op, want);
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, data);
        drop(write.await.expect("writer"));
        drop(l);
        pump.await.expect("pump task");
    }
}
