//! One relayed connection as a byte stream, and splicing it to a local TCP socket with
//! half-close in both directions (azbridge semantics).
//!
//! - Local TCP read hits EOF: send Close (azbridge's `CloseOutput`) and keep reading.
//! - Close arrives: shut down the local write side and keep sending the other direction
//!   until the local side ends too; only then is our Close sent. Should the relay's
//!   connection end first, the tunnel ends with it: nothing sent after that could arrive.
//!
//! Message boundaries mean nothing: every data frame is a slice of the stream.
//!
//! A break is not an end: a Close with any code but 1000 (or none), or a transport that
//! ends without a Close, fails the splice, and the local connection, armed to reset from
//! the moment it was taken ([`reset_unless_ended_in_order`]), is dropped with a reset, so
//! the local program never takes a cut stream for a complete one. A local connection that fails (reset, a write not taken) sends Close
//! 1011 for the far side to do the same.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;

use super::handshake::WebSocket;
use super::tls::BoxedIo;
use crate::relay::protocol::close_code;
use crate::relay::websocket::{FrameError, FrameReader, FrameWriter, OpCode};

mod splice;

/// Most bytes read from local TCP into one frame: large enough that a bulk stream costs
/// few system calls and frames, and what the relay hands on as one piece anyway.
const CHUNK: usize = crate::relay::websocket::PIECE_LEN;

/// A write that either end of a tunnel has not taken within this is a dead tunnel: a
/// relay that stops reading, or a local peer that does (a hung debugger, a stopped
/// process), must not hold a debug session, its task and its place under the tunnel cap
/// forever. The relay must take each frame (64 KiB at most) within it; the local side,
/// some bytes (so a local reader that is slow but reading is never cut off).
pub const TUNNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the Close that tells the far side our local connection failed may take: the
/// splice has ended already, so this is only a courtesy.
const BROKEN_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The reason of the Close 1011 sent when the local connection failed.
const LOCAL_FAILED_REASON: &str = "the far side's local connection failed";

/// The most stream bytes [`Tunnel::hold_until`] keeps for later; past that it stops
/// reading (the relay's flow control holds the peer) until it is done holding.
pub const MAX_HELD_BYTES: usize = 64 * 1024;

/// Whether a Close with `code` ends a stream in order: 1000, or no code at all (some
/// clients, Node's `ws` among them, close without one). Any other code (1001 "going
/// away" from a relay whose other side vanished, 1011) means the stream was cut.
fn is_orderly_close(code: u16) -> bool {
    code == close_code::NORMAL || code == close_code::NO_STATUS
}

/// Makes `tcp` end with a reset however it is closed, until [`end_in_order`]: a local
/// program whose tunnel broke (or could not be opened) sees a failure, not the clean end
/// of a stream that was cut short, and should this process die (kill -9) the kernel's
/// close is a reset too. Set from the moment a local connection is taken; every path
/// that drops it without [`end_in_order`] resets it.
pub fn reset_unless_ended_in_order(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        tracing::debug!("could not arm the local connection's reset: {e}");
    }
}

/// Undoes [`reset_unless_ended_in_order`] once both directions ended in order: the close
/// is a FIN again, and bytes the local program has not read yet are not thrown away.
pub fn end_in_order(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let off = nix::libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(tcp, Linger, &off) {
        tracing::debug!("could not clear the local connection's reset: {e}");
    }
}

/// A failure of the local side of a splice (as opposed to the relay's): the far side is
/// told with Close 1011.
#[derive(Debug, thiserror::Error)]
#[error("the local connection failed: {0}")]
struct LocalFailure(io::Error);

/// Wraps an error of the local side as a [`LocalFailure`], keeping its kind.
fn local_failure(err: io::Error) -> io::Error {
    io::Error::new(err.kind(), LocalFailure(err))
}

/// Runs one frame write to the relay, bounded by [`TUNNEL_WRITE_TIMEOUT`].
async fn bounded(write: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    bounded_to("the relay took no frame", write).await
}

/// Runs one write or shutdown of the local side, bounded by [`TUNNEL_WRITE_TIMEOUT`].
async fn bounded_local<T>(write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    bounded_to("the local side took no bytes", write).await
}

