//! Integration tests: `relay serve` through the real binary, with raw WebSocket clients
//! written here and with Microsoft's own hyco-ws.

mod abuse;
mod harness;
mod interop;
mod lifecycle;
mod limits;
mod raw;
mod rendezvous;
