//! The one RFC 6455 frame codec of the agent, used by both ends of every relayed
//! WebSocket: the relay client (listener, sender, rendezvous) and `relay serve`.
//!
//! We frame ourselves instead of using tungstenite's `WebSocket` because Hybrid
//! Connections use Close as a *half*-close (azbridge's `CloseOutput`): after a Close
//! arrives the other direction keeps flowing until that side closes too, and tungstenite
//! answers every Close at once and then refuses to send. So this codec never answers
//! anything by itself: Pings, Pongs and Closes are handed to the caller, who decides.
//!
//! Reading is a [`tokio_util::codec::Decoder`] over a
//! [`ReadBuffer`](super::buffer::ReadBuffer) that grows as bytes arrive, never to a length
//! the peer declared, and holds no memory while the connection is idle: control frames
//! (at most 125 bytes) are handed on whole, data frames in pieces of at most
//! [`PIECE_LEN`] bytes as their payload arrives (the first piece keeps the frame's
//! opcode, later ones are continuations, the last carries the frame's FIN; RFC 6455
//! section 5.4 lets an intermediary re-fragment a message without extensions, and no
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
//!
//! This file holds the frame types and masking; `codec` parses and builds headers,
//! `stream` holds the async reader and writer.

// Network input never indexes or slices unchecked: a bad frame must not panic.
#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::io;

use bytes::Bytes;

mod codec;
mod stream;

pub use codec::Codec;
use codec::HeaderBytes;
pub use stream::{FrameReader, FrameWriter};

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
#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
