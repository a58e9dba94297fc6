//! Fuzz target: The HTTP response to the client's WebSocket upgrade (status line, headers, error body).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::upgrade_response(data));
});
