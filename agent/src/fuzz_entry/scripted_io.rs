//! An in-memory byte stream for fuzzing network parsers: reads replay a script in chunks
//! of a chosen size (so parsers see partial reads), then end of stream; writes are
//! counted and dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the peer sends, handed out `chunk` bytes per read; everything written vanishes.
#[derive(Debug, Clone)]
pub struct ScriptedIo {
    /// The peer's bytes.
    script: Vec<u8>,
    /// How much of `script` has been read.
    pos: usize,
    /// Largest read (at least one byte).
    chunk: usize,
    /// Bytes written to us, for nothing but plausibility.
    pub written: u64,
}

impl ScriptedIo {
    /// A stream that replays `script`, at most `chunk` bytes per read (0 counts as 1).
    pub fn new(script: Vec<u8>, chunk: usize) -> ScriptedIo {
        ScriptedIo {
            script,
            pos: 0,
            chunk: chunk.max(1),
            written: 0,
        }
    }
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = self.script.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(self.chunk).min(buf.remaining());
        if let Some(part) = rest.get(..n) {
            buf.put_slice(part);
        }
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written = self.written.saturating_add(buf.len() as u64);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn replays_the_script_in_chunks_then_ends() {
        let mut io = ScriptedIo::new(b"hello".to_vec(), 2);
        let mut buf = [0u8; 8];
        let mut reads = Vec::new();
        loop {
            let n = io.read(&mut buf).await.expect("in-memory read");
            if n == 0 {
                break;
            }
            reads.push(buf.get(..n).unwrap_or_default().to_vec());
        }
        assert_eq!(reads, [b"he".to_vec(), b"ll".to_vec(), b"o".to_vec()]);
    }
}
