//! Integration tests: `ports`.
