//! A read buffer that holds memory only while bytes flow, for every relayed byte stream
//! (the WebSocket frame reader of both ends, the client's reads from local TCP, and the
//! socket under TLS).
//!
//! A relay holds thousands of tunnels that are idle nearly all the time (a debug session
//! waits on a breakpoint for minutes), so a buffer kept for a tunnel's life costs more
//! than all its other state together. This one is allocated when a read starts (never
//! zero-filled: the transport reads into spare capacity) and dropped again when the
//! transport has nothing to give while the buffer holds no unread bytes. A busy stream
//! keeps and reuses its allocation between reads that find data waiting.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// What one read of the socket under TLS takes: several 16 KiB records at once.
pub const TLS_READ_LEN: usize = 64 * 1024;

/// Bytes read but not consumed yet, in memory that exists only while there are any or a
/// read is finding data.
#[derive(Debug, Default)]
pub struct ReadBuffer {
    bytes: BytesMut,
}

impl ReadBuffer {
    /// An empty buffer that holds no memory; `bytes` become its first contents (bytes a
    /// handshake read past its end).
    pub fn new(bytes: Vec<u8>) -> ReadBuffer {
        ReadBuffer {
            bytes: BytesMut::from(bytes.as_slice()),
        }
    }

    /// The unread bytes, for a decoder to take what it can use.
    pub fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    /// Reads once from `reader`, appending at most `len` bytes. `Ready(Ok(0))` means the
    /// transport ended. When nothing came (`Pending`, the end, an error) an empty buffer
    /// gives its memory back: nothing flows, and the next read allocates anew.
    pub fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        reader: &mut R,
        cx: &mut Context<'_>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        // Reuses the allocation when its earlier contents were handed on and dropped.
        self.bytes.reserve(len);
        let mut room = (&mut self.bytes).limit(len);
        let read = tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut room);
        let flowing = matches!(read, Poll::Ready(Ok(n)) if n > 0);
        if !flowing && self.bytes.is_empty() {
            self.bytes = BytesMut::new();
        }
        read
    }

    /// Memory held now (for tests of the idle footprint).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

/// A socket whose reads are served from a [`ReadBuffer`] filled [`TLS_READ_LEN`] bytes at
/// a time, for the TLS library above it: rustls reads at most 4 KiB per call, which
/// without this costs four system calls per 16 KiB record. Writes pass straight through.
#[derive(Debug)]
pub struct BufferedReads<S> {
    inner: S,
    buf: ReadBuffer,
}

impl<S> BufferedReads<S> {
    pub fn new(inner: S) -> Self {
        BufferedReads {
            inner,
            buf: ReadBuffer::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BufferedReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.bytes_mut().is_empty() {
            if out.remaining() >= TLS_READ_LEN {
                // A reader asking for as much reads directly: nothing to gain by copying.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if ready!(this.buf.poll_fill(&mut this.inner, cx, TLS_READ_LEN))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let bytes = this.buf.bytes_mut();
        let n = bytes.len().min(out.remaining());
        out.put_slice(bytes.get(..n).unwrap_or_default());
        bytes.advance(n);
        Poll::Ready(Ok(()))
    }
}

forward_writes_to_inner!(BufferedReads);

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn memory_is_held_only_while_bytes_flow() {
        let (mut peer, mut ours) = tokio::io::duplex(1024);
        let mut buf = ReadBuffer::new(Vec::new());
        assert_eq!(buf.capacity(), 0, "a new buffer holds nothing");
        peer.write_all(b"hello").await.expect("write");
        let n = poll_fn(|cx| buf.poll_fill(&mut ours, cx, 4096))
            .await
            .expect("read");
        assert_eq!(n, 5);
        assert!(buf.capacity() >= 4096, "a read gets the room it asked for");
        peer.write_all(b"limited").await.expect("write");
        let n = poll_fn(|cx| buf.poll_fill(&mut ours, cx, 2))
            .await
            .expect("read");
        assert_eq!(n, 2, "a read takes no more than asked");
        let n = poll_fn(|cx| buf.poll_fill(&mut ours, cx, 4096))
            .await
            .expect("read");
        assert_eq!(n, 5);
        assert_eq!(buf.bytes_mut().split().as_ref(), b"hellolimited");
        // Nothing to read and nothing unread: the memory goes.
        let pending = poll_fn(|cx| Poll::Ready(buf.poll_fill(&mut ours, cx, 4096))).await;
        assert!(pending.is_pending());
        assert_eq!(buf.capacity(), 0);
        // Unread bytes keep their memory while the transport is idle.
        peer.write_all(b"ab").await.expect("write");
        poll_fn(|cx| buf.poll_fill(&mut ours, cx, 4096))
            .await
            .expect("read");
        let pending = poll_fn(|cx| Poll::Ready(buf.poll_fill(&mut ours, cx, 4096))).await;
        assert!(pending.is_pending());
        assert_eq!(buf.bytes_mut().as_ref(), b"ab");
        drop(peer);
        let end = poll_fn(|cx| buf.poll_fill(&mut ours, cx, 4096)).await;
        assert_eq!(end.expect("clean end"), 0);
    }

    #[tokio::test]
    async fn buffered_reads_hand_out_small_reads_from_one_big_one() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut peer, ours) = tokio::io::duplex(2 * TLS_READ_LEN);
        peer.write_all(&data).await.expect("write");
        drop(peer);
        let mut reads = BufferedReads::new(ours);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut reads, &mut small)
                .await
                .expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(small.get(..n).expect("within the buffer"));
        }
        assert!(got == data, "the stream arrives intact");
        assert_eq!(reads.buf.capacity(), 0, "nothing held at the end");
    }
}
