//! Fuzz target: Launcher environment values through role detection and every policy.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::role_environment(data);
});
