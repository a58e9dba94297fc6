//! The one RFC 6455 frame codec of the agent, used by both ends of every relayed
//! WebSocket: the relay client (listener, sender, rendezvous) and `relay serve`.
//!
//! We frame ourselves instead of using tungstenite's `WebSocket` because Hybrid
//! Connections use Close as a *half*-close (azbridge's `CloseOutput`): after a Close
//! arrives the other direction keeps flowing until that side closes too, and tungstenite
//! answers every Close at once and then refuses to send. So this codec never answers
//! anything by itself: Pings, Pongs and Closes are handed to the caller, who decides.
//!
//! Reading is a [`tokio_util::codec::Decoder`] over a [`ReadBuffer`] that grows as bytes
//! arrive, never to a length the peer declared, and holds no memory while the connection
//! is idle: control frames (at most 125 bytes) are handed on whole, data frames in pieces
//! of at most [`PIECE_LEN`] bytes as their payload arrives (the first piece keeps the
//! frame's opcode, later ones are continuations, the last carries the frame's FIN; RFC
//! 6455 section 5.4 lets an intermediary re-fragment a message without extensions, and no
//! reader of ours cares about boundaries). Payloads are unmasked in place and handed on
//! as slices of the read buffer, never copied. A bulk stream takes one read per piece.
//! A frame declaring more than [`MAX_FRAME_LEN`] bytes is refused before any of it is
//! buffered (Close 1009). No extensions are negotiated, so reserved bits are always zero.
//! Text payloads are not checked for UTF-8 (no 1007): the relay passes bytes through and
//! the control channel decodes them lossily.
//!
//! Writing sends a frame's header (built on the stack) and its payload with one vectored
//! write: one system call on TCP, one TLS record (per 16 KiB) on TLS, and no copy of the
//! payload. A client masks the payload in place when the caller lends it mutably
//! ([`FrameWriter::send_in_place`], the data path), and masks a copy otherwise.

// Network input never indexes or slices unchecked: a bad frame must not panic.
#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::buffer::ReadBuffer;

/// Largest frame payload we accept (a 16 MiB sender write fits in one frame).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest control payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_LEN: usize = 125;

/// Largest piece of a data frame handed on at once: bounds what one connection buffers
/// whatever length its peer declares.
pub const PIECE_LEN: usize = 64 * 1024;

/// Longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER_LEN: usize = 14;

/// Most a read takes between frames: a header and a whole piece, so a bulk stream of
/// full frames takes one read (one system call) per piece.
const READ_LEN: usize = PIECE_LEN + MAX_HEADER_LEN;

/// WebSocket close codes (RFC 6455 7.4.1) that the codec, the clients and the relay use:
/// one list for all of them (also reachable as `protocol::close_code`).
pub mod close_code {
    /// The stream ended in order.
    pub const NORMAL: u16 = 1000;
    /// The entity (Hybrid Connection) went away, or the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke RFC 6455.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// "No status received": only ever reported, never sent.
    pub const NO_STATUS: u16 = 1005;
    /// Token expired or invalid, or another policy violation.
    pub const POLICY: u16 = 1008;
    /// A frame or message longer than we accept.
    pub const TOO_BIG: u16 = 1009;
    /// The server (or a client's local side) failed.
    pub const SERVER_ERROR: u16 = 1011;
}

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One decoded frame, or one piece of a long data frame (payload already unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: OpCode,
    /// Last frame (piece) of its message.
    pub fin: bool,
    pub payload: Bytes,
}

impl Frame {
    /// The close code and reason of a Close frame (1005 "no status" when empty).
    pub fn close_code(&self) -> (u16, String) {
        match self.payload.as_ref() {
            [hi, lo, reason @ ..] => (
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8_lossy(reason).into_owned(),
            ),
            _ => (close_code::NO_STATUS, String::new()),
        }
    }
}

/// A frame to send, borrowing its payload.
#[derive(Debug, Clone, Copy)]
pub struct OutFrame<'a> {
    pub opcode: OpCode,
    pub fin: bool,
    pub payload: &'a [u8],
}

/// Why frames could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("WebSocket transport: {0}")]
    Io(#[from] io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("WebSocket frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooBig { len: u64 },
}

impl FrameError {
    /// The Close code that tells the peer what it did (`None`: the transport broke, there
    /// is nobody to tell).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            FrameError::Io(_) => None,
            FrameError::Protocol(_) => Some(close_code::PROTOCOL_ERROR),
            FrameError::TooBig { .. } => Some(close_code::TOO_BIG),
        }
    }
}

