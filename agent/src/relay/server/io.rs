//! The byte stream every connection is carried on (plain TCP or TLS), and a wrapper that
//! replays bytes read past the end of the HTTP upgrade request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client connection after the optional TLS handshake.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`]: plain and TLS connections take the same path through the server.
pub type BoxIo = Box<dyn Io>;

/// A stream whose first reads return `prefix`: the bytes that arrived in the same read as
/// the end of the upgrade request belong to the WebSocket that follows it.
pub struct Prefixed<S> {
    /// Bytes not yet handed to the reader.
    prefix: Vec<u8>,
    /// How much of `prefix` has been handed out.
    pos: usize,
    inner: S,
}

impl<S> std::fmt::Debug for Prefixed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("pending", &(self.prefix.len() - self.pos))
            .finish_non_exhaustive()
    }
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(pending) = this.prefix.get(this.pos..).filter(|p| !p.is_empty()) {
            let n = buf.remaining().min(pending.len());
            buf.put_slice(pending.get(..n).unwrap_or_default());
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// Resolves once the peer is gone (end of stream or a read error) while it should be
    /// waiting for our answer; bytes it sends meanwhile are kept for the reader, up to
    /// `keep`, after which it stops reading and never resolves. Cancel-safe: bytes are
    /// kept only when a read completes.
    pub async fn gone(&mut self, keep: usize) {
        use tokio::io::AsyncReadExt as _;
        // On the heap, while waiting only: an array here sat in the task of every
        // connection, at its full size, for the connection's whole life (4 KiB of every
        // idle tunnel in `relay serve`).
        let mut chunk = vec![0u8; 4096];
        loop {
            if self.prefix.len() >= keep {
                return std::future::pending().await;
            }
            match self.inner.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self
                    .prefix
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    }
}

forward_writes_to_inner!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer that sends while it waits keeps its bytes (read again in order, after any
    /// prefix); one that ends its stream is gone.
    #[tokio::test]
    async fn a_waiting_peers_bytes_are_kept_and_its_end_is_seen() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut s = Prefixed::new(b"ab".to_vec(), ours);
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"cd")
            .await
            .expect("write");
        drop(peer);
        tokio::time::timeout(std::time::Duration::from_secs(5), s.gone(1 << 16))
            .await
            .expect("the end is seen");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"abcd");
        // Past `keep`, it stops reading and waits for ever.
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut s = Prefixed::new(Vec::new(), ours);
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"xyz")
            .await
            .expect("write");
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), s.gone(2)).await;
        assert!(waited.is_err(), "resolved while the peer is there");
    }

    #[tokio::test]
    async fn prefix_is_read_before_the_stream() {
        let cases: &[(&[u8], &[u8])] = &[(b"", b"abc"), (b"ab", b"c"), (b"abc", b"")];
        for (prefix, rest) in cases {
            let mut s = Prefixed::new(prefix.to_vec(), *rest);
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("in-memory read");
            assert_eq!(out, b"abc", "prefix {prefix:?}");
        }
    }
}
