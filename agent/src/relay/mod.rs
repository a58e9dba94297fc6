//! Azure Relay Hybrid Connections: SAS tokens, connection strings, the wire protocol,
//! the client (listener + sender), the azbridge preamble, and the self-hosted server.

pub mod sas;
pub mod server;