impl From<FrameError> for io::Error {
    fn from(err: FrameError) -> io::Error {
        match err {
            FrameError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// What is wrong with a received Close payload, if anything (RFC 6455 5.5.1, 7.4.1, 8.1):
/// one byte, a code no endpoint may send (1005 "no status" and 1006 are only ever
/// reported), or a reason that is not UTF-8. A relay that forwarded such a Close made
/// strict peers (Node's `ws`) fail the connection with 1002 instead of closing.
fn close_payload_problem(payload: &[u8]) -> Option<&'static str> {
    match payload {
        [] => None,
        [_] => Some("close payload of one byte"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                Some("close code that no endpoint may send")
            } else if std::str::from_utf8(reason).is_err() {
                Some("close reason that is not UTF-8")
            } else {
                None
            }
        }
    }
}

/// A close payload: `code` then `reason`, cut on a character boundary so the whole fits
/// a control frame. The one place the agent shortens a close reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let room = MAX_CONTROL_LEN - 2;
    let end = reason
        .char_indices()
        .map(|(at, c)| at + c.len_utf8())
        .take_while(|end| *end <= room)
        .last()
        .unwrap_or(0);
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    out
}

/// XORs `data` with `key`, as if `data` started `offset` bytes into a payload; eight
/// bytes at a time.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    let [k0, k1, k2, k3] = key;
    let word = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let mut words = data.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The tail starts on a multiple of 8, so on key byte 0 again.
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Bytes the header itself takes.
    size: usize,
}

/// The data frame whose payload is being handed on piece by piece.
#[derive(Debug, Clone, Copy)]
struct Streaming {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes not handed on yet.
    remaining: usize,
    /// Payload bytes handed on (the masking key's phase).
    done: usize,
}

/// RFC 6455 framing for one direction of reading and one of writing.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Clients mask every frame they send; servers never do.
    mask_outgoing: bool,
    /// Refuse a frame that is not masked: `relay serve` reading a client (RFC 6455 5.1).
    require_mask: bool,
    streaming: Option<Streaming>,
    /// A fragmented message is open: its first frame came, its final one not yet.
    in_message: bool,
}

impl Codec {
    /// `mask_outgoing`: true on a client, false on a server. Incoming frames are
    /// accepted masked or not, unless [`Codec::from_clients`] says otherwise.
    pub fn new(mask_outgoing: bool) -> Codec {
        Codec {
            mask_outgoing,
            require_mask: false,
            streaming: None,
            in_message: false,
        }
    }

    /// A server's codec for what a client sends: a frame that is not masked is a
    /// protocol error (RFC 6455 5.1: the server must close the connection).
    pub fn from_clients() -> Codec {
        Codec {
            require_mask: true,
            ..Codec::new(false)
        }
    }

