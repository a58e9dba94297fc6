//! Integration tests: `config`.
