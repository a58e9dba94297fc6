//! Azure Relay Hybrid Connections: SAS tokens, connection strings, the wire protocol,
//! the client (listener + sender), the azbridge preamble, and the self-hosted server.
//!
//! Everything here reads bytes a stranger on the network chose, so slicing text by byte
//! index (which panics inside a character) is denied for the whole tree: use `get(..)`,
//! byte comparisons or character-boundary helpers such as [`protocol::close_reason`].
//! Indexing that could panic is denied too where network input is parsed (the server,
//! `protocol`, the client's handshake; tests may index).
#![deny(clippy::string_slice)]

/// `AsyncWrite` for a stream wrapper `$wrapper<S>` (with an `inner: S` field) whose writes
/// pass straight through, vectored writes included, so a frame's header and payload still
/// leave in one write (one TLS record). Defined before the modules that use it.
macro_rules! forward_writes_to_inner {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod bridge;
pub mod buffer;
pub mod cipher;
pub mod client;
pub mod connection_string;
pub mod keepalive;
pub mod open_files;
pub mod protocol;
pub mod sas;
pub mod server;
pub mod websocket;

/// Connections the kernel holds for `relay connect` and `relay serve` before they accept
/// them (the kernel caps it at `net.core.somaxconn`, 4096 by default). The standard
/// library's 128 overflowed under a burst: past `--max-tunnels` `relay connect` stops
/// accepting, and a client that wrote and closed at once lost its bytes without a word.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a listening socket at `addr` (address reuse on, as the standard library does)
/// with [`ACCEPT_BACKLOG`].
pub fn listen_socket(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
