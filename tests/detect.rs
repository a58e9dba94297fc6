//! Integration tests: `detect`.
