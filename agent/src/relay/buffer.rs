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
//!
//! A busy stream also finds nothing waiting many times a second (the peer has not sent
//! the next piece yet), so a released allocation goes to a small per-thread shelf of
//! spares that the next read on that thread takes back. Without the shelf each release
//! and allocation was a `free` and `malloc` of 64 KiB, which the C allocator answered by
//! shrinking and regrowing its heap (`brk`) and faulting the pages in again: a fifth of
//! the CPU of a bulk transfer. The shelf is bounded ([`SPARES_PER_THREAD`]), so idle
//! tunnels still hold nothing and the process at most a few buffers per thread.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// What one read of the socket under TLS takes: several 16 KiB records at once.
pub const TLS_READ_LEN: usize = 64 * 1024;

/// How much rustls may hold of records not sent yet, for each TLS connection of the relay:
/// room for a whole WebSocket frame (a 64 KiB piece and its header, as 16 KiB records), so
/// a frame goes out in one write. rustls' default (64 KiB) took a frame in two writes,
/// the second a few bytes, which doubled the sends and wake-ups of every hop under TLS.
/// The room is used only while records wait for the socket: an idle connection holds none.
pub const TLS_SEND_LIMIT: usize = 2 * crate::relay::websocket::PIECE_LEN;

/// Released buffers each thread keeps for its next reads. A thread moves data for one
/// tunnel direction at a time, and a round of `relay serve` (read a frame, write it on)
/// holds two; four leave room for the TLS socket's buffer under each.
pub const SPARES_PER_THREAD: usize = 4;

/// A released buffer is kept only when it can take a read of this many bytes without
/// allocating (the relay's reads are this size or a header more)...
const SMALLEST_SPARE: usize = 64 * 1024;

/// ...and holds no more than this: only the relay's own read sizes are worth keeping.
const LARGEST_SPARE: usize = 256 * 1024;

