//! Azure Relay Hybrid Connections: SAS tokens, connection strings, the wire protocol,
//! the client (listener + sender), the azbridge preamble, and the self-hosted server.
//!
//! Everything here reads bytes a stranger on the network chose, so slicing text by byte
//! index (which panics inside a character) is denied for the whole tree: use `get(..)`,
//! byte comparisons or character-boundary helpers such as [`protocol::close_reason`].
//! Indexing that could panic is denied too where network input is parsed (the server,
//! `protocol`, the client's handshake; tests may index).
#![deny(clippy::string_slice)]

pub mod bridge;
pub mod buffer;
pub mod client;
pub mod connection_string;
pub mod protocol;
pub mod sas;
pub mod server;
pub mod websocket;
