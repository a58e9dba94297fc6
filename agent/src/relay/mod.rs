//! Azure Relay Hybrid Connections: SAS tokens, connection strings, the wire protocol,
//! the client (listener + sender), the azbridge preamble, and the self-hosted server.

pub mod bridge;
pub mod client;
pub mod connection_string;
pub mod protocol;
pub mod sas;
pub mod server;
pub mod websocket;