thread_local! {
    /// This thread's released buffers, each empty. Its room is its own; the allocation
    /// behind it may still hold a payload handed on, which it never overlaps.
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A spare buffer of this thread, or a new empty one.
fn take_spare() -> BytesMut {
    SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `bytes` (empty) for this thread's next read when there is room, else frees it.
/// The room counted is what `bytes` may write: past the end of a payload split off and
/// still alive, or the whole allocation once nobody else holds it (`try_reclaim` then
/// moves to its front).
fn give_back(mut bytes: BytesMut) {
    if !bytes.try_reclaim(SMALLEST_SPARE) || bytes.capacity() > LARGEST_SPARE {
        return;
    }
    bytes.clear();
    // A thread being torn down frees it instead.
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES_PER_THREAD {
            spares.push(bytes);
        }
    });
}

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
        // A buffer keeps its own allocation when that has room for the read, moving unread
        // bytes to its front if nothing else holds it any more. Otherwise (it has none, it
        // is too small for the unread bytes and the read, or a payload handed on still
        // holds it) a spare takes the unread bytes, which the reserve below would have
        // copied into a new allocation anyway, and the old allocation goes to the shelf.
        // Without this, a frame reader whose last read ended inside a frame allocated and
        // released 64 KiB or more per frame: musl's allocator (the static build) answers
        // each with an `mmap`, 17 page faults and a `munmap`.
        if !self.bytes.try_reclaim(len) {
            let mut spare = take_spare();
            if self.bytes.is_empty() || spare.capacity() >= self.bytes.len() + len {
                spare.extend_from_slice(&self.bytes);
                let mut old = std::mem::replace(&mut self.bytes, spare);
                old.clear();
                give_back(old);
            } else {
                give_back(spare);
            }
        }
        // Reuses the allocation when its earlier contents were handed on and dropped.
        self.bytes.reserve(len);
        let mut room = (&mut self.bytes).limit(len);
        let read = tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut room);
        let flowing = matches!(read, Poll::Ready(Ok(n)) if n > 0);
        if !flowing && self.bytes.is_empty() {
            give_back(std::mem::take(&mut self.bytes));
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

    /// One read of up to [`TLS_READ_LEN`] bytes into `buf`, which must find data.
    async fn read_once(buf: &mut ReadBuffer, from: &mut tokio::io::DuplexStream) -> usize {
        poll_fn(|cx| buf.poll_fill(from, cx, TLS_READ_LEN))
            .await
            .expect("read")
    }

    /// Polls one read of `buf` that must find nothing waiting.
    async fn read_finds_nothing(buf: &mut ReadBuffer, from: &mut tokio::io::DuplexStream) {
        let pending = poll_fn(|cx| Poll::Ready(buf.poll_fill(from, cx, TLS_READ_LEN))).await;
        assert!(pending.is_pending(), "nothing was written");
    }

    fn spares_on_this_thread() -> usize {
        SPARES.with(|spares| spares.borrow().len())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_released_buffer_serves_the_next_read_of_its_thread_and_the_shelf_is_bounded() {
        SPARES.with(|spares| spares.borrow_mut().clear());
        let (mut peer, mut ours) = tokio::io::duplex(1 << 20);
        let mut buf = ReadBuffer::new(Vec::new());
        peer.write_all(b"first").await.expect("write");
        read_once(&mut buf, &mut ours).await;
        buf.bytes_mut().clear();
        read_finds_nothing(&mut buf, &mut ours).await;
        assert_eq!(buf.capacity(), 0, "the tunnel holds nothing while idle");
        assert_eq!(spares_on_this_thread(), 1, "its memory went to the shelf");
        peer.write_all(b"second").await.expect("write");
        read_once(&mut buf, &mut ours).await;
        assert_eq!(spares_on_this_thread(), 0, "the next read took it back");
        assert_eq!(buf.bytes_mut().as_ref(), b"second");

        // A buffer too small to serve a read is freed, not shelved.
        give_back(BytesMut::with_capacity(16));
        assert_eq!(spares_on_this_thread(), 0, "a small buffer is freed");

        // A shelved buffer whose allocation still holds a payload handed on writes only
        // past it: the payload stays intact while the spare serves the next read.
        buf.bytes_mut().clear();
        read_finds_nothing(&mut buf, &mut ours).await;
        SPARES.with(|spares| spares.borrow_mut().clear());
        let mut shared = BytesMut::with_capacity(4 * SMALLEST_SPARE);
        shared.extend_from_slice(b"payload");
        let payload = shared.split().freeze();
        let room = shared.as_ptr();
        give_back(shared);
        assert_eq!(
            spares_on_this_thread(),
            1,
            "its room past the payload is ours"
        );
        peer.write_all(&[0xAA; 64]).await.expect("write");
        read_once(&mut buf, &mut ours).await;
        assert_eq!(
            buf.bytes_mut().as_ptr(),
            room,
            "the read went into the spare"
        );
        assert_eq!(buf.bytes_mut().as_ref(), &[0xAA; 64]);
        assert_eq!(payload.as_ref(), b"payload");
        buf.bytes_mut().clear();
        read_finds_nothing(&mut buf, &mut ours).await;
        SPARES.with(|spares| spares.borrow_mut().clear());

        // Many idle tunnels releasing at once leave at most a few spares.
        let mut idle: Vec<ReadBuffer> = (0..3 * SPARES_PER_THREAD)
            .map(|_| ReadBuffer::new(Vec::new()))
            .collect();
        let (_quiet_peer, mut quiet) = tokio::io::duplex(64);
        for reader in &mut idle {
            reader.bytes_mut().reserve(TLS_READ_LEN);
            let pending =
                poll_fn(|cx| Poll::Ready(reader.poll_fill(&mut quiet, cx, TLS_READ_LEN))).await;
            assert!(pending.is_pending());
            assert_eq!(reader.capacity(), 0);
        }
        assert_eq!(spares_on_this_thread(), SPARES_PER_THREAD);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_buffer_read_full_and_used_up_keeps_its_allocation() {
        SPARES.with(|spares| spares.borrow_mut().clear());
        let (mut peer, mut ours) = tokio::io::duplex(1 << 20);
        let mut buf = ReadBuffer::new(Vec::new());
        peer.write_all(&[1u8; TLS_READ_LEN]).await.expect("write");
        let n = read_once(&mut buf, &mut ours).await;
        assert_eq!(n, TLS_READ_LEN);
        let first = buf.bytes_mut().as_ptr();
        // What BufferedReads does when rustls takes all of it.
        buf.bytes_mut().advance(TLS_READ_LEN);
        assert_eq!(buf.capacity(), 0);
        // A spare on the shelf must not be taken (nor the allocation freed for it).
        give_back(BytesMut::with_capacity(2 * TLS_READ_LEN));
        peer.write_all(b"x").await.expect("write");
        read_once(&mut buf, &mut ours).await;
        assert_eq!(
            buf.bytes_mut().as_ptr(),
            first,
            "the same allocation, from its front"
        );
        assert_eq!(spares_on_this_thread(), 1, "the spare stayed on the shelf");
        SPARES.with(|spares| spares.borrow_mut().clear());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unread_bytes_without_room_for_the_read_move_to_a_spare() {
        SPARES.with(|spares| spares.borrow_mut().clear());
        let (mut peer, mut ours) = tokio::io::duplex(1 << 20);
        let mut buf = ReadBuffer::new(Vec::new());
        peer.write_all(&[1u8; TLS_READ_LEN]).await.expect("write");
        assert_eq!(read_once(&mut buf, &mut ours).await, TLS_READ_LEN);
        let first = buf.bytes_mut().as_ptr();
        // A frame is handed on and written; the read ended 100 bytes into the next one,
        // so the allocation has no room for those and a whole read.
        drop(buf.bytes_mut().split_to(TLS_READ_LEN - 100));
        let spare = BytesMut::with_capacity(2 * TLS_READ_LEN);
        let room = spare.as_ptr();
        give_back(spare);
        peer.write_all(b"next").await.expect("write");
        read_once(&mut buf, &mut ours).await;
        assert_eq!(
            buf.bytes_mut().as_ptr(),
            room,
            "the spare took the unread bytes and the read, no new allocation"
        );
        let mut expected = vec![1u8; 100];
        expected.extend_from_slice(b"next");
        assert!(
            buf.bytes_mut().as_ref() == expected.as_slice(),
            "nothing lost"
        );
        let shelved = SPARES.with(|spares| spares.borrow().first().map(|b| b.as_ptr()));
        assert_eq!(shelved, Some(first), "the old allocation went to the shelf");
        SPARES.with(|spares| spares.borrow_mut().clear());
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
