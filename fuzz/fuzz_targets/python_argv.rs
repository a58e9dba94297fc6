//! Fuzz target: A step's argv: prior-art flags, python argv parsing and the debugpy rewrite.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::inject_python_argv(data);
});
