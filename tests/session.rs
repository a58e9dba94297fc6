//! Integration tests: debug sessions end to end (issue 4) — real debugpy, a real DAP
//! client, real `mpiexec`, the real relay.

mod connect_mode;
pub mod harness;
mod mlflow_tags;
mod mpi;