    /// Parses the header at the front of `src` without consuming it; `None` until it is
    /// all there.
    fn header(src: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, rest @ ..] = src else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (len, rest, len_size) = match b1 & 0x7F {
            126 => match rest {
                [a, b, rest @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), rest, 2),
                _ => return Ok(None),
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((bytes, rest)) => (u64::from_be_bytes(*bytes), rest, 8),
                None => return Ok(None),
            },
            n => (u64::from(n), rest, 0),
        };
        if len >> 63 != 0 {
            return Err(FrameError::Protocol("frame length has the top bit set"));
        }
        if opcode.is_control() && (len > MAX_CONTROL_LEN as u64 || !fin) {
            return Err(FrameError::Protocol(
                "control frame fragmented or longer than 125 bytes",
            ));
        }
        if len > MAX_FRAME_LEN as u64 {
            return Err(FrameError::TooBig { len });
        }
        let mask = if masked {
            match rest.first_chunk::<4>() {
                Some(key) => Some(*key),
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len,
            size: 2 + len_size + if masked { 4 } else { 0 },
        }))
    }

    /// How many bytes the next read should take, with `buffered` bytes not decoded yet: the
    /// rest of the piece in progress and at most the next header, so a read ends on a
    /// piece boundary and what a reused buffer must move to its front (the bytes past the
    /// piece) stays a few bytes; between frames, a header and a whole piece.
    fn read_len(&self, buffered: usize) -> usize {
        match &self.streaming {
            Some(data) => data.remaining.min(PIECE_LEN).saturating_sub(buffered) + MAX_HEADER_LEN,
            None => READ_LEN,
        }
    }

    /// Checks a data frame against the message in progress and updates it.
    fn track_message(&mut self, header: &Header) -> Result<(), FrameError> {
        match (header.opcode, self.in_message) {
            (OpCode::Continuation, false) => {
                return Err(FrameError::Protocol(
                    "continuation frame without a message to continue",
                ));
            }
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(FrameError::Protocol(
                    "new message before the previous one was finished",
                ));
            }
            _ => {}
        }
        self.in_message = !header.fin;
        Ok(())
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.streaming.is_none() {
            let Some(header) = Codec::header(src)? else {
                // At most a header's worth is missing.
                src.reserve(MAX_HEADER_LEN);
                return Ok(None);
            };
            if self.require_mask && header.mask.is_none() {
                return Err(FrameError::Protocol("a client frame that is not masked"));
            }
            // Bounded by MAX_FRAME_LEN, itself a usize.
            let len =
                usize::try_from(header.len).map_err(|_| FrameError::TooBig { len: header.len })?;
            if header.opcode.is_control() {
                let whole = header.size + len;
                if src.len() < whole {
                    src.reserve(whole - src.len());
                    return Ok(None);
                }
                src.advance(header.size);
                let mut payload = src.split_to(len);
                if let Some(key) = header.mask {
                    apply_mask(&mut payload, key, 0);
                }
                if header.opcode == OpCode::Close
                    && let Some(problem) = close_payload_problem(&payload)
                {
                    return Err(FrameError::Protocol(problem));
                }
                return Ok(Some(Frame {
                    opcode: header.opcode,
                    fin: true,
                    payload: payload.freeze(),
                }));
            }
            self.track_message(&header)?;
            src.advance(header.size);
            self.streaming = Some(Streaming {
                opcode: header.opcode,
                fin: header.fin,
                mask: header.mask,
                remaining: len,
                done: 0,
            });
        }
        let Some(data) = self.streaming.as_mut() else {
            return Ok(None);
        };
        // Hand on a whole piece (or the whole rest), so a long frame is not cut into
        // as many pieces as the transport has reads.
        let want = data.remaining.min(PIECE_LEN);
        if src.len() < want {
            src.reserve(want - src.len());
            return Ok(None);
        }
        let mut payload = src.split_to(want);
        if let Some(key) = data.mask {
            apply_mask(&mut payload, key, data.done);
        }
        let opcode = if data.done == 0 {
            data.opcode
        } else {
            OpCode::Continuation
        };
        data.done += want;
        data.remaining -= want;
        let fin = data.remaining == 0 && data.fin;
        if data.remaining == 0 {
            self.streaming = None;
        }
        Ok(Some(Frame {
            opcode,
            fin,
            payload: payload.freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.streaming.is_none() => Ok(None),
            None => Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "WebSocket transport closed in the middle of a frame",
            ))),
        }
    }
}

/// An encoded frame header, built on the stack.
#[derive(Debug, Clone, Copy)]
struct HeaderBytes {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl HeaderBytes {
    /// The header of a frame of `len` payload bytes, masked with `key` when given (every
    /// client frame). Refuses a control frame that RFC 6455 forbids.
    fn new(opcode: OpCode, fin: bool, len: usize, key: Option<[u8; 4]>) -> io::Result<Self> {
        if opcode.is_control() && (len > MAX_CONTROL_LEN || !fin) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "control frame fragmented or longer than 125 bytes",
            ));
        }
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let mut out = bytes.as_mut_slice();
        out.put_u8(if fin { 0x80 } else { 0 } | opcode.bits());
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        if let Ok(short) = u8::try_from(len)
            && short < 126
        {
            out.put_u8(mask_bit | short);
        } else if let Ok(medium) = u16::try_from(len) {
            out.put_u8(mask_bit | 126);
            out.put_u16(medium);
        } else {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
        if let Some(key) = key {
            out.put_slice(&key);
        }
        let len = MAX_HEADER_LEN - out.len();
        Ok(HeaderBytes { bytes, len })
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Encodes whole frames into a buffer (tests, fuzz seeds); [`FrameWriter`] writes the same
/// bytes without building them in one buffer.
impl Encoder<OutFrame<'_>> for Codec {
    type Error = io::Error;

    fn encode(&mut self, frame: OutFrame<'_>, dst: &mut BytesMut) -> io::Result<()> {
        let key = self.mask_outgoing.then(rand::random::<[u8; 4]>);
        let header = HeaderBytes::new(frame.opcode, frame.fin, frame.payload.len(), key)?;
        dst.reserve(header.len + frame.payload.len());
        dst.put_slice(header.as_slice());
        let start = dst.len();
        dst.put_slice(frame.payload);
        if let (Some(key), Some(payload)) = (key, dst.get_mut(start..)) {
            apply_mask(payload, key, 0);
        }
        Ok(())
    }
}

