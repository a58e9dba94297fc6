//! Integration tests: debug sessions end to end (issue 4) — real debugpy, a real DAP
//! client, real `mpiexec`, the real relay.

mod connect_mode;
mod failures;
mod faults;
mod full_stderr;
pub mod harness;
mod lifecycle;
mod mlflow_tags;
mod modes;
mod mpi;
mod own_debugpy;
mod post_mortem;
mod sidecar_death;
mod step_end;
