//! Integration tests: `exec`.
