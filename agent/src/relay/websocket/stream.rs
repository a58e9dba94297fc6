//! The async halves of a WebSocket: [`FrameReader`] decodes frames from a reader with
//! a buffer that holds no memory while idle; [`FrameWriter`] writes each frame with one
//! vectored write.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::{Codec, Frame, FrameError, HeaderBytes, OpCode, OutFrame, apply_mask, close_payload};
use crate::relay::buffer::ReadBuffer;

/// Reads frames from the receiving half of a WebSocket.
#[derive(Debug)]
pub struct FrameReader<R> {
    pub(super) inner: R,
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
