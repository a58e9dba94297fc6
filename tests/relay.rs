//! Integration tests: `relay` — `relay serve`, `relay listen` and `relay connect` as real
//! processes on loopback, end to end.

mod breaks;
mod errors;
pub mod harness;
mod interop;
mod liveness;
mod reconnect;
mod spares;
pub(crate) mod tunnels;
