//! A small RFC 6455 frame codec over any async byte stream.
//!
//! We frame ourselves instead of using tungstenite's `WebSocket` because Hybrid
//! Connections use Close as a *half*-close (azbridge's `CloseOutput`): after a Close
//! arrives the other direction keeps flowing until that side closes too, and tungstenite
//! answers every Close at once and then refuses to send. No extensions are negotiated,
//! so reserved bits are always zero.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame payload we accept (a 16 MiB sender write fits in one frame).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest control payload (RFC 6455 5.5).
const MAX_CONTROL_LEN: usize = 125;

/// How much we ask the transport for at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Frame opcodes we handle.
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

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One decoded frame (payload already unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: OpCode,
    /// Last frame of its message.
    pub fin: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code and reason of a Close frame (1005 "no status" when empty).
    pub fn close_code(&self) -> (u16, String) {
        match self.payload.as_slice() {
            [hi, lo, reason @ ..] => (
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8_lossy(reason).into_owned(),
            ),
            _ => (1005, String::new()),
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads frames from the receiving half of a WebSocket.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read from the transport but not yet decoded (may start with what the
    /// handshake read past the HTTP headers).
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, already_read: Vec<u8>) -> Self {
        FrameReader {
            inner,
            buf: already_read,
        }
    }

    /// Makes sure `n` bytes are buffered; `false` on a clean EOF before any of them.
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() < n {
            let start = self.buf.len();
            let want = (n - start).max(READ_CHUNK);
            self.buf.resize(start + want, 0);
            let got = self.inner.read(&mut self.buf[start..]).await;
            let got = match got {
                Ok(got) => got,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            };
            self.buf.truncate(start + got);
            if got == 0 {
                if start == 0 {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "WebSocket transport closed in the middle of a frame",
                ));
            }
        }
        Ok(true)
    }

    /// The next frame, or `None` when the transport ended cleanly between frames.
    ///
    /// Not cancel-safe across `select!` in the middle of a frame; callers read in a
    /// dedicated task.
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            return Err(invalid(
                "WebSocket frame has reserved bits set (no extensions were negotiated)".into(),
            ));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F)
            .ok_or_else(|| invalid(format!("unknown WebSocket opcode {:#x}", b0 & 0x0F)))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (len, mut header) = match b1 & 0x7F {
            126 => {
                self.fill(4).await?;
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.fill(10).await?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_FRAME_LEN)
            .ok_or_else(|| {
                invalid(format!(
                    "WebSocket frame of {len} bytes exceeds {MAX_FRAME_LEN}"
                ))
            })?;
        if opcode.is_control() && (len > MAX_CONTROL_LEN || !fin) {
            return Err(invalid(
                "oversized or fragmented WebSocket control frame".into(),
            ));
        }
        let mask = if masked {
            self.fill(header + 4).await?;
            let key = [
                self.buf[header],
                self.buf[header + 1],
                self.buf[header + 2],
                self.buf[header + 3],
            ];
            header += 4;
            Some(key)
        } else {
            None
        };
        self.fill(header + len).await?;
        let mut payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        if let Some(key) = mask {
            apply_mask(&mut payload, key);
        }
        Ok(Some(Frame {
            opcode,
            fin,
            payload,
        }))
    }
}

fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Writes frames to the sending half of a WebSocket.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    /// Clients mask every frame; servers never do.
    mask: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W, mask: bool) -> Self {
        FrameWriter { inner, mask }
    }

    /// Writes one complete (final) frame and flushes it.
    pub async fn write_frame(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode.bits());
        let mask_bit = if self.mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let start = out.len();
        if self.mask {
            let key: [u8; 4] = rand::random();
            out.extend_from_slice(&key);
            out.extend_from_slice(payload);
            apply_mask(&mut out[start + 4..], key);
        } else {
            out.extend_from_slice(payload);
        }
        self.inner.write_all(&out).await?;
        self.inner.flush().await
    }

    /// Sends a Close frame with `code` (our half of the connection is then done).
    pub async fn write_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(crate::relay::protocol::close_reason(reason).as_bytes());
        self.write_frame(OpCode::Close, &payload).await
    }

    /// Shuts the transport down (after both Close frames).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
