//! Fuzz target: Human durations (`--attach-timeout` and friends).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::duration_text(data);
});
