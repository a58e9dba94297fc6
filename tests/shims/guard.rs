//! The shims never wrap a process twice, and keep exit codes and signals.
