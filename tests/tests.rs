//! Integration tests: one binary driving the real `amlx-agent` with real processes.

mod util;

mod config;
mod detect;
mod exec;
mod ports;
mod relay;
mod relay_server;
mod supervise;
