//! The one RFC 6455 frame codec of the agent, used by both ends of every relayed
//! WebSocket: the relay client (listener, sender, rendezvous) and `relay serve`.
//!
//! We frame ourselves instead of using tungstenite's `WebSocket` because Hybrid
//! Connections use Close as a *half*-close (azbridge's `CloseOutput`): after a Close
//! arrives the other direction keeps flowing until that side closes too, and tungstenite
//! answers every Close at once and then refuses to send. So this codec never answers
//! anything by itself: Pings, Pongs and Closes are handed to the caller, who decides.
//!
//! Reading is a [`tokio_util::codec::Decoder`] over a `BytesMut` that grows as bytes
//! arrive, never to a length the peer declared: control frames (at most 125 bytes) are
//! handed on whole, data frames in pieces of at most [`PIECE_LEN`] bytes as their payload
//! arrives (the first piece keeps the frame's opcode, later ones are continuations, the
//! last carries the frame's FIN; RFC 6455 section 5.4 lets an intermediary re-fragment a
//! message without extensions, and no reader of ours cares about boundaries). A frame
//! declaring more than [`MAX_FRAME_LEN`] bytes is refused before any of it is buffered
//! (Close 1009). No extensions are negotiated, so reserved bits are always zero. Text
//! payloads are not checked for UTF-8 (no 1007): the relay passes bytes through and the
//! control channel decodes them lossily.
//!
//! Writing encodes a frame's header and (masked) payload into one buffer, written with
//! one write: a small frame leaves as one TLS record.

// Network input never indexes or slices unchecked: a bad frame must not panic.
#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::io::{self, Cursor};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Chain};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

/// Largest frame payload we accept (a 16 MiB sender write fits in one frame).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest control payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_LEN: usize = 125;

/// Largest piece of a data frame handed on at once: bounds what one connection buffers
/// whatever length its peer declares.
pub const PIECE_LEN: usize = 64 * 1024;

/// Longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER_LEN: usize = 14;

/// Close codes the codec's callers send (the relay's own codes live in
/// `protocol::close_code`).
pub mod close_code {
    /// The peer broke RFC 6455.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A frame or message longer than we accept.
    pub const TOO_BIG: u16 = 1009;
    /// "No status received": only ever reported, never sent.
    pub const NO_STATUS: u16 = 1005;
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
    streaming: Option<Streaming>,
    /// A fragmented message is open: its first frame came, its final one not yet.
    in_message: bool,
}

impl Codec {
    /// `mask_outgoing`: true on a client, false on a server. Incoming frames are
    /// accepted masked or not (Microsoft's clients and ours always mask; tolerating
    /// either costs nothing).
    pub fn new(mask_outgoing: bool) -> Codec {
        Codec {
            mask_outgoing,
            streaming: None,
            in_message: false,
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
                if header.opcode == OpCode::Close && payload.len() == 1 {
                    return Err(FrameError::Protocol("close payload of one byte"));
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

impl Encoder<OutFrame<'_>> for Codec {
    type Error = io::Error;

    fn encode(&mut self, frame: OutFrame<'_>, dst: &mut BytesMut) -> io::Result<()> {
        let len = frame.payload.len();
        if frame.opcode.is_control() && (len > MAX_CONTROL_LEN || !frame.fin) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "control frame fragmented or longer than 125 bytes",
            ));
        }
        dst.reserve(MAX_HEADER_LEN + len);
        dst.put_u8(if frame.fin { 0x80 } else { 0 } | frame.opcode.bits());
        let mask_bit = if self.mask_outgoing { 0x80 } else { 0 };
        if let Ok(short) = u8::try_from(len)
            && short < 126
        {
            dst.put_u8(mask_bit | short);
        } else if let Ok(medium) = u16::try_from(len) {
            dst.put_u8(mask_bit | 126);
            dst.put_u16(medium);
        } else {
            dst.put_u8(mask_bit | 127);
            dst.put_u64(len as u64);
        }
        if self.mask_outgoing {
            let key: [u8; 4] = rand::random();
            dst.put_slice(&key);
            let start = dst.len();
            dst.put_slice(frame.payload);
            if let Some(payload) = dst.get_mut(start..) {
                apply_mask(payload, key, 0);
            }
        } else {
            dst.put_slice(frame.payload);
        }
        Ok(())
    }
}

/// Reads frames from the receiving half of a WebSocket.
#[derive(Debug)]
pub struct FrameReader<R> {
    /// The transport behind the bytes the upgrade already read. Those go first through
    /// the transport rather than into the decoder's buffer: a `FramedRead` decodes only
    /// after a read, so pre-buffered bytes would wait for one that never comes when the
    /// peer is waiting for our answer to them.
    frames: FramedRead<Chain<Cursor<Vec<u8>>, R>, Codec>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `already_read`: bytes the upgrade read past the HTTP head, decoded first.
    pub fn new(inner: R, already_read: Vec<u8>) -> Self {
        let transport = AsyncReadExt::chain(Cursor::new(already_read), inner);
        // The reading side never masks; masking is the writer's business.
        FrameReader {
            frames: FramedRead::new(transport, Codec::new(false)),
        }
    }

    /// The next frame (or data piece), or `None` when the transport ended cleanly between
    /// frames. Cancel-safe: a partly read frame stays buffered in the reader.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.frames.next().await.transpose()
    }
}

/// Writes frames to the sending half of a WebSocket.
#[derive(Debug)]
pub struct FrameWriter<W> {
    frames: FramedWrite<W, Codec>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// `mask`: true for a client (every client frame is masked), false for a server.
    pub fn new(inner: W, mask: bool) -> Self {
        FrameWriter {
            frames: FramedWrite::new(inner, Codec::new(mask)),
        }
    }

    /// Writes one frame (header and payload in one write) and flushes it.
    ///
    /// Not cancel-safe: a frame cut off mid-write leaves the stream unusable, so a
    /// cancelled write (a timeout) must end the connection.
    pub async fn send(&mut self, frame: OutFrame<'_>) -> io::Result<()> {
        self.frames.send(frame).await
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
        SinkExt::<OutFrame<'_>>::close(&mut self.frames).await
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