/// Writes all of `data` to the local side; each write has [`TUNNEL_WRITE_TIMEOUT`] to take
/// some of it.
async fn write_local<W: AsyncWrite + Unpin>(local: &mut W, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = bounded_local(local.write(data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = data.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// Runs `write` within [`TUNNEL_WRITE_TIMEOUT`]; past it, an error that says `stalled`.
async fn bounded_to<T>(stalled: &str, write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(TUNNEL_WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{stalled} for {TUNNEL_WRITE_TIMEOUT:?}"),
        )),
    }
}

/// The sending half, shared by the data pump and Pong replies.
#[derive(Debug)]
struct Writer {
    frames: FrameWriter<WriteHalf<BoxedIo>>,
    /// Our Close went out: nothing else may be sent (not even a Pong).
    closed: bool,
    /// A frame write started and did not finish (its future was dropped, or it failed):
    /// the stream may end inside a frame, so nothing more may be written.
    torn: bool,
}

impl Writer {
    /// Writes one frame, bounded by [`TUNNEL_WRITE_TIMEOUT`]; marks the writer torn until
    /// the write completes (a write cut short, failed or its future dropped, leaves it so).
    async fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        self.torn = true;
        bounded(self.frames.write_frame(opcode, payload)).await?;
        self.torn = false;
        Ok(())
    }

    /// Sends `data` as one binary frame, masked where it lies (never copied); torn as
    /// [`Writer::frame`].
    async fn data_in_place(&mut self, data: &mut [u8]) -> io::Result<()> {
        self.torn = true;
        bounded(self.frames.send_in_place(OpCode::Binary, true, data)).await?;
        self.torn = false;
        Ok(())
    }
}

/// A relayed connection after the WebSocket upgrade.
#[derive(Debug)]
pub struct Tunnel {
    reader: FrameReader<ReadHalf<BoxedIo>>,
    writer: Arc<Mutex<Writer>>,
    /// Stream bytes received but not consumed yet (e.g. read past the preamble).
    pending: Vec<u8>,
    /// Bytes of `pending` already written to the local side by [`Tunnel::deliver_pending`]
    /// (counted in the splice's [`SpliceStats::received`]).
    delivered: u64,
    /// A Pong arrived since our last [`Tunnel::ping`].
    pong_seen: bool,
    /// The peer's Close arrived (its direction is finished).
    peer_closed: bool,
    /// The reason its Close gave, when it gave one (a listener that could not reach its
    /// target says why: "VS Code is not listening").
    peer_close_reason: Option<String>,
    /// The code of the peer's Close (1005 when it had none).
    peer_close_code: Option<u16>,
}

/// The peer's answer as [`Tunnel::splice_after`] read it: `Err` when it did not come in
/// time, else what [`Tunnel::read_exact`] returned.
pub type Answer = Result<io::Result<Option<Vec<u8>>>, tokio::time::error::Elapsed>;

/// Judges the peer's answer ([`Answer`]), given the reason of its Close when it closed
/// with one instead of answering.
pub type AnswerCheck = Box<dyn FnOnce(Answer, Option<&str>) -> io::Result<()> + Send>;

/// What [`Tunnel::splice_after`] waits for from the peer before its bytes reach the local
/// side.
pub struct Expect {
    /// How many bytes the answer is.
    pub len: usize,
    /// How long the peer has to send them.
    pub within: Duration,
    /// Accepts the answer (`Ok`) or says why not; given the reason of the peer's Close
    /// when it closed with one instead of answering.
    pub check: AnswerCheck,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expect")
            .field("len", &self.len)
            .field("within", &self.within)
            .finish_non_exhaustive()
    }
}

/// How a splice ended, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes from the relay to local TCP.
    pub received: u64,
    /// Bytes from local TCP to the relay.
    pub sent: u64,
}

impl Tunnel {
    pub fn new(ws: WebSocket) -> Tunnel {
        Tunnel {
            reader: ws.reader,
            writer: Arc::new(Mutex::new(Writer {
                frames: ws.writer,
                closed: false,
                torn: false,
            })),
            pending: Vec::new(),
            delivered: 0,
            pong_seen: false,
            peer_closed: false,
            peer_close_reason: None,
            peer_close_code: None,
        }
    }

    /// Stream bytes received and not delivered yet (see [`Tunnel::hold_until`]).
    pub fn held(&self) -> &[u8] {
        &self.pending
    }

    /// The reason the peer's Close gave, if it closed with one.
    pub fn peer_close_reason(&self) -> Option<&str> {
        self.peer_close_reason.as_deref()
    }

