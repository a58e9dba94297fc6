//! Integration tests: `supervise`.
