//! Fuzz target: `relay serve`'s frame pump between a sender and a listener (client-to-server frames).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::server_frame_relay(data));
});
