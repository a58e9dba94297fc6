//! Fuzz target: Merging generated entries into an existing launch.json (JSONC).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::launch_json_merge(data);
});
