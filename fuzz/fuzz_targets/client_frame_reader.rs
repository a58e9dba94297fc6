//! Fuzz target: The relay client's WebSocket frame reader (server-to-client frames) and Close writer.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::client_frame_reader(data));
});
