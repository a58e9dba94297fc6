//! Integration tests: one binary driving the real `amlx-agent` with real processes.

mod util;

mod cli;
mod config;
mod containers;
mod demo;
mod detect;
mod docs;
mod exec;
mod inject;
mod launch_json;
mod mlflow;
mod ports;
mod relay;
mod relay_server;
mod run;
mod session;
mod shims;
mod ssh;
mod status;
mod supervise;
mod systemd;
