//! Fuzz target: azbridge's stream preamble, listener and sender side, and `--forward` specs.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::bridge_preamble(data));
});