    /// Reads exactly `n` stream bytes; `None` if the peer closed (or the transport
    /// ended) first.
    pub async fn read_exact(&mut self, n: usize) -> io::Result<Option<Vec<u8>>> {
        while self.pending.len() < n {
            match self.next_data().await {
                Ok(Some(data)) => self.pending.extend_from_slice(&data),
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let rest = self.pending.split_off(n);
        Ok(Some(std::mem::replace(&mut self.pending, rest)))
    }

    /// Writes the stream bytes received but not consumed yet (what came with the preamble)
    /// to the local side now, rather than when the splice starts: a listener hands a
    /// client's first request to its target before it answers the sender.
    pub async fn deliver_pending<W: AsyncWrite + Unpin>(
        &mut self,
        local: &mut W,
    ) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        write_local(local, &pending).await?;
        self.delivered += pending.len() as u64;
        Ok(())
    }

    /// The next data payload; answers Pings on the way. `None` at the peer's Close, an
    /// `UnexpectedEof` error when the transport ends without one.
    async fn next_data(&mut self) -> io::Result<Option<Bytes>> {
        if self.peer_closed {
            return Ok(None);
        }
        loop {
            let frame = match self.reader.read_frame().await {
                Ok(frame) => frame,
                Err(err) => return Err(self.refuse(err).await),
            };
            let Some(frame) = frame else {
                // Without a Close the peer's state is unknown: abort rather than
                // half-close, or the other direction could wait forever.
                self.peer_closed = true;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the relayed connection ended without a Close frame",
                ));
            };
            match frame.opcode {
                OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                    return Ok(Some(frame.payload));
                }
                OpCode::Ping => self.answer_ping(&frame.payload).await?,
                OpCode::Pong => self.pong_seen = true,
                OpCode::Close => {
                    let (code, reason) = frame.close_code();
                    tracing::debug!(code, reason, "peer closed its direction");
                    self.peer_closed = true;
                    self.peer_close_reason = Some(reason).filter(|r| !r.is_empty());
                    self.peer_close_code = Some(code);
                    return Ok(None);
                }
            }
        }
    }

    /// Holds a tunnel that carries nothing yet (a spare: [`super::spare`]) until `stop`
    /// resolves, answering Pings meanwhile; then hands back the tunnel, still unused, with
    /// what `stop` gave. `Err` when the tunnel died first: the peer closed it, sent bytes
    /// (nothing may come before our preamble), broke the protocol or the transport ended.
    /// The tunnel is closed then (each write bounded by [`TUNNEL_WRITE_TIMEOUT`]).
    pub async fn idle_until<F: Future>(mut self, stop: F) -> io::Result<(Tunnel, F::Output)> {
        tokio::pin!(stop);
        loop {
            // Only reads race `stop`: they are cancel-safe (a part-read frame stays in
            // the reader), where a Pong cut off mid-write would spoil the stream.
            let frame = tokio::select! {
                out = &mut stop => return Ok((self, out)),
                frame = self.reader.read_frame() => frame,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the relayed connection ended without a Close frame",
                    ));
                }
                Err(err) => return Err(self.refuse(err).await),
            };
            match frame.opcode {
                OpCode::Ping => self.answer_ping(&frame.payload).await?,
                OpCode::Pong => {}
                OpCode::Close => {
                    let (code, reason) = frame.close_code();
                    self.finish(close_code::NORMAL, "").await;
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the peer closed it (code {code}) {reason:?}"),
                    ));
                }
                OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                    self.finish(close_code::POLICY, "bytes before the preamble")
                        .await;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer sent bytes before the preamble",
                    ));
                }
            }
        }
    }

    /// Holds a tunnel whose bytes have nowhere to go yet (a developer waiting while the
    /// debuggee starts) until `stop` resolves, answering Pings meanwhile; stream bytes that
    /// arrive are kept (up to [`MAX_HELD_BYTES`]) for the splice to deliver first. `None`
    /// when the peer left first (its Close, a broken frame, or the transport's end): a
    /// peer gone is not to be connected to anything.
    pub async fn hold_until<F: Future>(&mut self, stop: F) -> Option<F::Output> {
        tokio::pin!(stop);
        loop {
            if self.peer_closed {
                return None;
            }
            // `stop` first: done at once, it decides, whatever the peer did meanwhile (a
            // peer that left is then found out where its bytes go).
            if self.pending.len() >= MAX_HELD_BYTES {
                return Some(stop.await);
            }
            // Only reads race `stop`: they are cancel-safe (a part-read frame stays in the
            // reader), where a Pong cut off mid-write would spoil the stream.
            let frame = tokio::select! {
                biased;
                out = &mut stop => return Some(out),
                frame = self.reader.read_frame() => frame,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.peer_closed = true;
                    return None;
                }
                Err(err) => {
                    let _ = self.refuse(err).await;
                    return None;
                }
            };
            match frame.opcode {
                OpCode::Ping => {
                    if self.answer_ping(&frame.payload).await.is_err() {
                        return None;
                    }
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let (code, reason) = frame.close_code();
                    self.peer_closed = true;
                    self.peer_close_reason = Some(reason).filter(|r| !r.is_empty());
                    self.peer_close_code = Some(code);
                    return None;
                }
                OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                    self.pending.extend_from_slice(&frame.payload);
                }
            }
        }
    }

    /// Reads the transport after the peer's Close until it ends, and says so. A peer sends
    /// nothing after its Close; whatever it does send is dropped.
    async fn transport_end(&mut self) -> io::Error {
        loop {
            match self.reader.read_frame().await {
                Ok(Some(frame)) => {
                    tracing::debug!(opcode = ?frame.opcode, "ignoring a frame after the peer's Close");
                }
                Ok(None) => {
                    return io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the relay ended the connection after its Close, before our direction was done",
                    );
                }
                Err(err) => {
                    let err = io::Error::from(err);
                    return io::Error::new(
                        err.kind(),
                        format!("the relayed connection failed after the peer's Close: {err}"),
                    );
                }
            }
        }
    }

    /// Tells the peer (best effort, bounded) why its frames are refused, and turns the
    /// refusal into the error the reading caller sees.
    async fn refuse(&mut self, err: FrameError) -> io::Error {
        self.peer_closed = true;
        if let Some(code) = err.close_code() {
            tracing::debug!(code, "refusing the relayed connection: {err}");
            let _ = self.close(code, "WebSocket protocol error").await;
        }
        err.into()
    }

    /// Sends stream bytes as binary frames of at most `CHUNK` bytes (the peer's frame
    /// limit never matters, and a frame write stays short).
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut w = self.open_writer().await?;
        for chunk in data.chunks(CHUNK) {
            w.frame(OpCode::Binary, chunk).await?;
        }
        Ok(())
    }

    /// Sends a Ping; [`Tunnel::pong_seen`] says when its Pong (or any) has been read.
    pub async fn ping(&mut self, payload: &[u8]) -> io::Result<()> {
        self.pong_seen = false;
        let mut w = self.open_writer().await?;
        w.frame(OpCode::Ping, payload).await
    }

    /// Answers a Ping with its payload, unless our Close went out (nothing may follow it).
    async fn answer_ping(&self, payload: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().await;
        if w.closed {
            return Ok(());
        }
        w.frame(OpCode::Pong, payload).await
    }

    /// The sending half, for data or a Ping: `BrokenPipe` once our Close went out.
    async fn open_writer(&self) -> io::Result<tokio::sync::MutexGuard<'_, Writer>> {
        let w = self.writer.lock().await;
        if w.closed || w.torn {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel already closed",
            ));
        }
        Ok(w)
    }

    /// Whether a Pong was read since the last [`Tunnel::ping`]: the path to the peer (the
    /// relay, which answers Pings itself) is alive.
    pub fn pong_seen(&self) -> bool {
        self.pong_seen
    }

    /// Sends our Close (ends our direction); a second call does nothing.
    pub async fn close(&self, code: u16, reason: &str) -> io::Result<()> {
        let mut w = self.writer.lock().await;
        if w.closed || w.torn {
            return Ok(());
        }
        w.closed = true;
        bounded(w.frames.write_close(code, reason)).await
    }

    /// Closes both directions now (refusing a connection) and drops the transport.
    pub async fn finish(self, code: u16, reason: &str) {
        let _ = self.close(code, reason).await;
        let mut w = self.writer.lock().await;
        let _ = bounded(w.frames.shutdown()).await;
    }
}

/// A tunnel whose other end is a relay peer that tests script frame by frame.
#[cfg(test)]
pub(crate) mod test_support {
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;

    /// The relay's end: unmasked frames, like a server.
    pub(crate) type Peer = (
        FrameReader<ReadHalf<DuplexStream>>,
        FrameWriter<WriteHalf<DuplexStream>>,
    );

    pub(crate) fn tunnel_and_peer() -> (Tunnel, Peer) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(Box::new(ours) as BoxedIo);
        let tunnel = Tunnel::new(WebSocket {
            reader: FrameReader::new(r, Vec::new()),
            writer: FrameWriter::new(w, true),
        });
        let (pr, pw) = tokio::io::split(theirs);
        (
            tunnel,
            (
                FrameReader::new(pr, Vec::new()),
                FrameWriter::new(pw, false),
            ),
        )
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
