//! Fuzz target: `--ranks` specs (text round trip), launch-json rank lists and port ranges.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::rank_spec_text(data);
});
