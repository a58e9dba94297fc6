//! Fuzz target: The TOML config file plus `AMLX_*` variables, layered as `exec` loads them.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::config_file_and_env(data);
});
