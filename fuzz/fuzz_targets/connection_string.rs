//! Fuzz target: Relay connection strings and the URLs and tokens derived from them.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::connection_string_text(data);
});