/// Reads frames from the receiving half of a WebSocket.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read and not decoded yet; no memory while the connection is idle.
    buf: ReadBuffer,
    /// The reading side never masks; masking is the writer's business.
    codec: Codec,
    /// The transport ended: what is left in `buf` is decoded, then the end reported.
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `already_read`: bytes the upgrade read past the HTTP head, decoded first (without
    /// waiting for the transport: the peer may be waiting for our answer to them).
    pub fn new(inner: R, already_read: Vec<u8>) -> Self {
        FrameReader {
            inner,
            buf: ReadBuffer::new(already_read),
            codec: Codec::new(false),
            eof: false,
        }
    }

    /// A server's reader of a client: frames that are not masked are refused
    /// ([`Codec::from_clients`]).
    pub fn from_client(inner: R, already_read: Vec<u8>) -> Self {
        FrameReader {
            codec: Codec::from_clients(),
            ..FrameReader::new(inner, already_read)
        }
    }

    /// The next frame (or data piece), or `None` when the transport ended cleanly between
    /// frames. Cancel-safe: a partly read frame stays buffered in the reader.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, FrameError>> {
        loop {
            if self.eof {
                return Poll::Ready(self.codec.decode_eof(self.buf.bytes_mut()));
            }
            if let Some(frame) = self.codec.decode(self.buf.bytes_mut())? {
                return Poll::Ready(Ok(Some(frame)));
            }
            let len = self.codec.read_len(self.buf.bytes_mut().len());
            if ready!(self.buf.poll_fill(&mut self.inner, cx, len))? == 0 {
                self.eof = true;
            }
        }
    }

    /// Memory the reader holds for bytes (for tests of the idle footprint).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Writes frames to the sending half of a WebSocket.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    /// Clients mask every frame they send; servers never do.
    mask: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// `mask`: true for a client (every client frame is masked), false for a server.
    pub fn new(inner: W, mask: bool) -> Self {
        FrameWriter { inner, mask }
    }

    /// The transport under the frames, for tests that send bytes no frame writer would.
    #[cfg(test)]
    pub(crate) fn get_mut_for_tests(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes one frame (header and payload in one vectored write) and flushes it. A
    /// client masks a copy of the payload; the data path lends its buffer to
    /// [`FrameWriter::send_in_place`] instead.
    ///
    /// Not cancel-safe: a frame cut off mid-write leaves the stream unusable, so a
    /// cancelled write (a timeout) must end the connection.
    pub async fn send(&mut self, frame: OutFrame<'_>) -> io::Result<()> {
        if self.mask {
            // Control frames and preambles only: short, and rare next to the data.
            let mut copy = frame.payload.to_vec();
            self.send_in_place(frame.opcode, frame.fin, &mut copy).await
        } else {
            let header = HeaderBytes::new(frame.opcode, frame.fin, frame.payload.len(), None)?;
            self.write_frame_parts(header.as_slice(), frame.payload)
                .await
        }
    }

    /// Writes one frame whose payload the caller lends: a client masks it in place (the
    /// buffer is left masked), so no byte of it is copied. Not cancel-safe (see
    /// [`FrameWriter::send`]).
    pub async fn send_in_place(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &mut [u8],
    ) -> io::Result<()> {
        let key = self.mask.then(rand::random::<[u8; 4]>);
        let header = HeaderBytes::new(opcode, fin, payload.len(), key)?;
        if let Some(key) = key {
            apply_mask(payload, key, 0);
        }
        self.write_frame_parts(header.as_slice(), payload).await
    }

    /// Writes `header` and `payload` with as few writes as the transport allows (one
    /// vectored write on TCP and TLS; a transport without vectored writes takes the header
    /// first), then flushes.
    async fn write_frame_parts(&mut self, header: &[u8], payload: &[u8]) -> io::Result<()> {
        let (mut header, mut payload) = (header, payload);
        while !header.is_empty() {
            let parts = [IoSlice::new(header), IoSlice::new(payload)];
            let n = self.inner.write_vectored(&parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_header = n.min(header.len());
            header = header.get(from_header..).unwrap_or_default();
            payload = payload.get(n - from_header..).unwrap_or_default();
        }
        self.inner.write_all(payload).await?;
        self.inner.flush().await
    }

    /// Writes one complete (final) frame and flushes it.
    pub async fn write_frame(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        self.send(OutFrame {
            opcode,
            fin: true,
            payload,
        })
        .await
    }

    /// Sends a Close frame with `code` and `reason` (cut to fit).
    pub async fn write_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        self.write_frame(OpCode::Close, &close_payload(code, reason))
            .await
    }

    /// Flushes and shuts the transport's write side down (after the Close frames).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
