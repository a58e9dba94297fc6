//! Integration tests: `relay`.
