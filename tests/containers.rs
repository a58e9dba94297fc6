//! Integration tests: the static release binary and the container images, in a real
//! Docker engine the tests start for themselves (docker/README.md's commands).

pub mod engine;
mod pid1;
mod ports;
mod run;
mod session;
mod static_binary;
