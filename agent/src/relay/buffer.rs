//! A read buffer that holds memory only while bytes flow, for every relayed byte stream
//! (the WebSocket frame reader of both ends, and the client's reads from local TCP).
//!
//! A relay holds thousands of tunnels that are idle nearly all the time (a debug session
//! waits on a breakpoint for minutes), so a buffer kept for a tunnel's life costs more
//! than all its other state together. This one is allocated when a read starts (never
//! zero-filled: the transport reads into spare capacity) and dropped again when the
//! transport has nothing to give while the buffer holds no unread bytes. A busy stream
//! keeps and reuses its allocation between reads that find data waiting.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncRead;

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
    /// transport ended. On `Pending` an empty buffer gives its memory back: nothing flows,
    /// and the next read allocates anew.
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
        if read.is_pending() && self.bytes.is_empty() {
            self.bytes = BytesMut::new();
        }
        read
    }

    /// Memory held now (for tests of the idle footprint).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

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
}
