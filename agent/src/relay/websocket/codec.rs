//! The frame codec proper: headers parsed from the read buffer (refusals before any
//! payload is buffered), data frames handed on in pieces, and headers built on the stack
//! for writing.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{
    Frame, FrameError, MAX_CONTROL_LEN, MAX_FRAME_LEN, MAX_HEADER_LEN, OpCode, OutFrame, PIECE_LEN,
    READ_LEN, apply_mask, close_payload_problem,
};

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
    pub(super) fn read_len(&self, buffered: usize) -> usize {
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
pub(super) struct HeaderBytes {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl HeaderBytes {
    /// The header of a frame of `len` payload bytes, masked with `key` when given (every
    /// client frame). Refuses a control frame that RFC 6455 forbids.
    pub(super) fn new(
        opcode: OpCode,
        fin: bool,
        len: usize,
        key: Option<[u8; 4]>,
    ) -> io::Result<Self> {
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

    pub(super) fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Encodes whole frames into a buffer (tests, fuzz seeds); [`FrameWriter`](super::FrameWriter) writes the same
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
