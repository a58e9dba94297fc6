//! Splicing a tunnel to a local stream: both directions pumped until each has ended, with
//! half-close passed on each way, a break passed on as a reset (or Close 1011), and an
//! optional first answer from the peer checked before anything reaches the local side.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{
    BROKEN_CLOSE_TIMEOUT, CHUNK, Expect, LOCAL_FAILED_REASON, LocalFailure, SpliceStats, Tunnel,
    bounded, bounded_local, is_orderly_close, local_failure, write_local,
};
use crate::relay::buffer::ReadBuffer;
use crate::relay::protocol::close_code;

impl Tunnel {
    /// Pumps bytes both ways between the tunnel and a local stream (a TCP connection, or
    /// an in-process pipe to a gate) until both directions ended.
    pub async fn splice<S>(self, local: S) -> io::Result<SpliceStats>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        self.pump(local, None).await
    }

    /// [`splice`](Self::splice), with the first `expect.len` bytes from the peer (its
    /// answer to what we sent first) read within `expect.within` and given to
    /// `expect.check` before anything reaches the local side; the local side's bytes go
    /// out meanwhile, which saves the round trip of waiting for the answer first. An
    /// `Err` from the check ends both directions with that error.
    pub async fn splice_after<S>(self, local: S, expect: Expect) -> io::Result<SpliceStats>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        self.pump(local, Some(expect)).await
    }

    /// [`pump_both`](Self::pump_both); when the local side failed, tells the far side
    /// with Close 1011 (bounded by [`BROKEN_CLOSE_TIMEOUT`]) so it resets its own local
    /// connection in turn.
    async fn pump<S>(self, local: S, expect: Option<Expect>) -> io::Result<SpliceStats>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let writer = Arc::clone(&self.writer);
        let result = self.pump_both(local, expect).await;
        if let Err(err) = &result
            && err
                .get_ref()
                .is_some_and(|inner| inner.is::<LocalFailure>())
        {
            let mut w = writer.lock().await;
            if !w.closed && !w.torn {
                w.closed = true;
                let goodbye = async {
                    w.frames
                        .write_close(close_code::SERVER_ERROR, LOCAL_FAILED_REASON)
                        .await?;
                    w.frames.shutdown().await
                };
                let _ = tokio::time::timeout(BROKEN_CLOSE_TIMEOUT, goodbye).await;
            }
        }
        result
    }

    async fn pump_both<S>(mut self, local: S, expect: Option<Expect>) -> io::Result<SpliceStats>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (mut tcp_read, mut tcp_write) = tokio::io::split(local);
        let writer = Arc::clone(&self.writer);
        let mut stats = SpliceStats::default();

        let inbound = async {
            if let Some(expect) = expect {
                let answer = tokio::time::timeout(expect.within, self.read_exact(expect.len)).await;
                (expect.check)(answer, self.peer_close_reason.as_deref())?;
            }
            let mut received = self.delivered;
            let pending = std::mem::take(&mut self.pending);
            if !pending.is_empty() {
                write_local(&mut tcp_write, &pending)
                    .await
                    .map_err(local_failure)?;
                received += pending.len() as u64;
            }
            while let Some(data) = self.next_data().await? {
                write_local(&mut tcp_write, &data)
                    .await
                    .map_err(local_failure)?;
                received += data.len() as u64;
            }
            if let Some(code) = self.peer_close_code.filter(|c| !is_orderly_close(*c)) {
                // A cut stream: the caller resets the local connection instead.
                let reason = self.peer_close_reason.as_deref().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the far side's connection broke (Close {code} {reason:?})"),
                ));
            }
            // The peer will send no more: pass the half-close on to the local side.
            bounded_local(tcp_write.shutdown())
                .await
                .map_err(local_failure)?;
            Ok::<u64, io::Error>(received)
        };
        let outbound = async {
            let mut sent = 0u64;
            // Holds memory only while the local side sends (an idle tunnel holds none).
            let mut buf = ReadBuffer::new(Vec::new());
            loop {
                let n = poll_fn(|cx| buf.poll_fill(&mut tcp_read, cx, CHUNK))
                    .await
                    .map_err(local_failure)?;
                let mut w = writer.lock().await;
                if w.torn {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "a frame to the relay was cut short",
                    ));
                }
                if n == 0 {
                    w.closed = true;
                    bounded(w.frames.write_close(close_code::NORMAL, "")).await?;
                    return Ok::<u64, io::Error>(sent);
                }
                // Masked where it was read: the payload is never copied.
                let data = buf.bytes_mut();
                w.data_in_place(data).await?;
                sent += data.len() as u64;
                data.clear();
            }
        };
        tokio::pin!(outbound);
        let mut outbound_done = false;
        {
            tokio::pin!(inbound);
            // Dropping the other future on an error is the intended abort of both directions.
            loop {
                tokio::select! {
                    r = &mut inbound => {
                        stats.received = r?;
                        break;
                    }
                    r = &mut outbound, if !outbound_done => {
                        stats.sent = r?;
                        outbound_done = true;
                    }
                }
            }
        }
        if !outbound_done {
            // Our direction still needs the relay's connection. Should it end now, nothing
            // the local side sends can arrive: end the tunnel rather than wait for a local
            // peer that may never send or close (its socket and ours sat in CLOSE-WAIT).
            tokio::select! {
                r = &mut outbound => stats.sent = r?,
                err = self.transport_end() => return Err(err),
            }
        }
        let mut w = writer.lock().await;
        let _ = bounded(w.frames.shutdown()).await;
        Ok(stats)
    }
}
