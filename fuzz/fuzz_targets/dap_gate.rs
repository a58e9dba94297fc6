//! Fuzz target: the DAP gate between a developer's connection and debugpy (framing, the
//! acknowledgement scan, the watch for a request that ends the debuggee).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::dap_gate(data));
});
