//! Fuzz target: `relay serve`'s side of a listener's control channel (renewToken, Close).

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::serve_control_channel(data));
});
